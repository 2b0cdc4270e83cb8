"""Issue 14: the index's incremental structures agree with a full scan, and start-up is bulk.

Real file namespace and SQLite state dir. Each check compares what the incremental structure
answers (recency order, running totals, pages, bulk free map) with what a full scan of the
same store says, after puts, gets, overwrites, deletes, relocations and a restart.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from objectstore_utils import check_consistent, new_namespace, open_store, payload

from dualbladed.alloc.abstract import Extent
from dualbladed.alloc.extent import ExtentAllocator
from dualbladed.errors import InvalidArgument
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.store import ObjectStore
from dualbladed.store.index import ObjectInfo, info_from_values

T1, T2 = "1000/a", "1001/b"


@pytest.fixture
def ns(tmp_path: Path) -> FileNamespace:
    n = new_namespace(tmp_path)
    yield n
    n.close()


def _pc(tmp_path: Path) -> PageCachePath:
    return PageCachePath(tmp_path / "pc", max_bytes=8 << 20, slab_bytes=1 << 20)


def _scan_totals(store: ObjectStore) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for info in store.list(None):
        row = out.setdefault(info.tenant, {}).setdefault(info.path, [0, 0])
        row[0] += 1
        row[1] += info.size
    return {t: {p: tuple(v) for p, v in paths.items()} for t, paths in out.items()}


def _totals(store: ObjectStore) -> dict[str, dict[str, tuple[int, int]]]:
    return {t: {p: tuple(u) for p, u in ps.items()} for t, ps in store.totals().items()}


def _populate(store: ObjectStore) -> None:
    for i in range(40):
        tenant = T1 if i % 3 else T2
        path = PAGECACHE if i % 4 == 0 else DIRECT
        store.put(
            tenant, b"k%03d" % i, memoryview(payload(i, 1000 + i)), persistent=True, path=path
        )
    for i in range(5):  # ephemeral ones count too
        store.put(T1, b"e%d" % i, memoryview(payload(100 + i, 300)), session="s1")


def test_recency_order_follows_gets_and_moves(ns: FileNamespace, tmp_path: Path) -> None:
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    try:
        _populate(store)
        buf = memoryview(bytearray(4096))
        store.get_into(T1, b"k001", buf)  # now the hottest direct object
        time.sleep(0.002)
        store.get_into(T1, b"k002", buf)
        hottest = store.hottest(DIRECT, 2)
        assert [i.key for i in hottest] == [b"k002", b"k001"]
        coldest = store.coldest(DIRECT, 1000)
        assert [i.key for i in coldest] == [
            i.key
            for i in sorted(
                (i for i in store.list(None) if i.path == DIRECT), key=lambda i: i.last_access
            )
        ]
        assert all(i.path == PAGECACHE for i in store.coldest(PAGECACHE, 1000))
        # a relocated object keeps its place by last_access on the new path
        moved = store.coldest(PAGECACHE, 1)[0]
        store.relocate(moved.tenant, moved.key, DIRECT)
        assert moved.key not in {i.key for i in store.coldest(PAGECACHE, 1000)}
        assert store.coldest(DIRECT, 1)[0].key == moved.key  # oldest access of all
        store.delete(T1, b"k002")
        assert b"k002" not in {i.key for i in store.hottest(DIRECT, 1000)}
        assert _totals(store) == _scan_totals(store)
        assert store.release_session("s1") == 5
        assert _totals(store) == _scan_totals(store)
        stats = store.stats()
        assert stats.objects == len(store.list(None))
        assert stats.persistent_objects == sum(1 for i in store.list(None) if i.persistent)
    finally:
        store.close()


def test_restart_rebuilds_the_same_index_in_bulk(ns: FileNamespace, tmp_path: Path) -> None:
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    _populate(store)
    store.put(T1, b"k005", memoryview(payload(999, 5000)), persistent=True)  # overwrite
    store.delete(T2, b"k000")
    before = {(i.tenant, i.key): i for i in store.list(None) if i.persistent}
    free_before = {n: p.stats().free for n, p in store.paths.items()}
    ephemeral_bytes = sum(i.length for i in store.list(None) if not i.persistent)
    store.close()
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    try:
        after = {(i.tenant, i.key): i for i in store.list(None)}
        assert after.keys() == before.keys()
        for k, info in after.items():
            assert (info.path, info.offset, info.length, info.checksum) == (
                before[k].path,
                before[k].offset,
                before[k].length,
                before[k].checksum,
            )
        free_after = {n: p.stats().free for n, p in store.paths.items()}
        assert free_after[DIRECT] + free_after[PAGECACHE] == (
            free_before[DIRECT] + free_before[PAGECACHE] + ephemeral_bytes
        )
        assert _totals(store) == _scan_totals(store)
        check_consistent(store)
        # the next generation is above every committed one
        new = store.put(T1, b"new", memoryview(payload(7, 10)), persistent=True)
        assert new.generation > max(i.generation for i in before.values())
    finally:
        store.close()


def test_pages_walk_every_object_once(ns: FileNamespace, tmp_path: Path) -> None:
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    try:
        _populate(store)
        for tenant in (None, T1):
            seen, after = [], None
            while True:
                page = store.list_page(tenant, after, 7)
                assert len(page) <= 7
                if not page:
                    break
                seen.extend((i.tenant, i.key) for i in page)
                after = (page[-1].tenant, page[-1].key)
            assert seen == [(i.tenant, i.key) for i in store.list(tenant)]
        with pytest.raises(InvalidArgument):
            store.list_page(None, None, 0)
    finally:
        store.close()


def test_reserve_sorted_is_the_complement_and_all_or_nothing() -> None:
    a = ExtentAllocator(4096, 4096 * 100, 4096)
    used = [Extent(4096 * 3, 4096), Extent(4096 * 4, 8192), Extent(4096 * 50, 4096 * 50)]
    a.reserve_sorted(used)
    b = ExtentAllocator(4096, 4096 * 100, 4096)
    for e in used:
        b.reserve(e)
    assert list(a.free_extents()) == list(b.free_extents())
    assert a.stats() == b.stats()
    for bad in (
        [Extent(4096 * 4, 8192), Extent(4096 * 5, 4096)],  # overlap
        [Extent(4096 * 9, 4096), Extent(4096 * 3, 4096)],  # unsorted
        [Extent(4096 * 99, 8192)],  # out of bounds
    ):
        c = ExtentAllocator(4096, 4096 * 100, 4096)
        with pytest.raises(InvalidArgument):
            c.reserve_sorted(bad)
        assert c.stats().free == c.capacity
    with pytest.raises(InvalidArgument):  # not wholly free
        a.reserve_sorted([])


def test_residency_sweeps_are_spaced_by_what_they_cost(tmp_path: Path) -> None:
    """mincore costs CPU in proportion to the slabs: a sweep is reused for 100x its cost."""
    p = PageCachePath(tmp_path / "pc", max_bytes=8 << 20, slab_bytes=4 << 20, resident_ttl_s=1e-3)
    try:
        e = p.allocate(2 << 20)
        p.write(e, memoryview(payload(1, 2 << 20)))
        p.flush()
        first = p.resident_bytes()
        assert first >= (2 << 20) - (64 << 10)
        assert p._resident_cost > 0
        p._resident_cost = 10.0  # as if the last sweep had taken 10 s of CPU
        # the kernel reclaims the pages behind the path's back; the sweep is not due for 1000 s
        (slab,) = (tmp_path / "pc").iterdir()
        fd = os.open(slab, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        time.sleep(0.01)
        assert p.resident_bytes() == first
        p._resident_cost = 0.0  # cheap again: the configured TTL rules
        time.sleep(0.01)
        assert p.resident_bytes() < first
    finally:
        p.close()


def test_layer_appends_keep_the_running_totals(ns: FileNamespace, tmp_path: Path) -> None:
    store = open_store(ns, tmp_path / "state")
    try:
        store.reserve(T1, b"layer", 1 << 20, persistent=True)
        for i in range(3):
            store.append(T1, b"layer", memoryview(payload(i, 5000)))
        store.put(T1, b"plain", memoryview(payload(9, 100)), persistent=True)
        assert _totals(store) == _scan_totals(store)
        assert store.totals()[T1][DIRECT].bytes == 15000 + 100
        store.delete(T1, b"layer")
        assert _totals(store) == _scan_totals(store)
    finally:
        store.close()


def test_info_from_values_builds_the_same_frozen_info() -> None:
    values = (T1, b"k", 10, DIRECT, 4096, 4096, 2**64 - 1, 7, True, 1.5, None, 0, ())
    fast = info_from_values(values)
    assert fast == ObjectInfo(*values)
    assert type(fast) is ObjectInfo
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.size = 11  # type: ignore[misc]


def _orders(store: ObjectStore) -> dict[str, list[tuple[str, bytes]]]:
    """Every LRU order the capacity work walks, and the arbiter's recency per path."""
    idx = store._index
    out: dict[str, list[tuple[str, bytes]]] = {}
    for tenant in (T1, T2):
        out[f"tenant {tenant}"] = [
            (e.info.tenant, e.info.key) for e in idx.lru.oldest(tenant=tenant)
        ]
    for uid in (1000, 1001):
        out[f"uid {uid}"] = [(e.info.tenant, e.info.key) for e in idx.lru.oldest(uid=uid)]
    for path in (DIRECT, PAGECACHE):
        out[f"path {path}"] = [(e.info.tenant, e.info.key) for e in idx.lru.oldest(path=path)]
        out[f"heat {path}"] = [(e.info.tenant, e.info.key) for e in idx.coldest(path, 1000)]
    return out


