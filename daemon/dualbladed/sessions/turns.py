"""Whose hello the openers take next: at most ``per_uid`` of one uid's hellos at once.

Opening a session (admission, the uid's gRPC socket, an arena) runs on a small pool of opener
threads (:mod:`dualbladed.sessions.opener`). Without a cap one uid's connect flood would fill
that pool's queue and every other uid's hello would wait behind it. So a connection whose uid
already has ``per_uid`` hellos with the openers is *parked*: taken out of the selector with its
hello unread (the datagram waits in the kernel), and when one of that uid's openings finishes
the oldest parked connection still pending is read next. Another uid's hello never queues
behind the flood; the flooding uid gets its turns in arrival order.

Pure bookkeeping owned by the handshake thread (:mod:`dualbladed.sessions.handshake`), which
does the selector and socket work; tested without sockets.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["OpeningTurns"]


class _HasUid(Protocol):
    @property
    def uid(self) -> int: ...


C = TypeVar("C", bound=_HasUid)


class OpeningTurns(Generic[C]):
    """Per-uid count of hellos with the openers and the parked connections (see the module
    docstring). Handshake thread only."""

    def __init__(self, per_uid: int) -> None:
        self.per_uid = per_uid
        self._opening: collections.Counter[int] = collections.Counter()
        self._parked: dict[int, collections.deque[C]] = {}

    def park_if_busy(self, conn: C) -> bool:
        """True (and ``conn`` parked, oldest first) when its uid has no turn free."""
        if self._opening[conn.uid] < self.per_uid:
            return False
        self._parked.setdefault(conn.uid, collections.deque()).append(conn)
        return True

    def begin(self, conn: C) -> None:
        """``conn``'s hello went to the openers: it holds one of its uid's turns."""
        self._opening[conn.uid] += 1

    def end(self, conn: C) -> None:
        """``conn``'s opening finished (or never started): its turn is free again."""
        self._opening[conn.uid] -= 1
        if self._opening[conn.uid] <= 0:
            del self._opening[conn.uid]

    def next_parked(self, uid: int, pending: Callable[[C], bool]) -> C | None:
        """The oldest parked connection of ``uid`` that is still ``pending`` (unparked), or
        None; parked ones no longer pending (evicted, expired) are forgotten on the way."""
        parked = self._parked.get(uid)
        found = None
        while parked:
            conn = parked.popleft()
            if pending(conn):
                found = conn
                break
        if not parked:
            self._parked.pop(uid, None)
        return found

    def opening(self, uid: int) -> int:
        """How many of ``uid``'s hellos are with the openers now."""
        return self._opening[uid]
