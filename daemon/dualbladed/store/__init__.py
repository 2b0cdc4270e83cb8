"""The object store: tenant-scoped keys -> checksummed extents on a residency path.

Modules, bottom-up: :mod:`.meta` (the committed extent table in SQLite), :mod:`.index` (the
in-memory index; :mod:`.heat` its incremental recency order and running totals), :mod:`.input`
(request checks), :mod:`.recovery` (start-up rebuild), :mod:`.objects` (:class:`ObjectStore`,
the lock owner; its operations in the mixins :mod:`.writes`, :mod:`.reads`, :mod:`.moves` and
:mod:`.capacity`), :mod:`.relocate` (migration between paths, through the store's narrow
migration interface) and :mod:`.fsck` (offline checks, a package).

Callers outside the package use the names exported here.
"""

from dualbladed.store.index import ObjectInfo, PathUsage, StoreStats, Usage
from dualbladed.store.input import MAX_KEY_BYTES
from dualbladed.store.meta import MetaStore, ObjectRecord, parse_tenant, tenant_name
from dualbladed.store.objects import ObjectStore
from dualbladed.store.relocate import Bounce

__all__ = [
    "MAX_KEY_BYTES",
    "Bounce",
    "MetaStore",
    "ObjectInfo",
    "ObjectRecord",
    "ObjectStore",
    "PathUsage",
    "StoreStats",
    "Usage",
    "parse_tenant",
    "tenant_name",
]
