"""DirectPath: extents on a real FileNamespace (O_DIRECT), zero copy when aligned, bounce only the tail.

The contract every path keeps (typed errors, out-of-space, close) is in test_path_conformance.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import InvalidArgument
from dualbladed.namespace.abstract import METADATA_AREA, Namespace
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import ResidencyPath
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.engine import aligned_buffer, buffer_address

BLOCK = 4096
SIZE = METADATA_AREA + (8 << 20)
REQUEST = 64 << 10


class _RecordingFileNamespace(FileNamespace):
    """The real FileNamespace, recording every request: (op, offset, buffer address, length),
    plus discards and flushes."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(path, size)
        self.log: list[tuple[str, int, int, int]] = []
        self.discards: list[tuple[int, int]] = []
        self.flushes = 0

    def _record(self, op: str, bufs: Sequence[memoryview], offset: int) -> None:
        for buf in bufs:
            self.log.append((op, offset, buffer_address(buf), len(buf)))
            offset += len(buf)

    def preadv(self, bufs: Sequence[memoryview], offset: int) -> int:
        self._record("read", bufs, offset)
        return super().preadv(bufs, offset)

    def pwritev(self, bufs: Sequence[memoryview], offset: int) -> int:
        self._record("write", bufs, offset)
        return super().pwritev(bufs, offset)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()

    def discard(self, offset: int, length: int) -> None:
        self.discards.append((offset, length))
        super().discard(offset, length)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[_RecordingFileNamespace]:
    ns = _RecordingFileNamespace(tmp_path / "direct.img", SIZE)
    yield ns
    ns.close()


@pytest.fixture
def path(namespace: _RecordingFileNamespace) -> Iterator[DirectPath]:
    p = DirectPath(namespace, request_bytes=REQUEST, queue_depth=4)
    yield p
    p.close()


def _payload(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def _on_disk(ns: Namespace, offset: int, n: int) -> bytes:
    with open(ns.path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def test_is_a_residency_path_over_the_data_area(path: DirectPath) -> None:
    assert isinstance(path, ResidencyPath)
    assert path.name == "direct" and path.alignment == BLOCK
    stats = path.stats()
    assert stats.capacity == SIZE - METADATA_AREA
    assert list(path.allocator.free_extents()) == [Extent(METADATA_AREA, SIZE - METADATA_AREA)]
    assert path.resident_bytes() == 0


@pytest.mark.parametrize("nbytes", [BLOCK, 3 * BLOCK, REQUEST, 5 * REQUEST])
def test_aligned_round_trip_is_zero_copy(
    path: DirectPath, namespace: _RecordingFileNamespace, nbytes: int
) -> None:
    extent = path.allocate(nbytes)
    src = aligned_buffer(nbytes)
    src[:] = _payload(nbytes)
    path.write(extent, memoryview(src))
    dst = aligned_buffer(nbytes)
    path.read(extent, memoryview(dst))
    assert dst[:] == src[:]
    assert _on_disk(namespace, extent.offset, nbytes) == src[:]
    # Every request came straight from/to the caller's buffers: no bounce.
    src_lo, dst_lo = buffer_address(src), buffer_address(dst)
    for op, offset, address, length in namespace.log:
        base = src_lo if op == "write" else dst_lo
        assert address - base == offset - extent.offset
        assert 0 < length <= REQUEST


@pytest.mark.parametrize("nbytes", [1, 100, BLOCK + 1, 3 * BLOCK + 123, 2 * REQUEST + 7])
def test_unaligned_length_bounces_only_the_tail(
    path: DirectPath, namespace: _RecordingFileNamespace, nbytes: int
) -> None:
    extent = path.allocate(nbytes)
    # Pre-fill the extent with junk so that the zero padding is observable.
    junk = aligned_buffer(extent.length)
    junk[:] = b"\xff" * extent.length
    path.engine.write(extent.offset, memoryview(junk))
    namespace.log.clear()

    src = aligned_buffer(nbytes)
    src[:] = _payload(nbytes)
    path.write(extent, memoryview(src))
    dst = aligned_buffer(nbytes)
    path.read(extent, memoryview(dst))
    assert dst[:] == src[:]
    on_disk = _on_disk(namespace, extent.offset, extent.length)
    assert on_disk[:nbytes] == src[:]
    assert on_disk[nbytes:] == bytes(extent.length - nbytes)  # the tail block is zero-padded

    direct = nbytes - nbytes % BLOCK
    tail_offset = extent.offset + direct
    for op, buf in (("write", src), ("read", dst)):
        calls = [c for c in namespace.log if c[0] == op]
        head = [c for c in calls if c[1] < tail_offset]
        tail = [c for c in calls if c[1] >= tail_offset]
        assert sum(c[3] for c in head) == direct
        for _, offset, address, _length in head:  # straight from/to the caller's buffer
            assert address - buffer_address(buf) == offset - extent.offset
        assert len(tail) == 1 and tail[0][1] == tail_offset and tail[0][3] == BLOCK
        assert not (buffer_address(buf) <= tail[0][2] < buffer_address(buf) + nbytes)


def test_misaligned_buffer_is_bounced_whole(
    path: DirectPath, namespace: _RecordingFileNamespace
) -> None:
    nbytes = 3 * REQUEST + 5
    extent = path.allocate(nbytes)
    backing = bytearray(_payload(nbytes + 1))
    src = memoryview(backing)[1:]  # a bytearray slice: never block aligned here
    assert buffer_address(src) % BLOCK
    path.write(extent, src.toreadonly())
    out = bytearray(nbytes + 3)
    dst = memoryview(out)[3:]
    path.read(extent, dst)
    assert bytes(dst) == bytes(src)
    src_lo = buffer_address(src)
    assert all(not (src_lo <= c[2] < src_lo + nbytes) for c in namespace.log)
    assert all(c[2] % BLOCK == 0 and c[3] <= REQUEST for c in namespace.log)


def test_release_frees_and_discards(path: DirectPath, namespace: _RecordingFileNamespace) -> None:
    a = path.allocate(10 * BLOCK)
    b = path.allocate(BLOCK)
    assert a.offset == METADATA_AREA  # nothing below the superblock area
    assert path.stats().used == 11 * BLOCK
    path.release(a)
    assert namespace.discards == [(a.offset, a.length)]
    assert path.stats().used == BLOCK
    with pytest.raises(InvalidArgument):
        path.release(a)
    assert namespace.discards == [(a.offset, a.length)]  # a bad free discards nothing
    path.release(b)
    assert path.stats().free == SIZE - METADATA_AREA


def test_flush_reaches_the_namespace(path: DirectPath, namespace: _RecordingFileNamespace) -> None:
    path.flush()
    assert namespace.flushes == 1
