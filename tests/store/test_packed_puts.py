"""``ObjectStore.put_packed`` (the store's side of ``PutPackedOp``) on real files.

What it must keep from ``stage_many`` + ``commit_puts``: the same rows (recovery, fsck and the
crash loop read them), the same bytes on the device, all or nothing, and a failed data write
that never reaches the metadata (a power-failure sweep over packed groups, as
``test_store_crash`` sweeps single puts).
"""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest
from objectstore_utils import check_consistent, new_namespace, open_store, payload

from dualbladed.errors import DeviceIOError, FailedPrecondition, InvalidArgument
from dualbladed.namespace.faulty import FaultyNamespace
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.store import ObjectStore
from dualbladed.store.meta import Txn
from dualbladed.store.packed import OVERLAP_MAX_BYTES

T = "1000/llama"
A = 4096
Model = dict[tuple[str, bytes], bytes]


def pack(datas: list[bytes]) -> tuple[bytearray, list[int]]:
    """The packed layout a client sends: each object at the previous one's end rounded up to
    ``A``, the gaps zero."""
    buf = bytearray()
    for d in datas:
        buf += d + bytes(-len(d) % A)
    return buf, [len(d) for d in datas]


def test_rows_and_bytes_match_single_puts(tmp_path: Path) -> None:
    """Every column of a packed put's row equals what a single put of the same payload writes
    (but the extent, the generation and the access time), and it reads back after a restart."""
    ns = new_namespace(tmp_path)
    store = open_store(ns, tmp_path / "state")
    datas = [payload(i, n) for i, n in enumerate([A, 3 * A, 100, A + 1, 2 * A])]
    buf, lengths = pack(datas)
    keys = [b"p%d" % i for i in range(len(datas))]
    done = store.put_packed(T, keys, memoryview(buf), lengths, align=A, persistent=True)
    assert done.paths == (DIRECT,) * len(keys)
    for i, data in enumerate(datas):
        store.put(T, b"s%d" % i, memoryview(data), persistent=True)
    for i, key in enumerate(keys):
        packed = store._meta.get(T, key)
        single = store._meta.get(T, b"s%d" % i)
        assert packed is not None and single is not None
        assert packed.generation == done.first_generation + i
        assert store.stat(T, key).generation == packed.generation
        same = ("path", "length", "size", "checksum", "persistent", "capacity", "chunk_crcs")
        assert {f: getattr(packed, f) for f in same} == {f: getattr(single, f) for f in same}
    store.close()
    fresh = open_store(ns, tmp_path / "state")
    contents = check_consistent(fresh)
    assert {k: contents[(T, k)] for k in keys} == dict(zip(keys, datas, strict=True))
    fresh.close()
    ns.close()


def test_aligned_objects_go_out_as_one_write_and_replace_old_versions(tmp_path: Path) -> None:
    inner = new_namespace(tmp_path)
    open_store(inner, tmp_path / "state").close()
    ns = FaultyNamespace(inner)
    store = open_store(ns, tmp_path / "state")
    store.put(T, b"k3", memoryview(payload(99, 5000)), persistent=True)  # replaced below
    used = store.stats().paths[DIRECT].alloc.used
    datas = [payload(i, A) for i in range(16)]
    buf, lengths = pack(datas)
    before = ns.stats.writes
    store.put_packed(T, [b"k%d" % i for i in range(16)], memoryview(buf), lengths, align=A)
    assert ns.stats.writes - before == 1  # 16 objects, one pwritev
    assert store.stats().paths[DIRECT].alloc.used == used - 2 * A + 16 * A  # k3's old extent freed
    contents = check_consistent(store)
    assert contents == {(T, b"k%d" % i): d for i, d in enumerate(datas)}
    assert store.stats().ephemeral_objects == 16  # not persistent: no rows
    assert store._meta.get(T, b"k3") is None  # the persistent version it replaced is gone
    store.close()
    inner.close()


@pytest.mark.parametrize("bad", ["key", "duplicate", "size", "span"])
def test_one_bad_object_stores_nothing(tmp_path: Path, bad: str) -> None:
    ns = new_namespace(tmp_path)
    store = open_store(ns, tmp_path / "state")
    keys = [b"a", b"b", b"c"]
    buf, lengths = pack([payload(i, A) for i in range(3)])
    view = memoryview(buf)
    if bad == "key":
        keys[1] = b"x" * 2000
    elif bad == "duplicate":
        keys[2] = b"a"
    elif bad == "size":
        lengths[1] = 0
    else:
        view = view[: 2 * A]
    with pytest.raises(InvalidArgument):
        store.put_packed(T, keys, view, lengths, align=A, persistent=True)
    assert store.stats().objects == 0
    assert store.stats().paths[DIRECT].alloc.used == 0
    store.close()
    ns.close()


