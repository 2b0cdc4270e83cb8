"""Figures for docs/reliability.md's "Hostile local user": root's connect time under attack.

``python -m dualblade_tools.hostile_figures [--json OUT]`` (as root) starts a daemon in a
directory uid 65534 can traverse, measures root's ``Client.connect`` (handshake, the per-uid
gRPC socket ready) plus one put and one get unloaded, then while uid 65534 runs every session attack at
once (:mod:`dualblade_tools.hostile`: arenas up to its cap with every page touched, a session
flood up to its limit, and a hello-and-hang-up flood), then once the attacker holds everything
it got. Meanwhile it samples the daemon's VmRSS and RssShmem every 20 ms. It prints one JSON
document: latencies (p50/p99/max, ms), the attacker's results, the daemon's peaks and the
configured caps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dualblade import Client
from dualblade_tools import hostile
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.config import load_config_file
from dualbladed.sessions.admission import AdmissionLimits

MiB = 1 << 20
CONFIG = """\
[limits]
max_sessions = 256
[admission]
per_uid_arena_bytes = "1GiB"
"""


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def at(q: float) -> float:
        return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))] * 1000

    return {"n": len(s), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": s[-1] * 1000}


def _connects(d: DaemonProcess, n: int, stop: threading.Event | None = None) -> list[float]:
    """Seconds per root connect + put + get; closes run on another thread (not measured)."""
    times = []
    with ThreadPoolExecutor(4) as closer:
        for i in range(n):
            if stop is not None and stop.is_set():
                break
            began = time.perf_counter()
            c = Client.connect(d.socket, tenant="root-probe", arena_bytes=MiB)
            c.put(f"p{i}".encode(), b"p" * 4096)
            c.get(f"p{i}".encode())
            times.append(time.perf_counter() - began)
            closer.submit(c.close)
    return times


class _MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = {"VmRSS": 0, "RssShmem": 0, "VmHWM": 0}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.02):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        if key in self.peak:
                            self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)
            except OSError:
                return


def measure(hangup_seconds: float = 8.0, arena_bytes: int = 256 * MiB) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="dbfigures-"))
    os.chmod(root, 0o755)
    (root / "d.toml").write_text(CONFIG)
    d = DaemonProcess(root / "d", namespace_size="256MiB", config=root / "d.toml")
    try:
        d.start()
        os.chmod(d.socket.parent, 0o755)
        for p in (d.socket, d.socket.parent / "handshake.sock"):
            os.chmod(p, 0o666)
        assert d.proc is not None
        sampler = _MemorySampler(d.proc.pid)
        sampler.start()
        keeper = Client.connect(d.socket, tenant="root", arena_bytes=MiB)
        keeper.put(b"crown", b"c" * 65536, persistent=True)
        _connects(d, 20)  # warm-up
        unloaded = _connects(d, 200)
        proc = hostile.start(
            d.socket,
            ["arenas", "sessions", "hangup"],
            extra=[
                "--arena-bytes",
                str(arena_bytes),
                "--seconds",
                str(hangup_seconds),
                "--hangup-arena-bytes",
                str(MiB),
            ],
        )
        time.sleep(0.5)
        during = _connects(d, 100_000, _Until(proc))
        attacker = hostile.wait_ready(proc)
        holding = _connects(d, 200)
        intact = keeper.get(b"crown") == b"c" * 65536
        attacker.finish()
        keeper.close()
        sampler.stop_event.set()
        sampler.join()
        alive = d.proc.poll() is None
        limits = AdmissionLimits.resolve(
            load_config_file(str(root / "d.toml")).admission, max_sessions=256
        )
        return {
            "root_connect_unloaded": _percentiles(unloaded),
            "root_connect_during_attacks": _percentiles(during),
            "root_connect_attacker_holding": _percentiles(holding),
            "attacker": attacker.ready,
            "daemon_peak_bytes": sampler.peak,
            "caps": {
                "per_uid_arena_bytes": limits.per_uid_arena_bytes,
                "arena_bytes": limits.arena_bytes,
                "per_uid_sessions": limits.per_uid_sessions,
                "max_sessions": limits.max_sessions,
            },
            "root_object_intact": intact,
            "daemon_alive": alive,
        }
    finally:
        d.terminate()
        shutil.rmtree(root, ignore_errors=True)


class _Until(threading.Event):
    """Set once the attacker has printed READY (its attacks are over), checked without reading."""

    def __init__(self, proc: Any) -> None:
        super().__init__()
        self._proc = proc

    def is_set(self) -> bool:
        import select

        return bool(select.select([self._proc.stdout], [], [], 0)[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the attacker drops to uid 65534")
    figures = measure(args.seconds)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
