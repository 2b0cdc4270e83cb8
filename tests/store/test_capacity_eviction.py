"""Capacity eviction, hit pins and durable deletes on a real ObjectStore (64 MiB file
namespace, O_DIRECT, real SQLite state dir).

The namespace holds 15 objects of 4 MiB (63 MiB data area), so the 16th persistent put must
evict; every test reads the survivors back byte for byte. The daemon-level behaviour (quota
eviction in the batch layer, both transports, dbctl, /metrics) is in
tests/daemon/test_capacity_daemon.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from objectstore_utils import check_consistent, new_namespace, open_store, payload

from dualbladed.errors import InvalidArgument, NotFound, OutOfSpace, PinLimitExceeded
from dualbladed.namespace.file import FileNamespace
from dualbladed.store import ObjectStore
from dualbladed.store.capacity import CapacityPolicy

T = "1000/llama"
U = "1000/other"
MB4 = 4 << 20
FIT = 15  # 4 MiB objects in the 64 MiB namespace (one block is the superblock area)


@pytest.fixture
def ns(tmp_path: Path) -> FileNamespace:
    n = new_namespace(tmp_path)
    yield n
    n.close()


def _store(ns: FileNamespace, tmp_path: Path, **policy: object) -> ObjectStore:
    return open_store(
        ns, tmp_path / "state", max_object_bytes=8 << 20, capacity=CapacityPolicy(**policy)
    )


@pytest.fixture
def store(ns: FileNamespace, tmp_path: Path) -> ObjectStore:
    s = _store(ns, tmp_path, max_pins_per_session=4)
    yield s
    s.close()


def put(store: ObjectStore, i: int, tenant: str = T, **kw: object) -> None:
    kw.setdefault("persistent", True)
    store.put(tenant, b"k%d" % i, memoryview(payload(i, MB4)), **kw)


def read(store: ObjectStore, i: int, tenant: str = T, session: str | None = None) -> bytes:
    buf = bytearray(MB4)
    store.get_into(tenant, b"k%d" % i, memoryview(buf), session=session)
    return bytes(buf)


def keys(store: ObjectStore) -> set[bytes]:
    return {info.key for info in store.list(None)}


def test_path_full_evicts_least_recently_used_first(store: ObjectStore) -> None:
    for i in range(FIT):
        put(store, i)
        time.sleep(0.002)
    assert read(store, 0) == payload(0, MB4)  # k0 is now the youngest; k1 the oldest
    put(store, 100)
    assert keys(store) == {b"k%d" % i for i in range(FIT) if i != 1} | {b"k100"}
    put(store, 101)
    assert b"k2" not in keys(store) and b"k0" in keys(store)
    assert store.evictions.total().count == 2
    assert store.evictions.total().bytes == 2 * MB4
    assert store.evictions.snapshot()[(T, "direct")].count == 2
    check_consistent(store)
    assert read(store, 100) == payload(100, MB4)


def test_eviction_crosses_tenants_on_a_full_path(store: ObjectStore) -> None:
    put(store, 0, tenant=U)  # the oldest object belongs to another tenant
    time.sleep(0.002)
    for i in range(1, FIT):
        put(store, i)
    put(store, 200)
    assert (U, b"k0") not in {(i.tenant, i.key) for i in store.list(None)}
    assert store.evictions.by_tenant()[U].count == 1


def test_ephemeral_objects_are_never_evicted(store: ObjectStore) -> None:
    for i in range(FIT):
        put(store, i, persistent=False, session="s1")
    with pytest.raises(OutOfSpace):
        put(store, 100)
    assert len(keys(store)) == FIT
    assert store.evictions.total().count == 0


def test_ephemeral_put_evicts_persistent_lru(store: ObjectStore) -> None:
    for i in range(FIT):
        put(store, i)
        time.sleep(0.002)
    put(store, 100, persistent=False, session="s1")
    assert b"k0" not in keys(store)


def test_eviction_off_fails_the_put_and_keeps_everything(ns: FileNamespace, tmp_path: Path) -> None:
    s = _store(ns, tmp_path, evict_persistent=False)
    try:
        for i in range(FIT):
            put(s, i)
        with pytest.raises(OutOfSpace):
            put(s, 100)
        assert len(keys(s)) == FIT
        assert s.evict_for_quota(T, MB4, keep=b"", durable=False) == 0
    finally:
        s.close()


def test_hit_pin_survives_pressure_until_read(store: ObjectStore) -> None:
    for i in range(FIT):
        put(store, i)
        time.sleep(0.002)
    info = store.stat(T, b"k0", session="s1", pin_ms=60_000)  # the oldest, pinned
    assert info.size == MB4
    put(store, 100)
    put(store, 101)
    assert b"k0" in keys(store)
    assert b"k1" not in keys(store) and b"k2" not in keys(store)
    assert store.pin_counts() == {T: 1}
    # another session's read does not end s1's pin, and k0 becomes the youngest anyway
    assert read(store, 0, session="s2") == payload(0, MB4)
    assert store.pin_counts() == {T: 1}
    assert read(store, 0, session="s1") == payload(0, MB4)  # the load the pin was taken for
    assert store.pin_counts() == {}
    # now evictable again: make it the oldest and push
    for i in range(3, FIT):
        read(store, i)
    for i in (100, 101):
        read(store, i)
    put(store, 102)
    assert b"k0" not in keys(store)
    check_consistent(store)


def test_hit_pin_times_out(store: ObjectStore) -> None:
    for i in range(FIT):
        put(store, i)
        time.sleep(0.002)
    store.stat(T, b"k0", session="s1", pin_ms=50)
    put(store, 100)
    assert b"k0" in keys(store)
    time.sleep(0.1)
    put(store, 101)  # the expired pin is collected before the walk: k0 is the oldest again
    assert b"k0" not in keys(store)
    assert store.pin_counts() == {}


def test_pins_end_with_the_session_and_by_unpin(store: ObjectStore) -> None:
    for i in range(FIT):
        put(store, i)
        time.sleep(0.002)
    store.stat(T, b"k0", session="s1", pin_ms=60_000)
    store.stat(T, b"k1", session="s2", pin_ms=60_000)
    assert store.unpin(T, b"k0", "s2") is False  # not s2's pin
    store.release_session("s2")
    assert store.pin_counts() == {T: 1}
    put(store, 100)
    assert b"k1" not in keys(store) and b"k0" in keys(store)
    assert store.unpin(T, b"k0", "s1") is True
    assert store.unpin(T, b"k0", "s1") is False
    put(store, 101)
    assert b"k0" not in keys(store)


def test_all_pinned_means_out_of_space(store: ObjectStore) -> None:
    for i in range(4):
        put(store, i)
        store.stat(T, b"k%d" % i, session=f"s{i}", pin_ms=60_000)
    for i in range(4, FIT):
        put(store, i, persistent=False, session="eph")
    with pytest.raises(OutOfSpace):
        put(store, 100)
    assert len(keys(store)) == FIT


def test_pin_follows_the_key_through_an_overwrite_and_delete_still_deletes(
    store: ObjectStore,
) -> None:
    put(store, 0)
    store.stat(T, b"k0", session="s1", pin_ms=60_000)
    store.put(T, b"k0", memoryview(payload(7, MB4)), persistent=True)  # another writer
    for i in range(1, FIT):
        put(store, i)
    put(store, 100)
    assert b"k0" in keys(store)  # the new version is pinned too
    store.delete(T, b"k0")
    with pytest.raises(NotFound):
        read(store, 0, session="s1")
    assert store.pin_counts() == {T: 1}  # held until it ends
    store.release_session("s1")
    assert store.pin_counts() == {}


def test_pin_cap_and_pin_ms_bounds_are_typed_errors(store: ObjectStore) -> None:
    for i in range(6):
        put(store, i)
    for i in range(4):
        store.stat(T, b"k%d" % i, session="s1", pin_ms=60_000)
    store.stat(T, b"k0", session="s1", pin_ms=60_000)  # re-pinning extends, costs nothing
    with pytest.raises(PinLimitExceeded, match="max_pins_per_session = 4"):
        store.stat(T, b"k4", session="s1", pin_ms=60_000)
    store.stat(T, b"k4", session="s2", pin_ms=60_000)  # the cap is per session
    store.stat(T, b"k5", session="s1")  # a plain stat needs no pin
    with pytest.raises(NotFound):
        store.stat(T, b"nope", session="s1", pin_ms=1000)
    with pytest.raises(InvalidArgument, match="pin_ms"):
        store.stat(T, b"k5", session="s1", pin_ms=store.capacity.max_pin_ms + 1)
    with pytest.raises(InvalidArgument, match="session"):
        store.stat(T, b"k5", pin_ms=10)
    assert store.pin_counts() == {T: 5}


def test_quota_eviction_is_lru_and_all_or_nothing(store: ObjectStore) -> None:
    for i in range(4):
        put(store, i)
        time.sleep(0.002)
    put(store, 9, persistent=False, session="eph")  # counts against usage, never evicted
    read(store, 0)  # order now: k1, k2, k3, k0
    assert store.evict_for_quota(T, 6 * MB4, keep=b"", durable=False) == 0  # cannot: no-op
    assert len(keys(store)) == 5
    freed = store.evict_for_quota(T, MB4 + 1, keep=b"k1", durable=False)  # k1 kept (overwrite)
    assert freed == 2 * MB4
    assert keys(store) == {b"k0", b"k1", b"k9"}
    assert store.evict_for_quota(U, 1, keep=b"", durable=False) == 0  # other tenant: nothing


def test_lru_order_survives_a_restart(ns: FileNamespace, tmp_path: Path) -> None:
    s = _store(ns, tmp_path)
    for i in range(FIT):
        put(s, i)
        time.sleep(0.002)
    read(s, 0)
    s.close()  # flushes the batched last_access
    s = _store(ns, tmp_path)
    try:
        put(s, 100)
        assert b"k1" not in keys(s) and b"k0" in keys(s)
    finally:
        s.close()


class _TxnSpy:
    """Wraps the real MetaStore.txn (real SQLite underneath) and records, from inside each
    transaction, the ``PRAGMA synchronous`` SQLite will commit it with (1 NORMAL, 2 FULL)."""

    def __init__(self, store: ObjectStore) -> None:
        self.meta = store._meta
        self.real = self.meta.txn
        self.modes: list[int] = []

    @contextlib.contextmanager
    def __call__(self, *, durable: bool = False) -> Iterator[object]:
        with self.real(durable=durable) as t:
            self.modes.append(self.meta._conn.execute("PRAGMA synchronous").fetchone()[0])
            yield t


def test_durable_delete_commits_with_synchronous_full(store: ObjectStore) -> None:
    put(store, 0)
    put(store, 1)
    spy = _TxnSpy(store)
    store._meta.txn = spy  # type: ignore[method-assign]
    try:
        store.delete(T, b"k0")
        store.delete(T, b"k1", durable=True)
    finally:
        del store._meta.txn
    assert spy.modes == [1, 2]  # NORMAL, then FULL
    assert store._meta.get(T, b"k0") is None and store._meta.get(T, b"k1") is None
    assert store._meta._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # back to NORMAL


def test_stat_many_matches_stat_across_lock_rounds(store: ObjectStore) -> None:
    from dualbladed.store.capacity import STAT_CHUNK

    for i in range(3):
        store.put(T, b"s%d" % i, memoryview(b"x" * (10 + i)), persistent=i != 1, session="s1")
    keys = [b"s%d" % (i % 5) for i in range(2 * STAT_CHUNK + 3)] + [b""]
    results = store.stat_many(T, [(k, 0) for k in keys], session="s2")
    assert len(results) == len(keys)
    for key, r in zip(keys, results):
        if key in (b"s0", b"s1", b"s2"):
            assert r.size == store.stat(T, key).size and r.key == key  # type: ignore[union-attr]
        elif key:
            assert isinstance(r, NotFound)
        else:
            assert isinstance(r, InvalidArgument) and "key length 0" in str(r)
    pinned = store.stat_many(T, [(b"s0", 1000), (b"s9", 1000), (b"s2", 10**9)], session="s2")
    assert not isinstance(pinned[0], Exception)
    assert isinstance(pinned[1], NotFound) and isinstance(pinned[2], InvalidArgument)
    assert store.pin_counts() == {T: 1}


def test_eviction_never_scans_every_object(store: ObjectStore, monkeypatch) -> None:  # noqa: ANN001
    """Issue 14: a put's cost must not grow with the object count. Eviction walks the LRU
    order (O(log n) per victim); the index's whole-table iterators must not be touched."""
    for i in range(FIT):
        put(store, i)
    for i in range(200):  # many small objects: an O(n) walk would visit them all
        store.put(T, b"small%d" % i, memoryview(b"s"), persistent=False, session="eph")

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("a whole-index scan on the put path")

    monkeypatch.setattr(store._index, "entries", forbidden)
    monkeypatch.setattr(store._index, "scan", forbidden)
    for i in range(100, 105):
        put(store, i)
    assert store.evict_for_quota(T, MB4, keep=b"", durable=False) == MB4
    monkeypatch.undo()
    assert store.evictions.total().count == 6


