"""Best-fit extent allocator with coalescing over one contiguous byte range.

The allocator hands out contiguous, aligned extents of ``[start, end)``, the namespace's data
area. Everything below ``start`` (the superblock area) is never handed out.

Data structures (both hold exactly the *free* extents, never the allocated ones):

- ``_by_offset``: ``SortedDict`` offset -> length. Finds the neighbours of a range in O(log n),
  which is what coalescing on free and the "is this range free?" checks need.
- ``_by_size``: ``SortedList`` of ``(length, offset)``. ``bisect_left((n, -1))`` lands on the
  smallest free extent of at least ``n`` bytes and, among equal lengths, the lowest offset: that
  is the best-fit rule in one O(log n) step.

Both are updated together in every mutation; a mutation validates everything first and only then
touches either structure, so every error leaves the allocator exactly as it was (no partial
allocation, no half-coalesced free).

What the allocator does *not* know: which extents are allocated. The committed extent table in
the metadata store is the truth; at start-up the free map is rebuilt from it with
:meth:`ExtentAllocator.reserve`, so the two cannot disagree. A consequence: ``free`` detects every
range that touches free space (double free, overlap, out of bounds, misalignment) but cannot tell
"one allocated extent" from "the union of two adjacent allocated extents". The caller frees what
its metadata says it allocated.

Thread safety is the caller's job: no method takes a lock. The direct path and the store
serialize allocator calls under their own locks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from sortedcontainers import SortedDict, SortedList

from dualbladed.alloc.abstract import Allocator, AllocStats, Extent
from dualbladed.errors import InvalidArgument, OutOfSpace

__all__ = ["ExtentAllocator", "Span"]


class Span(Protocol):
    """What bulk reservation reads of an extent (``Extent`` and store records have both)."""

    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...


class ExtentAllocator(Allocator):
    """Best-fit, coalescing allocator over ``[start, end)`` with ``alignment``-byte granularity.

    Args:
        start: first byte that may be handed out (a multiple of ``alignment``).
        end: one past the last byte (a multiple of ``alignment``, ``>= start``).
        alignment: allocation unit in bytes (the namespace's logical block size).

    Raises:
        InvalidArgument: the bounds or the alignment break the rules above.
    """

    def __init__(self, start: int, end: int, alignment: int) -> None:
        if not isinstance(alignment, int) or alignment <= 0:
            raise InvalidArgument(f"alignment must be a positive integer, got {alignment!r}")
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"{name} must be a non-negative integer, got {value!r}")
            if value % alignment:
                raise InvalidArgument(
                    f"{name} {value} is not a multiple of the alignment {alignment}"
                )
        if end < start:
            raise InvalidArgument(f"end {end} is below start {start}")
        self.start = start
        self.end = end
        self.alignment = alignment
        self._by_offset: SortedDict = SortedDict()
        self._by_size: SortedList = SortedList()
        self._free_bytes = 0
        if end > start:
            self._insert(start, end - start)

    # ------------------------------------------------------------------ public API

    @property
    def capacity(self) -> int:
        """Bytes managed: ``end - start``."""
        return self.end - self.start

    def allocate(self, length: int) -> Extent:
        """Return the best-fitting free extent of ``length`` rounded up to the alignment.

        Raises:
            InvalidArgument: ``length`` is not a positive integer.
            OutOfSpace: no single free extent is large enough (also when enough bytes are free
                but not contiguous); nothing changes.
        """
        if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
            raise InvalidArgument(f"allocation length must be a positive integer, got {length!r}")
        need = self._round_up(length)
        idx = self._by_size.bisect_left((need, -1))
        if idx == len(self._by_size):
            raise OutOfSpace(need, self._free_bytes, self._largest_free())
        have, offset = self._by_size[idx]
        self._remove(offset, have)
        if have > need:
            self._insert(offset + need, have - need)
        return Extent(offset, need)

    def free(self, extent: Extent) -> None:
        """Return ``extent`` to the free map, merging it with free neighbours.

        Raises:
            InvalidArgument: the extent is misaligned, out of bounds, empty, or overlaps free
                space (a double free); nothing changes.
        """
        self._check_extent(extent, "free")
        offset, end = extent.offset, extent.end
        prev = self._free_before(offset)
        if prev is not None and prev[0] + prev[1] > offset:
            raise InvalidArgument(
                f"free of {self._fmt(extent)} overlaps free extent "
                f"{self._fmt(Extent(*prev))}: double free or never allocated"
            )
        nxt = self._free_from(offset)
        if nxt is not None and nxt[0] < end:
            raise InvalidArgument(
                f"free of {self._fmt(extent)} overlaps free extent "
                f"{self._fmt(Extent(*nxt))}: double free or never allocated"
            )
        # Validated: now coalesce with whichever neighbours touch the range.
        new_offset, new_end = offset, end
        if prev is not None and prev[0] + prev[1] == offset:
            self._remove(*prev)
            new_offset = prev[0]
        if nxt is not None and nxt[0] == end:
            self._remove(*nxt)
            new_end = nxt[0] + nxt[1]
        self._insert(new_offset, new_end - new_offset)

    def reserve(self, extent: Extent) -> None:
        """Mark exactly ``extent`` used (start-up rebuild from the committed extent table).

        Raises:
            InvalidArgument: the extent is misaligned, out of bounds, empty, or any part of it
                is already used; nothing changes.
        """
        self._check_extent(extent, "reserve")
        holder = self._free_before(extent.offset)
        if holder is None or holder[0] + holder[1] < extent.end:
            raise InvalidArgument(
                f"cannot reserve {self._fmt(extent)}: part of it is already in use"
            )
        hold_offset, hold_length = holder
        self._remove(hold_offset, hold_length)
        if extent.offset > hold_offset:
            self._insert(hold_offset, extent.offset - hold_offset)
        hold_end = hold_offset + hold_length
        if hold_end > extent.end:
            self._insert(extent.end, hold_end - extent.end)

    def reserve_sorted(self, extents: Sequence[Span]) -> None:
        """Mark many extents used at once on a wholly free allocator (start-up rebuild).

        ``extents`` (anything with ``offset`` and ``length``: :class:`Extent`, a store record)
        must be sorted by offset and pairwise disjoint. The free map is built as their
        complement in one pass and two bulk sorts, instead of one O(log n) split per extent:
        start-up then costs C-speed sorting, not tens of µs of Python per object.

        Raises:
            InvalidArgument: something is already allocated, or an extent is misaligned, out of
                bounds, empty, unsorted or overlaps its predecessor; nothing changes.
        """
        if self._free_bytes != self.capacity:
            raise InvalidArgument("reserve_sorted needs a wholly free allocator")
        gaps: list[tuple[int, int]] = []
        cursor = self.start
        align = self.alignment
        for extent in extents:
            offset, length = extent.offset, extent.length
            if offset < cursor or length <= 0 or offset % align or length % align:
                bad = Extent(offset, length)
                self._check_extent(bad, "reserve")  # raises the precise error when it applies
                raise InvalidArgument(
                    f"cannot reserve {self._fmt(bad)}: overlaps the previous extent or is "
                    "out of order"
                )
            if offset > cursor:
                gaps.append((cursor, offset - cursor))
            cursor = offset + length
        if cursor > self.end:
            raise InvalidArgument(
                f"cannot reserve up to {cursor}: outside the managed range [{self.start}, "
                f"{self.end})"
            )
        if cursor < self.end:
            gaps.append((cursor, self.end - cursor))
        self._by_offset = SortedDict(gaps)
        self._by_size = SortedList((length, offset) for offset, length in gaps)
        self._free_bytes = sum(length for _, length in gaps)

    def largest_free(self) -> int:
        """The longest free extent in bytes, O(1) (what a placement check needs)."""
        return self._largest_free()

    def stats(self) -> AllocStats:
        largest = self._largest_free()
        free = self._free_bytes
        return AllocStats(
            capacity=self.capacity,
            free=free,
            used=self.capacity - free,
            largest_free=largest,
            free_extents=len(self._by_offset),
            fragmentation=(1.0 - largest / free) if free else 0.0,
        )

    def free_extents(self) -> Iterator[Extent]:
        """The free map in offset order (a snapshot: safe to mutate while iterating)."""
        return iter([Extent(off, length) for off, length in self._by_offset.items()])

    def __repr__(self) -> str:
        return (
            f"ExtentAllocator(start={self.start}, end={self.end}, alignment={self.alignment}, "
            f"free={self._free_bytes}, free_extents={len(self._by_offset)})"
        )

    # ------------------------------------------------------------------ internals

    def _round_up(self, length: int) -> int:
        return -(-length // self.alignment) * self.alignment

    def _largest_free(self) -> int:
        return self._by_size[-1][0] if self._by_size else 0

    def _insert(self, offset: int, length: int) -> None:
        self._by_offset[offset] = length
        self._by_size.add((length, offset))
        self._free_bytes += length

    def _remove(self, offset: int, length: int) -> None:
        del self._by_offset[offset]
        self._by_size.remove((length, offset))
        self._free_bytes -= length

    def _free_before(self, offset: int) -> tuple[int, int] | None:
        """The free extent with the greatest start ``<= offset``, if any."""
        idx = self._by_offset.bisect_right(offset)
        if idx == 0:
            return None
        start = self._by_offset.keys()[idx - 1]
        return start, self._by_offset[start]

    def _free_from(self, offset: int) -> tuple[int, int] | None:
        """The free extent with the smallest start ``> offset``, if any."""
        idx = self._by_offset.bisect_right(offset)
        if idx == len(self._by_offset):
            return None
        start = self._by_offset.keys()[idx]
        return start, self._by_offset[start]

    def _check_extent(self, extent: Extent, op: str) -> None:
        if not isinstance(extent, Extent):
            raise InvalidArgument(f"{op} needs an Extent, got {type(extent).__name__}")
        if extent.length <= 0:
            raise InvalidArgument(f"cannot {op} {self._fmt(extent)}: length must be positive")
        if extent.offset % self.alignment or extent.length % self.alignment:
            raise InvalidArgument(
                f"cannot {op} {self._fmt(extent)}: offset and length must be multiples of "
                f"{self.alignment}"
            )
        if extent.offset < self.start or extent.end > self.end:
            raise InvalidArgument(
                f"cannot {op} {self._fmt(extent)}: outside the managed range "
                f"[{self.start}, {self.end})"
            )

    @staticmethod
    def _fmt(extent: Extent) -> str:
        return f"[{extent.offset}, {extent.end}) ({extent.length} bytes)"
