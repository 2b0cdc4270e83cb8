"""``dualblade-bench pipeline``: decode step time with the layer pipeline on and off (CPU).

What runs: a Llama-shaped stack of ``--layers`` layers. Each decode step, every layer needs its
whole past KV (``--seq`` tokens x ``--kv-heads`` x ``--head-dim``, K and V, fp16, cut into
``--block`` token objects) from the backend, and then computes: a real CPU matmul
``[rows, hidden] @ [hidden, 2*hidden]`` plus a reduction over the KV it just read (the attention
read of the cache). The backend is `InMemoryBackend` with an artificial cost per call
(``--call-ms``, the RPC) and per byte (``--read-gbps``, the device): its bytes are real copies,
its latency is ``time.sleep`` (releases the GIL like real I/O). Run against the daemon once the
SDK client can be passed in; the numbers here measure the pipeline's overlap, not a disk.

Modes:

* serial: per layer, ``get_many_into`` then compute;
* pipelined: `LayerPipeline` (adaptive depth), next step's first layers prefetched during the
  last layer's compute, as `DualBladeCache` does.

Reported (per step, medians): ``serial_step_ms``, ``pipelined_step_ms``, ``io_ms`` (the reads
alone), ``compute_ms`` (the compute alone) and ``overlap_efficiency = max(io, compute) /
pipelined`` (1.0 = the step is as short as its longer half; the target is >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

__all__ = ["BenchResult", "configure", "main", "run"]


@dataclass(frozen=True)
class BenchResult:
    layers: int
    layer_kv_bytes: int
    depth: int
    serial_step_ms: float
    pipelined_step_ms: float
    io_ms: float
    compute_ms: float
    overlap_efficiency: float


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024, help="past tokens per layer")
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=256, help="tokens per stored object")
    parser.add_argument("--hidden", type=int, default=1024, help="matmul size per layer")
    parser.add_argument("--rows", type=int, default=32, help="matmul rows per layer")
    parser.add_argument("--read-gbps", type=float, default=2.0, help="emulated read bandwidth")
    parser.add_argument("--call-ms", type=float, default=0.5, help="emulated cost per call")
    parser.add_argument("--steps", type=int, default=8)
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


def measure(args: argparse.Namespace) -> BenchResult:
    import torch
    from dualblade.pipeline import AdaptiveConfig, InMemoryBackend
    from dualblade.pipeline.pipeline import LayerPipeline, LayerRead, Segment

    torch.set_num_threads(args.threads)
    token_bytes = args.kv_heads * args.head_dim * 2  # fp16, one of K or V
    backend = InMemoryBackend()
    reads = []
    for layer in range(args.layers):
        segments = []
        for kind in "kv":
            for b in range(-(-args.seq // args.block)):
                tokens = min(args.block, args.seq - b * args.block)
                key = f"bench/L{layer}/{kind}/B{b}".encode()
                data = torch.randn(tokens * token_bytes // 2).half()
                backend.put_many([(key, data)])
                segments.append(Segment(key, tokens * token_bytes))
        reads.append(LayerRead(tuple(segments)))
    layer_bytes = reads[0].nbytes
    backend.read_latency_s = args.call_ms / 1e3
    backend.read_s_per_byte = 1.0 / (args.read_gbps * 1e9)

    x = torch.randn(args.rows, args.hidden)
    w = torch.randn(args.hidden, 2 * args.hidden)

    def compute(buf: torch.Tensor) -> float:
        y = x @ w
        return float(y[0, 0]) + float(buf.view(torch.float16)[::64].float().sum())

    def read_serial(layer: int) -> torch.Tensor:
        buf = torch.empty(layer_bytes, dtype=torch.uint8)
        read = reads[layer]
        backend.get_many_into(
            [(s.key, buf[o : o + s.nbytes]) for s, o in zip(read.segments, read.offsets)]
        )
        return buf

    io, comp, serial, piped = [], [], [], []
    scratch = read_serial(0)
    for _ in range(args.steps):
        t0 = time.perf_counter()
        for layer in range(args.layers):
            read_serial(layer)
        io.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _layer in range(args.layers):
            compute(scratch)
        comp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for layer in range(args.layers):
            compute(read_serial(layer))
        serial.append(time.perf_counter() - t0)

    cfg = AdaptiveConfig(staging_bytes=max(256 << 20, 4 * layer_bytes), max_depth=8)
    with LayerPipeline(backend, num_layers=args.layers, depth="auto", config=cfg) as pipe:
        pipe.begin_step(reads)
        for step in range(args.steps + 2):  # two warm-up steps let the controller settle
            t0 = time.perf_counter()
            for layer in range(args.layers):
                buf = pipe.layer(layer)
                if layer == args.layers - 1:
                    pipe.end_step()
                    pipe.begin_step(reads)  # prefetch the next step during this compute
                compute(buf)
            if step >= 2:
                piped.append(time.perf_counter() - t0)
        pipe.end_step()
        depth = pipe.stats().depth

    io_s, comp_s = statistics.median(io), statistics.median(comp)
    piped_s = statistics.median(piped)
    return BenchResult(
        layers=args.layers,
        layer_kv_bytes=layer_bytes,
        depth=depth,
        serial_step_ms=statistics.median(serial) * 1e3,
        pipelined_step_ms=piped_s * 1e3,
        io_ms=io_s * 1e3,
        compute_ms=comp_s * 1e3,
        overlap_efficiency=max(io_s, comp_s) / piped_s,
    )


def _print_table(args: argparse.Namespace, r: BenchResult) -> None:
    print(
        f"pipeline bench (CPU, InMemoryBackend at {args.read_gbps} GB/s + {args.call_ms} ms/call)"
    )
    print(
        f"  {r.layers} layers, {r.layer_kv_bytes / 2**20:.2f} MiB KV per layer, compute "
        f"[{args.rows}x{args.hidden}]@[{args.hidden}x{2 * args.hidden}] per layer"
    )
    rows = [
        ("serial step", f"{r.serial_step_ms:9.2f} ms"),
        ("pipelined step", f"{r.pipelined_step_ms:9.2f} ms"),
        ("io alone", f"{r.io_ms:9.2f} ms"),
        ("compute alone", f"{r.compute_ms:9.2f} ms"),
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
