"""Group commit (issue 14): a Batch's puts share one metadata transaction, all or nothing.

Real file namespace, real SQLite state dir, real arena. The transaction and flush counts are
observed by wrapping the real ``MetaStore.txn`` and ``DirectPath.flush`` (they still run).
"""

from __future__ import annotations

import contextlib

import pytest
import xxhash

from dualbladed.errors import DualbladeError, InvalidArgument
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.direct import DirectPath
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.batch import BatchExecutor
from dualbladed.sessions.registry import Session
from dualbladed.sessions.requests import BatchLimits, PutPackedRequest, PutRequest
from dualbladed.store import ObjectStore

BLOCK = 4096
N = 64


def payload(seed: int, size: int) -> bytes:
    block = xxhash.xxh3_128_digest(seed.to_bytes(8, "little"))
    return (block * (size // len(block) + 1))[:size]


class Rig:
    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.ns = FileNamespace(tmp_path / "ns.img", 64 << 20)
        self.arena = Arena.create(2 * N * BLOCK)
        self.session = Session(
            id="s1", token="t", pid=1, uid=0, gid=0, tenant_label="x", arena=self.arena, created=0
        )
        self.open()

    def open(self) -> None:
        self.direct = DirectPath(self.ns)
        self.flushes = 0
        real_flush = self.direct.flush

        def flush() -> None:
            self.flushes += 1
            real_flush()

        self.direct.flush = flush  # type: ignore[method-assign]
        self.store = ObjectStore.open(self.ns, self.tmp / "state", paths={"direct": self.direct})
        self.txns: list[bool] = []
        meta = self.store._meta
        real_txn = meta.txn
        self.fail_commit = False

        @contextlib.contextmanager
        def txn(*, durable: bool = False):
            self.txns.append(durable)
            with real_txn(durable=durable) as t:
                yield t
                if self.fail_commit:
                    raise DualbladeError("injected commit failure")

        meta.txn = txn  # type: ignore[method-assign]
        self.quota = 0
        self.executor = BatchExecutor(
            self.store, BatchLimits(4 * N, 1 << 20), lambda s: self.quota, parallelism=8
        )

    def close(self) -> None:
        self.executor.close()
        self.store.close()

    def puts(self, seed: int, *, durable: bool = False, n: int = N) -> list[PutRequest]:
        for i in range(n):
            view = self.arena.view(i * BLOCK, BLOCK)
            view[:] = payload(seed + i, BLOCK)
            view.release()
        return [
            PutRequest(f"k{i}".encode(), i * BLOCK, BLOCK, persistent=True, durable=durable)
            for i in range(n)
        ]

    def read(self, key: bytes) -> bytes:
        buf = bytearray(BLOCK)
        self.store.get_into(self.session.tenant, key, memoryview(buf))
        return bytes(buf)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()
    r.arena.close()
    r.ns.close()


def test_a_batch_of_puts_is_one_transaction_and_survives_a_restart(rig) -> None:
    outcomes = rig.executor.execute(rig.session, rig.puts(100))
    assert all(o.ok for o in outcomes)
    assert rig.txns == [False]
    assert len({o.generation for o in outcomes}) == N
    rig.close()
    rig.open()
    for i in range(N):
        assert rig.read(f"k{i}".encode()) == payload(100 + i, BLOCK)


def test_a_durable_batch_flushes_once_and_commits_full(rig) -> None:
    ops = rig.puts(7, durable=True)
    ops[3] = PutRequest(b"k3", 3 * BLOCK, BLOCK, persistent=True)  # one non-durable among them
    assert all(o.ok for o in rig.executor.execute(rig.session, ops))
    assert rig.txns == [True]
    assert rig.flushes == 1


def test_a_bad_op_fails_alone_and_the_rest_commit_together(rig) -> None:
    ops = rig.puts(3)
    ops[5] = PutRequest(b"k5", 5 * BLOCK, 0, persistent=True)  # length 0: refused
    outcomes = rig.executor.execute(rig.session, ops)
    assert isinstance(outcomes[5].error, InvalidArgument)
    assert [o.ok for i, o in enumerate(outcomes) if i != 5] == [True] * (N - 1)
    assert rig.txns == [False]


def test_a_failed_commit_fails_every_put_and_frees_every_extent(rig) -> None:
    assert all(o.ok for o in rig.executor.execute(rig.session, rig.puts(1)))
    free = rig.direct.stats().free
    rig.fail_commit = True
    outcomes = rig.executor.execute(rig.session, rig.puts(500))
    assert all(isinstance(o.error, DualbladeError) for o in outcomes)
    assert rig.direct.stats().free == free
    rig.fail_commit = False
    for i in range(N):  # the old versions stand
        assert rig.read(f"k{i}".encode()) == payload(1 + i, BLOCK)
    rig.close()
    rig.open()
    for i in range(N):
        assert rig.read(f"k{i}".encode()) == payload(1 + i, BLOCK)


def test_commit_puts_refuses_repeated_keys_and_frees_them(rig) -> None:
    free = rig.direct.stats().free
    data = memoryview(payload(9, BLOCK))
    staged = [rig.store.stage_put("0/x", b"same", data, persistent=True) for _ in range(2)]
    with pytest.raises(InvalidArgument):
        rig.store.commit_puts(staged)
    assert rig.direct.stats().free == free


def test_quota_holds_across_a_group_and_reservations_are_returned(rig) -> None:
    rig.quota = 10 * BLOCK
    outcomes = rig.executor.execute(rig.session, rig.puts(11))
    assert sum(o.ok for o in outcomes) == 10
    assert {type(o.error).__name__ for o in outcomes if not o.ok} == {"QuotaExceeded"}
    assert rig.executor._quotas._reserved == {} and rig.executor._quotas._uid_reserved == {}
    assert rig.store.usage(rig.session.tenant) == 10 * BLOCK
    stored = [i for i, o in enumerate(outcomes) if o.ok]
    again = [rig.puts(50)[i] for i in stored]  # replacing the same keys fits the quota
    assert all(o.ok for o in rig.executor.execute(rig.session, again))


def packed(rig, seed: int, n: int = N, *, durable: bool = False) -> PutPackedRequest:
    """The ``n`` objects of :meth:`Rig.puts` as one packed put (the same arena layout)."""
    rig.puts(seed, n=n)
    keys = [f"k{i}".encode() for i in range(n)]
    return PutPackedRequest(keys, [BLOCK] * n, 0, persistent=True, durable=durable)


def test_a_packed_put_is_one_transaction_one_run_and_survives_a_restart(rig) -> None:
    (outcome,) = rig.executor.execute(rig.session, [packed(rig, 300, durable=True)])
    assert outcome.ok and outcome.size == N * BLOCK
    assert list(outcome.generations) == sorted(set(outcome.generations))
    assert len(outcome.generations) == len(outcome.paths) == N
    assert rig.txns == [True] and rig.flushes == 1
    offsets = sorted(rig.store.stat(rig.session.tenant, f"k{i}".encode()).offset for i in range(N))
    assert offsets == list(range(offsets[0], offsets[0] + N * BLOCK, BLOCK))  # one allocation
    rig.close()
    rig.open()
    for i in range(N):
        assert rig.read(f"k{i}".encode()) == payload(300 + i, BLOCK)


def test_a_packed_put_fits_a_fragmented_path_one_object_at_a_time(rig) -> None:
    """No free range holds the whole group: each object is allocated alone, in the holes."""
    taken = [rig.direct.allocate(BLOCK) for _ in range(rig.direct.stats().free // BLOCK)]
    for extent in taken[::2]:  # every other block free: no hole holds two
        rig.direct.release(extent)
    assert rig.direct.stats().largest_free == BLOCK
    (outcome,) = rig.executor.execute(rig.session, [packed(rig, 40, n=8)])
    assert outcome.ok, outcome.error
    for i in range(8):
        assert rig.read(f"k{i}".encode()) == payload(40 + i, BLOCK)


def test_a_packed_put_over_the_quota_stores_nothing_and_returns_its_reservation(rig) -> None:
    rig.quota = 10 * BLOCK
    free = rig.direct.stats().free
    (outcome,) = rig.executor.execute(rig.session, [packed(rig, 5, n=11)])
    assert type(outcome.error).__name__ == "QuotaExceeded"
    assert rig.executor._quotas._reserved == {} and rig.executor._quotas._uid_reserved == {}
    assert rig.store.usage(rig.session.tenant) == 0 and rig.direct.stats().free == free
    (outcome,) = rig.executor.execute(rig.session, [packed(rig, 5, n=10)])
    assert outcome.ok and rig.store.usage(rig.session.tenant) == 10 * BLOCK


def test_packed_keys_count_against_the_op_limit_and_must_be_distinct(rig) -> None:
    too_many = PutPackedRequest([f"k{i}".encode() for i in range(4 * N + 1)], [1] * (4 * N + 1), 0)
    with pytest.raises(InvalidArgument, match="ops"):
        rig.executor.execute(rig.session, [too_many])
    (twice,) = rig.executor.execute(rig.session, [PutPackedRequest([b"a", b"a"], [1, 1], 0)])
    assert isinstance(twice.error, InvalidArgument)
    (short,) = rig.executor.execute(rig.session, [PutPackedRequest([b"a", b"b"], [1], 0)])
    assert isinstance(short.error, InvalidArgument)
    assert rig.txns == []


class CountingNamespace(FileNamespace):
    """The real file namespace, counting pwritev calls and failing those that cover a chosen
    offset when asked (a bad sector in the middle of a coalesced run)."""

    calls = 0
    bad_offset: int | None = None

    def pwritev(self, bufs, offset):  # noqa: ANN001, ANN201
        self.calls += 1
        total = sum(memoryview(b).nbytes for b in bufs)
        if self.bad_offset is not None and offset <= self.bad_offset < offset + total:
            raise OSError(5, "injected EIO")
        return super().pwritev(bufs, offset)


def test_neighbouring_extents_are_written_together_and_errors_stay_per_put(tmp_path) -> None:
    ns = CountingNamespace(tmp_path / "ns.img", 64 << 20)
    store = ObjectStore.open(ns, tmp_path / "state", paths={"direct": DirectPath(ns)})
    arena = Arena.create(N * BLOCK)  # page-aligned, so every 4 KiB slice may go out as is
    try:
        from dualbladed.store.group import PutSpec

        def specs(seed: int) -> list[PutSpec]:
            out = []
            for i in range(N):
                view = arena.view(i * BLOCK, BLOCK)
                view[:] = payload(seed + i, BLOCK)
                out.append(PutSpec(f"k{i}".encode(), view, persistent=True))
            return out

        staged = store.stage_many("0/x", specs(1))
        assert ns.calls < N // 8  # a few runs, not one write per object
        store.commit_puts(staged)
        bad = staged[32].extent.offset
        for k in (b"k31", b"k32", b"k33"):  # three neighbouring extents come free together
            store.delete("0/x", k)
        ns.bad_offset = bad  # the middle one is a bad block now
        calls = ns.calls
        again = store.stage_many(
            "0/x", [s for s in specs(1000) if s.key in (b"k31", b"k32", b"k33")]
        )
        assert ns.calls == calls + 1 + 3  # the run failed, then one write per put
        assert [isinstance(g, DualbladeError) for g in again] == [False, True, False]
        store.commit_puts([g for g in again if not isinstance(g, DualbladeError)])
        ns.bad_offset = None
        for i in range(N):
            if i == 32:
                continue
            buf = bytearray(BLOCK)
            store.get_into("0/x", f"k{i}".encode(), memoryview(buf))
            assert bytes(buf) == payload((1000 if i in (31, 33) else 1) + i, BLOCK)
        assert store.paths["direct"].stats().used == (N - 1) * BLOCK
    finally:
        store.close()
        arena.close()
        ns.close()
