"""Helpers for the object-store tests: namespaces on real files, a store factory, a checker.

``make_direct_path`` returns the real :class:`dualbladed.paths.direct.DirectPath` when it is
importable. Until it lands, a tiny private stand-in (``_StandInDirectPath``) does the same job
over the same real namespace: an :class:`ExtentAllocator` over the data area and O_DIRECT I/O
through a page-aligned bounce buffer, so every byte still goes through ``Namespace.pwritev``
(which is what :class:`FaultyNamespace` intercepts).
"""

from __future__ import annotations

import mmap
from pathlib import Path

import xxhash
from dualbladed.alloc.abstract import AllocStats, Extent
from dualbladed.alloc.extent import ExtentAllocator
from dualbladed.namespace.abstract import Namespace
from dualbladed.namespace.file import FileNamespace
from dualbladed.objects import ObjectStore
from dualbladed.paths.abstract import DIRECT, ResidencyPath

NS_BYTES = 64 << 20


class _StandInDirectPath(ResidencyPath):
    name = DIRECT

    def __init__(self, namespace: Namespace) -> None:
        self.ns = namespace
        self.alignment = namespace.block_size
        self.allocator = ExtentAllocator(namespace.data_start, namespace.capacity, self.alignment)

    def _round(self, n: int) -> int:
        return -(-n // self.alignment) * self.alignment

    def allocate(self, length: int) -> Extent:
        return self.allocator.allocate(length)

    def release(self, extent: Extent) -> None:
        self.allocator.free(extent)

    def reserve(self, extent: Extent) -> None:
        self.allocator.reserve(extent)

    def write(self, extent: Extent, src: memoryview) -> None:
        n = memoryview(src).nbytes
        with mmap.mmap(-1, self._round(n)) as bounce:
            bounce[:n] = bytes(memoryview(src).cast("B"))
            view = memoryview(bounce)
            try:
                self.ns.pwritev([view], extent.offset)
            finally:
                view.release()

    def read(self, extent: Extent, dst: memoryview) -> None:
        n = memoryview(dst).nbytes
        with mmap.mmap(-1, self._round(n)) as bounce:
            view = memoryview(bounce)
            try:
                self.ns.preadv([view], extent.offset)
                memoryview(dst).cast("B")[:] = view[:n]
            finally:
                view.release()

    def flush(self) -> None:
        self.ns.flush()

    def stats(self) -> AllocStats:
        return self.allocator.stats()

    def free_extents(self):  # noqa: ANN201 - test helper
        return self.allocator.free_extents()

    def close(self) -> None:
        pass


def make_direct_path(namespace: Namespace) -> ResidencyPath:
    try:
        from dualbladed.paths.direct import DirectPath
    except ImportError:
        return _StandInDirectPath(namespace)
    return DirectPath(namespace)


def open_store(
    ns: Namespace, state: Path, *, extra: dict[str, ResidencyPath] | None = None, **kw: object
) -> ObjectStore:
    paths = {DIRECT: make_direct_path(ns), **(extra or {})}
    return ObjectStore.open(ns, state, paths=paths, access_flush_interval=0, **kw)


def new_namespace(tmp_path: Path, name: str = "ns.img") -> FileNamespace:
    return FileNamespace(tmp_path / name, NS_BYTES)


def payload(seed: int, size: int) -> bytes:
    """Deterministic, seed-distinct bytes (cheap: a repeated xxh3 digest)."""
    block = xxhash.xxh3_128_digest(seed.to_bytes(8, "little"))
    return (block * (size // len(block) + 1))[:size]


def check_consistent(store: ObjectStore) -> dict[tuple[str, bytes], bytes]:
    """Assert the store is self-consistent and return its contents.

    No two live extents overlap on a path, free + used == capacity, used equals the sum of live
    extent lengths, and every object reads back with a verifying checksum.
    """
    contents: dict[tuple[str, bytes], bytes] = {}
    by_path: dict[str, list[Extent]] = {}
    for info in store.list(None):
        by_path.setdefault(info.path, []).append(info.extent)
        buf = bytearray(info.size)
        store.get_into(info.tenant, info.key, memoryview(buf))
        contents[(info.tenant, info.key)] = bytes(buf)
    stats = store.stats()
    for name, usage in stats.paths.items():
        extents = sorted(by_path.get(name, []))
        for a, b in zip(extents, extents[1:]):
            assert a.end <= b.offset, f"overlap on {name}: {a} and {b}"
        assert usage.alloc.free + usage.alloc.used == usage.alloc.capacity
        assert usage.alloc.used == sum(e.length for e in extents)
    return contents
