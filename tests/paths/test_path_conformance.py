"""The ResidencyPath contract, run against every path (as containerd tests every snapshotter).

A new path kind gets the whole suite by adding one :class:`PathKind` to ``KINDS``. The contract is
the one stated in :mod:`dualbladed.paths.abstract`: aligned round trips, release and reuse, typed
out-of-space with nothing allocated, flush durable across a reopen, close semantics, and typed
errors only. The ENOSPC and EIO cases run on a real ext4 of a few MiB on a loop device (needs
root; see ``tests/namespace/loopdev_utils.py``) and check that both paths report the same type,
and hence the same gRPC code through the one map in :mod:`dualbladed.service.status`, at the
path and through :class:`~dualbladed.store.ObjectStore`.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import (
    DeviceIOError,
    DualbladeError,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    OutOfSpace,
    ResourceExhausted,
)
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import DIRECT, PAGECACHE, ResidencyPath
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.service.status import to_status
from dualbladed.store import ObjectStore
from loopdev_utils import LoopDevices, SmallExt4, punch_hole, small_fs_skip_reason

MiB = 1 << 20
NS_BYTES = 4 * MiB  # 1 MiB superblock area + 3 MiB of data
CAPACITY = 3 * MiB  # what each kind below offers to allocate


@dataclass
class Built:
    """A path with its on-disk state under one directory; ``namespace`` is what a store binds."""

    namespace: FileNamespace
    path: ResidencyPath

    def close(self) -> None:
        self.path.close()
        self.namespace.close()


@dataclass(frozen=True)
class PathKind:
    name: str
    #: Build (or reopen) the path with every file it uses under ``directory``.
    build: Callable[[Path], Built]
    #: Drop ``extent``'s cached pages, so that the next read reaches the medium.
    evict: Callable[[Built, Extent], None]
    #: Give ``extent``'s blocks back to the filesystem, so that writing it must allocate.
    unback: Callable[[Built, Extent], None]


def _build_direct(directory: Path) -> Built:
    ns = FileNamespace(directory / "direct.img", NS_BYTES)
    return Built(ns, DirectPath(ns, request_bytes=64 << 10, queue_depth=4))


def _build_pagecache(directory: Path) -> Built:
    ns = FileNamespace(directory / "ns.img", NS_BYTES)  # only the store's superblock lives here
    pc = PageCachePath(directory / "pc", slab_bytes=1 * MiB, max_bytes=CAPACITY, resident_ttl_s=0)
    return Built(ns, pc)


def _drop_cache(built: Built, extent: Extent) -> None:
    assert isinstance(built.path, PageCachePath)
    built.path.drop_cache(extent)


def _punch(built: Built, extent: Extent) -> None:
    punch_hole(built.namespace.fileno(), extent.offset, extent.length)


def _nothing(built: Built, extent: Extent) -> None:
    """O_DIRECT caches nothing; a slab extent never written has no blocks (sparse file)."""


KINDS = [
    PathKind(DIRECT, _build_direct, evict=_nothing, unback=_punch),
    PathKind(PAGECACHE, _build_pagecache, evict=_drop_cache, unback=_nothing),
]


@pytest.fixture(params=KINDS, ids=lambda k: k.name)
def kind(request: pytest.FixtureRequest) -> PathKind:
    return request.param


@pytest.fixture
def built(kind: PathKind, tmp_path: Path) -> Iterator[Built]:
    b = kind.build(tmp_path)
    yield b
    b.close()


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _aligned(data: bytes) -> memoryview:
    """``data`` in a page-aligned buffer (what arenas hand to the paths)."""
    buf = mmap.mmap(-1, max(len(data), 1))
    buf[: len(data)] = data
    return memoryview(buf)[: len(data)]


def _read(path: ResidencyPath, extent: Extent, n: int) -> bytes:
    out = memoryview(mmap.mmap(-1, extent.length))[:n]
    path.read(extent, out)
    return bytes(out)


# -- space and bytes --------------------------------------------------------------------------


def test_round_trip_at_aligned_offsets(built: Built) -> None:
    path = built.path
    a = path.alignment
    assert a >= 512 and a & (a - 1) == 0
    sizes = [a, 3 * a, 64 << 10, 5 * a + 17, 1]  # block multiples, a ragged tail, one byte
    extents = [path.allocate(n) for n in sizes]
    for i, (n, e) in enumerate(zip(sizes, extents)):
        assert e.offset % a == 0 and e.length % a == 0 and e.length >= n
        path.write(e, _aligned(_payload(n, i)))
    ordered = sorted(extents)
    for x, y in zip(ordered, ordered[1:]):
        assert x.end <= y.offset, f"{x} overlaps {y}"
    for i, (n, e) in enumerate(zip(sizes, extents)):
        assert _read(path, e, n) == _payload(n, i)
    assert path.stats().used == sum(e.length for e in extents)


def test_release_gives_space_back_for_reuse(built: Built) -> None:
    path = built.path
    fresh = path.stats()
    first = path.allocate(256 << 10)
    second = path.allocate(256 << 10)
    path.write(second, _aligned(_payload(256 << 10, 7)))
    path.release(first)
    assert path.stats().used == second.length
    again = path.allocate(256 << 10)
    assert again == first, "released space is handed out again"
    assert _read(path, second, 256 << 10) == _payload(256 << 10, 7), "a release touched a neighbour"
    path.release(again)
    path.release(second)
    assert (path.stats().free, path.stats().used) == (fresh.free, 0)


def test_out_of_space_is_typed_and_allocates_nothing(built: Built) -> None:
    path = built.path
    held = []
    with pytest.raises(OutOfSpace) as info:
        for _ in range(CAPACITY // (512 << 10) + 2):
            held.append(path.allocate(512 << 10))
    assert len(held) == CAPACITY // (512 << 10)
    before = path.stats()
    for length in (512 << 10, 10 * CAPACITY):
        with pytest.raises(OutOfSpace) as info:
            path.allocate(length)
        assert isinstance(info.value, ResourceExhausted)
        assert to_status(info.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert path.stats() == before, "a refused allocation changed the accounting"
    path.release(held[0])
    assert path.allocate(512 << 10) == held[0]


def test_flush_makes_writes_survive_a_reopen(kind: PathKind, tmp_path: Path) -> None:
    first = kind.build(tmp_path)
    extent = first.path.allocate(100_000)
    first.path.write(extent, _aligned(_payload(100_000, 3)))
    first.path.flush()
    first.close()
    again = kind.build(tmp_path)
    try:
        again.path.reserve(extent)  # the free map is rebuilt from committed metadata
        other = again.path.allocate(100_000)
        assert other.end <= extent.offset or other.offset >= extent.end
        assert _read(again.path, extent, 100_000) == _payload(100_000, 3)
    finally:
        again.close()


def test_close_is_idempotent_and_refuses_later_calls(built: Built) -> None:
    path = built.path
    extent = path.allocate(8192)
    path.write(extent, _aligned(bytes(8192)))
    path.close()
    path.close()
    calls: list[Callable[[], object]] = [
        lambda: path.allocate(4096),
        lambda: path.reserve(Extent(extent.end, 4096)),
        lambda: path.release(extent),
        lambda: path.write(extent, _aligned(bytes(4096))),
        lambda: path.read(extent, memoryview(bytearray(4096))),
        path.flush,
    ]
    for call in calls:
        with pytest.raises(FailedPrecondition, match="closed"):
            call()


def test_bad_buffers_are_typed(built: Built) -> None:
    path = built.path
    extent = path.allocate(8192)
    with pytest.raises(OutOfRange):
        path.write(extent, _aligned(bytes(extent.length + 1)))
    with pytest.raises(OutOfRange):
        path.read(extent, memoryview(bytearray(extent.length + 1)))
    with pytest.raises(InvalidArgument, match="writable"):
        path.read(extent, memoryview(bytes(4096)))
    with pytest.raises(InvalidArgument, match="contiguous"):
        path.write(extent, memoryview(bytearray(8192))[::2])


# -- device errors: the same type and gRPC code on every path -----------------------------------

_small_skip = small_fs_skip_reason()
needs_small_fs = pytest.mark.skipif(_small_skip is not None, reason=_small_skip or "")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallExt4]:
    loops = LoopDevices(tmp_path)
    try:
        yield SmallExt4(loops, tmp_path)
    finally:
        loops.cleanup()


@pytest.fixture
def on_small_fs(
    kind: PathKind, small_fs: SmallExt4, tmp_path: Path
) -> Iterator[tuple[Built, ObjectStore]]:
    """The path with its files on the small ext4, and a store on it (metadata on tmp_path)."""
    built = kind.build(small_fs.mount)
    try:
        store = ObjectStore.open(
            built.namespace,
            tmp_path / "state",
            paths={kind.name: built.path},
            format=True,
            access_flush_interval=0,
        )
        try:
            yield built, store
        finally:
            with contextlib.suppress(DualbladeError):  # after a cut the final flush fails
                store.close()
    finally:
        built.close()  # every fd on the small filesystem, or it cannot be unmounted


def _assert_typed(err: DualbladeError, kind: type, errno_: int, code: grpc.StatusCode) -> None:
    assert type(err) is kind, f"{type(err).__name__}: {err}"
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno_
    assert to_status(err)[0] == code


@pytest.mark.root
@needs_small_fs
def test_enospc_is_resource_exhausted_on_every_path(
    kind: PathKind, small_fs: SmallExt4, on_small_fs: tuple[Built, ObjectStore]
) -> None:
    built, store = on_small_fs
    extent = built.path.allocate(1 * MiB)
    kind.unback(built, extent)
    assert small_fs.fill() > 0
    before = built.path.stats()
    with pytest.raises(DualbladeError) as info:
        built.path.write(extent, _aligned(_payload(1 * MiB, 1)))
        built.path.flush()
    _assert_typed(info.value, ResourceExhausted, errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert built.path.stats() == before, "a failed write changed the allocation"
    built.path.release(extent)
    store_before = store.stats().paths[kind.name]
    with pytest.raises(DualbladeError) as info:
        store.put("t", b"k", _aligned(_payload(1 * MiB, 2)), persistent=True, durable=True)
    _assert_typed(info.value, ResourceExhausted, errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED)
    after = store.stats().paths[kind.name]
    assert (after.alloc, after.objects) == (store_before.alloc, store_before.objects)
    assert store.list(None) == []


@pytest.mark.root
@needs_small_fs
def test_eio_is_device_io_error_on_every_path(
    kind: PathKind, small_fs: SmallExt4, on_small_fs: tuple[Built, ObjectStore]
) -> None:
    built, store = on_small_fs
    info = store.put("t", b"k", _aligned(_payload(256 << 10, 4)), persistent=True, durable=True)
    kind.evict(built, info.extent)
    fresh = built.path.allocate(256 << 10)
    files = [p for p in small_fs.mount.rglob("*") if p.is_file()]
    small_fs.cut_under(files)

    with pytest.raises(DualbladeError) as err:
        store.get_into("t", b"k", memoryview(bytearray(256 << 10)))
    _assert_typed(err.value, DeviceIOError, errno.EIO, grpc.StatusCode.INTERNAL)
    kept = store.stat("t", b"k")  # a read error must not drop the object
    assert (kept.extent, kept.checksum) == (info.extent, info.checksum)

    with pytest.raises(DualbladeError) as err:
        built.path.write(fresh, _aligned(_payload(256 << 10, 5)))
        built.path.flush()  # buffered writes fail at write-back
    _assert_typed(err.value, DeviceIOError, errno.EIO, grpc.StatusCode.INTERNAL)
