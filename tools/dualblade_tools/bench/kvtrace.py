"""A Llama-shaped KV trace with real per-layer compute: the residency benchmark's worker.

One run of the worker is one inference request on an edge box: a prefill that writes every
layer's K and V for ``context`` tokens, then ``steps`` decode steps that each read every layer's
whole KV and append one token. It runs in its own process (inside the benchmark's memory cgroup)
and prints one JSON result line on stdout; progress goes to stderr.

Shape (defaults are Llama-3-8B's KV geometry at an 8k context, unscaled): ``layers`` x K/V x
``context`` tokens x ``kv_heads`` x ``head_dim`` x fp16 = 1 GiB at 32 x 8 x 128 x 8192. Each
layer's K and V are cut into ``block_tokens``-token objects ("L{l}/k/B{b}"); a decode step
rewrites the partly filled tail block of each layer with the new token appended (as the SDK's
`DualBladeCache` does), so a step reads ``2 * layer_kv`` bytes... per layer and writes a block.

Layer objects (issue 12, when the backend has them -- `dualblade.pipeline.backend.is_ranged`,
and ``ranged`` is on): each layer's K and V are ONE object each ("L{l}/k", "L{l}/v"), reserved
for ``max_tokens`` and appended to; a decode step reads each layer with one ranged read batch
(K and V) and appends the new token with one append batch: 2 daemon calls per layer, 64 for 32
layers, where the block layout needs 32 x (1 read batch of 2 x 32 blocks + 1 put batch). The
baseline's `FileBackend` speaks the same API (one pread per K and V), so the comparison stays
like for like.

Compute (what is scaled, and stated in every report): the model's weights are a file of
``layers`` fp32 matrices ``[hidden, ffn]`` (default 2048 x 4096 = 32 MiB, 1 GiB in all, where
8B's are ~16 GB fp16), read through ``mmap`` like a real edge runtime maps its weights, so KV
pages and weight pages compete for the same page cache. Per layer, decode computes
``x[rows, hidden] @ W_l`` (touching every weight page of the layer) and one pass over every KV
byte it just read (an int64 sum: the memory traffic of attention's read of the cache, without
the fp16 arithmetic a CPU does slowly); prefill computes ``x[prefill_rows, hidden] @ W_l``.

What the worker measures besides step times: KV bytes the backend read during the measured
decode steps and the wall time during which at least one read was in flight (`TimedReads`:
``kv_read_gbps`` = bytes / that time), the per-step compute time (the matmul and the KV pass,
for the benchmark's floor column), and the CPU seconds (utime + stime from /proc/<pid>/stat) of
the worker and of the daemon over the measured steps.

Overlap is the same for every mode: `dualblade.pipeline.LayerPipeline` (adaptive prefetch depth,
write-back off the model thread) over a `KVBackend`. The daemon modes use `ClientBackend` (the
SDK client); the baseline uses `FileBackend`, an in-process FlexGen-style offload to buffered
per-layer files that relies on the page cache. Same trace, same compute, same pipeline: only the
storage path differs.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

# the backends live in their own module; re-exported here, where the benchmark looks for them
from dualblade_tools.bench.kvbackends import ClientBackend, FileBackend, TimedReads

__all__ = [
    "ClientBackend",
    "FileBackend",
    "TraceResult",
    "TimedReads",
    "TraceSpec",
    "create_weights",
    "main",
    "run_trace",
]

_FP16 = 2


@dataclass(frozen=True)
class TraceSpec:
    """The workload; every field is a command-line option of ``dualblade-bench residency``."""

    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    context: int = 8192
    block_tokens: int = 256
    steps: int = 16
    warmup_steps: int = 1
    hidden: int = 2048
    ffn: int = 4096
    rows: int = 8
    prefill_rows: int = 64
    max_depth: int = 4
    #: layer objects (reserve/append/read_range) where the backend has them; else blocks
    ranged: bool = True

    @property
    def token_bytes(self) -> int:
        """One token of K (or of V) in one layer."""
        return self.kv_heads * self.head_dim * _FP16

    @property
    def block_bytes(self) -> int:
        return self.block_tokens * self.token_bytes

    @property
    def max_tokens(self) -> int:
        return self.context + self.warmup_steps + self.steps

    @property
    def max_blocks(self) -> int:
        return -(-self.max_tokens // self.block_tokens)

    @property
    def kv_bytes(self) -> int:
        """The working set after prefill: every layer's K and V for ``context`` tokens."""
        return self.layers * 2 * self.context * self.token_bytes

    @property
    def staging_bytes(self) -> int:
        """One pipeline staging pool: ``max_depth + 1`` layers at the longest context."""
        return (self.max_depth + 1) * 2 * self.max_blocks * self.block_bytes

    @property
    def arena_bytes(self) -> int:
        """The client's arena: both staging pools (reads, write-backs) plus slack, 1 MiB-aligned."""
        return -(-(2 * self.staging_bytes + (32 << 20)) // (1 << 20)) * (1 << 20)

    @property
    def layer_weight_bytes(self) -> int:
        return self.hidden * self.ffn * 4

    @property
    def weight_bytes(self) -> int:
        return self.layers * self.layer_weight_bytes


@dataclass(frozen=True)
class TraceResult:
    prefill_s: float
    decode_ms: tuple[float, ...]
    decode_p50_ms: float
    decode_p99_ms: float
    decode_s: float
    io_read_bytes: int  # storage-layer bytes (/proc/<pid>/io) of the worker and the daemon
    io_write_bytes: int
    client_rss_bytes: int
    client_peak_rss_bytes: int
    cgroup_cache_bytes: int | None
    cgroup_anon_bytes: int | None
    cgroup_shmem_bytes: int | None
    depth: int
    ranged: bool = False  # layer objects were used
    kv_read_bytes: int = 0  # KV bytes read by the backend during the measured steps
    kv_read_s: float = 0.0  # wall seconds with at least one of those reads in flight
    compute_p50_ms: float = 0.0  # per-step compute (matmul + KV pass), median
    #: the model thread's wait for KV reads per measured step, mean: a step is compute, this
    #: wait, and the rest (appends, the loop); which of them moved is what a change needs
    read_wait_ms_per_step: float = 0.0
    client_cpu_s: float = 0.0  # utime + stime of the worker over the measured steps
    daemon_cpu_s: float | None = None  # the same for the daemon (None: no daemon)
    #: KV bytes on the page-cache path at the end / all KV bytes (None: no daemon)
    pagecache_fraction: float | None = None
    #: staging requests the arena could not serve (the pipeline used host memory, and each
    #: read then costs the client a bounce copy): a fragmented arena shows here
    staging_fallbacks: int = 0
    #: why the first of them happened (the arena's error), None without any
    staging_error: str | None = None
    #: prefill's matmuls on the model thread, weights' page faults included: what no KV
    #: placement can take off the prefill (the benchmark's prefill floor)
    prefill_compute_s: float = 0.0
    #: CPU seconds of the worker and of the daemon during prefill, and the worker's major
    #: page faults (the weights read in): where a prefill's time went
    prefill_client_cpu_s: float = 0.0
    prefill_daemon_cpu_s: float | None = None
    prefill_major_faults: int = 0
    #: the first of ``io_pids``' own storage reads over the measured steps (the worker's:
    #: the mmapped weights read back from the disk in daemon modes; baseline_file's KV reads
    #: too): what caching KV costs the weights
    client_io_read_bytes: int = 0
    #: the host's CPU time stolen by the hypervisor over the measured steps (and over the
    #: prefill), percent of all CPU time (/proc/stat): what makes this VM's timings noisy
    steal_pct: float | None = None
    prefill_steal_pct: float | None = None


def create_weights(path: Path, spec: TraceSpec) -> None:
    """Write the weights file once (random fp32, per-layer contiguous); skip if it fits."""
    if path.exists() and path.stat().st_size == spec.weight_bytes:
        return
    import torch

    gen = torch.Generator().manual_seed(0)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for _ in range(spec.layers):
            w = torch.randn(spec.hidden, spec.ffn, generator=gen) * 0.02
            fh.write(w.numpy().tobytes())
    os.replace(tmp, path)


def block_key(layer: int, kind: str, block: int) -> bytes:
    return f"L{layer}/{kind}/B{block}".encode()


def layer_key(layer: int, kind: str) -> bytes:
    return f"L{layer}/{kind}".encode()


# --------------------------------------------------------------------------- the trace


def _proc_io(pid: int) -> tuple[int, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(": ") for line in text.splitlines())
    return int(fields["read_bytes"]), int(fields["write_bytes"])


def _proc_stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (field 3 is index 0), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the command name may hold spaces


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (/proc/<pid>/stat fields 14 and 15)."""
    fields = _proc_stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_cpu() -> tuple[float, float]:
    """The host's ``(steal, total)`` CPU seconds so far (psutil's /proc/stat reading; guest
    time is already inside user, so it is not added again)."""
    t = psutil.cpu_times()
    return t.steal, t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal


def _steal_pct(a: tuple[float, float], b: tuple[float, float]) -> float | None:
    """Stolen share of the CPU time between two :func:`_host_cpu` readings, percent."""
    total = b[1] - a[1]
    return None if total <= 0 else 100.0 * (b[0] - a[0]) / total


def _major_faults() -> int:
    """This process's major page faults so far (/proc/self/stat field 12)."""
    fields = _proc_stat("self")
    return 0 if fields is None else int(fields[9])


