"""Per-tenant I/O metrics: one in-memory table, read by the Status RPC and by Prometheus.

Why one table: ``dbctl status`` (via :meth:`Metrics.snapshot`) and a Prometheus scrape (via a
custom collector over the same snapshot) must never disagree, so there are no separate
``prometheus_client`` Counter objects to keep in step.

Each series is keyed by ``(tenant, path, op)`` -- path is the residency path ("direct",
"pagecache", or "none" for an op that found no object), op is "put", "get", "delete", "stat",
"touch", "unpin" or, for layer objects, "reserve", "append", "readrange" -- and counts operations, bytes
moved (a reserve or a stat moves none), errors and a latency histogram with the fixed bounds
:data:`LATENCY_BOUNDS_MS`. Histogram counts are kept per
bucket (not cumulative); the last bucket is +Inf, so ``len(counts) == len(bounds_ms) + 1``, which
is the wire format of ``dualblade.v1.Histogram``. Prometheus gets cumulative ``le`` buckets in
seconds, as its conventions ask.

Cost: :meth:`Metrics.record` is one lock, one dict lookup and one ``bisect`` -- microseconds, called
once per operation of a Batch. Errors are counted in ``errors`` and also in ``ops`` and the
histogram (a failed op still took time); ``bytes`` counts only successful transfers.

Exposure: :meth:`Metrics.start_prometheus` binds only loopback addresses, or the wildcard
``0.0.0.0``/``::`` when configured explicitly (:func:`dualbladed.config.parse_listen_address`):
labels carry tenant names. Process-level gauges (sessions, free bytes) are registered as
callbacks with :meth:`Metrics.register_gauge` and evaluated at scrape time. Counters kept by
another component's own table (capacity evictions: ``dualblade_evictions_total{tenant,path}``,
the store's :class:`~dualbladed.store.capacity.Evictions`, which dbctl reads too) are registered
with :meth:`Metrics.register_counter` and read at scrape time, again so there is one table.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from dualbladed.config import parse_listen_address
from dualbladed.errors import InvalidArgument

log = logging.getLogger(__name__)

#: Upper bounds (ms) of the latency buckets; a final +Inf bucket follows. From a cached 4 KiB
#: page-cache read (~20 us) to a multi-second stall of a saturated device.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
    5000.0,
)  # fmt: skip
PREFIX = "dualblade_"
_LABELS = ("tenant", "path", "op")
_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class MetricSample:
    """One ``(tenant, path, op)`` series at snapshot time."""

    tenant: str
    path: str
    op: str
    ops: int
    bytes: int
    errors: int
    bounds_ms: tuple[float, ...]
    # Per bucket, not cumulative; len(bounds_ms) + 1 (the last is +Inf).
    counts: tuple[int, ...]
    sum_ms: float


class _Series:
    __slots__ = ("ops", "bytes", "errors", "counts", "sum_ms")

    def __init__(self, buckets: int) -> None:
        self.ops = 0
        self.bytes = 0
        self.errors = 0
        self.counts = [0] * buckets
        self.sum_ms = 0.0


@dataclass(frozen=True)
class _Gauge:
    name: str
    help: str
    fn: Callable[[], float]


@dataclass(frozen=True)
class _Counter:
    name: str  # without the ``_total`` suffix Prometheus adds
    help: str
    labels: tuple[str, ...]
    fn: Callable[[], dict[tuple[str, ...], float]]


class Metrics:
    """Thread-safe counters and latency histograms per ``(tenant, path, op)``."""

    def __init__(self, bounds_ms: tuple[float, ...] = LATENCY_BOUNDS_MS) -> None:
        if list(bounds_ms) != sorted(set(bounds_ms)) or not bounds_ms or bounds_ms[0] <= 0:
            raise InvalidArgument(f"latency bounds must be positive and increasing: {bounds_ms}")
        self.bounds_ms = tuple(float(b) for b in bounds_ms)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._gauges: dict[str, _Gauge] = {}
        self._counters: dict[str, _Counter] = {}
        self._http: Any = None

    def record(
        self, tenant: str, path: str, op: str, nbytes: int, seconds: float, ok: bool = True
    ) -> None:
        """Count one operation that moved ``nbytes`` in ``seconds`` (``ok=False``: it failed)."""
        self._add((tenant, path, op), seconds, 1, nbytes if ok else 0, 0 if ok else 1)

    def record_many(
        self, tenant: str, path: str, op: str, nbytes: int, seconds: float, count: int
    ) -> None:
        """:meth:`record` of ``count`` successful operations of ``seconds`` each that moved
        ``nbytes`` in all (a packed put's objects on one path: one lock, not one per object)."""
        self._add((tenant, path, op), seconds, count, nbytes, 0)

    def _add(
        self, key: tuple[str, str, str], seconds: float, ops: int, nbytes: int, errors: int
    ) -> None:
        ms = seconds * 1000.0
        bucket = bisect.bisect_left(self.bounds_ms, ms)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(len(self.bounds_ms) + 1)
            series.ops += ops
            series.bytes += nbytes
            series.errors += errors
            series.counts[bucket] += ops
            series.sum_ms += ms * ops

    def snapshot(self) -> list[MetricSample]:
        """A consistent copy of every series, sorted by (tenant, path, op)."""
        with self._lock:
            items = [
                (k, s.ops, s.bytes, s.errors, tuple(s.counts), s.sum_ms)
                for k, s in self._series.items()
            ]
        return [
            MetricSample(t, p, o, ops, nbytes, errors, self.bounds_ms, counts, sum_ms)
            for (t, p, o), ops, nbytes, errors, counts, sum_ms in sorted(items)
        ]

    def register_gauge(self, name: str, help: str, fn: Callable[[], float]) -> None:
        """Expose ``dualblade_<name>`` = ``fn()`` at scrape time (e.g. sessions, free_bytes)."""
        if not _NAME_RE.fullmatch(name):
            raise InvalidArgument(f"gauge name {name!r} is not a valid Prometheus metric name")
        with self._lock:
            if name in self._gauges:
                raise InvalidArgument(f"gauge {name!r} is already registered")
            self._gauges[name] = _Gauge(name, help, fn)

    def register_counter(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        fn: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        """Expose ``dualblade_<name>_total{labels}`` from ``fn()`` (label values -> count),
        read at scrape time from the table that owns the count."""
        if not _NAME_RE.fullmatch(name) or any(not _NAME_RE.fullmatch(x) for x in labels):
            raise InvalidArgument(f"counter {name!r} or its labels {labels} are not valid names")
        with self._lock:
            if name in self._counters or name in self._gauges:
                raise InvalidArgument(f"metric {name!r} is already registered")
            self._counters[name] = _Counter(name, help, tuple(labels), fn)

    def counters(self) -> dict[str, dict[tuple[str, ...], float]]:
        """Current values of the registered counters; a callback that raises is left out."""
        with self._lock:
            counters = list(self._counters.values())
        out: dict[str, dict[tuple[str, ...], float]] = {}
        for c in counters:
            try:
                out[c.name] = {k: float(v) for k, v in c.fn().items()}
            except Exception:
                log.exception("counter callback failed", extra={"counter": c.name})
        return out

    def gauges(self) -> dict[str, float]:
        """Current gauge values by name; a callback that raises is logged and left out."""
        return {name: value for name, _help, value in self._gauge_values()}

    def _gauge_values(self) -> list[tuple[str, str, float]]:
        with self._lock:
            gauges = list(self._gauges.values())
        values: list[tuple[str, str, float]] = []
        for g in gauges:
            try:
                values.append((g.name, g.help, float(g.fn())))
            except Exception:
                log.exception("gauge callback failed", extra={"gauge": g.name})
        return values

    # -- Prometheus -----------------------------------------------------------------------

    def registry(self) -> CollectorRegistry:
        """A fresh registry holding this table's collector and the process collector."""
        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector(self))
        ProcessCollector(namespace="dualblade", registry=reg)
        return reg

    def start_prometheus(self, address: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``address`` ("127.0.0.1:9464"); return the bound (host, port).

        Port 0 picks a free port (tests). Raises InvalidArgument for a non-loopback host.
        """
        host, port = parse_listen_address(address, "metrics.prometheus_address")
        if self._http is not None:
            raise InvalidArgument("the Prometheus endpoint is already running")
        server, _thread = start_http_server(port, addr=host, registry=self.registry())
        self._http = server
        bound = server.server_address
        log.info("prometheus endpoint listening", extra={"host": bound[0], "port": bound[1]})
        return str(bound[0]), int(bound[1])

    def stop_prometheus(self) -> None:
        server, self._http = self._http, None
        if server is not None:
            server.shutdown()
            server.server_close()


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self._metrics
        ops = CounterMetricFamily(PREFIX + "ops", "Operations completed", labels=_LABELS)
        nbytes = CounterMetricFamily(
            PREFIX + "bytes", "Bytes moved by successful ops", labels=_LABELS
        )
        errors = CounterMetricFamily(PREFIX + "errors", "Operations that failed", labels=_LABELS)
        latency = HistogramMetricFamily(
            PREFIX + "op_latency_seconds", "Operation latency", labels=_LABELS
        )
        les = [f"{b / 1000.0:g}" for b in m.bounds_ms] + ["+Inf"]
        for s in m.snapshot():
            labels = [s.tenant, s.path, s.op]
            ops.add_metric(labels, s.ops)
            nbytes.add_metric(labels, s.bytes)
            errors.add_metric(labels, s.errors)
            cumulative, buckets = 0, []
            for le, count in zip(les, s.counts):
                cumulative += count
                buckets.append((le, cumulative))
            latency.add_metric(labels, buckets, s.sum_ms / 1000.0)
        yield from (ops, nbytes, errors, latency)
        with m._lock:
            counters = list(m._counters.values())
        values = m.counters()
        for c in counters:
            family = CounterMetricFamily(PREFIX + c.name, c.help, labels=list(c.labels))
            for label_values, value in sorted(values.get(c.name, {}).items()):
                family.add_metric(list(label_values), value)
            yield family
        for name, help_text, value in m._gauge_values():
            yield GaugeMetricFamily(PREFIX + name, help_text, value=value)
