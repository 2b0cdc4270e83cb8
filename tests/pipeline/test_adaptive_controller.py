"""AdaptiveController with scripted timings: depth = ceil(io / compute) + slack within its caps."""

from __future__ import annotations

import pytest

from dualblade.pipeline.adaptive import AdaptiveConfig, AdaptiveController, Ewma

MIB = 1 << 20


def feed(ctl: AdaptiveController, io: float, compute: float, n: int = 50, nbytes: int = MIB):
    for _ in range(n):
        ctl.observe_io(io, nbytes, calls=1)
        ctl.observe_compute(compute)


def test_initial_depth_before_any_timing() -> None:
    ctl = AdaptiveController(AdaptiveConfig(initial_depth=3))
    assert ctl.plan(MIB).depth == 3


@pytest.mark.parametrize(
    ("io", "compute", "depth"),
    [(3e-3, 1e-3, 3), (2.5e-3, 1e-3, 3), (1e-3, 4e-3, 1), (1e-3, 1e-3, 1), (7.9e-3, 2e-3, 4)],
)
def test_depth_is_ceil_of_io_over_compute(io: float, compute: float, depth: int) -> None:
    ctl = AdaptiveController(AdaptiveConfig(max_depth=8, slack_layers=0))
    feed(ctl, io, compute)
    assert ctl.plan(MIB).depth == depth


@pytest.mark.parametrize(
    ("io", "compute", "depth"), [(1e-3, 4e-3, 2), (3e-3, 1e-3, 4), (9e-3, 1e-3, 8)]
)
def test_slack_adds_layers_in_flight_within_the_cap(io: float, compute: float, depth: int) -> None:
    """The default keeps one layer beyond the mean in flight (a late read is absorbed), and the
    caps still bound it (9 ms / 1 ms + 1 = 10 -> max_depth 8)."""
    ctl = AdaptiveController(AdaptiveConfig(max_depth=8))
    feed(ctl, io, compute)
    assert ctl.plan(MIB).depth == depth
    assert AdaptiveConfig().slack_layers == 1


def test_depth_clamped_to_max_depth() -> None:
    ctl = AdaptiveController(AdaptiveConfig(max_depth=4))
    feed(ctl, 50e-3, 1e-3)
    plan = ctl.plan(MIB)
    assert (plan.depth, plan.depth_cap) == (4, 4)


def test_depth_bounded_by_staging_bytes() -> None:
    ctl = AdaptiveController(AdaptiveConfig(max_depth=8, staging_bytes=3 * MIB))
    feed(ctl, 50e-3, 1e-3)
    assert ctl.plan(MIB).depth == 3
    # A layer bigger than the whole budget still gets one read in flight.
    assert ctl.plan(10 * MIB).depth == 1


def test_depth_bounded_by_device_window() -> None:
    cfg = AdaptiveConfig(max_depth=8, staging_bytes=64 * MIB, device_window_bytes=2 * MIB)
    ctl = AdaptiveController(cfg)
    feed(ctl, 50e-3, 1e-3)
    assert ctl.plan(MIB).depth == 2


def test_depth_follows_a_change_in_timings() -> None:
    ctl = AdaptiveController(AdaptiveConfig(alpha=0.5, slack_layers=0))
    feed(ctl, 1e-3, 1e-3)
    assert ctl.plan(MIB).depth == 1
    # The disk slows down (memory pressure moved KV to the direct path): depth grows.
    feed(ctl, 4e-3, 1e-3, n=30)
    assert ctl.plan(MIB).depth == 4
    feed(ctl, 1e-3, 1e-3, n=30)
    assert ctl.plan(MIB).depth == 1


def test_one_outlier_does_not_swing_depth() -> None:
    ctl = AdaptiveController(AdaptiveConfig(alpha=0.2, slack_layers=0))
    feed(ctl, 2e-3, 1e-3)
    ctl.observe_io(20e-3, MIB)
    assert ctl.plan(MIB).depth == 6  # 2 + 0.2 * 18 = 5.6 ms -> 6, not 20
    assert ctl.io_s == pytest.approx(5.6e-3)


def test_fixed_depth_is_still_capped() -> None:
    ctl = AdaptiveController(AdaptiveConfig(staging_bytes=2 * MIB), fixed_depth=5)
    feed(ctl, 1e-3, 10e-3)
    assert ctl.plan(MIB).depth == 2
    assert ctl.plan(MIB // 8).depth == 5


def test_chunk_size_from_call_overhead_and_bandwidth() -> None:
    cfg = AdaptiveConfig(call_overhead_s=0.5e-3, target_call_efficiency=0.9)
    ctl = AdaptiveController(cfg)
    assert ctl.plan(MIB).chunk_bytes == cfg.initial_chunk_bytes
    # 1 MiB per call in 1.5 ms: 1 ms of transfer -> 1 GiB/s; c = 0.5 ms * 1 GiB/s * 9 = 4.5 MiB.
    feed(ctl, 1.5e-3, 1e-3, nbytes=MIB)
    chunk = ctl.plan(MIB).chunk_bytes
    assert chunk % 4096 == 0
    assert chunk == pytest.approx(4.5 * MIB, rel=0.01)


def test_chunk_size_clamped() -> None:
    cfg = AdaptiveConfig(min_chunk_bytes=MIB, max_chunk_bytes=8 * MIB)
    ctl = AdaptiveController(cfg)
    feed(ctl, 0.4e-3, 1e-3, nbytes=MIB)  # below the fixed overhead: make calls as big as allowed
    assert ctl.plan(MIB).chunk_bytes == 8 * MIB
    ctl2 = AdaptiveController(cfg)
    feed(ctl2, 1.0, 1e-3, nbytes=4096)  # very slow medium: tiny chunk, clamped up
    assert ctl2.plan(MIB).chunk_bytes == MIB


def test_ewma_first_sample_initialises() -> None:
    e = Ewma(0.25)
    assert e.add(4.0) == 4.0
    assert e.add(8.0) == 5.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_depth": 0},
        {"alpha": 0.0},
        {"target_call_efficiency": 1.0},
        {"staging_bytes": 0},
        {"slack_layers": -1},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaptiveConfig(**kwargs)


def test_observations_validated() -> None:
    ctl = AdaptiveController()
    with pytest.raises(ValueError):
        ctl.observe_io(-1.0, 10)
    with pytest.raises(ValueError):
        ctl.observe_compute(-1.0)