def test_full_pagecache_path_evicts_its_own_lru_only(ns: FileNamespace, tmp_path: Path) -> None:
    from dualbladed.paths.pagecache import PageCachePath

    pc = PageCachePath(tmp_path / "slabs", slab_bytes=4 << 20, max_bytes=8 << 20)
    s = open_store(ns, tmp_path / "state", extra={"pagecache": pc}, max_object_bytes=8 << 20)
    try:
        s.put(T, b"d0", memoryview(payload(50, MB4)), persistent=True, path="direct")
        time.sleep(0.002)
        for i in range(3):  # room for two: the third evicts the oldest page-cache object
            s.put(T, b"p%d" % i, memoryview(payload(i, MB4)), persistent=True, path="pagecache")
            time.sleep(0.002)
        assert keys(s) == {b"d0", b"p1", b"p2"}  # d0 is older, but on the other path
        assert s.evictions.snapshot() == {(T, "pagecache"): s.evictions.total()}
        check_consistent(s)
    finally:
        s.close()


def test_uid_quota_eviction_spans_the_uids_tenants_only(store: ObjectStore) -> None:
    other_uid = "2000/llama"
    put(store, 0, tenant=other_uid)  # the oldest of all, but another user's
    time.sleep(0.002)
    put(store, 1, tenant=U)
    time.sleep(0.002)
    put(store, 2, tenant=T)
    time.sleep(0.002)
    put(store, 3, tenant=U)
    freed = store.evict_for_quota(T, MB4 + 1, keep=b"k2", durable=False, uid=1000)
    assert freed == 2 * MB4  # k1 and k3 of 1000/other; 1000/llama's k2 is kept (overwrite)
    assert {(i.tenant, i.key) for i in store.list(None)} == {(other_uid, b"k0"), (T, b"k2")}
    assert store.evict_for_quota(T, 2 * MB4, keep=b"", durable=False, uid=1000) == 0


