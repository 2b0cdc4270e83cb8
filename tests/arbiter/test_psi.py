"""PsiWatcher: the avg10 polling fallback on a fake pressure file, and kernel triggers here."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dualbladed.arbiter.psi import POLL, TRIGGER, PressureEvent, PsiWatcher
from dualbladed.errors import InvalidArgument
from dualbladed.server import PSI_STALL_US, PSI_WINDOW_US

LOW = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0 avg300=0 total=0\n"
HIGH = "some avg10=42.00 avg60=9.00 avg300=1.00 total=9\nfull avg10=3.50 avg60=0 avg300=0 total=1\n"


def _wait_for(cond: threading.Event, timeout: float = 5.0) -> bool:
    return cond.wait(timeout)


def test_fallback_polls_avg10_of_a_fake_file(tmp_path: Path) -> None:
    pressure = tmp_path / "memory"
    pressure.write_text(LOW)
    events: list[PressureEvent] = []
    fired = threading.Event()

    def on_event(ev: PressureEvent) -> None:
        events.append(ev)
        fired.set()

    # 10 % stall (100 ms per 1 s window); a regular file never gets a trigger written into it
    w = PsiWatcher(pressure, 100_000, 1_000_000, on_event, interval_s=0.02)
    with w:
        assert w.mode == POLL
        time.sleep(0.15)
        assert events == []  # 0 % is below 10 %
        pressure.write_text(HIGH)
        assert _wait_for(fired)
        time.sleep(0.2)
        assert len(events) == 1  # at most one event per 1 s window
    assert events[0].mode == POLL
    assert (events[0].some_avg10, events[0].full_avg10) == (42.0, 3.5)
    assert pressure.read_text() == HIGH  # untouched
    assert w.mode is None


def test_fallback_when_the_file_is_missing(tmp_path: Path) -> None:
    w = PsiWatcher(tmp_path / "absent", 100_000, 1_000_000, lambda ev: None, interval_s=0.01)
    w.start()
    try:
        assert w.mode == POLL
        time.sleep(0.05)
        assert w.events == 0
    finally:
        w.stop()


def test_callback_errors_do_not_kill_the_watcher(tmp_path: Path) -> None:
    pressure = tmp_path / "memory"
    pressure.write_text(HIGH)
    calls = threading.Semaphore(0)

    def boom(ev: PressureEvent) -> None:
        calls.release()
        raise RuntimeError("callback bug")

    with PsiWatcher(pressure, 10_000, 50_000, boom, interval_s=0.01):
        assert calls.acquire(timeout=5) and calls.acquire(timeout=5)  # fired twice


def test_threshold_must_fit_the_window(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        PsiWatcher(tmp_path / "x", 2_000_000, 1_000_000, lambda ev: None)


def test_trigger_mode_on_this_kernel() -> None:
    path = Path("/proc/pressure/memory")
    if not path.exists():
        pytest.skip("no /proc/pressure/memory: kernel without PSI")
    # The daemon's own parameters (dualbladed.server): this kernel refuses a 1 s window and
    # accepts 2 s (unprivileged triggers need a multiple of 2 s; so does this VM's kernel).
    w = PsiWatcher(path, PSI_STALL_US, PSI_WINDOW_US, lambda ev: None)
    w.start()
    try:
        if w.mode != TRIGGER:
            pytest.skip(
                "the kernel refused a PSI trigger on /proc/pressure/memory (EINVAL/EACCES); "
                "the polling fallback is tested above"
            )
        time.sleep(0.3)  # the thread is polling the trigger fd without errors
        assert w.mode == TRIGGER
    finally:
        w.stop()
    assert w.mode is None
