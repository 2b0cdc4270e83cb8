"""``tools/soak``: N client processes against one daemon for M minutes; leaks and errors fail it.

Each client is a separate process (``python -m dualblade_tools.soak --worker``) with its own
session and tenant label, doing a seeded mix over the real Unix sockets: batched ephemeral puts
and gets (the KV working set), decode steps on ephemeral layer objects (a token appended to
each of 8, all read back whole in one Batch), persistent puts (some durable), single gets,
deletes, and every so often a reconnect (a session ends, the daemon frees its ephemeral objects). Every get is
compared byte for byte with what that client wrote. Workers report op counts, bytes and their
per-op latencies (float32 seconds in a file, so p99 is over every op, not a mean of means).

Pass criteria (all checked and reported):

- **no errors**: every op of every worker succeeded and read back the right bytes;
- **RSS does not keep growing**: the daemon's RSS is sampled every 0.25 s; after warm-up the
  median of the last third must be within ``rss_tolerance`` (default 10 % + 16 MiB, allocator
  noise) of the median of the middle third;
- **no fd leak**: ``/proc/<daemon>/fd`` counted before the clients start (after one warm-up
  session, so lazily opened fds are in the baseline) must be reached again once they have exited.
  Page-cache slab files are not counted: they open lazily on first use and stay open by design;
- **nothing stored is lost** (``--objects N``): before the clients start, a separate tenant
  stores N persistent 4 KiB objects (issue 14's scale: the soak then runs against a full index,
  with the arbiter's heat and LRU structures holding N entries). After the clients exit, every one
  is read back and compared byte for byte: ``durable_lost`` counts missing objects, ``corrupt``
  wrong bytes. Both must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from dualblade_tools.daemonproc import DaemonProcess

SIZES = (4096, 16384, 65536, 262144)
#: Layer objects: 4 layers' K and V, reserved per session, appended one token per step.
LAYER_KEYS = tuple(f"l/{i}/{kv}".encode() for i in range(4) for kv in "KV")
LAYER_CAPACITY = 512 << 10
TOKEN_SIZES = (2048, 4096, 6000)
RSS_REL_TOL = 0.10
RSS_ABS_TOL = 16 << 20
#: ``--objects``: size of each resident object, and how many go in one Batch.
RESIDENT_BYTES = 4096
RESIDENT_BATCH = 1000


# -- the worker (one client process) -----------------------------------------------------------


def worker(socket: str, index: int, seconds: float, seed: int, out: Path) -> int:
    """Run the mix for ``seconds``; write ``out``.json (counts) and ``out``.npy (latencies)."""
    from dualblade import Client

    rng = random.Random(seed)
    lat: list[float] = []
    counts = {"ops": 0, "bytes": 0, "errors": 0, "mismatches": 0, "sessions": 0}
    errors: list[str] = []
    mine: dict[bytes, bytes] = {}  # persistent keys -> bytes
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        counts["sessions"] += 1
        with Client.connect(socket, tenant=f"soak{index}", arena_bytes=32 << 20) as c:
            layers: dict[bytes, bytes] = {}  # this session's ephemeral layer objects
            for _ in range(rng.randint(50, 200)):
                if time.monotonic() >= deadline:
                    break
                t0 = time.perf_counter()
                try:
                    moved, ok = _op(c, rng, mine, layers)
                except Exception as exc:  # noqa: BLE001 (every failure is counted and reported)
                    counts["errors"] += 1
                    errors.append(repr(exc)[:300])
                    continue
                lat.append(time.perf_counter() - t0)
                counts["ops"] += 1
                counts["bytes"] += moved
                counts["mismatches"] += 0 if ok else 1
    np.save(out.with_suffix(".npy"), np.asarray(lat, dtype=np.float32))
    out.with_suffix(".json").write_text(json.dumps({**counts, "error_samples": errors[:10]}))
    return 0


def _op(
    c: object, rng: random.Random, mine: dict[bytes, bytes], layers: dict[bytes, bytes]
) -> tuple[int, bool]:
    """One op; returns (bytes moved, read back correctly)."""
    roll = rng.random()
    if roll < 0.15:
        return _decode_step(c, rng, layers)
    if roll < 0.35:  # a layer's worth of ephemeral blocks, written then read back
        n = rng.randint(2, 8)
        size = rng.choice(SIZES)
        items = [(f"e/{rng.randrange(64)}/{i}".encode(), rng.randbytes(size)) for i in range(n)]
        c.put_many(items)  # type: ignore[attr-defined]
        got = c.get_many([k for k, _ in items])  # type: ignore[attr-defined]
        return 2 * n * size, got == [v for _, v in items]
    if roll < 0.55:
        key = f"p/{rng.randrange(32)}".encode()
        data = rng.randbytes(rng.choice(SIZES))
        c.put(key, data, persistent=True, durable=rng.random() < 0.2)  # type: ignore[attr-defined]
        mine[key] = data
        return len(data), True
    if roll < 0.90 and mine:
        key = rng.choice(sorted(mine))
        got = c.get(key)  # type: ignore[attr-defined]
        return len(got), got == mine[key]
    if mine:
        key = rng.choice(sorted(mine))
        c.delete(key)  # type: ignore[attr-defined]
        del mine[key]
    return 0, True


def _decode_step(c: object, rng: random.Random, layers: dict[bytes, bytes]) -> tuple[int, bool]:
    """A decode step on layer objects (issue 12): append one token to each of 4 layers' K and
    V, then read every layer back whole in one Batch. Ephemeral: they die with the session."""
    token = rng.randbytes(rng.choice(TOKEN_SIZES))
    if not layers or len(next(iter(layers.values()))) + len(token) > LAYER_CAPACITY:
        for key in LAYER_KEYS:
            c.reserve(key, LAYER_CAPACITY)  # type: ignore[attr-defined]
            layers[key] = b""
    c.append_many([(key, token) for key in LAYER_KEYS])  # type: ignore[attr-defined]
    for key in LAYER_KEYS:
        layers[key] += token
    bufs = [bytearray(len(layers[key])) for key in LAYER_KEYS]
    c.read_ranges_into([(key, 0, buf) for key, buf in zip(LAYER_KEYS, bufs)])  # type: ignore[attr-defined]
    ok = all(bytes(buf) == layers[key] for key, buf in zip(LAYER_KEYS, bufs))
    return len(LAYER_KEYS) * len(token) + sum(len(b) for b in bufs), ok


# -- the harness -------------------------------------------------------------------------------


@dataclass
class SoakReport:
    clients: int
    seconds: float
    ops: int = 0
    bytes: int = 0
    ops_per_s: float = 0.0
    gb_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    mismatches: int = 0
    sessions: int = 0
    rss_samples: int = 0
    rss_middle_mib: float = 0.0
    rss_last_mib: float = 0.0
    rss_ok: bool = False
    fd_baseline: int = 0
    fd_after: int = 0
    fd_ok: bool = False
    #: ``--objects``: resident objects stored before, read back after (must all come back).
    objects: int = 0
    objects_checked: int = 0
    durable_lost: int = 0
    corrupt: int = 0
    worker_exit_codes: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        workers_ok = all(rc == 0 for rc in self.worker_exit_codes)
        stored_ok = self.objects_checked == self.objects and not self.durable_lost
        return (
            workers_ok
            and stored_ok
            and not (self.errors or self.mismatches or self.corrupt)
            and self.rss_ok
            and self.fd_ok
        )

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}

    def render(self) -> str:
        lines = [
            f"soak {self.clients} clients x {self.seconds:.0f} s: {'PASS' if self.ok else 'FAIL'}",
            f"  {self.ops} ops ({self.ops_per_s:.0f} ops/s), {self.bytes / 1e9:.2f} GB "
            f"({self.gb_per_s:.3f} GB/s), latency p50 {self.p50_ms:.2f} ms p99 {self.p99_ms:.2f} ms",
            f"  errors {self.errors}, wrong reads {self.mismatches}, sessions {self.sessions}",
            f"  daemon RSS middle third {self.rss_middle_mib:.1f} MiB, last third "
            f"{self.rss_last_mib:.1f} MiB ({self.rss_samples} samples): "
            f"{'stable' if self.rss_ok else 'GROWING'}",
            f"  daemon fds baseline {self.fd_baseline}, after {self.fd_after}: "
            f"{'no leak' if self.fd_ok else 'LEAK'}",
        ]
        if self.objects:
            lines.append(
                f"  resident objects {self.objects}: checked {self.objects_checked}, "
                f"lost {self.durable_lost}, corrupt {self.corrupt}"
            )
        lines += [f"  error: {e}" for e in self.error_samples[:10]]
        return "\n".join(lines)


def rss_verdict(samples: Sequence[int]) -> tuple[float, float, bool]:
    """(median of the middle third, of the last third, stable?) -- the first third is warm-up."""
    third = len(samples) // 3
    if third < 2:
        return 0.0, 0.0, False  # too short to judge: not a pass
    middle = statistics.median(samples[third : 2 * third])
    last = statistics.median(samples[2 * third :])
    return middle, last, last <= middle * (1 + RSS_REL_TOL) + RSS_ABS_TOL


_SLAB = re.compile(r"/slab-\d+\.dat$")


def _fd_count(pid: int) -> int:
    """Open fds of ``pid``, minus page-cache slab files.

    Slabs are opened lazily the first time the arbiter places an object on the page-cache path
    and stay open for the daemon's life (bounded by the slab count), so they are not a leak.
    """
    fds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        fds += not _SLAB.search(target)
    return fds


def _resident(i: int) -> bytes:
    """Resident object ``i``'s bytes: its index repeated, so any misplaced block shows."""
    return i.to_bytes(8, "little") * (RESIDENT_BYTES // 8)


def _store_residents(socket: str, objects: int) -> None:
    from dualblade import Client

    with Client.connect(socket, tenant="resident", arena_bytes=16 << 20) as c:
        for lo in range(0, objects, RESIDENT_BATCH):
            items = [
                (f"r/{i}".encode(), _resident(i))
                for i in range(lo, min(objects, lo + RESIDENT_BATCH))
            ]
            c.put_many(items, persistent=True)


def _check_residents(socket: str, objects: int, report: SoakReport) -> None:
    from dualblade import Client
    from dualblade.errors import NotFound

    with Client.connect(socket, tenant="resident", arena_bytes=16 << 20) as c:
        for lo in range(0, objects, RESIDENT_BATCH):
            idx = range(lo, min(objects, lo + RESIDENT_BATCH))
            try:
                got = c.get_many([f"r/{i}".encode() for i in idx])
            except NotFound:  # one missing key fails the batch: find which, one by one
                got = []
                for i in idx:
                    try:
                        got.append(c.get(f"r/{i}".encode()))
                    except NotFound:
                        got.append(None)
            for i, data in zip(idx, got):
                report.objects_checked += 1
                if data is None:
                    report.durable_lost += 1
                elif data != _resident(i):
                    report.corrupt += 1


def soak(
    root: Path, *, clients: int, seconds: float, seed: int = 1, objects: int = 0
) -> SoakReport:
    report = SoakReport(clients=clients, seconds=seconds, objects=objects)
    size = (
        "1GiB"
        if objects * RESIDENT_BYTES < (256 << 20)
        else f"{1 + objects * RESIDENT_BYTES * 2 // 2**30}GiB"
    )
    with DaemonProcess(root / "daemon", namespace_size=size) as daemon:
        assert daemon.proc is not None  # noqa: S101 (started by the context manager)
        proc = psutil.Process(daemon.proc.pid)
        from dualblade import Client

        with Client.connect(daemon.socket, tenant="warmup", arena_bytes=1 << 20) as c:
            # Touch every lazily opened fd (SQLite opens its WAL at the first write transaction).
            c.put(b"w", b"x" * 4096)
            c.put(b"wp", b"y" * 4096, persistent=True, durable=True)
            c.get(b"w")
            c.delete(b"wp")
        if objects:
            _store_residents(str(daemon.socket), objects)
        time.sleep(0.5)
        report.fd_baseline = _fd_count(proc.pid)
        outs = [root / f"worker{i}" for i in range(clients)]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "dualblade_tools.soak", "--worker", str(i)]
                + ["--socket", str(daemon.socket), "--seconds", str(seconds)]
                + ["--seed", str(seed * 1000 + i), "--out", str(outs[i])]
            )
            for i in range(clients)
        ]
        rss: list[int] = []
        t0 = time.monotonic()
        while any(w.poll() is None for w in workers):
            rss.append(proc.memory_info().rss)
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        report.worker_exit_codes = [w.returncode for w in workers]
        deadline = time.monotonic() + 10.0  # sessions end asynchronously (the lease closes)
        while True:
            report.fd_after = _fd_count(proc.pid)
            if report.fd_after <= report.fd_baseline or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        report.fd_ok = report.fd_after <= report.fd_baseline
        if objects:
            _check_residents(str(daemon.socket), objects, report)
    middle, last, report.rss_ok = rss_verdict(rss)
    report.rss_samples = len(rss)
    report.rss_middle_mib, report.rss_last_mib = middle / 2**20, last / 2**20
    lats = []
    for out in outs:
        if not out.with_suffix(".json").exists():
            report.errors += 1
            report.error_samples.append(f"{out.name} wrote no report")
            continue
        data = json.loads(out.with_suffix(".json").read_text())
        for k in ("ops", "bytes", "errors", "mismatches", "sessions"):
            setattr(report, k, getattr(report, k) + data[k])
        report.error_samples += data["error_samples"]
        lats.append(np.load(out.with_suffix(".npy")))
    all_lat = np.concatenate(lats) if lats else np.zeros(0, dtype=np.float32)
    if all_lat.size:
        report.p50_ms = float(np.percentile(all_lat, 50) * 1e3)
        report.p99_ms = float(np.percentile(all_lat, 99) * 1e3)
    report.ops_per_s = report.ops / elapsed
    report.gb_per_s = report.bytes / elapsed / 1e9
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soak", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4, help="client processes")
    p.add_argument("--minutes", type=float, default=1.0, help="how long the clients run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--objects", type=int, default=0, help="persistent 4 KiB objects stored first, checked last"
    )
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--root", type=Path, help="working directory (default: a fresh temp dir)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--socket", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker(args.socket, args.worker, args.seconds, args.seed, args.out)
    if args.clients < 1 or args.minutes <= 0 or args.objects < 0:
        raise SystemExit("soak: --clients must be >= 1, --minutes > 0 and --objects >= 0")
    root = args.root or Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        report = soak(
            root,
            clients=args.clients,
            seconds=args.minutes * 60,
            seed=args.seed,
            objects=args.objects,
        )
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print(report.render())
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
