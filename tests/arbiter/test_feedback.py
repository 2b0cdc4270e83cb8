"""The learned budget, the split and the write-burst rule, driven by scripted observations.

Pure code (no I/O, no clock): every observation is built here, so time, refaults, PSI, our
resident bytes and per-path read counters are whatever the test says.
"""

from __future__ import annotations

import dataclasses

from dualbladed.arbiter.feedback import Feedback, FeedbackConfig, Observation
from dualbladed.arbiter.policy import PolicyConfig, ResidencyPolicy, TenantUsage
from dualbladed.arbiter.signals import MemorySignals, PathReads, ReadMeter
from dualbladed.paths.abstract import DIRECT, PAGECACHE

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096


def sig(
    available: int, *, free: int | None = None, refaults: int | None = 0, psi: float | None = 0.0
) -> MemorySignals:
    return MemorySignals(
        0.0, 64 * GiB, available, None, None, None, None, psi, 0.0, refaults, 0, free, "host"
    )


def obs(
    now: float,
    signals: MemorySignals,
    *,
    pc: int = 0,
    resident: int | None = None,
    demand: int = 0,
    reads: dict[str, PathReads] | None = None,
    placed: int = 0,
) -> Observation:
    return Observation(
        now, signals, pc if resident is None else resident, pc, demand, reads or {}, placed
    )


def test_cap_starts_at_the_ceiling_and_reserve_is_only_a_floor() -> None:
    assert Feedback(FeedbackConfig()).update(obs(0, sig(4 * GiB))).cap == 4 * GiB
    assert Feedback(FeedbackConfig(), reserve_bytes=1 * GiB).update(obs(0, sig(4 * GiB))).cap == (
        3 * GiB
    )