def test_placement_many_spreads_a_group_over_paths(tmp_path: Path) -> None:
    """One placement call for the group; each object lands where it said, an unknown name
    falls back to direct, and everything reads back."""
    ns = new_namespace(tmp_path)
    pc = PageCachePath(tmp_path / "pc", max_bytes=8 << 20, slab_bytes=1 << 20)
    calls: list[list[int]] = []

    def many(tenant: str, sizes: list[int]) -> list[str]:
        calls.append(list(sizes))
        return [(PAGECACHE, DIRECT, "nowhere")[i % 3] for i in range(len(sizes))]

    store = open_store(ns, tmp_path / "state", extra={PAGECACHE: pc}, placement_many=many)
    datas = [payload(i, A * (1 + i % 2)) for i in range(7)]
    buf, lengths = pack(datas)
    keys = [b"m%d" % i for i in range(7)]
    done = store.put_packed(T, keys, memoryview(buf), lengths, align=A, persistent=True)
    assert calls == [lengths]
    assert done.paths == tuple((PAGECACHE, DIRECT, DIRECT)[i % 3] for i in range(7))
    assert {i.key: i.path for i in store.list(T)} == dict(zip(keys, done.paths, strict=True))
    assert check_consistent(store) == {(T, k): d for k, d in zip(keys, datas, strict=True)}
    store.close()
    ns.close()


# -- power-failure sweep over packed groups (as test_store_crash's, for put_packed) ----------


def _groups(seed: int = 77) -> list[tuple[list[bytes], list[int], bool]]:
    """(keys, payload seeds, durable): packed groups over 6 keys, some aligned (one write),
    some not (a write per object), overwriting each other."""
    rng = random.Random(seed)
    out = []
    for g in range(8):
        keys = rng.sample([b"g%d" % k for k in range(6)], rng.randint(1, 4))
        out.append((keys, [g * 10 + i for i in range(len(keys))], rng.random() < 0.5))
    return out


def _size(seed: int) -> int:
    return A * (1 + seed % 3) if seed % 20 < 10 else 500 + (seed * 7919) % (3 * A)


def _run(tmp: Path, fail_after: int | None, *, torn: bool) -> tuple[Model, int]:
    tmp.mkdir(parents=True)
    inner = FileNamespace(tmp / "ns.img", 8 << 20)
    open_store(inner, tmp / "state").close()
    faulty = FaultyNamespace(inner, fail_after_writes=fail_after, torn=torn)
    store = open_store(faulty, tmp / "state")
    model: Model = {}
    for keys, seeds, durable in _groups():
        datas = [payload(s, _size(s)) for s in seeds]
        buf, lengths = pack(datas)
        try:
            store.put_packed(
                T, keys, memoryview(buf), lengths, align=A, persistent=True, durable=durable
            )
        except DeviceIOError:
            continue
        model.update({(T, k): d for k, d in zip(keys, datas, strict=True)})
    writes = faulty.stats.writes
    inner.close()  # crash: the store is abandoned
    del store
    return model, writes


@pytest.mark.parametrize("torn", [False, True], ids=["eio", "torn"])
def test_power_failure_sweep_of_packed_groups(tmp_path: Path, torn: bool) -> None:
    _, total = _run(tmp_path / "count", None, torn=False)
    assert total >= 8
    for n in range(total + 1):
        tmp = tmp_path / f"n{n}"
        model, _ = _run(tmp, n, torn=torn)
        ns = FileNamespace(tmp / "ns.img")
        store = open_store(ns, tmp / "state")
        try:
            assert store._meta.integrity_check() == "ok"
            assert check_consistent(store) == model, f"state differs after failing write {n}"
        finally:
            store.close()
            ns.close()


def test_groups_appended_to_the_orders_keep_them_sorted_and_complete(tmp_path: Path) -> None:
    """Packed groups go past the end of the index's sorted structures in one step
    (``store.sortedappend``); the eviction order, the recency order and the key order still
    hold every object, in order, with their invariants (``_check``), interleaved with single
    puts and overwrites that take the item-by-item way."""
    ns = new_namespace(tmp_path)
    store = open_store(ns, tmp_path / "state")
    n = 0
    for g in range(4):
        keys = [b"o/%06d" % (n + i) for i in range(1300)]
        n += 1300
        buf, lengths = pack([payload(g, A)] * len(keys))
        store.put_packed(T, keys, memoryview(buf), lengths, align=A, persistent=True)
        store.put(T, b"o/%06d" % (g * 7), memoryview(payload(g, 10)), persistent=True)
    index = store._index
    by_key = index._tenants[T]  # a KeyMap: a SortedKeyList of entries by key
    by_key._check()
    assert [e.key for e in by_key] == [b"o/%06d" % i for i in range(n)]
    for table, name in index.lru._tables(T, DIRECT):
        table[name]._check()
        assert len(table[name]) == n
    oldest = [e.info.generation for e in index.lru.oldest(path=DIRECT)]
    assert oldest == sorted(oldest) and len(oldest) == n
    heat = index._heat._by_path[DIRECT]
    heat._check()
    assert len(heat) == n
    assert [e.info.key for e in index.coldest(DIRECT, n)] == [e.info.key for e in heat]
    store.close()
    ns.close()


