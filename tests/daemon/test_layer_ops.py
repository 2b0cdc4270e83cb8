"""Layer objects through a real ``dualbladed``: the SDK's ranged API on both transports, and
raw Batch requests that must get a typed status naming the problem.

The daemon is real (``DaemonProcess``, 64 MiB file namespace); the SDK runs once over the lease
data plane and once with ``DUALBLADE_DATAPLANE=grpc``. The raw requests use gRPC stubs and a
mapped arena like ``test_bad_requests.py``, because the SDK never sends most of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from dualblade import Client, errors
from dualblade._handshake import open_session
from dualblade._leaseplane import LeasePlane
from dualblade.arena import ClientArena
from dualblade.client import DATAPLANE_ENV
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade_tools.daemonproc import DaemonProcess

MiB = 1 << 20
QUOTA = 256 << 10
CONFIG = f"""
[quotas.per_tenant]
small = "{QUOTA // 1024}KiB"
"""
C = grpc.StatusCode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("layers")
    cfg = root / "d.toml"
    cfg.write_text(CONFIG)
    with DaemonProcess(root / "d", namespace_size="64MiB", config=cfg) as d:
        yield d


@pytest.fixture(params=["lease", "grpc"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "grpc":
        monkeypatch.setenv(DATAPLANE_ENV, "grpc")
    else:
        monkeypatch.delenv(DATAPLANE_ENV, raising=False)
    return request.param


def _connect(daemon: DaemonProcess, tenant: str = "layers") -> Client:
    return Client.connect(daemon.socket, tenant=tenant, arena_bytes=16 * MiB)


@pytest.mark.parametrize("path", ["direct", "pagecache"])
def test_bytes_round_trip_on_both_paths(daemon: DaemonProcess, transport: str, path: str) -> None:
    key = f"bytes/{transport}/{path}".encode()
    with _connect(daemon) as kv:
        assert kv.dataplane == transport
        kv.reserve(key, 3 * MiB, path=path)
        info = kv.stat(key)
        assert (info.size, info.capacity, info.path) == (0, 3 * MiB, path)
        parts = [os.urandom(n) for n in (1, 4095, 4097, MiB + 3, 77)]
        size = 0
        for part in parts:
            size = kv.append(key, part, expect_size=size)
        whole = b"".join(parts)
        assert size == len(whole)
        assert kv.read_range(key) == whole
        assert kv.read_range(key, 4000, 300) == whole[4000:4300]
        buf = bytearray(MiB)
        assert kv.read_range_into(key, 5, buf) == MiB
        assert bytes(buf) == whole[5 : 5 + MiB]
        assert kv.read_range_into(key, 0, buf, length=10) == 10
        assert bytes(buf[:10]) == whole[:10]
        assert kv.read_ranges_into([(key, 0, bytearray(0)), (key, 1, buf)]) == [0, MiB]
        with pytest.raises(errors.InvalidArgument, match="must be 1..1048576"):
            kv.read_range_into(key, 0, buf, length=MiB + 1)
        assert kv.get(key) == whole  # get reads a layer object whole
        assert kv.stat(key).capacity == 3 * MiB


def test_tensors_append_many_and_one_batch_per_step(
    daemon: DaemonProcess, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode step's reads of every layer's K and V travel as ONE Batch."""
    layers = [f"t/{transport}/{i}/{kv}".encode() for i in range(4) for kv in "KV"]
    with _connect(daemon) as kv:
        for key in layers:
            kv.reserve(key, 256 << 10, persistent=True)
        tokens = [torch.randn(3, 8, 64, dtype=torch.float16) for _ in range(5)]
        for tok in tokens:  # one append per layer per token: 8 ops per step
            sizes = kv.append_many([(key, tok) for key in layers])
        assert sizes == [5 * tokens[0].numel() * 2] * len(layers)
        outs = [torch.empty(5, 3, 8, 64, dtype=torch.float16) for _ in layers]
        in_arena = kv.arena_tensor((5, 3, 8, 64), torch.float16)  # zero copy
        calls: list[int] = []
        if transport == "lease":
            real = LeasePlane.call

            def spy(self: LeasePlane, request: bytes) -> bytes:
                calls.append(len(pb.BatchRequest.FromString(request).ops))
                return real(self, request)

            monkeypatch.setattr(LeasePlane, "call", spy)
        got = kv.read_ranges_into([(k, 0, o) for k, o in zip(layers, outs)])
        got += kv.read_ranges_into([(layers[0], 0, in_arena)])
        if transport == "lease":
            assert calls == [len(layers), 1]
        assert got == [sizes[0]] * (len(layers) + 1)
        expected = torch.stack(tokens)
        for o in [*outs, in_arena]:
            assert torch.equal(o, expected)
        # a tail range: the last two tokens of one layer
        two = torch.empty(2, 3, 8, 64, dtype=torch.float16)
        tok_bytes = tokens[0].numel() * 2
        assert kv.read_range_into(layers[3], 3 * tok_bytes, two) == 2 * tok_bytes
        assert torch.equal(two, expected[3:])
        kv.release_tensor(in_arena)
        for key in layers:
            kv.delete(key)


