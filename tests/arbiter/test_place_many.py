"""``ResidencyPolicy.place_many`` (a packed put's placement) decides as one object at a time.

Pure code: each scenario scripts the policy's observations, then places the same objects
twice on two identically prepared policies, once as one group and once one by one (each seeing
the usage the earlier ones added, a page-cache choice without room turned direct, as the
arbiter does). The decisions, and the state they leave (the next placement), must agree.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dualbladed.arbiter.feedback import BurstDetector, FeedbackConfig, Observation
from dualbladed.arbiter.policy import PolicyConfig, ResidencyPolicy, TenantUsage
from dualbladed.arbiter.signals import MemorySignals, PathReads
from dualbladed.paths.abstract import DIRECT, PAGECACHE

MiB = 1 << 20
GiB = 1 << 30
T = "t"


def _sig(available: int, free: int | None = None, psi: float = 0.0) -> MemorySignals:
    return MemorySignals(
        0.0, 64 * GiB, available, None, None, None, None, psi, 0.0, 0, 0, free, "host"
    )


def _obs(
    now: float,
    sig: MemorySignals,
    *,
    pc: int = 0,
    reads: dict[str, PathReads] | None = None,
    writes: dict[str, PathReads] | None = None,
) -> Observation:
    return Observation(now, sig, pc, pc, 0, reads or {}, 0, writes or {})


def _speeds(pc_gbps: float, dr_gbps: float) -> dict[str, PathReads]:
    """Cumulative counters: ``pc_gbps`` / ``dr_gbps`` GB moved in one second on each path."""
    return {
        PAGECACHE: PathReads(int(pc_gbps * 1e9), 1, 1.0),
        DIRECT: PathReads(int(dr_gbps * 1e9), 1, 1.0),
    }


def _policy(**learn: object) -> ResidencyPolicy:
    config = FeedbackConfig(speed_alpha=1.0, **learn)  # type: ignore[arg-type]
    return ResidencyPolicy(
        PolicyConfig(hysteresis_bytes=0, min_dwell_s=0.0, learn=config, place_on_pagecache=True)
    )


def burst_into_little_free_memory() -> ResidencyPolicy:
    """Page-cache writes measured faster, 40 MiB free: a burst fills it, then goes direct."""
    p = _policy(split=False)
    zero = _speeds(0, 0)
    p.observe(_obs(0, _sig(8 * GiB, free=40 * MiB), writes=zero))
    p.shares(p.observe(_obs(1, _sig(8 * GiB, free=40 * MiB), writes=_speeds(3, 1))), {T: 0})
    return p


def burst_with_a_free_fraction() -> ResidencyPolicy:
    """Write speeds unmeasured, 256 MiB free, a burst may take half of it."""
    p = _policy(split=False, burst_free_fraction=0.5)
    p.shares(p.observe(_obs(0, _sig(8 * GiB, free=256 * MiB))), {T: 0})
    return p


def contested_split() -> ResidencyPolicy:
    """Both read speeds measured and PSI pressure: a quarter of new bytes stream direct."""
    p = _policy()
    p.observe(_obs(0, _sig(8 * GiB), reads=_speeds(0, 0)))
    budget = p.observe(_obs(1, _sig(8 * GiB, psi=50.0), pc=400 * MiB, reads=_speeds(3, 1)))
    p.shares(budget, {T: 0})
    return p


def share_then_slack() -> ResidencyPolicy:
    """No burst (paced), a 24 MiB budget: the share, then direct."""
    p = _policy(split=False)
    p.shares(p.observe(_obs(0, _sig(24 * MiB))), {T: 64 * MiB})
    return p


def no_observation_yet() -> ResidencyPolicy:
    return _policy()


def forced_pagecache() -> ResidencyPolicy:
    """Forced page-cache mode: everything there, but an object it has no room for."""
    return ResidencyPolicy(PolicyConfig(mode="pagecache"))


SCENARIOS: dict[str, Callable[[], ResidencyPolicy]] = {
    f.__name__: f
    for f in (
        burst_into_little_free_memory,
        burst_with_a_free_fraction,
        contested_split,
        share_then_slack,
        no_observation_yet,
        forced_pagecache,
    )
}

# mixed sizes: a large object refused in a burst must not refuse a later smaller one
SIZES = [4 * MiB] * 6 + [16 * MiB, 1 * MiB, 2 * MiB] * 8 + [8 * MiB] * 20 + [1 * MiB] * 30


def _one_by_one(
    p: ResidencyPolicy, sizes: list[int], now: float | None, fits: dict[int, bool]
) -> list[str]:
    pc = dr = 0
    out = []
    for size in sizes:
        (choice,) = p.place_many(T, [size], TenantUsage(pc, dr), now, fits)
        pc, dr = (pc + size, dr) if choice == PAGECACHE else (pc, dr + size)
        out.append(choice)
    return out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("now", [None, 5.0], ids=["no-clock", "clock"])
@pytest.mark.parametrize("full", [False, True], ids=["room", "no-room-for-2MiB"])
def test_a_group_is_placed_as_its_objects_one_by_one(scenario: str, now, full: bool) -> None:
    fits = {s: not (full and s == 2 * MiB) for s in set(SIZES)}
    group, single = SCENARIOS[scenario](), SCENARIOS[scenario]()
    together = group.place_many(T, SIZES, TenantUsage(0, 0), now, fits)
    assert together == _one_by_one(single, SIZES, now, fits)
    if full:
        assert all(c == DIRECT for c, s in zip(together, SIZES, strict=True) if s == 2 * MiB)
    # the state left behind (free memory taken, a burst's room) is the same: so is what follows
    usage = TenantUsage(sum(SIZES) // 2, sum(SIZES) - sum(SIZES) // 2)
    after = [group.place(T, s, usage, now) for s in (MiB, 4 * MiB)]
    assert after == [single.place(T, s, usage, now) for s in (MiB, 4 * MiB)]


def test_the_scenarios_reach_both_paths() -> None:
    """Each scenario but the unobserved one places some objects on each path (so the
    equivalence above compares real decisions, not two lists of one path)."""
    for name, make in SCENARIOS.items():
        paths = set(make().place_many(T, SIZES, TenantUsage(0, 0), 5.0))
        expected = {
            "no_observation_yet": {DIRECT},
            "forced_pagecache": {PAGECACHE},
        }.get(name, {DIRECT, PAGECACHE})
        assert paths == expected, name


def test_burst_detector_note_many_is_note_of_each() -> None:
    sizes = [3 * MiB, 5 * MiB, 8 * MiB, 1 * MiB, 20 * MiB, 2 * MiB]
    for before in (0, 10 * MiB, 24 * MiB, 29 * MiB, 31 * MiB, 40 * MiB):  # 24, 29: exactly 32
        a, b = BurstDetector(32 * MiB, 2.0), BurstDetector(32 * MiB, 2.0)
        if before:
            a.note(T, before, 0.0)
            b.note(T, before, 0.0)
        first = a.note_many(T, sizes, 1.0)
        each = [b.note(T, s, 1.0) for s in sizes]
        assert first == (each.index(True) if True in each else len(sizes))
        assert a.bursting(1.5) == b.bursting(1.5)
        assert a.note(T, MiB, 3.5) == b.note(T, MiB, 3.5)  # the group expired as one
