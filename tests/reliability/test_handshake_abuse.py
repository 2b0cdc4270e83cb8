"""Abuse of the handshake socket of a LIVE dualbladed: it keeps serving and leaks no fds.

Every test measures the daemon's open fds (``/proc/<pid>/fd``) before the abuse, does it, checks
that a brand-new session still works, and waits for the fd count to come back to the baseline
(pending connections are closed after the 2 s hello timeout, leases at once on EOF).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualblade import Client, errors
from dualblade._handshake import open_session
from dualblade_tools.daemonproc import DaemonProcess
from wait_utils import SchedulerLag

HELLO_TIMEOUT_S = 2.0  # dualbladed.sessions.handshake.HandshakeServer's default


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("hs") / "d") as d:
        # Warm up: the first session creates gRPC/arena machinery that stays (not a leak).
        _serves(d)
        yield d


def _hs_path(d: DaemonProcess) -> str:
    return str(Path(d.socket).parent / "handshake.sock")


def _fds(d: DaemonProcess) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def _serves(d: DaemonProcess) -> None:
    with Client.connect(d.socket, tenant="probe", arena_bytes=1 << 16) as c:
        c.put(b"probe", b"p" * 5000)
        assert c.get(b"probe") == b"p" * 5000


def _back_to(d: DaemonProcess, baseline: int, timeout: float = HELLO_TIMEOUT_S + 8) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = _fds(d)
        if n <= baseline or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def _alive_and_clean(d: DaemonProcess, baseline: int) -> None:
    assert d.proc is not None and d.proc.poll() is None, d.log_tail()
    _serves(d)
    assert _back_to(d, baseline) <= baseline


def _seqpacket(d: DaemonProcess) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(_hs_path(d))
    return s


GARBAGE = [
    b"",  # a zero-length datagram
    b"\x00" * 16,
    os.urandom(100),
    os.urandom(4096),
    os.urandom(4097),  # above HELLO_MAX_BYTES
    os.urandom(60000),
    b"\xff\xfe not utf-8",
    b"[" * 100000,  # nesting deep enough to overflow a recursive parser (and > 4096 bytes)
    b"[" * 4000,
    b"null",
    b"[]",
    b'"hello"',
    b'{"v": 2, "tenant": "a"}',
    b'{"v": 1}',
    b'{"v": 1, "tenant": ""}',
    b'{"v": 1, "tenant": "../../etc"}',
    b'{"v": 1, "tenant": "' + b"a" * 65 + b'"}',
    b'{"v": 1, "tenant": "a", "arena_bytes": -4096}',
    b'{"v": 1, "tenant": "a", "arena_bytes": 4097}',
    b'{"v": 1, "tenant": "a", "arena_bytes": 1e300}',
    b'{"v": 1, "tenant": "a", "arena_bytes": 1267650600228229401496703205376}',
    b'{"v": 1, "tenant": "a", "arena_bytes": "4096"}',
    b'{"v": 1, "tenant": "a", "uid": 0}',  # unknown field: identity never comes from the hello
    b'{"v": true, "tenant": "a"}',
]


@pytest.mark.parametrize("payload", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_hello_gets_an_error_or_eof_never_a_session(
    daemon: DaemonProcess, payload: bytes
) -> None:
    baseline = _fds(daemon)
    s = _seqpacket(daemon)
    try:
        with contextlib.suppress(OSError):  # EMSGSIZE above the socket buffer: also fine
            s.send(payload)
        msg, fds, _flags, _ = socket.recv_fds(s, 65536, 4)
    finally:
        s.close()
    for fd in fds:
        os.close(fd)
    assert fds == [], "an arena fd was handed out for a bad hello"
    if msg:
        reply = json.loads(msg)
        assert reply["error"]["code"] in {"INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION"}
    _alive_and_clean(daemon, baseline)


def test_hello_carrying_fds_is_refused_and_the_fds_do_not_leak(daemon: DaemonProcess) -> None:
    baseline = _fds(daemon)
    r, w = os.pipe()
    try:
        s = _seqpacket(daemon)
        with s:
            hello = json.dumps({"v": 1, "tenant": "a", "arena_bytes": 4096}).encode()
            s.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]))])
            msg, fds, _flags, _ = socket.recv_fds(s, 65536, 4)
        assert fds == []
        assert json.loads(msg)["error"]["code"] == "INVALID_ARGUMENT"
    finally:
        os.close(r)
        os.close(w)
    _alive_and_clean(daemon, baseline)


def test_half_open_and_abandoned_connections(daemon: DaemonProcess) -> None:
    baseline = _fds(daemon)
    silent = [_seqpacket(daemon) for _ in range(40)]  # connect, say nothing
    half = []
    for _ in range(20):  # connect, close our write side: EOF before any hello
        s = _seqpacket(daemon)
        s.shutdown(socket.SHUT_WR)
        half.append(s)
    for _ in range(20):  # send a hello and vanish before the reply (the arena send hits EPIPE)
        s = _seqpacket(daemon)
        s.send(json.dumps({"v": 1, "tenant": "gone", "arena_bytes": 4096}).encode())
        s.close()
    # While the silent ones are still pending, a real client gets through.
    _serves(daemon)
    # The daemon closes the silent ones itself after the hello timeout: we see EOF.
    start = time.monotonic()
    for s in silent:
        s.settimeout(HELLO_TIMEOUT_S + 10)
        assert s.recv(100) == b""
    assert time.monotonic() - start < HELLO_TIMEOUT_S + 10
    for s in silent + half:
        s.close()
    _alive_and_clean(daemon, baseline)


def test_connection_flood_does_not_lock_out_a_real_client(daemon: DaemonProcess) -> None:
    """500 idle connections (the pending limit is 64, oldest dropped), then real sessions."""
    baseline = _fds(daemon)
    flood: list[socket.socket] = []
    try:
        for _ in range(500):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.setblocking(False)
            try:
                s.connect(_hs_path(daemon))
            except BlockingIOError:
                s.close()  # backlog full right now: the flood is doing its job
                continue
            flood.append(s)
        assert len(flood) > 100
        with SchedulerLag() as lag:
            t0 = time.monotonic()
            _serves(daemon)  # while the flood still holds its sockets
            took = time.monotonic() - t0
        # Queued behind the flood it would wait out hello timeouts (500 / 64 x 2 s); served at
        # once it takes milliseconds, plus what a loaded machine's scheduler adds.
        assert took < 5.0 + lag.worst, (took, lag.worst)
    finally:
        for s in flood:
            s.close()
    _alive_and_clean(daemon, baseline)


def test_session_flood_beyond_max_sessions_is_refused_then_reclaimed(
    daemon: DaemonProcess,
) -> None:
    """300 real sessions against max_sessions=256: the excess get RESOURCE_EXHAUSTED."""
    baseline = _fds(daemon)
    opened = []
    refused = 0
    try:
        for i in range(300):
            try:
                opened.append(open_session(_hs_path(daemon), f"t{i % 7}", 4096, timeout=10))
            except errors.ResourceExhausted:
                refused += 1
        assert 200 <= len(opened) <= 256
        assert refused == 300 - len(opened)
    finally:
        for hs in opened:
            hs.close()
    # Leases end asynchronously (the daemon's selector sees each EOF): wait for the slots.
    deadline = time.monotonic() + 10
    while True:
        try:
            open_session(_hs_path(daemon), "after", 4096, timeout=10).close()
            break
        except errors.ResourceExhausted:
            assert time.monotonic() < deadline, "ended sessions were not reclaimed"
            time.sleep(0.05)
    _alive_and_clean(daemon, baseline)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["stream", "dgram"])
def test_wrong_socket_type_cannot_connect(daemon: DaemonProcess, kind: int) -> None:
    baseline = _fds(daemon)
    for _ in range(50):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            with pytest.raises(OSError):
                s.connect(_hs_path(daemon))
                s.send(b'{"v": 1, "tenant": "a"}')  # a dgram "connect" would fail here instead
        finally:
            s.close()
    _alive_and_clean(daemon, baseline)


def test_garbage_after_the_hello_is_refused_frame_by_frame(daemon: DaemonProcess) -> None:
    # Datagrams on the lease are data-plane frames: garbage gets an INVALID_ARGUMENT (3) error
    # frame, the session stays bound to this lease (its token still works), and nothing leaks.
    baseline = _fds(daemon)
    hs = open_session(_hs_path(daemon), "chatty", 4096, timeout=10)
    try:
        hs.lease.settimeout(5)
        for i, junk in enumerate([b"x", b"anything more", b"\xff" * 3000, bytes(9)]):
            hs.lease.send(junk)
            reply = hs.lease.recv(4096)
            request_id, code = struct.unpack_from("<QI", reply)
            expected_id = int.from_bytes(junk[:8], "little") if len(junk) >= 8 else 0
            assert (request_id, code) == (expected_id, 3), (i, reply)
        with Client.connect(daemon.socket, tenant="chatty", arena_bytes=4096) as c:
            _call_with_token(c, hs.token)  # Unauthenticated if the session had ended
    finally:
        hs.close()
    _alive_and_clean(daemon, baseline)


def _call_with_token(c: Client, token: str) -> None:
    import grpc

    from dualblade.v1 import dualblade_pb2 as pb

    try:
        c._store.Session(
            pb.SessionInfoRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )
    except grpc.RpcError as err:
        raise errors.from_code(err.code().name, err.details() or "") from None
