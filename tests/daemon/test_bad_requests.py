"""Every bad request gets a precise status, and none of them hurts the daemon.

Runs the real ``dualbladed`` (DaemonProcess, file namespace under a tmp dir) and talks to it with
raw gRPC stubs, because the SDK validates its input and would never send most of these requests:
a session comes from ``dualblade._handshake.open_session`` and its arena is mapped with
``ClientArena`` so the test can place bytes exactly where a request names them.

The module shares one daemon: the last test checks that after all the abuse it is still alive,
still serves the objects stored by the first test byte for byte, and holds no more file
descriptors than it did before the first bad request (no leaked arena memfds, pidfds, lease or
gRPC connection sockets).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dualblade._handshake import HandshakeResult, open_session
from dualblade.arena import ClientArena
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade_tools.daemonproc import DaemonProcess
from wait_utils import EVENTUAL_S, SchedulerLag

ARENA = 1 << 20
MAX_BATCH_OPS = 8
QUOTA = 64 << 10
C = grpc.StatusCode

CONFIG = f"""
[limits]
max_batch_ops = {MAX_BATCH_OPS}

[quotas.per_tenant]
small = "{QUOTA // 1024}KiB"
"""

#: Stored by the first test, checked byte for byte by the last one.
KEEP = {b"keep/a": os.urandom(3 * 4096 + 17), b"keep/b": os.urandom(64 << 10)}


@dataclass
class Session:
    hs: HandshakeResult
    arena: ClientArena
    stub: pb_grpc.StoreStub
    channel: grpc.Channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.hs.token}"),)

    def batch(self, *ops: pb.Op, stop_on_error: bool = False) -> list[pb.OpResult]:
        request = pb.BatchRequest(ops=list(ops), stop_on_error=stop_on_error)
        return list(self.stub.Batch(request, metadata=self.metadata).results)

    def write(self, offset: int, data: bytes) -> None:
        self.arena._base[offset : offset + len(data)] = data  # type: ignore[index]

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.arena._base[offset : offset + length])  # type: ignore[index]

    def close(self) -> None:
        self.channel.close()
        self.arena.close()
        self.hs.close()


def put(key: bytes, offset: int = 0, length: int = 4096, **kw: object) -> pb.Op:
    return pb.Op(put=pb.PutOp(key=key, arena_offset=offset, length=length, **kw))


def get(key: bytes, offset: int = 0, length: int = 4096) -> pb.Op:
    return pb.Op(get=pb.GetOp(key=key, arena_offset=offset, length=length))


def delete(key: bytes) -> pb.Op:
    return pb.Op(delete=pb.DeleteOp(key=key))


def fd_count(pid: int) -> int:
    """Open fds, less the page-cache path's slab files: the arbiter may place an object there,
    and a slab, once opened, stays open for the life of the store (bounded, not a leak)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        count += "/pagecache/slab-" not in target
    return count


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("bad")
    cfg = root / "d.toml"
    cfg.write_text(CONFIG)
    with DaemonProcess(root / "d", namespace_size="64MiB", config=cfg) as d:
        yield d


@pytest.fixture(scope="module")
def baseline_fds(daemon: DaemonProcess) -> int:
    """The daemon's fd count once gRPC's lazily made fds exist (one full session cycle)."""
    s = _open(daemon)
    assert s.stub.Session(pb.SessionInfoRequest(), metadata=s.metadata).arena_bytes == ARENA
    s.close()
    return _settled_fds(daemon.proc.pid, None)


def _settled_fds(pid: int, target: int | None, timeout: float = EVENTUAL_S) -> int:
    """Wait until the fd count stops moving (or reaches ``target``); return it."""
    deadline = time.monotonic() + timeout
    last, stable_since = fd_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = fd_count(pid)
        if target is not None and now <= target:
            return now
        if now != last:
            last, stable_since = now, time.monotonic()
        elif target is None and time.monotonic() - stable_since > 0.5:
            return now
    return fd_count(pid)


