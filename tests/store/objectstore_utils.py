"""Helpers for the object-store tests: namespaces on real files, a store factory, a checker.

Stores run on the real :class:`~dualbladed.paths.direct.DirectPath` (O_DIRECT through
``Namespace.pwritev``, which is what :class:`FaultyNamespace` intercepts).
"""

from __future__ import annotations

from pathlib import Path

import xxhash

from dualbladed.alloc.abstract import Extent
from dualbladed.namespace.abstract import Namespace
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import DIRECT, ResidencyPath
from dualbladed.paths.direct import DirectPath
from dualbladed.store import ObjectStore

NS_BYTES = 64 << 20


def open_store(
    ns: Namespace, state: Path, *, extra: dict[str, ResidencyPath] | None = None, **kw: object
) -> ObjectStore:
    paths = {DIRECT: DirectPath(ns), **(extra or {})}
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
