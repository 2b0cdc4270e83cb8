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
``MetaStore._lock``, through :class:`~dualbladed.store.layers.GroupCommit`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from dualbladed.store import layers
from dualbladed.store.index import IndexEntry, ObjectInfo

if TYPE_CHECKING:
    from dualbladed.alloc.abstract import Extent
    from dualbladed.paths.abstract import ResidencyPath
    from dualbladed.store.index import ObjectIndex

T = TypeVar("T")


class StoreLayers:
    """The ``LayerSite`` half of ``ObjectStore`` (a mixin; see the module docstring)."""

    _index: ObjectIndex
    _lock: threading.Lock
    _next_generation: int
    _layer_commits: layers.GroupCommit
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
            live = self._index.lookup(entry.info.tenant, entry.info.key)
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
