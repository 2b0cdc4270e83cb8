"""Start-up recovery of the object store: bind the metadata, rebuild the index and free maps.

Nothing about allocation is persisted except the committed extent table. At every start --
after a clean stop and after a SIGKILL alike -- the store is rebuilt from the committed rows:

1. :func:`open_meta` loads (or formats) the superblock and opens the metadata bound to its UUID
   (a state directory of another namespace is refused, or discarded by ``format``);
2. :func:`rebuild` reserves each row's extent on its path and indexes the row. Every path's free
   map is therefore the complement of the committed rows, so space that was allocated but never
   committed (a put killed between ``put.after_alloc`` and ``put.after_commit``, the destination
   of an unfinished relocation) is free again, and the free map cannot disagree with the table.

A row whose extent conflicts with an earlier row (an overlap that can only come from a bug or a
hand-edited database) is dropped, durably, and logged; the earlier row keeps the space. A row on
a path that is not configured now is kept but not served, so a later start that configures the
path serves it again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import InvalidArgument, SuperblockError
from dualbladed.paths.abstract import ResidencyPath
from dualbladed.store.index import ObjectIndex, ObjectInfo
from dualbladed.store.layers import new_entry
from dualbladed.store.meta import MetaStore, ObjectRecord

if TYPE_CHECKING:
    from dualbladed.namespace.abstract import Namespace

logger = logging.getLogger(__name__)

__all__ = ["META_FILE", "PAGECACHE_DIR", "open_meta", "rebuild"]

# The state directory's layout, declared once for the daemon and the offline tools (fsck):
#: the SQLite metadata (with its -wal and -shm files beside it);
META_FILE = "meta.sqlite3"
#: the page-cache path's slab files.
PAGECACHE_DIR = "pagecache"


def open_meta(
    namespace: Namespace, state_dir: str | os.PathLike[str], *, format: bool
) -> MetaStore:
    """Load or format the superblock and open the metadata bound to its UUID."""
    from dualbladed.namespace.superblock import load_or_format

    loaded = load_or_format(namespace, format=format)
    for warning in loaded.warnings:
        logger.warning("superblock of %s: %s", namespace.path, warning)
    ns_uuid = loaded.superblock.uuid
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    meta_path = state / META_FILE
    try:
        return MetaStore(meta_path, namespace_uuid=ns_uuid)
    except SuperblockError:
        if not format:
            raise
    logger.warning("format: discarding metadata %s of a previous namespace", meta_path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{meta_path}{suffix}").unlink(missing_ok=True)
    return MetaStore(meta_path, namespace_uuid=ns_uuid)


def rebuild(meta: MetaStore, paths: dict[str, ResidencyPath], index: ObjectIndex) -> int:
    """Index the committed rows, mark their extents used; return the next generation."""
    dropped: list[ObjectRecord] = []
    for rec in meta.records():
        target = paths.get(rec.path)
        if target is None:
            logger.warning(
                "object %r of tenant %s lives on unconfigured path %s; not served",
                rec.key,
                rec.tenant,
                rec.path,
            )
            continue
        try:
            target.reserve(Extent(rec.offset, rec.length))
        except InvalidArgument as exc:
            logger.error(
                "dropping object %r of tenant %s: extent %s+%s on %s conflicts (%s)",
                rec.key,
                rec.tenant,
                rec.offset,
                rec.length,
                rec.path,
                exc,
            )
            dropped.append(rec)
            continue
        info = ObjectInfo(
            tenant=rec.tenant,
            key=rec.key,
            size=rec.size,
            path=rec.path,
            offset=rec.offset,
            length=rec.length,
            checksum=rec.checksum,
            generation=rec.generation,
            persistent=True,
            last_access=rec.last_access,
            session=None,
            capacity=rec.capacity,
            chunk_crcs=rec.chunk_crcs,
        )
        index.install(new_entry(info))
    if dropped:
        with meta.txn(durable=True) as t:
            for rec in dropped:
                t.delete(rec.tenant, rec.key)
    next_generation = meta.max_generation() + 1
    logger.info("object store open: %d objects, next generation %d", len(index), next_generation)
    return next_generation
