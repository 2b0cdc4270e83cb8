"""``Client.close`` returns once the daemon has ended the session (real daemon, real sockets).

The daemon closes its end of the lease only after ``registry.end`` (the admission slot, the
ephemeral objects), and the client waits for that EOF. So a process holding every session it may
hold can close one and open another at once, every time; before, the reopen raced the daemon's
end of the closed session and was sometimes refused. And a stopped daemon delays close by the
bounded wait only, never hangs it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from dualblade import Client, errors
from dualblade._handshake import CLOSE_WAIT_S
from dualblade_tools.daemonproc import DaemonProcess

MiB = 1 << 20


@pytest.fixture
def daemon(tmp_path: Path):
    cfg = tmp_path / "d.toml"
    cfg.write_text("[limits]\nmax_sessions = 3\n")
    with DaemonProcess(tmp_path / "d", namespace_size="64MiB", config=cfg) as d:
        yield d


def _stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it has stopped (delivery is async: a
    daemon thread still running could end the session before it stops)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not stop")


def _connect(d: DaemonProcess) -> Client:
    return Client.connect(d.socket, tenant="closer", arena_bytes=MiB)


def test_close_then_reopen_at_the_session_limit_is_never_refused(daemon: DaemonProcess) -> None:
    held: list[Client] = []
    try:
        with pytest.raises(errors.ResourceExhausted):  # fill every slot this uid may take
            for _ in range(16):
                held.append(_connect(daemon))
        assert held, "not even one session was admitted"
        for i in range(25):
            c = held.pop()
            c.put(f"eph{i}".encode(), b"x" * 4096)  # an ephemeral object the end must free
            c.close()
            held.append(_connect(daemon))  # the slot is free the moment close returned
        with pytest.raises(errors.ResourceExhausted):
            _connect(daemon)  # and the limit still holds
    finally:
        for c in held:
            c.close()


def test_close_waits_a_bounded_time_for_a_stopped_daemon(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None
    c = _connect(daemon)
    _stop(daemon.proc.pid)
    try:
        began = time.monotonic()
        c.close()
        waited = time.monotonic() - began
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert CLOSE_WAIT_S * 0.9 <= waited < CLOSE_WAIT_S + 5.0  # the wait ran out, then returned
    again = _connect(daemon)  # the daemon, running again, ended it and admits new sessions
    again.put(b"k", b"v" * 10)
    assert again.get(b"k") == b"v" * 10
    again.close()
