"""Waits and time bounds that hold on a loaded machine as well as on a quiet one.

Why: the suite runs beside other work (CI neighbours, a disk-heavy fio, every core busy). A
bound written as "within 1.5 s" then tests the machine, not the code. Two tools replace them:

* :func:`wait_until` polls a condition up to a generous timeout and returns as soon as it
  holds, so a passing test costs no more than before while a stalled machine gets time;
* :class:`SchedulerLag` measures, in the same test and over the same interval, how late this
  process's threads wake up. A latency bound that the code itself must meet (a timer firing, a
  dead peer noticed) is then ``nominal + lag.worst``: on a quiet machine the worst lag is a
  millisecond or two and the bound keeps its meaning; under load it grows by exactly the delay
  the scheduler added, which no code can beat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

#: how long a wait for something that must happen gives it before the test fails.
EVENTUAL_S = 10.0


def wait_until(
    predicate: Callable[[], object], timeout: float = EVENTUAL_S, interval: float = 0.01
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last truth value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


class SchedulerLag:
    """The worst wake-up delay of a sleeping thread while the context is open.

    A daemon thread sleeps ``tick`` seconds in a loop and records by how much each sleep
    overshot. ``worst`` is read after (or during) the measured interval.
    """

    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        self._worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler-lag", daemon=True)

    def _run(self) -> None:
        while True:
            before = time.monotonic()
            if self._stop.wait(self.tick):
                return
            self._worst = max(self._worst, time.monotonic() - before - self.tick)

    @property
    def worst(self) -> float:
        """Seconds: the largest overshoot seen so far (0.0 before the first tick)."""
        return self._worst

    def __enter__(self) -> SchedulerLag:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
