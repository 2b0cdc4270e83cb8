"""Moving one object between residency paths (the residency arbiter's migration hook).

Migration sees the store only through :class:`MoveSite`, four documented operations that
:class:`~dualbladed.store.objects.ObjectStore` implements; it never touches the store's lock,
index or metadata. The site takes its own lock for the steps that need it and runs data I/O
outside it, so this module holds the protocol (the order of steps and the kill points) and the
store holds the state. This module does not import the store: the dependency points one way.

Crash ordering::

    begin_move: pin the source + allocate on the destination (site lock)
        -> read_source: read + verify the source into a bounce buffer (no lock)
        -> write the destination -> flush it, for a persistent object (no lock)
        -> [kill point relocate.after_copy]
        -> commit_move: commit the row naming the destination, durably (site lock)
           -> [kill point relocate.after_commit]
           -> retire the source entry; its extent is freed once no reader pins it

A crash before the commit leaves the row naming the source, whose bytes were never touched; the
destination extent is free after restart because free maps come from committed rows. A crash
after the commit leaves the row naming a destination that was flushed before the commit; the
source extent is free after restart for the same reason. Either way exactly one valid copy.
An ephemeral object has no row and does not survive a restart, so its copy is not flushed: a
promotion to the page cache would otherwise force its bytes to the disk (fdatasync of the
slab) while decode reads compete for the same disk, and buys nothing.
Any failure before the commit calls ``abandon_move``: the destination extent is freed and the
source unpinned, so nothing changed.

Layer objects (``dualbladed.store.layers``) follow the same protocol: ``begin_move`` allocates
their whole capacity, ``read_source`` verifies every chunk crc, and the moved row keeps size,
capacity and crcs. ``ObjectStore.relocate`` holds the object's append lock around all of it.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dualblade.v1.wire import close_mapping
from dualbladed.alloc.abstract import Extent
from dualbladed.errors import ChecksumMismatch
from dualbladed.killpoints import killpoint
from dualbladed.paths.abstract import ResidencyPath
from dualbladed.store.index import IndexEntry, ObjectInfo

logger = logging.getLogger(__name__)

__all__ = ["Move", "MoveSite", "relocate"]


@dataclass(frozen=True)
class Move:
    """One migration in flight: the pinned source version and the extent held on ``dest``."""

    source: IndexEntry
    dest_name: str
    dest: ResidencyPath
    extent: Extent


class MoveSite(Protocol):
    """What a store lends to migration (implemented by ``ObjectStore``)."""

    def begin_move(self, tenant: str, key: bytes, new_path: str) -> Move | ObjectInfo:
        """Under the store lock: find the object, pin it and allocate its size on ``new_path``.

        Returns the object's info instead when it already lives on ``new_path``.
        Raises ``NotFound``, ``InvalidArgument`` (unknown path), ``OutOfSpace`` (nothing held).
        """
        ...

    def read_source(self, move: Move, view: memoryview) -> int | None:
        """Without the lock: read the pinned source into ``view`` and verify it.

        None when the checksum matches; otherwise the checksum read (``view`` is zeroed).
        """
        ...

    def abandon_move(self, move: Move, *, corrupt: int | None = None) -> None:
        """Under the store lock: free the destination extent and unpin the source.

        With ``corrupt`` (the checksum ``read_source`` found), also drop the source object.
        """
        ...

    def commit_move(self, move: Move, after_commit: Callable[[], None]) -> ObjectInfo:
        """Under the store lock: make the object live on the destination, durably.

        Unpins the source. If the key was overwritten or deleted meanwhile, frees the
        destination and raises ``FailedPrecondition``; if the commit fails, frees the
        destination and re-raises. Otherwise commits the row, calls ``after_commit`` (still
        under the lock), retires the source and installs the moved version.
        """
        ...


def relocate(site: MoveSite, tenant: str, key: bytes, new_path: str) -> ObjectInfo:
    """Move ``(tenant, key)`` to ``new_path``; see :meth:`ObjectStore.relocate`."""
    move = site.begin_move(tenant, key, new_path)
    if isinstance(move, ObjectInfo):
        return move  # already there
    info = move.source.info
    try:
        bounce = mmap.mmap(-1, info.length)  # page-aligned, as O_DIRECT wants
        view = memoryview(bounce)[: info.size]
        try:
            actual = site.read_source(move, view)
            if actual is None:
                move.dest.write(move.extent, view)
                if info.persistent:  # (an ephemeral object has no row to order it before)
                    move.dest.flush()
                else:  # dirty pages cannot be reclaimed: others' clean ones go instead
                    move.dest.start_writeback(move.extent)
        finally:
            view.release()
            close_mapping(bounce)  # deferred if a failed write's traceback holds views
    except BaseException:
        site.abandon_move(move)
        raise
    if actual is not None:
        site.abandon_move(move, corrupt=actual)
        raise ChecksumMismatch(key, info.checksum, actual)
    killpoint("relocate.after_copy")
    moved = site.commit_move(move, lambda: killpoint("relocate.after_commit"))
    logger.info(
        "relocated tenant %s key %r: %s@%d -> %s@%d",
        tenant,
        key,
        info.path,
        info.offset,
        moved.path,
        moved.offset,
    )
    return moved
