"""Start-up recovery of the object store: bind the metadata, rebuild the index and free maps.

Nothing about allocation is persisted except the committed extent table. At every start --
after a clean stop and after a SIGKILL alike -- the store is rebuilt from the committed rows:

1. :func:`open_meta` loads (or formats) the superblock and opens the metadata bound to its UUID
   (a state directory of another namespace is refused, or discarded by ``format``);
2. :func:`rebuild` reserves every row's extent on its path (in bulk) and indexes the row. Every
   path's free map is therefore the complement of the committed rows, so space that was allocated but never
   committed (a put killed between ``put.after_alloc`` and ``put.after_commit``, the destination
   of an unfinished relocation) is free again, and the free map cannot disagree with the table.

A row whose extent conflicts with an earlier row (an overlap that can only come from a bug or a
hand-edited database) is dropped, durably, and logged; the earlier row keeps the space. A row on
a path that is not configured now is kept but not served, so a later start that configures the
path serves it again.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import InvalidArgument, SuperblockError
from dualbladed.paths.abstract import ResidencyPath
from dualbladed.store.index import (
    IndexEntry,
    ObjectIndex,
    info_from_values,
    shared_int,
)
from dualbladed.store.layers import new_entry
from dualbladed.store.meta import MetaStore, unpack_crcs

if TYPE_CHECKING:
    from dualbladed.namespace.abstract import Namespace

logger = logging.getLogger(__name__)

__all__ = ["META_FILE", "PAGECACHE_DIR", "open_meta", "rebuild"]

# The state directory's layout, declared once for the daemon and the offline tools (fsck):
#: the SQLite metadata (with its -wal and -shm files beside it);
META_FILE = "meta.sqlite3"
#: the page-cache path's slab files.
PAGECACHE_DIR = "pagecache"

#: a start-up load of at least this many objects freezes the heap afterwards (see rebuild).
FREEZE_MIN_OBJECTS = 100_000


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
    """Index the committed rows, mark their extents used; return the next generation.

    Bulk, because it runs on every start: one SELECT read in chunks, one ``IndexEntry`` per row
    built by plain slot stores (as :func:`entry_from_values`; tenant and path names and the few
    distinct sizes shared, not one object per row), then per path one sort by offset and one
    :meth:`ResidencyPath.reserve_many` that builds the free map as the complement of the rows,
    and one :meth:`ObjectIndex.load`. Only if a path reports a conflict (overlapping rows: a
    bug or a hand-edited database) are its rows reserved one by one in generation order, so the
    earlier row keeps the space and the later one is dropped.

    The cyclic garbage collector is paused for the load (:func:`_collector_paused`): it would
    otherwise rescan the growing heap of new, acyclic index objects over and over, which
    measured at ~40% of a 10^6-object start. After a load of at least
    :data:`FREEZE_MIN_OBJECTS` the heap is frozen (``gc.freeze()``): the index's millions of
    long-lived objects move to the permanent generation, so neither the first collection after
    the load (~1 s at 10^6 objects under load) nor any later full collection walks them again.
    The price: a reference cycle among objects that existed at that moment is never collected
    (reference counting still frees everything acyclic, which index entries are); the daemon
    opens its store once, at start-up, before it serves.
    """
    with _collector_paused():
        next_generation = _rebuild(meta, paths, index)
        if len(index) >= FREEZE_MIN_OBJECTS:
            gc.freeze()
        return next_generation


def complete_orders(index: ObjectIndex, lock: AbstractContextManager[object]) -> None:
    """Build the index's deferred recency and eviction orders (the start-up load recorded
    them, :meth:`ObjectIndex.load_groups`) in three steps: take the job under ``lock`` (the
    store lock), sort it with the lock released, swap it in under ``lock``; the lock is held
    only to record the job and to swap, so requests go on during the sort (apart from the
    GIL's share). The collector is paused meanwhile as in :func:`rebuild`; after a large
    build the heap is frozen again, so later full collections do not walk the new orders."""
    with lock:
        job = index.begin_orders()
    if job is None:
        return
    with _collector_paused():
        built = index.build_orders(job)
        with lock:
            if index.finish_orders(job, built) and len(index) >= FREEZE_MIN_OBJECTS:
                gc.freeze()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """``gc.disable()`` for the block, restored after. Reference counting still frees every
    acyclic temporary at once; only cycles wait for the next collection."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _rebuild(meta: MetaStore, paths: dict[str, ResidencyPath], index: ObjectIndex) -> int:
    ints: dict[int, int] = {}
    # path -> tenant -> (shared tenant name, shared path name, infos): grouped while scanning,
    # so the index loads each (path, tenant) group with C-level passes
    per_path: dict[str, dict[str, tuple[str, str, list[IndexEntry]]]] = {}
    unserved: dict[str, int] = {}
    top = 0
    u64 = 1 << 64
    new, cls = object.__new__, IndexEntry
    for (
        tenant,
        key,
        path,
        offset,
        length,
        size,
        checksum,
        generation,
        _,
        last_access,
        capacity,
        crcs,
    ) in meta.scan_rows():
        if generation > top:
            top = generation
        tenants = per_path.get(path)
        if tenants is None:
            if path not in paths:
                unserved[path] = unserved.get(path, 0) + 1
                continue
            tenants = per_path[path] = {}
        group = tenants.get(tenant)
        if group is None:
            group = tenants[tenant] = (tenant, path, [])
        shared = ints.get(size)
        if shared is None:
            shared = ints[size] = shared_int(size)
        shared_length = ints.get(length)
        if shared_length is None:
            shared_length = ints[length] = shared_int(length)
        if capacity:  # a layer object: its ObjectInfo, a LayerEntry with append state
            crc = unpack_crcs(bytes(crcs)) if crcs else ()
            entry = new_entry(
                info_from_values(
                    (
                        group[0],
                        key if type(key) is bytes else bytes(key),
                        shared,
                        group[1],
                        offset,
                        shared_length,
                        checksum + u64 if checksum < 0 else checksum,
                        generation,
                        True,
                        last_access,
                        None,
                        capacity,
                        crc,
                    )
                )
            )
        else:  # entry_from_values, inlined: ~1 us of a ~3 us row (see entry_from_values)
            entry = new(cls)
            entry.tenant = group[0]
            entry.key = key if type(key) is bytes else bytes(key)
            entry.size = shared
            entry.path = group[1]
            entry.offset = offset
            entry.length = shared_length
            entry.checksum = checksum + u64 if checksum < 0 else checksum  # to_unsigned64
            entry.generation = generation
            entry.persistent = True
            entry.last_access = last_access
            entry.session = None
            entry.pins = 0
            entry.dead = False
            entry.layer = None
        group[2].append(entry)
    for path, count in unserved.items():
        logger.warning("%d objects live on unconfigured path %s; not served", count, path)
    dropped: list[IndexEntry] = []
    loaded: dict[tuple[str, str], list[IndexEntry]] = {}
    for path, tenants in per_path.items():
        groups = [infos for _, _, infos in tenants.values()]
        spans = groups[0] if len(groups) == 1 else list(chain(*groups))
        spans = sorted(spans, key=attrgetter("offset"))
        try:
            paths[path].reserve_many(spans)  # an entry has the offset and length of a span
        except InvalidArgument as exc:
            logger.error("extents on %s conflict (%s); reserving row by row", path, exc)
            kept = _reserve_each(paths[path], spans, dropped)
            groups = [[i for i in kept if i.tenant == t] for t in tenants]
        for entries in groups:
            if entries:
                loaded[(path, entries[0].tenant)] = entries
    index.load_groups(loaded)
    if dropped:
        with meta.txn(durable=True) as t:
            for info in dropped:
                t.delete(info.tenant, info.key)
    next_generation = top + 1
    logger.info("object store open: %d objects, next generation %d", len(index), next_generation)
    return next_generation


def _reserve_each(
    target: ResidencyPath, infos: list[IndexEntry], dropped: list[IndexEntry]
) -> list[IndexEntry]:
    """The slow path: reserve in generation order; a row that conflicts with an earlier one is
    logged and added to ``dropped``. Returns the rows kept."""
    kept = []
    for info in sorted(infos, key=attrgetter("generation")):
        try:
            target.reserve(Extent(info.offset, info.length))
        except InvalidArgument as exc:
            logger.error(
                "dropping object %r of tenant %s: extent %s+%s on %s conflicts (%s)",
                info.key,
                info.tenant,
                info.offset,
                info.length,
                info.path,
                exc,
            )
            dropped.append(info)
            continue
        kept.append(info)
    return kept
