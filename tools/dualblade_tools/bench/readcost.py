"""``dualblade-bench readcost``: the CPU a GiB of layer-object reads costs on each residency path.

Why it exists. Issue 12 asks adaptive to beat the better forced mode by 10% at budget ratio 1,
where all the KV fits in RAM. A split pays when its two halves use different resources: the
cached part costs CPU (the kernel's copy out of the page cache), the direct part costs disk time
and, on an edge box with a GPU, little CPU. On a box whose decode step is CPU-bound (the 2-vCPU
VM, where the compute stands in for the GPU's), what a byte costs in *CPU* on each path bounds
what any split can win: if the direct path costs nearly as much CPU per byte as the page cache,
moving bytes to it frees next to nothing. This measures that cost, with no daemon, no gRPC and no
compute around it, so the residency sweep's figures can be read against it.

What runs, in this process. An :class:`~dualbladed.store.ObjectStore` on a file namespace (real
O_DIRECT) with a page-cache path (real slab files), ``--objects`` layer objects of ``--object-bytes``
(default 16 MiB + 74 KiB: an 8k-token layer's K or V with a ragged tail, as a decode step reads
them) on each path, written once. Each timed pass reads every object whole with
``read_range_into`` into a page-aligned buffer (the session arena's role), as a decode step does,
chunk checksums included; CPU is ``getrusage(RUSAGE_SELF)`` (every thread of the process: the
direct path's I/O workers too), split into user and system time.

The references, same run, same files: ``raw_direct`` is one thread doing ``preadv`` with
O_DIRECT of 1 MiB requests plus a crc32c of each (the least the direct path can cost: no Python
per piece, no worker threads), ``raw_pagecache`` the same with a buffered ``preadv`` out of the
warm slab file. The store's rows minus these are what the store adds.

The page cache stays warm (written just before, nothing evicts it): this is the cached path's
best case, the one a split competes with at ratio 1.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crc32c import crc32c

from dualblade_tools.bench import report
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.engine import aligned_buffer
from dualbladed.paths.pagecache import PageCachePath, slab_name
from dualbladed.store import ObjectStore

MiB = 1 << 20
GiB = 1 << 30
TENANT = "0/readcost"


@dataclass(frozen=True)
class ReadCost:
    """Medians over the repeats; GB/s = 1e9 bytes per second."""

    path: str
    gbps: float
    cpu_ms_per_gib: float
    user_ms_per_gib: float
    sys_ms_per_gib: float


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objects", type=int, default=32, help="layer objects per path (32)")
    parser.add_argument(
        "--object-bytes",
        type=report.parse_bytes,
        default=16 * MiB + 74 * 1024,
        help="bytes per object (default 16 MiB + 74 KiB: a ragged tail)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per path (5)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (a temp dir)")
    parser.add_argument("--json", metavar="FILE", help="write the records as JSON")


def run(args: argparse.Namespace) -> int:
    if args.objects < 1 or args.object_bytes < 1 or args.repeat < 1:
        raise SystemExit("dualblade-bench readcost: --objects, --object-bytes, --repeat >= 1")
    own = args.dir is None
    work = Path(tempfile.mkdtemp(prefix="dualblade-readcost-")) if own else Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        records = measure(work, args.objects, args.object_bytes, args.repeat)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    report.print_table(records)
    if args.json:
        report.write_json(args.json, records, objects=args.objects, object_bytes=args.object_bytes)
    return 0


def measure(work: Path, objects: int, object_bytes: int, repeat: int) -> list[ReadCost]:
    """The four rows: the store's read on each path, then the raw references."""
    capacity = -(-object_bytes // MiB) * MiB
    ns = FileNamespace(work / "ns.img", objects * capacity + 64 * MiB)
    slabs = work / "slabs"
    pc = PageCachePath(slabs, slab_bytes=max(64 * MiB, capacity), max_bytes=objects * capacity * 2)
    store = ObjectStore.open(
        ns,
        work / "state",
        paths={DIRECT: DirectPath(ns), PAGECACHE: pc},
        access_flush_interval=0,
        max_object_bytes=capacity,
    )
    dst = memoryview(aligned_buffer(capacity))
    try:
        data = memoryview(os.urandom(object_bytes))
        extents = {}
        for path in (DIRECT, PAGECACHE):
            for i in range(objects):
                key = f"{path}/L{i}".encode()
                extents[(path, i)] = store.reserve(TENANT, key, capacity, path=path).extent
                store.append(TENANT, key, data)

        def store_pass(path: str) -> Callable[[], int]:
            def one() -> int:
                for i in range(objects):
                    key = f"{path}/L{i}".encode()
                    store.read_range_into(TENANT, key, 0, 0, dst[:object_bytes])
                return objects * object_bytes

            return one

        records = [_timed(p, store_pass(p), repeat) for p in (DIRECT, PAGECACHE)]
        for path in (DIRECT, PAGECACHE):  # a fast read of the wrong bytes measures nothing
            dst[:object_bytes] = bytes(object_bytes)
            store.read_range_into(TENANT, f"{path}/L0".encode(), 0, 0, dst[:object_bytes])
            if dst[:object_bytes] != data:
                raise RuntimeError(f"readcost: the {path} path read back other bytes")
        direct_offsets = [extents[(DIRECT, i)].offset for i in range(objects)]
        records.append(
            _timed("raw_direct", _raw(ns.path, direct_offsets, object_bytes, dst, True), repeat)
        )
        # virtual page-cache offsets: slab index * slab_bytes + offset in the slab (its docstring)
        spots = [divmod(extents[(PAGECACHE, i)].offset, pc.slab_bytes) for i in range(objects)]
        slab_files = [(slabs / slab_name(index), inner) for index, inner in spots]
        records.append(_timed("raw_pagecache", _raw_slabs(slab_files, object_bytes, dst), repeat))
        return records
    finally:
        dst.release()
        store.close()
        ns.close()


def _raw(
    file: str | Path, offsets: list[int], nbytes: int, dst: memoryview, direct: bool
) -> Callable[[], int]:
    """One thread: 1 MiB preadv requests over each object's blocks, a crc32c of each."""
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    padded = -(-nbytes // 4096) * 4096

    def one() -> int:
        fd = os.open(file, flags)
        try:
            for base in offsets:
                for start in range(0, padded, MiB):
                    view = dst[start : min(start + MiB, padded)]
                    os.preadv(fd, [view], base + start)
                    crc32c(view, 0, 1)
        finally:
            os.close(fd)
        return len(offsets) * nbytes

    return one


def _raw_slabs(spots: list[tuple[Path, int]], nbytes: int, dst: memoryview) -> Callable[[], int]:
    """:func:`_raw` for buffered reads, each object in its own slab file."""

    def one() -> int:
        for file, offset in spots:
            _raw(file, [offset], nbytes, dst, False)()
        return len(spots) * nbytes

    return one


def _timed(name: str, one: Callable[[], int], repeat: int) -> ReadCost:
    one()  # warm-up: thread pools, the page cache's own state
    rows = []
    for _ in range(repeat):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        nbytes = one()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
        per_gib = 1000 * GiB / nbytes
        rows.append(
            (nbytes / wall / 1e9, (user + system) * per_gib, user * per_gib, system * per_gib)
        )
    med = [statistics.median(col) for col in zip(*rows)]
    return ReadCost(name, *(round(v, 3 if i == 0 else 1) for i, v in enumerate(med)))