def test_bulk_load_rebuilds_the_orders_installs_would_give(
    ns: FileNamespace, tmp_path: Path
) -> None:
    """Two tenants share each path and one tenant spans both paths: the bulk LRU load merges
    the (tenant, path) groups into every order in the same LRU order one-by-one adds give."""
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    _populate(store)
    buf = memoryview(bytearray(4096))
    for i in (7, 3, 11, 0, 20):  # accesses reorder some objects (flushed at close)
        store.get_into(T1 if i % 3 else T2, b"k%03d" % i, buf)
        time.sleep(0.002)
    store.close()
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    try:
        bulk = _orders(store)
        idx = store._index
        entries = list(idx.entries())
        for entry in entries:  # rebuild every order one entry at a time, in key order
            idx.lru.discard(entry)
        for entry in entries:
            idx.lru.add(entry)
        one_by_one = _orders(store)
        assert bulk == one_by_one
        assert len(bulk["path direct"]) + len(bulk["path pagecache"]) == 40
        assert bulk["heat direct"] == bulk["path direct"]  # the same last_access order
    finally:
        store.close()


def _spread(p: PageCachePath, n: int) -> list[Extent]:
    got = [p.allocate(8192 if i % 2 else 4096) for i in range(n)]
    for e in got[::3]:
        p.release(e)
    return sorted(got[1::3] + got[2::3], key=lambda e: e.offset)


