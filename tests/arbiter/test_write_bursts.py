"""Prefill write-back: write speeds per path, the write path, burst detection and placement.

Pure code (no I/O, no clock): observations and placement times are scripted here, so which
path is faster for writes and when a tenant bursts is whatever the test says.
"""

from __future__ import annotations

import pytest

from dualbladed.arbiter.feedback import (
    BurstDetector,
    Feedback,
    FeedbackConfig,
    Observation,
    choose_write_path,
)
from dualbladed.arbiter.policy import ObjectHeat, PolicyConfig, ResidencyPolicy, TenantUsage
from dualbladed.arbiter.signals import MemorySignals, MeteredPath, PathReads, ReadMeter
from dualbladed.paths.abstract import DIRECT, PAGECACHE

MiB = 1 << 20
GiB = 1 << 30


def sig(available: int, free: int | None = None) -> MemorySignals:
    return MemorySignals(
        0.0, 64 * GiB, available, None, None, None, None, 0.0, 0.0, 0, 0, free, "host"
    )


def obs(
    now: float,
    *,
    writes: dict[str, PathReads] | None = None,
    placed: int = 0,
    migrated: int = 0,
    pc: int = 0,
    demand: int = 0,
    free: int | None = None,
) -> Observation:
    return Observation(
        now, sig(8 * GiB, free), pc, pc, demand, {}, placed, writes or {}, migrated_bytes=migrated
    )


def w(pc_bytes: int, pc_s: float, dr_bytes: int, dr_s: float) -> dict[str, PathReads]:
    return {PAGECACHE: PathReads(pc_bytes, 1, pc_s), DIRECT: PathReads(dr_bytes, 1, dr_s)}


def test_write_path_is_direct_until_both_are_measured_then_the_faster() -> None:
    x = FeedbackConfig().pagecache_write_advantage
    assert x == 4.0
    assert choose_write_path({}, x) == DIRECT
    assert choose_write_path({PAGECACHE: 5.0}, x) == DIRECT  # direct unmeasured: the safe guess
    assert choose_write_path({DIRECT: 1.0}, x) == DIRECT
    assert choose_write_path({PAGECACHE: 0.3, DIRECT: 1.0}, x) == DIRECT  # reclaim under a limit
    assert choose_write_path({PAGECACHE: 5.0, DIRECT: 1.0}, x) == PAGECACHE  # memcpy, slow disk
    # faster, but not by the margin: the latency of a page-cache write hides its write-back
    assert choose_write_path({PAGECACHE: 1.57, DIRECT: 1.03}, x) == DIRECT
    # the sweep that moved the margin from 2x: 2.2x, and a ratio-2 prefill thrashed the weights
    assert choose_write_path({PAGECACHE: 1.65, DIRECT: 0.75}, x) == DIRECT
    assert choose_write_path({PAGECACHE: 1.57, DIRECT: 1.03}, 1.5) == PAGECACHE


def test_feedback_learns_write_speeds_and_names_the_write_path() -> None:
    fb = Feedback(FeedbackConfig(speed_alpha=1.0))
    fb.update(obs(0, writes=w(0, 0.0, 0, 0.0)))
    # page cache 1 GB in 4 s (throttled), direct 1 GB in 1 s: direct is faster for writes
    v = fb.update(obs(1, writes=w(10**9, 4.0, 10**9, 1.0)))
    assert v.write_speeds_gbps == {PAGECACHE: 0.25, DIRECT: 1.0}
    assert v.write_path == DIRECT
    # later memory is free: page-cache writes are memcpy speed, 5x the disk's
    v = fb.update(obs(2, writes=w(6 * 10**9, 5.0, 2 * 10**9, 2.0)))
    assert v.write_speeds_gbps[PAGECACHE] == pytest.approx(5.0)
    assert v.write_path == PAGECACHE
    # a trickle is no sample: the speeds stay
    v = fb.update(obs(3, writes=w(6 * 10**9 + MiB, 6.0, 2 * 10**9, 2.0)))
    assert v.write_speeds_gbps[PAGECACHE] == pytest.approx(5.0)


