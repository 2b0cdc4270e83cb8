"""``dualblade-bench daemon``: put/get GB/s through dualbladed beside the same work in-process.

What is compared. The daemon side is a real ``dualbladed`` (:class:`DaemonProcess`) on a file
namespace in a temp dir and one :class:`dualblade.Client` with a large arena. The data lives in an
arena tensor (:meth:`Client.staging`), so ``put``/``get_into`` name its offset and the client
copies nothing: each call is one ``Store.Batch`` RPC with one op of ``call_bytes``.

The reference is :class:`~dualbladed.store.objects.ObjectStore` in this process, over a
:class:`~dualbladed.paths.direct.DirectPath` with the daemon's own I/O settings
(:class:`~dualbladed.config.IOConfig` defaults: request size and queue depth), on a second file
namespace of the same size in the same directory. It does exactly what the daemon does for an op
-- allocate an extent, xxh3 the bytes, O_DIRECT pwritev/preadv, update the index -- without the
RPC hop, the session lookup and the batch executor. A bare ``DirectEngine`` would be a different
question (it skips the checksum and the index); fio is the ``io`` benchmark's floor. So
``ratio = daemon / in-process`` is what the service layer costs.

Same pages on both sides. The reference does its I/O from the headline client's arena (this
process's mapping of the very memfd pages the daemon reads and writes), not from a buffer of its
own. On this VM O_DIRECT throughput depends on which physical pages a buffer got: an anonymous
buffer and a memfd arena differed by up to 1.4x on reads, with the sign changing from run to run.
Sharing the pages takes that out of the ratio; the other transports keep their own arenas.

Method. For each call size (1, 4, 16 MiB by default) a working set of objects is written once on
both sides (puts overwrite them afterwards, reads hit data that really is on the disk: never
fallocated holes). Then ``--repeat`` rounds, each measuring daemon put, in-process put, daemon
get, in-process get for ``--seconds`` each, with the order of the two sides swapped every round.
The virtio disk here drifts by +-50% over minutes; interleaving puts both sides under the same
weather and the medians drop the outliers. Objects are ephemeral on both sides (no SQLite write
per op), as KV blocks of a running session are.

In flight (``--inflight``, default 1 and 2). With one call in flight every call pays the round
trip (empty Batch p50 on this 2-vCPU VM: ~0.05 ms on the lease, ~0.5 ms over gRPC) plus the
per-op service work, ~0.2 ms per call in all (docs/benchmarks.md has the breakdown), so a 4 MiB
put (~1.3 ms of I/O here) by one synchronous caller stays just below 0.9 of the in-process rate.
An inference client keeps layers in flight (the layer pipeline prefetches ``depth`` layers), so
depth 2 is measured too, with the same number of concurrent callers on the
in-process side, each on its own slice of the arena and its own share of the keys.

Puts name the direct path explicitly on both sides: the daemon's arbiter could otherwise place
some objects in the page cache, and the reference is O_DIRECT work.

Transports (``--transports``, default ``lease,grpc``). The SDK sends ``Store.Batch`` as a frame on
the session's lease socket (~0.05 ms round trip) unless ``DUALBLADE_DATAPLANE=grpc`` forces gRPC
(~0.5 ms). Each transport has its own client (same tenant, same keys) and is timed in the same
interleaved rounds; every record names its ``transport``. The first transport listed is the
headline: its records come first, and ``empty_call_p50_us``/``empty_call_p99_us`` are its own.

Finally the latency of an empty ``Batch`` (authentication, log binding, an empty executor run and
the round trip) is sampled on a session of its own, per transport: through the bare lease
multiplexer and through a bare gRPC stub. p50 and p99 in microseconds; the other transports'
go into the JSON as ``<transport>_empty_call_p50_us``/``..._p99_us``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualblade_tools.bench import report

CALL_SIZES = (1 << 20, 4 << 20, 16 << 20)
DEFAULT_NAMESPACE = 1 << 30
WORKING_SET = 256 << 20
EMPTY_CALLS = 2000
EMPTY_WARMUP = 200
TENANT = "bench"
DIRECT = "direct"
OPS = ("put", "get")
TRANSPORTS = ("lease", "grpc")


@dataclass(frozen=True)
class DaemonCase:
    """Medians over the repeats; GB/s = 1e9 bytes per second."""

    op: str
    call_bytes: int
    inflight: int
    transport: str
    daemon_gbps: float
    inprocess_gbps: float
    ratio: float


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="write the records to this JSON file")
    parser.add_argument(
        "--namespace-size",
        type=report.parse_bytes,
        default=DEFAULT_NAMESPACE,
        help="size of each of the two file namespaces (default 1G)",
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds per measurement (default 2)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved rounds per case; medians (default 3)"
    )
    parser.add_argument(
        "--sizes",
        type=report.comma_list(report.parse_bytes),
        default=list(CALL_SIZES),
        help="comma-separated bytes per call (default 1M,4M,16M)",
    )
    parser.add_argument(
        "--inflight",
        type=report.comma_list(int),
        default=[1, 2],
        help="comma-separated calls in flight, same on both sides (default 1,2)",
    )
    parser.add_argument(
        "--empty-calls",
        type=int,
        default=EMPTY_CALLS,
        help=f"empty Batch calls timed for the latency percentiles (default {EMPTY_CALLS})",
    )
    parser.add_argument(
        "--transports",
        type=report.comma_list(str),
        default=list(TRANSPORTS),
        help="comma-separated Store.Batch transports, the first is the headline (default "
        "lease,grpc)",
    )
    parser.add_argument(
        "--dir", default=None, help="where the temp dir with both namespaces goes (default $TMPDIR)"
    )


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.seconds <= 0 or args.empty_calls < 1 or not args.sizes:
        report.progress("--repeat and --empty-calls must be >= 1, --seconds > 0, --sizes non-empty")
        return 2
    if not args.inflight or min(args.inflight) < 1:
        report.progress("--inflight must list depths >= 1")
        return 2
    if not args.transports or not set(args.transports) <= set(TRANSPORTS):
        report.progress(f"--transports must list some of {', '.join(TRANSPORTS)}")
        return 2
    if any(s <= 0 or s % 4096 for s in args.sizes):
        report.progress("--sizes must be positive multiples of 4096")
        return 2
    biggest = max(args.sizes)
    if _working_set(biggest, args.namespace_size) < 1:
        report.progress(f"--namespace-size is too small for {report.format_bytes(biggest)} calls")
        return 2
    root = Path(tempfile.mkdtemp(prefix="dbb-", dir=args.dir))
    try:
        records, latency = _run_in(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.print_table(
        records,
        formats={"call_bytes": report.format_bytes, "ratio": lambda v: f"{v:.2f}"},
    )
    headline = args.transports[0]
    p50, p99 = latency[headline]
    for transport, (t50, t99) in latency.items():
        print(f"empty Batch call ({transport}): p50 {t50:.0f} us, p99 {t99:.0f} us")
    extra = {
        f"{transport}_empty_call_{q}_us": value
        for transport, pair in latency.items()
        if transport != headline
        for q, value in zip(("p50", "p99"), pair)
    }
    if args.json:
        report.write_json(
            args.json,
            records,
            benchmark="daemon",
            empty_call_p50_us=p50,
            empty_call_p99_us=p99,
            transport=headline,
            **extra,
            namespace_bytes=args.namespace_size,
            seconds=args.seconds,
            repeat=args.repeat,
            reference="in-process ObjectStore over DirectPath with the daemon's IOConfig, "
            "doing its I/O from the headline client's arena pages",
        )
        report.progress(f"wrote {args.json}")
    return 0


def _working_set(call_bytes: int, namespace_bytes: int) -> int:
    """Objects per side: up to WORKING_SET bytes, and room for one overwrite in flight."""
    usable = namespace_bytes // 2 - call_bytes
    return max(0, min(WORKING_SET, usable) // call_bytes)


def _connect(socket_path: Path, transport: str, arena_bytes: int) -> Any:
    """A client whose Store.Batch goes over ``transport`` (DUALBLADE_DATAPLANE, read at connect)."""
    from dualblade import Client
    from dualblade.client import DATAPLANE_ENV

    saved = os.environ.get(DATAPLANE_ENV)
    os.environ[DATAPLANE_ENV] = transport
    try:
        client = Client.connect(socket_path, tenant=TENANT, arena_bytes=arena_bytes)
    finally:
        if saved is None:
            del os.environ[DATAPLANE_ENV]
        else:
            os.environ[DATAPLANE_ENV] = saved
    if client.dataplane != transport:
        client.close()
        raise RuntimeError(f"the daemon does not offer the {transport} data plane")
    return client


def _run_in(
    root: Path, args: argparse.Namespace
) -> tuple[list[DaemonCase], dict[str, tuple[float, float]]]:
    import torch

    from dualblade_tools.daemonproc import DaemonProcess

    lanes = max(args.inflight)
    span = max(args.sizes)
    report.progress(
        f"starting dualbladed in {root} ({report.format_bytes(args.namespace_size)} namespace)"
    )
    with (
        DaemonProcess(root / "d", namespace_size=str(args.namespace_size)) as daemon,
        _InProcess(root / "l", args.namespace_size) as local,
    ):
        arena_bytes = max(64 << 20, 2 * lanes * span)
        torch.manual_seed(0)
        pattern = torch.randint(0, 256, (lanes * span,), dtype=torch.uint8)
        with contextlib.ExitStack() as stack:
            # Per transport: a client and its staging tensor, holding the same bytes.
            staged: dict[str, tuple[Any, Any]] = {}
            for transport in args.transports:
                client = stack.enter_context(_connect(daemon.socket, transport, arena_bytes))
                staging = client.staging(lanes * span)
                stack.callback(client.release_tensor, staging)
                staging.copy_(pattern)
                staged[transport] = (client, staging)
            # The reference does its I/O from the headline client's arena pages (see the module
            # docstring: same physical pages on both sides).
            headline = staged[args.transports[0]][1]
            local.buffer = memoryview(headline.numpy()).cast("B")
            stack.callback(local.buffer.release)
            records: list[DaemonCase] = []
            for size in args.sizes:
                # One arena slice / buffer slice per caller, all page aligned.
                sides = {
                    t: (c, [st[j * span : j * span + size] for j in range(lanes)])
                    for t, (c, st) in staged.items()
                }
                records.extend(_measure_size(sides, local, size, args))
        latency = {
            t: _empty_call_latency(daemon.socket, t, args.empty_calls) for t in args.transports
        }
    order = {t: i for i, t in enumerate(args.transports)}
    records.sort(key=lambda r: order[r.transport])  # stable: the headline transport first
    return records, latency


Sides = dict[str, tuple[Any, list[Any]]]


def _measure_size(
    sides: Sides, local: _InProcess, size: int, args: argparse.Namespace
) -> list[DaemonCase]:
    count = _working_set(size, args.namespace_size)
    keys = [f"obj/{size}/{i}".encode() for i in range(count)]
    span = max(args.sizes)
    base = memoryview(local.buffer)
    lanes = max(args.inflight)
    views = [base[j * span : j * span + size] for j in range(lanes)]
    first, tensors = next(iter(sides.values()))
    try:
        label = report.format_bytes(size)
        report.progress(f"{label}: writing {count} objects on each side")
        for key in keys:
            first.put(key, tensors[0], path=DIRECT)
            local.put(key, views[0])
        return [
            case
            for inflight in args.inflight
            for case in _measure_depth(sides, local, views, size, keys, inflight, args)
        ]
    finally:
        for key in keys:
            with contextlib.suppress(Exception):
                first.delete(key)
            with contextlib.suppress(Exception):
                local.store.delete(TENANT, key)
        for v in views:
            v.release()
        base.release()


def _measure_depth(
    sides: Sides,
    local: _InProcess,
    views: list[memoryview],
    size: int,
    keys: list[bytes],
    inflight: int,
    args: argparse.Namespace,
) -> list[DaemonCase]:
    """Interleaved rounds at ``inflight`` concurrent callers, caller j on buffer j.

    The sides are the daemon transports and ``inprocess``; their order flips every round.
    """

    def daemon_call(op: str, client: Any, tensor: Any) -> Callable[[bytes], object]:
        if op == "put":
            return lambda k: client.put(k, tensor, path=DIRECT)
        return lambda k: client.get_into(k, tensor)

    def local_call(op: str, view: memoryview) -> Callable[[bytes], object]:
        if op == "put":
            return lambda k: local.put(k, view)
        return lambda k: local.get(k, view)

    def maker(side: str, op: str, j: int) -> Callable[[bytes], object]:
        if side == "inprocess":
            return local_call(op, views[j])
        client, tensors = sides[side]
        return daemon_call(op, client, tensors[j])

    label = f"{report.format_bytes(size)} x{inflight}"
    runs: dict[tuple[str, str], list[float]] = {}
    forward = (*sides, "inprocess")
    for round_no in range(args.repeat):
        order = forward if round_no % 2 == 0 else forward[::-1]
        for op in OPS:
            for side in order:
                calls = [maker(side, op, j) for j in range(inflight)]
                gbps = _timed(calls, keys, size, args.seconds)
                runs.setdefault((op, side), []).append(gbps)
                report.progress(
                    f"{label} {op} round {round_no + 1}/{args.repeat} {side}: {gbps:.3f} GB/s"
                )
    out = []
    for transport in sides:
        for op in OPS:
            d = statistics.median(runs[(op, transport)])
            i = statistics.median(runs[(op, "inprocess")])
            ratio = d / i if i else float("nan")
            out.append(DaemonCase(op, size, inflight, transport, d, i, ratio))
    return out


def _timed(
    calls: list[Callable[[bytes], object]], keys: list[bytes], size: int, seconds: float
) -> float:
    """GB/s of ``len(calls)`` callers looping for ``seconds``; caller j takes keys j, j+N, ..."""
    lanes = len(calls)
    moved = [0] * lanes
    began = time.perf_counter()
    deadline = began + seconds

    def loop(j: int) -> None:
        mine = keys[j::lanes] or keys
        n = 0
        while True:
            calls[j](mine[n % len(mine)])
            n += 1
            moved[j] += size
            if time.perf_counter() >= deadline:
                return

    if lanes == 1:
        loop(0)
    else:
        with ThreadPoolExecutor(lanes, thread_name_prefix="bench") as pool:
            for f in [pool.submit(loop, j) for j in range(lanes)]:
                f.result()
    return sum(moved) / (time.perf_counter() - began) / 1e9


def _empty_call_latency(socket_path: Path, transport: str, calls: int) -> tuple[float, float]:
    """p50/p99 (us) of an empty Batch on a session of its own: bare lease plane or gRPC stub."""
    from dualblade._handshake import open_session
    from dualblade._leaseplane import LeasePlane
    from dualblade._session import open_channel
    from dualblade.v1 import dualblade_pb2 as pb
    from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
    from dualblade.v1.wire import LEASE_FRAME_MAX_BYTES, handshake_socket_path

    report.progress(f"timing {calls} empty Batch calls ({transport})")
    with contextlib.ExitStack() as stack:
        hs = stack.enter_context(open_session(handshake_socket_path(socket_path), TENANT, 1 << 20))
        batch: Callable[[], object]
        if transport == "lease":
            plane = LeasePlane(hs.lease, hs.limits[LEASE_FRAME_MAX_BYTES])
            stack.callback(plane.close)
            empty = pb.BatchRequest().SerializeToString()
            batch = lambda: plane.call(empty)  # noqa: E731
        else:
            grpc_path = hs.grpc_socket or socket_path  # the session's own uid's socket
            channel, dir_fd = open_channel(grpc_path)  # a long path: via /proc/self/fd
            if dir_fd is not None:
                stack.callback(os.close, dir_fd)
            stack.callback(channel.close)
            stub = pb_grpc.StoreStub(channel).Batch
            metadata = (("authorization", f"Bearer {hs.token}"),)
            request = pb.BatchRequest()
            batch = lambda: stub(request, metadata=metadata)  # noqa: E731
        for _ in range(EMPTY_WARMUP):
            batch()
        samples = []
        for _ in range(calls):
            began = time.perf_counter_ns()
            batch()
            samples.append((time.perf_counter_ns() - began) / 1000.0)
    samples.sort()
    return _percentile(samples, 0.50), _percentile(samples, 0.99)


def _percentile(sorted_samples: list[float], q: float) -> float:
    index = min(len(sorted_samples) - 1, max(0, round(q * len(sorted_samples)) - 1))
    return sorted_samples[index]


class _InProcess:
    """The reference: an ObjectStore on its own file namespace, with the daemon's I/O settings."""

    buffer: memoryview  # set by the caller: the pages the reference does its I/O from

    def __init__(self, root: Path, namespace_bytes: int) -> None:
        self._root = root
        self._namespace_bytes = namespace_bytes

    def __enter__(self) -> _InProcess:
        from dualbladed.config import IOConfig
        from dualbladed.namespace import open_namespace
        from dualbladed.paths.direct import DirectPath
        from dualbladed.store import ObjectStore

        io = IOConfig()
        self._root.mkdir(parents=True)
        self.namespace = open_namespace(self._root / "namespace.img", size=self._namespace_bytes)
        try:
            direct = DirectPath(
                self.namespace, request_bytes=io.request_bytes, queue_depth=io.queue_depth
            )
            self.store = ObjectStore.open(
                self.namespace, self._root / "state", paths={"direct": direct}
            )
        except BaseException:
            self.namespace.close()
            raise
        return self

    def put(self, key: bytes, view: memoryview) -> None:
        self.store.put(TENANT, key, view, session="bench")

    def get(self, key: bytes, view: memoryview) -> None:
        self.store.get_into(TENANT, key, view)

    def __exit__(self, *exc: object) -> None:
        try:
            self.store.close()
        finally:
            self.namespace.close()
