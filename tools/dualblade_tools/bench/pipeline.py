"""``dualblade-bench pipeline``: decode step time with the layer pipeline on and off (CPU).

What runs: a Llama-shaped stack of ``--layers`` layers. Each decode step, every layer needs its
whole past KV (``--seq`` tokens x ``--kv-heads`` x ``--head-dim``, K and V, fp16, cut into
``--block`` token objects) from the backend, and then computes: a real CPU matmul
``[rows, hidden] @ [hidden, 2*hidden]`` plus a reduction over the KV it just read (the attention
read of the cache).

Backends (``--backend``):

* ``daemon`` (default): a real ``dualbladed`` (started here on a file namespace under a temp
  dir, or the one at ``--socket``) and the SDK `Client`. Reads are real gRPC batches and real
  O_DIRECT / page-cache reads into the shared arena; the pipeline stages in the arena, and the
  serial baseline reads into an arena tensor too, so both modes are zero-copy on the client.
  Note the daemon shares this machine's cores with the compute.
* ``memory``: `InMemoryBackend` with an artificial cost per call (``--call-ms``, the RPC) and
  per byte (``--read-gbps``, the device): its bytes are real copies, its latency is
  ``time.sleep`` (releases the GIL like real I/O). It measures the pipeline's overlap alone.

Modes:

* serial: per layer, ``get_many_into`` then compute;
* pipelined: `LayerPipeline` (adaptive depth), next step's first layers prefetched during the
  last layer's compute, as `DualBladeCache` does.

Layer objects (issue 12): where the backend has them (the SDK since issue 12; ``--blocks`` to
compare), each layer's K and V are one object each, read with one ranged read batch per layer.

Measurement order: the io-only, compute-only and pipelined steps run round-robin, one of each
per round (two live pipelines), so a load that comes and goes on a shared machine weighs on all
three alike instead of on whichever loop ran during it.

Reported (per step, medians): ``serial_step_ms``, ``pipelined_step_ms``, ``io_ms`` (the reads
alone, through the same pipeline with the compute left out: the I/O floor at the pipeline's
concurrency), ``serial_io_ms`` (the reads one call at a time), ``compute_ms`` (the compute alone)
and ``overlap_efficiency = max(io, compute) / pipelined`` (1.0 = the step is as short as its
longer half; the target is >= 0.9). Two diagnostics split the pipelined step:
``compute_in_pipelined_ms`` (the compute calls' own time inside it: above ``compute_ms`` when the
reads' CPU work -- the daemon's copies and checksums, the client's calls -- takes cores from the
compute, which on a 2-vCPU machine no pipeline can hide) and ``read_wait_ms`` (the model blocked
on a read: what prefetch depth must hide). The rest is the pipeline's own bookkeeping.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["BenchResult", "configure", "main", "run"]


@dataclass(frozen=True)
class BenchResult:
    backend: str
    layers: int
    layer_kv_bytes: int
    depth: int
    serial_step_ms: float
    pipelined_step_ms: float
    io_ms: float
    serial_io_ms: float
    compute_ms: float
    overlap_efficiency: float
    #: the compute calls' own time inside the pipelined step (vs compute_ms: the slowdown the
    #: reads' CPU work on this machine's cores causes), and the time the model waited for reads
    compute_in_pipelined_ms: float = 0.0
    read_wait_ms: float = 0.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("daemon", "memory"),
        default="daemon",
        help="a real dualbladed + SDK client, or the in-memory test double",
    )
    parser.add_argument(
        "--socket", help="use the dualbladed at this gRPC socket instead of starting one"
    )
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024, help="past tokens per layer")
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=256, help="tokens per stored object")
    parser.add_argument("--hidden", type=int, default=1024, help="matmul size per layer")
    parser.add_argument("--rows", type=int, default=32, help="matmul rows per layer")
    parser.add_argument(
        "--read-gbps", type=float, default=2.0, help="emulated read bandwidth (memory backend)"
    )
    parser.add_argument(
        "--call-ms", type=float, default=0.5, help="emulated cost per call (memory backend)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--blocks",
        action="store_true",
        help="block objects even where the backend has layer objects (reserve/append/read_range)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    result = measure(args)
    _print_table(args, result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(asdict(result), fh, indent=2)
            fh.write("\n")
    return 0


def kv_bytes(args: argparse.Namespace) -> int:
    """Bytes of KV the benchmark stores (all layers, K and V)."""
    return args.layers * 2 * args.seq * args.kv_heads * args.head_dim * 2


@contextlib.contextmanager
def open_backend(args: argparse.Namespace) -> Iterator[Any]:
    """The backend to measure: a started (or given) daemon's client, or the in-memory double."""
    if args.backend == "memory":
        from dualblade.pipeline import InMemoryBackend

        yield InMemoryBackend()
        return
    from dualblade import Client

    arena = max(256 << 20, 1 << (8 * kv_bytes(args) // args.layers).bit_length())
    if args.socket:
        with Client.connect(args.socket, tenant="bench-pipeline", arena_bytes=arena) as client:
            yield client
        return
    from dualblade_tools.daemonproc import DaemonProcess

    size_mib = 2 * kv_bytes(args) // (1 << 20) + 128
    with (
        tempfile.TemporaryDirectory(prefix="dualblade-bench-") as tmp,
        DaemonProcess(Path(tmp), namespace_size=f"{size_mib}MiB") as daemon,
        Client.connect(daemon.socket, tenant="bench-pipeline", arena_bytes=arena) as client,
    ):
        yield client


def measure(args: argparse.Namespace) -> BenchResult:
    with open_backend(args) as backend:
        return _measure(args, backend)


def _measure(args: argparse.Namespace, backend: Any) -> BenchResult:
    import torch

    from dualblade.pipeline import AdaptiveConfig
    from dualblade.pipeline.backend import is_ranged, staging_alignment
    from dualblade.pipeline.pipeline import LayerPipeline, LayerRead, Segment

    torch.set_num_threads(args.threads)
    token_bytes = args.kv_heads * args.head_dim * 2  # fp16, one of K or V
    align = staging_alignment(backend)
    reads = []
    ranged = is_ranged(backend) and not getattr(args, "blocks", False)
    for layer in range(args.layers):
        if ranged:
            n = args.seq * token_bytes
            items = []
            for kind in "kv":
                key = f"bench/L{layer}/{kind}".encode()
                backend.reserve(key, n)
                items.append((key, torch.randn(n // 2).half()))
            backend.append_many(items)
            reads.append(
                LayerRead(
                    tuple(Segment(key, n) for key, _ in items), align=max(align, 4096), ranged=True
                )
            )
            continue
        segments, items = [], []
        for kind in "kv":
            for b in range(-(-args.seq // args.block)):
                tokens = min(args.block, args.seq - b * args.block)
                key = f"bench/L{layer}/{kind}/B{b}".encode()
                items.append((key, torch.randn(tokens * token_bytes // 2).half()))
                segments.append(Segment(key, tokens * token_bytes))
        backend.put_many(items)
        reads.append(LayerRead(tuple(segments), align=align))
    layer_bytes = reads[0].nbytes
    if args.backend == "memory":
        backend.read_latency_s = args.call_ms / 1e3
        backend.read_s_per_byte = 1.0 / (args.read_gbps * 1e9)
    staging = getattr(backend, "staging", None)
    serial_buf = staging(layer_bytes) if staging else torch.empty(layer_bytes, dtype=torch.uint8)

    x = torch.randn(args.rows, args.hidden)
    w = torch.randn(args.hidden, 2 * args.hidden)

    def compute(buf: torch.Tensor) -> float:
        y = x @ w
        return float(y[0, 0]) + float(buf.view(torch.float16)[::64].float().sum())

    def read_serial(layer: int) -> torch.Tensor:
        buf = serial_buf  # one layer at a time: the same (arena) buffer every time
        read = reads[layer]
        if read.ranged:
            backend.read_ranges_into(
                [(s.key, 0, buf[o : o + s.nbytes]) for s, o in zip(read.segments, read.offsets)]
            )
        else:
            backend.get_many_into(
                [(s.key, buf[o : o + s.nbytes]) for s, o in zip(read.segments, read.offsets)]
            )
        return buf

    serial_io, serial = [], []
    scratch = read_serial(0)
    for _ in range(args.steps):
        t0 = time.perf_counter()
        for layer in range(args.layers):
            read_serial(layer)
        serial_io.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for layer in range(args.layers):
            compute(read_serial(layer))
        serial.append(time.perf_counter() - t0)

    cfg = AdaptiveConfig(staging_bytes=max(256 << 20, 4 * layer_bytes), max_depth=8)

    inner: list[tuple[float, float]] = []  # (compute, read wait) seconds per pipelined step

    def pipelined_step(pipe: LayerPipeline, with_compute: bool) -> float:
        t0 = time.perf_counter()
        wait0, busy = pipe.stats().wait_s, 0.0
        for layer in range(args.layers):
            buf = pipe.layer(layer)
            if layer == args.layers - 1:
                pipe.end_step()
                pipe.begin_step(reads)  # prefetch the next step during this compute
            if with_compute:
                c0 = time.perf_counter()
                compute(buf)
                busy += time.perf_counter() - c0
        elapsed = time.perf_counter() - t0
        if with_compute:
            inner.append((busy, pipe.stats().wait_s - wait0))
        return elapsed

    def compute_step() -> float:
        t0 = time.perf_counter()
        for _layer in range(args.layers):
            compute(scratch)
        return time.perf_counter() - t0

    # Round-robin: an io-only step (the I/O floor at the pipeline's concurrency), a compute-only
    # step and a pipelined step per round, two warm-up rounds for the depth controllers.
    io, comp, piped = [], [], []
    with (
        LayerPipeline(backend, num_layers=args.layers, depth="auto", config=cfg) as io_pipe,
        LayerPipeline(backend, num_layers=args.layers, depth="auto", config=cfg) as pipe,
    ):
        io_pipe.begin_step(reads)
        pipe.begin_step(reads)
        for step in range(args.steps + 2):
            sample = (pipelined_step(io_pipe, False), compute_step(), pipelined_step(pipe, True))
            if step >= 2:
                io.append(sample[0])
                comp.append(sample[1])
                piped.append(sample[2])
        io_pipe.end_step()
        pipe.end_step()
        depth = pipe.stats().depth
    if hasattr(backend, "release_tensor"):
        backend.release_tensor(serial_buf)

    io_s, comp_s = statistics.median(io), statistics.median(comp)
    piped_s = statistics.median(piped)
    inner = inner[2:]  # the warm-up rounds
    return BenchResult(
        backend=args.backend,
        layers=args.layers,
        layer_kv_bytes=layer_bytes,
        depth=depth,
        serial_step_ms=statistics.median(serial) * 1e3,
        pipelined_step_ms=piped_s * 1e3,
        io_ms=io_s * 1e3,
        serial_io_ms=statistics.median(serial_io) * 1e3,
        compute_ms=comp_s * 1e3,
        overlap_efficiency=max(io_s, comp_s) / piped_s,
        compute_in_pipelined_ms=statistics.median(c for c, _ in inner) * 1e3,
        read_wait_ms=statistics.median(w for _, w in inner) * 1e3,
    )


def _print_table(args: argparse.Namespace, r: BenchResult) -> None:
    if r.backend == "memory":
        what = f"InMemoryBackend at {args.read_gbps} GB/s + {args.call_ms} ms/call"
    else:
        what = "dualbladed + SDK client, " + (args.socket or "file namespace under a temp dir")
    print(f"pipeline bench (CPU, {what})")
    print(
        f"  {r.layers} layers, {r.layer_kv_bytes / 2**20:.2f} MiB KV per layer, compute "
        f"[{args.rows}x{args.hidden}]@[{args.hidden}x{2 * args.hidden}] per layer"
    )
    rows = [
        ("serial step", f"{r.serial_step_ms:9.2f} ms"),
        ("pipelined step", f"{r.pipelined_step_ms:9.2f} ms"),
        ("io alone (pipelined)", f"{r.io_ms:9.2f} ms"),
        ("io alone (one call at a time)", f"{r.serial_io_ms:9.2f} ms"),
        ("compute alone", f"{r.compute_ms:9.2f} ms"),
        ("compute inside pipelined", f"{r.compute_in_pipelined_ms:9.2f} ms"),
        ("waiting for reads", f"{r.read_wait_ms:9.2f} ms"),
        ("depth (adaptive)", f"{r.depth:9d}"),
        ("overlap efficiency", f"{r.overlap_efficiency:9.3f}  (target >= 0.9)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dualblade-bench pipeline", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
