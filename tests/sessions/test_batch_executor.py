"""BatchExecutor on a real store and a real arena: order, parallelism, stop_on_error, quotas."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import xxhash

from dualbladed.errors import Aborted, NotFound
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.direct import DirectPath
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.batch import BatchExecutor
from dualbladed.sessions.registry import Session
from dualbladed.sessions.requests import (
    BatchLimits,
    DeleteRequest,
    GetRequest,
    PutRequest,
)
from dualbladed.store import ObjectStore

BLOCK = 64 << 10


def payload(seed: int, size: int) -> bytes:
    block = xxhash.xxh3_128_digest(seed.to_bytes(8, "little"))
    return (block * (size // len(block) + 1))[:size]


class CountingStore:
    """Delegates to a real ObjectStore and records the peak number of concurrent get_into."""

    def __init__(self, store):
        self._store = store
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def get_into(self, *a, **kw):
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return self._store.get_into(*a, **kw)
        finally:
            with self._lock:
                self.active -= 1

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.fixture
def setup(tmp_path):
    ns = FileNamespace(tmp_path / "ns.img", 64 << 20)
    store = ObjectStore.open(ns, tmp_path / "state", paths={"direct": DirectPath(ns)})
    arena = Arena.create(8 << 20)
    session = Session(
        id="s1", token="t", pid=1, uid=0, gid=0, tenant_label="x", arena=arena, created=0.0
    )
    counting = CountingStore(store)
    executor = BatchExecutor(counting, BatchLimits(256, 1 << 20), lambda s: 0, parallelism=8)
    yield executor, counting, session, arena
    executor.close()
    store.close()
    arena.close()
    ns.close()


def test_parallel_batch_keeps_order_and_bytes(setup):
    executor, counting, session, arena = setup
    n = 48
    for i in range(n):
        view = arena.view(i * BLOCK, BLOCK)
        view[:] = payload(i, BLOCK)
        view.release()
    puts = [PutRequest(f"k{i}".encode(), i * BLOCK, BLOCK) for i in range(n)]
    assert all(o.ok for o in executor.execute(session, puts))
    base = n * BLOCK
    gets = [GetRequest(f"k{i}".encode(), base + i * BLOCK, BLOCK) for i in range(n)]
    for _ in range(5):
        outcomes = executor.execute(session, gets)
        if counting.peak > 1:
            break
    assert [o.size for o in outcomes] == [BLOCK] * n
    for i in range(n):
        view = arena.view(base + i * BLOCK, BLOCK)
        assert bytes(view) == payload(i, BLOCK)
        view.release()
    assert counting.peak > 1, "gets of distinct keys in one batch never overlapped"


def test_repeated_key_runs_in_order(setup):
    executor, counting, session, arena = setup
    view = arena.view(0, BLOCK)
    view[:] = payload(7, BLOCK)
    view.release()
    ops = [PutRequest(b"k", 0, BLOCK), GetRequest(b"k", BLOCK, BLOCK), DeleteRequest(b"k")]
    outcomes = executor.execute(session, ops)
    assert [o.error for o in outcomes] == [None, None, None]
    assert all(o.ok for o in outcomes)
    assert counting.peak == 1


def test_stop_on_error_aborts_later_ops(setup):
    executor, _, session, _ = setup
    ops = [GetRequest(b"missing", 0, BLOCK), DeleteRequest(b"other")]
    outcomes = executor.execute(session, ops, stop_on_error=True)
    assert isinstance(outcomes[0].error, NotFound) and "missing" in str(outcomes[0].error)
    assert not outcomes[0].ok
    assert isinstance(outcomes[1].error, Aborted)


def test_a_failed_op_does_not_pin_the_session_until_the_cyclic_gc(setup):
    """The outcome keeps the error, not the frames it went through (which hold the session)."""
    executor, _, _, arena = setup
    session = Session(
        id="s2", token="t2", pid=1, uid=0, gid=0, tenant_label="x", arena=arena, created=0.0
    )
    alive = weakref.ref(session)
    gc.disable()
    try:
        (outcome,) = executor.execute(session, [GetRequest(b"missing", 0, BLOCK)])
        assert isinstance(outcome.error, NotFound) and outcome.error.__traceback__ is None
        del outcome, session
        assert alive() is None, "a failed op's outcome kept its call frames (and session) alive"
    finally:
        gc.enable()


def test_layer_ops_report_sizes_and_record_bytes_moved(tmp_path):
    """reserve -> capacity, append -> size after it, read_range -> bytes placed; the metrics
    sink gets the bytes actually moved (none for a reserve)."""
    from dualbladed.sessions.requests import AppendRequest, ReadRangeRequest, ReserveRequest

    ns = FileNamespace(tmp_path / "ns.img", 64 << 20)
    store = ObjectStore.open(ns, tmp_path / "state", paths={"direct": DirectPath(ns)})
    arena = Arena.create(1 << 20)
    session = Session(
        id="s1", token="t", pid=1, uid=0, gid=0, tenant_label="x", arena=arena, created=0.0
    )
    recorded: list[tuple[str, int, bool]] = []
    executor = BatchExecutor(
        store,
        BatchLimits(16, 1 << 20),
        lambda s: 0,
        lambda tenant, path, op, nbytes, seconds, ok: recorded.append((op, nbytes, ok)),
        parallelism=1,
    )
    try:
        view = arena.view(0, 5000)
        view[:] = payload(1, 5000)
        view.release()
        outcomes = executor.execute(
            session,
            [
                ReserveRequest(b"L", 100_000),
                AppendRequest(b"L", 0, 3000),
                AppendRequest(b"L", 0, 2000, expect_size=3000),
                ReadRangeRequest(b"L", 1000, 0, 8192),
                AppendRequest(b"L", 0, 1, expect_size=1),
            ],
        )
        assert [(o.ok, o.size) for o in outcomes[:4]] == [
            (True, 100_000),
            (True, 3000),
            (True, 5000),
            (True, 4000),
        ]
        assert not outcomes[4].ok and "expected size 1" in str(outcomes[4].error)
        assert recorded == [
            ("reserve", 0, True),
            ("append", 3000, True),
            ("append", 2000, True),
            ("readrange", 4000, True),
            ("append", 0, False),
        ]
        got = arena.view(8192, 4000)
        assert bytes(got) == (payload(1, 5000)[:3000] + payload(1, 5000)[:2000])[1000:]
        got.release()
    finally:
        executor.close()
        store.close()
        arena.close()
        ns.close()


def test_parallel_gets_do_their_io_on_the_batch_threads(tmp_path):
    """A parallel batch of large gets issues each object's reads on the batch thread that runs
    the op (``serial_transfers``), not on the direct engine's helper pool: the batch already
    keeps ``parallelism`` objects in flight, and a second fan-out per object only cost CPU.
    Objects are four engine requests each, so without it every get would fan out."""
    ns = FileNamespace(tmp_path / "ns.img", 64 << 20)
    store = ObjectStore.open(
        ns, tmp_path / "state", paths={"direct": DirectPath(ns, request_bytes=BLOCK)}
    )
    arena = Arena.create(8 << 20)
    session = Session(
        id="s1", token="t", pid=1, uid=0, gid=0, tenant_label="x", arena=arena, created=0.0
    )
    executor = BatchExecutor(store, BatchLimits(256, 1 << 20), lambda s: 0, parallelism=4)
    size, n = 4 * BLOCK, 8
    names: list[str] = []
    real = ns.preadv
    try:
        for i in range(n):
            view = arena.view(i * size, size)
            view[:] = payload(i, size)
            view.release()
        puts = [PutRequest(f"k{i}".encode(), i * size, size) for i in range(n)]
        assert all(o.ok for o in executor.execute(session, puts))

        def spy(buffers, offset):
            names.append(threading.current_thread().name)
            return real(buffers, offset)

        ns.preadv = spy
        base = n * size
        gets = [GetRequest(f"k{i}".encode(), base + i * size, size) for i in range(n)]
        outcomes = executor.execute(session, gets)
        assert [o.size for o in outcomes] == [size] * n
        for i in range(n):
            view = arena.view(base + i * size, size)
            assert bytes(view) == payload(i, size)
            view.release()
    finally:
        ns.preadv = real
        executor.close()
        store.close()
        arena.close()
        ns.close()
    assert len(names) == 4 * n
    assert all(name.startswith("batch") for name in names), sorted(set(names))


def test_a_batch_that_outlives_its_session_leaves_no_ephemeral_object(tmp_path):
    """The client is SIGKILLed while its batch runs: the registry ends the session and the
    store releases its ephemeral objects *before* the batch's put commits. The executor sees
    the session dead after the batch and releases it again, so nothing is orphaned (CI once
    saw a killed tenant's bytes stay > 0); a live session's objects are left alone."""
    ns = FileNamespace(tmp_path / "ns.img", 64 << 20)
    store = ObjectStore.open(ns, tmp_path / "state", paths={"direct": DirectPath(ns)})
    arena = Arena.create(1 << 20)
    live: set[str] = {"alive"}
    executor = BatchExecutor(
        store,
        BatchLimits(256, 1 << 20),
        lambda s: 0,
        parallelism=1,
        session_live=lambda s: s.id in live,
    )
    try:
        sessions = {
            sid: Session(
                id=sid, token=sid, pid=1, uid=0, gid=0, tenant_label="x", arena=arena, created=0.0
            )
            for sid in ("dead", "alive")
        }
        store.release_session("dead")  # the registry's release ran first
        for sid, session in sessions.items():
            view = arena.view(0, BLOCK)
            view[:] = payload(1, BLOCK)
            view.release()
            (outcome,) = executor.execute(session, [PutRequest(f"{sid}/k".encode(), 0, BLOCK)])
            assert outcome.ok
        assert store.release_session("dead") == 0  # already freed by the executor
        assert store.release_session("alive") == 1  # the live session's object was kept
    finally:
        executor.close()
        store.close()
        arena.close()
        ns.close()
