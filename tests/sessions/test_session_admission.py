"""Admission (per-uid limits, reserves) and opening sessions off the handshake thread.

The ledger is tested directly; the opening order (admission before allocation, a vanished peer
stops the work, hellos served concurrently) against a real handshake server on a real
SEQPACKET socket. Only the per-uid gRPC socket is a stand-in here (a counter): the real one is
tested in tests/service/test_uid_sockets.py and end to end in
tests/reliability/test_hostile_sessions.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dualblade import errors as client_errors
from dualblade._handshake import open_session
from dualbladed.config import AdmissionConfig, LimitsConfig
from dualbladed.errors import InvalidArgument, ResourceExhausted
from dualbladed.sessions.admission import AdmissionLimits, Ledger
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.handshake import HandshakeConfig, HandshakeServer
from dualbladed.sessions.registry import SessionRegistry

KIB = 1024
MIB = 1 << 20
GIB = 1 << 30


# ---- the ledger --------------------------------------------------------------------------------


def _limits(**kw: int) -> AdmissionLimits:
    base = {
        "max_sessions": 10,
        "per_uid_sessions": 3,
        "reserved_sessions": 2,
        "arena_bytes": 100 * MIB,
        "per_uid_arena_bytes": 40 * MIB,
        "reserved_arena_bytes": 20 * MIB,
    }
    return AdmissionLimits(**{**base, **kw})


def test_per_uid_session_limit_binds_only_unprivileged_uids() -> None:
    ledger = Ledger(_limits())
    for _ in range(3):
        ledger.admit(1000, 4096, privileged=False)
    with pytest.raises(ResourceExhausted, match="per_uid_sessions"):
        ledger.admit(1000, 4096, privileged=False)
    ledger.admit(1001, 4096, privileged=False)  # another uid is not affected
    for _ in range(4):
        ledger.admit(0, 4096, privileged=True)  # root is not bound per uid
    assert ledger.usage(1000) == (3, 3 * 4096)


def test_the_session_reserve_is_left_to_privileged_uids() -> None:
    ledger = Ledger(_limits(per_uid_sessions=10))
    for _ in range(8):  # max 10, reserve 2
        ledger.admit(1000, 4096, privileged=False)
    with pytest.raises(ResourceExhausted, match="reserved for root"):
        ledger.admit(1001, 4096, privileged=False)
    ledger.admit(0, 4096, privileged=True)
    ledger.admit(0, 4096, privileged=True)
    with pytest.raises(ResourceExhausted, match="too many sessions: 10 open, limit 10"):
        ledger.admit(0, 4096, privileged=True)


def test_arena_bytes_per_uid_reserve_and_total() -> None:
    ledger = Ledger(_limits(per_uid_sessions=10))
    ledger.admit(1000, 40 * MIB, privileged=False)
    with pytest.raises(ResourceExhausted, match="per_uid_arena_bytes"):
        ledger.admit(1000, 4096, privileged=False)
    ledger.admit(1001, 40 * MIB, privileged=False)
    # 80 MiB used, 100 total, 20 reserved: nothing more for the unprivileged...
    with pytest.raises(ResourceExhausted, match="reserved_arena_bytes"):
        ledger.admit(1002, 4096, privileged=False)
    # ...but root gets the reserve, and no more than the total.
    ledger.admit(0, 20 * MIB, privileged=True)
    with pytest.raises(ResourceExhausted, match=r"admission\.arena_bytes"):
        ledger.admit(0, 4096, privileged=True)


def test_release_gives_back_once_and_refusals_charge_nothing() -> None:
    ledger = Ledger(_limits())
    a = ledger.admit(1000, 40 * MIB, privileged=False)
    with pytest.raises(ResourceExhausted):
        ledger.admit(1000, 4096, privileged=False)
    assert ledger.usage(1000) == (1, 40 * MIB)
    assert ledger.release(a) is True
    assert ledger.release(a) is False
    assert (ledger.usage(1000), ledger.total_sessions, ledger.total_arena_bytes) == ((0, 0), 0, 0)


def test_defaults_are_sized_from_the_machine() -> None:
    lim = AdmissionLimits.resolve(AdmissionConfig(), max_sessions=256, mem_total=24 * GIB)
    assert (lim.per_uid_sessions, lim.reserved_sessions) == (64, 16)
    assert (lim.arena_bytes, lim.per_uid_arena_bytes) == (12 * GIB, 6 * GIB)
    assert lim.reserved_arena_bytes == 12 * GIB // 8
    tiny = AdmissionLimits.resolve(AdmissionConfig(), max_sessions=1, mem_total=GIB)
    assert (tiny.per_uid_sessions, tiny.reserved_sessions) == (1, 0)
    explicit = AdmissionLimits.resolve(
        AdmissionConfig(per_uid_sessions=5, arena_bytes=GIB, reserved_arena_bytes=0), 64
    )
    assert (explicit.per_uid_sessions, explicit.arena_bytes, explicit.reserved_arena_bytes) == (
        5,
        GIB,
        0,
    )


def test_a_reserve_that_leaves_nothing_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="reserved_sessions"):
        AdmissionLimits.resolve(AdmissionConfig(reserved_sessions=8), max_sessions=8)
    with pytest.raises(InvalidArgument, match="reserved_arena_bytes"):
        AdmissionLimits.resolve(AdmissionConfig(arena_bytes=GIB, reserved_arena_bytes=GIB), 8)


# ---- opening through a real handshake server ---------------------------------------------------


class FakeSockets:
    """Counts references like UidSockets; ``gate`` holds acquire() until the test releases it."""

    def __init__(self) -> None:
        self.refs = 0
        self.acquired = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def acquire(self, uid: int) -> str:
        self.acquired.set()
        assert self.gate.wait(10)
        with self.lock:
            self.refs += 1
        return f"/nonexistent/uid/{uid}/grpc.sock"

    def release(self, uid: int) -> None:
        with self.lock:
            self.refs -= 1


def _server(
    path: Path,
    admission: AdmissionLimits,
    make_arena: Callable[[int], Arena],
    sockets: FakeSockets | None = None,
) -> tuple[HandshakeServer, SessionRegistry]:
    registry = SessionRegistry(admission.max_sessions, admission)
    limits = LimitsConfig(
        default_arena_bytes=64 * KIB, max_arena_bytes=4 * MIB, max_sessions=admission.max_sessions
    )
    server = HandshakeServer(
        str(path),
        registry,
        HandshakeConfig(limits, hello_timeout_s=2.0),
        make_arena=make_arena,
        is_privileged=lambda uid, gid, pid: False,  # this test runs as root: treat it as anyone
        grpc_sockets=sockets,
    )
    server.start()
    return server, registry


def test_admission_refuses_before_any_arena_is_created(tmp_path: Path) -> None:
    made: list[int] = []

    def make_arena(n: int) -> Arena:
        made.append(n)
        return Arena.create(n)

    lim = _limits(per_uid_arena_bytes=1 * MIB, per_uid_sessions=10)
    server, registry = _server(tmp_path / "hs.sock", lim, make_arena)
    try:
        with (
            open_session(server.path, "ok", 1 * MIB),
            pytest.raises(client_errors.ResourceExhausted, match="per_uid_arena_bytes"),
        ):
            open_session(server.path, "too-much", 4 * MIB)
        assert made == [1 * MIB]  # the refused hello allocated nothing
    finally:
        server.stop()
    assert registry.usage(0) == (0, 0)


def test_the_grant_names_the_uid_grpc_socket_and_ending_releases_it(tmp_path: Path) -> None:
    sockets = FakeSockets()
    server, registry = _server(tmp_path / "hs.sock", _limits(), Arena.create, sockets)
    try:
        with open_session(server.path, "t", 64 * KIB) as hs:
            assert hs.grpc_socket == "/nonexistent/uid/0/grpc.sock"
            assert sockets.refs == 1
        deadline = time.monotonic() + 2
        while (sockets.refs or len(registry)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (sockets.refs, len(registry)) == (0, 0)
    finally:
        server.stop()


def test_a_peer_that_hangs_up_mid_open_gets_nothing_allocated(tmp_path: Path) -> None:
    made: list[int] = []

    def make_arena(n: int) -> Arena:
        made.append(n)
        return Arena.create(n)

    sockets = FakeSockets()
    sockets.gate.clear()
    server, registry = _server(tmp_path / "hs.sock", _limits(), make_arena, sockets)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(server.path)
        sock.send(json.dumps({"v": 1, "tenant": "gone", "arena_bytes": 1 * MIB}).encode())
        assert sockets.acquired.wait(5)  # admitted; the opener now waits in acquire()
        assert registry.usage(0) == (1, 1 * MIB)
        sock.close()
        sockets.gate.set()
        deadline = time.monotonic() + 2
        while (registry.usage(0) != (0, 0) or sockets.refs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert made == []  # the arena was never created
        assert (registry.usage(0), sockets.refs, len(registry)) == ((0, 0), 0, 0)
        with open_session(server.path, "after", 64 * KIB):  # and the server is fine
            pass
    finally:
        server.stop()


def test_a_slow_open_does_not_hold_up_other_hellos(tmp_path: Path) -> None:
    release = threading.Event()

    def make_arena(n: int) -> Arena:
        if n == 2 * MIB:  # the slow one
            assert release.wait(10)
        return Arena.create(n)

    server, _registry = _server(tmp_path / "hs.sock", _limits(per_uid_sessions=10), make_arena)
    slow: dict[str, object] = {}
    t = threading.Thread(
        target=lambda: slow.setdefault("hs", open_session(server.path, "s", 2 * MIB))
    )
    try:
        t.start()
        time.sleep(0.2)  # the slow hello is in its opener
        began = time.monotonic()
        with open_session(server.path, "quick", 64 * KIB):
            quick_s = time.monotonic() - began
        assert "hs" not in slow  # still blocked...
        assert quick_s < 1.0  # ...while the quick one was served
        release.set()
        t.join(10)
        slow["hs"].close()  # type: ignore[attr-defined]
    finally:
        release.set()
        server.stop()


def test_accepts_are_rate_limited_and_the_backlog_waits(tmp_path: Path) -> None:
    """50 accepts/s with bursts of 5: 30 handshakes cannot finish in less than (30 - 5) / 50 s,
    and none is refused for it (they wait in the kernel's backlog)."""
    registry = SessionRegistry(64)
    limits = LimitsConfig(default_arena_bytes=64 * KIB, max_arena_bytes=1 * MIB, max_sessions=64)
    server = HandshakeServer(
        str(tmp_path / "hs.sock"),
        registry,
        HandshakeConfig(limits, max_accepts_per_s=50.0),
        make_arena=Arena.create,
    )
    server.start()
    try:
        began = time.monotonic()
        for i in range(30):
            open_session(server.path, f"t{i}", 64 * KIB).close()
        assert time.monotonic() - began >= (30 - 5) / 50
    finally:
        server.stop()
    with pytest.raises(InvalidArgument, match="max_accepts_per_s"):
        HandshakeConfig(limits, max_accepts_per_s=0)
