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

The bounce buffer is the caller's to reuse (:class:`Bounce`): the arbiter gives each thread that
runs a plan's moves one buffer for the whole plan and unmaps it when the plan ends. A fresh
mapping per move is faulted in and zeroed page by page on first touch. On the bench VM, where
freed guest pages go back to the host (virtio-balloon free page reporting,
``page_reporting_order=9``), reading 64 objects of 16 MiB O_DIRECT into a fresh mapping each
cost 1.15 s of CPU and 2.3-3.0 s, against 0.08 s and 0.9 s into one reused buffer; promoting 32
layer objects of 16 MiB took 1.07-2.69 s of CPU with a fresh bounce each and 0.39-0.74 s through
one (in-process, file namespace), CPU that decode running beside it needs.

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

__all__ = ["Bounce", "Move", "MoveSite", "relocate"]

#: a bounce grows in steps of this much, so objects a few KiB apart share one mapping
BOUNCE_STEP = 1 << 20


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


class Bounce:
    """A page-aligned buffer (as O_DIRECT wants) reused by the moves of one thread.

    It grows to the largest object moved (in ``BOUNCE_STEP`` steps) and is unmapped by
    :meth:`close` (or when dropped), so it costs memory only while its owner runs moves: the
    arbiter keeps one per migrating thread for the length of a plan. Not thread-safe. Its bytes
    are never exposed: a move writes exactly the ``size`` bytes its verified read filled.
    """

    def __init__(self) -> None:
        #: the buffer now (None: unmapped)
        self.mapping: mmap.mmap | None = None

    def view(self, nbytes: int) -> memoryview:
        """The first ``nbytes`` bytes, mapping a larger buffer first if needed."""
        if self.mapping is None or len(self.mapping) < nbytes:
            self.close()
            self.mapping = mmap.mmap(-1, max(BOUNCE_STEP, -(-nbytes // BOUNCE_STEP) * BOUNCE_STEP))
        return memoryview(self.mapping)[:nbytes]

    @property
    def capacity(self) -> int:
        """Bytes mapped now (0: none)."""
        return 0 if self.mapping is None else len(self.mapping)

    def close(self) -> None:
        """Unmap now, or once the last view is released (``close_mapping``)."""
        if self.mapping is not None:
            close_mapping(self.mapping)  # deferred if a failed write's traceback holds views
            self.mapping = None


def relocate(
    site: MoveSite, tenant: str, key: bytes, new_path: str, *, bounce: Bounce | None = None
) -> ObjectInfo:
    """Move ``(tenant, key)`` to ``new_path``; see :meth:`ObjectStore.relocate`.

    ``bounce``: the caller's buffer to copy through (module docstring); None maps one for this
    move only."""
    move = site.begin_move(tenant, key, new_path)
    if isinstance(move, ObjectInfo):
        return move  # already there
    info = move.source.info
    buffer = Bounce() if bounce is None else bounce
    try:
        view = buffer.view(info.length)[: info.size]
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
            if bounce is None:  # ours, for this move only
                buffer.close()
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
