"""Whether the page-cache path can take an object now, and saying so when it stops.

The policy decides in bytes of memory; the page-cache path can still refuse what it decides:
its slabs are capped (``residency.pagecache_max_bytes``), and its filesystem keeps a free-space
floor (``residency.pagecache_min_free_*``, issue 15's hardening against a tenant filling the
disk). A refused placement goes direct and a refused promotion is skipped, which is the right
fallback, but it used to be silent: in an eleventh-session benchmark the state filesystem sat
below its 2 GiB floor, every tick logged "31 promotions" that never happened, and adaptive
decoded everything from the disk at a budget where all of it fits, with nothing in the log to
say why. :class:`PageCacheRoom` asks the path and logs the *transitions*: a warning with the
path's reason when it starts refusing, an info line when it takes objects again, at most one
such pair per ``quiet_s`` (placements ask on every put, and mixed sizes can alternate). An
object larger than a slab is refused by its size, not by the page cache's state: that is said
once per daemon and does not count as a transition.

Thread safety: called from the servicer threads (placements) and the tick thread (plans and
migrations). Its lock guards only the refusal state and counter and is a leaf lock: nothing is
called while it is held (the path is asked before taking it).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class _RoomSource(Protocol):
    def larger_than_a_slab(self, length: int) -> bool: ...

    def room_refusal(self, length: int) -> str | None: ...


class PageCacheRoom:
    """``fits(size)``: the page-cache path's answer, with its refusals logged and counted."""

    #: at most one warning (and one line when it clears) per this many seconds: placements of
    #: mixed sizes can alternate between fitting and not (a fragmented cap), and must not log
    #: a pair of lines per put
    quiet_s = 60.0

    def __init__(self, pagecache: _RoomSource, clock: Callable[[], float] = time.monotonic) -> None:
        self._pagecache = pagecache
        self._clock = clock
        self._lock = threading.Lock()
        self._refusing: str | None = None  # why the last object asked about was refused
        self._announced: str | None = None  # the refusal warned about, until its clearing line
        self._warned_at = -math.inf
        self._refusals = 0
        self._oversize_told = False

    def fits(self, size: int) -> bool:
        reason = self._pagecache.room_refusal(size)
        if reason is not None and self._pagecache.larger_than_a_slab(size):
            # not a state of the page cache but a property of this size (long contexts: a
            # layer's K past the slab size): said once, and it does not hide a refusal in force
            with self._lock:
                self._refusals += 1
                told, self._oversize_told = self._oversize_told, True
            if not told:
                log.warning("objects larger than a slab stay on the direct path: %s", reason)
            return False
        warn = cleared = None
        with self._lock:
            self._refusing = reason
            if reason is not None:
                self._refusals += 1
                now = self._clock()
                if self._announced is None and now - self._warned_at >= self.quiet_s:
                    self._announced, self._warned_at, warn = reason, now, reason
            elif self._announced is not None:
                cleared, self._announced = self._announced, None
        if warn is not None:
            log.warning(
                "page-cache path refuses objects (placements go direct, promotions wait): %s", warn
            )
        if cleared is not None:
            log.info("page-cache path takes objects again (it refused: %s)", cleared)
        return reason is None

    @property
    def refusing(self) -> str | None:
        """Why the page-cache path refused the last object asked about, or None."""
        with self._lock:
            return self._refusing

    @property
    def refusals(self) -> int:
        """Refusals so far: placements, promotions, and ticks whose promotions were all
        refused (the plan asks once for its smallest)."""
        with self._lock:
            return self._refusals
