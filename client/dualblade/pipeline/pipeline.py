"""Layer pipeline: overlap KV reads and host<->device copies with per-layer compute.

A decoder step walks the layers in order. For offloaded KV the pipeline keeps the next layers'
reads in flight while the current layer computes:

    compute:  [ layer 0 ][ layer 1 ][ layer 2 ] ...
    reads:    [r0][ r1 ][ r2 ][ r3 ]               (depth d = 2: r(l+1), r(l+2) run during l)
    writes:            [ w0 ][ w1 ][ w2 ]          (write-back of l overlaps compute of l+1)

Usage (one step; every call is made from the thread that runs the model)::

    pipe.begin_step([LayerRead(...) or None for each layer])
    for l in range(num_layers):
        buf = pipe.layer(l)          # uint8 tensor on `device`, or None if layer l reads nothing
        ... compute layer l using views of buf ...
        pipe.writeback(l, [(key, tensor), ...])   # or pipe.append(l, ...) for layer objects
    pipe.end_step()
    pipe.flush()                     # only where the writes must be durable (end of request)

`layer(l)` blocks only until layer l's own bytes are ready. Its result is valid until the next
`layer()` call or `close()` (on the CPU it is the staging buffer itself); copy what must live
longer. `begin_step` may be called for step s+1 right after `end_step` of step s, before the model
finishes its last layer, so that layer 0 of the next step is read during the tail of this one:
`end_step` does not take back the last layer's buffer, which that tail is still computing on (it
did once, and a prefetch could land in it: a stale token read in tests/pipeline/
test_arena_staging.py).

Ordering guarantees:

* Reads after writes: a read waits for every pending write of any of its keys.
* Writes after writes: a write of a key waits for the previous write of the same key, so a block
  rewritten every step (the partly filled tail block) never regresses.

GPU path (device is CUDA): the read thread issues ``copy_(non_blocking=True)`` from pinned (or
registered arena) staging on a side stream and records an event; `layer()` makes the compute
stream wait on it with ``current_stream().wait_event(ev)``, never a host sync. A separate reaper
thread waits for the event before the staging buffer is reused. Write-back makes a side stream
wait for the compute stream, copies device-to-host into pinned staging and records an event the
writer thread waits on before calling ``put_many``.

CPU path: identical structure. The "device copy" is the staging buffer itself and the write-back
copy goes into write staging, so the I/O threads still overlap real CPU compute. That copy runs
in the write task, not on the model thread: it is the CPU's stand-in for the D2H stream, and on
the model thread it serialised with compute (a py-spy profile of the residency bench's prefill
put 54 of the model thread's 174 non-idle samples in it).

Write-back sources (both paths): the tensors given to `writeback`/`append` are read after the
call returns (by the D2H stream on CUDA, by the write task on the CPU); they are kept alive until
then, and must not be modified in place until the returned future is done. One write's staging,
copy and task are in :mod:`dualblade.pipeline.writeback`; this module orders the writes.

Staging memory: when the backend offers ``staging()`` (the SDK client: slices of its shared
arena, cudaHostRegister-pinned on CUDA builds) both read and write staging come from it, so the
daemon DMAs reads straight into the buffer the H2D copy (or, on the CPU, the model) consumes, and
write-back bytes are put from where the D2H copy left them: no copy in this process besides the
device copies. Segments are laid out at the backend's ``staging_alignment`` (the arena's 4096)
so that every segment, not just the first of a call, is an arena range the daemon can address.
Both budgets are capped at a quarter of ``staging_capacity`` (the arena size), leaving the SDK
room for its own bounce slots; a staging request the backend cannot satisfy falls back to plain
(pinned) host memory, which still works with one bounce copy inside the SDK.

Layer objects (issue 12). A `LayerRead` with ``ranged=True`` names byte ranges of layer objects
(`Segment.offset`): the whole layer is then read with ONE ``read_ranges_into`` call (typically
two ranges, K and V), whatever the chunk size, and `append` queues ``append_many`` instead of
``put_many``. Appends obey the same ordering rules as writes (per key), so a read of a layer
object waits for the appends queued before it, and appends to one key land in order.

Depth and chunk size come from `AdaptiveController` (EWMA of measured per-layer times), re-planned
at every `begin_step`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch

from .adaptive import AdaptiveConfig, AdaptiveController, PipelinePlan
from .backend import KVBackend, staging_alignment, staging_capacity
from .layout import LayerRead, PipelineStats, Segment
from .staging import StagingPool, staging_size_class
from .writeback import stage_writes, write_task

__all__ = ["LayerPipeline", "LayerRead", "PipelineStats", "Segment"]

log = logging.getLogger(__name__)


@dataclass
class _Issued:
    future: Future
    ticket: int


class LayerPipeline:
    """Prefetch and write-back of per-layer KV through a `KVBackend` (see module docstring).

    Args:
        backend: where the bytes live; if it has ``staging(nbytes)`` its buffers are used.
        num_layers: layers per step.
        device: where `layer()` results live ("cpu" or a CUDA device).
        depth: a fixed prefetch depth, or "auto" for the adaptive controller.
        config: bounds for the controller (staging budget, device window, ...).
        io_threads / write_threads: backend calls in flight at once.
    """

    def __init__(
        self,
        backend: KVBackend,
        *,
        num_layers: int,
        device: str | torch.device = "cpu",
        depth: int | Literal["auto"] = "auto",
        config: AdaptiveConfig | None = None,
        io_threads: int = 4,
        write_threads: int = 2,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if depth != "auto" and (not isinstance(depth, int) or depth < 1):
            raise ValueError(f"depth must be a positive int or 'auto', got {depth!r}")
        self.backend = backend
        self.num_layers = num_layers
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        if self._cuda and not torch.cuda.is_available():
            raise ValueError("a CUDA device was requested but torch.cuda is not available")
        cfg = config or AdaptiveConfig()
        cap = staging_capacity(backend)
        if cap is not None and cfg.staging_bytes > cap // 4:
            cfg = dataclasses.replace(cfg, staging_bytes=max(cap // 4, 1))
        self.config = cfg
        self.segment_align = staging_alignment(backend)
        self.controller = AdaptiveController(cfg, fixed_depth=None if depth == "auto" else depth)
        self._staging_fallbacks = 0
        self._staging_error: str | None = None  # the first fallback's reason
        self._arena_ptrs: set[int] = set()
        alloc, free = self._staging_functions(backend)
        self._read_staging = StagingPool(
            # Reused on the GPU only. Reusing on the CPU too (a layer() result lives until the
            # next layer()) ran the residency bench's arena out of room ("arena full" at decode
            # step 3 of adaptive at ratio 0.5, twice): the read pool's cached buffers, sized for
            # last step's (shorter) layers, plus the write pool's fill the arena with fragments.
            cfg.staging_bytes,
            alloc,
            reuse=self._cuda,
            ordered=True,
            free=free,
        )
        self._write_staging = StagingPool(
            cfg.staging_bytes, alloc, reuse=True, ordered=False, free=free
        )
        self._readers = ThreadPoolExecutor(io_threads, thread_name_prefix="dualblade-read")
        self._writers = ThreadPoolExecutor(write_threads, thread_name_prefix="dualblade-write")
        self._reaper = ThreadPoolExecutor(1, thread_name_prefix="dualblade-reap")
        if self._cuda:
            self._h2d = torch.cuda.Stream(self.device)
            self._d2h = torch.cuda.Stream(self.device)
            self._compute_marks: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._lock = threading.Lock()
        self._pending_writes: dict[bytes, Future] = {}
        self._writes_inflight: set[Future] = set()
        self._write_error: BaseException | None = None
        # Step state (model thread only).
        self._reads: list[LayerRead | None] = []
        self._issued: dict[int, _Issued] = {}
        self._next_issue = 0
        self._plan = PipelinePlan(depth=1, chunk_bytes=cfg.initial_chunk_bytes, depth_cap=1)
        self._active = False
        self._held: tuple[torch.Tensor, int] | None = None
        self._last_layer: int | None = None
        self._last_return: float | None = None
        self._last_mark: torch.cuda.Event | None = None
        self._closed = False
        # Counters.
        self._steps = self._nreads = self._read_bytes = self._read_calls = 0
        self._nwrites = self._write_bytes = 0
        self._wait_s = 0.0

    # -- step API ----------------------------------------------------------------------------

    def begin_step(self, reads: Sequence[LayerRead | None]) -> PipelinePlan:
        """Start a step: `reads[l]` is what layer l needs (None: nothing). Returns the plan."""
        if self._closed:
            raise RuntimeError("pipeline is closed")
        if self._active:
            raise RuntimeError("begin_step called twice without end_step")
        if len(reads) != self.num_layers:
            raise ValueError(f"need {self.num_layers} layer reads, got {len(reads)}")
        self._harvest_compute_marks()
        self._reads = list(reads)
        self._issued = {}
        self._next_issue = 0
        layer_bytes = max((r.nbytes for r in reads if r is not None), default=0)
        self._plan = self.controller.plan(layer_bytes)
        self._active = True
        self._last_layer = None
        self._steps += 1
        # Layers 0..d-1 now; layer d is issued when layer 0 is consumed. The previous step's
        # last layer may still be computing, so this keeps at most d layers in flight.
        self._issue_through(self._plan.depth - 1)
        return self._plan

    def layer(self, index: int) -> torch.Tensor | None:
        """Layer `index`'s bytes on the device (uint8, `LayerRead` layout), or None."""
        if not self._active:
            raise RuntimeError("layer() outside begin_step/end_step")
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {index} out of range [0, {self.num_layers})")
        now = time.perf_counter()
        if self._last_layer is not None and index == self._last_layer + 1 and not self._cuda:
            self.controller.observe_compute(now - (self._last_return or now))
        self._release_held()
        self._issue_through(index + self._plan.depth)
        issued = self._issued.pop(index, None)
        result: torch.Tensor | None = None
        if issued is not None:
            t0 = time.perf_counter()
            value = issued.future.result()
            self._wait_s += time.perf_counter() - t0
            if self._cuda:
                dev, ev = value
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(ev)
                dev.record_stream(stream)
                result = dev
            else:
                base, view, nbytes = value
                self._held = (base, nbytes)
                result = view
        if self._cuda:
            mark = torch.cuda.Event(enable_timing=True)
            mark.record(torch.cuda.current_stream(self.device))
            if self._last_mark is not None and self._last_layer == index - 1:
                self._compute_marks.append((self._last_mark, mark))
            self._last_mark = mark
        self._last_layer = index
        self._last_return = time.perf_counter()
        return result

    def writeback(
        self,
        index: int,
        items: Sequence[tuple[bytes, torch.Tensor]],
        *,
        persistent: bool = False,
    ) -> Future:
        """Queue `items` (device tensors) for ``put_many``; returns the write's future.

        The tensors are copied into write staging after this returns (device-to-host on a side
        stream, or by the write task on the CPU), so the caller keeps computing meanwhile; it
        must not modify them in place until the future is done (module docstring).
        """
        return self._queue_write(index, items, persistent, append=False)

    def append(
        self,
        index: int,
        items: Sequence[tuple[bytes, torch.Tensor]],
        *,
        durable: bool = False,
        reserve: Sequence[tuple[bytes, int, bool]] = (),
    ) -> Future:
        """Queue `items` for ``append_many`` to layer objects (same copying and ordering rules
        as `writeback`: appends to one key land in the order they were queued).

        `reserve`: ``(key, capacity, persistent)`` layer objects to (re)create first, in the
        same write task, so a new generation costs the model thread no round trip; reads and
        later writes of those keys wait for it like for any write."""
        return self._queue_write(index, items, durable, append=True, reserve=reserve)

    def _queue_write(
        self,
        index: int,
        items: Sequence[tuple[bytes, torch.Tensor]],
        flag: bool,
        *,
        append: bool,
        reserve: Sequence[tuple[bytes, int, bool]] = (),
    ) -> Future:
        if self._closed:
            raise RuntimeError("pipeline is closed")
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {index} out of range [0, {self.num_layers})")
        if not items and not reserve:
            done: Future = Future()
            done.set_result(None)
            return done
        host_items, fill, base, total = stage_writes(
            items,
            self._write_staging,
            self.segment_align,
            d2h=self._d2h if self._cuda else None,
            device=self.device,
        )
        keys = list(dict.fromkeys([key for key, _, _ in reserve] + [key for key, _ in items]))
        nbytes = sum(t.numel() * t.element_size() for _, t in items)
        with self._lock:
            deps = {self._pending_writes[k] for k in keys if k in self._pending_writes}
            future = self._writers.submit(
                write_task,
                self.backend,
                self._write_staging,
                deps,
                fill,
                host_items,
                flag,
                base,
                total,
                append,
                reserve,
            )
            for key in keys:
                self._pending_writes[key] = future
            self._writes_inflight.add(future)
        future.add_done_callback(lambda f, keys=keys: self._write_done(f, keys))
        self._nwrites += 1
        self._write_bytes += nbytes
        return future

    def end_step(self) -> None:
        """Finish the step; reads issued but never consumed are cancelled or drained."""
        if not self._active:
            return
        # the last layer's buffer stays held: the model may still be computing on it (module
        # docstring); the next layer() or close() gives it back
        for issued in self._issued.values():
            if issued.future.cancel():
                self._read_staging.skip(issued.ticket)
            else:
                issued.future.add_done_callback(self._drain_unused)
        self._issued = {}
        self._active = False

    def flush(self) -> None:
        """Wait for every queued write; raise the first write error."""
        while True:
            with self._lock:
                pending = list(self._writes_inflight)
            if not pending:
                break
            for fut in pending:
                fut.exception()
        with self._lock:
            err, self._write_error = self._write_error, None
        if err is not None:
            raise err

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.end_step()
            self._release_held()
            self.flush()
        finally:
            self._closed = True
            self._readers.shutdown(wait=True)
            self._writers.shutdown(wait=True)
            self._reaper.shutdown(wait=True)
            self._read_staging.close()
            self._write_staging.close()

    def __enter__(self) -> LayerPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> PipelineStats:
        return PipelineStats(
            steps=self._steps,
            reads=self._nreads,
            read_bytes=self._read_bytes,
            read_calls=self._read_calls,
            writes=self._nwrites,
            write_bytes=self._write_bytes,
            wait_s=self._wait_s,
            staging_fallbacks=self._staging_fallbacks,
            depth=self._plan.depth,
            chunk_bytes=self._plan.chunk_bytes,
            io_ewma_s=self.controller.io_s,
            compute_ewma_s=self.controller.compute_s,
            staging_error=self._staging_error,
        )

    # -- internals ---------------------------------------------------------------------------

    def _alloc_host(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._cuda)

    def _staging_functions(
        self, backend: KVBackend
    ) -> tuple[Callable[[int], torch.Tensor], Callable[[torch.Tensor], None] | None]:
        """Staging allocator and release for the pools: the backend's if it has them."""
        staging = getattr(backend, "staging", None)
        release = getattr(backend, "release_tensor", None)
        if staging is None:
            return self._alloc_host, None

        def alloc(nbytes: int) -> torch.Tensor:
            try:
                # a size class, so the hole a freed buffer leaves fits the next, slightly
                # longer layer (staging_size_class); the caller sees exactly nbytes. The pool
                # budgets nbytes, so the arena may hold up to 1/16 more than the budget: the
                # arena's slack beyond the pools covers it, and a miss only falls back
                # to host memory
                buf = staging(staging_size_class(nbytes))[:nbytes]
            except Exception as err:  # e.g. the SDK arena is full: host memory still works
                with self._lock:
                    self._staging_fallbacks += 1
                    if self._staging_error is None:
                        self._staging_error = f"{type(err).__name__}: {err}"
                log.debug("backend staging of %d bytes failed (%s); using host memory", nbytes, err)
                return self._alloc_host(nbytes)
            with self._lock:
                self._arena_ptrs.add(buf.data_ptr())
            return buf

        def free(buf: torch.Tensor) -> None:
            with self._lock:
                ours = buf.data_ptr() in self._arena_ptrs
                self._arena_ptrs.discard(buf.data_ptr())
            if ours and release is not None:
                release(buf)

        return alloc, free

    def _issue_through(self, last: int) -> None:
        last = min(last, self.num_layers - 1)
        while self._next_issue <= last:
            index = self._next_issue
            self._next_issue += 1
            read = self._reads[index]
            if read is None or not read.segments:
                continue
            ticket = self._read_staging.ticket()
            with self._lock:
                deps = {
                    self._pending_writes[s.key]
                    for s in read.segments
                    if s.key in self._pending_writes
                }
            future = self._readers.submit(
                self._read_task, read, deps, ticket, self._plan.chunk_bytes
            )
            self._issued[index] = _Issued(future, ticket)

    def _read_task(
        self, read: LayerRead, deps: set[Future], ticket: int, chunk_bytes: int
    ) -> tuple[torch.Tensor, ...]:
        nbytes = read.nbytes
        try:
            for dep in deps:
                dep.result()  # a failed write makes the read fail: its data is not there
            base, buf = self._read_staging.acquire(nbytes, ticket)
        except BaseException:
            self._read_staging.skip(ticket)  # later reads must not wait for this one
            raise
        try:
            t0 = time.perf_counter()
            dev = None
            if self._cuda:
                with torch.cuda.stream(self._h2d):
                    dev = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            calls = 0
            groups = [list(zip(read.segments, read.offsets))] if read.ranged else None
            for group in groups or read.chunks(chunk_bytes):
                if read.ranged:
                    self.backend.read_ranges_into(  # type: ignore[attr-defined]
                        [(seg.key, seg.offset, buf[off : off + seg.nbytes]) for seg, off in group]
                    )
                else:
                    self.backend.get_many_into(
                        [(seg.key, buf[off : off + seg.nbytes]) for seg, off in group]
                    )
                calls += 1
                if dev is not None:
                    lo = group[0][1]
                    hi = group[-1][1] + group[-1][0].nbytes
                    with torch.cuda.stream(self._h2d):
                        dev[lo:hi].copy_(buf[lo:hi], non_blocking=True)
            self.controller.observe_io(time.perf_counter() - t0, read.payload_bytes, calls)
        except BaseException:
            self._read_staging.release(base, nbytes)
            raise
        with self._lock:
            self._nreads += 1
            self._read_bytes += read.payload_bytes
            self._read_calls += calls
        if dev is None:
            return base, buf, nbytes
        event = torch.cuda.Event()
        event.record(self._h2d)
        self._reaper.submit(self._release_after, event, self._read_staging, base, nbytes)
        return dev, event

    @staticmethod
    def _release_after(event: torch.cuda.Event, pool: StagingPool, base: torch.Tensor, n: int):
        event.synchronize()  # host wait in the reaper thread, never in the model thread
        pool.release(base, n)

    def _write_done(self, future: Future, keys: list[bytes]) -> None:
        err = future.exception()
        with self._lock:
            self._writes_inflight.discard(future)
            for key in keys:
                if self._pending_writes.get(key) is future:
                    del self._pending_writes[key]
            if err is not None and self._write_error is None:
                self._write_error = err
        if err is not None:
            log.error("KV write-back failed: %s", err)

    def _drain_unused(self, future: Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        value = future.result()
        if not self._cuda:
            base, _view, nbytes = value
            self._read_staging.release(base, nbytes)

    def _release_held(self) -> None:
        if self._held is not None:
            base, nbytes = self._held
            self._held = None
            self._read_staging.release(base, nbytes)

    def _harvest_compute_marks(self) -> None:
        if not self._cuda:
            return
        keep = []
        for start, end in self._compute_marks:
            if end.query():
                self.controller.observe_compute(start.elapsed_time(end) / 1000.0)
            else:
                keep.append((start, end))
        self._compute_marks = keep[-4 * self.num_layers :]
