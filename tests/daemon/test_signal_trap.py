"""SIGTERM handling in-process: the handler takes no lock, and the main loop wakes at once.

The regression this guards: the handler used to call ``Event.set`` while the main thread sat in
``Event.wait``; a signal landing inside ``wait``'s critical section (its condition's lock is not
reentrant) deadlocked the daemon, seen once as a SIGTERM 1 ms after READY=1 that never led to a
stop. The window is a few bytecodes wide, so the test checks the rule that closes it (the
handler only stores) and the mechanism that replaces the event (the wake-up pipe ends the wait
at once, not at the loop's 1 s timeout). No daemon is started: ``stop`` of an unstarted daemon
only closes its (empty) exit stack.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualbladed.config.load import load_config
from dualbladed.server import Daemon
from wait_utils import SchedulerLag


@pytest.fixture
def restore_signals() -> Iterator[None]:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    try:
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(fd)


def _daemon(tmp_path: Path) -> Daemon:
    return Daemon(
        load_config(
            [
                "--namespace",
                str(tmp_path / "ns.img"),
                "--namespace-size",
                "64MiB",
                "--state-dir",
                str(tmp_path / "state"),
                "--socket",
                str(tmp_path / "grpc.sock"),
            ]
        )
    )


def test_the_handler_only_stores_the_signal(tmp_path: Path, restore_signals: None) -> None:
    daemon = _daemon(tmp_path)
    daemon.trap_signals()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler) and handler is signal.getsignal(signal.SIGINT)
    # One attribute store: no call, so no lock can be taken on the interrupted main thread.
    assert handler.__code__.co_names == ("_signal",)
    lock = threading.Lock()
    with lock:  # what the main thread may hold when the signal lands
        handler(signal.SIGTERM, None)
    assert daemon._signal == signal.SIGTERM
    assert daemon._wakeup is not None and signal.set_wakeup_fd(-1) == daemon._wakeup[1]
    for fd in daemon._wakeup:  # serve_forever never ran to close them
        os.close(fd)


def test_a_sigterm_ends_the_main_loop_at_once(tmp_path: Path, restore_signals: None) -> None:
    daemon = _daemon(tmp_path)
    daemon.trap_signals()
    ends = [daemon._wakeup]
    sent: list[float] = []

    def kill() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    with SchedulerLag() as lag:
        timer = threading.Timer(0.2, kill)
        timer.start()
        daemon.serve_forever()  # returns after stop()
        ended = time.monotonic()
        timer.join()
    assert sent and daemon._stopped.is_set()
    pipe = ends[0]
    assert daemon._wakeup is None and signal.set_wakeup_fd(-1) == -1, "the pipe is unhooked"
    for fd in pipe:  # and closed: a later signal cannot write into a reused descriptor
        with pytest.raises(OSError):
            os.fstat(fd)
    # Without the wake-up pipe the loop would end at its 1 s select timeout, 0.8 s after the
    # signal; with it, at once (plus whatever the machine's scheduler added meanwhile).
    assert ended - sent[0] < 0.5 + lag.worst, f"stopped {ended - sent[0]:.2f} s after SIGTERM"
