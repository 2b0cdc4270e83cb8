"""Adaptive prefetch depth and chunk size for the layer pipeline.

The pipeline reads the KV of layers l+1..l+d while layer l computes. The right depth d follows
from two measured quantities, both smoothed with an exponentially weighted moving average (EWMA)
so one slow read or one page fault does not swing the plan:

* ``io``: seconds to bring one layer's KV from the backend into host staging (and, on a GPU, to
  enqueue its host-to-device copy);
* ``compute``: seconds the model spends on one layer between two pipeline hand-offs.

With d reads in flight, a layer's read has d compute periods to finish before it is needed, so
the smallest depth that hides the *average* I/O is ``ceil(io / compute)``. The plan adds
``slack_layers`` (default 1) on top, clamped to ``[1, max_depth]``: the EWMA is a mean, and at
exactly the mean depth every read that runs late (an I/O thread preempted on a shared machine,
a daemon flush) stalls the model for the whole excess, while one more layer in flight absorbs
it for one layer of staging. In the pipeline bench on the 2-vCPU VM depth 1 (what the mean
asked for) left the model waiting on reads; see docs/benchmarks.md. ``max_depth`` is the tightest of three bounds: the configured maximum, the
number of layers that fit in the host staging budget (every in-flight read holds one layer of
staging), and the number that fit in the device-memory window (every prefetched layer occupies
device memory until it is consumed).

Chunk size: a layer's read is split into backend calls of about ``chunk_bytes`` so that the H2D
copy of one chunk overlaps the read of the next. Each call has a fixed cost ``o`` (an RPC: ~0.5 ms
with gRPC over a Unix socket) plus ``bytes / bw``. A call of ``c`` bytes spends a fraction
``(c / bw) / (o + c / bw)`` of its time moving data; asking for a target efficiency ``e`` gives
``c = o * bw * e / (1 - e)``. The bandwidth ``bw`` is estimated from the measured call times.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from dualblade.v1.wire import ALIGNMENT

__all__ = ["AdaptiveConfig", "AdaptiveController", "Ewma", "PipelinePlan"]

_ALIGN = ALIGNMENT
_RATIO_TOLERANCE = 1e-3


@dataclass(frozen=True)
class AdaptiveConfig:
    """Bounds and smoothing for `AdaptiveController`."""

    # Upper bound on prefetch depth whatever the timings say.
    max_depth: int = 8
    # Host staging budget shared by all in-flight reads (bytes).
    staging_bytes: int = 256 << 20
    # Device memory the prefetched layers may occupy (bytes); None = no device bound.
    device_window_bytes: int | None = None
    # Depth used before the first timings arrive.
    initial_depth: int = 2
    # Layers in flight beyond ceil(io / compute) (absorb reads that run late; 0 = the mean only).
    slack_layers: int = 1
    # EWMA weight of a new sample (0 < alpha <= 1).
    alpha: float = 0.3
    # Fixed cost of one backend call (seconds).
    call_overhead_s: float = 0.5e-3
    # Fraction of a backend call that should be spent moving data.
    target_call_efficiency: float = 0.9
    min_chunk_bytes: int = 256 << 10
    max_chunk_bytes: int = 64 << 20
    initial_chunk_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {self.max_depth}")
        if self.initial_depth < 1:
            raise ValueError(f"initial_depth must be >= 1, got {self.initial_depth}")
        if self.slack_layers < 0:
            raise ValueError(f"slack_layers must be >= 0, got {self.slack_layers}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0.0 < self.target_call_efficiency < 1.0:
            raise ValueError("target_call_efficiency must be in (0, 1)")
        if self.staging_bytes <= 0:
            raise ValueError("staging_bytes must be positive")
        if self.device_window_bytes is not None and self.device_window_bytes <= 0:
            raise ValueError("device_window_bytes must be positive or None")
        if not 0 < self.min_chunk_bytes <= self.max_chunk_bytes:
            raise ValueError("need 0 < min_chunk_bytes <= max_chunk_bytes")


@dataclass(frozen=True)
class PipelinePlan:
    """What the pipeline should do for the next step."""

    depth: int
    chunk_bytes: int
    # The bound depth was clamped to (from max_depth, staging and the device window).
    depth_cap: int


class Ewma:
    """Exponentially weighted moving average; the first sample initialises it."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> float:
        if self.value is None:
            self.value = sample
        else:
            self.value += self.alpha * (sample - self.value)
        return self.value


