"""Bulk writes run niced (``dualbladed.sessions.bulk``): on a real store and arena, and in a real
daemon.

What is observed is the kernel's own view: each store call records the nice of the thread it
runs on (``getpriority`` of its tid), and the daemon test reads ``/proc/<pid>/task/*/stat``.
Raising a thread's nice needs no privilege, so these hold for root and for a plain user alike.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.direct import DirectPath
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.batch import BatchExecutor
from dualbladed.sessions.bulk import bulk_bytes
from dualbladed.sessions.registry import Session
from dualbladed.sessions.requests import (
    AppendRequest,
    BatchLimits,
    DeleteRequest,
    GetRequest,
    PutPackedRequest,
    PutRequest,
    ReserveRequest,
)
from dualbladed.store import ObjectStore

MiB = 1 << 20
NICE = 7


def _nice_here() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class NiceRecordingStore:
    """A real ObjectStore; each write-side call records the nice of the thread running it."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.nices: list[int] = []

    def _wrap(self, name: str):
        call = getattr(self._store, name)

        def run(*a, **kw):
            self.nices.append(_nice_here())
            return call(*a, **kw)

        return run

    def __getattr__(self, name: str):
        if name in ("stage_many", "put", "append", "get_into", "reserve", "put_packed"):
            return self._wrap(name)
        return getattr(self._store, name)


@contextlib.contextmanager
def _executor(tmp_path: Path, **kw) -> Iterator[tuple]:
    """A BatchExecutor over a real store (direct path on a file namespace) and a real arena."""
    ns = FileNamespace(tmp_path / "ns.img", 96 * MiB)
    store = ObjectStore.open(ns, tmp_path / "state", paths={"direct": DirectPath(ns)})
    arena = Arena.create(16 * MiB)
    session = Session(
        id="s1", token="t", pid=1, uid=0, gid=0, tenant_label="x", arena=arena, created=0.0
    )
    rec = NiceRecordingStore(store)
    kw.setdefault("bulk_min_bytes", MiB)  # the tests' puts are 1-2 MiB
    executor = BatchExecutor(rec, BatchLimits(256, 8 * MiB), lambda s: 0, **kw)
    try:
        yield executor, rec, session, arena
    finally:
        executor.close()
        store.close()
        arena.close()
        ns.close()


@pytest.fixture
def setup(tmp_path: Path):
    with _executor(tmp_path, parallelism=4, bulk_nice=NICE) as parts:
        yield parts


def _fill(arena: Arena, offset: int, n: int, seed: int) -> bytes:
    data = (xxhash.xxh3_128_digest(seed.to_bytes(8, "little")) * (n // 16 + 1))[:n]
    view = arena.view(offset, n)
    view[:] = data
    view.release()
    return data


def test_bulk_bytes_counts_only_all_write_batches() -> None:
    put = PutRequest(b"a", 0, 3 * MiB)
    assert bulk_bytes([put, AppendRequest(b"b", 0, MiB)]) == 4 * MiB
    assert bulk_bytes([ReserveRequest(b"c", 8 * MiB), put]) == 3 * MiB  # a reserve moves no bytes
    assert bulk_bytes([PutPackedRequest((b"x", b"y"), (MiB, 2 * MiB), 0)]) == 3 * MiB
    assert bulk_bytes([put, GetRequest(b"a", 0, MiB)]) == 0  # a read in it: not bulk
    assert bulk_bytes([put, DeleteRequest(b"z")]) == 0
    assert bulk_bytes([]) == 0


def test_large_write_batches_run_niced_reads_and_small_writes_do_not(setup) -> None:
    executor, rec, session, arena = setup
    base = _nice_here()
    expected = {f"k{i}".encode(): _fill(arena, i * MiB, MiB, i) for i in range(4)}
    # grouped (distinct keys, 4 MiB): staged on the bulk pool
    outs = executor.execute(session, [PutRequest(k, i * MiB, MiB) for i, k in enumerate(expected)])
    assert all(o.ok for o in outs)
    assert rec.nices and set(rec.nices) == {min(19, base + NICE)}
    # one op, and stop_on_error: one task on the bulk pool
    rec.nices.clear()
    _fill(arena, 8 * MiB, 2 * MiB, 99)
    assert executor.execute(session, [PutRequest(b"one", 8 * MiB, 2 * MiB)])[0].ok
    outs = executor.execute(session, [PutRequest(b"two", 8 * MiB, 2 * MiB)], stop_on_error=True)
    assert outs[0].ok
    assert rec.nices == [min(19, base + NICE)] * 2
    # small writes and reads keep the daemon's priority
    rec.nices.clear()
    assert executor.execute(session, [PutRequest(b"small", 8 * MiB, 64 << 10)])[0].ok
    outs = executor.execute(
        session, [GetRequest(k, 12 * MiB + i * MiB, MiB) for i, k in enumerate(expected)]
    )
    assert all(o.ok for o in outs)
    assert rec.nices and set(rec.nices) == {base}
    # and the bulk path wrote the right bytes
    for i, data in enumerate(expected.values()):
        view = arena.view(12 * MiB + i * MiB, MiB)
        assert bytes(view) == data
        view.release()


def test_bulk_appends_run_niced(setup) -> None:
    executor, rec, session, arena = setup
    base = _nice_here()
    reserve = [ReserveRequest(f"l/{k}".encode(), 4 * MiB) for k in "kv"]
    assert all(o.ok for o in executor.execute(session, reserve))
    rec.nices.clear()
    _fill(arena, 0, 2 * MiB, 5)
    ops = [AppendRequest(b"l/k", 0, MiB), AppendRequest(b"l/v", MiB, MiB)]
    assert all(o.ok for o in executor.execute(session, ops))
    assert rec.nices and set(rec.nices) == {min(19, base + NICE)}


def test_bulk_nice_zero_keeps_one_pool(tmp_path: Path) -> None:
    with _executor(tmp_path, parallelism=2) as (executor, rec, session, arena):
        _fill(arena, 0, 2 * MiB, 1)
        assert executor.execute(session, [PutRequest(b"big", 0, 2 * MiB)])[0].ok
        assert rec.nices == [_nice_here()]
