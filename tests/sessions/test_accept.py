"""The handshake listener's accept side: the token bucket, eviction, and the Acceptor's pauses.

The bucket and the eviction policy are pure and run on a fake clock / plain objects. The Acceptor
runs on a real SEQPACKET listener and a real selector, with a fake clock only so that its pauses
are exact; the EMFILE case is a real EMFILE (RLIMIT_NOFILE lowered for a moment).
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dualbladed.sessions.accept import (
    ACCEPT_BATCH,
    EMFILE_PAUSE_S,
    LISTENER,
    Acceptor,
    accept_bucket,
    eviction_victim,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- accept_bucket (the rate limit itself: tests/daemon/test_ratelimit.py) -----------------


def test_bucket_starts_full_with_a_tenth_of_the_rate_as_burst() -> None:
    bucket = accept_bucket(100.0)
    assert bucket.burst == 10.0
    for _ in range(10):
        assert bucket.take(5.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1 / 100)


def test_a_refused_take_consumes_nothing() -> None:
    bucket = accept_bucket(10.0)  # burst 1
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.0) == pytest.approx(0.1)  # still a full token away, not two
    assert bucket.take(0.04) == pytest.approx(0.06)


def test_bucket_refills_at_the_rate_and_the_wait_it_names_is_enough() -> None:
    bucket = accept_bucket(50.0)  # burst 5
    now = 0.0
    for _ in range(5):
        assert bucket.take(now) == 0.0
    for _ in range(50):
        wait = bucket.take(now)
        assert wait == pytest.approx(1 / 50)
        assert bucket.take(now + 0.9 * wait) > 0  # the wait named is not too generous...
        now += wait + 1e-9  # (a real clock always moves on a little)
        assert bucket.take(now) == 0.0  # ...and it is enough
    assert now == pytest.approx(1.0)  # 50 takes beyond the burst at 50/s: one second


def test_bucket_never_holds_more_than_the_burst() -> None:
    bucket = accept_bucket(100.0)
    assert bucket.take(0.0) == 0.0
    later = 3600.0  # an hour idle
    for _ in range(10):
        assert bucket.take(later) == 0.0
    assert bucket.take(later) > 0


def test_low_rates_keep_a_burst_of_one() -> None:
    bucket = accept_bucket(2.0)
    assert bucket.burst == 1.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0


def test_no_rate_means_no_limit() -> None:
    bucket = accept_bucket(None)
    assert all(bucket.take(0.0) == 0.0 for _ in range(10_000))


# ---- eviction_victim -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    uid: int
    name: str


def test_victim_is_the_oldest_of_the_uid_with_the_most_pending() -> None:
    a1, b1, b2, a2, b3 = (
        Pending(1, "a1"),
        Pending(2, "b1"),
        Pending(2, "b2"),
        Pending(1, "a2"),
        Pending(2, "b3"),
    )
    assert eviction_victim([a1, b1, b2, a2, b3], newcomer_uid=3) is b1


def test_the_newcomer_counts_for_its_own_uid() -> None:
    a1, b1, b2, a2 = Pending(1, "a1"), Pending(2, "b1"), Pending(2, "b2"), Pending(1, "a2")
    # 2 each; uid 1's newcomer makes uid 1 the heavier one, so uid 1 pays, not uid 2
    assert eviction_victim([b1, a1, b2, a2], newcomer_uid=1) is a1
    assert eviction_victim([b1, a1, b2, a2], newcomer_uid=2) is b1


def test_a_tie_goes_to_the_uid_of_the_oldest_pending() -> None:
    a1, b1 = Pending(1, "a1"), Pending(2, "b1")
    assert eviction_victim([b1, a1], newcomer_uid=3) is b1
    assert eviction_victim([a1, b1], newcomer_uid=3) is a1


def test_a_newcomer_of_a_uid_with_nothing_pending_evicts_the_heaviest() -> None:
    flood = [Pending(7, f"f{i}") for i in range(4)]
    assert eviction_victim(flood, newcomer_uid=8) is flood[0]


# ---- Acceptor on a real listener -----------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(tmp_path / "l.sock"))
    sock.listen(128)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connect(listener: socket.socket, n: int) -> list[socket.socket]:
    clients = []
    for _ in range(n):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(listener.getsockname())
        clients.append(c)
    return clients


def _registered(selector: selectors.BaseSelector, listener: socket.socket) -> bool:
    try:
        return selector.get_key(listener).data == LISTENER
    except KeyError:
        return False


def test_acceptor_pauses_over_the_rate_and_resumes_when_a_token_is_due(
    listener: socket.socket,
) -> None:
    clock = FakeClock()
    admitted: list[socket.socket] = []
    clients = _connect(listener, 3)
    with selectors.DefaultSelector() as selector:
        acceptor = Acceptor(listener, selector, 10.0, clock=clock)  # burst 1, a token per 0.1 s
        assert _registered(selector, listener)
        try:
            acceptor.accept_batch(admitted.append)
            assert len(admitted) == 1
            assert acceptor.paused_until == pytest.approx(clock.now + 0.1)
            assert not _registered(selector, listener)  # the backlog holds the other two

            clock.now += 0.05
            acceptor.maybe_resume()
            assert not _registered(selector, listener)
            clock.now = acceptor.paused_until
            acceptor.maybe_resume()
            assert acceptor.paused_until == 0.0
            assert _registered(selector, listener)

            acceptor.accept_batch(admitted.append)
            assert len(admitted) == 2
        finally:
            for s in admitted + clients:
                s.close()


def test_acceptor_takes_at_most_a_batch_and_stops_when_the_backlog_is_empty(
    listener: socket.socket,
) -> None:
    admitted: list[socket.socket] = []
    clients = _connect(listener, ACCEPT_BATCH + 3)
    with selectors.DefaultSelector() as selector:
        acceptor = Acceptor(listener, selector, None, clock=FakeClock())
        try:
            acceptor.accept_batch(admitted.append)
            assert len(admitted) == ACCEPT_BATCH
            acceptor.accept_batch(admitted.append)
            assert len(admitted) == ACCEPT_BATCH + 3
            acceptor.accept_batch(admitted.append)  # nothing left: returns, not paused
            assert len(admitted) == ACCEPT_BATCH + 3
            assert acceptor.paused_until == 0.0
            assert _registered(selector, listener)
        finally:
            for s in admitted + clients:
                s.close()


def test_a_failing_admit_costs_only_that_connection(listener: socket.socket) -> None:
    admitted: list[socket.socket] = []
    refused: list[socket.socket] = []

    def admit(sock: socket.socket) -> None:
        if not refused:
            refused.append(sock)
            raise RuntimeError("boom")
        admitted.append(sock)

    clients = _connect(listener, 2)
    with selectors.DefaultSelector() as selector:
        acceptor = Acceptor(listener, selector, None, clock=FakeClock())
        try:
            acceptor.accept_batch(admit)
            assert len(refused) == 1 and refused[0].fileno() == -1  # closed by the acceptor
            assert len(admitted) == 1
        finally:
            for s in admitted + clients:
                s.close()


def test_out_of_fds_pauses_accepts_instead_of_spinning(listener: socket.socket) -> None:
    """EMFILE for real; the connection stays in the kernel's backlog (Linux takes the fd first)."""
    clock = FakeClock()
    admitted: list[socket.socket] = []
    clients = _connect(listener, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with selectors.DefaultSelector() as selector:
        acceptor = Acceptor(listener, selector, None, clock=clock)
        lowest_free = os.dup(0)
        os.close(lowest_free)
        try:
            # The next fd would be lowest_free: a limit of lowest_free makes accept() hit EMFILE.
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                acceptor.accept_batch(admitted.append)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert admitted == []
            assert acceptor.paused_until == pytest.approx(clock.now + EMFILE_PAUSE_S)
            assert not _registered(selector, listener)
            # The connection was not lost: it waits in the backlog until accepts resume.
            clock.now += EMFILE_PAUSE_S
            acceptor.maybe_resume()
            acceptor.accept_batch(admitted.append)
            assert len(admitted) == 1
        finally:
            for s in admitted + clients:
                s.close()
