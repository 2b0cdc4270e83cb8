"""The handshake server against real clients: threads and real subprocesses, real SEQPACKET sockets.

Nothing is mocked: SO_PEERCRED, SO_PEERPIDFD/pidfd_open, SCM_RIGHTS and memfd seals are the
kernel's. Every server runs on a socket under tmp_path.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import mmap
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from dualblade import errors as client_errors
from dualblade._handshake import open_session
from dualbladed.config import LimitsConfig
from dualbladed.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from dualbladed.sessions import peer as peer_mod
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.handshake import HandshakeConfig, HandshakeServer
from dualbladed.sessions.hello import parse_hello
from dualbladed.sessions.leaseframes import DEFAULT_MAX_FRAME_BYTES, FrameWorkers, LeaseWriter
from dualbladed.sessions.registry import Session, SessionRegistry
from wait_utils import EVENTUAL_S, SchedulerLag, wait_until

KIB = 1024


@dataclass
class Harness:
    path: str
    registry: SessionRegistry
    server: HandshakeServer
    ended: list[str] = field(default_factory=list)
    ended_at: dict[str, float] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_end(self, session: Session) -> None:
        with self.cond:
            self.ended.append(session.id)
            self.ended_at[session.id] = time.monotonic()
            self.cond.notify_all()

    def wait_ended(self, session_id: str, timeout: float = EVENTUAL_S) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: session_id in self.ended, timeout)


def _make_server(
    path: Path,
    *,
    max_sessions: int = 64,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    make_arena: Callable[[int], Arena] = lambda n: Arena.create(n, prefault=False),
    **options: Any,
) -> Harness:
    registry = SessionRegistry(max_sessions)
    limits = LimitsConfig(
        default_arena_bytes=64 * KIB, max_arena_bytes=1024 * KIB, max_sessions=max_sessions
    )
    config = HandshakeConfig(
        limits, hello_timeout_s=0.5, max_pending=16, max_frame_bytes=max_frame_bytes
    )
    server = HandshakeServer(str(path), registry, config, make_arena=make_arena, **options)
    harness = Harness(str(path), registry, server)
    registry.on_end(harness.on_end)
    server.start()
    return harness


@pytest.fixture
def hs(tmp_path: Path) -> Iterator[Harness]:
    harness = _make_server(tmp_path / "hs.sock")
    yield harness
    harness.server.stop()


def _exchange(path: str, payload: bytes, timeout: float = 2.0) -> tuple[dict, socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(timeout)
    sock.connect(path)
    sock.send(payload)
    msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 4)
    for fd in fds:
        os.close(fd)
    return json.loads(msg), sock


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- identity, token, arena --------------------------------------------------------------------


def test_session_from_a_thread_carries_kernel_credentials(hs: Harness) -> None:
    result: dict[str, object] = {}

    def client() -> None:
        result["hs"] = open_session(hs.path, "llama-7b", 128 * KIB)

    t = threading.Thread(target=client)
    t.start()
    t.join(5)
    r = result["hs"]
    session = hs.registry.authenticate(r.token)
    assert (session.pid, session.uid, session.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert session.tenant == f"{os.getuid()}/llama-7b" == r.tenant
    assert session.pidfd is not None
    assert r.session_id == session.id and r.arena_bytes == 128 * KIB and r.alignment == 4096
    assert r.limits["max_arena_bytes"] == 1024 * KIB
    r.close()


def test_default_arena_size_and_socket_mode(hs: Harness) -> None:
    assert stat.S_IMODE(os.stat(hs.path).st_mode) == 0o660
    with open_session(hs.path, "t") as r:
        assert r.arena_bytes == 64 * KIB


def test_arena_fd_is_sealed_and_shared_both_ways(hs: Harness) -> None:
    with open_session(hs.path, "t", 64 * KIB) as r:
        assert fcntl.fcntl(r.arena_fd, fcntl.F_GET_SEALS) == (
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
        with pytest.raises(OSError) as info:
            os.ftruncate(r.arena_fd, 0)
        assert info.value.errno == errno.EPERM
        mine = mmap.mmap(r.arena_fd, r.arena_bytes, mmap.MAP_SHARED)
        daemon_side = hs.registry.authenticate(r.token).arena
        mine[0:6] = b"client"
        assert bytes(daemon_side.view(0, 6)) == b"client"
        daemon_side.view(8192, 6)[:] = b"daemon"
        assert mine[8192:8198] == b"daemon"
        mine.close()


CHILD = r"""
import fcntl, json, mmap, os, sys
from dualblade._handshake import open_session
r = open_session(sys.argv[1], "child", 65536)
m = mmap.mmap(r.arena_fd, r.arena_bytes, mmap.MAP_SHARED)
m[0:10] = b"from-child"
try:
    os.ftruncate(r.arena_fd, 0)
    trunc = 0
