"""The store's side of migration: the :class:`~dualbladed.store.relocate.MoveSite` protocol.

:mod:`dualbladed.store.relocate` holds the protocol (the order of steps, the kill points) and
never touches the store's internals; these methods are the four documented operations it drives,
plus :meth:`StoreMoves.relocate`, which holds a layer object's append lock around a move. A
mixin of :class:`~dualbladed.store.objects.ObjectStore`: the steps that need the store's lock
take it here, data I/O runs outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from dualbladed.errors import FailedPrecondition
from dualbladed.store import layers
from dualbladed.store.index import IndexEntry, ObjectInfo
from dualbladed.store.input import check_key
from dualbladed.store.relocate import Bounce, Move, relocate

if TYPE_CHECKING:
    from dualbladed.paths.abstract import ResidencyPath
    from dualbladed.store.index import ObjectIndex


class StoreMoves:
    """The ``MoveSite`` half of ``ObjectStore`` (a mixin; see the module docstring)."""

    _index: ObjectIndex
    _lock: threading.Lock
    _moving: threading.local

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def _commit(
            self, entry: IndexEntry | None, old: IndexEntry | None, *, durable: bool
        ) -> None: ...
        def _drop_corrupt(self, entry: IndexEntry, actual: int) -> None: ...
        def _path_named(self, name: str) -> ResidencyPath: ...
        def _read_verified(self, entry: IndexEntry, view: memoryview) -> int | None: ...
        def _require(self, tenant: str, key: bytes) -> IndexEntry: ...
        def _retire(self, entry: IndexEntry) -> None: ...
        def _unpin(self, entry: IndexEntry) -> None: ...

    def relocate(
        self, tenant: str, key: bytes, new_path: str, *, bounce: Bounce | None = None
    ) -> ObjectInfo:
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

        ``bounce``: a buffer to copy through, reused across this thread's moves
        (:class:`~dualbladed.store.relocate.Bounce`); None maps one for this move.
        """
        key = check_key(tenant, key)
        with self._lock:
            self._check_open()
            state = self._require(tenant, key).layer
        if state is None:
            return relocate(self, tenant, key, new_path, bounce=bounce)
        with state.lock:
            self._moving.layer = state  # begin_move checks that it moves what is locked
            try:
                return relocate(self, tenant, key, new_path, bounce=bounce)
            finally:
                self._moving.layer = None

    def begin_move(self, tenant: str, key: bytes, new_path: str) -> Move | ObjectInfo:
        """Pin the object and allocate on ``new_path`` (see ``MoveSite``)."""
        key = check_key(tenant, key)
        dest = self._path_named(new_path)
        with self._lock:
            self._check_open()
            entry = self._require(tenant, key)
            if entry.path == new_path:
                return entry.snapshot()
            if entry.layer is not None and entry.layer is not getattr(self._moving, "layer", None):
                raise FailedPrecondition(
                    f"key {key!r} is a layer object that changed before its move began (or is "
                    "moved without its append lock: use ObjectStore.relocate)"
                )
            self._index.pin(entry)
            try:
                # a layer object moves its whole reserved capacity, not only the bytes written
                extent = dest.allocate(entry.capacity or entry.size)
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