def test_appends_are_a_burst_but_the_arbiters_own_migrations_are_not() -> None:
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, writes=w(0, 0.0, 0, 0.0)))
    # 512 MiB written in a second, none of it placed by puts (appends to reserved objects)
    v = fb.update(obs(1, writes=w(0, 0.0, 512 * MiB, 0.5)))
    assert v.write_burst
    v = fb.update(obs(2, writes=w(0, 0.0, 512 * MiB, 0.5)))
    assert not v.write_burst  # nothing written since: over
    # 256 MiB written by promotions: migrations must not stop themselves
    v = fb.update(obs(4, writes=w(256 * MiB, 0.1, 512 * MiB, 0.5), migrated=256 * MiB))
    assert not v.write_burst


def test_burst_detector_window_per_tenant() -> None:
    d = BurstDetector(threshold=32 * MiB, window_s=2.0)
    assert not d.note("a", 16 * MiB, 0.0)
    assert not d.note("b", 16 * MiB, 0.1)  # another tenant's bytes do not add up
    assert d.note("a", 16 * MiB, 0.5)  # 32 MiB within 2 s
    assert d.bursting(1.0)
    assert not d.note("a", 16 * MiB, 3.0)  # the first two left the window
    assert not d.bursting(5.1)
    # paced placements never burst, however many
    assert not any(d.note("c", 8 * MiB, 10.0 + i) for i in range(20))


def test_a_burst_ends_for_migrations_once_its_tenant_goes_quiet() -> None:
    """The window still holds the bytes, but decode must not wait for it to drain."""
    d = BurstDetector(threshold=32 * MiB, window_s=2.0, quiet_s=0.5)
    for i in range(8):  # a prefill: 16 MiB every 0.1 s
        d.note("a", 16 * MiB, i * 0.1)
    assert d.bursting(0.9)  # 0.2 s after its last placement
    assert not d.bursting(1.3)  # 0.6 s quiet, though 128 MiB are still in the window
    assert d.note("a", 16 * MiB, 1.4)  # placing again within the window: bursting again


def test_a_slow_bursts_quiet_is_twice_its_gap() -> None:
    """Layers computed 0.4 s apart: a gap of 0.6 s is not yet the end of that burst."""
    d = BurstDetector(threshold=32 * MiB, window_s=2.0, quiet_s=0.5)
    for i in range(4):
        d.note("a", 16 * MiB, i * 0.4)  # last at 1.2, gap 0.4
    assert d.bursting(1.2 + 0.7)  # < 2 x 0.4
    assert not d.bursting(1.2 + 0.85)


def test_policy_promotes_once_the_burst_is_quiet_not_when_its_window_drains() -> None:
    p = _policy(burst_free_fraction=0.0)
    p.shares(p.observe(obs(0)), {"t": 0})
    pc = dr = 0
    for layer in range(64):  # a prefill: 16 MiB objects, 10 per second, until 6.3
        where = p.place("t", 16 * MiB, TenantUsage(pc, dr), now=layer * 0.1)
        pc, dr = (pc + 16 * MiB, dr) if where == PAGECACHE else (pc, dr + 16 * MiB)
    assert dr >= 62 * 16 * MiB
    heat = [ObjectHeat("t", b"L%d" % i, 16 * MiB, DIRECT, 6.3, None) for i in range(64)]
    usage = {"t": TenantUsage(pc, dr)}
    p.observe(obs(6.4, placed=64 * 16 * MiB, pc=pc, demand=pc + dr))
    assert p.plan(usage, heat, now=6.4) == []  # the tick that saw the burst
    # 0.7 s after the last placement: quiet, though the 2 s window still holds 13 of them
    p.observe(obs(7.0, placed=64 * 16 * MiB, pc=pc, demand=pc + dr))
    plan = p.plan(usage, heat, now=7.0)
    assert plan and {m.dst for m in plan} == {PAGECACHE}


def _policy(burst_free_fraction: float = 0.5) -> ResidencyPolicy:
    return ResidencyPolicy(
        PolicyConfig(
            mode="adaptive",
            hysteresis_bytes=0,
            min_dwell_s=0.0,
            learn=FeedbackConfig(
                speed_alpha=1.0, split=False, burst_free_fraction=burst_free_fraction
            ),
            place_on_pagecache=True,  # the burst rules (policy 3.); off, every burst is direct
        )
    )


def _prefill(p: ResidencyPolicy, objects: int = 64) -> list[str]:
    """A prefill: 16 MiB objects, 10 per second; where each went."""
    pc = dr = 0
    placed = []
    for layer in range(objects):
        where = p.place("t", 16 * MiB, TenantUsage(pc, dr), now=layer * 0.1)
        placed.append(where)
        pc, dr = (pc + 16 * MiB, dr) if where == PAGECACHE else (pc, dr + 16 * MiB)
    return placed