def _rss() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _cgroup_memory(stat_path: str | None) -> tuple[int | None, int | None, int | None]:
    """``(cache, anon, shmem)`` from a v1 or v2 ``memory.stat``; Nones without a cgroup."""
    if not stat_path:
        return None, None, None
    raw = dict(line.split(" ") for line in Path(stat_path).read_text().splitlines())

    def pick(*keys: str) -> int | None:
        return next((int(raw[k]) for k in keys if k in raw), None)

    return (
        pick("total_cache", "cache", "file"),
        pick("total_rss", "rss", "anon"),
        pick("total_shmem", "shmem"),
    )


def run_trace(
    spec: TraceSpec,
    backend: Any,
    weights_path: Path,
    *,
    io_pids: Sequence[int] = (),
    cgroup_stat: str | None = None,
    say: Any = None,
    daemon_pid: int | None = None,
) -> TraceResult:
    """Prefill then decode through a `LayerPipeline` over ``backend``; see the module docstring."""
    import torch

    from dualblade.pipeline import AdaptiveConfig
    from dualblade.pipeline.backend import is_ranged
    from dualblade.pipeline.pipeline import LayerPipeline, LayerRead, Segment

    say = say or (lambda msg: None)
    ranged = spec.ranged and is_ranged(backend)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    fd = os.open(weights_path, os.O_RDONLY)
    try:
        wmap = mmap.mmap(fd, spec.weight_bytes, access=mmap.ACCESS_COPY)  # reads share the cache
    finally:
        os.close(fd)
    wflat = torch.frombuffer(wmap, dtype=torch.float32)
    per = spec.hidden * spec.ffn
    weights = [
        wflat[i * per : (i + 1) * per].view(spec.hidden, spec.ffn) for i in range(spec.layers)
    ]
    x = torch.randn(spec.rows, spec.hidden, generator=gen)
    xp = torch.randn(spec.prefill_rows, spec.hidden, generator=gen)
    # One layer's K or V for the whole context, random fp16 bits; every layer writes these bytes.
    pattern = torch.randint(0, 256, (spec.context * spec.token_bytes,), dtype=torch.uint8)
    new_token = torch.randint(0, 256, (spec.token_bytes,), dtype=torch.uint8)
    cfg = AdaptiveConfig(staging_bytes=spec.staging_bytes, max_depth=spec.max_depth)
    sink = 0.0

    def layer_read(layer: int, length: int) -> LayerRead:
        if ranged:  # two ranges, K and V, 4 KiB-aligned in staging (copy-free arena reads)
            n = length * spec.token_bytes
            return LayerRead(
                (Segment(layer_key(layer, "k"), n), Segment(layer_key(layer, "v"), n)),
                align=4096,
                ranged=True,
            )
        blocks = -(-length // spec.block_tokens)
        return LayerRead(
            tuple(
                Segment(
                    block_key(layer, kind, b),
                    min(spec.block_tokens, length - b * spec.block_tokens) * spec.token_bytes,
                )
                for kind in ("k", "v")
                for b in range(blocks)
            )
        )

    timed = TimedReads(backend)
    # The worker's own CPU comes from process_time() (ns resolution, every thread); /proc's
    # clock ticks (10 ms) read 0 for a short run. The daemon has only /proc.
    cpu_pids = [daemon_pid] if daemon_pid else []

    def cpu_now() -> list[float | None]:
        """CPU seconds so far: the worker's, then the daemon's (if any)."""
        return [time.process_time()] + [_proc_cpu_s(p) for p in cpu_pids]

    with LayerPipeline(timed, num_layers=spec.layers, depth="auto", config=cfg) as pipe:
        # -- prefill: compute each layer, write its K and V back while the next layer computes.
        t0 = time.perf_counter()
        prefill_compute = 0.0
        pre_cpu0, pre_host0 = cpu_now(), _host_cpu()
        pre_faults0 = _major_faults()
        for layer in range(spec.layers):
            c0 = time.perf_counter()
            sink += float((xp @ weights[layer])[0, 0])
            prefill_compute += time.perf_counter() - c0
            if ranged:  # reserved in the write task, as `DualBladeCache` does: no round trip here
                keys = [layer_key(layer, kind) for kind in ("k", "v")]
                capacity = spec.max_tokens * spec.token_bytes
                pipe.append(
                    layer,
                    [(key, pattern) for key in keys],
                    reserve=[(key, capacity, False) for key in keys],
                )
                continue
            items = []
            for kind in ("k", "v"):
                for b in range(-(-spec.context // spec.block_tokens)):
                    lo = b * spec.block_bytes
                    hi = min(lo + spec.block_bytes, pattern.numel())
                    items.append((block_key(layer, kind, b), pattern[lo:hi]))
            pipe.writeback(layer, items)
        pipe.flush()
        prefill_s = time.perf_counter() - t0
        pre_cpu1, pre_host1 = cpu_now(), _host_cpu()
        prefill_faults = _major_faults() - pre_faults0
        say(f"prefill {prefill_s:.2f} s ({spec.kv_bytes / 2**30:.2f} GiB KV)")

        # -- decode: every step reads each layer's whole KV and appends one token.
        length = spec.context
        times: list[float] = []
        compute: list[float] = []
        total = spec.warmup_steps + spec.steps
        reads = [layer_read(layer, length) for layer in range(spec.layers)]
        pipe.begin_step(reads)
        io0 = [_proc_io(p) for p in io_pids]
        cpu0, host0 = cpu_now(), _host_cpu()
        wait0 = pipe.stats().wait_s
        t_decode = time.perf_counter()
        for step in range(total):
            if step == spec.warmup_steps:
                io0 = [_proc_io(p) for p in io_pids]
                cpu0, host0 = cpu_now(), _host_cpu()
                timed.reset()
                wait0 = pipe.stats().wait_s
                t_decode = time.perf_counter()
            t0 = time.perf_counter()
            busy = 0.0
            next_reads = [layer_read(layer, length + 1) for layer in range(spec.layers)]
            tail_block = length // spec.block_tokens
            tail_tokens = length % spec.block_tokens
            for layer in range(spec.layers):
                buf = pipe.layer(layer)
                # The new token's K and V come from the layer's projection, before attention:
                # queue the tail block's rewrite (or the append) first, so the next step's read
                # of this layer (possibly issued just below) is ordered after it.
                if ranged:
                    pipe.append(layer, [(layer_key(layer, k), new_token) for k in ("k", "v")])
                else:
                    items = []
                    read = reads[layer]
                    for kind, first in (("k", 0), ("v", len(read.segments) // 2)):
                        parts = [new_token]
                        if tail_tokens:
                            off = read.offsets[first + tail_block]
                            parts.insert(0, buf[off : off + tail_tokens * spec.token_bytes])
                        items.append((block_key(layer, kind, tail_block), torch.cat(parts)))
                    pipe.writeback(layer, items)
                if layer == spec.layers - 1:
                    pipe.end_step()
                    if step + 1 < total:
                        pipe.begin_step(next_reads)  # next step's first layers read meanwhile
                c0 = time.perf_counter()
                sink += float((x @ weights[layer])[0, 0])
                sink += float(buf.view(torch.int64).sum())
                busy += time.perf_counter() - c0
            times.append(time.perf_counter() - t0)
            compute.append(busy)
            length += 1
            reads = next_reads
            label = "warm-up" if step < spec.warmup_steps else f"{step - spec.warmup_steps + 1}"
            say(
                f"  decode step {label}/{spec.steps}: {times[-1] * 1e3:.0f} ms"
                f" (compute {busy * 1e3:.0f} ms)"
            )
        pipe.flush()
        decode_s = time.perf_counter() - t_decode
        io1 = [_proc_io(p) for p in io_pids]
        cpu1, host1 = cpu_now(), _host_cpu()
        kv_read_bytes, kv_read_s = timed.bytes, timed.busy_s
        stats = pipe.stats()
        read_wait_s = stats.wait_s - wait0
        depth, fallbacks, staging_error = stats.depth, stats.staging_fallbacks, stats.staging_error
        cache, anon, shmem = _cgroup_memory(cgroup_stat)  # still inside: buffers are live
        placed = _placement(backend)
    measured = sorted(times[spec.warmup_steps :])
    rss, hwm = _rss()
    del weights, wflat
    wmap.close()
    _ = sink
    return TraceResult(
        prefill_s=prefill_s,
        prefill_compute_s=prefill_compute,
        prefill_client_cpu_s=_cpu_delta(pre_cpu0[0], pre_cpu1[0]) or 0.0,
        prefill_daemon_cpu_s=_cpu_delta(pre_cpu0[1], pre_cpu1[1]) if cpu_pids else None,
        prefill_major_faults=prefill_faults,
        decode_ms=tuple(t * 1e3 for t in times[spec.warmup_steps :]),
        decode_p50_ms=statistics.median(measured) * 1e3,
        decode_p99_ms=_percentile(measured, 0.99) * 1e3,
        decode_s=decode_s,
        io_read_bytes=sum(b[0] - a[0] for a, b in zip(io0, io1)),
        io_write_bytes=sum(b[1] - a[1] for a, b in zip(io0, io1)),
        client_io_read_bytes=io1[0][0] - io0[0][0] if io_pids else 0,
        client_rss_bytes=rss,
        client_peak_rss_bytes=hwm,
        cgroup_cache_bytes=cache,
        cgroup_anon_bytes=anon,
        cgroup_shmem_bytes=shmem,
        depth=depth,
        ranged=ranged,
        kv_read_bytes=kv_read_bytes,
        kv_read_s=kv_read_s,
        compute_p50_ms=statistics.median(compute[spec.warmup_steps :]) * 1e3,
        read_wait_ms_per_step=read_wait_s * 1e3 / max(1, len(measured)),
        client_cpu_s=_cpu_delta(cpu0[0], cpu1[0]) or 0.0,
        daemon_cpu_s=_cpu_delta(cpu0[1], cpu1[1]) if cpu_pids else None,
        pagecache_fraction=placed,
        staging_fallbacks=fallbacks,
        staging_error=staging_error,
        steal_pct=_steal_pct(host0, host1),
        prefill_steal_pct=_steal_pct(pre_host0, pre_host1),
    )


def _placement(backend: Any) -> float | None:
    """Where the daemon put the KV at the end: the page-cache path's share of its bytes."""
    client = getattr(backend, "client", None)
    if client is None:
        return None
    per_path: dict[str, int] = {}
    for info in client.list(b""):
        per_path[info.path] = per_path.get(info.path, 0) + info.size
    total = sum(per_path.values())
    return per_path.get("pagecache", 0) / total if total else None


def _cpu_delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an ascending list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --------------------------------------------------------------------------- worker entry point


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dualblade_tools.bench.kvtrace --spec JSON --weights F (--files D | --socket S)``"""
    p = argparse.ArgumentParser(prog="kvtrace-worker")
    p.add_argument("--spec", required=True, help="TraceSpec as JSON")
    p.add_argument("--weights", required=True)
    p.add_argument("--files", help="baseline: directory for the per-layer files")
    p.add_argument("--socket", help="daemon mode: the daemon's gRPC socket")
    p.add_argument("--daemon-pid", type=int, default=None)
    p.add_argument("--cgroup-stat", default=None, help="memory.stat of the cgroup to report")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    spec = TraceSpec(**json.loads(args.spec))

    def say(msg: str) -> None:
        print(f"[bench] {args.label} {msg}", file=sys.stderr, flush=True)

    pids = [os.getpid()] + ([args.daemon_pid] if args.daemon_pid else [])
    if args.files:
        backend: Any = FileBackend(Path(args.files), spec)
    else:
        from dualblade import Client

        backend = ClientBackend(Client.connect(args.socket, "bench", spec.arena_bytes))
    try:
        result = run_trace(
            spec,
            backend,
            Path(args.weights),
            io_pids=pids,
            cgroup_stat=args.cgroup_stat,
            say=say,
            daemon_pid=args.daemon_pid,
        )
    finally:
        backend.close()
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
