"""Per-uid gRPC sockets and the token gate, in-process, with real gRPC servers on real sockets.

The directories' owners and modes are the kernel's; changing a directory's owner needs root, so
those tests skip without it (naming why). The gate is exercised with the real servicers' shape:
a real StoreServicer answering Session, with a real registry.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade.v1 import wire
from dualbladed.errors import FailedPrecondition
from dualbladed.service import acl
from dualbladed.service.tokengate import TokenGate
from dualbladed.service.uidsockets import UidSockets
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.registry import Session, SessionRegistry
from privdrop_utils import NOBODY, run_as, shared_tmpdir

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to a uid needs root")
OTHER = NOBODY


class _Store(pb_grpc.StoreServicer):
    """Answers Session with the caller's tenant (the real servicer's rpc() does the same check)."""

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def Session(
        self, request: pb.SessionInfoRequest, context: grpc.ServicerContext
    ) -> pb.SessionInfo:
        token = dict(context.invocation_metadata()).get("authorization", "")[len("Bearer ") :]
        try:
            session = self.registry.authenticate(token)
        except Exception as err:  # noqa: BLE001
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
        return pb.SessionInfo(session_id=session.id, tenant=session.tenant)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path is private to root)."""
    with shared_tmpdir("dbuidsock-") as root:
        yield root


@pytest.fixture
def pool() -> Iterator[futures.ThreadPoolExecutor]:
    p = futures.ThreadPoolExecutor(4)
    yield p
    p.shutdown(wait=False)


def _factory(registry: SessionRegistry, pool: futures.ThreadPoolExecutor):
    def make(uid: int | None) -> grpc.Server:
        server = grpc.server(pool, interceptors=[TokenGate(registry, uid)])
        pb_grpc.add_StoreServicer_to_server(_Store(registry), server)
        return server

    return make


def _session(registry: SessionRegistry, uid: int) -> Session:
    return registry.register(
        pid=os.getpid(), uid=uid, gid=uid, tenant_label="t", arena=Arena.create(4096)
    )


def _call(path: str, token: str) -> tuple[str, str]:
    with grpc.insecure_channel(f"unix://{path}") as channel:
        try:
            reply = pb_grpc.StoreStub(channel).Session(
                pb.SessionInfoRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5
            )
        except grpc.RpcError as err:
            return err.code().name, err.details()
    return "OK", reply.tenant


@needs_root
def test_a_uid_gets_a_private_directory_and_socket(open_tmp: Path, pool) -> None:
    tmp_path = open_tmp
    registry = SessionRegistry(8)
    sockets = UidSockets(tmp_path, _factory(registry, pool), linger_s=0.2)
    sockets.start()
    try:
        path = sockets.acquire(OTHER)
        assert path == str(tmp_path / "uid" / str(OTHER) / "grpc.sock")
        base = os.stat(tmp_path / "uid")
        assert (base.st_uid, stat.S_IMODE(base.st_mode)) == (0, 0o711)
        # The daemon keeps both; an ACL lets the uid traverse and connect (the mode's group
        # bits are the ACL mask), and no one else.
        d = os.stat(Path(path).parent)
        assert (d.st_uid, stat.S_IMODE(d.st_mode)) == (0, 0o710)
        assert acl.read_named_entries(str(Path(path).parent)) == {
            "users": {OTHER: acl.X},
            "groups": {},
        }
        s = os.lstat(path)
        assert stat.S_ISSOCK(s.st_mode) and (s.st_uid, stat.S_IMODE(s.st_mode)) == (0, 0o660)
        assert acl.read_named_entries(path) == {"users": {OTHER: acl.R | acl.W}, "groups": {}}
        # The kernel agrees: uid 65534 can connect, uid 65533 cannot.
        assert _connect_as(OTHER, path) == "connected"
        assert _connect_as(OTHER - 1, path) == "PermissionError"
        mine, theirs = _session(registry, 0), _session(registry, OTHER)
        # Each token works on its own uid's socket only.
        assert _call(path, theirs.token) == ("OK", f"{OTHER}/t")
        code, details = _call(path, mine.token)
        assert code == "UNAUTHENTICATED" and "another uid" in details
        # Unknown tokens get the servicer's usual answer.
        assert _call(path, "f" * 32)[0] == "UNAUTHENTICATED"
    finally:
        sockets.stop()


def test_the_shared_socket_refuses_every_token(tmp_path: Path, pool) -> None:
    registry = SessionRegistry(8)
    server = _factory(registry, pool)(None)
    path = str(tmp_path / "grpc.sock")
    assert server.add_insecure_port(f"unix://{path}")
    server.start()
    try:
        session = _session(registry, os.geteuid())
        code, details = _call(path, session.token)
        assert code == "UNAUTHENTICATED" and "shared gRPC socket" in details
    finally:
        server.stop(0).wait()


