"""dualbladed.service.metrics: counts, histogram buckets, and the Prometheus text over HTTP."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dualbladed.errors import InvalidArgument
from dualbladed.service.metrics import LATENCY_BOUNDS_MS, Metrics, MetricSample


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.stop_prometheus()


def samples_by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_counts_and_buckets(metrics: Metrics) -> None:
    metrics.record("llama", "direct", "get", 4096, 0.0003)  # 0.3 ms -> bucket (0.25, 0.5]
    metrics.record("llama", "direct", "get", 8192, 0.0005)  # exactly 0.5 ms -> same bucket
    metrics.record("llama", "direct", "get", 4096, 7.0, ok=False)  # > 5000 ms -> +Inf
    metrics.record("qwen", "pagecache", "put", 100, 0.00001)  # 0.01 ms -> first bucket
    a, b = metrics.snapshot()
    assert isinstance(a, MetricSample)
    assert (a.tenant, a.path, a.op, a.ops, a.bytes, a.errors) == (
        "llama",
        "direct",
        "get",
        3,
        12288,
        1,
    )
    assert a.bounds_ms == LATENCY_BOUNDS_MS and len(a.counts) == len(LATENCY_BOUNDS_MS) + 1
    half = LATENCY_BOUNDS_MS.index(0.5)
    assert a.counts[half] == 2 and a.counts[-1] == 1 and sum(a.counts) == 3
    assert a.sum_ms == pytest.approx(7000.8)
    assert b.counts[0] == 1 and (b.tenant, b.ops, b.bytes) == ("qwen", 1, 100)


def test_record_many_counts_as_that_many_records(metrics: Metrics) -> None:
    """A packed put's objects on one path, in one call: the same series as one record each."""
    one = Metrics()
    for _ in range(3):
        one.record("llama", "direct", "put", 4096, 0.0003)
    metrics.record_many("llama", "direct", "put", 3 * 4096, 0.0003, 3)
    (a,) = metrics.snapshot()
    (b,) = one.snapshot()
    assert (a.ops, a.bytes, a.errors, a.counts) == (b.ops, b.bytes, b.errors, b.counts)
    assert a.ops == 3 and a.sum_ms == pytest.approx(b.sum_ms)


def test_record_is_thread_safe(metrics: Metrics) -> None:
    def work() -> None:
        for _ in range(2000):
            metrics.record("t", "direct", "put", 1, 0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (s,) = metrics.snapshot()
    assert s.ops == s.bytes == sum(s.counts) == 8000


def test_prometheus_text_matches_snapshot(metrics: Metrics) -> None:
    metrics.record("llama", "direct", "get", 4096, 0.0003)
    metrics.record("llama", "direct", "get", 4096, 0.002, ok=False)
    metrics.register_gauge("sessions", "Open sessions", lambda: 3)
    metrics.register_gauge("broken", "Raises", lambda: 1 / 0)
    samples = samples_by_name(generate_latest(metrics.registry()).decode())
    labels = {"tenant": "llama", "path": "direct", "op": "get"}
    assert samples["dualblade_ops_total"] == [(labels, 2.0)]
    assert samples["dualblade_bytes_total"] == [(labels, 4096.0)]
    assert samples["dualblade_errors_total"] == [(labels, 1.0)]
    buckets = {s[0]["le"]: s[1] for s in samples["dualblade_op_latency_seconds_bucket"]}
    assert buckets["0.00025"] == 0 and buckets["0.0005"] == 1 and buckets["0.0025"] == 2
    assert buckets["+Inf"] == 2 and list(buckets.values()) == sorted(buckets.values())
    assert samples["dualblade_op_latency_seconds_count"] == [(labels, 2.0)]
    assert samples["dualblade_op_latency_seconds_sum"][0][1] == pytest.approx(0.0023)
    assert samples["dualblade_sessions"] == [({}, 3.0)]
    assert "dualblade_broken" not in samples
    assert metrics.gauges() == {"sessions": 3.0}


def test_http_endpoint_on_loopback(metrics: Metrics) -> None:
    metrics.record("t", "pagecache", "put", 10, 0.001)
    host, port = metrics.start_prometheus("127.0.0.1:0")
    assert host == "127.0.0.1" and port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = samples_by_name(text)
    assert samples["dualblade_ops_total"][0][1] == 1.0
    assert any(name.startswith("dualblade_process_") for name in samples)
    with pytest.raises(InvalidArgument, match="already running"):
        metrics.start_prometheus("127.0.0.1:0")


def test_non_loopback_address_refused(metrics: Metrics) -> None:
    with pytest.raises(InvalidArgument, match="not a loopback address"):
        metrics.start_prometheus("192.0.2.1:9464")


def test_bad_gauges_and_bounds(metrics: Metrics) -> None:
    with pytest.raises(InvalidArgument):
        metrics.register_gauge("free bytes", "x", lambda: 0)
    metrics.register_gauge("free_bytes", "x", lambda: 0)
    with pytest.raises(InvalidArgument, match="already registered"):
        metrics.register_gauge("free_bytes", "x", lambda: 0)
    with pytest.raises(InvalidArgument):
        Metrics(bounds_ms=(1.0, 0.5))