except OSError as e:
    trunc = e.errno
print(json.dumps({"pid": os.getpid(), "uid": os.getuid(), "session_id": r.session_id,
                  "seals": fcntl.fcntl(r.arena_fd, fcntl.F_GET_SEALS), "trunc": trunc}), flush=True)
sys.stdin.readline()
print(json.dumps({"read": m[4096:4107].decode()}), flush=True)
sys.stdin.readline()
"""


def _spawn_child(path: str) -> tuple[subprocess.Popen[str], dict]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, "child failed to open a session"
    return child, json.loads(line)


def test_subprocess_client_peercred_arena_and_sigkill_lease(hs: Harness) -> None:
    child, info = _spawn_child(hs.path)
    try:
        session = hs.registry.get(info["session_id"])
        assert session is not None
        assert session.pid == info["pid"] == child.pid
        assert session.uid == info["uid"] == os.getuid()
        assert info["seals"] == 7 and info["trunc"] == errno.EPERM
        assert bytes(session.arena.view(0, 10)) == b"from-child"
        session.arena.view(4096, 11)[:] = b"from-daemon"
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline()) == {"read": "from-daemon"}

        with SchedulerLag() as lag:
            killed = time.monotonic()
            child.send_signal(signal.SIGKILL)
            assert hs.wait_ended(session.id)
        # Within 1 s of the SIGKILL, plus the worst wake-up delay this machine added meanwhile.
        assert hs.ended_at[session.id] - killed < 1.0 + lag.worst, lag.worst
        time.sleep(0.1)
        assert hs.ended.count(session.id) == 1
        with pytest.raises(Unauthenticated):
            hs.registry.authenticate(session.token)
    finally:
        child.kill()
        child.wait()


def test_closing_the_lease_ends_the_session(hs: Harness) -> None:
    r = open_session(hs.path, "t")
    token = r.token
    hs.registry.authenticate(token)
    closed = time.monotonic()
    r.close()
    assert hs.wait_ended(r.session_id, timeout=1.0)
    assert hs.ended_at[r.session_id] - closed < 1.0
    with pytest.raises(Unauthenticated, match="unknown or expired session token"):
        hs.registry.authenticate(token)


def test_ending_a_session_elsewhere_closes_its_lease(hs: Harness) -> None:
    with open_session(hs.path, "t") as r:
        hs.registry.end(r.session_id)
        r.lease.settimeout(1.0)
        assert r.lease.recv(16) == b""  # EOF: the daemon dropped the lease


def test_data_on_the_lease_is_a_frame_not_the_end_of_the_session(hs: Harness) -> None:
    # This server has no on_request handler: every frame is answered UNIMPLEMENTED (12), a frame
    # shorter than its 8-byte id INVALID_ARGUMENT (3) with id 0; the lease itself lives on.
    with open_session(hs.path, "t") as r:
        assert "lease_frame_max_bytes" not in r.limits  # no data plane offered
        r.lease.settimeout(2.0)
        r.lease.send(b"hello again")
        reply = r.lease.recv(4096)
        assert struct.unpack_from("<QI", reply) == (int.from_bytes(b"hello ag", "little"), 12)
        r.lease.send(b"hi")
        assert struct.unpack_from("<QI", r.lease.recv(4096)) == (0, 3)
        assert not hs.wait_ended(r.session_id, timeout=0.2)
        assert hs.registry.authenticate(r.token).id == r.session_id


def test_frames_reach_on_request_and_replies_come_back(tmp_path: Path) -> None:
    seen: list[tuple[str, bytes]] = []

    def echo(session: Session, frame: bytes) -> bytes:
        seen.append((session.id, frame))
        return frame[:8] + b"\0\0\0\0" + frame[8:].upper()

    harness = _make_server(tmp_path / "hs.sock", on_request=echo, max_frame_bytes=1024)
    try:
        with open_session(harness.path, "t") as r:
            assert r.limits["lease_frame_max_bytes"] == 1024
            r.lease.settimeout(2.0)
            r.lease.send(struct.pack("<Q", 5) + b"abc")
            assert r.lease.recv(4096) == struct.pack("<QI", 5, 0) + b"ABC"
            assert seen == [(r.session_id, struct.pack("<Q", 5) + b"abc")]
            r.lease.send(struct.pack("<Q", 6) + bytes(1024))  # above max_frame_bytes
            reply = r.lease.recv(4096)
            assert struct.unpack_from("<QI", reply) == (6, 8)  # RESOURCE_EXHAUSTED
            assert len(seen) == 1
            r.lease.send(struct.pack("<Q", 7) + b"ok")
            assert r.lease.recv(4096) == struct.pack("<QI", 7, 0) + b"OK"
    finally:
        harness.server.stop()


@pytest.mark.parametrize("ending", ["close", "empty datagram"])
def test_frames_in_flight_run_concurrently_and_idle_readers_retire(ending: str) -> None:
    """Standing readers (FrameWorkers on a socketpair): four frames in flight on one lease run at
    once (each handler waits for the other three), afterwards the lease is back to at most two
    parked readers, and EOF (a close, or an empty datagram) makes every reader leave and the last
    one report the close exactly once."""
    inflight = 4
    barrier = threading.Barrier(inflight, timeout=5.0)

    def rendezvous(session: Session, frame: bytes) -> bytes:
        barrier.wait()  # BrokenBarrierError (an INTERNAL reply) unless all four run together
        return frame[:8] + b"\0\0\0\0"

    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    workers = FrameWorkers(rendezvous, max_frame_bytes=1024, workers=inflight, max_leases=1)
    closed: list[str] = []
    session = cast(Session, object())  # the handler never looks at it
    try:
        lease = workers.serve(server.dup(), session, LeaseWriter(server), closed.append)
        client.settimeout(10.0)
        for rounds in range(3):
            for i in range(inflight):
                client.send(struct.pack("<Q", 10 * rounds + i))
            replies = [struct.unpack("<QI", client.recv(64)) for _ in range(inflight)]
            assert sorted(replies) == [(10 * rounds + i, 0) for i in range(inflight)]
        wait_until(lambda: lease.readers <= 2)
        assert 1 <= lease.readers <= 2 and lease.parked == lease.readers
        if ending == "close":
            client.close()
        else:
            client.send(b"")
        wait_until(lambda: closed)
        time.sleep(0.05)  # a second report would come now
        assert closed == ["lease socket closed"] and lease.readers == 0
    finally:
        workers.close()
        server.close()
        client.close()


# ---- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hello", "code", "needle"),
    [
        ({"v": 1, "tenant": "has space"}, "INVALID_ARGUMENT", "tenant label"),
        ({"v": 1, "tenant": ""}, "INVALID_ARGUMENT", "tenant label"),
        ({"v": 1, "tenant": "x" * 65}, "INVALID_ARGUMENT", "tenant label"),
        ({"v": 1, "tenant": "ok\n"}, "INVALID_ARGUMENT", "tenant label"),
        ({"v": 1, "tenant": 5}, "INVALID_ARGUMENT", "tenant label"),
        ({"v": 1, "tenant": "t", "arena_bytes": 5000}, "INVALID_ARGUMENT", "not aligned"),
        ({"v": 1, "tenant": "t", "arena_bytes": 0}, "OUT_OF_RANGE", "outside"),
        ({"v": 1, "tenant": "t", "arena_bytes": 2048 * KIB}, "OUT_OF_RANGE", "outside"),
        ({"v": 1, "tenant": "t", "arena_bytes": True}, "INVALID_ARGUMENT", "integer"),
        ({"v": 1, "tenant": "t", "arena_bytes": "4096"}, "INVALID_ARGUMENT", "integer"),
        ({"v": 2, "tenant": "t"}, "INVALID_ARGUMENT", "version"),
        ({"v": True, "tenant": "t"}, "INVALID_ARGUMENT", "version"),
        ({"tenant": "t"}, "INVALID_ARGUMENT", "version"),
        ({"v": 1, "tenant": "t", "uid": 0}, "INVALID_ARGUMENT", "unknown hello field"),
        ([1, 2], "INVALID_ARGUMENT", "JSON object"),
    ],
)
def test_bad_hellos_get_an_error_reply_and_a_close(
    hs: Harness, hello: object, code: str, needle: str
) -> None:
    reply, sock = _exchange(hs.path, json.dumps(hello).encode())
    with sock:
        assert reply["v"] == 1
        assert reply["error"]["code"] == code
        assert needle in reply["error"]["message"]
        assert sock.recv(16) == b""
    assert len(hs.registry) == 0


def test_client_maps_error_replies_to_typed_exceptions(hs: Harness) -> None:
    with pytest.raises(client_errors.InvalidArgument) as info:
        open_session(hs.path, "bad/label")
    assert info.value.code == "INVALID_ARGUMENT" and "tenant label" in str(info.value)
    with pytest.raises(client_errors.OutOfRange):
        open_session(hs.path, "t", 4096 * KIB)


def test_no_daemon_is_a_clear_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    with pytest.raises(client_errors.Unavailable, match=f"no dualbladed listening on {path}"):
        open_session(path, "t")


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe garbage", b"{", b"[" * 4000, b"null", b'{"v": 1e999}', b"x" * 5000],
)
def test_garbage_and_oversize_datagrams_leave_the_server_serving(
    hs: Harness, payload: bytes
) -> None:
    reply, sock = _exchange(hs.path, payload)
    sock.close()
    assert reply["error"]["code"] == "INVALID_ARGUMENT"
    if len(payload) > 4096:
        assert "exceeds 4096 bytes" in reply["error"]["message"]
    with open_session(hs.path, "still-alive") as r:
        assert hs.registry.authenticate(r.token).tenant_label == "still-alive"


def test_a_hello_carrying_fds_is_refused_without_leaking_them(hs: Harness) -> None:
    before = _fd_count()
    donor = os.memfd_create("donor")
    for _ in range(20):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(2)
        sock.connect(hs.path)
        hello = json.dumps({"v": 1, "tenant": "t"}).encode()
        fds = array.array("i", [donor, donor])
        sock.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        reply = json.loads(sock.recv(65536))
        sock.close()
        assert "must not carry file descriptors" in reply["error"]["message"]
    os.close(donor)
    assert wait_until(lambda: _fd_count() == before), (_fd_count(), before)


def test_max_sessions_and_tenant_policy(tmp_path: Path) -> None:
    def allow(uid: int, label: str) -> None:
        if label == "forbidden":
            raise PermissionDenied(f"uid {uid} may not use tenant {label!r}")

    h = _make_server(tmp_path / "hs.sock", max_sessions=2, allow_tenant=allow)
    try:
        with pytest.raises(client_errors.PermissionDenied, match="may not use tenant"):
            open_session(h.path, "forbidden")
        a, b = open_session(h.path, "a"), open_session(h.path, "b")
        with pytest.raises(client_errors.ResourceExhausted, match="too many sessions"):
            open_session(h.path, "c")
        a.close()
        assert h.wait_ended(a.session_id)
        open_session(h.path, "c").close()
        b.close()
    finally:
        h.server.stop()


def test_arena_creation_failure_is_resource_exhausted(tmp_path: Path) -> None:
    def no_memory(n: int) -> Arena:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    h = _make_server(tmp_path / "hs.sock", make_arena=no_memory)
    try:
        with pytest.raises(client_errors.ResourceExhausted, match="cannot create an arena"):
            open_session(h.path, "t")
    finally:
        h.server.stop()


# ---- half-open connections, floods, leaks --------------------------------------------------------


def test_half_open_connection_is_closed_after_the_hello_timeout(hs: Harness) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(EVENTUAL_S)
    with SchedulerLag() as lag:
        sock.connect(hs.path)
        started = time.monotonic()
        assert sock.recv(16) == b""  # the server hung up on us
        elapsed = time.monotonic() - started
    # The harness's 0.5 s hello timeout, not the 2 s default: 1 s of slack on a quiet machine,
    # plus the worst wake-up delay the machine added while we waited.
    assert 0.3 < elapsed < 1.5 + lag.worst, (elapsed, lag.worst)
    sock.close()
    with open_session(hs.path, "t"):
        pass


def test_flood_of_connections_leaves_the_server_serving(hs: Harness) -> None:
    flood = []
    for _ in range(200):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5)
        deadline = time.monotonic() + 5
        while True:
            try:
                sock.connect(hs.path)
                break
            except BlockingIOError:  # the listen backlog is full: AF_UNIX says EAGAIN
                assert time.monotonic() < deadline, "the server stopped accepting"
                time.sleep(0.001)
        flood.append(sock)
    # A real client still gets through while 200 idle connections are open.
    with open_session(hs.path, "real") as r:
        assert hs.registry.authenticate(r.token).tenant_label == "real"
    for sock in flood:
        sock.close()
    with open_session(hs.path, "after-flood") as r:
        assert hs.registry.authenticate(r.token)


def test_clients_vanishing_mid_handshake_do_not_hurt(hs: Harness) -> None:
    for _ in range(30):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(hs.path)
        sock.send(json.dumps({"v": 1, "tenant": "gone"}).encode())
        sock.close()  # before the reply arrives
    assert wait_until(lambda: len(hs.registry) == 0), len(hs.registry)
    with open_session(hs.path, "t"):
        pass


def test_no_fd_leak_after_many_sessions(hs: Harness) -> None:
    with open_session(hs.path, "warmup") as warmup:
        pass
    assert hs.wait_ended(warmup.session_id)
    before = _fd_count()
    ids = []
    for i in range(60):
        r = open_session(hs.path, f"t{i % 3}")
        ids.append(r.session_id)
        r.close()
        _exchange(hs.path, b"garbage")[1].close()
    for sid in ids:
        assert hs.wait_ended(sid)
    # At most the baseline: an fd that was still closing when it was taken may be gone by now.
    assert wait_until(lambda: _fd_count() <= before), (_fd_count(), before)


# ---- lifecycle ---------------------------------------------------------------------------------


def test_stop_ends_every_session_and_removes_the_socket(tmp_path: Path) -> None:
    h = _make_server(tmp_path / "hs.sock")
    results = [open_session(h.path, "t") for _ in range(3)]
    h.server.stop()
    assert sorted(h.ended) == sorted(r.session_id for r in results)
    assert len(h.registry) == 0
    assert not os.path.exists(h.path)
    for r in results:
        r.lease.settimeout(1)
        assert r.lease.recv(16) == b""
        r.close()
    with pytest.raises(client_errors.Unavailable):
        open_session(h.path, "t")


def test_stale_socket_is_replaced_but_a_regular_file_is_not(tmp_path: Path) -> None:
    stale = tmp_path / "hs.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old.bind(str(stale))
    old.close()  # leaves the socket file behind, as a crashed daemon would
    h = _make_server(stale)
    try:
        with open_session(h.path, "t"):
            pass
    finally:
        h.server.stop()
    regular = tmp_path / "not-a-socket"
    regular.write_text("precious")
    registry = SessionRegistry(1)
    limits = LimitsConfig(default_arena_bytes=4096, max_arena_bytes=4096, max_sessions=1)
    server = HandshakeServer(regular, registry, HandshakeConfig(limits), make_arena=Arena.create)
    with pytest.raises(FailedPrecondition, match="is not a socket"):
        server.start()
    assert regular.read_text() == "precious"


def test_parse_hello_defaults_arena_bytes() -> None:
    hello = parse_hello(
        b'{"v": 1, "tenant": "a.b-c_9"}', default_arena_bytes=8192, max_arena_bytes=8192
    )
    assert (hello.tenant, hello.arena_bytes) == ("a.b-c_9", 8192)


FORKING_CHILD = r"""
import json, os, sys, time
from dualblade._handshake import open_session
r = open_session(sys.argv[1], "forker", 65536)
pid = os.fork()
if pid == 0:  # the grandchild inherits the lease socket and outlives its parent
    time.sleep(30)
    os._exit(0)
