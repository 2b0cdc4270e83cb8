"""The page-cache path on real slab files under tmp_path (ext4): buffered I/O, fadvise, mincore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import OutOfRange, OutOfSpace
from dualbladed.paths.pagecache import PageCachePath, slab_name
from wait_utils import wait_until

KiB = 1 << 10
MiB = 1 << 20


def _path(tmp_path: Path, **kw: int) -> PageCachePath:
    kw.setdefault("slab_bytes", 1 * MiB)
    kw.setdefault("max_bytes", 4 * MiB)
    return PageCachePath(tmp_path / "pc", resident_ttl_s=0.0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 100_000, 1 * MiB])
def test_round_trip_aligned_and_unaligned(tmp_path: Path, size: int) -> None:
    p = _path(tmp_path)
    data = os.urandom(size)
    ext = p.allocate(size)
    assert ext.length % p.alignment == 0 and ext.length >= size
    p.write(ext, memoryview(data))
    out = bytearray(size)
    p.read(ext, memoryview(out))
    assert out == data
    p.close()


def test_objects_pack_into_few_slabs_and_never_cross(tmp_path: Path) -> None:
    p = _path(tmp_path)
    extents = [p.allocate(100 * KiB) for _ in range(30)]  # 30 * 100 KiB in 1 MiB slabs
    files = sorted(f.name for f in (tmp_path / "pc").iterdir())
    assert files == [slab_name(i) for i in range(p.slab_count)]
    assert p.slab_count == 3  # 10 per 1 MiB slab: packed, not one file per object
    for e in extents:
        assert e.offset // p.slab_bytes == (e.end - 1) // p.slab_bytes
    assert len(set(extents)) == len(extents)


def test_out_of_space_at_max_bytes_changes_nothing(tmp_path: Path) -> None:
    p = _path(tmp_path, max_bytes=2 * MiB)
    held = [p.allocate(768 * KiB), p.allocate(768 * KiB)]
    before = (p.stats(), list(p.free_extents()), p.slab_count)
    with pytest.raises(OutOfSpace):
        p.allocate(512 * KiB)  # 256 KiB left in each slab: enough bytes, no single extent
    with pytest.raises(OutOfSpace):
        p.allocate(2 * MiB)  # larger than a slab can ever be
    assert (p.stats(), list(p.free_extents()), p.slab_count) == before
    assert len(list((tmp_path / "pc").iterdir())) == 2
    p.release(held[0])
    assert p.allocate(512 * KiB).offset == held[0].offset


def test_short_last_slab_respects_max_bytes(tmp_path: Path) -> None:
    p = _path(tmp_path, max_bytes=1 * MiB + 64 * KiB)
    assert p.stats().capacity == 1 * MiB + 64 * KiB
    p.allocate(1 * MiB)
    e = p.allocate(64 * KiB)
    assert e.offset == 1 * MiB
    assert os.path.getsize(tmp_path / "pc" / slab_name(1)) == 64 * KiB
    with pytest.raises(OutOfSpace):
        p.allocate(4 * KiB)


def test_io_outside_or_across_slabs_is_refused(tmp_path: Path) -> None:
    p = _path(tmp_path)
    p.allocate(4 * KiB)
    with pytest.raises(OutOfRange):
        p.read(Extent(1 * MiB - 4 * KiB, 8 * KiB), memoryview(bytearray(8 * KiB)))
    with pytest.raises(OutOfRange):
        p.write(Extent(3 * MiB, 4 * KiB), memoryview(bytes(4 * KiB)))


def test_reopen_finds_slabs_and_reserve_rebuilds_free_map(tmp_path: Path) -> None:
    p = _path(tmp_path)
    kept = [p.allocate(300 * KiB) for _ in range(5)]  # spills into slab 1
    payloads = [os.urandom(300 * KiB) for _ in kept]
    for e, d in zip(kept, payloads):
        p.write(e, memoryview(d))
    p.flush()
    p.close()

    q = _path(tmp_path)
    assert q.slab_count == 2
    for e in kept:  # what the store does from its committed extent table
        q.reserve(e)
    assert q.stats().used == sum(e.length for e in kept)
    for e, d in zip(kept, payloads):
        out = bytearray(len(d))
        q.read(e, memoryview(out))
        assert out == d
    fresh = q.allocate(300 * KiB)
    assert all(fresh.end <= e.offset or e.end <= fresh.offset for e in kept)
    q.close()


def test_resident_bytes_grows_with_writes_and_drops_after_release(tmp_path: Path) -> None:
    p = _path(tmp_path, slab_bytes=8 * MiB, max_bytes=8 * MiB)
    base = p.resident_bytes()
    a, b = p.allocate(2 * MiB), p.allocate(2 * MiB)
    for e in (a, b):
        p.write(e, memoryview(os.urandom(e.length)))
    grown = p.resident_bytes()
    assert grown >= base + 4 * MiB - 64 * KiB  # mincore of a real file: the pages are in RAM
    p.flush()  # DONTNEED only drops clean pages
    p.release(a)
    after_release = p.resident_bytes()
    assert after_release <= grown - 2 * MiB + 64 * KiB
    p.drop_cache(b)  # after a demotion: bytes stay on disk, pages leave RAM
    assert p.resident_bytes() <= after_release - 2 * MiB + 64 * KiB
    out = bytearray(b.length)
    p.read(b, memoryview(out))  # still readable (from disk)
    assert p.resident_bytes() >= 2 * MiB - 64 * KiB
    p.close()


def test_drop_cache_writes_back_dirty_pages_first(tmp_path: Path) -> None:
    p = _path(tmp_path, slab_bytes=4 * MiB, max_bytes=4 * MiB)
    e = p.allocate(2 * MiB)
    p.write(e, memoryview(os.urandom(e.length)))  # dirty, no flush
    p.drop_cache(e)
    assert p.resident_bytes() < 256 * KiB


def test_prefetch_brings_pages_in(tmp_path: Path) -> None:
    p = _path(tmp_path, slab_bytes=4 * MiB, max_bytes=4 * MiB)
    e = p.allocate(2 * MiB)
    p.write(e, memoryview(os.urandom(e.length)))
    p.drop_cache(e)
    low = p.resident_bytes()
    p.prefetch(e)  # WILLNEED starts readahead; it is asynchronous (and slow beside other I/O)
    assert wait_until(lambda: p.resident_bytes() >= low + 1 * MiB), (low, p.resident_bytes())


def test_resident_bytes_is_cached_for_the_ttl(tmp_path: Path) -> None:
    p = PageCachePath(tmp_path / "pc", slab_bytes=1 * MiB, max_bytes=1 * MiB, resident_ttl_s=60)
    e = p.allocate(512 * KiB)
    p.write(e, memoryview(os.urandom(e.length)))
    first = p.resident_bytes()
    p.flush()
    fd = os.open(tmp_path / "pc" / slab_name(0), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert p.resident_bytes() == first  # cached: the TTL has not passed