class AdaptiveController:
    """Turns measured per-layer I/O and compute times into a `PipelinePlan`.

    Thread-safe: I/O samples arrive from the pipeline's worker threads, compute samples from the
    thread running the model. ``fixed_depth`` pins the depth (still clamped to the cap) while the
    chunk size keeps adapting.
    """

    def __init__(self, config: AdaptiveConfig | None = None, *, fixed_depth: int | None = None):
        self.config = config or AdaptiveConfig()
        if fixed_depth is not None and fixed_depth < 1:
            raise ValueError(f"fixed depth must be >= 1, got {fixed_depth}")
        self.fixed_depth = fixed_depth
        self._lock = threading.Lock()
        self._io = Ewma(self.config.alpha)
        self._compute = Ewma(self.config.alpha)
        self._call_s = Ewma(self.config.alpha)
        self._call_bytes = Ewma(self.config.alpha)

    def observe_io(self, seconds: float, nbytes: int, calls: int = 1) -> None:
        """One layer read took `seconds` and moved `nbytes` in `calls` backend calls."""
        if seconds < 0 or nbytes < 0 or calls < 1:
            raise ValueError("observe_io needs seconds >= 0, nbytes >= 0, calls >= 1")
        with self._lock:
            self._io.add(seconds)
            self._call_s.add(seconds / calls)
            self._call_bytes.add(nbytes / calls)

    def observe_compute(self, seconds: float) -> None:
        """One layer's compute took `seconds`."""
        if seconds < 0:
            raise ValueError("observe_compute needs seconds >= 0")
        with self._lock:
            self._compute.add(seconds)

    @property
    def io_s(self) -> float | None:
        return self._io.value

    @property
    def compute_s(self) -> float | None:
        return self._compute.value

    def depth_cap(self, layer_bytes: int) -> int:
        """The largest depth the staging budget and the device window allow."""
        cfg = self.config
        cap = cfg.max_depth
        if layer_bytes > 0:
            cap = min(cap, cfg.staging_bytes // layer_bytes)
            if cfg.device_window_bytes is not None:
                cap = min(cap, cfg.device_window_bytes // layer_bytes)
        # One layer in flight is always allowed, even if it alone exceeds a budget.
        return max(1, cap)

    def depth(self, layer_bytes: int) -> int:
        cap = self.depth_cap(layer_bytes)
        if self.fixed_depth is not None:
            return min(self.fixed_depth, cap)
        with self._lock:
            io, compute = self._io.value, self._compute.value
        if io is None or compute is None:
            wanted = self.config.initial_depth
        elif compute <= 0.0:
            wanted = cap
        else:
            # The tolerance keeps an EWMA that converges to an integer ratio from above
            # (1.0000001) from asking for a whole extra layer of staging.
            wanted = math.ceil(io / compute - _RATIO_TOLERANCE) + self.config.slack_layers
        return max(1, min(wanted, cap))

    def chunk_bytes(self) -> int:
        cfg = self.config
        with self._lock:
            call_s, call_bytes = self._call_s.value, self._call_bytes.value
        if call_s is None or call_bytes is None or call_bytes <= 0:
            chunk = cfg.initial_chunk_bytes
        else:
            transfer_s = call_s - cfg.call_overhead_s
            if transfer_s <= 0:
                # Calls are dominated by their fixed cost: make them as large as allowed.
                chunk = cfg.max_chunk_bytes
            else:
                bandwidth = call_bytes / transfer_s
                eff = cfg.target_call_efficiency
                chunk = int(cfg.call_overhead_s * bandwidth * eff / (1.0 - eff))
        chunk = max(cfg.min_chunk_bytes, min(chunk, cfg.max_chunk_bytes))
        return max(_ALIGN, chunk // _ALIGN * _ALIGN)

    def plan(self, layer_bytes: int) -> PipelinePlan:
        """The plan for a step whose largest layer read is `layer_bytes`."""
        return PipelinePlan(
            depth=self.depth(layer_bytes),
            chunk_bytes=self.chunk_bytes(),
            depth_cap=self.depth_cap(layer_bytes),
        )
