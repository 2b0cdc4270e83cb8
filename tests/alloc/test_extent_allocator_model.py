"""Stateful property test: ExtentAllocator against a block bitmap model.

The model is deliberately dumb: a ``bytearray`` with one entry per block (1 = used). It computes
best fit by scanning runs of free blocks, so it shares no code or data structure with the
allocator's sorted containers.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from dualbladed.alloc.abstract import Extent
from dualbladed.alloc.extent import ExtentAllocator
from dualbladed.errors import InvalidArgument, OutOfSpace

ALIGN = 512
BLOCKS = 64
START = 4 * ALIGN  # a few reserved "superblock" blocks below the managed range


class BitmapModel:
    def __init__(self, blocks: int) -> None:
        self.used = bytearray(blocks)

    def runs(self) -> list[tuple[int, int]]:
        """Maximal free runs as (first block, block count), in block order."""
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(self.used):
            if self.used[i]:
                i += 1
                continue
            j = i
            while j < len(self.used) and not self.used[j]:
                j += 1
            out.append((i, j - i))
            i = j
        return out

    def best_fit(self, nblocks: int) -> int | None:
        fits = [(count, first) for first, count in self.runs() if count >= nblocks]
        return min(fits)[1] if fits else None

    def is_free(self, first: int, count: int) -> bool:
        return not any(self.used[first : first + count])

    def mark(self, first: int, count: int, value: int) -> None:
        self.used[first : first + count] = bytes([value]) * count


def to_extent(first: int, count: int) -> Extent:
    return Extent(START + first * ALIGN, count * ALIGN)


class AllocatorMachine(RuleBasedStateMachine):
    extents = Bundle("extents")

    def __init__(self) -> None:
        super().__init__()
        self.alloc = ExtentAllocator(START, START + BLOCKS * ALIGN, ALIGN)
        self.model = BitmapModel(BLOCKS)

    @rule(target=extents, length=st.integers(min_value=1, max_value=20 * ALIGN))
    def allocate(self, length: int) -> Extent | None:
        nblocks = -(-length // ALIGN)
        expected = self.model.best_fit(nblocks)
        if expected is None:
            before = list(self.alloc.free_extents())
            try:
                self.alloc.allocate(length)
            except OutOfSpace:
                pass
            else:
                raise AssertionError("allocator found space the model does not have")
            assert list(self.alloc.free_extents()) == before
            return None  # hypothesis stores it; free() skips None
        got = self.alloc.allocate(length)
        assert got == to_extent(expected, nblocks)
        self.model.mark(expected, nblocks, 1)
        return got

    @rule(ext=consumes(extents))
    def free(self, ext: Extent | None) -> None:
        if ext is None:
            return
        self.alloc.free(ext)
        self.model.mark((ext.offset - START) // ALIGN, ext.length // ALIGN, 0)

    @rule(
        first=st.integers(min_value=0, max_value=BLOCKS - 1),
        count=st.integers(min_value=1, max_value=8),
    )
    def bad_free_or_reserve(self, first: int, count: int) -> None:
        """free() of a range touching free space and reserve() of a used one both fail."""
        count = min(count, BLOCKS - first)
        ext = to_extent(first, count)
        before = list(self.alloc.free_extents())
        if self.model.is_free(first, count):
            self.alloc.reserve(ext)
            self.model.mark(first, count, 1)
            self.alloc.free(ext)  # give it straight back: keeps the bundle the only owner
            self.model.mark(first, count, 0)
        else:
            try:
                self.alloc.reserve(ext)
            except InvalidArgument:
                pass
            else:
                raise AssertionError(f"reserve of partly used {ext} succeeded")
        if any(not self.model.used[b] for b in range(first, first + count)):
            try:
                self.alloc.free(ext)
            except InvalidArgument:
                pass
            else:
                raise AssertionError(f"free of partly free {ext} succeeded")
        assert list(self.alloc.free_extents()) == before

    @invariant()
    def free_map_matches_model(self) -> None:
        expected = [to_extent(first, count) for first, count in self.model.runs()]
        assert list(self.alloc.free_extents()) == expected
        stats = self.alloc.stats()
        free = (BLOCKS - sum(self.model.used)) * ALIGN
        assert stats.free == free
        assert stats.used == BLOCKS * ALIGN - free
        assert stats.largest_free == max((e.length for e in expected), default=0)


AllocatorMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=60, deadline=None
)
TestAllocatorMachine = AllocatorMachine.TestCase
