"""SDK behaviours that need more than one call to show: size caching across sessions, the
``durable`` flag on the wire, CUDA pinning and async device copies.

The daemon is real (``DaemonProcess``). Where a GPU would be needed, ``torch.cuda`` is replaced by a
recording fake: this machine has no GPU, and what is tested is the SDK's side of the contract
(which CUDA calls it makes, and in which order), not CUDA itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from dualblade import Client, _buffers, errors
from dualblade._leaseplane import LeasePlane
from dualblade.cuda import HOST_REGISTER_DEFAULT
from dualblade.v1 import dualblade_pb2 as pb
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.store.input import MAX_KEY_BYTES

TENANT = "sdk"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("sdk") / "d") as d:
        yield d


def _connect(daemon: DaemonProcess) -> Client:
    return Client.connect(daemon.socket, tenant=TENANT, arena_bytes=8 << 20)


def test_get_follows_objects_replaced_by_another_session(daemon: DaemonProcess) -> None:
    """``get`` sizes its buffer from the client's cache; another session of the same tenant may
    shrink, grow or re-create the object in between, and ``get`` must still return its bytes."""
    with _connect(daemon) as a, _connect(daemon) as b:
        a.put(b"shared", b"a" * 5000, persistent=True)
        assert a.get(b"shared") == b"a" * 5000
        b.put(b"shared", b"s" * 100, persistent=True)  # shrinks
        assert a.get(b"shared") == b"s" * 100
        b.put(b"shared", b"g" * 20000, persistent=True)  # grows past a's cached size
        assert a.get(b"shared") == b"g" * 20000
        b.delete(b"shared")
        b.put(b"shared", b"r" * 10, persistent=True)
        assert a.get_many([b"shared", b"shared"]) == [b"r" * 10, b"r" * 10]
        b.delete(b"shared")
        with pytest.raises(errors.NotFound):
            a.get(b"shared")


def test_durable_and_persistent_reach_the_wire(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flags of ``put`` are what the daemon's executor sees (the store-level power-failure
    sweep covers what ``durable`` then does)."""
    sent: list[pb.BatchRequest] = []
    real_call = LeasePlane.call

    def spy(self: LeasePlane, request: bytes) -> bytes:
        sent.append(pb.BatchRequest.FromString(request))
        return real_call(self, request)

    monkeypatch.setattr(LeasePlane, "call", spy)
    with _connect(daemon) as kv:
        kv.put(b"flags/durable", b"x" * 4096, persistent=True, durable=True)
        kv.put(b"flags/plain", b"y" * 4096)
        kv.put_many([(b"flags/m1", b"1"), (b"flags/m2", b"2")], durable=True, persistent=True)
        assert kv.stat(b"flags/durable").persistent and not kv.stat(b"flags/plain").persistent
    flags = {}
    for op in (op for req in sent for op in req.ops):
        if op.WhichOneof("op") == "put":
            flags[op.put.key] = (op.put.persistent, op.put.durable)
        elif op.WhichOneof("op") == "put_packed":
            for key in op.put_packed.keys:
                flags[key] = (op.put_packed.persistent, op.put_packed.durable)
    assert flags == {
        b"flags/durable": (True, True),
        b"flags/plain": (False, False),
        b"flags/m1": (True, True),
        b"flags/m2": (True, True),
    }


