"""ExtentAllocator: invariants under random load, best-fit order, errors that change nothing.

The ``make`` fixture is the factory every case builds its allocator from, so another allocator
implementation can be added to the parametrization and run through the same suite.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from dualbladed.alloc.abstract import Allocator, Extent
from dualbladed.alloc.extent import ExtentAllocator
from dualbladed.errors import InvalidArgument, OutOfSpace

ALIGN = 4096
START = 1 << 20  # the superblock area below this is never handed out

Factory = Callable[[int, int, int], Allocator]


@pytest.fixture(params=["extent"])
def make(request: pytest.FixtureRequest) -> Factory:
    factories: dict[str, Factory] = {"extent": ExtentAllocator}
    return factories[request.param]


def check_invariants(alloc: Allocator, allocated: list[Extent], start: int, end: int) -> None:
    """capacity == free + allocated, no overlap anywhere, everything aligned and in range."""
    free = list(alloc.free_extents())
    stats = alloc.stats()
    free_sum = sum(e.length for e in free)
    used_sum = sum(e.length for e in allocated)
    assert stats.capacity == end - start
    assert stats.free == free_sum
    assert stats.used == used_sum
    assert free_sum + used_sum == end - start
    assert stats.free_extents == len(free)
    assert stats.largest_free == max((e.length for e in free), default=0)
    everything = sorted(free + allocated)
    for ext in everything:
        assert ext.length > 0
        assert ext.offset % ALIGN == 0 and ext.length % ALIGN == 0
        assert start <= ext.offset and ext.end <= end
    for a, b in zip(everything, everything[1:], strict=False):
        assert a.end <= b.offset, f"{a} overlaps {b}"
    # Coalescing: no two free extents touch.
    for a, b in zip(free, free[1:], strict=False):
        assert a.end < b.offset, f"free extents {a} and {b} were not coalesced"


def test_random_alloc_free_keeps_invariants_at_every_step(make: Factory) -> None:
    end = START + 4096 * ALIGN
    alloc = make(START, end, ALIGN)
    rng = random.Random(20260417)
    allocated: list[Extent] = []
    failures = 0
    for _ in range(10_000):
        if allocated and (rng.random() < 0.45 or alloc.stats().free == 0):
            victim = allocated.pop(rng.randrange(len(allocated)))
            alloc.free(victim)
        else:
            want = rng.choice([1, 100, ALIGN, ALIGN + 1, 3 * ALIGN, 17 * ALIGN, 200 * ALIGN])
            try:
                ext = alloc.allocate(want)
            except OutOfSpace:
                failures += 1
            else:
                assert ext.length == -(-want // ALIGN) * ALIGN
                allocated.append(ext)
        check_invariants(alloc, allocated, START, end)
    assert failures > 0, "the load never reached out-of-space; the test is too gentle"
    for ext in allocated:
        alloc.free(ext)
    assert list(alloc.free_extents()) == [Extent(START, end - START)]


def test_best_fit_picks_smallest_hole_then_lowest_offset(make: Factory) -> None:
    alloc = make(0, 64 * ALIGN, ALIGN)
    # Holes of 4, 2, 2 and 3 blocks separated by used blocks, then the tail.
    parts = [alloc.allocate(n * ALIGN) for n in (4, 1, 2, 1, 2, 1, 3, 1)]
    for hole in (parts[0], parts[2], parts[4], parts[6]):
        alloc.free(hole)
    got = alloc.allocate(2 * ALIGN)
    assert got == Extent(parts[2].offset, 2 * ALIGN)  # the first of the two 2-block holes
    got = alloc.allocate(ALIGN + 1)  # rounds to 2 blocks: the other 2-block hole
    assert got == Extent(parts[4].offset, 2 * ALIGN)
    got = alloc.allocate(3 * ALIGN)
    assert got == parts[6]
    got = alloc.allocate(ALIGN)  # only the 4-block hole and the tail remain: the hole
    assert got == Extent(parts[0].offset, ALIGN)


def test_nothing_below_start_is_handed_out(make: Factory) -> None:
    alloc = make(START, START + 8 * ALIGN, ALIGN)
    exts = [alloc.allocate(ALIGN) for _ in range(8)]
    assert min(e.offset for e in exts) == START
    with pytest.raises(OutOfSpace):
        alloc.allocate(1)
    with pytest.raises(InvalidArgument):
        alloc.free(Extent(0, ALIGN))
    with pytest.raises(InvalidArgument):
        alloc.reserve(Extent(START - ALIGN, ALIGN))


def test_fragmented_out_of_space_changes_nothing(make: Factory) -> None:
    alloc = make(0, 16 * ALIGN, ALIGN)
    blocks = [alloc.allocate(ALIGN) for _ in range(16)]
    for b in blocks[::2]:
        alloc.free(b)
    before_map = list(alloc.free_extents())
    before_stats = alloc.stats()
    assert before_stats.free == 8 * ALIGN
    with pytest.raises(OutOfSpace) as info:
        alloc.allocate(2 * ALIGN)  # 8 blocks free, none of them adjacent
    assert info.value.requested == 2 * ALIGN
    assert info.value.free == 8 * ALIGN
    assert info.value.largest_free == ALIGN
    assert "fragmented" in str(info.value)
    assert list(alloc.free_extents()) == before_map
    assert alloc.stats() == before_stats


def test_full_out_of_space_names_the_numbers(make: Factory) -> None:
    alloc = make(0, 4 * ALIGN, ALIGN)
    alloc.allocate(3 * ALIGN)
    with pytest.raises(OutOfSpace) as info:
        alloc.allocate(5 * ALIGN)
    assert "full" in str(info.value)
    assert str(5 * ALIGN) in str(info.value) and str(ALIGN) in str(info.value)


@pytest.mark.parametrize("length", [0, -1, -ALIGN])
def test_allocate_of_non_positive_length_is_invalid(make: Factory, length: int) -> None:
    alloc = make(0, 4 * ALIGN, ALIGN)
    with pytest.raises(InvalidArgument):
        alloc.allocate(length)
    assert alloc.stats().free == 4 * ALIGN


def test_double_free_is_invalid_and_changes_nothing(make: Factory) -> None:
    alloc = make(0, 8 * ALIGN, ALIGN)
    ext = alloc.allocate(2 * ALIGN)
    alloc.free(ext)
    before = list(alloc.free_extents())
    with pytest.raises(InvalidArgument, match="double free"):
        alloc.free(ext)
    assert list(alloc.free_extents()) == before


@pytest.mark.parametrize(
    "bad",
    [
        Extent(ALIGN + 1, ALIGN),  # misaligned offset
        Extent(ALIGN, ALIGN + 7),  # misaligned length
        Extent(ALIGN, 0),  # empty
        Extent(7 * ALIGN, 2 * ALIGN),  # runs past the end
        Extent(3 * ALIGN, 2 * ALIGN),  # overlaps the free tail
    ],
)
def test_bad_free_is_invalid_and_changes_nothing(make: Factory, bad: Extent) -> None:
    alloc = make(0, 8 * ALIGN, ALIGN)
    alloc.allocate(4 * ALIGN)
    before, stats = list(alloc.free_extents()), alloc.stats()
    with pytest.raises(InvalidArgument):
        alloc.free(bad)
    assert list(alloc.free_extents()) == before
    assert alloc.stats() == stats


def test_reserve_marks_exact_range_and_rejects_used_space(make: Factory) -> None:
    alloc = make(START, START + 16 * ALIGN, ALIGN)
    alloc.reserve(Extent(START + 4 * ALIGN, 2 * ALIGN))
    alloc.reserve(Extent(START, ALIGN))
    assert list(alloc.free_extents()) == [
        Extent(START + ALIGN, 3 * ALIGN),
        Extent(START + 6 * ALIGN, 10 * ALIGN),
    ]
    before = list(alloc.free_extents())
    for used in (Extent(START + 5 * ALIGN, 2 * ALIGN), Extent(START, ALIGN)):
        with pytest.raises(InvalidArgument, match="already in use"):
            alloc.reserve(used)
    assert list(alloc.free_extents()) == before
    # Reserved space is released with a plain free, and coalesces.
    alloc.free(Extent(START + 4 * ALIGN, 2 * ALIGN))
    alloc.free(Extent(START, ALIGN))
    assert list(alloc.free_extents()) == [Extent(START, 16 * ALIGN)]


def test_rebuild_by_reserve_reproduces_the_free_map(make: Factory) -> None:
    """Start-up: reserving the committed extents gives the same free map as the live one."""
    rng = random.Random(7)
    live = make(START, START + 512 * ALIGN, ALIGN)
    kept = [live.allocate(rng.randint(1, 9) * ALIGN) for _ in range(60)]
    for ext in kept[::3]:
        live.free(ext)
    committed = [e for i, e in enumerate(kept) if i % 3]
    rebuilt = make(START, START + 512 * ALIGN, ALIGN)
    for ext in rng.sample(committed, len(committed)):
        rebuilt.reserve(ext)
    assert list(rebuilt.free_extents()) == list(live.free_extents())
    assert rebuilt.stats() == live.stats()


def test_stats_and_fragmentation_score(make: Factory) -> None:
    alloc = make(0, 32 * ALIGN, ALIGN)
    stats = alloc.stats()
    assert (stats.free, stats.used, stats.largest_free, stats.free_extents) == (
        32 * ALIGN,
        0,
        32 * ALIGN,
        1,
    )
    assert stats.fragmentation == 0.0
    blocks = [alloc.allocate(ALIGN) for _ in range(32)]
    full = alloc.stats()
    assert (full.free, full.used, full.largest_free, full.fragmentation) == (0, 32 * ALIGN, 0, 0.0)
    for b in blocks[::2]:  # checkerboard
        alloc.free(b)
    checker = alloc.stats()
    assert checker.free_extents == 16
    assert checker.fragmentation == pytest.approx(1 - 1 / 16)
    assert checker.fragmentation > 0.9


def test_empty_range_is_always_out_of_space(make: Factory) -> None:
    alloc = make(START, START, ALIGN)
    assert list(alloc.free_extents()) == []
    assert alloc.stats().capacity == 0
    with pytest.raises(OutOfSpace):
        alloc.allocate(1)


@pytest.mark.parametrize(
    ("start", "end", "alignment"),
    [(0, 4096, 0), (1, 4096, 4096), (0, 4097, 4096), (8192, 4096, 4096), (-4096, 0, 4096)],
)
def test_constructor_rejects_bad_bounds(start: int, end: int, alignment: int) -> None:
    with pytest.raises(InvalidArgument):
        ExtentAllocator(start, end, alignment)
