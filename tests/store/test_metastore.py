"""MetaStore: transactions, namespace binding, listing and signed checksum storage.

Everything runs on a real SQLite file in ``tmp_path`` (WAL mode, real fsyncs).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from pathlib import Path

import grpc
import pytest

from dualbladed.errors import FailedPrecondition, ResourceExhausted, SuperblockError
from dualbladed.service.status import to_status
from dualbladed.store import MetaStore, ObjectRecord, parse_tenant, tenant_name
from dualbladed.store.meta import object_rows
from loopdev_utils import LoopDevices, SmallExt4, small_fs_skip_reason

NS = uuid.UUID("11111111-2222-3333-4444-555555555555")


def rec(key: bytes, gen: int, *, tenant: str = "1000/a", checksum: int = 7) -> ObjectRecord:
    return ObjectRecord(
        tenant=tenant,
        key=key,
        path="direct",
        offset=gen * 4096,
        length=4096,
        size=100,
        checksum=checksum,
        generation=gen,
        persistent=True,
        last_access=1.5,
    )


@pytest.fixture
def meta(tmp_path: Path) -> MetaStore:
    m = MetaStore(tmp_path / "meta.sqlite3", namespace_uuid=NS)
    yield m
    m.close()


def test_put_returns_replaced_record_and_get_reads_back(meta: MetaStore) -> None:
    assert meta.put(rec(b"k", 1)) is None
    old = meta.put(rec(b"k", 2))
    assert old == rec(b"k", 1)
    assert meta.get("1000/a", b"k") == rec(b"k", 2)
    assert meta.get("1000/b", b"k") is None


def test_checksum_above_int64_round_trips(meta: MetaStore) -> None:
    big = (1 << 64) - 3
    meta.put(rec(b"k", 1, checksum=big), durable=True)
    assert meta.get("1000/a", b"k").checksum == big


def test_object_rows_read_back_as_records_and_reset_a_layer_rows_capacity(
    meta: MetaStore,
) -> None:
    """A packed put's rows bind only the columns before ``capacity``: replacing a layer
    object's row still leaves an ordinary object (capacity 0, no chunk crcs), as a record-built
    row would, and every bound column reads back (the checksum above int64 too)."""
    layer = dataclasses.replace(rec(b"k1", 1), capacity=1 << 20, chunk_crcs=(5, 6))
    meta.put(layer)
    assert meta.get("1000/a", b"k1").capacity == 1 << 20
    big = (1 << 64) - 3
    rows = object_rows(
        "1000/a", [b"k1", b"k2"], ["direct"] * 2, [8192, 12288], [4096] * 2, [100] * 2,
        [7, big], range(2, 4), [1.5, 1.5],
    )  # fmt: skip
    with meta.txn() as t:
        t.put_rows(rows)
    assert meta.get("1000/a", b"k1") == rec(b"k1", 2)
    assert meta.get("1000/a", b"k2") == rec(b"k2", 3, checksum=big)


def test_txn_rolls_back_on_exception(meta: MetaStore) -> None:
    meta.put(rec(b"keep", 1))
    with pytest.raises(RuntimeError), meta.txn(durable=True) as t:
        t.put(rec(b"new", 2))
        t.delete("1000/a", b"keep")
        raise RuntimeError("boom")
    assert meta.get("1000/a", b"keep") == rec(b"keep", 1)
    assert meta.get("1000/a", b"new") is None
    # the connection is usable again, in NORMAL sync mode
    meta.put(rec(b"after", 3))
    assert meta.max_generation() == 3


def test_reopen_with_other_uuid_is_refused(tmp_path: Path) -> None:
    MetaStore(tmp_path / "m.db", namespace_uuid=NS).close()
    other = uuid.uuid4()
    with pytest.raises(SuperblockError, match=f"belongs to namespace {NS}, device is {other}"):
        MetaStore(tmp_path / "m.db", namespace_uuid=other)
    # still usable by its owner
    MetaStore(tmp_path / "m.db", namespace_uuid=NS).close()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    MetaStore(tmp_path / "m.db", namespace_uuid=NS).close()
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute("UPDATE meta SET v = '99' WHERE k = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(FailedPrecondition, match="schema version 99"):
        MetaStore(tmp_path / "m.db", namespace_uuid=NS)


def test_list_prefix_limit_and_tenant_isolation(meta: MetaStore) -> None:
    keys = [b"a", b"ab", b"ab\xff", b"ab\xff\x00", b"ac", b"b"]
    with meta.txn() as t:
        for i, k in enumerate(keys, 1):
            t.put(rec(k, i))
        t.put(rec(b"ab-other", 99, tenant="1001/x"))
    got = [r.key for r in meta.list("1000/a", prefix=b"ab")]
    assert got == [b"ab", b"ab\xff", b"ab\xff\x00"]
    assert [r.key for r in meta.list("1000/a", prefix=b"ab\xff")] == [b"ab\xff", b"ab\xff\x00"]
    assert [r.key for r in meta.list("1000/a", limit=2)] == [b"a", b"ab"]
    assert [r.key for r in meta.list("1001/x")] == [b"ab-other"]
    assert [r.generation for r in meta.records()] == [1, 2, 3, 4, 5, 6, 99]
    assert meta.max_generation() == 99


def test_touch_many_updates_in_one_batch(meta: MetaStore) -> None:
    meta.put(rec(b"x", 1))
    meta.put(rec(b"y", 2))
    meta.touch_many([("1000/a", b"x", 10.0), ("1000/a", b"y", 20.0), ("1000/a", b"gone", 5.0)])
    assert meta.get("1000/a", b"x").last_access == 10.0
    assert meta.get("1000/a", b"y").last_access == 20.0


def test_tenants_upsert_keeps_created(meta: MetaStore) -> None:
    meta.upsert_tenant(tenant_name(1000, "llama"), 1000, "llama")
    first = meta.tenants()[0]
    meta.upsert_tenant("1000/llama", 1000, "llama")
    assert meta.tenants() == [first]
    assert parse_tenant("1000/llama") == (1000, "llama")
    assert parse_tenant("plain") == (-1, "plain")


def test_committed_rows_survive_abandoned_connection(tmp_path: Path) -> None:
    m = MetaStore(tmp_path / "m.db", namespace_uuid=NS)
    m.put(rec(b"k", 1))
    # no close(): a second connection (as after a crash) sees the WAL commit
    m2 = MetaStore(tmp_path / "m.db", namespace_uuid=NS)
    assert m2.get("1000/a", b"k") == rec(b"k", 1)
    assert m2.integrity_check() == "ok"
    m2.close()
    m.close()


def test_closed_store_raises_failed_precondition(tmp_path: Path) -> None:
    m = MetaStore(tmp_path / "m.db", namespace_uuid=NS)
    m.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        m.get("1000/a", b"k")


_small_skip = small_fs_skip_reason()


@pytest.mark.root
@pytest.mark.skipif(_small_skip is not None, reason=_small_skip or "")
def test_full_state_filesystem_is_resource_exhausted_and_keeps_committed_rows(
    tmp_path: Path,
) -> None:
    """SQLITE_FULL on a real, filled ext4 is the same typed error as ENOSPC on a path, and the
    rows committed before it stay readable after a reopen."""
    loops = LoopDevices(tmp_path)
    try:
        fs = SmallExt4(loops, tmp_path, size=8 << 20)
        meta = MetaStore(fs.mount / "meta.sqlite3", namespace_uuid=NS)
        try:
            meta.put(rec(b"kept", 1), durable=True)
            fs.fill()
            with pytest.raises(ResourceExhausted, match="state directory's filesystem is full"):
                # Big rows until the WAL cannot grow: the key column takes up to 1 KiB here.
                for gen in range(2, 100_000):
                    meta.put(rec(bytes(900) + gen.to_bytes(4, "big"), gen), durable=True)
            assert to_status(ResourceExhausted("x"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            meta.close()
        reopened = MetaStore(fs.mount / "meta.sqlite3", namespace_uuid=NS)
        try:
            assert reopened.get("1000/a", b"kept") is not None
        finally:
            reopened.close()
    finally:
        loops.cleanup()
