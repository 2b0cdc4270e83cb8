"""Scan order (``dualbladed.arbiter.scan``): a decode step's layer objects move spread along it."""

from __future__ import annotations

import dataclasses

from dualbladed.arbiter import scan
from dualbladed.arbiter.policy import ObjectHeat, PolicyConfig, ResidencyPolicy, TenantUsage
from dualbladed.arbiter.scan import leaving_order
from dualbladed.arbiter.signals import MemorySignals

MiB = 1 << 20
GiB = 1 << 30
STEP_S = 0.01  # one object read every 10 ms: a 64-object step takes 0.64 s


def step(n: int, path: str = "direct", *, rotate: int = 0, t0: float = 100.0) -> list[ObjectHeat]:
    """One tenant's ``n`` layer objects read in order, the tick landing ``rotate`` objects into
    the next step (those were read last)."""
    return [
        ObjectHeat("a", b"L%02d" % i, 16 * MiB, path, t0 + ((i - rotate) % n) * STEP_S, None, True)  # type: ignore[arg-type]
        for i in range(n)
    ]


def promotion_order(objs: list[ObjectHeat]) -> list[ObjectHeat]:
    return scan.promotion_order(scan.scans(objs))


def demotion_order(objs: list[ObjectHeat]) -> list[ObjectHeat]:
    return scan.demotion_order(scan.scans(objs))


def positions(objs: list[ObjectHeat]) -> list[int]:
    return sorted(int(o.key[1:]) for o in objs)


def longest_run(on: list[bool]) -> int:
    """Longest run of True around the cycle."""
    if all(on):
        return len(on)
    best = cur = 0
    for v in on + on:
        cur = cur + 1 if v else 0
        best = max(best, cur)
    return best


def test_promotions_of_a_whole_direct_step_are_evenly_spaced() -> None:
    order = promotion_order(step(64))
    assert len(order) == 64
    first8 = positions(order[:8])
    gaps = {(b - a) for a, b in zip(first8, first8[1:])} | {first8[0] + 64 - first8[-1]}
    assert gaps == {8}, first8


def test_what_stays_direct_is_never_two_layers_in_a_row() -> None:
    """Ratio 1 of the residency bench: 58 of 64 objects fit. Coldest-first left L3-L5 and
    L22-L24 direct; spread, no two direct objects are neighbours."""
    for keep in range(1, 33):
        promoted = {o.key for o in promotion_order(step(64))[: 64 - keep]}
        direct = [b"L%02d" % i not in promoted for i in range(64)]
        assert sum(direct) == keep
        assert longest_run(direct) == 1, (keep, "".join(".D"[d] for d in direct))


def test_demotions_leave_the_page_cache_part_spread_too() -> None:
    objs = step(64, "pagecache")
    demoted = {o.key for o in demotion_order(objs)[:16]}
    cached = [b"L%02d" % i not in demoted for i in range(64)]
    assert longest_run([not c for c in cached]) == 1  # 16 demoted objects, none adjacent
    assert longest_run(cached) == 3


def test_the_choice_follows_the_placement_not_where_the_tick_fell() -> None:
    """Runs of distinct lengths (9, 5, 3 direct objects): the first picks are the middles of the
    9- and 5-runs whichever object the tick saw first."""
    direct = set(range(10, 19)) | set(range(30, 35)) | set(range(50, 53))
    picks = set()
    for rotate in (0, 7, 31, 60):
        objs = [
            dataclasses.replace(o, path="direct" if int(o.key[1:]) in direct else "pagecache")  # type: ignore[arg-type]
            for o in step(64, rotate=rotate)
        ]
        picks.add(tuple(positions(promotion_order(objs)[:2])))
    assert picks == {(14, 32)}


def test_objects_outside_the_scan_keep_recency_order() -> None:
    scan = step(8, "pagecache", t0=100.0)
    old = [  # layer objects of a sequence read 30 s before, and blocks (never scanned)
        ObjectHeat("a", b"old%d" % i, MiB, "pagecache", 70.0 + i, None, True) for i in range(3)
    ]
    blocks = [
        ObjectHeat("a", b"blk%d" % i, MiB, "pagecache", 99.0 + i * 0.5, None) for i in range(3)
    ]
    order = demotion_order(scan + blocks + old)
    assert [o.key for o in order[:6]] == [b"old0", b"old1", b"old2", b"blk0", b"blk1", b"blk2"]
    assert {o.key for o in order[6:]} == {o.key for o in scan}
    # promotions: the scan first, then the rest hottest first
    flipped = [dataclasses.replace(o, path="direct") for o in scan + blocks + old]
    order = promotion_order(flipped)
    assert {o.key for o in order[:8]} == {o.key for o in scan}
    assert [o.key for o in order[8:]] == [b"blk2", b"blk1", b"blk0", b"old2", b"old1", b"old0"]


def test_tenants_take_turns() -> None:
    a = step(4)
    b = [dataclasses.replace(o, tenant="b", key=b"b" + o.key) for o in step(4)]
    order = promotion_order(a + b)
    assert [o.tenant for o in order] == ["a", "b"] * 4


def test_leaving_order_of_a_path_with_no_objects_is_empty() -> None:
    assert leaving_order(step(4, "pagecache"), "direct") == []


def test_the_policy_promotes_a_decode_step_spread_out() -> None:
    """The plan itself: 128 MiB of room for a 64 x 16 MiB all-direct step (ratio 8)."""
    p = ResidencyPolicy(PolicyConfig(reserve_bytes=0, hysteresis_bytes=256 * MiB))
    objs = step(64)
    p.budget(MemorySignals(0.0, 64 * GiB, 128 * MiB, None, None, None, None, None, None), 0)
    plan = p.plan({"a": TenantUsage(0, 1 * GiB)}, objs, now=101.0)
    moved = sorted(int(m.key[1:]) for m in plan)
    assert len(moved) == 8 and {b - a for a, b in zip(moved, moved[1:])} == {8}