print(json.dumps({"session_id": r.session_id, "grandchild": pid}), flush=True)
sys.stdin.readline()
"""


def test_pidfd_ends_the_session_when_a_forked_child_keeps_the_lease(hs: Harness) -> None:
    """The lease socket stays open in the grandchild; only the pidfd sees the opener die."""
    child = subprocess.Popen(
        [sys.executable, "-c", FORKING_CHILD, hs.path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    info = json.loads(child.stdout.readline())
    try:
        assert hs.registry.get(info["session_id"]) is not None
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        assert hs.wait_ended(info["session_id"], timeout=2.0)
        assert hs.ended_at[info["session_id"]] - killed < 1.0
    finally:
        child.kill()
        child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["grandchild"], signal.SIGKILL)


def test_pidfd_open_fallback_without_so_peerpidfd(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels before 6.5 answer ENOPROTOOPT to SO_PEERPIDFD; pidfd_open(pid) takes over."""
    monkeypatch.setattr(peer_mod, "SO_PEERPIDFD", 0x7FFF)  # an option no kernel knows
    with open_session(hs.path, "old-kernel") as r:
        session = hs.registry.authenticate(r.token)
        assert session.pidfd is not None
        assert os.readlink(f"/proc/self/fd/{session.pidfd}") == "anon_inode:[pidfd]"
    assert hs.wait_ended(r.session_id, timeout=1.0)
