"""The store's side of layer objects: the :class:`~dualbladed.store.layers.LayerSite` protocol.

:mod:`dualbladed.store.layers` holds what a layer object is (the row it starts with, the chunk
crcs, the append's crash ordering and kill points, the ranged read and its verification) and
reaches the store only through the operations below. Each one takes the store's lock for the
steps that need it and returns without it; data I/O and checksumming stay outside, in
``layers``. A mixin of :class:`~dualbladed.store.objects.ObjectStore`, like :mod:`.moves`
(which holds a layer object's append lock around a relocation; an append waiting for that
lock continues on the moved entry, see ``layer_follow_move``).

Lock order: ``LayerState.lock`` (taken by ``layers``) -> ``ObjectStore._lock`` ->
``MetaStore._lock``. :meth:`StoreLayers.layer_commit_size` runs without the store lock (only
``MetaStore._lock``, through :class:`GroupCommit`, which lives here because it is the
store's metadata).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from dualbladed.errors import DualbladeError
from dualbladed.store import layers
from dualbladed.store.index import IndexEntry, ObjectInfo

if TYPE_CHECKING:
    from dualbladed.alloc.abstract import Extent
    from dualbladed.paths.abstract import ResidencyPath
    from dualbladed.store.index import ObjectIndex
    from dualbladed.store.meta import MetaStore

T = TypeVar("T")


class StoreLayers:
    """The ``LayerSite`` half of ``ObjectStore`` (a mixin; see the module docstring)."""

    _index: ObjectIndex
    _lock: threading.Lock
    _next_generation: int
    _layer_commits: GroupCommit
    _paths: dict[str, ResidencyPath]

    if TYPE_CHECKING:

        def _allocate(
            self, target: ResidencyPath, path_name: str, size: int, *, durable: bool
        ) -> Extent: ...
        def _check_open(self) -> None: ...
        def _choose_path(self, tenant: str, size: int, hint: str | None) -> str: ...
        def _commit(
            self, entry: IndexEntry | None, old: IndexEntry | None, *, durable: bool
        ) -> None: ...
        def _require(self, tenant: str, key: bytes) -> IndexEntry: ...
        def _retire(self, entry: IndexEntry) -> None: ...
        def _unpin(self, entry: IndexEntry) -> None: ...

    # -- the public operations (what the batch executor calls) -------------------------------

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

    # -- LayerSite ---------------------------------------------------------------------------

    def layer_install(
        self,
        tenant: str,
        key: bytes,
        size: int,
        path: str | None,
        build: Callable[[str, Extent, int], IndexEntry],
    ) -> ObjectInfo:
        """See ``LayerSite.layer_install``."""
        path_name = self._choose_path(tenant, size, path)
        target = self._paths[path_name]
        with self._lock:
            self._check_open()
            extent = self._allocate(target, path_name, size, durable=False)  # may evict (LRU)
            try:
                entry = build(path_name, extent, self._next_generation)
                old = self._index.lookup(tenant, key)
                self._commit(entry, old, durable=False)
            except BaseException:
                target.release(extent)
                raise
            self._next_generation += 1
            if old is not None:
                self._retire(old)
            self._index.install(entry)
            return entry.snapshot()

    def layer_pin(
        self, tenant: str, key: bytes, check: Callable[[ObjectInfo], T], *, access: bool
    ) -> tuple[IndexEntry, T]:
        """See ``LayerSite.layer_pin``."""
        with self._lock:
            self._check_open()
            entry = self._require(tenant, key)
            checked = check(entry.info)
            self._index.pin(entry)
            if access:
                self._index.note_access(entry)
        return entry, checked

    def layer_unpin(self, entry: IndexEntry) -> None:
        """See ``LayerSite.layer_unpin``."""
        with self._lock:
            self._unpin(entry)

    def layer_follow_move(self, entry: IndexEntry, state: layers.LayerState) -> IndexEntry:
        """See ``LayerSite.layer_follow_move``."""
        with self._lock:
            if not entry.dead:
                return entry
            live = self._index.lookup(entry.tenant, entry.key)
            if live is None or live.layer is not state:
                return entry  # replaced or deleted: the caller's liveness check reports it
            self._index.pin(live)
            self._unpin(entry)
            return live

    def layer_info(self, entry: IndexEntry) -> ObjectInfo | None:
        """See ``LayerSite.layer_info``."""
        with self._lock:
            self._check_open()
            return None if entry.dead else entry.info

    def layer_commit_size(self, info: ObjectInfo, *, durable: bool) -> bool:
        """See ``LayerSite.layer_commit_size``."""
        return self._layer_commits.commit(info, durable=durable)

    def layer_publish(
        self, entry: IndexEntry, info: ObjectInfo, then: Callable[[], None]
    ) -> ObjectInfo | None:
        """See ``LayerSite.layer_publish``."""
        with self._lock:
            self._check_open()
            if entry.dead:
                return None
            self._index.replace_info(entry, info)  # keeps the running totals in step
            then()
            return entry.snapshot()

    def layer_drop(self, entry: IndexEntry) -> None:
        """See ``LayerSite.layer_drop``."""
        with self._lock:
            info = entry.info
            if self._index.lookup(info.tenant, info.key) is entry:
                self._commit(None, entry, durable=False)
                self._retire(entry)


class GroupCommit:
    """Group commit of persistent layer objects' new sizes and crcs (one per store).

    An append's metadata update is one small UPDATE, but each SQLite transaction costs
    ~0.2 ms here; a decode step appends to every layer at once (the batch executor runs them
    in parallel), so the updates that arrive while a transaction runs are committed together
    by the next one: the first waiter becomes the leader, takes every queued update and commits
    them in ONE transaction (durable -- synchronous=FULL -- when any of them asked for it), then
    wakes the others. Each caller returns only once its own update is committed, so an append
    is still acknowledged after its commit.

    Runs outside ``ObjectStore._lock`` (only ``MetaStore._lock`` is taken, which keeps the
    lock order). That is safe because each UPDATE names the row's generation: a row replaced or
    deleted meanwhile is not touched, and the append then reports the replacement.
    """

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leader = False

    def commit(self, info: ObjectInfo, *, durable: bool) -> bool:
        """Commit ``info``'s size and chunk crcs; returns once they are committed, False when
        no row of that generation was there to update (replaced or deleted meanwhile)."""
        mine = _Pending(info, durable)
        with self._cond:
            self._queue.append(mine)
            while not mine.done and self._leader:
                self._cond.wait()
            if not mine.done:
                self._leader = True
                batch, self._queue = self._queue, []
        if not mine.done:
            error = self._commit(batch)
            with self._cond:
                for pending in batch:
                    pending.error, pending.done = error, True
                self._leader = False
                self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.found

    def _commit(self, batch: list[_Pending]) -> DualbladeError | None:
        try:
            with self._meta.txn(durable=any(p.durable for p in batch)) as t:
                for p in batch:
                    i = p.info
                    p.found = t.set_layer_size(i.tenant, i.key, i.generation, i.size, i.chunk_crcs)
        except DualbladeError as exc:
            return exc
        except Exception as exc:  # sqlite3.Error, OSError from the state dir
            return DualbladeError(f"metadata commit failed: {exc}")
        return None


class _Pending:
    __slots__ = ("info", "durable", "done", "found", "error")

    def __init__(self, info: ObjectInfo, durable: bool) -> None:
        self.info = info
        self.durable = durable
        self.done = False
        self.found = False
        self.error: DualbladeError | None = None
