"""Run a real ``dualbladed`` process: for tests, benchmarks, the crash loop and the demo.

The daemon is started as a child process with its own ``NOTIFY_SOCKET`` (a datagram socket owned
here), so "ready" means the daemon itself sent ``READY=1`` -- the same signal systemd waits for --
rather than polling for a socket file.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


@dataclass
class DaemonProcess:
    root: Path
    namespace_size: str | None = "256MiB"  # files only; ignored for block devices
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    config: Path | None = None
    namespace: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "grpc.sock"

    @property
    def namespace_path(self) -> Path:
        return self.namespace or self.root / "namespace.img"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "dualbladed"]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        cmd += [
            "--namespace",
            str(self.namespace_path),
            "--namespace-size",
            self.namespace_size,
            "--state-dir",
            str(self.state_dir),
            "--socket",
            str(self.socket),
            "--log-format",
            "json",
        ]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        notify_dir = tempfile.mkdtemp(prefix="dbnotify-")
        notify_path = os.path.join(notify_dir, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        self.log_path = self.root / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "GRPC_VERBOSITY": "ERROR", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"dualbladed exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                if left <= 0:
                    raise TimeoutError(f"dualbladed not ready in {timeout}s:\n{self.log_tail()}")
                sock.settimeout(min(left, 0.2))
                try:
                    msg = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if "READY=1" in msg.split("\n"):
                    return self
        finally:
            sock.close()
            os.unlink(notify_path)
            os.rmdir(notify_dir)

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> DaemonProcess:
        self.kill()
        return self.start()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.kill()
