"""The pure residency policy driven by scripted signals and a scripted clock."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from pathlib import Path

import pytest

from dualbladed.arbiter.policy import (
    Budget,
    Migration,
    ObjectHeat,
    PolicyConfig,
    ResidencyPolicy,
    TenantUsage,
)
from dualbladed.arbiter.signals import MemorySignals
from dualbladed.config import ResidencyConfig, ResidencyMode, load_config_file
from dualbladed.errors import InvalidArgument

MiB = 1 << 20
GiB = 1 << 30


def sig(available: int, t: float = 0.0) -> MemorySignals:
    return MemorySignals(t, 64 * GiB, available, None, None, None, None, None, None)


def budget_of(total: int) -> Budget:
    return Budget(total, total, total, 0, True)


# ------------------------------------------------------------------------- budget


def test_budget_formula_reserve_and_clamp() -> None:
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=2 * GiB))
    b = p.budget(sig(5 * GiB), pagecache_resident=1 * GiB)
    assert b.total == 3 * GiB and b.pagecache_resident == 1 * GiB
    q = ResidencyPolicy(PolicyConfig(reserve_bytes=8 * GiB))
    assert q.budget(sig(5 * GiB), 0).total == 0


def test_budget_does_not_count_our_page_cache_twice() -> None:
    """MemAvailable already includes our clean page cache: the footprint must not raise the
    budget, or the budget could never fall below the footprint and nothing would be demoted."""
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=1 * GiB, hysteresis_bytes=0))
    for resident in (0, 512 * MiB, 4 * GiB):
        assert p.budget(sig(2 * GiB), pagecache_resident=resident).raw == 1 * GiB
    # others took memory: available (our 4 GiB of cache included) is now 1.5 GiB
    assert p.budget(sig(1 * GiB + 512 * MiB), pagecache_resident=4 * GiB).total == 512 * MiB


def test_weights_by_tenant_or_label() -> None:
    cfg = PolicyConfig(weights={"llama": 3.0, "1000/llama": 5.0}, default_weight=1.0)
    assert cfg.weight("1000/llama") == 5.0  # exact uid/label wins
    assert cfg.weight("1001/llama") == 3.0  # else the label
    assert cfg.weight("1001/other") == 1.0
    assert cfg.weight("llama") == 3.0


def test_budget_holds_inside_the_band_and_moves_beyond_it() -> None:
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=0, hysteresis_bytes=100 * MiB))
    first = p.budget(sig(4 * GiB), 0)
    assert first.changed and first.total == 4 * GiB
    for wobble in (50, -80, 99, -99, 0, 30, -100):  # MiB, all inside the band
        b = p.budget(sig(4 * GiB + wobble * MiB), 0)
        assert b.total == 4 * GiB and not b.changed
        assert b.raw == 4 * GiB + wobble * MiB
    moved = p.budget(sig(4 * GiB + 150 * MiB), 0)
    assert moved.changed and moved.total == 4 * GiB + 150 * MiB
    # the band is now centred on the new value: a return by 120 MiB is a move again
    assert p.budget(sig(4 * GiB + 30 * MiB), 0).total == 4 * GiB + 30 * MiB


def test_fractional_hysteresis() -> None:
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=0, hysteresis_bytes=0, hysteresis_fraction=0.10))
    p.budget(sig(10 * GiB), 0)
    assert p.budget(sig(9 * GiB + 200 * MiB), 0).total == 10 * GiB  # -8 %
    assert p.budget(sig(8 * GiB + 900 * MiB), 0).total == 8 * GiB + 900 * MiB  # -11 %


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "ram"},
        {"reserve_bytes": -1},
        {"weights": {"a": 0.0}},
        {"hysteresis_fraction": 1.5},
        {"min_dwell_s": -1.0},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        PolicyConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_the_configs_and_from_residency_maps_the_section(tmp_path: Path) -> None:
    """The [residency] settings are declared once, in the config: the policy's defaults are
    those (reserve 0 -- an optional floor since the budget is learned, issue 12 -- and
    hysteresis 256 MiB; the policy once had 64 MiB of its own)."""
    res = ResidencyConfig()
    cfg = PolicyConfig()
    assert (cfg.mode, cfg.reserve_bytes, cfg.hysteresis_bytes) == (
        ResidencyMode.ADAPTIVE,
        0,
        256 * MiB,
    )
    assert (cfg.reserve_bytes, cfg.hysteresis_bytes) == (res.reserve_bytes, res.hysteresis_bytes)
    assert cfg.max_migration_bytes_per_tick == res.migration_bytes_per_s  # one 1 s tick
    toml = tmp_path / "d.toml"
    toml.write_text(
        '[residency]\nmode = "direct"\nreserve_bytes = "1GiB"\nhysteresis_bytes = "8MiB"\n'
        'migration_bytes_per_s = "100MiB"\n[residency.weights]\nzero = 0.0\nbig = 4.0\n'
    )
    section = load_config_file(str(toml)).residency
    got = PolicyConfig.from_residency(section, tick_s=0.5)
    assert got.mode is ResidencyMode.DIRECT
    assert (got.reserve_bytes, got.hysteresis_bytes) == (GiB, 8 * MiB)
    assert got.max_migration_bytes_per_tick == 50 * MiB
    assert got.weight("1/big") == 4.0 and 0 < got.weight("1/zero") < 1e-3  # 0 -> tiny, > 0


def test_mode_given_as_a_string_becomes_the_enum() -> None:
    assert PolicyConfig(mode="pagecache").mode is ResidencyMode.PAGECACHE  # type: ignore[arg-type]
    assert ResidencyConfig(mode="direct").mode is ResidencyMode.DIRECT  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="residency.mode"):
        ResidencyConfig(mode="ram")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- shares


def test_shares_by_weight() -> None:
    p = ResidencyPolicy(PolicyConfig(weights={"a": 2.0, "b": 1.0}))
    assert p.shares(budget_of(300), {"a": 1000, "b": 1000}) == {"a": 200, "b": 100}


def test_shares_are_max_min_fair() -> None:
    p = ResidencyPolicy(PolicyConfig())
    assert p.shares(budget_of(300), {"a": 50, "b": 1000, "c": 1000}) == {
        "a": 50,
        "b": 125,
        "c": 125,
    }
    w = ResidencyPolicy(PolicyConfig(weights={"b": 3.0}))
    # b's weighted offer (300) exceeds its demand: the 200 it leaves goes to a and c
    assert w.shares(budget_of(500), {"a": 1000, "b": 100, "c": 1000}) == {
        "a": 200,
        "b": 100,
        "c": 200,
    }


def test_shares_never_exceed_budget_or_demand() -> None:
    p = ResidencyPolicy(PolicyConfig(weights={"x": 0.3, "y": 7.0}))
    rng = random.Random(7)
    for _ in range(200):
        demand = {t: rng.choice([0, rng.randrange(1, 10_000)]) for t in "xyzw"}
        total = rng.randrange(0, 30_000)
        s = p.shares(budget_of(total), demand)
        assert sum(s.values()) <= total
        assert all(0 <= s[t] <= demand[t] for t in demand)
        if sum(demand.values()) <= total:
            assert s == demand


# ---------------------------------------------------------------------- placement


def test_forced_modes_always_return_their_path() -> None:
    usage = TenantUsage(pagecache_bytes=100 * GiB, direct_bytes=0)
    assert ResidencyPolicy(PolicyConfig(mode="pagecache")).place("a", GiB, usage) == "pagecache"
    assert ResidencyPolicy(PolicyConfig(mode="direct")).place("a", 1, TenantUsage(0, 0)) == "direct"


def test_adaptive_places_every_new_object_direct_and_promotes_what_is_read() -> None:
    """The default (docstring, 3.): a prefill's burst is written direct, even with a budget that
    holds it, its burst still holds migrations back, and once it is over the page cache fills
    by promotion of the objects being read."""
    p = ResidencyPolicy(PolicyConfig(hysteresis_bytes=0, min_dwell_s=0.0))
    assert PolicyConfig().place_on_pagecache is False
    budget = p.budget(sig(8 * GiB), 0)
    p.shares(budget, {"a": 0})
    placed = [p.place("a", 16 * MiB, TenantUsage(0, i * 16 * MiB), now=i * 0.01) for i in range(8)]
    assert placed == ["direct"] * 8
    assert not p.wants_pending("a")  # no burst room to size: no /proc reads on the put path
    assert not p.may_place_on_pagecache  # nor room checks (the arbiter asks only if this says)
    assert ResidencyPolicy(PolicyConfig(place_on_pagecache=True)).may_place_on_pagecache
    assert ResidencyPolicy(PolicyConfig(mode="pagecache")).may_place_on_pagecache
    assert not ResidencyPolicy(PolicyConfig(mode="direct")).may_place_on_pagecache
    objs = [ObjectHeat("a", b"%d" % i, 16 * MiB, "direct", 0.05, None) for i in range(8)]
    usage = {"a": TenantUsage(0, 128 * MiB)}
    assert p.plan(usage, objs, now=0.1) == []  # the burst is still on
    plan = p.plan(usage, objs, now=5.0)
    assert {m.dst for m in plan} == {"pagecache"} and len(plan) == 8


def test_adaptive_placement_follows_share_then_slack() -> None:
    p = ResidencyPolicy(PolicyConfig(place_on_pagecache=True))
    assert p.place("a", 1 * MiB, TenantUsage(0, 0)) == "direct"  # no budget yet: safe path
    p.shares(budget_of(100 * MiB), {"a": 1000 * MiB, "b": 10 * MiB})  # a: 90, b: 10
    assert p.place("a", 40 * MiB, TenantUsage(50 * MiB, 0)) == "pagecache"  # 90 fits
    assert p.place("a", 41 * MiB, TenantUsage(50 * MiB, 0)) == "direct"  # 91 does not
    p.shares(budget_of(100 * MiB), {"a": 20 * MiB, "b": 20 * MiB})  # 60 MiB slack
    assert p.place("a", 50 * MiB, TenantUsage(20 * MiB, 0)) == "pagecache"  # slack 60 -> 10
    assert p.place("b", 20 * MiB, TenantUsage(20 * MiB, 0)) == "direct"  # slack is 10 now
    assert p.place("new", 10 * MiB, TenantUsage(0, 0)) == "pagecache"  # the last of the slack
    assert p.place("new", 4096, TenantUsage(10 * MiB, 0)) == "direct"


# --------------------------------------------------------------------- migrations


class Sim:
    """Objects, usage and the effect of executing a plan (what the arbiter will do)."""

    def __init__(self, objs: list[ObjectHeat]) -> None:
        self.objs = {(o.tenant, o.key): o for o in objs}
        self.moves: dict[tuple[str, bytes], list[tuple[float, str]]] = defaultdict(list)

    def usage(self) -> dict[str, TenantUsage]:
        pc: dict[str, int] = defaultdict(int)
        dr: dict[str, int] = defaultdict(int)
        for o in self.objs.values():
            (pc if o.path == "pagecache" else dr)[o.tenant] += o.size
        return {t: TenantUsage(pc[t], dr[t]) for t in {*pc, *dr}}

    def resident(self) -> int:
        return sum(o.size for o in self.objs.values() if o.path == "pagecache")

    def apply(self, plan: list[Migration], now: float) -> None:
        for m in plan:
            o = self.objs[(m.tenant, m.key)]
            assert o.path == m.src
            self.objs[(m.tenant, m.key)] = dataclasses.replace(o, path=m.dst, last_moved=now)
            self.moves[(m.tenant, m.key)].append((now, m.dst))


def _objects(tenant: str, n: int, size: int, path: str) -> list[ObjectHeat]:
    # key i was last accessed at time i: key 0 is the coldest
    return [ObjectHeat(tenant, b"%d" % i, size, path, float(i), None) for i in range(n)]  # type: ignore[arg-type]


def test_demotion_when_budget_drops_is_coldest_first_and_bounded() -> None:
    cfg = PolicyConfig(
        reserve_bytes=1 * GiB, hysteresis_bytes=8 * MiB, max_migration_bytes_per_tick=40 * MiB
    )
    p = ResidencyPolicy(cfg)
    sim = Sim(_objects("a", 20, 10 * MiB, "pagecache"))  # 200 MiB in the page cache
    p.budget(sig(1 * GiB + 200 * MiB), sim.resident())  # budget 200 MiB: at share, nothing to do
    assert p.plan(sim.usage(), sim.objs.values(), now=100.0) == []

    p.budget(sig(1 * GiB + 100 * MiB), sim.resident())  # memory taken: budget falls to 100 MiB
    first = p.plan(sim.usage(), sim.objs.values(), now=101.0)
    assert [m.key for m in first] == [b"0", b"1", b"2", b"3"]  # coldest first, 40 MiB bound
    assert all((m.src, m.dst) == ("pagecache", "direct") for m in first)
    sim.apply(first, 101.0)
    t = 102.0
    while plan := p.plan(sim.usage(), sim.objs.values(), now=t):
        assert sum(m.size for m in plan) <= cfg.max_migration_bytes_per_tick
        sim.apply(plan, t)
        t += 1
    assert sim.usage()["a"].pagecache_bytes == 100 * MiB
    assert {k for (_, k), o in sim.objs.items() if o.path == "direct"} == {
        b"%d" % i for i in range(10)
    }


def test_promotion_when_budget_rises_is_hottest_first() -> None:
    cfg = PolicyConfig(
        reserve_bytes=0, hysteresis_bytes=8 * MiB, max_migration_bytes_per_tick=30 * MiB
    )
    p = ResidencyPolicy(cfg)
    sim = Sim(_objects("a", 10, 10 * MiB, "direct"))
    p.budget(sig(1 * GiB), 0)
    first = p.plan(sim.usage(), sim.objs.values(), now=0.0)
    assert [m.key for m in first] == [b"9", b"8", b"7"]  # hottest first, 30 MiB bound
    assert all(m.dst == "pagecache" for m in first)


def test_a_target_smaller_than_the_band_is_still_filled() -> None:
    """Ratio 4 of the residency bench: 147 MiB of free memory under a 256 MiB band."""
    cfg = PolicyConfig(reserve_bytes=0, hysteresis_bytes=256 * MiB)
    p = ResidencyPolicy(cfg)
    sim = Sim(_objects("a", 64, 16 * MiB, "direct"))
    p.budget(sig(147 * MiB), 0)
    plan = p.plan(sim.usage(), sim.objs.values(), now=0.0)
    assert {m.dst for m in plan} == {"pagecache"}
    assert 128 * MiB <= sum(m.size for m in plan) <= 147 * MiB + 16 * MiB
    # within a quarter of the target: no promotion for a wobble
    held = {"a": TenantUsage(120 * MiB, 904 * MiB)}
    assert p.plan(held, sim.objs.values(), now=1.0) == []


def test_promotions_stop_at_the_raw_budget_when_the_band_holds_a_higher_one() -> None:
    """Ratio 4 of the residency bench: a budget held at 412 MB from a tick with 611 MB of room,
    while the room had fallen under 300 MB by the end of the prefill. The band keeps noise
    from demoting; it must not promote into memory the signals no longer offer."""
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=0, hysteresis_bytes=256 * MiB))
    sim = Sim(_objects("a", 64, 16 * MiB, "direct"))
    p.budget(sig(400 * MiB), 0)
    held = p.budget(sig(250 * MiB), 0)
    assert held.total == 400 * MiB and held.raw == 250 * MiB  # inside the band: held
    plan = p.plan(sim.usage(), sim.objs.values(), now=0.0)
    assert {m.dst for m in plan} == {"pagecache"}
    assert 192 * MiB <= sum(m.size for m in plan) <= 250 * MiB
    # what is already cached above the raw budget but inside the band stays (no demotion)
    usage = {"a": TenantUsage(320 * MiB, 704 * MiB)}
    assert p.plan(usage, sim.objs.values(), now=1.0) == []


def test_a_probe_sized_deficit_is_filled() -> None:
    """Ratio 1 of the residency bench: 53 of 64 layer objects promoted, 99 MB below a 1005 MB
    target. A quarter of the target (251 MB) as the band left it there, and the cap, which
    only probes while in use, never grew: the band is at most one probe (64 MiB)."""
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=0, hysteresis_bytes=256 * MiB))
    objs = _objects("a", 64, 16 * MiB, "direct")
    p.budget(sig(1005 * MiB), 0)
    usage = {"a": TenantUsage(906 * MiB, 118 * MiB)}
    plan = p.plan(usage, objs, now=100.0)
    assert {m.dst for m in plan} == {"pagecache"} and sum(m.size for m in plan) == 96 * MiB
    # a deficit smaller than a probe is a wobble: no promotion
    assert p.plan({"a": TenantUsage(950 * MiB, 74 * MiB)}, objs, now=101.0) == []


def test_promotion_waits_out_the_dwell_after_a_demotion() -> None:
    cfg = PolicyConfig(reserve_bytes=1 * GiB, hysteresis_bytes=8 * MiB, min_dwell_s=30.0)
    p = ResidencyPolicy(cfg)
    sim = Sim(_objects("a", 10, 10 * MiB, "pagecache"))
    p.budget(sig(1 * GiB + 50 * MiB), sim.resident())  # budget 50 MiB: demote 50
    plan = p.plan(sim.usage(), sim.objs.values(), now=0.0)
    assert sum(m.size for m in plan) == 50 * MiB
    sim.apply(plan, 0.0)
    p.budget(sig(2 * GiB), sim.resident())  # memory comes back at once
    assert p.plan(sim.usage(), sim.objs.values(), now=10.0) == []  # tenant still dwelling
    later = p.plan(sim.usage(), sim.objs.values(), now=31.0)
    assert later and all(m.dst == "pagecache" for m in later)


def test_recently_moved_objects_are_skipped() -> None:
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=GiB, hysteresis_bytes=0, min_dwell_s=30.0))
    objs = _objects("a", 4, 10 * MiB, "pagecache")
    objs[0] = dataclasses.replace(objs[0], last_moved=95.0)  # coldest, but just promoted
    sim = Sim(objs)
    p.budget(sig(GiB + 30 * MiB), sim.resident())  # budget 30 of 40 MiB: demote one
    assert [m.key for m in p.plan(sim.usage(), sim.objs.values(), now=100.0)] == [b"1"]


def test_forced_modes_plan_nothing() -> None:
    sim = Sim(_objects("a", 4, 10 * MiB, "pagecache"))
    for mode in ("pagecache", "direct"):
        p = ResidencyPolicy(PolicyConfig(mode=mode))  # type: ignore[arg-type]
        p.budget(sig(0), 0)
        assert p.plan(sim.usage(), sim.objs.values(), now=0.0) == []


@pytest.mark.parametrize("noise", [7 * MiB, 40 * MiB])
def test_no_flapping_across_a_noisy_signal_sequence(noise: int) -> None:
    """Slow swings of +-80 MiB every 90 s with per-tick noise inside / far beyond the band."""
    dwell = 20.0
    cfg = PolicyConfig(
        reserve_bytes=1 * GiB,
        hysteresis_bytes=16 * MiB,
        min_dwell_s=dwell,
        max_migration_bytes_per_tick=64 * MiB,
        weights={"b": 2.0},
    )
    p = ResidencyPolicy(cfg)
    rng = random.Random(1234)
    objs = _objects("a", 40, 4 * MiB, "pagecache") + _objects("b", 40, 4 * MiB, "direct")
    sim = Sim(objs)
    base = 120 * MiB
    for tick in range(600):  # one tick per second, 10 minutes
        now = float(tick)
        swing = 80 * MiB * (1 if (tick // 90) % 2 else -1)
        # the sim's page cache is clean: MemAvailable counts it, whatever its size
        available = GiB + base + swing + rng.randint(-noise, noise)
        for key in rng.sample(sorted(sim.objs), 5):  # some objects are touched
            sim.objs[key] = dataclasses.replace(sim.objs[key], last_access=now)
        p.budget(sig(available, now), sim.resident())
        sim.apply(p.plan(sim.usage(), sim.objs.values(), now), now)

    assert sum(len(v) for v in sim.moves.values()) > 0  # the swings did move objects
    for key, moves in sim.moves.items():
        for (t1, d1), (t2, d2) in zip(moves, moves[1:]):
            assert d1 != d2, f"{key} moved twice in the same direction"
            assert t2 - t1 >= dwell, f"{key} flapped: {moves}"
    if noise * 2 >= cfg.hysteresis_bytes:
        return
    # noise inside the band alone moves nothing: every move follows a swing
    move_times = sorted({t for moves in sim.moves.values() for t, _ in moves})
    swing_starts = [s for s in range(0, 600, 90)]
    assert all(any(0 <= t - s < 60 for s in swing_starts) for t in move_times)