def test_put_many_of_bytes_goes_packed_and_reads_back(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes payloads of any size go as one PutPackedOp per chunk (padding between them in the
    arena never reaches an object); a daemon that does not announce it gets one PutOp each."""
    sent: list[pb.BatchRequest] = []
    real_call = LeasePlane.call

    def spy(self: LeasePlane, request: bytes) -> bytes:
        sent.append(pb.BatchRequest.FromString(request))
        return real_call(self, request)

    monkeypatch.setattr(LeasePlane, "call", spy)
    sizes = [1, 4096, 5000, 70000, 3, 8192]
    items = [(f"packed/{i}".encode(), bytes([i + 1]) * n) for i, n in enumerate(sizes)]
    with _connect(daemon) as kv:
        infos = kv.put_many(items, persistent=True)
        assert [op.WhichOneof("op") for req in sent for op in req.ops] == ["put_packed"]
        assert [i.size for i in infos] == sizes
        assert len({i.generation for i in infos}) == len(sizes)
        assert all(i.path and i.persistent for i in infos)
        assert kv.get_many([k for k, _ in items]) == [v for _, v in items]
        for (key, _), info in zip(items, infos):
            st = kv.stat(key)
            assert (st.size, st.generation, st.path) == (info.size, info.generation, info.path)
        sent.clear()
        monkeypatch.delitem(kv._hs.limits, "put_packed")  # as an older daemon's hello
        again = [(k, v[::-1] + b"!") for k, v in items]
        kv.put_many(again, persistent=True)
        assert {op.WhichOneof("op") for req in sent for op in req.ops} == {"put"}
        assert kv.get_many([k for k, _ in again]) == [v for _, v in again]


def test_a_packed_put_is_all_or_nothing(daemon: DaemonProcess) -> None:
    """One object the store refuses (a key over the length limit) fails the whole packed put:
    its neighbours, already written, are not stored, and their space is free again."""
    long_key = b"k" * (MAX_KEY_BYTES + 1)
    items = [(b"aon/a", b"a" * 10), (long_key, b"b" * 4096), (b"aon/c", b"c" * 9000)]
    with _connect(daemon) as kv:
        before = kv.admin_call("Status", pb.StatusRequest())
        with pytest.raises(errors.InvalidArgument, match="key length"):
            kv.put_many(items, persistent=True)
        for key in (b"aon/a", b"aon/c"):
            with pytest.raises(errors.NotFound):
                kv.stat(key)
        after = kv.admin_call("Status", pb.StatusRequest())
    assert after.free_bytes == before.free_bytes


class _FakeCudart:
    """Records cudaHostRegister/Unregister; ``fail`` makes register return an error code."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[Any, ...]] = []

    def cudaHostRegister(self, address: int, size: int, flags: int) -> int:  # noqa: N802
        self.calls.append(("register", address, size, flags))
        return 1 if self.fail else 0

    def cudaHostUnregister(self, address: int) -> int:  # noqa: N802
        self.calls.append(("unregister", address))
        return 0


@pytest.mark.parametrize("fail", [False, True], ids=["pinned", "register-fails"])
def test_arena_is_pinned_with_cuda_host_register(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    """On a CUDA build the whole arena mapping is page-locked at connect and unlocked at close;
    a failed registration leaves a working client with pageable copies (and nothing to undo)."""
    cudart = _FakeCudart(fail)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    with _connect(daemon) as kv:
        address, size = kv.arena.address, kv.arena.size
        assert cudart.calls == [("register", address, size, HOST_REGISTER_DEFAULT)]
        kv.put(b"pin/x", b"z" * 8192)
        assert kv.get(b"pin/x") == b"z" * 8192
    expected_close = [] if fail else [("unregister", address)]
    assert cudart.calls[1:] == expected_close


def test_async_device_copies_finish_before_their_arena_slot_is_reused(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_into`` a CUDA tensor copies from a staging slot of the pinned arena asynchronously;
    the slot may be freed (and handed to the next call) only after that copy has completed."""
    events: list[str] = []

    class _Copy:
        def synchronize(self) -> None:
            events.append("synchronize")

    real_copy_out = _buffers.copy_out

    def copy_out(dst: Any, src: memoryview) -> Any:
        real_copy_out(dst, src)
        events.append("copy")
        return _Copy()  # what a CUDA destination returns: an event still in flight

    monkeypatch.setattr(_buffers, "copy_out", copy_out)
    with _connect(daemon) as kv:
        real_free = kv.arena.free

        def free(slot: Any) -> None:
            events.append("free")
            real_free(slot)

        monkeypatch.setattr(kv.arena, "free", free)
        kv.put(b"dev/a", bytes(range(256)) * 32)
        events.clear()  # the put staged (and freed) a slot of its own
        out = torch.zeros(8192, dtype=torch.uint8)  # not an arena tensor: staged through a slot
        assert kv.get_into(b"dev/a", out) == 8192
        assert bytes(out.numpy()) == bytes(range(256)) * 32
    assert events == ["copy", "synchronize", "free"]


def test_get_into_a_larger_tensor_fills_only_the_object(daemon: DaemonProcess) -> None:
    with _connect(daemon) as kv:
        kv.put(b"short", b"\x07" * 4096)
        out = torch.full((3 * 4096,), 0xAA, dtype=torch.uint8)
        assert kv.get_into(b"short", out) == 4096
        assert bytes(out[:4096].numpy()) == b"\x07" * 4096
        assert bytes(out[4096:].numpy()) == b"\xaa" * (2 * 4096)


def test_try_get_many_into_reports_each_op_in_one_round_trip(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batched get with a missing key and a buffer too small for its object gets every other
    object and a typed error for those two, from one Batch; the failed ops' buffers are left as
    they were. ``get_many_into`` keeps raising the first failed op's error."""
    calls: list[int] = []
    real_call = LeasePlane.call

    def spy(self: LeasePlane, request: bytes) -> bytes:
        calls.append(len(pb.BatchRequest.FromString(request).ops))
        return real_call(self, request)

    with _connect(daemon) as kv:
        kv.put_many([(b"per-op/a", b"a" * 8192), (b"per-op/big", b"b" * 8192)])
        kv.put(b"per-op/c", b"c" * 100)
        bufs = [bytearray(b"?" * 8192) for _ in range(4)]
        monkeypatch.setattr(LeasePlane, "call", spy)
        got = kv.try_get_many_into(
            [
                (b"per-op/a", bufs[0]),
                (b"per-op/missing", bufs[1]),
                (b"per-op/big", memoryview(bufs[2])[:4096]),  # the object needs 8192
                (b"per-op/c", bufs[3]),
            ]
        )
        assert calls == [4]
        assert got[0] == 8192 and bytes(bufs[0]) == b"a" * 8192
        assert isinstance(got[1], errors.NotFound) and "per-op/missing" in str(got[1])
        assert isinstance(got[2], errors.InvalidArgument) and "8192" in str(got[2])
        assert got[3] == 100 and bytes(bufs[3][:100]) == b"c" * 100
        assert bytes(bufs[1]) == bytes(bufs[2]) == b"?" * 8192
        with pytest.raises(errors.NotFound):
            kv.get_many_into([(b"per-op/a", bufs[0]), (b"per-op/missing", bufs[1])])
