"""The object store: tenant-scoped keys -> checksummed extents on a residency path.

This is what the gRPC service calls. It joins three parts: the residency paths (where bytes
live: ``direct`` extents on the namespace, later ``pagecache`` slab files), their allocators, and
the committed extent table in :class:`~dualbladed.store.meta.MetaStore`.

Put (crash ordering; see also the MetaStore docstring)::

    validate -> xxh3-64 of the payload -> allocate a *fresh* extent (lock)
             -> [put.after_alloc] -> write it (no lock) -> [put.after_data_write]
             -> durable: path.flush() (no lock) -> [put.after_flush]
             -> [put.group_before_commit]
             -> commit the row (lock; synchronous=FULL when durable) -> [put.after_commit]
             -> free the replaced object's extent (lock; deferred while readers pin it)
             -> acknowledge

The first line and a half is :meth:`ObjectStore.stage_put`, the rest :meth:`commit_puts`, which
commits a whole group of staged puts (a Batch's) in one transaction, flushing each written path
once first when any of them is durable (group commit, :mod:`dualbladed.store.group`).

Delete: find (lock) -> [delete.before_commit] -> commit the row's removal
-> [delete.after_commit] -> free the extent. The bracketed names are kill points
(:mod:`dualbladed.killpoints`): the crash loop SIGKILLs the daemon there and checks that every
acknowledged state survives.

A crash before the commit leaves the old row and the old extent untouched, and the new extent is
free after restart because free maps are rebuilt from committed rows only. Any failure frees the
new extent and leaves the old object intact. Ephemeral objects never touch SQLite: they live in
the in-memory index, die with their session, and after a crash their space is simply free.

Get reads straight into the caller's buffer and verifies the checksum there. On a mismatch
``dst[:size]`` is zeroed before :class:`~dualbladed.errors.ChecksumMismatch` is raised and the
object is dropped (row deleted, extent freed), so torn or stale bytes are reported, never
returned. Reading into ``dst`` avoids a bounce copy on the hot path; the zeroing is the price of
a rare failure.

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
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import xxhash

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import (
    ChecksumMismatch,
    DualbladeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from dualbladed.killpoints import killpoint
from dualbladed.oserrors import from_oserror
from dualbladed.paths.abstract import DIRECT, ResidencyPath
from dualbladed.store import layers
from dualbladed.store.capacity import CapacityPolicy, Evictions, EvictionSite
from dualbladed.store.group import PutSpec, StagedPut, write_all
from dualbladed.store.index import (
    IndexEntry,
    ObjectIndex,
    ObjectInfo,
    PathUsage,
    StoreStats,
    Usage,
    shared_int,
)
from dualbladed.store.input import (
    DEFAULT_MAX_OBJECT_BYTES,
    MAX_KEY_BYTES,
    as_bytes_view,
    check_key,
    zero,
)
from dualbladed.store.meta import MetaStore, parse_tenant
from dualbladed.store.pins import HitPins
from dualbladed.store.recovery import open_meta, rebuild
from dualbladed.store.relocate import Move, relocate

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


class ObjectStore(EvictionSite):
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
    ) -> None:
        if not paths:
            raise InvalidArgument("an object store needs at least one residency path")
        if max_object_bytes <= 0:
            raise InvalidArgument(f"max_object_bytes must be positive, got {max_object_bytes}")
        self._meta = meta
        self._paths = dict(paths)
        self._placement = placement
        self.max_object_bytes = max_object_bytes
        # Lock order: self._lock -> MetaStore._lock -> (paths' internal locks).
        self._lock = threading.Lock()
        #: ``layer``: the LayerState whose lock this thread holds for a relocation.
        self._moving = threading.local()
        self._layer_commits = layers.GroupCommit(meta)
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
            )
        except BaseException:
            meta.close()
            raise

    # -- writes ------------------------------------------------------------------------------

    def put(
        self,
        tenant: str,
        key: bytes,
        src: memoryview,
        *,
        persistent: bool = False,
        durable: bool = False,
        session: str | None = None,
        path: str | None = None,
    ) -> ObjectInfo:
        """Store ``src`` under ``(tenant, key)``, replacing any previous version.

        Acknowledged (returns) only after the metadata commit. Ephemeral objects
        (``persistent=False``) belong to ``session`` when one is given and are freed by
        :meth:`release_session`; persistent objects outlive sessions (``session`` is ignored).

        Raises:
            InvalidArgument: bad tenant, key, size or path name.
            OutOfSpace: no free extent on the chosen path is large enough.
            DeviceIOError: the write or flush failed. In every error case nothing changed.
        """
        staged = self.stage_put(
            tenant, key, src, persistent=persistent, durable=durable, session=session, path=path
        )
        return self.commit_puts([staged])[0]

    # -- group commit (issue 14): many puts, one metadata transaction --------------------------

    def stage_put(
        self,
        tenant: str,
        key: bytes,
        src: memoryview,
        *,
        persistent: bool = False,
        durable: bool = False,
        session: str | None = None,
        path: str | None = None,
    ) -> StagedPut:
        """The first half of :meth:`put`: validate, checksum, allocate and write (no lock held
        for the I/O) -- but neither flush nor commit. Hand the result to :meth:`commit_puts`
        (with others: one transaction for all), or to :meth:`abandon_puts`.

        Raises what :meth:`put` raises before its commit; nothing changed then.
        """
        (got,) = self.stage_many(tenant, [PutSpec(key, src, persistent, durable, session, path)])
        if isinstance(got, BaseException):
            raise got
        return got

    def stage_many(self, tenant: str, puts: Sequence[PutSpec]) -> list[StagedPut | DualbladeError]:
        """:meth:`stage_put` for many puts of one tenant; one result (or error) per put.

        The extents are allocated under one lock acquisition, and a path that supports it
        (:meth:`DirectPath.write_many`) writes neighbouring extents with one ``pwritev``: a
        batch of small puts on a fresh namespace becomes a few large writes. A put that fails
        owns nothing afterwards; the others are unaffected.
        """
        out: list[StagedPut | DualbladeError | None] = [None] * len(puts)
        todo: list[tuple[int, bytes, memoryview, str, int]] = []
        for i, spec in enumerate(puts):
            try:
                key = check_key(tenant, spec.key)
                data = as_bytes_view(spec.src, writable=False, what="source")
                size = data.nbytes
                if not 1 <= size <= self.max_object_bytes:
                    raise InvalidArgument(
                        f"object size {size} is outside 1..{self.max_object_bytes} bytes "
                        f"(key {key!r})"
                    )
                path_name = self._choose_path(tenant, size, spec.path)
            except DualbladeError as err:
                out[i] = err
                continue
            todo.append((i, key, data, path_name, xxhash.xxh3_64_intdigest(data)))
        extents: dict[int, Extent] = {}
        with self._lock:
            self._check_open()
            for i, _, data, path_name, _ in todo:
                try:
                    extents[i] = self._allocate(
                        self._paths[path_name], path_name, data.nbytes, durable=puts[i].durable
                    )
                except DualbladeError as err:
                    out[i] = err
        writes: dict[str, list[tuple[int, Extent, memoryview]]] = {}
        for i, _, data, path_name, _ in todo:
            if i in extents:
                writes.setdefault(path_name, []).append((i, extents[i], data))
        try:
            killpoint("put.after_alloc")
            for path_name, items in writes.items():
                target = self._paths[path_name]
                errors = write_all(target, [(e, d) for _, e, d in items])
                for (i, _, _), err in zip(items, errors, strict=True):
                    if err is not None:
                        out[i] = err
            killpoint("put.after_data_write")
        except BaseException:
            self._release_all({i: e for i, e in extents.items()}, todo)
            raise
        failed = {i: e for i, e in extents.items() if out[i] is not None}
        if failed:
            self._release_all(failed, todo)
        for i, key, data, path_name, checksum in todo:
            if out[i] is None:
                spec = puts[i]
                out[i] = StagedPut(
                    tenant,
                    key,
                    data.nbytes,
                    path_name,
                    extents[i],
                    checksum,
                    spec.persistent,
                    spec.durable,
                    spec.session,
                )
        return out  # type: ignore[return-value]  # every slot is filled above

    def _release_all(
        self, extents: Mapping[int, Extent], todo: list[tuple[int, bytes, memoryview, str, int]]
    ) -> None:
        where = {i: path_name for i, _, _, path_name, _ in todo}
        with self._lock:
            for i, extent in extents.items():
                self._paths[where[i]].release(extent)

    def abandon_puts(self, staged: Sequence[StagedPut]) -> None:
        """Free the extents of staged puts that will not be committed."""
        with self._lock:
            for st in staged:
                self._paths[st.path].release(st.extent)

    def commit_puts(self, staged: Sequence[StagedPut]) -> list[ObjectInfo]:
        """Commit staged puts of distinct keys in one metadata transaction; acknowledge all.

        Crash ordering as for :meth:`put`, per group: when any put is durable, every path the
        group wrote is flushed first and the transaction commits with ``synchronous=FULL``, so
        no put is acknowledged before its data and its row are durable. A crash before the
        commit leaves every old version and frees every new extent (rows are the only truth);
        after it, all of the group's rows are committed (a transaction is atomic). If the
        commit fails, every staged extent is freed and nothing changed.
        """
        if not staged:
            return []
        if len({(st.tenant, st.key) for st in staged}) != len(staged):
            self.abandon_puts(staged)
            raise InvalidArgument("a group commit needs distinct keys")
        try:
            if any(st.durable for st in staged):
                for name in {st.path for st in staged}:
                    self._paths[name].flush()
                killpoint("put.after_flush")
            killpoint("put.group_before_commit")
        except BaseException:
            self.abandon_puts(staged)
            raise
        with self._lock:
            try:
                self._check_open()
                now = time.time()
                pairs = []
                for i, st in enumerate(staged):
                    entry = IndexEntry(
                        ObjectInfo(
                            tenant=st.tenant,
                            key=st.key,
                            size=shared_int(st.size),
                            path=st.path,
                            offset=st.extent.offset,
                            length=shared_int(st.extent.length),
                            checksum=st.checksum,
                            generation=self._next_generation + i,
                            persistent=st.persistent,
                            last_access=now,
                            session=None if st.persistent else st.session,
                        )
                    )
                    pairs.append((entry, self._index.lookup(st.tenant, st.key)))
                self._commit_group(pairs, durable=any(st.durable for st in staged))
            except BaseException:
                for st in staged:
                    self._paths[st.path].release(st.extent)
                raise
            killpoint("put.after_commit")
            self._next_generation += len(staged)
            for entry, old in pairs:
                if old is not None:
                    self._retire(old)
                self._index.install(entry)
            return [entry.info for entry, _ in pairs]

    def _commit_group(
        self, pairs: list[tuple[IndexEntry, IndexEntry | None]], *, durable: bool
    ) -> None:
        """One transaction for many ``(new, old)``: like :meth:`_commit`. Under the lock."""
        rows = []
        gone = []
        tenants = set()
        for entry, old in pairs:
            info = entry.info
            if info.persistent:
                rows.append(info.record(entry.last_access))
                if info.tenant not in self._known_tenants:
                    tenants.add(info.tenant)
            elif old is not None and old.info.persistent:
                gone.append((old.info.tenant, old.info.key))
        if not rows and not gone:
            return  # only ephemeral objects: nothing durable changes
        try:
            with self._meta.txn(durable=durable) as t:
                for name in sorted(tenants):
                    uid, label = parse_tenant(name)
                    t.upsert_tenant(name, uid, label)
                t.put_many(rows)
                for tenant, key in gone:
                    t.delete(tenant, key)
        except DualbladeError:
            raise
        except OSError as exc:  # the state directory, classified like every OSError
            raise from_oserror(exc, context="metadata commit") from exc
        except Exception as exc:  # sqlite3.Error
            raise DualbladeError(f"metadata commit failed: {exc}") from exc
        self._known_tenants |= tenants

    def _commit(self, entry: IndexEntry | None, old: IndexEntry | None, *, durable: bool) -> None:
        """Make the metadata say ``entry`` (None: nothing) instead of ``old``. Under the lock."""
        info = entry.info if entry is not None else None
        if not (info is not None and info.persistent) and not (old and old.info.persistent):
            return  # ephemeral -> ephemeral: nothing durable changes
        try:
            with self._meta.txn(durable=durable) as t:
                if info is not None and info.persistent:
                    if info.tenant not in self._known_tenants:
                        uid, label = parse_tenant(info.tenant)
                        t.upsert_tenant(info.tenant, uid, label)
                    t.put(info.record(entry.last_access))  # type: ignore[union-attr]
                elif old is not None:
                    t.delete(old.info.tenant, old.info.key)
        except DualbladeError:
            raise
        except OSError as exc:  # the state directory, classified like every OSError
            raise from_oserror(exc, context="metadata commit") from exc
        except Exception as exc:  # sqlite3.Error
            raise DualbladeError(f"metadata commit failed: {exc}") from exc
        if info is not None and info.persistent:
            self._known_tenants.add(info.tenant)

    def delete(self, tenant: str, key: bytes, *, durable: bool = False) -> ObjectInfo:
        """Remove one object and free its space (once no reader pins it).

        ``durable=True`` commits the removal with ``synchronous=FULL``: after the return a power
        loss cannot bring the object back (a plain delete may come back, never torn).
        """
        key = check_key(tenant, key)
        with self._lock:
            self._check_open()
            entry = self._require(tenant, key)
            killpoint("delete.before_commit")
            self._commit(None, entry, durable=durable)
            killpoint("delete.after_commit")
            self._retire(entry)
            return entry.snapshot()

    def release_session(self, session: str) -> int:
        """Free every ephemeral object of ``session``; return how many there were."""
        with self._lock:
            self._check_open()
            self._pins.release_session(session)
            members = self._index.session_members(session)
            for i, entry in enumerate(members):
                if i == len(members) // 2:
                    killpoint("release_session.mid")
                self._retire(entry)
        if members:
            logger.info("session %s released: %d ephemeral objects freed", session, len(members))
        return len(members)

    # -- reads -------------------------------------------------------------------------------

    def get_into(
        self, tenant: str, key: bytes, dst: memoryview, *, session: str | None = None
    ) -> ObjectInfo:
        """Read the object into ``dst[:size]`` and verify it.

        A successful read by ``session`` ends that session's hit pin on the key, if any.

        Raises:
            NotFound: no such key for this tenant.
            InvalidArgument: ``dst`` is smaller than the object or not writable.
            ChecksumMismatch: the stored bytes are torn or stale; ``dst[:size]`` was zeroed and
                the object dropped.
            DeviceIOError: the read failed (the object is kept).
        """
        key = check_key(tenant, key)
        out = as_bytes_view(dst, writable=True, what="destination")
        with self._lock:
            self._check_open()
            entry = self._require(tenant, key)
            size = entry.info.size
            if out.nbytes < size:
                raise InvalidArgument(
                    f"destination buffer holds {out.nbytes} bytes, key {key!r} needs {size}"
                )
            self._index.pin(entry)
            self._index.note_access(entry)
        try:
            actual = self._read_verified(entry, out[:size])
        except BaseException:
            with self._lock:
                self._unpin(entry)
            raise
        with self._lock:
            self._unpin(entry)
            if actual is not None:
                self._drop_corrupt(entry, actual)
            elif session is not None:
                self._pins.unpin(session, tenant, key)
        if actual is not None:
            raise ChecksumMismatch(key, entry.info.checksum, actual)
        return entry.snapshot()

    def _read_verified(self, entry: IndexEntry, view: memoryview) -> int | None:
        """Read ``entry`` into ``view``; return None when it verifies, else the bad checksum."""
        info = entry.info
        if info.is_layer:  # per-chunk crc32c, see dualbladed.store.layers
            return layers.read_verified(self._paths[info.path], info, view)
        self._paths[info.path].read(info.extent, view)
        actual = xxhash.xxh3_64_intdigest(view)
        if actual == info.checksum:
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

    def stat(
        self, tenant: str, key: bytes, *, session: str | None = None, pin_ms: int = 0
    ) -> ObjectInfo:
        """The object's metadata. ``pin_ms > 0`` with a ``session`` also pins a hit for that
        session (see :mod:`dualbladed.store.pins`); a miss raises NotFound and pins nothing.

        Raises:
            InvalidArgument: ``pin_ms`` above ``capacity.max_pin_ms``, or without a session.
            PinLimitExceeded: the session already holds ``capacity.max_pins_per_session`` pins.
        """
        key = check_key(tenant, key)
        self._check_pin(session, pin_ms)
        with self._lock:
            self._check_open()
            return self._stat_locked(tenant, key, session, pin_ms).snapshot()

    def list(self, tenant: str | None, prefix: bytes = b"", limit: int = 0) -> list[ObjectInfo]:
        """Objects in (tenant, key) order whose key starts with ``prefix``; ``limit`` 0: all.

        ``tenant=None`` lists every tenant (admin tools only).
        """
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0, got {limit}")
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.scan(tenant, bytes(prefix), limit)]

    def list_page(
        self, tenant: str | None, after: tuple[str, bytes] | None, limit: int
    ) -> list[ObjectInfo]:
        """Up to ``limit`` (> 0) objects in (tenant, key) order after the cursor ``after``
        (None: from the start); a page costs O(log N + limit) (admin listings, ``dbctl``)."""
        if limit <= 0:
            raise InvalidArgument(f"page limit must be > 0, got {limit}")
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.page(tenant, after, limit)]

    def coldest(self, path: str, n: int) -> list[ObjectInfo]:
        """Up to ``n`` objects on ``path``, least recently accessed first (O(log N + n): the
        arbiter's demotion candidates, an evictor's victims)."""
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.coldest(path, n)]

    def hottest(self, path: str, n: int) -> list[ObjectInfo]:
        """Up to ``n`` objects on ``path``, most recently accessed first (O(log N + n))."""
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.hottest(path, n)]

    def totals(self) -> dict[str, dict[str, Usage]]:
        """``tenant -> path -> Usage(objects, payload bytes)``: running totals, never a scan."""
        with self._lock:
            self._check_open()
            return self._index.totals()

    def usage(self, tenant: str) -> int:
        """Bytes of space allocated to ``tenant`` (extent lengths, ephemeral included)."""
        with self._lock:
            return self._index.usage(tenant)

    def uid_usage(self, uid: int) -> int:
        """Bytes allocated to all of ``uid``'s tenants together (per-uid quotas)."""
        with self._lock:
            return self._index.uid_usage(uid)

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

    # -- layer objects (dualbladed.store.layers) -----------------------------------------------

    def reserve(
        self,
        tenant: str,
        key: bytes,
        capacity: int,
        *,
        persistent: bool = False,
        session: str | None = None,
        path: str | None = None,
    ) -> ObjectInfo:
        """Create (or replace any object under ``key`` with) an empty layer object of
        ``capacity`` bytes in one contiguous extent. OutOfSpace when no extent fits."""
        return layers.reserve(
            self, tenant, key, capacity, persistent=persistent, session=session, path=path
        )

    def append(
        self,
        tenant: str,
        key: bytes,
        src: memoryview,
        *,
        durable: bool = False,
        expect_size: int | None = None,
    ) -> ObjectInfo:
        """Append ``src`` at the layer object's end; returns the info with the new size.

        Raises:
            FailedPrecondition: not a layer object, or its size is not ``expect_size``.
            CapacityExceeded: the append would pass the reserved capacity (nothing written).
        """
        return layers.append(self, tenant, key, src, durable=durable, expect_size=expect_size)

    def read_range_into(
        self, tenant: str, key: bytes, offset: int, length: int, dst: memoryview
    ) -> int:
        """Read ``[offset, offset + length)`` (``length`` 0: to the end) of a layer object into
        ``dst``, verifying each chunk; returns the bytes read.

        Raises:
            OutOfRange: the range passes the object's size.
            ChecksumMismatch: a chunk failed (``dst`` zeroed, the object dropped).
        """
        return layers.read_range_into(self, tenant, key, offset, length, dst)[0]

    def read_range(
        self, tenant: str, key: bytes, offset: int, length: int, dst: memoryview
    ) -> tuple[int, ObjectInfo]:
        """:meth:`read_range_into`, also returning the object's info as of the read."""
        return layers.read_range_into(self, tenant, key, offset, length, dst)

    # -- migration ---------------------------------------------------------------------------

    def relocate(self, tenant: str, key: bytes, new_path: str) -> ObjectInfo:
        """Move one object to ``new_path`` (the residency arbiter's migration hook).

        Copy, verify, flush the destination, commit durably, then free the old extent: a failure
        at any step leaves exactly one valid copy, and readers see the old copy until the commit.
        The protocol lives in :mod:`dualbladed.store.relocate`.

        Raises:
            FailedPrecondition: the object was overwritten or deleted during the copy (the copy
                is discarded; the newer state stands).

        A layer object moves whole (capacity extent, size, chunk crcs) while this thread holds
        its append lock, so no append lands in the source during the copy; the moved entry
        keeps the lock, and an append that was waiting for it continues on the moved object.
        """
        key = check_key(tenant, key)
        with self._lock:
            self._check_open()
            state = self._require(tenant, key).layer
        if state is None:
            return relocate(self, tenant, key, new_path)
        with state.lock:
            self._moving.layer = state  # begin_move checks that it moves what is locked
            try:
                return relocate(self, tenant, key, new_path)
            finally:
                self._moving.layer = None

    def begin_move(self, tenant: str, key: bytes, new_path: str) -> Move | ObjectInfo:
        """Pin the object and allocate on ``new_path`` (see ``MoveSite``)."""
        key = check_key(tenant, key)
        dest = self._path_named(new_path)
        with self._lock:
            self._check_open()
            entry = self._require(tenant, key)
            if entry.info.path == new_path:
                return entry.snapshot()
            if entry.layer is not None and entry.layer is not getattr(self._moving, "layer", None):
                raise FailedPrecondition(
                    f"key {key!r} is a layer object that changed before its move began (or is "
                    "moved without its append lock: use ObjectStore.relocate)"
                )
            self._index.pin(entry)
            try:
                # a layer object moves its whole reserved capacity, not only the bytes written
                extent = dest.allocate(entry.info.capacity or entry.info.size)
            except BaseException:
                self._unpin(entry)
                raise
        return Move(entry, new_path, dest, extent)

    def read_source(self, move: Move, view: memoryview) -> int | None:
        """Read and verify the pinned source (no lock; see ``MoveSite``)."""
        return self._read_verified(move.source, view)

    def abandon_move(self, move: Move, *, corrupt: int | None = None) -> None:
        """Free the destination, unpin the source, drop it when ``corrupt`` (see ``MoveSite``)."""
        with self._lock:
            self._unpin(move.source)
            move.dest.release(move.extent)
            if corrupt is not None:
                self._drop_corrupt(move.source, corrupt)

    def commit_move(self, move: Move, after_commit: Callable[[], None]) -> ObjectInfo:
        """Commit the row naming the destination, durably, then retire the source."""
        source, info = move.source, move.source.info
        with self._lock:
            self._unpin(source)
            try:
                if self._index.lookup(info.tenant, info.key) is not source:
                    raise FailedPrecondition(
                        f"key {info.key!r} changed while relocating; copy discarded"
                    )
                where = {"offset": move.extent.offset, "length": move.extent.length}
                moved = layers.new_entry(replace(info, path=move.dest_name, **where))
                moved.layer = source.layer  # a layer object keeps its append lock and tail
                moved.last_access = source.last_access
                self._commit(moved, source, durable=True)
            except BaseException:
                move.dest.release(move.extent)
                raise
            after_commit()
            self._retire(source)
            self._index.install(moved)
            return moved.snapshot()

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
            self._paths[entry.info.path].release(entry.info.extent)

    def _unpin(self, entry: IndexEntry) -> None:
        if self._index.unpin(entry):
            self._paths[entry.info.path].release(entry.info.extent)

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