def _open(daemon: DaemonProcess, tenant: str = "bad") -> Session:
    hs = open_session(daemon.socket.parent / "handshake.sock", tenant, ARENA)
    channel = grpc.insecure_channel(f"unix://{hs.grpc_socket or daemon.socket}")
    return Session(
        hs, ClientArena(hs.arena_fd, hs.arena_bytes), pb_grpc.StoreStub(channel), channel
    )


@pytest.fixture
def session(daemon: DaemonProcess, baseline_fds: int) -> Iterator[Session]:
    s = _open(daemon)
    yield s
    s.close()


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value  # type: ignore[return-value]


def code_of(result: pb.OpResult) -> C:
    return next(c for c in C if c.value[0] == result.code)


# -- objects that must survive everything below ------------------------------------------------


def test_store_objects_kept_for_the_end(daemon: DaemonProcess, baseline_fds: int) -> None:
    s = _open(daemon, "keeper")
    try:
        offset, ops = 0, []
        for key, data in KEEP.items():
            s.write(offset, data)
            ops.append(put(key, offset, len(data), persistent=True))
            offset += -(-len(data) // 4096) * 4096
        results = s.batch(*ops)
        assert [r.code for r in results] == [0, 0]
        assert [r.size for r in results] == [len(v) for v in KEEP.values()]
    finally:
        s.close()


# -- authentication ----------------------------------------------------------------------------


def test_missing_token_is_unauthenticated(session: Session) -> None:
    err = rpc_error(lambda: session.stub.Batch(pb.BatchRequest(ops=[get(b"k")])))
    assert err.code() is C.UNAUTHENTICATED
    assert "missing session token" in err.details()


@pytest.mark.parametrize(
    "value", ["Token abc", "Bearer", "bearer 0123", "Bearer  ", "0123456789abcdef"]
)
def test_malformed_authorization_is_unauthenticated(session: Session, value: str) -> None:
    err = rpc_error(
        lambda: session.stub.Stat(pb.StatRequest(key=b"k"), metadata=(("authorization", value),))
    )
    assert err.code() is C.UNAUTHENTICATED
    assert "malformed authorization metadata" in err.details()
    assert "Bearer <token>" in err.details()


def test_unknown_token_is_unauthenticated(session: Session) -> None:
    forged = "0" * len(session.hs.token)
    err = rpc_error(
        lambda: session.stub.Session(
            pb.SessionInfoRequest(), metadata=(("authorization", f"Bearer {forged}"),)
        )
    )
    assert err.code() is C.UNAUTHENTICATED
    assert "unknown or expired session token" in err.details()
    assert forged not in err.details()  # the token is never echoed


def test_token_of_an_ended_session_is_unauthenticated(daemon: DaemonProcess) -> None:
    s = _open(daemon)
    try:
        assert s.stub.Session(pb.SessionInfoRequest(), metadata=s.metadata).session_id
        with SchedulerLag() as lag:
            s.hs.lease.close()  # the lease ends: the daemon ends the session
            ended_at = time.monotonic()
            while True:
                try:
                    s.stub.Session(pb.SessionInfoRequest(), metadata=s.metadata)
                except grpc.RpcError as err:
                    assert err.code() is C.UNAUTHENTICATED, err
                    assert "unknown or expired session token" in err.details()
                    break
                # 3 s, plus the worst wake-up delay a loaded machine added meanwhile
                assert time.monotonic() < ended_at + 3.0 + lag.worst, (
                    "the token still works 3 s after the lease ended"
                )
                time.sleep(0.02)
    finally:
        s.close()


# -- arena ranges ------------------------------------------------------------------------------


def test_misaligned_arena_offset(session: Session) -> None:
    for op in (put(b"k", offset=100), get(b"k", offset=4096 + 512)):
        (r,) = session.batch(op)
        assert code_of(r) is C.INVALID_ARGUMENT
        assert "arena offset" in r.message and "not aligned to 4096 bytes" in r.message
        assert str(op.put.arena_offset or op.get.arena_offset) in r.message


@pytest.mark.parametrize(
    ("offset", "length"), [(ARENA, 4096), (ARENA - 4096, 8192), (1 << 40, 4096)]
)
def test_range_past_the_arena_is_out_of_range(session: Session, offset: int, length: int) -> None:
    session.batch(put(b"there", 0, 4096))
    for op in (put(b"k", offset, length), get(b"there", offset, length)):
        (r,) = session.batch(op)
        assert code_of(r) is C.OUT_OF_RANGE, r.message
        assert f"offset={offset}" in r.message and f"length={length}" in r.message
        assert str(ARENA) in r.message


def test_huge_length_is_a_typed_error(session: Session) -> None:
    for op in (put(b"k", 0, 2**62), get(b"k", 0, 2**62), put(b"k", 2**63, 2**63)):
        (r,) = session.batch(op)
        assert code_of(r) in (C.INVALID_ARGUMENT, C.OUT_OF_RANGE), r.message
        assert str(op.put.length or op.get.length) in r.message


def test_zero_length(session: Session) -> None:
    for op in (put(b"k", 0, 0), get(b"k", 0, 0)):
        (r,) = session.batch(op)
        assert code_of(r) is C.INVALID_ARGUMENT
        assert "length must be > 0, got 0" in r.message


# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", b"x" * 1025, b"y" * 4096])
def test_bad_keys_are_invalid_argument(session: Session, key: bytes) -> None:
    for op in (put(key), get(key), delete(key)):
        (r,) = session.batch(op)
        assert code_of(r) is C.INVALID_ARGUMENT, r.message
        assert f"key length {len(key)} is outside 1..1024 bytes" in r.message
    err = rpc_error(lambda: session.stub.Stat(pb.StatRequest(key=key), metadata=session.metadata))
    assert err.code() is C.INVALID_ARGUMENT
    assert f"key length {len(key)}" in err.details()


def test_unknown_key_is_not_found_naming_the_key(session: Session) -> None:
    key = b"no/such/key-7f3a"
    for op in (get(key), delete(key)):
        (r,) = session.batch(op)
        assert code_of(r) is C.NOT_FOUND
        assert repr(key) in r.message
    err = rpc_error(lambda: session.stub.Stat(pb.StatRequest(key=key), metadata=session.metadata))
    assert err.code() is C.NOT_FOUND
    assert repr(key) in err.details()


def test_get_into_too_small_a_range_names_both_sizes(session: Session) -> None:
    session.write(0, b"z" * 10_000)
    (r,) = session.batch(put(b"ten-k", 0, 10_000))
    assert r.code == 0
    (r,) = session.batch(get(b"ten-k", 16384, 8192))
    assert code_of(r) is C.INVALID_ARGUMENT
    assert "8192" in r.message and "10000" in r.message
    assert session.read(16384, 8192) == bytes(8192)  # nothing was written into the range
    (r,) = session.batch(get(b"ten-k", 16384, 12288))
    assert (r.code, r.size) == (0, 10_000)
    assert session.read(16384, 10_000) == b"z" * 10_000


# -- batch shape -------------------------------------------------------------------------------


def test_oversize_batch_is_invalid_argument(session: Session) -> None:
    ops = [delete(f"k{i}".encode()) for i in range(MAX_BATCH_OPS + 1)]
    err = rpc_error(lambda: session.batch(*ops))
    assert err.code() is C.INVALID_ARGUMENT
    assert f"batch has {MAX_BATCH_OPS + 1} ops; the limit is {MAX_BATCH_OPS}" in err.details()


def test_op_with_nothing_set_is_invalid_argument(session: Session) -> None:
    err = rpc_error(lambda: session.batch(get(b"k"), pb.Op()))
    assert err.code() is C.INVALID_ARGUMENT
    assert "none of put, get, delete" in err.details()


def test_unknown_residency_value_is_invalid_argument(session: Session) -> None:
    op = put(b"k")
    op.put.path = 7  # proto3 enums are open: the wire carries any int
    err = rpc_error(lambda: session.batch(op))
    assert err.code() is C.INVALID_ARGUMENT
    assert "unknown residency path value 7" in err.details()
    # Nothing of the batch ran.
    (r,) = session.batch(get(b"k"))
    assert code_of(r) is C.NOT_FOUND


def test_stop_on_error_aborts_the_rest_and_applies_nothing_after(session: Session) -> None:
    session.write(0, b"1" * 4096)
    session.write(4096, b"2" * 4096)
    results = session.batch(
        put(b"s/first", 0, 4096),
        get(b"s/missing", 8192, 4096),
        put(b"s/second", 4096, 4096),
        delete(b"s/first"),
        stop_on_error=True,
    )
    assert [code_of(r) for r in results] == [C.OK, C.NOT_FOUND, C.ABORTED, C.ABORTED]
    assert "earlier op" in results[2].message
    (r,) = session.batch(get(b"s/second", 8192, 4096))
    assert code_of(r) is C.NOT_FOUND  # the aborted put did not happen
    (r,) = session.batch(get(b"s/first", 8192, 4096))
    assert r.code == 0 and session.read(8192, 4096) == b"1" * 4096  # nor the aborted delete

    # Without stop_on_error every op runs.
    results = session.batch(get(b"s/missing", 8192, 4096), put(b"s/second", 4096, 4096))
    assert [code_of(r) for r in results] == [C.NOT_FOUND, C.OK]


def test_quota_exceeded_is_resource_exhausted(daemon: DaemonProcess) -> None:
    s = _open(daemon, "small")
    try:
        (r,) = s.batch(put(b"q/a", 0, 40_000))
        assert r.code == 0
        (r,) = s.batch(put(b"q/b", 0, 40_000))
        assert code_of(r) is C.RESOURCE_EXHAUSTED
        assert "quota exceeded" in r.message and str(QUOTA) in r.message
        (r,) = s.batch(get(b"q/b", 65536, 40960))
        assert code_of(r) is C.NOT_FOUND  # the refused put left nothing behind
    finally:
        s.close()


def test_sdk_splits_batches_at_the_daemons_limit(daemon: DaemonProcess) -> None:
    """The SDK learns max_batch_ops from the daemon, so its own batches are never oversize."""
    from dualblade import Client

    items = [(f"many/{i}".encode(), bytes([i]) * 100) for i in range(3 * MAX_BATCH_OPS + 1)]
    with Client.connect(daemon.socket, tenant="many", arena_bytes=ARENA) as c:
        c.put_many(items)
        assert c.get_many([k for k, _ in items]) == [v for _, v in items]
        c.delete_many([k for k, _ in items])
        assert c.list() == []


# -- and the daemon is fine --------------------------------------------------------------------


def test_daemon_survives_serves_old_objects_and_leaks_no_fds(
    daemon: DaemonProcess, baseline_fds: int
) -> None:
    assert daemon.proc.poll() is None, daemon.log_tail()
    s = _open(daemon, "keeper")
    try:
        offset, ops, spans = 0, [], []
        for key, data in KEEP.items():
            ops.append(get(key, offset, len(data)))
            spans.append((offset, data))
            offset += -(-len(data) // 4096) * 4096
        results = s.batch(*ops)
        assert [r.code for r in results] == [0, 0]
        for off, data in spans:
            assert s.read(off, len(data)) == data
    finally:
        s.close()
    now = _settled_fds(daemon.proc.pid, baseline_fds)
    assert now <= baseline_fds, (
        f"daemon holds {now} fds, {baseline_fds} before the bad requests:\n"
        + "\n".join(
            sorted(
                os.readlink(f"/proc/{daemon.proc.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{daemon.proc.pid}/fd")
            )
        )
    )
    # Every rejection was expected: nothing was logged as an internal error.
    lines = [json.loads(line) for line in Path(daemon.log_path).read_text().splitlines() if line]
    errors = [e for e in lines if e.get("level") in ("error", "critical")]
    assert not errors, errors
    assert any("rejected" in e.get("event", "") for e in lines)  # the log really is this one
