"""Run a real ``dualbladed`` process: for tests, benchmarks, the crash loop and the demo.

The daemon is started as a child process with its own ``NOTIFY_SOCKET`` (a datagram socket owned
here), so "ready" means the daemon itself sent ``READY=1`` -- the same signal systemd waits for --
rather than polling for a socket file.

By default the notification socket is closed once READY=1 is in (later notifications, such as
STOPPING=1 on SIGTERM, then fail in the daemon with a logged warning). With ``keep_notify=True``
it stays open for the daemon's lifetime and every datagram is recorded:
:meth:`DaemonProcess.notify_messages` returns them in arrival order, so a test can check what the
daemon tells systemd on the way down. The socket is closed (after a last drain) when the daemon
is terminated or killed, and a fresh one is made by each :meth:`DaemonProcess.start`.
"""

from __future__ import annotations

import contextlib
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

from dualblade.v1.wire import GRPC_SOCKET_NAME

#: sd_notify messages are one datagram each; the daemon's are a few hundred bytes.
_NOTIFY_MAX_BYTES = 65536


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


class StopTimeout(subprocess.TimeoutExpired):
    """SIGTERM did not stop the daemon in time; the message carries its log's tail, which ends
    with every thread's stack (dumped on SIGUSR1 by the daemon's faulthandler)."""

    def __str__(self) -> str:
        return f"{super().__str__()}; the daemon's log ends:\n{self.output}"


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
    #: keep the NOTIFY_SOCKET open after READY=1 and record every message (notify_messages()).
    keep_notify: bool = False
    _notify_sock: socket.socket | None = field(default=None, init=False, repr=False)
    _notify_path: str | None = field(default=None, init=False, repr=False)
    _notify_messages: list[str] = field(default_factory=list, init=False, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def socket(self) -> Path:
        return self.root / "run" / GRPC_SOCKET_NAME

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
        self._close_notify()  # a restart gets a fresh socket and a fresh record
        self._notify_messages = []
        notify_dir = tempfile.mkdtemp(prefix="dbnotify-")
        notify_path = os.path.join(notify_dir, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        self._notify_sock, self._notify_path = sock, notify_path
        self.log_path = self.root / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "GRPC_VERBOSITY": "ERROR", **self.env}
        ready = False
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env)
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
                    msg = sock.recv(_NOTIFY_MAX_BYTES).decode(errors="replace")
                except TimeoutError:
                    continue
                self._notify_messages.append(msg)
                if "READY=1" in msg.split("\n"):
                    ready = True
                    return self
        finally:
            if not (ready and self.keep_notify):
                self._close_notify()

    def notify_messages(self) -> list[str]:
        """Every datagram the daemon sent to its NOTIFY_SOCKET since the last start, in order.

        Each entry is one whole message (newline-separated ``KEY=VALUE`` lines, e.g.
        ``"STOPPING=1\nSTATUS=..."``). Drains the socket without blocking; after the socket was
        closed (terminate/kill) it returns what was recorded up to then. Only messages up to
        READY=1 are seen unless the process was made with ``keep_notify=True``.
        """
        sock = self._notify_sock
        if sock is not None:
            sock.setblocking(False)
            while True:
                try:
                    msg = sock.recv(_NOTIFY_MAX_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                self._notify_messages.append(msg.decode(errors="replace"))
        return list(self._notify_messages)

    def _close_notify(self) -> None:
        """Record what is still queued, then close and remove the notify socket. Idempotent."""
        if self._notify_sock is None:
            return
        self.notify_messages()
        self._notify_sock.close()
        self._notify_sock = None
        if self._notify_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._notify_path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self._notify_path))
            self._notify_path = None

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait: the clean shutdown path.

        The default wait is generous on purpose: an idle daemon stops in well under a second,
        but a clean stop drains calls (up to 2 x 10 s of gRPC grace) and syncs metadata, which on
        a loaded 2-core box (seen: load 13, fio beside it) took over 30 s.

        The notify socket is closed once the process has exited (not on a timeout: the caller
        may still kill it, and :meth:`kill` closes it then).
        """
        if self.proc is None or self.proc.poll() is not None:
            self._close_notify()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            # Ask for every thread's stack (the daemon's SIGUSR1 faulthandler) so that the
            # failure names where the stop is stuck, then let the caller decide (kill or not).
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            raise StopTimeout(exc.cmd, timeout, self.log_tail(150)) from exc
        self._close_notify()
        return code

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            self._close_notify()

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
        finally:
            self._close_notify()
