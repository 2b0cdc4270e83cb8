"""Moving one object between residency paths (the residency arbiter's migration hook).

Split out of :mod:`dualbladed.store.objects` to keep that module readable; it is a friend of
:class:`~dualbladed.store.objects.ObjectStore` and uses its lock, index and commit helpers directly,
under the same rules (``ObjectStore._lock`` guards the index, allocators and commits; data I/O
runs outside it).

Crash ordering::

    pin the source (lock) -> allocate on the destination (lock)
        -> read + verify the source into a bounce buffer -> write the destination -> flush it
        -> [kill point relocate.after_copy]
        -> commit the row naming the destination, durably (lock)
        -> [kill point relocate.after_commit]
        -> retire the source entry; its extent is freed once no reader pins it (lock)

A crash before the commit leaves the row naming the source, whose bytes were never touched; the
destination extent is free after restart because free maps come from committed rows. A crash
after the commit leaves the row naming a destination that was flushed before the commit; the
source extent is free after restart for the same reason. Either way exactly one valid copy.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import replace
from typing import TYPE_CHECKING

from dualblade.v1.wire import close_mapping
from dualbladed.errors import ChecksumMismatch, FailedPrecondition, InvalidArgument
from dualbladed.killpoints import killpoint
from dualbladed.oserrors import from_oserror
from dualbladed.store.index import IndexEntry, ObjectInfo
from dualbladed.store.input import check_key

if TYPE_CHECKING:
    from dualbladed.store.objects import ObjectStore

logger = logging.getLogger(__name__)

__all__ = ["relocate"]


def relocate(store: ObjectStore, tenant: str, key: bytes, new_path: str) -> ObjectInfo:
    """Move ``(tenant, key)`` to ``new_path``; see :meth:`ObjectStore.relocate`."""
    key = check_key(tenant, key)
    if new_path not in store._paths:
        raise InvalidArgument(store._unknown_path(new_path))
    dest = store._paths[new_path]
    with store._lock:
        store._check_open()
        entry = store._require(tenant, key)
        if entry.info.path == new_path:
            return entry.snapshot()
        store._index.pin(entry)
        try:
            extent = dest.allocate(entry.info.size)
        except BaseException:
            store._unpin(entry)
            raise
    info = entry.info
    try:
        bounce = mmap.mmap(-1, info.length)  # page-aligned, as O_DIRECT wants
        view = memoryview(bounce)[: info.size]
        try:
            actual = store._read_verified(entry, view)
            if actual is None:
                dest.write(extent, view)
                dest.flush()
        finally:
            view.release()
            close_mapping(bounce)  # deferred if a failed write's traceback holds views
    except BaseException as exc:
        with store._lock:
            dest.release(extent)
            store._unpin(entry)
        if isinstance(exc, OSError):
            raise from_oserror(exc, context=f"relocating key {key!r} to {new_path}") from exc
        raise
    if actual is None:
        killpoint("relocate.after_copy")
    with store._lock:
        store._unpin(entry)
        if actual is not None:
            dest.release(extent)
            store._drop_corrupt(entry, actual)
        elif store._index.lookup(tenant, key) is not entry:
            dest.release(extent)
            raise FailedPrecondition(f"key {key!r} changed while relocating; copy discarded")
        else:
            moved = IndexEntry(
                replace(info, path=new_path, offset=extent.offset, length=extent.length)
            )
            moved.last_access = entry.last_access
            try:
                store._commit(moved, entry, durable=True)
            except BaseException:
                dest.release(extent)
                raise
            killpoint("relocate.after_commit")
            store._retire(entry)
            store._index.install(moved)
            logger.info(
                "relocated tenant %s key %r: %s@%d -> %s@%d",
                tenant,
                key,
                info.path,
                info.offset,
                new_path,
                extent.offset,
            )
            return moved.snapshot()
    raise ChecksumMismatch(key, info.checksum, actual)
