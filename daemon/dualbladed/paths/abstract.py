"""Residency paths: where an object's bytes live.

Two implementations exist:

- ``direct``    (:mod:`dualbladed.paths.direct`): one contiguous LBA extent on the owned
  namespace, O_DIRECT I/O, no page cache.
- ``pagecache`` (:mod:`dualbladed.paths.pagecache`): a range inside a few large slab files in the
  state directory, buffered I/O, served from RAM while memory lasts.

Both address their space as :class:`~dualbladed.alloc.abstract.Extent` ``(offset, length)``; for
the page-cache path the offset is virtual (slab index * slab size + offset in slab), so one
metadata schema and one allocator type serve both.

Primitives:

- ``name``                         "direct" | "pagecache" (stored in metadata).
- ``alignment``                    extents and I/O are multiples of this.
- ``allocate(length) -> Extent``   reserve space; ``OutOfSpace`` leaves the path unchanged.
- ``release(extent)``              give space back (the page-cache path also drops its pages).
- ``reserve(extent)``              mark space used when rebuilding from committed metadata.
- ``reserve_many(extents)``        the same for many disjoint extents sorted by offset, all or
                                   nothing (start-up; the default reserves one by one).
- ``write(extent, src)``           write ``len(src)`` bytes at the start of ``extent``; ``src``
                                   is any contiguous buffer (unaligned tails are bounced).
- ``read(extent, dst)``            read ``len(dst)`` bytes from the start of ``extent``.
- ``flush()``                      make completed writes durable.
- ``prefetch(extent)``             optional hint that a read is coming (WILLNEED).
- ``resident_bytes() -> int``      bytes this path currently holds in RAM (0 for direct).
- ``stats() -> AllocStats``        space accounting.
- ``close()``                      write back what is dirty (best effort) and let go of files;
                                   idempotent. ``allocate``, ``release``, ``reserve``,
                                   ``write``, ``read`` and ``flush`` then raise
                                   ``FailedPrecondition``.

Error contract (checked for every path by ``tests/paths/test_path_conformance.py``): a path
raises only :class:`~dualbladed.errors.DualbladeError` subclasses, never a bare ``OSError``.
Each syscall's ``OSError`` is classified once, by :func:`dualbladed.oserrors.from_oserror`, so a
condition maps to the same type and gRPC code on every path:

- no free extent large enough              -> ``OutOfSpace`` (nothing allocated, nothing changed)
- ENOSPC/EDQUOT under a write or flush     -> ``ResourceExhausted`` (the device or the filesystem
                                              holding the slabs is full)
- EIO and friends                          -> ``DeviceIOError``
- a buffer that does not fit the extent    -> ``OutOfRange``; a read-only ``dst`` or a
                                              non-contiguous buffer -> ``InvalidArgument``

A failed ``write`` or ``flush`` leaves the allocation as it was (the caller still owns the
extent and releases it); the extent's bytes on the medium are then unspecified, and so, after a
failed ``flush``, are those of every write since the last good one (the kernel may drop dirty
pages on EIO). Callers above the paths (the store, migration) therefore never catch ``OSError``
or look at an errno.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from dualbladed.alloc.abstract import AllocStats, Extent
from dualbladed.alloc.extent import Span

DIRECT = "direct"
PAGECACHE = "pagecache"
PATH_NAMES = (DIRECT, PAGECACHE)


class ResidencyPath(abc.ABC):
    name: str
    alignment: int

    @abc.abstractmethod
    def allocate(self, length: int) -> Extent: ...

    @abc.abstractmethod
    def release(self, extent: Extent) -> None: ...

    @abc.abstractmethod
    def reserve(self, extent: Extent) -> None: ...

    def reserve_many(self, extents: Sequence[Span]) -> None:
        """Reserve disjoint ``extents`` (sorted by offset; anything with ``offset`` and
        ``length``); on a conflict nothing stays reserved.

        Raises:
            InvalidArgument: an extent conflicts with used space or another extent.
        """
        done: list[Extent] = []
        try:
            for span in extents:
                extent = Extent(span.offset, span.length)
                self.reserve(extent)
                done.append(extent)
        except BaseException:
            for extent in done:
                self.release(extent)
            raise

    @abc.abstractmethod
    def write(self, extent: Extent, src: memoryview) -> None: ...

    @abc.abstractmethod
    def read(self, extent: Extent, dst: memoryview) -> None: ...

    @abc.abstractmethod
    def flush(self) -> None: ...

    def prefetch(self, extent: Extent) -> None:  # noqa: B027 - optional hook
        """Hint that ``extent`` will be read soon. Default: nothing."""

    def start_writeback(self, extent: Extent) -> None:  # noqa: B027 - optional hook
        """Start writing ``extent``'s cached pages to the disk now, without waiting and without
        any durability promise (``flush`` is that). Default: nothing (no cache of its own)."""

    def resident_bytes(self) -> int:
        return 0

    @abc.abstractmethod
    def stats(self) -> AllocStats: ...

    @abc.abstractmethod
    def close(self) -> None: ...