def test_a_range_the_arena_cannot_bounce_at_once_is_read_in_pieces(
    daemon: DaemonProcess, transport: str
) -> None:
    """The arena's free space is fragmented (every other 1 MiB held): a 6 MiB range read into
    memory outside the arena, and a tensor, must still arrive whole and in order (pieces of at
    most the largest free range), and a range past the end is still OutOfRange."""
    key = f"frag/{transport}".encode()
    with _connect(daemon) as kv:
        kv.reserve(key, 8 * MiB)
        whole = os.urandom(6 * MiB + 123)
        kv.append(key, whole)
        held = []
        while True:  # take all of the arena, then give back every other 1 MiB slot
            try:
                held.append(kv.arena.alloc(MiB))
            except errors.ResourceExhausted:
                break
        for slot in held[::2]:
            kv.arena.free(slot)
        with pytest.raises(errors.ResourceExhausted):
            kv.arena.alloc(2 * MiB)  # no range of 6 MiB, nor of 2, is free at once
        buf = bytearray(len(whole))
        assert kv.read_range_into(key, 0, buf) == len(whole)
        assert bytes(buf) == whole
        tensor = torch.empty(3 * MiB, dtype=torch.uint8)
        got = kv.read_ranges_into([(key, 5, tensor), (key, 0, bytearray(10))])
        assert got == [3 * MiB, 10]
        assert bytes(tensor.numpy()) == whole[5 : 5 + 3 * MiB]
        with pytest.raises(errors.OutOfRange):
            kv.read_range_into(key, 4 * MiB, bytearray(3 * MiB))
        assert kv.arena.free_bytes == len(held[::2]) * MiB  # every piece's slot came back
        for slot in held[1::2]:
            kv.arena.free(slot)
        kv.delete(key)


def test_typed_errors_reach_the_sdk(daemon: DaemonProcess, transport: str) -> None:
    key = f"err/{transport}".encode()
    with _connect(daemon) as kv:
        kv.reserve(key, 10_000)
        kv.append(key, b"a" * 9_000)
        with pytest.raises(errors.ResourceExhausted, match=r"size 9000\) exceeds its capacity"):
            kv.append(key, b"b" * 1_001)
        with pytest.raises(errors.FailedPrecondition, match="expected size 0, the object has"):
            kv.append(key, b"c", expect_size=0)
        with pytest.raises(errors.OutOfRange, match="past the end of key"):
            kv.read_range(key, 8_000, 2_000)
        kv.put(b"plain/" + key, b"xyz")
        with pytest.raises(errors.FailedPrecondition, match="not a layer object"):
            kv.append(b"plain/" + key, b"x")
        with pytest.raises(errors.InvalidArgument, match="capacity 0 of key"):
            kv.reserve(key, 0)
        with pytest.raises(errors.InvalidArgument, match="unknown residency path"):
            kv.reserve(key, 10, path="tape")
        assert kv.read_range(key) == b"a" * 9_000  # nothing above changed it


def test_ephemeral_die_with_the_session_persistent_survive_a_restart(
    daemon: DaemonProcess,
) -> None:
    with _connect(daemon) as a:
        a.reserve(b"life/eph", 8192)
        a.append(b"life/eph", b"e" * 100)
        a.reserve(b"life/per", 8192, persistent=True)
        a.append(b"life/per", b"p" * 5000, durable=True)
        with _connect(daemon) as b:
            assert b.read_range(b"life/eph") == b"e" * 100
    with _connect(daemon) as b:  # the lease ended: the daemon frees a's ephemeral objects
        deadline = time.monotonic() + 5
        while b.contains_many([b"life/eph"]) == [True] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.contains_many([b"life/eph", b"life/per"]) == [False, True]
    daemon.restart()
    with _connect(daemon) as c:
        with pytest.raises(errors.NotFound):
            c.stat(b"life/eph")
        assert c.read_range(b"life/per") == b"p" * 5000
        assert c.append(b"life/per", b"q" * 3, expect_size=5000) == 5003
        assert c.read_range(b"life/per", 4999) == b"pqqq"


# -- raw requests: typed statuses that name the problem ---------------------------------------


class Raw:
    def __init__(self, daemon: DaemonProcess, tenant: str) -> None:
        self.hs = open_session(Path(daemon.socket).parent / "handshake.sock", tenant, MiB)
        self.arena = ClientArena(self.hs.arena_fd, self.hs.arena_bytes)
        # the session's token is good on the per-uid socket its handshake reply named
        self.channel = grpc.insecure_channel(f"unix://{self.hs.grpc_socket or daemon.socket}")
        self.stub = pb_grpc.StoreStub(self.channel)
        self.md = (("authorization", f"Bearer {self.hs.token}"),)

    def batch(self, *ops: pb.Op) -> list[pb.OpResult]:
        return list(self.stub.Batch(pb.BatchRequest(ops=list(ops)), metadata=self.md).results)

    def close(self) -> None:
        self.channel.close()
        self.arena.close()
        self.hs.close()


