"""``dualblade-bench scale``: what a daemon costs as objects pile up.

One fresh daemon per object count, on a file namespace sized for the objects, in a temp dir.
For each count N the benchmark puts N persistent objects of ``--object-bytes`` in batches of
``--batch`` through the SDK, then measures, in this order:

* ``put_objs_per_s``: N / wall time of all the puts (one client, batches back to back; the
  client's arena holds two batches, as the SDK sends at most half its arena per call, so each
  batch is one call: one packed put op). ``--inflight N`` (default 1) keeps N batches in
  flight from N threads sharing the client (the arena then holds 2N batches): the client
  builds its next batch while the daemon commits the last. ``put_inflight`` records N;
* ``rss_bytes_per_object``: (daemon VmRSS after the puts - VmRSS of the empty daemon) / N;
* ``idle_cpu_frac``: the daemon's user+system CPU over ``--idle-s`` seconds with no client
  activity, after a 2 s settle, as a fraction of one core (``/proc/<pid>/stat``);
* ``status_s``: the median of five ``Admin/Status`` calls from a connected client (what the daemon
  spends), and ``status_cli_s`` the median wall time of five ``dbctl status --json`` processes
  run one after the other (what a user waits, Python start-up included; one process alone swings
  by 2x on a shared 2-vCPU machine);
* ``restart_s``: SIGTERM -> the new daemon sends READY=1 (``DaemonProcess.terminate`` + ``start``);
* ``sigkill_recovery_s``: SIGKILL -> READY=1;
* ``fsck_s``: ``dbctl fsck --json`` on the stopped daemon's state (a separate process).

The reference in the same run is the smallest count: every cost is also reported as a ratio to
it (``*_x`` keys are left to the reader: the table shows absolute numbers, the JSON keeps them
all), so "grows with what is stored" reads straight off one run on a noisy machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualblade_tools.bench import report
from dualblade_tools.daemonproc import DaemonProcess

__all__ = ["ScaleRecord", "configure", "run"]

TENANT = "scale"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ScaleRecord:
    objects: int
    object_bytes: int
    put_objs_per_s: float
    rss_bytes_per_object: float
    idle_cpu_frac: float
    status_s: float
    status_cli_s: float
    restart_s: float
    sigkill_recovery_s: float
    fsck_s: float
    put_inflight: int = 1


def _count(text: str) -> int:
    """``"1e5"``, ``"100000"``, ``"100k"`` -> an integer count."""
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    value = float(t[:-1] if scale > 1 else t) * scale
    if value < 1 or value != int(value):
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--objects",
        type=report.comma_list(_count),
        default=[10_000, 100_000],
        help="object counts, comma-separated (default 1e4,1e5; the target is 1e6)",
    )
    parser.add_argument("--object-bytes", type=report.parse_bytes, default=4096)
    parser.add_argument("--batch", type=int, default=1000, help="objects per put_many call")
    parser.add_argument(
        "--inflight", type=int, default=1, help="put_many calls in flight (threads; default 1)"
    )
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle CPU window (seconds)")
    parser.add_argument("--dir", default=None, help="where the namespaces go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the records here")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _cpu_s(pid: int) -> float:
    # Fields after the parenthesised command: utime and stime are fields 14 and 15 of stat(5).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _dbctl(daemon: DaemonProcess, *args: str) -> float:
    """Wall seconds of one dbctl process; a non-zero exit is an error, not a number.

    It runs as on a default Python, which caches bytecode: ``PYTHONDONTWRITEBYTECODE`` (set on
    the project's VM) is dropped from its environment, or every run would compile the modules
    from source again (~16 ms of a status run measured there). The first run writes the cache.
    """
    cmd = [
        sys.executable,
        "-m",
        "dualblade_tools.dbctl",
        "--socket",
        str(daemon.socket),
        "--json",
        *args,
    ]
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-400:]}")
    return elapsed


def _put_all(kv: Any, objects: int, payload: bytes, batch: int, inflight: int) -> None:
    """Put ``objects`` persistent objects in batches, ``inflight`` calls at a time."""

    def put(first: int) -> None:
        n = min(batch, objects - first)
        kv.put_many([(f"o/{i:09d}", payload) for i in range(first, first + n)], persistent=True)

    with ThreadPoolExecutor(inflight, thread_name_prefix="scale-put") as pool:
        pending: collections.deque[Future[None]] = collections.deque()
        for first in range(0, objects, batch):
            if len(pending) >= inflight:
                pending.popleft().result()
            pending.append(pool.submit(put, first))
            if first % (batch * 50) == 0:
                report.progress(f"{objects}: {first + min(batch, objects - first)} objects sent")
        for f in pending:
            f.result()


def measure(
    root: Path, objects: int, object_bytes: int, batch: int, idle_s: float, inflight: int = 1
) -> ScaleRecord:
    from dualblade import Client
    from dualblade.v1 import dualblade_pb2 as pb

    ns_bytes = max(256 << 20, int(objects * object_bytes * 1.25) + (64 << 20))
    daemon = DaemonProcess(root, namespace_size=str(ns_bytes))
    daemon.start(timeout=120)
    try:
        assert daemon.proc is not None
        empty_rss = _rss(daemon.proc.pid)
        payload = os.urandom(object_bytes)
        arena = max(1 << 20, 2 * inflight * batch * ((object_bytes + 4095) // 4096 * 4096))
        with Client.connect(str(daemon.socket), tenant=TENANT, arena_bytes=arena) as kv:
            start = time.perf_counter()
            _put_all(kv, objects, payload, batch, inflight)
            put_rate = objects / (time.perf_counter() - start)
            status = []
            for _ in range(5):
                t0 = time.perf_counter()
                kv.admin_call("Status", pb.StatusRequest())
                status.append(time.perf_counter() - t0)
        rss_per_object = (_rss(daemon.proc.pid) - empty_rss) / objects
        time.sleep(2.0)
        cpu0, t0 = _cpu_s(daemon.proc.pid), time.monotonic()
        time.sleep(idle_s)
        idle = (_cpu_s(daemon.proc.pid) - cpu0) / (time.monotonic() - t0)
        status_cli = statistics.median(_dbctl(daemon, "status") for _ in range(5))

        t0 = time.perf_counter()
        daemon.terminate(timeout=300)
        daemon.start(timeout=600)
        restart = time.perf_counter() - t0

        t0 = time.perf_counter()
        daemon.kill()
        daemon.start(timeout=600)
        recovery = time.perf_counter() - t0
        daemon.terminate(timeout=300)
        fsck = _dbctl(
            daemon,
            "fsck",
            "--state-dir",
            str(daemon.state_dir),
            "--namespace",
            str(daemon.namespace_path),
        )
    finally:
        daemon.kill()
    return ScaleRecord(
        objects,
        object_bytes,
        put_rate,
        rss_per_object,
        idle,
        statistics.median(status),
        status_cli,
        restart,
        recovery,
        fsck,
        inflight,
    )


def run(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.idle_s <= 0 or args.inflight < 1:
        print(
            "dualblade-bench scale: --batch and --inflight must be >= 1 and --idle-s > 0",
            file=sys.stderr,
        )
        return 2
    records: list[ScaleRecord] = []
    with tempfile.TemporaryDirectory(prefix="dbscale-", dir=args.dir) as tmp:
        for n in args.objects:
            report.progress(f"{n} objects of {report.format_bytes(args.object_bytes)}")
            records.append(
                measure(
                    Path(tmp) / f"n{n}",
                    n,
                    args.object_bytes,
                    args.batch,
                    args.idle_s,
                    args.inflight,
                )
            )
    report.print_table(records)
    if args.json:
        report.write_json(args.json, records, benchmark="scale")
    return 0
