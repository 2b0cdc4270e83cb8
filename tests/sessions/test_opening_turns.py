"""dualbladed.sessions.turns.OpeningTurns: per-uid turns with the session openers.

Pure bookkeeping; the handshake server's own flood tests (test_handshake_server.py) cover it
with real sockets. Here: the cap, parking order, and forgetting parked connections that are no
longer pending.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualbladed.sessions.turns import OpeningTurns


@dataclass(eq=False)
class Conn:
    uid: int
    name: str


def test_a_uid_at_its_cap_is_parked_and_other_uids_are_not() -> None:
    turns: OpeningTurns[Conn] = OpeningTurns(per_uid=2)
    a1, a2, a3, b1 = Conn(1, "a1"), Conn(1, "a2"), Conn(1, "a3"), Conn(2, "b1")
    for c in (a1, a2):
        assert not turns.park_if_busy(c)
        turns.begin(c)
    assert turns.park_if_busy(a3)  # uid 1 holds both turns
    assert not turns.park_if_busy(b1)  # uid 2 does not wait behind uid 1
    assert turns.opening(1) == 2 and turns.opening(2) == 0


def test_a_finished_opening_frees_a_turn_for_the_oldest_parked_connection() -> None:
    turns: OpeningTurns[Conn] = OpeningTurns(per_uid=1)
    first, second, third = Conn(7, "1"), Conn(7, "2"), Conn(7, "3")
    turns.begin(first)
    assert turns.park_if_busy(second) and turns.park_if_busy(third)
    turns.end(first)
    assert turns.opening(7) == 0
    assert turns.next_parked(7, lambda c: True) is second
    assert turns.next_parked(7, lambda c: True) is third
    assert turns.next_parked(7, lambda c: True) is None


def test_parked_connections_no_longer_pending_are_skipped_and_forgotten() -> None:
    turns: OpeningTurns[Conn] = OpeningTurns(per_uid=1)
    busy, gone, alive = Conn(3, "busy"), Conn(3, "gone"), Conn(3, "alive")
    turns.begin(busy)
    assert turns.park_if_busy(gone) and turns.park_if_busy(alive)
    pending = {alive}
    assert turns.next_parked(3, pending.__contains__) is alive
    assert turns.next_parked(3, lambda c: True) is None  # "gone" was dropped on the way
