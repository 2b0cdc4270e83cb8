"""Hit pins: a session's promise that an object it found by stat stays loadable for a while.

A KV tier answers "hit" for a chunk in one step and loads it a step later. Capacity eviction in
between would turn the hit into a failed load, so a stat op with ``pin_ms > 0`` pins each hit for
its session. The pin ends at the first of:

- a successful get of that key by the pinning session (the load it was taken for),
- an explicit unpin (``UnpinOp``) by that session,
- its deadline (``pin_ms`` after the stat; a later pinning stat of the same key by the same
  session extends it instead of pinning twice),
- the end of the session.

What a pin guarantees: LRU eviction never picks a pinned key's object (it leaves the
:class:`~dualbladed.store.lru.LruOrder` while pinned). A pin is on the *key*, so it follows the
object through a relocation by the residency arbiter and through an overwrite (the new version
is pinned too: for a KV tier two writers of one key store the same chunk). What it does not: an
explicit delete, by any session of the tenant, still deletes at once -- the tenant asked for it,
and an application that deletes what it just looked up has a bug no pin should hide. The pinner's
get then sees NOT_FOUND, never stale bytes.

Abuse bound: at most ``max_per_session`` live pins per session (a pin on the key already pinned
by the session only extends it). Above that the stat op fails with
:class:`~dualbladed.errors.PinLimitExceeded` (RESOURCE_EXHAUSTED), so a hostile client can never pin
more than that many objects per session, and the session count is bounded by ``limits``.

Expiry is lazy: deadlines sit in a heap and are collected before every pin and before every
eviction walk -- the only times an expired-but-uncollected pin could be observed. Stale heap items
(a pin extended, unpinned or ended) are skipped when they surface; the heap is rebuilt from the
live pins when stale items outnumber them, so it stays O(live pins) under a re-pinning loop.

Not thread-safe: every method runs under ``ObjectStore._lock``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dualbladed.errors import PinLimitExceeded

if TYPE_CHECKING:
    from dualbladed.store.index import IndexEntry
    from dualbladed.store.lru import LruOrder

__all__ = ["HitPins"]

_Key = tuple[str, bytes]  # (tenant, key)


@dataclass(eq=False)
class _Pin:
    session: str
    key: _Key
    deadline: float
    live: bool = field(default=True)


class HitPins:
    """Every session's hit pins, and which entries they keep out of the LRU order."""

    def __init__(
        self,
        lru: LruOrder,
        lookup: Callable[[str, bytes], IndexEntry | None],
        max_per_session: int,
    ) -> None:
        self._lru = lru
        self._lookup = lookup
        self.max_per_session = max_per_session
        self._sessions: dict[str, dict[_Key, _Pin]] = {}
        self._heap: list[tuple[float, int, _Pin]] = []
        self._seq = itertools.count()
        self._live = 0  # live pins, all sessions (a key pinned twice counts twice)

    def __len__(self) -> int:
        """Keys pinned now (a key pinned by two sessions counts once)."""
        return len(self._lru.held)

    def is_pinned(self, tenant: str, key: bytes) -> bool:
        return (tenant, key) in self._lru.held

    def by_tenant(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for tenant, _key in self._lru.held:
            counts[tenant] = counts.get(tenant, 0) + 1
        return counts

    def pin(self, session: str, entry: IndexEntry, ms: int, now: float | None = None) -> None:
        """Pin ``entry``'s key for ``session`` for ``ms`` milliseconds (or extend its pin)."""
        now = time.monotonic() if now is None else now
        self.expire(now)
        pins = self._sessions.setdefault(session, {})
        key = (entry.tenant, entry.key)
        old = pins.get(key)
        if old is None and len(pins) >= self.max_per_session:
            if not pins:
                del self._sessions[session]
            raise PinLimitExceeded(
                f"session holds {len(pins)} pins, the limit "
                f"(limits.max_pins_per_session = {self.max_per_session}); key "
                f"{entry.info.key!r} not pinned: read or unpin earlier hits first"
            )
        if old is not None:  # extend (or shorten) the pin in place: no LRU churn
            old.live = False  # its heap item is stale now
            pin = _Pin(session, key, now + ms / 1000.0)
        else:
            pin = _Pin(session, key, now + ms / 1000.0)
            self._live += 1
            self._lru.hold(key, entry)
        pins[key] = pin
        heapq.heappush(self._heap, (pin.deadline, next(self._seq), pin))
        if len(self._heap) > 4 * self._live + 1024:
            self._compact()

    def unpin(self, session: str, tenant: str, key: bytes) -> bool:
        """End ``session``'s pin on ``(tenant, key)``; False when it held none."""
        pins = self._sessions.get(session)
        if not pins:
            return False
        pin = pins.get((tenant, key))
        if pin is None:
            return False
        self._end(pin)
        return True

    def release_session(self, session: str) -> int:
        """End every pin of ``session``; return how many there were."""
        pins = self._sessions.pop(session, None)
        if not pins:
            return 0
        for pin in pins.values():
            pin.live = False
            self._live -= 1
            self._lru.release(pin.key, self._lookup(*pin.key))
        return len(pins)

    def expire(self, now: float | None = None) -> int:
        """End the pins whose deadline passed; return how many."""
        now = time.monotonic() if now is None else now
        ended = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, pin = heapq.heappop(self._heap)
            if pin.live:
                self._end(pin)
                ended += 1
        return ended

    # -- internals -------------------------------------------------------------------------

    def _end(self, pin: _Pin) -> None:
        pin.live = False
        self._live -= 1
        pins = self._sessions[pin.session]
        del pins[pin.key]
        if not pins:
            del self._sessions[pin.session]
        self._lru.release(pin.key, self._lookup(*pin.key))

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if item[2].live]
        heapq.heapify(self._heap)