def test_touch_moves_objects_to_the_young_end_without_reading(
    ns: FileNamespace, tmp_path: Path
) -> None:
    """``touch_many`` is a use for the LRU (eviction skips the touched keys, across a restart
    too), reads nothing, answers a miss and a bad key per key, and pins nothing."""
    s = _store(ns, tmp_path)
    try:
        for i in range(FIT):
            put(s, i)
            time.sleep(0.002)
        got = s.touch_many(T, [b"k0", b"k1", b"nope", b""])
        assert [g.key for g in got[:2]] == [b"k0", b"k1"] and got[0].size == MB4
        assert isinstance(got[2], NotFound) and "nope" in str(got[2])
        assert isinstance(got[3], InvalidArgument)
        assert s.touch_many(U, [b"k2"])[0].__class__ is NotFound  # another tenant's key: absent
        assert s.pin_counts() == {}
        put(s, 100)  # evicts the oldest untouched object
        assert b"k2" not in keys(s) and {b"k0", b"k1"} <= keys(s)
        s.close()  # flushes the batched last_access: the touches persist
        s = _store(ns, tmp_path)
        put(s, 101)
        assert b"k3" not in keys(s) and {b"k0", b"k1"} <= keys(s)
        check_consistent(s)
    finally:
        s.close()
