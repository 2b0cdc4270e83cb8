"""``dualblade-bench io``: DirectEngine bandwidth beside fio, on the same file, in the same run.

For every op (write, read), request size (128 KiB, 1 MiB, 4 MiB) and queue depth (1, 8, 32) it
measures the engine and then fio, ``--repeat`` times interleaved (engine, fio, engine, fio...), and
reports the medians and their ratio engine/fio. The virtio disk here swings by +-50% over
minutes; interleaving puts both sides under the same weather and the median drops the outliers.

Why fio with ``--ioengine=psync --numjobs=QD``: the engine keeps QD requests in flight with QD
threads, each blocked in its own ``preadv``/``pwritev``. fio psync with QD jobs does exactly that
(one synchronous syscall per request per thread), so the comparison isolates what we add: Python,
the GIL and the work hand-off. libaio ``iodepth=QD`` would also compare a different kernel
submission path (io_submit from one thread), which is a question about the engine's design, not
about its implementation. The fio jobs split the same region into QD slices
(``offset_increment``), so both sides touch the same bytes.

What the engine does per timed call: one ``read``/``write`` of a large batch (at least 256 MiB,
and at least 4 requests per worker), as the daemon does for a whole layer. The batch is cut into
``request_bytes`` pieces for ``queue_depth`` workers; the drain at the end of each call is part of
the measurement, as it is in the daemon.

Before measuring, the whole data area is written once: ``posix_fallocate`` leaves unwritten
extents, and reading those returns zeros without touching the disk, which would flatter both
sides. The benchmark overwrites ``[data_start, capacity)`` of the namespace: point it at a
scratch file, never at a live store's namespace.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

from dualblade_tools.bench import report
from dualbladed.namespace.abstract import Namespace
from dualbladed.paths.engine import DirectEngine, aligned_buffer

DEFAULT_SIZE = 2 << 30
REQUEST_SIZES = (128 << 10, 1 << 20, 4 << 20)
QUEUE_DEPTHS = (1, 8, 32)
OPS = ("write", "read")
MIN_BATCH = 256 << 20


@dataclass(frozen=True)
class IoCase:
    """One case: medians over the repeats, GB/s = 1e9 bytes per second."""

    op: str
    request_bytes: int
    queue_depth: int
    engine_gbps: float
    fio_gbps: float | None
    ratio: float | None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        required=True,
        help="namespace file (created if missing; its data area is OVERWRITTEN)",
    )
    parser.add_argument(
        "--size",
        type=report.parse_bytes,
        default=None,
        help="size when creating the file, or to grow it (default 2G for a new file)",
    )
    parser.add_argument("--json", default=None, help="write the records to this JSON file")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds per measurement (default 2)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="interleaved engine/fio pairs per case; medians are reported (default 1)",
    )
    parser.add_argument(
        "--requests",
        type=report.comma_list(report.parse_bytes),
        default=list(REQUEST_SIZES),
        help="comma-separated request sizes (default 128K,1M,4M)",
    )
    parser.add_argument(
        "--queue-depths",
        type=report.comma_list(int),
        default=list(QUEUE_DEPTHS),
        help="comma-separated queue depths (default 1,8,32)",
    )


def run(args: argparse.Namespace) -> int:
    from dualbladed.namespace.file import FileNamespace

    size = args.size
    if size is None and not os.path.exists(args.namespace):
        size = DEFAULT_SIZE
    if args.repeat < 1 or args.seconds <= 0:
        report.progress("--repeat must be >= 1 and --seconds > 0")
        return 2
    with FileNamespace(args.namespace, size) as ns:
        region_start = ns.data_start
        region_len = ns.capacity - region_start
        largest = max(
            _batch_bytes(r, q, region_len) for r in args.requests for q in args.queue_depths
        )
        report.progress(
            f"namespace {ns.path}: data area {report.format_bytes(region_len)} at offset "
            f"{region_start}; buffer {report.format_bytes(largest)}"
        )
        buf = aligned_buffer(largest)
        pattern = os.urandom(1 << 20)
        for off in range(0, largest, len(pattern)):
            buf[off : off + len(pattern)] = pattern[: largest - off]
        view = memoryview(buf)
        _fill(ns, view, region_start, region_len)
        cases = [(op, r, q) for op in OPS for r in args.requests for q in args.queue_depths]
        records: list[IoCase] = []
        for number, (op, request, depth) in enumerate(cases, 1):
            record = _measure(ns, view, op, request, depth, region_start, region_len, args)
            records.append(record)
            fio_text = "n/a" if record.fio_gbps is None else f"{record.fio_gbps:.3f}"
            ratio_text = "n/a" if record.ratio is None else f"{record.ratio:.2f}"
            report.progress(
                f"({number}/{len(cases)}) {op} {report.format_bytes(request)} QD {depth}: "
                f"engine {record.engine_gbps:.3f} GB/s, fio {fio_text} GB/s, ratio {ratio_text}"
            )
        view.release()
        buf.close()
    report.print_table(
        records,
        formats={
            "request_bytes": report.format_bytes,
            "fio_gbps": lambda v: "no fio" if v is None else f"{v:.3f}",
            "ratio": lambda v: "-" if v is None else f"{v:.2f}",
        },
    )
    if args.json:
        report.write_json(
            args.json,
            records,
            benchmark="io",
            namespace=os.path.abspath(args.namespace),
            data_bytes=region_len,
            seconds=args.seconds,
            repeat=args.repeat,
            fio_mode="psync, numjobs=QD, offset_increment=area/QD, direct=1",
        )
        report.progress(f"wrote {args.json}")
    return 0


def _batch_bytes(request: int, depth: int, region_len: int) -> int:
    want = max(MIN_BATCH, 4 * request * depth)
    return max(request, min(want, region_len) // request * request)


def _fill(ns: Namespace, view: memoryview, start: int, length: int) -> None:
    report.progress(f"writing the data area once ({report.format_bytes(length)}) ...")
    began = time.perf_counter()
    with DirectEngine(ns, request_bytes=1 << 20, queue_depth=8) as engine:
        done = 0
        while done < length:
            n = min(len(view), length - done)
            engine.write(start + done, view[:n])
            done += n
        ns.flush()
    report.progress(f"filled in {time.perf_counter() - began:.1f} s")


def _measure(
    ns: Namespace,
    view: memoryview,
    op: str,
    request: int,
    depth: int,
    region_start: int,
    region_len: int,
    args: argparse.Namespace,
) -> IoCase:
    batch = _batch_bytes(request, depth, region_len)
    slots = region_len // batch
    per_job = region_len // depth // request * request
    engine_runs: list[float] = []
    fio_runs: list[float] = []
    with DirectEngine(ns, request_bytes=request, queue_depth=depth) as engine:
        call = engine.read if op == "read" else engine.write
        target = view[:batch]
        for _ in range(args.repeat):
            moved, slot = 0, 0
            began = time.perf_counter()
            while time.perf_counter() - began < args.seconds:
                call(region_start + slot * batch, target)
                moved += batch
                slot = (slot + 1) % slots
            engine_runs.append(moved / (time.perf_counter() - began) / 1e9)
            fio = report.run_fio(
                filename=ns.path,
                rw=op,
                block_size=request,
                size=per_job,
                offset=region_start,
                numjobs=depth,
                offset_increment=per_job,
                seconds=args.seconds,
            )
            if fio is not None:
                fio_runs.append(fio)
        target.release()
    engine_gbps = statistics.median(engine_runs)
    fio_gbps = statistics.median(fio_runs) if fio_runs else None
    return IoCase(
        op=op,
        request_bytes=request,
        queue_depth=depth,
        engine_gbps=engine_gbps,
        fio_gbps=fio_gbps,
        ratio=engine_gbps / fio_gbps if fio_gbps else None,
    )
