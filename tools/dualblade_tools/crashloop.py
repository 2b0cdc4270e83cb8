"""``tools/crashloop``: SIGKILL the real daemon over and over and check what survived.

Each cycle (RocksDB's ``db_crashtest`` black-box and white-box modes, ZFS ztest's self-kill):

1. start ``dualbladed`` (:class:`~dualblade_tools.daemonproc.DaemonProcess`) -- for a white-box
   cycle with ``DUALBLADE_KILL_POINT``/``_ODDS``/``_SEED`` set, so it SIGKILLs itself at that
   point (:mod:`dualbladed.killpoints`);
2. verify the oracle against it (below), and that no two extents overlap (``Admin.Extents``);
3. run a seeded writer (:class:`~dualblade_tools.crashwriter.Writer`, its own module): persistent
   puts (durable and not; single, and groups of up to four keys in one packed op, all committed
   in one transaction), ephemeral puts, gets (checked live),
   deletes, short-lived extra sessions with ephemeral objects (their end runs
   ``release_session``), and layer objects: reserves and appends (durable and not, guarded by
   ``expect_size``) with live ranged reads; an acknowledged append must survive, an
   unacknowledged range must never show. A black-box cycle SIGKILLs the daemon at a random moment; a white-box
   cycle waits for the kill point to fire (and kills it at the time bound if it never did);
4. with the daemon dead, run ``dbctl fsck`` (the same :func:`dualbladed.store.fsck.fsck`, data
   verified) on its namespace and state directory: it must be clean.

The ``relocate.*`` points fire in the daemon only when its arbiter migrates, which happens under
memory pressure and cannot be timed from a client, so their cycles run a child process that drives :meth:`ObjectStore.relocate` between a direct and
a page-cache path on a namespace of its own, reporting each begun and acknowledged operation on
stdout; the harness keeps the same oracle and verifies by reopening the store.

The oracle (kept by the harness, which is never killed). Per persistent key: the last
acknowledged state (bytes digest, or absent) and whether that put was durable, plus the states
an unacknowledged, in-flight operation could have left. After a crash a key must read back as:

- an acknowledged **durable** put: exactly those bytes (anything else: *lost* or *corrupt*);
- an acknowledged **non-durable** put: those bytes, or missing (NotFound, or a checksum error,
  which the daemon reports and never returns). Counted as ``nondurable_missing``;
- an acknowledged **delete**: absent, or for a plain delete (committed with
  ``synchronous=NORMAL``) the bytes acknowledged just before it (``resurrected``); a **durable**
  delete (``synchronous=FULL``) may never come back (``durable_resurrected``, must be 0);
- in-flight at the kill: the acknowledged state or the one the operation would have produced;
- **never** bytes that differ from every allowed state (``corrupt_reads``, must be 0), and never a
  key the writer did not write (``phantoms``). Ephemeral objects never survive a restart.

Under SIGKILL the kernel keeps every write already issued, so ``nondurable_missing`` and
``resurrected`` are expected to be 0 as well; they are allowed because a power loss may drop
non-durable commits (only in order: SQLite WAL). After each verification the observed state
becomes the acknowledged one.

Exit status 0 when every cycle passed: no durable object lost, no corrupt read, fsck clean, no
overlap, no phantom, no unexpected error. ``--seed`` replays a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dualblade_tools.crashoracle import Counts, Digest, Oracle, digest
from dualblade_tools.crashwriter import KEYS, TENANT, Writer, payload
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.killpoints import ENV_ODDS, ENV_POINT, ENV_SEED, KILL_POINTS

RELOCATE_POINTS = tuple(p for p in KILL_POINTS if p.startswith("relocate."))
DAEMON_POINTS = tuple(p for p in KILL_POINTS if p not in RELOCATE_POINTS)
BLACKBOX = "random"
RELOCATE_NS_BYTES = 64 << 20


# -- the daemon workload ---------------------------------------------------------------------


@dataclass(frozen=True)
class CycleResult:
    mode: str
    fired: str | None  # the kill point that fired, or None (killed by the harness)
    ops: int
    restart_s: float


def _connect(daemon: DaemonProcess) -> object:
    from dualblade import Client

    return Client.connect(daemon.socket, tenant=TENANT, arena_bytes=16 << 20)


def verify_daemon(client: object, oracle: Oracle, counts: Counts, failures: list[str]) -> None:
    from dualblade import errors
    from dualblade.v1 import dualblade_pb2 as pb

    listed = {o.key for o in client.list()}
    for key in sorted(listed):
        if key.startswith((b"e/", b"c/")):
            counts.ephemeral_survived += 1
            failures.append(f"ephemeral object {key!r} survived a restart")
        elif key not in oracle.keys or not key.startswith(b"p/"):
            counts.phantoms += 1
            failures.append(f"phantom object {key!r}")
    for key in sorted(k for k in oracle.keys if k.startswith(b"p/")):
        observed: Digest
        read = client.read_range if key.startswith(b"p/l") else client.get  # layer objects
        try:
            observed = digest(read(key))
        except errors.NotFound:
            observed = None
        except errors.DataLoss:
            counts.checksum_missing += 1
            observed = None
        oracle.check(key, observed, counts, failures)
    reply = client.admin_call("Extents", pb.ExtentsRequest())
    by_path: dict[int, list[tuple[int, int]]] = {}
    for e in reply.extents:
        by_path.setdefault(e.path, []).append((e.offset, e.offset + e.length))
    for path, spans in by_path.items():
        spans.sort()
        for (a0, a1), (b0, _) in zip(spans, spans[1:]):
            if a1 > b0:
                counts.overlaps += 1
                failures.append(f"extents overlap on path {path}: [{a0},{a1}) and [{b0},...)")


def run_fsck(namespace: Path, state_dir: Path, counts: Counts, failures: list[str]) -> None:
    from dualbladed.store.fsck import fsck

    report = fsck(str(namespace), str(state_dir), verify_data=True)
    if not report.ok:
        counts.fsck_problems += len(report.errors)
        failures.extend(f"fsck: {e}" for e in report.errors)


def _fired_point(daemon: DaemonProcess, log_offset: int) -> str | None:
    if daemon.log_path is None or not daemon.log_path.exists():
        return None
    with open(daemon.log_path, "rb") as f:
        f.seek(log_offset)
        for line in f.read().decode(errors="replace").splitlines():
            if line.startswith("KILLPOINT "):
                return line.split()[1]
    return None


def daemon_cycle(
    daemon: DaemonProcess,
    mode: str,
    rng: random.Random,
    seconds: float,
    oracle: Oracle,
    counts: Counts,
    failures: list[str],
) -> CycleResult:
    """Start, verify, write until killed, fsck. ``mode``: a kill point or ``random``."""
    daemon.env.pop(ENV_POINT, None)
    if mode != BLACKBOX:
        # Sessions end less often than puts happen: arm that point with better odds.
        odds = rng.randint(1, 3) if mode == "release_session.mid" else rng.randint(1, 12)
        daemon.env.update(
            {ENV_POINT: mode, ENV_ODDS: str(odds), ENV_SEED: str(rng.getrandbits(32))}
        )
    log_offset = daemon.log_path.stat().st_size if daemon.log_path else 0
    t0 = time.monotonic()
    daemon.start()
    restart_s = time.monotonic() - t0
    writer = Writer(rng, oracle, counts)
    timer: threading.Timer | None = None
    with contextlib.closing(_connect(daemon)) as client:  # type: ignore[type-var]
        verify_daemon(client, oracle, counts, failures)
        if mode == BLACKBOX:
            proc = daemon.proc
            assert proc is not None  # noqa: S101 (started just above)
            timer = threading.Timer(rng.uniform(0.2, seconds), proc.send_signal, (signal.SIGKILL,))
            timer.start()
        try:
            ops = writer.run(client, daemon, time.monotonic() + seconds)
        finally:
            if timer is not None:
                timer.cancel()
            daemon.kill()
    failures.extend(writer.failures)
    run_fsck(daemon.namespace_path, daemon.state_dir, counts, failures)
    return CycleResult(mode, _fired_point(daemon, log_offset), ops, restart_s)


# -- the relocation workload (child process on its own namespace) -----------------------------


def _open_relocate_store(root: Path) -> object:
    from dualbladed.namespace.file import FileNamespace
    from dualbladed.paths.abstract import DIRECT, PAGECACHE
    from dualbladed.paths.direct import DirectPath
    from dualbladed.paths.pagecache import PageCachePath
    from dualbladed.store import ObjectStore

    ns = FileNamespace(root / "ns.img", RELOCATE_NS_BYTES)
    paths = {
        DIRECT: DirectPath(ns),
        PAGECACHE: PageCachePath(
            root / "state" / "pagecache", slab_bytes=16 << 20, max_bytes=RELOCATE_NS_BYTES
        ),
    }
    store = ObjectStore.open(ns, root / "state", paths=paths, access_flush_interval=0)
    store.namespace_handle = ns  # closed by the caller
    return store


def relocate_worker(root: Path, seed: int, seconds: float) -> int:
    """Child: puts and relocations, 'B'/'A' lines for begun/acknowledged ops on stdout."""
    from dualbladed.errors import NotFound
    from dualbladed.paths.abstract import DIRECT, PAGECACHE

    rng = random.Random(seed)
    store = _open_relocate_store(root)
    out = sys.stdout
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = f"r/{rng.randrange(KEYS // 2)}".encode()
        try:
            info = store.stat(TENANT, key)
        except NotFound:
            info = None
        if info is None or rng.random() < 0.4:
            data = payload(rng)
            durable = rng.random() < 0.5
            line = f"{key.hex()} {digest(data).hex()} {int(durable)}"
            out.write(f"B {line}\n")
            out.flush()
            store.put(TENANT, key, data, persistent=True, durable=durable, path=DIRECT)
            out.write(f"A {line}\n")
            out.flush()
        else:
            store.relocate(TENANT, key, PAGECACHE if info.path == DIRECT else DIRECT)
            out.write(f"R {key.hex()}\n")  # a relocation acknowledged: now durable
            out.flush()
    store.close()
    return 0


def relocate_cycle(
    root: Path,
    point: str,
    rng: random.Random,
    seconds: float,
    oracle: Oracle,
    counts: Counts,
    failures: list[str],
) -> CycleResult:
    root.mkdir(parents=True, exist_ok=True)
    _verify_relocate_store(root, oracle, counts, failures)
    env = {
        **os.environ,
        ENV_POINT: point,
        ENV_ODDS: str(rng.randint(1, 6)),
        ENV_SEED: str(rng.getrandbits(32)),
    }
    cmd = [sys.executable, "-m", "dualblade_tools.crashloop", "--relocate-worker", str(root)]
    cmd += ["--seed", str(rng.getrandbits(32)), "--seconds", str(seconds)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        kind, *rest = line.split()
        if kind == "R":
            st = oracle.keys[bytes.fromhex(rest[0])]
            st.durable = st.value is not None
            continue
        key, value, durable = bytes.fromhex(rest[0]), bytes.fromhex(rest[1]), rest[2] == "1"
        (oracle.begin if kind == "B" else oracle.ack_put)(key, value, durable)
    fired = None
    if proc.returncode == -signal.SIGKILL:
        fired = next(
            (ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("KILLPOINT ")), None
        )
    elif proc.returncode != 0:
        counts.unexpected_errors += 1
        failures.append(f"relocate worker exited {proc.returncode}: {proc.stderr[-2000:]}")
    run_fsck(root / "ns.img", root / "state", counts, failures)
    ops = sum(1 for ln in proc.stdout.splitlines() if ln[:2] in ("A ", "R "))
    return CycleResult(point, fired, ops, time.monotonic() - t0)


def _verify_relocate_store(root: Path, oracle: Oracle, counts: Counts, failures: list[str]) -> None:
    from dualbladed.errors import ChecksumMismatch, NotFound

    if not (root / "ns.img").exists():
        return
    store = _open_relocate_store(root)
    try:
        listed = {i.key for i in store.list(TENANT)}
        for key in sorted(listed - set(oracle.keys)):
            counts.phantoms += 1
            failures.append(f"phantom object {key!r} after a relocation crash")
        for key in sorted(k for k in oracle.keys if k.startswith(b"r/")):
            observed: Digest
            try:
                info = store.stat(TENANT, key)
                buf = bytearray(info.size)
                store.get_into(TENANT, key, memoryview(buf))
                observed = digest(buf)
            except NotFound:
                observed = None
            except ChecksumMismatch:
                counts.checksum_missing += 1
                observed = None
            oracle.check(key, observed, counts, failures)
        for name, usage in store.stats().paths.items():
            spans = sorted(i.extent for i in store.list(TENANT) if i.path == name)
            for a, b in zip(spans, spans[1:]):
                if a.end > b.offset:
                    counts.overlaps += 1
                    failures.append(f"extents overlap on {name}: {a} and {b}")
            if usage.alloc.used != sum(e.length for e in spans):
                failures.append(f"{name}: allocator says {usage.alloc.used} used, rows say more")
    finally:
        store.close()
        store.namespace_handle.close()


# -- the loop --------------------------------------------------------------------------------


@dataclass
class CrashloopReport:
    seed: int
    cycles_requested: int
    cycles_survived: int = 0
    seconds: float = 0.0
    kill_points_covered: dict[str, int] = field(default_factory=dict)
    kill_points_missed: list[str] = field(default_factory=list)
    blackbox_kills: int = 0
    ops: int = 0
    max_restart_s: float = 0.0
    counts: Counts = field(default_factory=Counts)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        c = self.counts
        bad = c.durable_lost + c.corrupt_reads + c.phantoms + c.ephemeral_survived + c.overlaps
        bad += c.durable_resurrected
        return not self.failures and bad + c.fsck_problems + c.unexpected_errors == 0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}

    def render(self) -> str:
        c = self.counts
        lines = [
            f"crashloop seed {self.seed}: {'PASS' if self.ok else 'FAIL'} -- "
            f"{self.cycles_survived}/{self.cycles_requested} cycles in {self.seconds:.1f} s, "
            f"{self.ops} ops, max restart {self.max_restart_s:.2f} s",
            f"  kill points covered: {len(self.kill_points_covered)}/{len(KILL_POINTS)} "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.kill_points_covered.items())),
            f"  black-box kills: {self.blackbox_kills}",
            f"  objects checked {c.objects_checked}, durable lost {c.durable_lost}, "
            f"corrupt reads {c.corrupt_reads}, non-durable missing {c.nondurable_missing}, "
            f"resurrected deletes {c.resurrected} (durable {c.durable_resurrected}), "
            f"in-flight landed {c.in_flight_landed}, "
            f"checksum-missing {c.checksum_missing}",
            f"  phantoms {c.phantoms}, ephemeral survived {c.ephemeral_survived}, "
            f"overlaps {c.overlaps}, fsck problems {c.fsck_problems}, "
            f"unexpected errors {c.unexpected_errors}",
        ]
        if self.kill_points_missed:
            lines.append(f"  never fired: {', '.join(self.kill_points_missed)}")
        lines += [f"  FAILURE: {f}" for f in self.failures[:50]]
        return "\n".join(lines)


def schedule(kill_point: str | None) -> list[str]:
    """Cycle modes in rotation: every kill point, with a black-box cycle after each."""
    if kill_point is not None:
        return [kill_point]
    modes = []
    for point in KILL_POINTS:
        modes += [point, BLACKBOX]
    return modes


def crashloop(
    root: Path,
    *,
    cycles: int,
    time_limit: float | None = None,
    cycle_seconds: float = 3.0,
    modes: Sequence[str] | None = None,
    seed: int | None = None,
) -> CrashloopReport:
    """Run up to ``cycles`` cycles or until ``time_limit`` seconds, whichever comes first.

    ``modes`` (kill point names and ``random``) rotate across cycles; default :func:`schedule`.
    """
    seed = seed if seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    report = CrashloopReport(seed=seed, cycles_requested=cycles)
    oracle, counts = Oracle(), report.counts
    modes = list(modes) if modes else schedule(None)
    unknown = set(modes) - {*KILL_POINTS, BLACKBOX}
    if unknown:
        raise ValueError(f"unknown cycle modes: {', '.join(sorted(unknown))}")
    attempted: set[str] = set()
    start = time.monotonic()
    daemon = DaemonProcess(root / "daemon", namespace_size="256MiB")
    try:
        for i in range(cycles):
            if time_limit is not None and time.monotonic() - start > time_limit:
                break
            mode = modes[i % len(modes)]
            attempted.add(mode)
            before = len(report.failures)
            try:
                if mode in RELOCATE_POINTS:
                    res = relocate_cycle(
                        root / "relocate", mode, rng, cycle_seconds, oracle, counts, report.failures
                    )
                else:
                    res = daemon_cycle(
                        daemon, mode, rng, cycle_seconds, oracle, counts, report.failures
                    )
            except (RuntimeError, TimeoutError) as exc:  # the daemon did not come back
                report.failures.append(f"cycle {i} ({mode}): {exc}")
                break
            report.ops += res.ops
            report.max_restart_s = max(report.max_restart_s, res.restart_s)
            if res.fired is not None:
                report.kill_points_covered[res.fired] = (
                    report.kill_points_covered.get(res.fired, 0) + 1
                )
            else:
                report.blackbox_kills += 1
            if len(report.failures) == before:
                report.cycles_survived += 1
        # A final clean start: verify, stop with SIGTERM, fsck once more.
        daemon.env.pop(ENV_POINT, None)
        daemon.start()
        with contextlib.closing(_connect(daemon)) as client:  # type: ignore[type-var]
            verify_daemon(client, oracle, counts, report.failures)
        if daemon.terminate() != 0:
            report.failures.append(f"clean stop exited {daemon.proc.returncode}")  # type: ignore[union-attr]
        run_fsck(daemon.namespace_path, daemon.state_dir, counts, report.failures)
        if (root / "relocate" / "ns.img").exists():
            _verify_relocate_store(root / "relocate", oracle, counts, report.failures)
    finally:
        daemon.kill()
    report.seconds = time.monotonic() - start
    wanted = attempted & set(KILL_POINTS)
    report.kill_points_missed = sorted(wanted - set(report.kill_points_covered))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crashloop", description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=20, help="number of kill/restart cycles")
    p.add_argument("--seconds", type=float, default=600.0, help="time bound for the whole run")
    p.add_argument(
        "--cycle-seconds", type=float, default=3.0, help="longest writer phase of one cycle"
    )
    p.add_argument(
        "--kill-point",
        choices=[*KILL_POINTS, BLACKBOX],
        help="only this kill point (or 'random': black-box kills only); default: rotate all",
    )
    p.add_argument("--seed", type=int, help="replay a run")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--root", type=Path, help="working directory (default: a fresh temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--relocate-worker", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.relocate_worker is not None:
        return relocate_worker(args.relocate_worker, args.seed, args.seconds)
    root = args.root or Path(tempfile.mkdtemp(prefix="crashloop-"))
    try:
        report = crashloop(
            root,
            cycles=args.cycles,
            modes=schedule(args.kill_point),
            seed=args.seed,
            time_limit=args.seconds,
            cycle_seconds=args.cycle_seconds,
        )
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print(report.render())
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