def test_the_last_release_retires_the_server_after_the_linger(tmp_path: Path, pool) -> None:
    registry = SessionRegistry(8)
    uid = os.geteuid()
    sockets = UidSockets(tmp_path, _factory(registry, pool), linger_s=0.3)
    sockets.start()
    try:
        path = sockets.acquire(uid)
        assert sockets.acquire(uid) == path
        sockets.release(uid)
        sockets.release(uid)
        assert sockets.serving() == {uid: 0}
        # Reacquired within the linger: the same server keeps serving.
        sockets.acquire(uid)
        time.sleep(0.6)
        assert sockets.serving() == {uid: 1} and os.path.exists(path)
        sockets.release(uid)
        deadline = time.monotonic() + 3
        while (sockets.serving() or os.path.exists(path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sockets.serving() == {}
        assert not os.path.exists(path)
        # A new session brings it back.
        session = _session(registry, uid)
        assert _call(sockets.acquire(uid), session.token) == ("OK", f"{uid}/t")
    finally:
        sockets.stop()


def _connect_as(uid: int, path: str) -> str:
    """connect() to ``path`` from a child running as ``uid``: "connected" or the error's type."""
    code = f"""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect({path!r})
            print("connected")
        except OSError as e:
            print(type(e).__name__)
    """
    out = run_as(code, uid=uid, gid=uid, preload=(), timeout=30)
    return out.stdout.strip() or out.stderr[-300:]


@needs_root
def test_without_acls_a_root_daemon_gives_the_directory_away(
    open_tmp: Path, pool, monkeypatch
) -> None:
    """A filesystem without POSIX ACLs (simulated: grant() answers False, as on EOPNOTSUPP)."""
    monkeypatch.setattr(acl, "grant", lambda *a, **kw: False)
    sockets = UidSockets(open_tmp, _factory(SessionRegistry(8), pool), linger_s=0.2)
    sockets.start()
    try:
        path = sockets.acquire(OTHER)
        d, s = os.stat(Path(path).parent), os.lstat(path)
        assert (d.st_uid, stat.S_IMODE(d.st_mode)) == (OTHER, 0o700)
        assert (s.st_uid, stat.S_IMODE(s.st_mode)) == (OTHER, 0o600)
        assert _connect_as(OTHER, path) == "connected"
        assert _connect_as(OTHER - 1, path) == "PermissionError"
    finally:
        sockets.stop()


@needs_root
def test_a_link_in_place_of_a_uid_directory_is_replaced_not_followed(tmp_path: Path, pool) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (tmp_path / "run" / "uid").mkdir(parents=True, mode=0o711)
    os.symlink(victim, tmp_path / "run" / "uid" / str(OTHER))
    sockets = UidSockets(tmp_path / "run", _factory(SessionRegistry(8), pool), linger_s=0.2)
    sockets.start()
    try:
        path = Path(sockets.acquire(OTHER))
        assert not path.parent.is_symlink() and path.parent.is_dir()
        v = os.stat(victim)
        assert (v.st_uid, stat.S_IMODE(v.st_mode)) == (0, 0o755)
        assert list(victim.iterdir()) == []
    finally:
        sockets.stop()


@needs_root
def test_a_base_directory_owned_by_someone_else_is_refused(tmp_path: Path, pool) -> None:
    (tmp_path / "uid").mkdir(mode=0o711)
    os.chown(tmp_path / "uid", OTHER, OTHER)
    sockets = UidSockets(tmp_path, _factory(SessionRegistry(8), pool))
    with pytest.raises(FailedPrecondition, match="owned by uid 65534"):
        sockets.start()


def test_a_runtime_directory_too_long_for_sun_path_still_works(tmp_path: Path, pool) -> None:
    """sockaddr_un holds 107 bytes: longer socket paths are bound and reached through
    /proc/self/fd/<dir fd>/grpc.sock (wire.reachable_path), and the fd goes when the server does."""
    registry = SessionRegistry(8)
    uid = os.geteuid()
    runtime = tmp_path / ("x" * 100)
    runtime.mkdir()
    sockets = UidSockets(runtime, _factory(registry, pool), linger_s=0.1)
    sockets.start()
    try:
        path = sockets.acquire(uid)
        assert len(path) > wire.UNIX_PATH_MAX and os.path.exists(path)
        target, fd = wire.reachable_path(path)
        assert fd is not None and len(target) <= wire.UNIX_PATH_MAX
        try:
            session = _session(registry, uid)
            assert _call(target, session.token) == ("OK", f"{uid}/t")
        finally:
            os.close(fd)
        assert str(Path(path).parent) in _open_paths()  # held while the server lives
        sockets.release(uid)
        deadline = time.monotonic() + 3
        while (sockets.serving() or os.path.exists(path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sockets.serving() == {} and not os.path.exists(path)
    finally:
        sockets.stop()
    assert str(Path(path).parent) not in _open_paths()  # the server's directory fd is gone


def _open_paths() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone by now
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out
