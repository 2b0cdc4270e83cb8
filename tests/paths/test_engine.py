"""DirectEngine: real O_DIRECT I/O on a FileNamespace under tmp_path (ext4), real mmap buffers."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from dualbladed.errors import (
    DeviceIOError,
    FailedPrecondition,
    InvalidArgument,
    Misaligned,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
)
from dualbladed.namespace.abstract import Namespace
from dualbladed.namespace.file import FileNamespace
from dualbladed.oserrors import from_oserror
from dualbladed.paths.engine import (
    DirectEngine,
    aligned_buffer,
    buffer_address,
    fanned_transfers,
    serial_transfers,
)

BLOCK = 4096
SIZE = 16 << 20
REQUEST = 256 << 10


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    ns = FileNamespace(tmp_path / "ns.img", SIZE)
    yield ns
    ns.close()


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("queue_depth", [1, 8])
@pytest.mark.parametrize(
    "nbytes",
    [BLOCK, REQUEST - BLOCK, REQUEST, REQUEST + BLOCK, 5 * REQUEST + 3 * BLOCK],
    ids=["one-block", "below-request", "at-request", "above-request", "many-requests"],
)
def test_round_trip_random_bytes(namespace: Namespace, nbytes: int, queue_depth: int) -> None:
    payload = _random_bytes(nbytes, seed=nbytes + queue_depth)
    offset = 3 * BLOCK
    with DirectEngine(namespace, request_bytes=REQUEST, queue_depth=queue_depth) as engine:
        src = aligned_buffer(nbytes)
        src[:] = payload
        engine.write(offset, memoryview(src))
        dst = aligned_buffer(nbytes)
        engine.read(offset, memoryview(dst))
        assert dst[:] == payload
    # The bytes really are on the medium: read them back with plain buffered I/O.
    with open(namespace.path, "rb") as f:
        f.seek(offset)
        assert f.read(nbytes) == payload


def test_read_only_memoryview_write(namespace: Namespace) -> None:
    payload = _random_bytes(3 * REQUEST, seed=1)
    src = aligned_buffer(len(payload))
    src[:] = payload
    readonly = memoryview(src).toreadonly()
    assert readonly.readonly
    with DirectEngine(namespace, request_bytes=REQUEST, queue_depth=4) as engine:
        engine.write(0, readonly)
        dst = aligned_buffer(len(payload))
        engine.read(0, memoryview(dst))
    assert dst[:] == payload
    readonly.release()
    src.close()  # no buffer export was left behind by the address lookup


def test_slices_of_a_shared_arena_are_independent_targets(namespace: Namespace) -> None:
    arena = aligned_buffer(8 * BLOCK)
    view = memoryview(arena)
    view[: 4 * BLOCK] = b"A" * (4 * BLOCK)
    view[4 * BLOCK :] = b"B" * (4 * BLOCK)
    with DirectEngine(namespace, request_bytes=BLOCK, queue_depth=4) as engine:
        engine.write(BLOCK, view[4 * BLOCK :])  # B's go to device block 1..4
        engine.read(BLOCK, view[: 4 * BLOCK])
    assert bytes(view) == b"B" * (8 * BLOCK)


@pytest.mark.parametrize(
    ("offset", "nbytes", "shift", "what", "value"),
    [
        (100, BLOCK, 0, "offset", 100),
        (0, BLOCK + 512, 0, "length", BLOCK + 512),
        (0, BLOCK, 512, "buffer address", None),
    ],
)
def test_misaligned_requests_name_the_numbers(
    namespace: Namespace, offset: int, nbytes: int, shift: int, what: str, value: int | None
) -> None:
    buf = aligned_buffer(nbytes + shift)
    view = memoryview(buf)[shift : shift + nbytes]
    expected = value if value is not None else buffer_address(view)
    with DirectEngine(namespace) as engine:
        for op in (engine.read, engine.write):
            with pytest.raises(Misaligned) as info:
                op(offset, view)
            assert what in str(info.value)
            assert info.value.value == expected and info.value.alignment == BLOCK
            assert str(expected) in str(info.value) and str(BLOCK) in str(info.value)


@pytest.mark.parametrize(
    ("offset", "nbytes"), [(SIZE, BLOCK), (SIZE - BLOCK, 2 * BLOCK), (-BLOCK, BLOCK)]
)
def test_out_of_range(namespace: Namespace, offset: int, nbytes: int) -> None:
    buf = memoryview(aligned_buffer(nbytes))
    with DirectEngine(namespace) as engine:
        with pytest.raises(OutOfRange):
            engine.read(offset, buf)
        with pytest.raises(OutOfRange):
            engine.write(offset, buf)


def test_read_into_read_only_buffer_is_invalid(namespace: Namespace) -> None:
    with DirectEngine(namespace) as engine, pytest.raises(InvalidArgument, match="writable"):
        engine.read(0, memoryview(aligned_buffer(BLOCK)).toreadonly())


def test_bad_config_is_rejected(namespace: Namespace) -> None:
    with pytest.raises(InvalidArgument, match="request_bytes"):
        DirectEngine(namespace, request_bytes=BLOCK + 1)
    with pytest.raises(InvalidArgument, match="queue_depth"):
        DirectEngine(namespace, queue_depth=0)


def test_closed_engine_refuses_io(namespace: Namespace) -> None:
    engine = DirectEngine(namespace, request_bytes=BLOCK, queue_depth=4)
    engine.write(0, memoryview(aligned_buffer(4 * BLOCK)))  # starts the pool
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(FailedPrecondition):
        engine.read(0, memoryview(aligned_buffer(BLOCK)))


class _ShortAndFailingNamespace(FileNamespace):
    """Returns at most one block per call, and fails with EIO at one chosen offset."""

    def __init__(self, path: Path, size: int, fail_at: int | None = None) -> None:
        super().__init__(path, size)
        self.fail_at = fail_at
        self.calls = 0

    def preadv(self, bufs: Sequence[memoryview], offset: int) -> int:
        self.calls += 1
        if offset == self.fail_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().preadv([bufs[0][:BLOCK]], offset)

    def pwritev(self, bufs: Sequence[memoryview], offset: int) -> int:
        self.calls += 1
        return super().pwritev([bufs[0][:BLOCK]], offset)


def test_short_transfers_are_continued(tmp_path: Path) -> None:
    ns = _ShortAndFailingNamespace(tmp_path / "short.img", SIZE)
    payload = _random_bytes(4 * REQUEST, seed=2)
    src = aligned_buffer(len(payload))
    src[:] = payload
    dst = aligned_buffer(len(payload))
    with DirectEngine(ns, request_bytes=REQUEST, queue_depth=3) as engine:
        engine.write(0, memoryview(src))
        engine.read(0, memoryview(dst))
    ns.close()
    assert dst[:] == payload
    assert ns.calls == 2 * len(payload) // BLOCK


@pytest.mark.parametrize("queue_depth", [1, 4])
def test_device_error_is_typed_and_waits_for_all_pieces(tmp_path: Path, queue_depth: int) -> None:
    ns = _ShortAndFailingNamespace(tmp_path / "eio.img", SIZE, fail_at=2 * REQUEST + BLOCK)
    with DirectEngine(ns, request_bytes=REQUEST, queue_depth=queue_depth) as engine:
        with pytest.raises(DeviceIOError, match=f"offset {2 * REQUEST + BLOCK}") as info:
            engine.read(0, memoryview(aligned_buffer(8 * REQUEST)))
        assert isinstance(info.value.__cause__, OSError)
        # The engine is still usable after a failed call.
        engine.read(0, memoryview(aligned_buffer(BLOCK)))
    ns.close()


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (errno.EIO, DeviceIOError, "EIO"),
        (errno.ENXIO, DeviceIOError, "ENXIO"),
        (errno.ENODEV, DeviceIOError, "ENODEV"),
        (errno.EINVAL, InvalidArgument, "block size"),
        (errno.ENOSPC, ResourceExhausted, "full"),
        (errno.EACCES, PermissionDenied, "EACCES"),
        (errno.EPERM, PermissionDenied, "EPERM"),
        (errno.EBUSY, FailedPrecondition, "busy"),
        (errno.ETIMEDOUT, DeviceIOError, "ETIMEDOUT"),
    ],
)
def test_from_oserror_classifies_errno(code: int, kind: type, words: str) -> None:
    err = from_oserror(OSError(code, os.strerror(code)), context="read 4096 bytes at offset 0")
    assert type(err) is kind
    assert str(err).startswith("read 4096 bytes at offset 0: ")
    assert words in str(err)


def test_run_pieces_runs_each_piece_once_and_nested_transfers_inline(
    namespace: Namespace,
) -> None:
    """``run_pieces`` (the layer objects' chunk scheduler): every index exactly once, and a
    multi-request transfer issued from a piece runs on that piece's thread (a nested fan-out
    onto the same pool could deadlock it: every worker waiting for helpers none is free to run).
    """
    import threading

    pieces = 12
    nbytes = 4 * REQUEST  # four requests: a fan-out if it were not nested (12 MiB in all)
    src = aligned_buffer(pieces * nbytes)
    src[:] = _random_bytes(pieces * nbytes, seed=7)
    seen: list[int] = []
    threads: dict[int, set[str]] = {}
    lock = threading.Lock()
    with DirectEngine(namespace, request_bytes=REQUEST, queue_depth=4) as engine:
        real = namespace.pwritev

        def spy(buffers: Sequence[memoryview], offset: int) -> int:
            with lock:
                threads.setdefault(offset // nbytes, set()).add(threading.current_thread().name)
            return real(buffers, offset)

        namespace.pwritev = spy  # type: ignore[method-assign]
        try:

            def piece(index: int) -> None:
                with lock:
                    seen.append(index)
                view = memoryview(src)[index * nbytes : (index + 1) * nbytes]
                engine.write(index * nbytes, view)

            engine.run_pieces(pieces, piece)
        finally:
            del namespace.pwritev
        dst = aligned_buffer(pieces * nbytes)
        engine.read(0, memoryview(dst))
    assert sorted(seen) == list(range(pieces))
    assert dst[:] == src[:]
    assert all(len(names) == 1 for names in threads.values()), threads  # inline per piece


def test_run_pieces_raises_the_first_error_after_every_started_piece_ended(
    namespace: Namespace,
) -> None:
    import threading
    import time

    running = [0]
    lock = threading.Lock()
    ended: list[int] = []

    def piece(index: int) -> None:
        with lock:
            running[0] += 1
        try:
            time.sleep(0.01)
            if index == 3:
                raise OutOfRange(f"piece {index} failed")
        finally:
            with lock:
                running[0] -= 1
                ended.append(index)

    with (
        DirectEngine(namespace, request_bytes=REQUEST, queue_depth=4) as engine,
        pytest.raises(OutOfRange, match="piece 3 failed"),
    ):
        engine.run_pieces(100, piece)
    assert running[0] == 0  # nothing still running when the error reached the caller
    assert 3 in ended and len(ended) < 100  # later pieces were skipped


def test_serial_transfers_keep_a_large_read_on_the_callers_thread(namespace: Namespace) -> None:
    """Inside ``serial_transfers`` a four-request read runs only on the calling thread (the
    batch executor's case: the batch is the fan-out); outside it the same read fans out, which
    the spy proves by holding the first two requests at a barrier that only two distinct
    threads can pass (no fan-out: BrokenBarrierError after the timeout)."""
    import threading

    nbytes = 4 * REQUEST
    src = aligned_buffer(nbytes)
    src[:] = _random_bytes(nbytes, seed=11)
    barrier: threading.Barrier | None = None
    threads: list[str] = []
    with DirectEngine(namespace, request_bytes=REQUEST, queue_depth=4) as engine:
        engine.write(0, memoryview(src))
        real = namespace.preadv

        def spy(buffers: Sequence[memoryview], offset: int) -> int:
            threads.append(threading.current_thread().name)
            if barrier is not None and offset < 2 * REQUEST:
                barrier.wait()
            return real(buffers, offset)

        namespace.preadv = spy  # type: ignore[method-assign]
        try:
            dst = aligned_buffer(nbytes)
            with serial_transfers(), serial_transfers():  # nesting restores the outer state
                engine.read(0, memoryview(dst))
                assert set(threads) == {threading.current_thread().name}
                assert len(threads) == 4  # still cut into request_bytes pieces
            assert dst[:] == src[:]
            threads.clear()
            barrier = threading.Barrier(2, timeout=30)
            dst2 = aligned_buffer(nbytes)
            engine.read(0, memoryview(dst2))  # outside: fans out again
        finally:
            del namespace.preadv
    assert len(set(threads)) >= 2, threads
    assert dst2[:] == src[:]


def _meeting(names: list[str]) -> Callable[[int], None]:
    """A piece function whose first two pieces meet at a barrier only two distinct threads can
    pass (run inline, the first waits alone: BrokenBarrierError); each piece names its thread."""
    import threading

    barrier = threading.Barrier(2, timeout=30)

    def meet(index: int) -> None:
        names.append(threading.current_thread().name)
        if index < 2:
            barrier.wait()

    return meet


def test_run_pieces_fan_out_overrides_serial_transfers_but_never_nests(
    namespace: Namespace,
) -> None:
    """``run_pieces(fan_out=True)`` (a layer object's ranged read, whose chunks are separate
    requests) keeps up to ``queue_depth`` pieces in flight inside ``serial_transfers``: two
    pieces meet at a barrier only two distinct threads can pass (inline: BrokenBarrierError).
    Without ``fan_out`` the same call stays inline there, and inside an engine worker it is
    always inline (a nested fan-out onto the same pool could deadlock it)."""
    import threading

    with DirectEngine(namespace, request_bytes=REQUEST, queue_depth=4) as engine:
        names: list[str] = []
        with serial_transfers():
            engine.run_pieces(4, _meeting(names), fan_out=True)
        assert len(set(names)) >= 2, names

        order: list[int] = []
        with serial_transfers():
            engine.run_pieces(4, order.append)
        assert order == [0, 1, 2, 3]  # inline, in order

        nested: list[set[str]] = []

        def outer(index: int) -> None:
            inner: set[str] = set()
            engine.run_pieces(3, lambda i: inner.add(threading.current_thread().name), fan_out=True)
            nested.append(inner)

        engine.run_pieces(4, outer)
    assert len(nested) == 4 and all(len(s) == 1 for s in nested), nested


def test_fanned_transfers_fan_out_again_inside_serial_transfers_and_restore_it(
    namespace: Namespace,
) -> None:
    """A layer append (one op of many 1 MiB requests) inside a Batch's ``serial_transfers``:
    its write fans out; on leaving, the batch's serial rule holds again."""
    with DirectEngine(namespace, request_bytes=REQUEST, queue_depth=4) as engine:
        names: list[str] = []
        with serial_transfers():
            with fanned_transfers():
                engine.run_pieces(4, _meeting(names))
            order: list[int] = []
            engine.run_pieces(4, order.append)
        assert len(set(names)) >= 2, names
        assert order == [0, 1, 2, 3]  # serial again: inline, in order