@pytest.fixture
def raw(daemon: DaemonProcess) -> Iterator[Raw]:
    r = Raw(daemon, "small")
    yield r
    r.close()


def reserve(key: bytes, capacity: int, **kw: object) -> pb.Op:
    return pb.Op(reserve=pb.ReserveOp(key=key, capacity=capacity, **kw))


def append(key: bytes, offset: int, length: int, **kw: object) -> pb.Op:
    return pb.Op(append=pb.AppendOp(key=key, arena_offset=offset, length=length, **kw))


def read_range(key: bytes, offset: int, length: int, at: int = 0) -> pb.Op:
    return pb.Op(read_range=pb.ReadRangeOp(key=key, offset=offset, length=length, arena_offset=at))


def status(result: pb.OpResult) -> tuple[C, str]:
    return next(c for c in C if c.value[0] == result.code), result.message


def test_bad_layer_requests_get_typed_statuses(raw: Raw) -> None:
    ok = raw.batch(reserve(b"r", 8192), append(b"r", 0, 100), read_range(b"r", 0, 0, 4096))
    assert [(r.code, r.size) for r in ok] == [(0, 8192), (0, 100), (0, 100)]
    # the quota counts capacity; re-reserving a key gives its old capacity back first
    big = QUOTA - 16384
    assert [r.code for r in raw.batch(reserve(b"q", big))] == [0]
    assert [r.code for r in raw.batch(reserve(b"q", big))] == [0]
    assert status(raw.batch(reserve(b"q2", 16384))[0])[0] is C.RESOURCE_EXHAUSTED
    assert [r.code for r in raw.batch(pb.Op(delete=pb.DeleteOp(key=b"q")))] == [0]
    cases = [
        (reserve(b"r2", 0), C.INVALID_ARGUMENT, "reserve capacity 0 of key b'r2' is outside"),
        (reserve(b"big", QUOTA + 1), C.RESOURCE_EXHAUSTED, "quota exceeded for tenant"),
        (append(b"r", 100, 10), C.INVALID_ARGUMENT, "arena offset"),
        (append(b"r", 0, 0), C.INVALID_ARGUMENT, "length must be > 0"),
        (append(b"r", MiB - 4096, 8192), C.OUT_OF_RANGE, "outside the arena"),
        (append(b"r", 0, 9000), C.RESOURCE_EXHAUSTED, "exceeds its capacity 8192"),
        (append(b"r", 0, 1, expect_size=7), C.FAILED_PRECONDITION, "expected size 7"),
        (append(b"nope", 0, 1), C.NOT_FOUND, "key b'nope' not found"),
        (read_range(b"r", 50, 51), C.OUT_OF_RANGE, "range 50..101 is past the end"),
        (read_range(b"r", 101, 0), C.OUT_OF_RANGE, "offset 101 is past the end"),
        (read_range(b"r", 0, 10, 5), C.INVALID_ARGUMENT, "arena offset"),
    ]
    results = raw.batch(*(op for op, _, _ in cases))
    for (op, code, text), result in zip(cases, results):
        got_code, message = status(result)
        assert (got_code, text in message) == (code, True), (op, message)
    with pytest.raises(grpc.RpcError) as err:
        raw.batch(reserve(b"r3", 10, path="tape"))
    assert err.value.code() is C.INVALID_ARGUMENT
    assert "unknown residency path 'tape' in reserve" in err.value.details()
    # nothing above changed the object
    assert raw.stub.Stat(pb.StatRequest(key=b"r"), metadata=raw.md).size == 100
    assert raw.stub.Stat(pb.StatRequest(key=b"r"), metadata=raw.md).capacity == 8192


def test_async_device_copies_of_ranged_reads_finish_before_their_slot_is_freed(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranged reads into CUDA tensors copy out of staging slots asynchronously (as get_into
    does); a slot is freed only after its copy completed. No GPU here: ``copy_out`` returns a
    recording stand-in for the CUDA event, which is the SDK's side of the contract."""
    from dualblade import _buffers

    events: list[str] = []

    class _Copy:
        def synchronize(self) -> None:
            events.append("synchronize")

    real_copy_out = _buffers.copy_out

    def copy_out(dst: object, src: memoryview) -> object:
        real_copy_out(dst, src)
        events.append("copy")
        return _Copy()

    monkeypatch.setattr(_buffers, "copy_out", copy_out)
    with _connect(daemon) as kv:
        kv.reserve(b"dev/L", 64 << 10)
        kv.append(b"dev/L", bytes(range(256)) * 64)
        real_free = kv.arena.free

        def free(slot: object) -> None:
            events.append("free")
            real_free(slot)

        monkeypatch.setattr(kv.arena, "free", free)
        outs = [torch.zeros(4096, dtype=torch.uint8) for _ in range(2)]
        assert kv.read_ranges_into([(b"dev/L", 0, outs[0]), (b"dev/L", 4096, outs[1])]) == [
            4096,
            4096,
        ]
        assert bytes(outs[0].numpy()) + bytes(outs[1].numpy()) == (bytes(range(256)) * 64)[:8192]
    assert events == ["copy", "copy", "synchronize", "synchronize", "free", "free"]