def test_page_cache_bulk_reserve_matches_one_by_one(tmp_path: Path) -> None:
    p = PageCachePath(tmp_path / "a", max_bytes=8 << 20, slab_bytes=64 << 10)
    kept = _spread(p, 60)  # spills over several slabs
    assert len({e.offset // (64 << 10) for e in kept}) > 2
    p.close()
    bulk = PageCachePath(tmp_path / "a", max_bytes=8 << 20, slab_bytes=64 << 10)
    bulk.reserve_many(kept)
    single = PageCachePath(tmp_path / "a", max_bytes=8 << 20, slab_bytes=64 << 10)
    for e in kept:
        single.reserve(e)
    try:
        assert bulk.stats() == single.stats()
        assert [list(s.alloc.free_extents()) for s in bulk._slabs] == [
            list(s.alloc.free_extents()) for s in single._slabs
        ]
    finally:
        bulk.close()
        single.close()


def test_page_cache_bulk_reserve_is_all_or_nothing(tmp_path: Path) -> None:
    p = PageCachePath(tmp_path / "a", max_bytes=8 << 20, slab_bytes=64 << 10)
    kept = _spread(p, 60)
    p.close()
    q = PageCachePath(tmp_path / "a", max_bytes=8 << 20, slab_bytes=64 << 10)
    try:
        overlap = [*kept, Extent(kept[-1].offset, kept[-1].length)]  # the last slab conflicts
        with pytest.raises(InvalidArgument):
            q.reserve_many(overlap)
        assert q.stats().used == 0  # the earlier slabs were handed back too
        with pytest.raises(InvalidArgument):  # beyond the slabs: OutOfRange
            q.reserve_many([Extent(q.slab_count * (64 << 10), 4096)])
        assert q.stats().used == 0
        q.reserve(kept[0])  # not wholly free any more: the one-by-one path, same result
        q.reserve_many(kept[1:])
        assert q.stats().used == sum(e.length for e in kept)
    finally:
        q.close()


def _one_by_one(store: ObjectStore) -> dict[str, list[tuple[str, bytes]]]:
    """The orders rebuilt one entry at a time from the live entries' current state."""
    idx = store._index
    entries = list(idx.entries())
    for entry in entries:
        idx.lru.discard(entry)
        idx._heat.discard(entry.info.path, entry)
    for entry in entries:
        idx.lru.add(entry)
        idx._heat.add(entry.info.path, entry)
    return _orders(store)


def _updates_while_deferred(store: ObjectStore) -> None:
    buf = memoryview(bytearray(4096))
    for i in (9, 1, 30, 6):  # touches: last_access moves, membership stays
        store.get_into(T1 if i % 3 else T2, b"k%03d" % i, buf)
        time.sleep(0.002)
    store.delete(T1, b"k002")  # a loaded member leaves
    store.put(T1, b"k004", memoryview(payload(5, 900)), persistent=True)  # replaced
    store.put(T2, b"new", memoryview(payload(6, 700)), persistent=True)  # a new member
    store.put(T1, b"eph", memoryview(payload(7, 300)), session="s2")  # never a member
    store.delete(T1, b"k001")
    store.put(T1, b"k001", memoryview(payload(8, 100)), persistent=True, path=PAGECACHE)


def test_updates_before_the_deferred_orders_are_built_are_reflected(
    ns: FileNamespace, tmp_path: Path
) -> None:
    """A restart only records the LRU and recency orders; gets, puts, overwrites and deletes
    made before they are built must all show in them, as if the orders had been built eagerly."""
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    _populate(store)
    store.close()
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    try:
        idx = store._index
        assert idx.orders_deferred
        _updates_while_deferred(store)
        assert idx.orders_deferred  # updates alone do not build them
        store.complete_load()
        assert not idx.orders_deferred
        built = _orders(store)
        assert built == _one_by_one(store)
        members = {k for name, ks in built.items() if name.startswith("path") for k in ks}
        assert (T1, b"k002") not in members and (T1, b"eph") not in members
        assert {(T2, b"new"), (T1, b"k004"), (T1, b"k001")} <= members
        assert len(members) == 40 - 1 + 1  # k002 gone, "new" added; replacements stay one each
        for path in (DIRECT, PAGECACHE):  # the heat order is by last_access
            heat = list(idx._heat.iter_path(path))
            assert [e.last_access for e in heat] == sorted(e.last_access for e in heat)
        assert _totals(store) == _scan_totals(store)
        check_consistent(store)
    finally:
        store.close()


def test_first_eviction_walk_builds_the_deferred_orders(ns: FileNamespace, tmp_path: Path) -> None:
    """An eviction walk before the background build builds the orders itself; the arbiter's
    coldest/hottest candidates are empty until then (advisory: they never force the build)."""
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    _populate(store)
    store.close()
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    try:
        _updates_while_deferred(store)
        assert store.coldest(DIRECT, 1000) == [] and store.hottest(DIRECT, 1000) == []
        assert store._index.orders_deferred
        oldest = [(e.info.tenant, e.info.key) for e in store._index.lru.oldest(tenant=T1)]
        assert not store._index.orders_deferred  # the walk built both orders
        assert oldest == _one_by_one(store)[f"tenant {T1}"]
        coldest = [(i.tenant, i.key) for i in store.coldest(DIRECT, 1000)]
        assert coldest == _orders(store)["heat direct"] == _one_by_one(store)["heat direct"]
        assert len(coldest) == sum(1 for i in store.list(None) if i.path == DIRECT)
    finally:
        store.close()


def test_updates_during_an_unlocked_build_are_reflected_at_the_swap(
    ns: FileNamespace, tmp_path: Path
) -> None:
    """The daemon sorts the deferred orders without the store lock: updates made after the job
    was taken (and while it was being built) must all show after the swap."""
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    _populate(store)
    store.close()
    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: _pc(tmp_path)})
    try:
        idx = store._index
        with store._lock:
            job = idx.begin_orders()
        assert job is not None
        built = idx.build_orders(job)  # as the background thread, lock released
        _updates_while_deferred(store)  # after the build read the entries
        with store._lock:
            assert idx.finish_orders(job, built)
        assert not idx.orders_deferred
        assert _orders(store) == _one_by_one(store)
        touched = idx.lookup(T1, b"k001")
        assert touched is not None and touched.snapshot().last_access == touched.last_access
        with store._lock:  # a second swap of the same job is refused
            assert not idx.finish_orders(job, built)
        check_consistent(store)
    finally:
        store.close()
