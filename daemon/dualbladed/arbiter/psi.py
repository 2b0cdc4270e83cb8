"""Wake the arbiter on memory pressure: PSI triggers where the kernel offers them, else polling.

Trigger mode (Documentation/accounting/psi.rst): open the pressure file ``O_RDWR|O_NONBLOCK``,
write ``"some <stall_us> <window_us>"``, then ``poll()`` for ``POLLPRI``: the kernel raises it
when tasks stalled on memory for at least ``stall_us`` within any ``window_us`` window (at most
once per window). The trigger lives as long as the fd. ``POLLERR`` means the file went away (the
cgroup was removed); the watcher then falls back to polling.

Fallback mode: some kernels or sandboxes refuse triggers (EINVAL when triggers are not built
in or the window is out of range, EACCES/EPERM without write permission on older kernels,
ENOENT/EOPNOTSUPP without PSI). The watcher then reads ``some avg10`` every ``interval_s`` and
fires when it reaches the same ratio, ``100 * stall_us / window_us`` percent, at most once per
window. avg10 is a 10-second running average, so this mode reacts more slowly; that is the
price of not having triggers.

The callback runs on the watcher thread and must be quick (the arbiter sets an event and
returns); an exception in it is logged, never kills the thread.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dualbladed.arbiter.signals import parse_psi
from dualbladed.errors import InvalidArgument

log = logging.getLogger(__name__)

TRIGGER: Literal["trigger"] = "trigger"
POLL: Literal["poll"] = "poll"
Mode = Literal["trigger", "poll"]

#: errors that mean "no triggers here", not "something is broken".
_NO_TRIGGER = {errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP}


@dataclass(frozen=True)
class PressureEvent:
    timestamp: float  # time.monotonic()
    mode: Mode
    some_avg10: float | None  # percent, read when the event fired
    full_avg10: float | None


class PsiWatcher:
    """Calls ``callback(PressureEvent)`` when memory stall time crosses a threshold."""

    def __init__(
        self,
        path: Path,
        threshold_us: int,
        window_us: int,
        callback: Callable[[PressureEvent], None],
        *,
        interval_s: float = 1.0,
    ) -> None:
        if not 0 < threshold_us <= window_us:
            raise InvalidArgument(
                f"PSI threshold {threshold_us} us must be positive and at most the window "
                f"{window_us} us"
            )
        self.path = Path(path)
        self.threshold_us = threshold_us
        self.window_us = window_us
        self.interval_s = interval_s
        self._callback = callback
        self._mode: Mode | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0

    @property
    def mode(self) -> Mode | None:
        """ "trigger", "poll", or None before start()/after stop()."""
        return self._mode

    @property
    def threshold_pct(self) -> float:
        return 100.0 * self.threshold_us / self.window_us

    def start(self) -> None:
        """Arm the trigger (or decide on polling) in the caller's thread, then start the thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._fd = self._arm()
        self._mode = TRIGGER if self._fd is not None else POLL
        log.info(
            "PSI watcher on %s in %s mode (%d us stall per %d us)",
            self.path,
            self._mode,
            self.threshold_us,
            self.window_us,
        )
        self._thread = threading.Thread(target=self._run, name="psi-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._mode = None

    def _arm(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in _NO_TRIGGER:
                log.info("PSI trigger unavailable on %s (%s): polling avg10", self.path, e)
                return None
            raise
        if os.fstat(fd).st_size != 0:
            # procfs and cgroupfs files report size 0; a sized file is an ordinary file (a
            # test fixture, a copy), and writing a trigger into it would corrupt it.
            os.close(fd)
            log.info("%s is not a kernel pressure file: polling avg10", self.path)
            return None
        try:
            os.write(fd, f"some {self.threshold_us} {self.window_us}\0".encode())
        except OSError as e:
            os.close(fd)
            if e.errno in _NO_TRIGGER:
                log.info("PSI trigger refused by %s (%s): polling avg10", self.path, e)
                return None
            raise
        return fd

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._mode == TRIGGER:
                    self._wait_trigger()
                else:
                    self._wait_poll()
            except Exception:  # keep watching: a crashed watcher would hide all pressure
                log.exception("PSI watcher iteration failed")
                self._stop.wait(self.interval_s)

    def _wait_trigger(self) -> None:
        fd = self._fd
        if fd is None:
            self._mode = POLL
            return
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while not self._stop.is_set():
            for _, revents in poller.poll(200):  # ms: bounds how long stop() waits
                if revents & select.POLLERR:
                    log.warning("PSI trigger on %s went away: polling avg10", self.path)
                    os.close(fd)
                    self._fd = None
                    self._mode = POLL
                    return
                if revents & select.POLLPRI:
                    self._fire()

    def _wait_poll(self) -> None:
        last_fire = float("-inf")
        window_s = self.window_us / 1e6
        while not self._stop.wait(self.interval_s):
            some, _ = self._read()
            now = time.monotonic()
            if some is not None and some >= self.threshold_pct and now - last_fire >= window_s:
                last_fire = now
                self._fire()

    def _read(self) -> tuple[float | None, float | None]:
        try:
            return parse_psi(self.path.read_text())
        except OSError:
            return None, None

    def _fire(self) -> None:
        some, full = self._read()
        self.events += 1
        mode = self._mode or POLL
        try:
            self._callback(PressureEvent(time.monotonic(), mode, some, full))
        except Exception:
            log.exception("PSI callback failed")

    def __enter__(self) -> PsiWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