def test_a_burst_that_free_memory_holds_goes_to_the_page_cache_whatever_the_speeds() -> None:
    """Everything fits: written once where decode wants it, nothing to promote afterwards."""
    p = _policy()
    p.shares(p.observe(obs(0)), {"t": 0})  # 8 GiB free, write speeds unmeasured
    assert set(_prefill(p)) == {PAGECACHE}


def test_a_burst_takes_at_most_burst_free_fraction_of_the_free_memory() -> None:
    p = _policy()
    p.shares(p.observe(obs(0, free=256 * MiB)), {"t": 0})
    placed = _prefill(p, 16)
    # the first object is placed before the tenant bursts (in budget), then 7 x 16 MiB of the
    # 120 MiB the burst may take (half the 240 MiB free when it began), then direct
    assert placed[0] == PAGECACHE
    assert placed.count(PAGECACHE) == 1 + 7
    assert set(placed[8:]) == {DIRECT}
    # the share is per burst: a tick does not refill it while the burst goes on
    p.shares(p.observe(obs(1.6, free=256 * MiB, pc=128 * MiB, demand=256 * MiB)), {"t": 0})
    assert p.place("t", 16 * MiB, TenantUsage(128 * MiB, 128 * MiB), now=1.6) == DIRECT
    # off: a burst goes direct until page-cache writes are measured faster
    p = _policy(burst_free_fraction=0.0)
    p.shares(p.observe(obs(0)), {"t": 0})
    assert set(_prefill(p)[2:]) == {DIRECT}


def test_a_burst_leaves_out_the_mapped_pages_its_tenant_has_yet_to_read() -> None:
    """Free memory that the tenant's mmapped weights will fault into is not the burst's."""
    p = _policy()
    p.shares(p.observe(obs(0, free=1024 * MiB)), {"t": 0})  # 1008 MiB free less the reserve
    assert p.wants_pending("t")

    def prefill(pending: int) -> list[str]:
        pc = dr = 0
        out = []
        for layer in range(16):
            where = p.place("t", 16 * MiB, TenantUsage(pc, dr), layer * 0.1, pending)
            out.append(where)
            pc, dr = (pc + 16 * MiB, dr) if where == PAGECACHE else (pc, dr + 16 * MiB)
        return out

    # 768 MiB of weights mapped and not yet read: the burst may take half of the ~240 MiB left
    placed = prefill(768 * MiB)
    assert not p.wants_pending("t")  # asked once, when the burst began
    assert placed.count(PAGECACHE) == 1 + 7 and set(placed[8:]) == {DIRECT}
    # the same free memory with nothing pending: half of it, ~500 MiB, holds every object
    p = _policy()
    p.shares(p.observe(obs(0, free=1024 * MiB)), {"t": 0})
    placed = prefill(0)
    assert set(placed) == {PAGECACHE}
    # everything pending: the burst goes direct from its start
    p = _policy()
    p.shares(p.observe(obs(0, free=1024 * MiB)), {"t": 0})
    assert set(prefill(4096 * MiB)[2:]) == {DIRECT}


def test_a_prefill_burst_goes_to_the_faster_write_path_then_is_promoted_after_it() -> None:
    # the free-memory rule off: this is the path taken when free memory does not hold a burst
    p = _policy(burst_free_fraction=0.0)
    budget = p.observe(obs(0))
    p.shares(budget, {"t": 0})
    pc = dr = 0
    placed = []
    for layer in range(64):  # a prefill: 16 MiB objects, 10 per second
        where = p.place("t", 16 * MiB, TenantUsage(pc, dr), now=layer * 0.1)
        placed.append(where)
        pc, dr = (pc + 16 * MiB, dr) if where == PAGECACHE else (pc, dr + 16 * MiB)
    # the memory is there, but writes to the page cache are unmeasured: direct once bursting
    assert placed[:1] == [PAGECACHE] and set(placed[2:]) == {DIRECT}
    heat = [ObjectHeat("t", b"L%d" % i, 16 * MiB, placed[i], 6.3, None) for i in range(64)]
    usage = {"t": TenantUsage(pc, dr)}
    # during the burst no migration, though the tenant is far under its share
    p.observe(obs(6.4, placed=64 * 16 * MiB, pc=pc, demand=pc + dr))
    assert p.plan(usage, heat, now=6.4) == []
    # the burst is over (quiet, and a tick without one): hot objects are promoted, bounded per tick
    p.observe(obs(8.5, placed=64 * 16 * MiB, pc=pc, demand=pc + dr))
    p.observe(obs(9.5, placed=64 * 16 * MiB, pc=pc, demand=pc + dr))
    plan = p.plan(usage, heat, now=9.5)
    assert plan and {m.dst for m in plan} == {PAGECACHE}
    assert sum(m.size for m in plan) <= p.config.max_migration_bytes_per_tick


