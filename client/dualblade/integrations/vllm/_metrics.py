"""The tier's own Prometheus metrics, through vLLM's ``get_stats`` / ``build_metric_definitions``.

vLLM's tiering manager already counts, per tier, chunk queries and hits, bytes and seconds moved
and failed jobs (``vllm:kv_offload_tiering_*``), from what the tier returns. What only the tier
sees is added here: what the daemon answered to lookups (hit / miss / error: an error is a batch
that could not reach the daemon and answered MISS), the lookup round trip, the chunks that did
and did not move, and reconnects to a restarted daemon.

Threading: lookups are counted on vLLM's lookup thread and jobs on the scheduler thread, so the
observations are kept under one small lock; :meth:`TierMetrics.take` swaps them out, and vLLM
calls it (``get_stats``) once a step. Nothing here talks to the daemon.
"""

from __future__ import annotations

import threading

from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)
from vllm.v1.kv_offload.base import (
    OffloadingCounterMetadata,
    OffloadingHistogramMetadata,
    OffloadingMetricMetadata,
)

LOOKUP_KEYS = "vllm:dualblade_lookup_keys"
LOOKUP_SECONDS = "vllm:dualblade_lookup_seconds"
CHUNKS = "vllm:dualblade_chunks"
BYTES = "vllm:dualblade_bytes"
JOB_SECONDS = "vllm:dualblade_job_seconds"
RECONNECTS = "vllm:dualblade_reconnects"

_SECONDS_BUCKETS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def metric_definitions() -> dict[str, OffloadingMetricMetadata]:
    return {
        LOOKUP_KEYS: OffloadingCounterMetadata(
            documentation="Keys the dualblade tier looked up in dualbladed, by answer "
            "(hit, miss, error: the daemon was unreachable and the batch answered MISS).",
            labelnames=("result",),
        ),
        LOOKUP_SECONDS: OffloadingHistogramMetadata(
            documentation="Round trip of one batched lookup to dualbladed, in seconds.",
            buckets=_SECONDS_BUCKETS,
        ),
        CHUNKS: OffloadingCounterMetadata(
            documentation="Chunks the dualblade tier moved, by op (store, load) and result "
            "(ok, failed: missing, evicted, wrong size or daemon lost).",
            labelnames=("op", "result"),
        ),
        BYTES: OffloadingCounterMetadata(
            documentation="Bytes the dualblade tier moved to (store) or from (load) dualbladed.",
            labelnames=("op",),
        ),
        JOB_SECONDS: OffloadingHistogramMetadata(
            documentation="Wall time of one dualblade tier transfer job, in seconds.",
            labelnames=("op",),
            buckets=_SECONDS_BUCKETS,
        ),
        RECONNECTS: OffloadingCounterMetadata(
            documentation="Sessions the dualblade tier opened after losing the daemon.",
        ),
    }


class TierMetrics:
    """Observations since the last :meth:`take`; safe to feed from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = OffloadingConnectorStats()
        self._connects_seen = 0

    def lookup(self, hits: int, misses: int, seconds: float) -> None:
        with self._lock:
            s = self._stats
            if hits:
                s.increase_counter(LOOKUP_KEYS, hits, ("hit",))
            if misses:
                s.increase_counter(LOOKUP_KEYS, misses, ("miss",))
            s.observe_histogram(LOOKUP_SECONDS, seconds)

    def lookup_failed(self, keys: int) -> None:
        with self._lock:
            self._stats.increase_counter(LOOKUP_KEYS, keys, ("error",))

    def job(self, is_store: bool, ok: int, failed: int, nbytes: int, seconds: float) -> None:
        op = "store" if is_store else "load"
        with self._lock:
            s = self._stats
            if ok:
                s.increase_counter(CHUNKS, ok, (op, "ok"))
            if failed:
                s.increase_counter(CHUNKS, failed, (op, "failed"))
            if nbytes:
                s.increase_counter(BYTES, nbytes, (op,))
            s.observe_histogram(JOB_SECONDS, seconds, (op,))

    def connects(self, total: int) -> None:
        """``total`` sessions opened so far; every one after the first is a reconnect."""
        with self._lock:
            new = total - max(self._connects_seen, 1)
            if new > 0:
                self._stats.increase_counter(RECONNECTS, new)
            self._connects_seen = max(self._connects_seen, total)

    def take(self) -> OffloadingConnectorStats | None:
        with self._lock:
            stats, self._stats = self._stats, OffloadingConnectorStats()
        return None if stats.is_empty() else stats
