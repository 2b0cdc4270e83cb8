"""The object store: tenant-scoped keys -> checksummed extents on a residency path.

This is what the gRPC service calls. It joins three parts: the residency paths (where bytes
live: ``direct`` extents on the namespace, later ``pagecache`` slab files), their allocators, and
the committed extent table in :class:`~dualbladed.store.meta.MetaStore`.

Locking. ``ObjectStore._lock`` guards the index, the session table, every path's allocator
(``allocate``/``release``/``reserve``) and metadata commits. Data I/O (``write``, ``read``,
``flush``) runs *outside* it, so many gRPC threads stream at once. A reader pins its entry
(``IndexEntry.pins``) under the lock before reading; a delete or overwrite that retires a pinned
entry only marks it dead, and the last reader to unpin frees the extent. So an extent is never
reallocated while anybody may still read it. Lock order: ``ObjectStore._lock`` ->
``MetaStore._lock``; paths take their own internal locks below both and never call back.

The in-memory index (entries, pins, sessions, per-tenant usage) lives in
:mod:`dualbladed.store.index`, start-up recovery in :mod:`dualbladed.store.recovery`, migration
in :mod:`dualbladed.store.relocate` (which drives the store through its four ``*_move`` methods,
the :class:`~dualbladed.store.relocate.MoveSite` protocol) and input checks in
:mod:`dualbladed.store.input`; this module owns the lock, the paths and the metadata.

The operations live in mixins of :class:`ObjectStore`, one module per side, all running on
this class's lock, index, paths and metadata under the rules above: :mod:`.writes` (put,
group commit, delete, session release; the crash ordering), :mod:`.packed` (a packed put's
objects as one group, the same ordering, less Python per object), :mod:`.reads` (get, stat,
listings; verification in the caller's buffer), :mod:`.moves` (the store's side of the
``MoveSite`` protocol) and :mod:`.layersite` (layer objects: the store's side of the
``LayerSite`` protocol of :mod:`.layers`). This module keeps the lock, the paths, the metadata
commits (``_commit``/``_commit_group``), read verification and the store's life cycle.

Errors: residency paths raise only typed errors (their ``OSError`` is classified once, in
:mod:`dualbladed.oserrors`), so no path call here is wrapped in an ``OSError`` handler and
no errno is inspected; the one handler left classifies the metadata commit's through the same map.

Capacity: a put that does not fit its path (or, checked by the batch layer, its tenant's quota)
evicts persistent objects least recently used first; hit pins (``stat(pin_ms=...)``) keep
objects out of that. The policy lives in :mod:`dualbladed.store.capacity`, the LRU order in
:mod:`dualbladed.store.lru`, the pins in :mod:`dualbladed.store.pins`; the lock is this one.

``last_access`` is updated in memory on every get and written to SQLite in batches (a
background timer every ``access_flush_interval`` seconds, and at ``flush``/``close``), never one
SQLite write per get.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING

import xxhash

from dualbladed.errors import DualbladeError, FailedPrecondition, InvalidArgument, NotFound
from dualbladed.oserrors import from_oserror
from dualbladed.paths.abstract import DIRECT, ResidencyPath
from dualbladed.store import layers
from dualbladed.store.capacity import CapacityPolicy, Evictions, EvictionSite
from dualbladed.store.index import IndexEntry, ObjectIndex, ObjectInfo, PathUsage, StoreStats
from dualbladed.store.input import DEFAULT_MAX_OBJECT_BYTES, MAX_KEY_BYTES, zero
from dualbladed.store.layersite import GroupCommit, StoreLayers
from dualbladed.store.meta import MetaStore, parse_tenant
from dualbladed.store.moves import StoreMoves
from dualbladed.store.packed import StorePacked
from dualbladed.store.pins import HitPins
from dualbladed.store.reads import StoreReads
from dualbladed.store.recovery import complete_orders, open_meta, rebuild
from dualbladed.store.writes import StoreWrites

if TYPE_CHECKING:
    from dualbladed.namespace.abstract import Namespace

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_OBJECT_BYTES",
    "MAX_KEY_BYTES",
    "ObjectInfo",
    "ObjectStore",
    "PathUsage",
    "Placement",
    "StoreStats",
]


#: ``placement(tenant, size) -> path name`` for puts without an explicit path hint.
Placement = Callable[[str, int], str]
#: ``placement_many(tenant, sizes) -> path names``: the same for each of a packed put's objects
#: in one call (optional; without it, ``placement`` is asked once per object).
PlacementMany = Callable[[str, Sequence[int]], list[str]]


class ObjectStore(StoreWrites, StorePacked, StoreReads, StoreMoves, StoreLayers, EvictionSite):
    """Tenant-scoped, checksummed objects over one or more residency paths.

    Build it with :meth:`open`; the constructor takes already-open parts (tests, the daemon's
    own wiring) and rebuilds every path's free map from the committed rows.
    """

    def __init__(
        self,
        meta: MetaStore,
        paths: dict[str, ResidencyPath],
        *,
        placement: Placement | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        access_flush_interval: float = 5.0,
        capacity: CapacityPolicy | None = None,
        placement_many: PlacementMany | None = None,
    ) -> None:
        if not paths:
            raise InvalidArgument("an object store needs at least one residency path")
        if max_object_bytes <= 0:
            raise InvalidArgument(f"max_object_bytes must be positive, got {max_object_bytes}")
        self._meta = meta
        self._paths = dict(paths)
        self._placement = placement
        self._placement_many = placement_many
        self.max_object_bytes = max_object_bytes
        # Lock order: self._lock -> MetaStore._lock -> (paths' internal locks).
        self._lock = threading.Lock()
        #: ``layer``: the LayerState whose lock this thread holds for a relocation.
        self._moving = threading.local()
        self._layer_commits = GroupCommit(meta)
        self._index = ObjectIndex()
        self._known_tenants = {t.name for t in meta.tenants()}
        self._closed = False
        self._next_generation = rebuild(meta, self._paths, self._index)
        self.capacity = capacity or CapacityPolicy()
        self.evictions = Evictions()
        self._pins = HitPins(
            self._index.lru, self._index.lookup, self.capacity.max_pins_per_session
        )
        self._stop = threading.Event()
        self._packed_writer: ThreadPoolExecutor | None = None  # StorePacked._put_writer
        self._flusher: threading.Thread | None = None
        if access_flush_interval > 0:
            self._flusher = threading.Thread(
                target=_flush_loop,
                args=(weakref.ref(self), self._stop, access_flush_interval),
                name="dualblade-access-flush",
                daemon=True,
            )
            self._flusher.start()

    @classmethod
    def open(
        cls,
        namespace: Namespace,
        state_dir: str | os.PathLike[str],
        *,
        paths: dict[str, ResidencyPath] | None = None,
        format: bool = False,
        placement: Placement | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        access_flush_interval: float = 5.0,
        capacity: CapacityPolicy | None = None,
        placement_many: PlacementMany | None = None,
    ) -> ObjectStore:
        """Load (or, with ``format``, create) the superblock and open the store on it.

        ``format=True`` also discards a state directory bound to a previous namespace UUID,
        since formatting made its rows meaningless. Without it, such a directory is refused
        with :class:`SuperblockError`. The store owns ``paths`` (and the direct path it builds
        when none are given) and closes them in :meth:`close`; the caller keeps the namespace.
        """
        meta = open_meta(namespace, state_dir, format=format)
        try:
            if paths is None:
                from dualbladed.paths.direct import DirectPath

                paths = {DIRECT: DirectPath(namespace)}
            return cls(
                meta,
                paths,
                placement=placement,
                max_object_bytes=max_object_bytes,
                access_flush_interval=access_flush_interval,
                capacity=capacity,
                placement_many=placement_many,
            )
        except BaseException:
            meta.close()
            raise

    # -- metadata commits (under self._lock; writes.py, moves.py and capacity.py call them) -

    def _commit_group(
        self, pairs: list[tuple[IndexEntry, IndexEntry | None]], *, durable: bool
    ) -> None:
        """One transaction for many ``(new, old)``: like :meth:`_commit`. Under the lock."""
        rows = []
        gone = []
        tenants = set()
        for entry, old in pairs:
            if entry.persistent:
                rows.append(entry.record())
                if entry.tenant not in self._known_tenants:
                    tenants.add(entry.tenant)
            elif old is not None and old.persistent:
                gone.append((old.tenant, old.key))
        if not rows and not gone:
            return  # only ephemeral objects: nothing durable changes
        with _classified(), self._meta.txn(durable=durable) as t:
            for name in sorted(tenants):
                uid, label = parse_tenant(name)
                t.upsert_tenant(name, uid, label)
            t.put_many(rows)
            for tenant, key in gone:
                t.delete(tenant, key)
        self._known_tenants |= tenants

    def _commit_rows(
        self,
        tenant: str,
        rows: list[tuple],
        gone: list[tuple[str, bytes]],
        *,
        durable: bool,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """:meth:`_commit_group` for a packed put: ``rows`` of ``tenant`` already in the
        table's column order (:func:`~dualbladed.store.meta.object_rows`), ``gone`` the
        persistent rows that ephemeral objects replace; ``before_commit`` runs inside the
        transaction after them, and its error rolls it back. Under the lock."""
        if not rows and not gone:
            if before_commit is not None:
                before_commit()
            return  # only ephemeral objects: nothing durable changes
        new_tenant = bool(rows) and tenant not in self._known_tenants
        with _classified(), self._meta.txn(durable=durable) as t:
            if new_tenant:
                uid, label = parse_tenant(tenant)
                t.upsert_tenant(tenant, uid, label)
            if rows:
                t.put_rows(rows)
            for owner, key in gone:
                t.delete(owner, key)
            if before_commit is not None:
                before_commit()
        if new_tenant:
            self._known_tenants.add(tenant)

    def _commit(self, entry: IndexEntry | None, old: IndexEntry | None, *, durable: bool) -> None:
        """Make the metadata say ``entry`` (None: nothing) instead of ``old``. Under the lock."""
        info = entry  # (an entry has the ObjectInfo fields)
        if not (info is not None and info.persistent) and not (old and old.persistent):
            return  # ephemeral -> ephemeral: nothing durable changes
        with _classified(), self._meta.txn(durable=durable) as t:
            if info is not None and info.persistent:
                if info.tenant not in self._known_tenants:
                    uid, label = parse_tenant(info.tenant)
                    t.upsert_tenant(info.tenant, uid, label)
                t.put(info.record())
            elif old is not None:
                t.delete(old.tenant, old.key)
        if info is not None and info.persistent:
            self._known_tenants.add(info.tenant)

    # -- read verification (the get path, moves and layer reads) --------------------------

    def _read_verified(self, entry: IndexEntry, view: memoryview) -> int | None:
        """Read ``entry`` into ``view``; return None when it verifies, else the bad checksum."""
        if entry.is_layer:  # per-chunk crc32c, see dualbladed.store.layers
            info = entry.info  # one snapshot: size and chunk crcs of the same append
            return layers.read_verified(self._paths[info.path], info, view)
        self._paths[entry.path].read(entry.extent, view)
        actual = xxhash.xxh3_64_intdigest(view)
        if actual == entry.checksum:
            return None
        zero(view)
        return actual

    def _drop_corrupt(self, entry: IndexEntry, actual: int) -> None:
        info = entry.info
        logger.error(
            "checksum mismatch: tenant %s key %r on %s at %d+%d generation %d "
            "(stored %#018x, read %#018x); dropping the object",
            info.tenant,
            info.key,
            info.path,
            info.offset,
            info.length,
            info.generation,
            info.checksum,
            actual,
        )
        if self._index.lookup(info.tenant, info.key) is entry:  # not already replaced or deleted
            self._commit(None, entry, durable=False)
            self._retire(entry)

    def complete_load(self) -> None:
        """Build the start-up load's recency and eviction orders (the daemon calls this from a
        background thread right after READY=1; see :func:`recovery.complete_orders`).

        The start-up load only records them so READY=1 does not wait for sorting a million
        objects. The sort runs without ``self._lock``; the job is taken and the result swapped
        in under it, and every update made meanwhile is recorded under it and replayed at the
        swap (:meth:`ObjectIndex.finish_orders`). A reader that needs an order first (an
        eviction walk, an arbiter plan) builds it under the lock instead, and this build's
        result is then dropped. Lock order: only ``self._lock``, never nested.
        """
        if self._closed:
            return
        complete_orders(self._index, self._lock)

    def stats(self) -> StoreStats:
        with self._lock:
            usage = {n: (p.stats(), p.resident_bytes()) for n, p in self._paths.items()}
            return self._index.stats(usage)

    @property
    def path_names(self) -> tuple[str, ...]:
        return tuple(self._paths)

    @property
    def paths(self) -> Mapping[str, ResidencyPath]:
        """The residency paths by name (read-only view; their ``stats()`` lock themselves)."""
        return MappingProxyType(self._paths)

    @property
    def namespace_uuid(self) -> uuid.UUID:
        """The superblock UUID the metadata is bound to."""
        return self._meta.namespace_uuid

    # -- durability and shutdown ---------------------------------------------------------------

    def flush_access(self) -> int:
        """Persist the batched ``last_access`` updates; return how many were written."""
        with self._lock:
            if self._closed:
                return 0
            batch = self._index.take_dirty_access()
        if not batch:
            return 0
        self._meta.touch_many((t, k, when) for (t, k), when in batch.items())
        return len(batch)

    def flush(self) -> None:
        """Make everything acknowledged so far durable: data on every path, then metadata."""
        self._check_open()
        for p in self._paths.values():
            p.flush()
        self.flush_access()
        self._meta.sync()

    def close(self) -> None:
        """Flush and release everything. Ephemeral objects are gone afterwards."""
        with self._lock:
            if self._closed:
                return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                writer, self._packed_writer = self._packed_writer, None
            if writer is not None:
                writer.shutdown(wait=True)  # (a put in flight holds its own reference)
            for p in self._paths.values():
                p.close()
            self._meta.close()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers (under self._lock) ----------------------------------------------------------

    def _require(self, tenant: str, key: bytes) -> IndexEntry:
        entry = self._index.lookup(tenant, key)
        if entry is None:
            # The message names only the caller's key: other tenants' keys look absent.
            raise NotFound(f"key {key!r} not found")
        return entry

    def _retire(self, entry: IndexEntry) -> None:
        if self._index.retire(entry):
            self._paths[entry.path].release(entry.extent)

    def _unpin(self, entry: IndexEntry) -> None:
        if self._index.unpin(entry):
            self._paths[entry.path].release(entry.extent)

    # -- validation ------------------------------------------------------------------------------

    def _choose_path(self, tenant: str, size: int, hint: str | None) -> str:
        if hint is not None:
            self._path_named(hint)
            return hint
        if self._placement is not None:
            name = self._placement(tenant, size)
            if name in self._paths:
                return name
            logger.warning("placement chose unknown path %r; using %s", name, DIRECT)
        if DIRECT in self._paths:
            return DIRECT
        return next(iter(self._paths))

    def _choose_paths(self, tenant: str, sizes: Sequence[int], hint: str | None) -> list[str]:
        """:meth:`_choose_path` for each of many objects (a packed put), in order; with
        ``placement_many``, one placement call for all of them."""
        if hint is not None:
            return [self._choose_path(tenant, sizes[0], hint)] * len(sizes)
        if self._placement_many is None:
            return [self._choose_path(tenant, size, None) for size in sizes]
        names = self._placement_many(tenant, sizes)
        unknown = set(names) - self._paths.keys()
        if unknown or len(names) != len(sizes):
            default = DIRECT if DIRECT in self._paths else next(iter(self._paths))
            logger.warning("placement chose unknown paths %r; using %s", unknown, default)
            names = [n if n in self._paths else default for n in names[: len(sizes)]]
            names += [default] * (len(sizes) - len(names))
        return names

    def _path_named(self, name: str) -> ResidencyPath:
        if name not in self._paths:
            configured = ", ".join(sorted(self._paths))
            raise InvalidArgument(f"unknown residency path {name!r} (configured: {configured})")
        return self._paths[name]

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("object store is closed")

    def __iter__(self) -> Iterator[ObjectInfo]:
        return iter(self.list(None))


@contextmanager
def _classified() -> Iterator[None]:
    """A metadata commit's errors as the store raises them: typed errors pass, an ``OSError``
    of the state directory is classified like every ``OSError``, anything else (``sqlite3``)
    becomes a :class:`DualbladeError`."""
    try:
        yield
    except DualbladeError:
        raise
    except OSError as exc:  # the state directory, classified like every OSError
        raise from_oserror(exc, context="metadata commit") from exc
    except Exception as exc:  # sqlite3.Error
        raise DualbladeError(f"metadata commit failed: {exc}") from exc


def _flush_loop(ref: weakref.ref[ObjectStore], stop: threading.Event, interval: float) -> None:
    """Background batching of last_access; holds only a weak reference to the store."""
    while not stop.wait(interval):
        store = ref()
        if store is None:
            return
        try:
            store.flush_access()
        except DualbladeError as exc:
            logger.warning("last_access flush failed: %s", exc)
        finally:
            del store