def test_a_burst_uses_the_page_cache_when_it_is_faster_for_writes_and_in_budget() -> None:
    p = _policy()
    p.observe(obs(0, writes=w(0, 0.0, 0, 0.0)))
    budget = p.observe(obs(1, writes=w(5 * 10**9, 1.0, 10**9, 1.0)))
    p.shares(budget, {"t": 0})
    where = [
        p.place("t", 16 * MiB, TenantUsage(i * 16 * MiB, 0), now=1 + i * 0.01) for i in range(8)
    ]
    assert set(where) == {PAGECACHE}


def test_a_burst_fills_only_its_share_of_free_memory_even_when_it_writes_faster() -> None:
    """Under a limit the page cache's write latency looks fast until the memory is full; what
    would evict the weights goes direct (8 GiB effective available counts their clean cache).
    The burst's share is ``burst_free_fraction`` of the free memory when it began, per burst:
    a tick that sees more free memory does not refill it (that took all the free memory at
    ratio 1 of the residency bench), and a faster page-cache write does not lift it (at ratio 8
    it put 380 MB into a room of ~300 MB)."""
    p = _policy()
    p.observe(obs(0, writes=w(0, 0.0, 0, 0.0), free=100 * MiB))
    budget = p.observe(obs(1, writes=w(5 * 10**9, 1.0, 10**9, 1.0), free=100 * MiB))
    assert p.verdict is not None and p.verdict.write_path == PAGECACHE
    p.shares(budget, {"t": 0})
    pc = 0
    where = []
    for i in range(6):
        where.append(p.place("t", 16 * MiB, TenantUsage(pc, 0), now=1 + i * 0.01))
        pc += 16 * MiB if where[-1] == PAGECACHE else 0
    # 16 MiB (not bursting yet), then half the 84 MiB left (42 MiB: two), then direct
    assert where == [PAGECACHE] * 3 + [DIRECT] * 3
    budget = p.observe(obs(2, writes=w(5 * 10**9, 1.0, 10**9, 1.0), free=400 * MiB))
    p.shares(budget, {"t": pc})  # the arbiter splits every tick's budget
    assert p.place("t", 16 * MiB, TenantUsage(pc, 0), now=1.07) == DIRECT
    # after a quiet gap the tenant is no longer bursting: the budget places it
    assert p.place("t", 16 * MiB, TenantUsage(pc, 0), now=9.0) == PAGECACHE


def test_forced_modes_ignore_bursts() -> None:
    p = ResidencyPolicy(PolicyConfig(mode="pagecache"))
    assert {p.place("t", 64 * MiB, TenantUsage(0, 0), now=i * 0.01) for i in range(8)} == {
        PAGECACHE
    }


class _FakePath:
    """Stands in for a residency path (the metering is under test, not the I/O)."""

    def __init__(self) -> None:
        self.wrote: list[int] = []

    def write(self, extent: object, src: memoryview) -> None:
        self.wrote.append(src.nbytes)

    def write_many(self, items: list[tuple[object, memoryview]]) -> list[None]:
        self.wrote.extend(d.nbytes for _, d in items)
        return [None] * len(items)


def test_metered_path_times_writes_and_write_batches_apart_from_reads() -> None:
    meter = ReadMeter()
    inner = _FakePath()
    path = MeteredPath(inner, DIRECT, meter)
    path.write(None, memoryview(bytes(MiB)))
    assert path.write_many(
        [(None, memoryview(bytes(MiB))), (None, memoryview(bytes(2 * MiB)))]
    ) == [
        None,
        None,
    ]
    assert inner.wrote == [MiB, MiB, 2 * MiB]
    got = meter.snapshot("write")[DIRECT]
    assert (got.bytes, got.ops) == (4 * MiB, 2)
    assert meter.snapshot() == {}  # no reads
