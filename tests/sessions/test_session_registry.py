"""SessionRegistry: tokens, authentication, exactly-once ending, thread safety."""

from __future__ import annotations

import threading

import pytest

from dualbladed.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.registry import Session, SessionRegistry


def _register(reg: SessionRegistry, label: str = "t", uid: int = 1000) -> Session:
    return reg.register(pid=123, uid=uid, gid=100, tenant_label=label, arena=Arena.create(4096))


def test_register_and_authenticate() -> None:
    reg = SessionRegistry(4)
    s = _register(reg, "llama", uid=1000)
    assert len(s.token) == 32 and int(s.token, 16) >= 0  # 128 bits, hex
    assert s.tenant == "1000/llama"
    assert reg.authenticate(s.token) is s
    assert s.token not in repr(s)
    other = _register(reg)
    assert other.token != s.token and other.id != s.id


@pytest.mark.parametrize("token", [None, "", "0" * 32, "not-a-token", "\udcff"])
def test_authenticate_rejects_missing_and_unknown(token: str | None) -> None:
    reg = SessionRegistry(4)
    _register(reg)
    with pytest.raises(Unauthenticated, match="unknown or expired session token"):
        reg.authenticate(token)


def test_end_invalidates_token_calls_back_once_and_closes_arena() -> None:
    reg = SessionRegistry(4)
    calls: list[tuple[str, bool]] = []
    reg.on_end(lambda sess: calls.append((sess.id, sess.arena.closed)))
    s = _register(reg)
    assert reg.check_live(s) is s
    assert reg.end(s.id) is True
    assert reg.end(s.id) is False
    assert calls == [(s.id, False)]  # callbacks run before the arena is closed
    assert s.arena.closed
    with pytest.raises(Unauthenticated):
        reg.authenticate(s.token)
    with pytest.raises(Unauthenticated):
        reg.check_live(s)  # the lease data plane's check
    assert reg.get(s.id) is None and len(reg) == 0


def test_failing_callback_does_not_stop_the_others() -> None:
    reg = SessionRegistry(2)
    seen: list[str] = []

    def bad(_s: Session) -> None:
        raise RuntimeError("boom")

    reg.on_end(bad)
    reg.on_end(lambda sess: seen.append(sess.id))
    s = _register(reg)
    reg.end(s.id)
    assert seen == [s.id]


def test_callbacks_run_outside_the_lock_and_may_reenter() -> None:
    reg = SessionRegistry(4)
    observed: list[int] = []
    reg.on_end(lambda _s: observed.append(len(reg.sessions())))
    s = _register(reg)
    _register(reg)
    reg.end(s.id)  # would deadlock if the callback ran under the registry lock
    assert observed == [1]


def test_max_sessions_and_counts() -> None:
    reg = SessionRegistry(3)
    a = _register(reg, "a")
    _register(reg, "a")
    _register(reg, "b", uid=7)
    with pytest.raises(ResourceExhausted, match="limit 3"):
        _register(reg)
    assert reg.count_by_tenant() == {"1000/a": 2, "7/b": 1}
    assert [x.id for x in reg.sessions()][0] == a.id
    with pytest.raises(InvalidArgument):
        SessionRegistry(0)


def test_racing_enders_produce_exactly_one_callback() -> None:
    reg = SessionRegistry(64)
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def on_end(sess: Session) -> None:
        with lock:
            counts[sess.id] = counts.get(sess.id, 0) + 1

    reg.on_end(on_end)
    sessions = [_register(reg) for _ in range(32)]
    barrier = threading.Barrier(4)

    def ender() -> None:
        barrier.wait()
        for sess in sessions:
            reg.end(sess.id)

    threads = [threading.Thread(target=ender) for _ in range(3)]
    threads.append(threading.Thread(target=lambda: (barrier.wait(), reg.end_all())))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == {s.id: 1 for s in sessions}
    assert len(reg) == 0
