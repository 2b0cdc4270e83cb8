"""ObjectStore behaviour on a real 64 MiB file namespace (O_DIRECT) and a real SQLite state dir.

Covers put/get/stat/list/delete, typed errors for every bad input with nothing stored lost,
sessions, usage and stats, batched last_access, silent torn writes caught by the checksum,
relocation between paths, and concurrent readers racing deletes and overwrites.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
from objectstore_utils import check_consistent, new_namespace, open_store, payload

from dualbladed.errors import (
    ChecksumMismatch,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    SuperblockError,
)
from dualbladed.namespace.faulty import FaultyNamespace
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.store import MAX_KEY_BYTES, ObjectStore

T = "1000/llama"


@pytest.fixture
def ns(tmp_path: Path) -> FileNamespace:
    n = new_namespace(tmp_path)
    yield n
    n.close()


@pytest.fixture
def store(ns: FileNamespace, tmp_path: Path) -> ObjectStore:
    s = open_store(ns, tmp_path / "state", max_object_bytes=8 << 20)
    yield s
    s.close()


def read(store: ObjectStore, tenant: str, key: bytes) -> bytes:
    info = store.stat(tenant, key)
    buf = bytearray(info.size)
    store.get_into(tenant, key, memoryview(buf))
    return bytes(buf)


def test_put_get_round_trip_unaligned_size(store: ObjectStore) -> None:
    data = payload(1, 10_001)
    info = store.put(T, b"k", memoryview(data), persistent=True)
    assert (info.size, info.path, info.persistent) == (10_001, "direct", True)
    assert info.length % 4096 == 0 and info.length >= info.size
    dst = bytearray(20_000)
    got = store.get_into(T, b"k", memoryview(dst))
    assert bytes(dst[:10_001]) == data
    assert got.generation == info.generation
    assert got.last_access >= info.last_access


def test_overwrite_frees_old_extent_and_bumps_generation(store: ObjectStore) -> None:
    first = store.put(T, b"k", memoryview(payload(1, 8192)), persistent=True)
    used = store.stats().paths["direct"].alloc.used
    second = store.put(T, b"k", memoryview(payload(2, 8192)), persistent=True)
    assert second.generation > first.generation
    assert store.stats().paths["direct"].alloc.used == used
    assert read(store, T, b"k") == payload(2, 8192)


def test_bad_inputs_raise_typed_errors_and_lose_nothing(store: ObjectStore) -> None:
    store.put(T, b"keep", memoryview(payload(7, 5000)), persistent=True)
    before = store.stats()
    cases = [
        (lambda: store.put(T, b"", memoryview(b"x")), InvalidArgument, "key length 0"),
        (
            lambda: store.put(T, b"k" * (MAX_KEY_BYTES + 1), memoryview(b"x")),
            InvalidArgument,
            "key length 1025",
        ),
        (lambda: store.put(T, b"keep", memoryview(b"")), InvalidArgument, "object size 0"),
        (
            lambda: store.put(T, b"keep", memoryview(bytes((8 << 20) + 1))),
            InvalidArgument,
            "outside 1..",
        ),
        (
            lambda: store.put(T, b"keep", memoryview(b"x"), path="nvme9"),
            InvalidArgument,
            "unknown residency path 'nvme9'",
        ),
        (
            lambda: store.get_into(T, b"keep", memoryview(bytearray(4999))),
            InvalidArgument,
            "holds 4999 bytes.*needs 5000",
        ),
        (lambda: store.get_into(T, b"nope", memoryview(bytearray(10))), NotFound, "nope"),
        (lambda: store.delete(T, b"nope"), NotFound, "nope"),
        (lambda: store.relocate(T, b"keep", "nvme9"), InvalidArgument, "unknown residency"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert store.stats() == before
    assert read(store, T, b"keep") == payload(7, 5000)


def test_out_of_space_leaves_store_unchanged(store: ObjectStore, ns: FileNamespace) -> None:
    keys = []
    with pytest.raises(OutOfSpace):
        for i in range(100):
            # ephemeral: never evicted, so the path really fills (persistent objects would be
            # evicted LRU to make room; see test_capacity_eviction)
            store.put(T, b"fill%d" % i, memoryview(payload(i, 4 << 20)), session="s1")
            keys.append(b"fill%d" % i)
    assert len(keys) >= 14  # 63 MiB data area / 4 MiB
    check_consistent(store)
    assert read(store, T, keys[-1]) == payload(len(keys) - 1, 4 << 20)


def test_tenants_are_isolated(store: ObjectStore) -> None:
    store.put("1/a", b"secret", memoryview(b"A" * 100), persistent=True)
    with pytest.raises(NotFound) as err:
        store.stat("2/b", b"secret")
    assert "1/a" not in str(err.value)
    assert [i.key for i in store.list("2/b")] == []
    assert store.usage("1/a") == 4096 and store.usage("2/b") == 0


def test_list_prefix_limit_and_all_tenants(store: ObjectStore) -> None:
    for k in (b"p/1", b"p/2", b"p/3", b"q/1"):
        store.put(T, k, memoryview(b"v"), persistent=True)
    store.put("2/x", b"p/9", memoryview(b"v"))
    assert [i.key for i in store.list(T, b"p/")] == [b"p/1", b"p/2", b"p/3"]
    assert [i.key for i in store.list(T, b"p/", limit=2)] == [b"p/1", b"p/2"]
    assert [(i.tenant, i.key) for i in store.list(None, b"p/9")] == [("2/x", b"p/9")]


def test_release_session_frees_only_that_sessions_ephemerals(store: ObjectStore) -> None:
    free0 = store.stats().paths["direct"].alloc.free
    store.put(T, b"e1", memoryview(payload(1, 9000)), session="s1")
    store.put(T, b"e2", memoryview(payload(2, 100)), session="s1")
    store.put(T, b"o", memoryview(payload(3, 100)), session="s2")
    store.put(T, b"p", memoryview(payload(4, 100)), persistent=True, session="s1")
    assert store.stats().sessions == {"s1": 2, "s2": 1}
    assert store.release_session("s1") == 2
    assert store.release_session("s1") == 0
    assert {i.key for i in store.list(T)} == {b"o", b"p"}
    store.release_session("s2")
    store.delete(T, b"p")
    assert store.stats().paths["direct"].alloc.free == free0
    assert store.usage(T) == 0


def test_last_access_is_batched_not_written_per_get(store: ObjectStore, tmp_path: Path) -> None:
    info = store.put(T, b"k", memoryview(b"x" * 10), persistent=True)
    for _ in range(5):
        store.get_into(T, b"k", memoryview(bytearray(10)))
    rows = store._meta.get(T, b"k")
    assert rows.last_access == info.last_access  # nothing written yet
    assert store.flush_access() == 1
    assert store._meta.get(T, b"k").last_access == store.stat(T, b"k").last_access
    assert store.flush_access() == 0


def test_silent_torn_write_is_caught_and_dropped(tmp_path: Path) -> None:
    inner = new_namespace(tmp_path)
    probe = open_store(inner, tmp_path / "state")  # formats; count the writes of one put
    probe.close()
    faulty = FaultyNamespace(inner, fail_after_writes=0, silent_torn=True)
    store = open_store(faulty, tmp_path / "state")
    data = payload(5, 64 << 10)
    store.put(T, b"torn", memoryview(data), persistent=True)  # acknowledged, half on disk
    used = store.stats().paths["direct"].alloc.used
    assert used == 64 << 10
    dst = bytearray(b"\xaa" * (64 << 10))
    with pytest.raises(ChecksumMismatch, match="torn"):
        store.get_into(T, b"torn", memoryview(dst))
    assert dst == bytes(64 << 10)  # zeroed: the bad bytes are never handed out
    with pytest.raises(NotFound):
        store.stat(T, b"torn")
    assert store.stats().paths["direct"].alloc.used == 0
    assert store._meta.get(T, b"torn") is None
    store.close()
    inner.close()


def test_state_dir_of_another_namespace_is_refused(tmp_path: Path) -> None:
    a = new_namespace(tmp_path, "a.img")
    open_store(a, tmp_path / "state").close()
    a.close()
    b = new_namespace(tmp_path, "b.img")
    with pytest.raises(SuperblockError, match="state dir belongs to namespace .*, device is"):
        open_store(b, tmp_path / "state")
    # format=True binds the state dir to the (already formatted) device instead
    store = open_store(b, tmp_path / "state", format=True)
    assert store.list(None) == []
    store.close()
    b.close()


def test_relocate_between_paths_keeps_bytes_and_frees_old(
    store: ObjectStore, ns: FileNamespace, tmp_path: Path
) -> None:
    store.close()
    pc = PageCachePath(tmp_path / "slabs", slab_bytes=4 << 20, max_bytes=16 << 20)
    s = open_store(ns, tmp_path / "state", extra={"pagecache": pc})
    data = payload(9, 70_000)
    before = s.put(T, b"m", memoryview(data), persistent=True)
    moved = s.relocate(T, b"m", "pagecache")
    assert (moved.path, moved.generation, moved.checksum) == (
        "pagecache",
        before.generation,
        before.checksum,
    )
    assert s.stats().paths["direct"].alloc.used == 0
    assert read(s, T, b"m") == data
    s.close()
    # the new location is committed: a reopen serves it from the page-cache path
    pc2 = PageCachePath(tmp_path / "slabs", slab_bytes=4 << 20, max_bytes=16 << 20)
    s2 = open_store(ns, tmp_path / "state", extra={"pagecache": pc2})
    assert s2.stat(T, b"m").path == "pagecache"
    assert read(s2, T, b"m") == data
    s2.close()


def test_promoting_an_ephemeral_object_starts_its_write_back_at_once(
    store: ObjectStore, ns: FileNamespace, tmp_path: Path
) -> None:
    """A promotion's pages are dirty and cannot be reclaimed until written back: at ratio 1 of
    the residency bench the weights refaulted instead. An ephemeral object's promotion starts
    its write-back (real ``sync_file_range``, counted by the starter); a persistent one's is
    fdatasynced by ``flush`` as before, and early write-back stays off for plain writes."""
    store.close()
    pc = PageCachePath(tmp_path / "slabs", slab_bytes=4 << 20, max_bytes=16 << 20)
    s = open_store(ns, tmp_path / "state", extra={"pagecache": pc})
    try:
        kept = payload(3, 200_000)
        s.put(T, b"p", memoryview(kept), persistent=True)
        s.relocate(T, b"p", "pagecache")
        assert pc.writeback_bytes == 0 and pc.writeback.starter is None  # flushed, not started
        data = payload(4, 300_000)
        s.put(T, b"e", memoryview(data), persistent=False)
        moved = s.relocate(T, b"e", "pagecache")
        assert moved.path == "pagecache"
        assert pc.writeback.starter is not None and pc.writeback.starter.calls == 1
        assert read(s, T, b"e") == data and read(s, T, b"p") == kept
        # plain writes to the page cache still start nothing (early write-back is off)
        w = s.put(T, b"w", memoryview(payload(5, 100_000)), persistent=False, path="pagecache")
        assert w.path == "pagecache" and pc.writeback.starter.calls == 1
        s.relocate(T, b"e", "direct")  # a demotion starts nothing
        assert pc.writeback.starter.calls == 1
    finally:
        s.close()


def test_concurrent_get_vs_delete_and_overwrite_never_returns_wrong_bytes(
    store: ObjectStore,
) -> None:
    size = 128 << 10
    versions = {i: payload(1000 + i, size) for i in range(8)}
    valid = set(versions.values())
    store.put(T, b"hot", memoryview(versions[0]), persistent=True)
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def reader() -> None:
        buf = bytearray(size)
        while not stop.is_set():
            try:
                store.get_into(T, b"hot", memoryview(buf))
            except NotFound:
                continue
            if bytes(buf) not in valid:
                errors.append("reader saw bytes of no version")
            reads[0] += 1

    def writer() -> None:
        for n in range(200):
            if n % 5 == 4:
                with contextlib.suppress(NotFound):
                    store.delete(T, b"hot")
            # another key churns allocations so freed extents get reused quickly
            store.put(T, b"churn", memoryview(payload(n, size)))
            store.put(T, b"hot", memoryview(versions[n % 8]), persistent=n % 2 == 0)
        stop.set()

    threads = [threading.Thread(target=reader) for _ in range(3)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert reads[0] > 0
    assert store.stats().pinned == 0
    check_consistent(store)


def test_delete_during_read_defers_freeing_until_unpin(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(3, 64 << 10)
    info = store.put(T, b"k", memoryview(data), persistent=True)
    direct = store.paths["direct"]
    real_read = direct.read
    in_read, resume = threading.Event(), threading.Event()

    def slow_read(extent, dst):  # noqa: ANN001, ANN202 - parks the reader mid-read
        real_read(extent, dst)
        in_read.set()
        resume.wait(10)

    monkeypatch.setattr(direct, "read", slow_read)
    out = bytearray(64 << 10)
    reader = threading.Thread(target=store.get_into, args=(T, b"k", memoryview(out)))
    reader.start()
    assert in_read.wait(10)
    store.delete(T, b"k")
    # the extent is still pinned: not free, and a new put cannot be handed it
    assert store.stats().pinned == 1
    assert store.stats().paths["direct"].alloc.used == info.length
    other = store.put(T, b"new", memoryview(payload(4, 64 << 10)))
    assert other.offset != info.offset
    resume.set()
    reader.join(10)
    assert bytes(out) == data
    assert store.stats().pinned == 0
    assert store.stats().paths["direct"].alloc.used == other.length