# -- the overlapped write: rows go in while the data is written, COMMIT waits for it ----------


class _GatedDirect(DirectPath):
    """A direct path whose writes first wait (bounded) for the group's rows to be inserted,
    then record whether they were and whether they were already visible (committed) to
    another connection; ``fail`` makes the write fail after that, ``gate=False`` records
    without waiting."""

    def __init__(self, ns: FileNamespace, inserted: threading.Event, db: Path) -> None:
        super().__init__(ns)
        self.inserted, self.db = inserted, db
        self.seen: list[tuple[bool, int]] = []
        self.fail = False
        self.gate = True

    def write(self, extent, src) -> None:  # noqa: ANN001
        waited = self.inserted.wait(10.0) if self.gate else self.inserted.is_set()
        with sqlite3.connect(self.db) as other:  # sees committed rows only (WAL)
            (visible,) = other.execute("SELECT count(*) FROM objects").fetchone()
        self.seen.append((waited, visible))
        if self.fail:
            raise DeviceIOError("injected write failure")
        super().write(extent, src)


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    inserted = threading.Event()
    real = Txn.put_rows

    def put_rows(self: Txn, rows: list[tuple]) -> None:
        real(self, rows)
        inserted.set()

    monkeypatch.setattr(Txn, "put_rows", put_rows)
    ns = new_namespace(tmp_path)
    open_store(ns, tmp_path / "state").close()
    path = _GatedDirect(ns, inserted, tmp_path / "state" / "meta.sqlite3")
    store = ObjectStore.open(ns, tmp_path / "state", paths={DIRECT: path}, access_flush_interval=0)
    yield store, path, inserted
    store.close()
    ns.close()


def test_a_small_group_is_written_while_its_rows_go_in_and_committed_after(gated) -> None:
    store, path, _ = gated
    datas = [payload(i, A) for i in range(64)]
    buf, lengths = pack(datas)
    keys = [b"o%d" % i for i in range(64)]
    store.put_packed(T, keys, memoryview(buf), lengths, align=A, persistent=True)
    assert path.seen == [(True, 0)]  # the rows were in, not yet committed, during the write
    assert check_consistent(store) == {(T, k): d for k, d in zip(keys, datas, strict=True)}


def test_a_failed_overlapped_write_rolls_its_rows_back(gated) -> None:
    store, path, _ = gated
    free = path.stats().free
    buf, lengths = pack([payload(i, A) for i in range(8)])
    keys = [b"f%d" % i for i in range(8)]
    path.fail = True
    with pytest.raises(DeviceIOError, match="injected"):
        store.put_packed(T, keys, memoryview(buf), lengths, align=A, persistent=True)
    assert path.seen == [(True, 0)]
    assert store.list(T) == [] and store._meta.get(T, b"f0") is None
    assert path.stats().free == free  # every extent back


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "large"])
def test_durable_or_large_groups_write_before_any_row(gated, durable: bool) -> None:
    """Not overlapped: a durable group's flush must not run under the store lock, and a group
    over OVERLAP_MAX_BYTES would hold the lock while a long write finishes."""
    store, path, _ = gated
    path.gate = False  # the rows follow the write: it must not wait for them
    size = A if durable else OVERLAP_MAX_BYTES + A
    buf, lengths = pack([payload(1, size)])
    store.put_packed(T, [b"d"], memoryview(buf), lengths, align=A, persistent=True, durable=durable)
    assert path.seen == [(False, 0)]
    assert check_consistent(store) == {(T, b"d"): payload(1, size)}


def test_a_put_racing_close_is_refused_as_closed_and_frees_its_extents(tmp_path: Path) -> None:
    """close() shuts the writer down; a put that got it just before fails typed, not with
    the executor's RuntimeError (which would reach the client as INTERNAL)."""
    ns = new_namespace(tmp_path)
    store = open_store(ns, tmp_path / "state")
    free = store.paths[DIRECT].stats().free
    store._put_writer().shutdown()  # close()'s first step, as seen by a put in flight
    buf, lengths = pack([payload(i, A) for i in range(4)])
    with pytest.raises(FailedPrecondition, match="closed"):
        store.put_packed(T, [b"c%d" % i for i in range(4)], memoryview(buf), lengths, align=A)
    assert store.paths[DIRECT].stats().free == free
    store.close()
    ns.close()
