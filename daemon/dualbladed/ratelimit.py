"""One token bucket for the daemon's rate limits: accepted connections and migrated bytes.

Two layers limit a rate: the handshake acceptor (``sessions.accept``: connections per second,
driven by the handshake thread's selector loop, which must never block) and the residency
arbiter (``arbiter.arbiter``: migrated bytes per second, on its own thread, which waits).
Both use this class. It lives at the bottom of the package (like :mod:`dualbladed.errors`)
because neither layer may import the other.

The bucket is pure: :meth:`TokenBucket.take` is given the time (any monotonic clock, in
seconds) and answers how long to wait instead of sleeping, so tests drive it with a fake clock
and the selector loop folds the wait into its timeout. :meth:`TokenBucket.wait` is the
blocking form for a thread that may sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dualbladed.errors import InvalidArgument

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full. One thread only.

    ``rate=None`` means no limit. A take of more than ``burst`` tokens (a migration of an
    object bigger than the burst) waits for a full bucket and then leaves it in debt, so a big
    take pays for itself before the next one goes, and the long-run rate still holds.
    """

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float | None, burst: float) -> None:
        if rate is not None and rate <= 0:
            raise InvalidArgument(f"token bucket rate {rate} must be positive (or None)")
        if burst <= 0:
            raise InvalidArgument(f"token bucket burst {burst} must be positive")
        self.rate = None if rate is None else float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._at: float | None = None  # the time of the last take (None: none yet)

    def take(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens at time ``now``: 0.0 if taken, else the seconds until they can be
        (nothing taken, so asking again is free)."""
        rate = self.rate
        if rate is None:
            return 0.0
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * rate)
        self._at = now
        need = min(n, self.burst)
        if self._tokens >= need:
            self._tokens -= n  # may go negative for n > burst: see the class docstring
            return 0.0
        return (need - self._tokens) / rate

    def wait(
        self,
        n: float,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> bool:
        """Block until ``n`` tokens are taken (True), or until ``stop`` is set (False)."""
        while True:
            delay = self.take(clock(), n)
            if delay == 0.0:
                return True
            if stop.wait(delay):
                return False
