"""`DualBladeTier`: the vLLM glue. Imports vLLM; :mod:`dualblade.integrations.vllm` guards that.

Threading: every method here runs on vLLM's scheduler side under the tiering manager's lock and
returns without waiting on the daemon. ``_job_keys`` and the lookup state are touched only there;
the I/O workers (:mod:`._io`) and the lookup thread only talk to the daemon and post results on
thread-safe queues.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from vllm.v1.kv_offload.base import (
    Locality,
    LookupResult,
    Medium,
    OffloadingEvent,
    OffloadKey,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
)
from vllm.v1.kv_offload.tiering.async_lookup import AsyncLookupManager
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob

from dualblade import errors
from dualblade.integrations.vllm._io import DEFAULT_ARENA_BYTES, ChunkJob, Connection, IoPool
from dualblade.integrations.vllm._metrics import TierMetrics, metric_definitions
from dualblade.integrations.vllm._namespace import default_tenant, key_prefix, namespace_fields
from dualblade.integrations.vllm._pins import PinBook

if TYPE_CHECKING:
    from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
        OffloadingConnectorStats,
    )
    from vllm.v1.kv_offload.base import OffloadingMetricMetadata, OffloadingSpec
    from vllm.v1.kv_offload.tiering.backpressure import BackpressureDetector

log = logging.getLogger("dualblade.integrations.vllm")


class _DaemonLookup(AsyncLookupManager):
    """vLLM's async lookup front end; the batch goes to the daemon from vLLM's lookup thread.

    One batch is one batched stat of the namespaced keys (one daemon round trip), which pins every
    hit for ``pin_ms`` (see :mod:`._pins`). A failure (daemon away, too many pins) is raised; the
    base class logs it and answers MISS for the batch.
    """

    def __init__(
        self,
        io: IoPool,
        prefix: bytes,
        tier_type: str,
        metrics: TierMetrics,
        pins: PinBook,
        pin_ms: int,
    ) -> None:
        self._io = io
        self._prefix = prefix
        self._metrics = metrics
        self._pins = pins
        self._pin_ms = pin_ms
        super().__init__(tier_type=tier_type)

    def batch_lookup(self, keys: list[OffloadKey], req_context: ReqContext) -> Iterable[bool]:
        start = time.perf_counter()
        full = [self._prefix + k for k in keys]
        try:
            found = self._io.lookup(full, self._pin_ms)
        except Exception as exc:
            self._metrics.lookup_failed(len(keys))
            if isinstance(exc, errors.ResourceExhausted):  # the pins it took before the limit
                self._io.unpin(self._pins.unheld(full))
            raise
        if self._pin_ms:
            self._pins.pinned(req_context.req_id, [k for k, hit in zip(full, found) if hit])
        hits = sum(found)
        self._metrics.lookup(hits, len(found) - hits, time.perf_counter() - start)
        return found


class DualBladeTier(SecondaryTierManager):
    """A vLLM secondary KV tier stored in ``dualbladed``.

    Tier config (inside ``kv_connector_extra_config.secondary_tiers`` of ``OffloadingConnector``
    with ``spec_name: TieringOffloadingSpec``)::

        {"type": "DualBladeTier", "module_path": "dualblade.integrations.vllm",
         "socket": "/run/dualblade/grpc.sock", "tenant": "llama-8b"}

    Optional keys: ``socket`` (default: as ``Client.connect``), ``tenant`` (default: from the
    model name), ``locality`` (``"LOCAL"``/``"REMOTE"``), ``enable_kv_events``, ``io_threads``
    (8: the daemon runs a batch's ops 8 at a time, and with 8 jobs in flight a job's copy into the
    arena overlaps other jobs' disk I/O; 4 stored and loaded ~20 % slower here), ``arena_bytes`` (the session arena, 256 MiB), ``path`` (``"direct"``/``"pagecache"``,
    default: the daemon decides), ``connect_timeout`` (seconds, 5), ``pin_ms`` (how long a HIT
    keeps its chunk safe from capacity eviction while its load is pending, 30000; at most the
    daemon's ``limits.max_pin_ms``; 0 turns pins off).
    """

    medium: ClassVar[Medium] = Medium.STORAGE

    def __init__(
        self,
        offloading_spec: OffloadingSpec,
        primary_kv_view: memoryview,
        tier_type: str,
        backpressure_detector: BackpressureDetector | None = None,
        locality: str | None = None,
        socket: str | None = None,
        tenant: str | None = None,
        enable_kv_events: bool = False,
        io_threads: int = 8,
        arena_bytes: int = DEFAULT_ARENA_BYTES,
        path: str | None = None,
        connect_timeout: float = 5.0,
        pin_ms: int = 30_000,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        self.locality = Locality(locality) if locality is not None else None
        chunk_bytes = self.block_size_bytes
        self.namespace = namespace_fields(offloading_spec, chunk_bytes)
        self.key_prefix = key_prefix(self.namespace)
        self.tenant = tenant or default_tenant(offloading_spec.config.model.name)
        pool = primary_kv_view if primary_kv_view.ndim == 1 else primary_kv_view.cast("B")
        if pool.format != "B":
            pool = pool.cast("B")
        self._conn = Connection(socket, self.tenant, arena_bytes, connect_timeout=connect_timeout)
        self._io = IoPool(self._conn, pool, chunk_bytes, threads=io_threads, path=path)
        self._metrics = TierMetrics()
        self._pins = PinBook()
        self._lookup = _DaemonLookup(
            self._io, self.key_prefix, tier_type, self._metrics, self._pins, pin_ms
        )
        self._job_keys: dict[int, list[OffloadKey]] = {}
        self._closed = False
        self._events: list[OffloadingEvent] | None = None
        if enable_kv_events:
            if offloading_spec.kv_events_config.enable_kv_cache_events:
                self._events = []
            else:
                log.warning("enable_kv_events on tier %r, but vLLM's KV events are off", tier_type)
        try:  # connect now so a wrong socket shows at start-up; the tier still works once it's up
            self._conn.get()
        except Exception as exc:
            log.warning(
                "dualblade tier %r: daemon not reachable yet (%s); will retry", tier_type, exc
            )

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        found = self._lookup.lookup(key, req_context)
        if found is None:
            return LookupResult.RETRY
        if found:
            self._pins.share(req_context.req_id, self.key_prefix + key)
            return LookupResult.HIT
        return LookupResult.MISS

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def on_schedule_end(self, context: ScheduleEndContext) -> None:
        self._lookup.flush()

    def on_request_finished(self, req_context: ReqContext) -> None:
        self._lookup.cleanup(req_context.req_id)
        self._io.unpin(self._pins.finish(req_context.req_id))

    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        """vLLM marks chunks recently used (in every tier): the daemon's eviction LRU gets a
        TouchOp per key, sent by a worker (this returns at once); chunks this tier lacks are
        misses there and change nothing."""
        if not self._closed:
            self._io.touch([self.key_prefix + k for k in keys])

    # -- jobs ------------------------------------------------------------------------------

    def submit_store(self, job_metadata: TransferJob) -> None:
        self._submit(job_metadata, is_store=True)

    def submit_load(self, job_metadata: TransferJob) -> None:
        self._submit(job_metadata, is_store=False)

    def _submit(self, job: TransferJob, *, is_store: bool) -> None:
        keys = list(job.keys)
        if len(keys) != len(job.chunk_ids):
            raise ValueError(f"job {job.job_id}: {len(keys)} keys for {len(job.chunk_ids)} chunks")
        if self._closed:
            raise RuntimeError("DualBladeTier is shut down")
        self._job_keys[job.job_id] = keys
        stride = self.block_size_bytes
        full = tuple(self.key_prefix + k for k in keys)
        if not is_store:
            self._pins.loading(full)  # the load's get ends the daemon's pins
        self._io.submit(
            ChunkJob(job.job_id, is_store, full, tuple(int(c) * stride for c in job.chunk_ids))
        )

    def get_finished_jobs(self) -> Iterable[JobResult]:
        results: list[JobResult] = []
        while True:
            try:
                outcome = self._io.results.get_nowait()
            except queue.Empty:
                break
            keys = self._job_keys.pop(outcome.job_id)
            if outcome.error is not None:
                log.debug("dualblade job %d failed: %s", outcome.job_id, outcome.error)
            success = not outcome.failed
            self._metrics.job(
                outcome.is_store,
                len(outcome.done),
                len(outcome.failed),
                outcome.nbytes,
                outcome.seconds,
            )
            successful_keys = None
            if outcome.is_store:
                if success and self._events is not None:
                    self._events.append(
                        OffloadingEvent(
                            keys=keys, medium=self.medium, removed=False, locality=self.locality
                        )
                    )
            elif not success:
                # A load that failed must not be retried from the same verdict (vLLM #49176):
                # its failed keys become a MISS; the keys that did load are kept.
                self._lookup.mark_miss([keys[i] for i in outcome.failed])
                if outcome.done:
                    successful_keys = tuple(keys[i] for i in outcome.done)
            results.append(
                JobResult(
                    job_id=outcome.job_id,
                    success=success,
                    successful_keys=successful_keys,
                    transfer_time=outcome.seconds,
                    transfer_bytes=outcome.nbytes,
                )
            )
        return results

    def has_pending_work(self) -> bool:
        return self._io.pending > 0

    def take_events(self) -> Iterable[OffloadingEvent]:
        if self._events:
            events, self._events = self._events, []
            yield from events

    # -- lifecycle -------------------------------------------------------------------------

    def drain_jobs(self) -> None:
        self._io.wait_idle()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._lookup.shutdown()
        self._io.shutdown()
        self._conn.close()

    # -- metrics -------------------------------------------------------------------------------

    @classmethod
    def build_metric_definitions(
        cls, extra_config: dict[str, Any]
    ) -> dict[str, OffloadingMetricMetadata]:
        return metric_definitions()

    def get_stats(self) -> OffloadingConnectorStats | None:
        self._metrics.connects(self._conn.connects)
        return self._metrics.take()

    def config_info(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "key_prefix": self.key_prefix.decode()}

    @classmethod
    def config_info_keys(cls, tier_config: dict[str, Any]) -> tuple[str, ...]:
        return ("tenant", "key_prefix")
