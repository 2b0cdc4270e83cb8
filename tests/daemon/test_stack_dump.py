"""A stuck daemon can be diagnosed: SIGUSR1 dumps every thread's stack and the daemon lives on."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from dualblade_tools.daemonproc import DaemonProcess, StopTimeout
from wait_utils import wait_until


def test_sigusr1_dumps_every_thread_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    from dualblade import Client

    with DaemonProcess(tmp_path / "d", namespace_size="64MiB") as d:
        assert d.proc is not None
        d.proc.send_signal(signal.SIGUSR1)
        assert wait_until(lambda: "Thread 0x" in d.log_tail(400), timeout=30.0)
        tail = d.log_tail(400)
        assert "Thread 0x" in tail and 'File "' in tail  # faulthandler's all-threads format
        assert d.proc.poll() is None
        with Client.connect(d.socket, tenant="t", arena_bytes=1 << 16) as c:
            c.put(b"k", b"v" * 4096)
            assert c.get(b"k") == b"v" * 4096
        assert d.terminate() == 0


def test_a_stop_timeout_names_the_log_tail() -> None:
    err = StopTimeout(["dualbladed"], 1.0, "last log line")
    assert isinstance(err, subprocess.TimeoutExpired)
    assert "last log line" in str(err) and "timed out" in str(err)