def test_refaults_cut_by_what_was_refaulted_then_hold_until_calm() -> None:
    fb = Feedback(FeedbackConfig(calm_s=5.0))
    fb.update(obs(0, sig(4 * GiB, refaults=0), pc=2 * GiB))
    # 1 GiB refaulted in one second: cut by that (more than a quarter of 2 GiB)
    v = fb.update(obs(1, sig(4 * GiB, refaults=GiB // PAGE), pc=2 * GiB))
    assert v.pressure is not None and "refaults" in v.pressure
    assert v.cap == 1 * GiB
    # a little refaulting (below the threshold): no cut, but no growth either (not calm yet)
    v = fb.update(obs(6.25, sig(4 * GiB, free=3 * GiB, refaults=GiB // PAGE + 10), pc=1 * GiB))
    assert v.pressure is None and v.cap == 1 * GiB
    # 32 MiB refaulted (above 16 MiB/s over 0.25 s), once the cut settled (settle_s 5 s): cut by
    # what was refaulted, not a fraction
    v = fb.update(obs(6.5, sig(4 * GiB, refaults=GiB // PAGE + 8192 + 10), pc=1 * GiB))
    assert v.cap == 1 * GiB - 32 * MiB
    # calm for 5 s: after pressure, free memory (what the demotion gave back) is not jumped to,
    # and a cap we do not use (768 MiB held) is not probed upwards: that would test nothing
    v = fb.update(
        obs(
            12,
            sig(4 * GiB, free=2 * GiB, refaults=GiB // PAGE + 8202),
            pc=768 * MiB,
            demand=2 * GiB,
        )
    )
    assert v.pressure is None and v.contested and v.cap == 1 * GiB - 32 * MiB


def test_free_memory_is_taken_at_once_when_fill_fraction_is_one() -> None:
    fb = Feedback(FeedbackConfig(fill_fraction=1.0))
    fb.update(obs(0, sig(4 * GiB, free=GiB)))
    fb._cap = 512 * MiB  # others' memory use had lowered the ceiling; it has risen again
    v = fb.update(obs(1, sig(4 * GiB, free=2 * GiB), pc=256 * MiB))
    assert v.cap == 2 * GiB + 256 * MiB  # room = free + our resident bytes


def test_free_memory_is_filled_two_thirds_per_calm_tick_up_to_the_room() -> None:
    """A jump in free memory (the end of a prefill) is taken in steps, each one deliberate."""
    fb = Feedback(FeedbackConfig())
    free, held = 3 * GiB, 0
    fb.update(obs(0, sig(4 * GiB, free=free)))
    caps = []
    for tick in range(1, 12):  # demand beyond the room: probes follow once it is full
        v = fb.update(obs(tick, sig(4 * GiB, free=free), pc=held, demand=8 * GiB))
        assert v.room == free + held and v.pressure is None
        caps.append(v.cap)
        free, held = max(0, free - (v.cap - held)), v.cap  # the plan promotes up to the cap
    assert caps[0] == 2 * GiB  # two thirds of 3 GiB free
    assert caps[1] == 2 * GiB + (GiB * 2) // 3  # two thirds of what was left
    full = next(i for i, cap in enumerate(caps) if cap >= 3 * GiB)  # all of it, in a few ticks
    steps = [b - a for a, b in zip(caps[:full], caps[1 : full + 1])]
    assert full <= 5 and min(steps[:-1]) >= 64 * MiB  # at least a probe's worth, but the last
    # no probe into others' cache while free memory was still being filled, then one per tick
    assert max(caps[:full]) < 3 * GiB and caps[full] == 3 * GiB
    assert caps[full + 1] == 3 * GiB + 64 * MiB


def test_mapped_pages_not_yet_read_are_not_room_but_never_demote_what_we_hold() -> None:
    """Weights evicted during a prefill are faulted back in by the next decode step: free
    memory they will take is not the fill's. What we already hold stays."""
    fb = Feedback(FeedbackConfig())

    def room(free: int, held: int, pending: int) -> int:
        o = obs(0, sig(4 * GiB, free=free), pc=held, demand=2 * GiB)
        return fb.update(dataclasses.replace(o, mapped_pending=pending)).room

    assert room(512 * MiB, 0, 0) == 512 * MiB
    assert room(512 * MiB, 0, 384 * MiB) == 128 * MiB
    assert room(512 * MiB, 256 * MiB, 384 * MiB) == 384 * MiB  # held + what is left free
    assert room(512 * MiB, 256 * MiB, 2 * GiB) == 256 * MiB  # all free memory is spoken for
    fb = Feedback(FeedbackConfig())
    fb.update(dataclasses.replace(obs(0, sig(4 * GiB, free=GiB)), mapped_pending=GiB))
    v = fb.update(
        dataclasses.replace(obs(1, sig(4 * GiB, free=GiB), demand=GiB), mapped_pending=GiB)
    )
    assert v.cap == 0  # nothing to fill: every free page is a weight's about to come back


def test_no_probe_rides_on_a_fill_step() -> None:
    """80 MiB free beside 1 GiB we hold: the step is one probe's worth, and so "in use" at
    once. A probe on top of it would put the cap above the free memory, into others' cache."""
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB, free=80 * MiB), pc=GiB, demand=8 * GiB))
    v = fb.update(obs(1, sig(4 * GiB, free=80 * MiB), pc=GiB, demand=8 * GiB))
    assert v.cap == GiB + 64 * MiB <= v.room


def test_no_probe_while_free_memory_is_left() -> None:
    """Ratio 4 of the residency bench: the fill reached the room (151 MB) holding 100 MB, and a
    probe on that tick made a 218 MB cap. Probing waits until the free memory is used."""
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB, free=151 * MiB), pc=0, demand=GiB))
    v = fb.update(obs(1, sig(4 * GiB, free=51 * MiB), pc=100 * MiB, demand=GiB))
    assert v.cap == 151 * MiB and not v.probed  # the room, and nothing on top
    v = fb.update(obs(2, sig(4 * GiB, free=10 * MiB), pc=141 * MiB, demand=GiB))
    assert v.probed and v.cap == 151 * MiB + 64 * MiB  # used up: now a probe


def test_a_fill_step_is_a_deliberate_step_the_policy_takes_inside_its_band() -> None:
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB, free=GiB)))
    fb.update(obs(1, sig(4 * GiB, free=GiB), pc=0))
    v = fb.update(obs(2, sig(4 * GiB, free=GiB // 3), pc=(GiB * 2) // 3))
    assert v.cap > (GiB * 2) // 3 and v.probed  # grew by less than the 256 MiB band
    v = fb.update(obs(3, sig(4 * GiB, free=GiB // 3), pc=v.cap))
    assert not v.probed or v.cap > (GiB * 2) // 3


def test_without_memfree_there_is_no_fill_step() -> None:
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB)))
    assert fb.update(obs(1, sig(4 * GiB), pc=0)).cap == 4 * GiB  # room is the ceiling


def test_probing_beyond_free_memory_only_while_demand_exceeds_the_cap() -> None:
    fb = Feedback(FeedbackConfig(calm_s=0.0, probe_bytes=64 * MiB))
    fb.update(obs(0, sig(4 * GiB, free=0), pc=GiB))
    fb._cap = GiB  # as if learned
    v = fb.update(obs(1, sig(4 * GiB, free=0), pc=GiB, demand=2 * GiB))
    assert v.cap == GiB + 64 * MiB
    v = fb.update(obs(2, sig(4 * GiB, free=0), pc=GiB, demand=GiB))  # no demand beyond: hold
    assert v.cap == GiB + 64 * MiB


def test_a_probe_moves_the_held_budget_at_once_but_noise_in_the_band_does_not() -> None:
    """Ratio 1 of the residency bench: the room sat 70 MiB below the KV, and the 256 MiB band
    held four probes back, longer than the decode lasted."""
    p = ResidencyPolicy(
        PolicyConfig(
            mode="adaptive",
            hysteresis_bytes=256 * MiB,
            learn=FeedbackConfig(fill_fraction=1.0, calm_s=0.0, probe_bytes=64 * MiB),
        )
    )
    held = p.observe(obs(0, sig(4 * GiB, free=GiB), pc=0)).total
    assert held == GiB
    # free memory wobbles by 100 MiB while we hold nothing: within the band, the budget holds
    assert p.observe(obs(1, sig(4 * GiB, free=GiB - 100 * MiB), pc=0)).total == held
    # we fill the cap, want more and all of it stays resident: each probe is taken at once
    filled = GiB
    for i in range(2, 4):
        b = p.observe(obs(i, sig(4 * GiB, free=0), pc=filled, demand=2 * GiB))
        assert p.verdict is not None and p.verdict.probed
        assert b.total == b.raw > filled  # taken, though within the band
        filled = b.total  # promotions fill it before the next tick


def test_pressure_while_we_hold_nothing_neither_cuts_nor_contests() -> None:
    """Host-wide PSI left over from someone else: the cap follows free memory, no probing."""
    fb = Feedback(FeedbackConfig(fill_fraction=1.0, calm_s=0.0))
    fb.update(obs(0, sig(4 * GiB, free=2 * GiB), pc=0))
    v = fb.update(obs(1, sig(4 * GiB, free=2 * GiB, psi=30.0), pc=0, demand=3 * GiB))
    assert v.pressure is not None  # still reported (dbctl shows it)
    assert v.cap == 2 * GiB and not v.contested and not v.probed
    # once we hold KV, the same pressure is ours: cut, and contested
    fb.update(obs(2, sig(4 * GiB, free=GiB), pc=GiB, demand=3 * GiB))
    v = fb.update(obs(3, sig(4 * GiB, free=GiB, psi=30.0), pc=GiB, demand=3 * GiB))
    assert v.cap < GiB and v.contested


def test_pressure_demotes_just_promoted_objects_then_bars_promotions_for_the_dwell() -> None:
    """The promotion made others refault: undone at once, not after the dwell, and then no
    promotion for the dwell (one round trip per dwell)."""
    from dualbladed.arbiter.policy import ObjectHeat

    p = ResidencyPolicy(
        PolicyConfig(mode="adaptive", hysteresis_bytes=0, min_dwell_s=30.0, learn=FeedbackConfig())
    )
    p.observe(obs(0, sig(4 * GiB, free=GiB), pc=GiB, demand=GiB))
    # everything was promoted 2 s ago; now the weights refault at 512 MiB/s
    heat = [ObjectHeat("t", b"L%d" % i, 16 * MiB, PAGECACHE, float(i), 98.0) for i in range(64)]
    usage = {"t": TenantUsage(GiB, 0)}
    p.observe(obs(1, sig(4 * GiB, free=0, refaults=0), pc=GiB, demand=GiB))
    p.observe(obs(2, sig(4 * GiB, free=0, refaults=512 * MiB // PAGE), pc=GiB, demand=GiB))
    plan = p.plan(usage, heat, now=100.0)
    assert plan and {m.dst for m in plan} == {DIRECT}
    assert [m.key for m in plan][:2] == [b"L0", b"L1"]  # coldest first
    # the next tick, calm: the tenant's demotion bars promotions for the dwell
    demoted = sum(m.size for m in plan)
    heat = [dataclasses.replace(o, path=DIRECT) if i < len(plan) else o for i, o in enumerate(heat)]
    p.observe(obs(3, sig(4 * GiB, free=2 * GiB, refaults=512 * MiB // PAGE), pc=GiB - demoted))
    later = {"t": TenantUsage(GiB - demoted, demoted)}
    assert [m for m in p.plan(later, heat, now=101.0) if m.dst == PAGECACHE] == []


def test_psi_cuts_a_quarter_and_a_falling_hit_ratio_cuts_to_what_stayed() -> None:
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB), pc=GiB))
    v = fb.update(obs(1, sig(4 * GiB, psi=25.0), pc=GiB))
    assert v.pressure == "psi some 25.0%" and v.cap == 768 * MiB
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB), pc=GiB))
    v = fb.update(obs(1, sig(4 * GiB), pc=GiB, resident=GiB // 2))  # the kernel evicted half
    assert v.hit_ratio == 0.5 and v.pressure is not None and v.cap == GiB // 2  # what stayed


def test_no_refault_counter_means_no_refault_signal() -> None:
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB, refaults=None), pc=GiB))
    v = fb.update(obs(1, sig(4 * GiB, refaults=None), pc=GiB))
    assert v.refault_bytes_per_s is None and v.pressure is None and v.cap == 4 * GiB


def test_split_fraction_from_measured_speeds_needs_both_paths() -> None:
    fb = Feedback(FeedbackConfig(speed_alpha=1.0))
    r0 = {PAGECACHE: PathReads(0, 0, 0.0)}
    fb.update(obs(0, sig(4 * GiB), reads=r0))
    v = fb.update(obs(1, sig(4 * GiB), reads={PAGECACHE: PathReads(3 * 10**9, 10, 1.0)}))
    assert v.speeds_gbps == {PAGECACHE: 3.0} and v.pagecache_fraction is None
    v = fb.update(
        obs(
            2,
            sig(4 * GiB),
            reads={PAGECACHE: PathReads(6 * 10**9, 20, 2.0), DIRECT: PathReads(10**9, 8, 1.0)},
        )
    )
    assert v.speeds_gbps == {PAGECACHE: 3.0, DIRECT: 1.0}
    assert v.pagecache_fraction == 0.75  # 0.75 T / 3 == 0.25 T / 1: both finish together
    off = Feedback(FeedbackConfig(split=False))
    off.update(obs(0, sig(4 * GiB)))
    both = {PAGECACHE: PathReads(10**9, 1, 1.0), DIRECT: PathReads(10**9, 1, 1.0)}
    assert off.update(obs(1, sig(4 * GiB), reads=both)).pagecache_fraction is None


def test_a_page_cache_sample_taken_while_our_pages_were_evicted_is_dropped() -> None:
    """Those reads measured the disk behind evicted pages; the hit-ratio cut answers them."""
    fb = Feedback(FeedbackConfig(speed_alpha=1.0))
    reads = {PAGECACHE: PathReads(0, 0, 0.0), DIRECT: PathReads(0, 0, 0.0)}
    fb.update(obs(0, sig(4 * GiB), pc=GiB, reads=reads))
    reads = {PAGECACHE: PathReads(3 * 10**9, 10, 1.0), DIRECT: PathReads(10**9, 8, 1.0)}
    assert fb.update(obs(1, sig(4 * GiB), pc=GiB, reads=reads)).pagecache_fraction == 0.75
    # half our pages gone, and the page-cache reads crawled: no page-cache sample
    reads = {
        PAGECACHE: PathReads(3 * 10**9 + 50 * 10**6, 11, 2.0),
        DIRECT: PathReads(2 * 10**9, 16, 2.0),
    }
    v = fb.update(obs(2, sig(4 * GiB), pc=GiB, resident=GiB // 2, reads=reads))
    assert v.hit_ratio == 0.5 and v.speeds_gbps[PAGECACHE] == 3.0
    assert v.pagecache_fraction == 0.75
    # resident again: the same slow sample counts
    reads = {
        PAGECACHE: PathReads(3 * 10**9 + 100 * 10**6, 12, 3.0),
        DIRECT: PathReads(3 * 10**9, 24, 3.0),
    }
    v = fb.update(obs(3, sig(4 * GiB), pc=GiB, reads=reads))
    assert v.speeds_gbps[PAGECACHE] == 0.05 and v.pagecache_fraction < 0.1


def test_a_speed_sample_needs_enough_bytes() -> None:
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB)))
    v = fb.update(obs(1, sig(4 * GiB), reads={DIRECT: PathReads(MiB, 1, 0.5)}))
    assert v.speeds_gbps == {}


def test_write_burst_holds_only_the_tick_that_saw_it() -> None:
    """A burst still going on is seen again by the next interval; an ended one must not keep
    the promotions decode is waiting for (module docstring, 3.)."""
    fb = Feedback(FeedbackConfig())
    fb.update(obs(0, sig(4 * GiB)))
    assert fb.update(obs(1, sig(4 * GiB), placed=512 * MiB)).write_burst
    assert fb.update(obs(2, sig(4 * GiB), placed=1 * GiB)).write_burst  # it went on
    assert not fb.update(obs(3, sig(4 * GiB), placed=1 * GiB + 8 * MiB)).write_burst  # 8 MiB
    # a slow trickle of 100 MiB over 2 s is below the rate: no burst
    assert not fb.update(obs(5, sig(4 * GiB), placed=1 * GiB + 108 * MiB)).write_burst


def _policy(**learn: object) -> ResidencyPolicy:
    return ResidencyPolicy(
        PolicyConfig(
            hysteresis_bytes=0,
            min_dwell_s=0.0,
            learn=FeedbackConfig(**learn),  # type: ignore[arg-type]
            place_on_pagecache=True,  # placements by the split (policy 3.)
        )
    )


def test_policy_places_by_the_split_and_plans_towards_it_while_memory_is_contested() -> None:
    p = _policy(speed_alpha=1.0)
    reads = {PAGECACHE: PathReads(0, 0, 0.0), DIRECT: PathReads(0, 0, 0.0)}
    p.observe(obs(0, sig(8 * GiB), reads=reads))
    reads = {PAGECACHE: PathReads(3 * 10**9, 1, 1.0), DIRECT: PathReads(10**9, 1, 1.0)}
    # PSI pressure on an 8 GiB cap we barely use: the cap stays far above demand, but memory is
    # contested now, so the split applies
    budget = p.observe(obs(1, sig(8 * GiB, psi=50.0), pc=400 * MiB, reads=reads))
    assert p.verdict is not None and p.verdict.contested
    assert budget.total == 300 * MiB  # a quarter of what we held
    p.shares(budget, {"t": 0})
    pc = dr = 0
    for _ in range(100):
        where = p.place("t", MiB, TenantUsage(pc * MiB, dr * MiB))
        pc, dr = (pc + 1, dr) if where == PAGECACHE else (pc, dr + 1)
    assert (pc, dr) == (75, 25)  # a quarter streams from disk though the memory is there
    from dualbladed.arbiter.policy import ObjectHeat

    heat = [ObjectHeat("t", f"k{i}".encode(), MiB, PAGECACHE, float(i), None) for i in range(100)]
    plan = p.plan({"t": TenantUsage(100 * MiB, 0)}, heat, now=2.0)
    assert sum(m.size for m in plan if m.dst == DIRECT) == 25 * MiB
    assert {m.key for m in plan} == {f"k{i}".encode() for i in range(25)}  # coldest first


def test_policy_plans_nothing_during_a_write_burst() -> None:
    from dualbladed.arbiter.policy import ObjectHeat

    p = _policy()
    p.observe(obs(0, sig(8 * GiB)))
    p.observe(obs(1, sig(100 * MiB), placed=1 * GiB))  # budget fell during a burst
    heat = [ObjectHeat("t", f"k{i}".encode(), MiB, PAGECACHE, float(i), None) for i in range(500)]
    usage = {"t": TenantUsage(500 * MiB, 0)}
    assert p.plan(usage, heat, now=1.0) == []
    p.observe(obs(2, sig(100 * MiB), placed=2 * GiB))  # the burst went on: still deferred
    assert p.plan(usage, heat, now=2.0) == []
    p.observe(obs(3, sig(100 * MiB), placed=2 * GiB))  # nothing written since
    # 400 MiB over the 100 MiB budget, up to the tick bound (512 MiB by default)
    bound = p.config.max_migration_bytes_per_tick
    assert sum(m.size for m in p.plan(usage, heat, now=3.0)) == min(400 * MiB, bound)


def test_learns_the_weights_working_set_it_was_never_told() -> None:
    """A scripted box: 3 GiB of page cache room, of which weights (unknown to the policy) need
    1.5 GiB. KV beyond the rest evicts weights, which then refault at the overshoot per tick.
    The policy starts at the ceiling, learns a cap that stops the refaults, and keeps most of
    the room that is really free."""
    room, weights = 3 * GiB, 3 * GiB // 2
    p = _policy(calm_s=3.0, probe_bytes=64 * MiB)
    refaults = 0
    caps = []
    pc = 0
    demand = 2 * GiB
    for tick in range(60):
        overshoot = max(0, pc + weights - room)
        refaults += overshoot // PAGE
        free = max(0, room - weights - pc)
        budget = p.observe(
            obs(float(tick), sig(room, free=free, refaults=refaults), pc=pc, demand=demand)
        )
        pc = min(demand, budget.total)  # the arbiter moves to the budget (instantly here)
        caps.append(budget.total)
    tail = caps[-20:]
    assert max(tail) <= room - weights + 64 * MiB  # at most one probe above what fits
    assert min(tail) >= (room - weights) // 2  # and never gives up most of it


def test_read_meter_counts_busy_time_as_the_union_of_overlapping_reads() -> None:
    t = [0.0]
    meter = ReadMeter(clock=lambda: t[0])
    a = meter.reading(DIRECT, 4 * MiB)
    b = meter.reading(DIRECT, 4 * MiB)
    a.__enter__()
    t[0] = 0.5
    b.__enter__()
    t[0] = 1.0
    a.__exit__(None, None, None)
    t[0] = 1.5
    b.__exit__(None, None, None)
    snap = meter.snapshot()[DIRECT]
    assert (snap.bytes, snap.ops, snap.busy_s) == (8 * MiB, 2, 1.5)  # not 1.0 + 1.0
    with meter.reading(PAGECACHE, MiB):
        t[0] = 2.0
    assert meter.snapshot()[PAGECACHE] == PathReads(MiB, 1, 0.5)
    try:
        with meter.reading(PAGECACHE, MiB):
            raise OSError("failed read")
    except OSError:
        pass
    assert meter.snapshot()[PAGECACHE].bytes == MiB  # a failed read moves no bytes
    assert dataclasses.replace(snap, busy_s=0.0).gbps is None


def test_pressure_demotes_without_waiting_for_the_dead_band() -> None:
    """A 256 MiB band (the daemon's default) must not hide a measured cut: 200 MiB of KV on
    the page cache, refaults -> budget cut -> the KV is demoted at once."""
    from dualbladed.arbiter.policy import ObjectHeat

    p = ResidencyPolicy(
        PolicyConfig(hysteresis_bytes=256 * MiB, min_dwell_s=0.0, max_migration_bytes_per_tick=GiB)
    )
    heat = [ObjectHeat("t", f"k{i}".encode(), MiB, PAGECACHE, float(i), None) for i in range(200)]
    usage = {"t": TenantUsage(200 * MiB, 0)}
    p.observe(obs(0, sig(2 * GiB, refaults=0), pc=200 * MiB, demand=200 * MiB))
    assert p.plan(usage, heat, now=0.0) == []  # room for all of it: nothing moves
    budget = p.observe(
        obs(1, sig(2 * GiB, refaults=512 * MiB // PAGE), pc=200 * MiB, demand=200 * MiB)
    )
    # 512 MiB refaulted, more than we hold: one cut takes at most half (the rest may fit)
    assert budget.total == 100 * MiB
    assert sum(m.size for m in p.plan(usage, heat, now=1.0)) == 100 * MiB


def test_metered_path_times_reads_and_delegates_everything_else(tmp_path) -> None:
    """The server wraps the store's real paths: reads are counted per path, the rest passes."""
    from dualbladed.arbiter.signals import MeteredPath
    from dualbladed.paths.pagecache import PageCachePath

    pc = PageCachePath(tmp_path / "pc", slab_bytes=4 * MiB, max_bytes=8 * MiB)
    meter = ReadMeter()
    path = MeteredPath(pc, PAGECACHE, meter)
    try:
        extent = path.allocate(MiB)  # delegated
        path.write(extent, memoryview(bytes(range(256)) * 4096))
        out = bytearray(MiB)
        path.read(extent, memoryview(out))
        assert out[:256] == bytes(range(256))
        got = meter.snapshot()[PAGECACHE]
        assert (got.bytes, got.ops) == (MiB, 1) and got.busy_s > 0
        assert path.stats().used >= MiB  # delegated
    finally:
        pc.close()
