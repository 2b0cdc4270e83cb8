"""Executes a session's batched I/O against the object store.

A Batch names ranges of the session's shared arena; this module turns each op into a store call
on a memoryview of that range, so KV bytes move between the namespace and the arena without ever
entering a gRPC message. It is the domain side of the ``Store.Batch`` RPC: the servicer only
converts protobuf to the request dataclasses (:mod:`dualbladed.sessions.requests`) and back. Outcomes carry the domain error
itself (a :class:`~dualbladed.errors.DualbladeError`, or None), never a wire status code: the
service layer maps it once (:func:`dualbladed.service.status.op_code`).

Group commit: in that parallel case the batch's puts are staged (written) concurrently and then
committed in one metadata transaction (:meth:`ObjectStore.commit_puts`), so a batch of many
small puts pays one SQLite commit, not one each; every put is still acknowledged only after it.

Packed puts (``PutPackedOp``, issue 14): many objects in one op, laid back to back in the arena,
with no protobuf sub-message and no pool hand-off per object. They are staged in one pass (one
allocation of the aligned total when a free range holds it, so one ``pwritev`` writes them) and
committed in one transaction, all or nothing: any refused object fails the op and frees what
the others had written.

Parallelism: the ops of one batch run concurrently on a shared pool of ``parallelism`` threads
when that cannot change their meaning -- no ``stop_on_error`` and no key named twice -- so a batch
of many small gets keeps the device's queue full instead of issuing them at queue depth 1 (a
layer's KV is typically tens of blocks of a few hundred KiB). Outcomes keep the request order.
Each op then does its I/O inline (:func:`~dualbladed.paths.engine.serial_transfers`): the batch
is the fan-out, and a second one per large object only cost CPU.

Bulk writes (a batch of writes of at least ``io.bulk_write_bytes``) run on a second pool whose
threads run ``io.bulk_write_nice`` below the daemon, behind the tenants' compute
(:mod:`dualbladed.sessions.bulk` says why and what counts).

Quotas: every put holds its bytes against the tenant's and the uid's quotas from before its
data write until after its commit (:class:`~dualbladed.sessions.quota.QuotaReservations`,
whose lock is a leaf lock; its docstring states the rules).

Stat, unpin and touch ops (issue 13): a stat answers whether a key exists, and with ``pin_ms`` pins a
hit for the session (:mod:`dualbladed.store.pins`); a miss is the op's NOT_FOUND, a normal
outcome, recorded in the metrics as a successful ``stat`` on path ``none`` (hits are recorded on
their path). A successful get by the session ends its pin on the key. A touch marks a key used
now without reading it (the eviction LRU's young end); its miss is NOT_FOUND and counts as a
stat miss does.

Results: this module makes the store calls; :mod:`dualbladed.sessions.outcomes` turns what
they return (and the errors they raise) into outcomes and metric records, statelessly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dualblade.v1.wire import ALIGNMENT
from dualbladed.errors import DualbladeError, InvalidArgument, NotFound
from dualbladed.paths.abstract import PATH_NAMES
from dualbladed.paths.engine import serial_transfers
from dualbladed.sessions.bulk import bulk_bytes, bulk_pool
from dualbladed.sessions.outcomes import (
    LayerDone,
    found,
    lookup_outcomes,
    packed_outcome,
    without_frames,
)
from dualbladed.sessions.quota import QuotaReservations
from dualbladed.sessions.registry import Session
from dualbladed.sessions.requests import (
    NOT_RUN,
    AppendRequest,
    BatchLimits,
    GetRequest,
    LayerOp,
    Op,
    OpOutcome,
    PutPackedRequest,
    PutRequest,
    RecordFn,
    RecordManyFn,
    ReserveRequest,
    StatRequest,
    TouchRequest,
    UnpinRequest,
)
from dualbladed.store import ObjectStore
from dualbladed.store.group import PutSpec, StagedPut

__all__ = ["BatchExecutor"]

T = TypeVar("T")


def _op_count(ops: Sequence[Op]) -> int:
    """Ops as ``max_batch_ops`` counts them: a packed put counts one per key."""
    return sum(len(op.keys) if isinstance(op, PutPackedRequest) else 1 for op in ops)


#: the requests that create objects, ephemeral unless ``persistent``
_EPHEMERAL_KINDS = (PutRequest, PutPackedRequest, ReserveRequest)


def _round_up(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


def _distinct_keys(ops: Sequence[Op]) -> bool:
    return len({op.key for op in ops}) == len(ops)


class BatchExecutor:
    def __init__(
        self,
        store: ObjectStore,
        limits: BatchLimits,
        quota_for: Callable[[Session], int],
        record: RecordFn | None = None,
        *,
        parallelism: int = 8,
        uid_quota_for: Callable[[Session], int] | None = None,
        record_many: RecordManyFn | None = None,
        session_live: Callable[[Session], bool] | None = None,
        bulk_nice: int = 0,
        bulk_min_bytes: int = 8 << 20,
    ) -> None:
        self._store = store
        self._session_live = session_live
        self._parallelism = parallelism
        self._pool = (
            ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="batch")
            if parallelism > 1
            else None
        )
        # bulk writes run niced, off the tenants' critical path (dualbladed.sessions.bulk)
        self._bulk_pool = bulk_pool(parallelism, bulk_nice)
        self._bulk_min_bytes = max(1, bulk_min_bytes)
        self._limits = limits
        self._record = record or (lambda *a: None)
        self._record_many = record_many
        self._quotas = QuotaReservations(store, quota_for, uid_quota_for)
        self._reserve = self._quotas.reserve
        self._unreserve = self._quotas.unreserve

    def execute(
        self, session: Session, ops: Sequence[Op], *, stop_on_error: bool = False
    ) -> list[OpOutcome]:
        """Run ``ops`` for ``session``; one outcome per op.

        A session can end (its client SIGKILLed) while its batch runs: the frame's liveness was
        checked when it arrived, and ``release_session`` may already have freed the session's
        ephemeral objects when this batch installs one more. So after a batch that may create
        ephemeral objects the session's liveness is checked again, and a dead session is
        released once more (idempotent). The order makes it exact: the registry drops the
        session before it releases it, and the check comes after this batch's commits, so
        either the check sees it dead or the registry's release comes after the commits.
        """
        outcomes = self._dispatch(session, ops, stop_on_error)
        if (
            self._session_live is not None
            and any(isinstance(op, _EPHEMERAL_KINDS) and not op.persistent for op in ops)
            and not self._session_live(session)
        ):
            with contextlib.suppress(DualbladeError):  # a closed store drops them at restart
                self._store.release_session(session.id)
        return outcomes

    def _dispatch(
        self, session: Session, ops: Sequence[Op], stop_on_error: bool
    ) -> list[OpOutcome]:
        packed = any(isinstance(op, PutPackedRequest) for op in ops)
        count = _op_count(ops) if packed else len(ops)
        if count > self._limits.max_batch_ops:
            raise InvalidArgument(
                f"batch has {count} ops; the limit is {self._limits.max_batch_ops}"
            )
        independent = not stop_on_error and len(ops) > 1
        if packed:  # a packed op is already one group; the others run in order around it
            independent = False
        elif independent and all(isinstance(op, StatRequest) for op in ops):
            return self._stat_all(session, ops)  # type: ignore[arg-type]
        elif independent and all(isinstance(op, TouchRequest) for op in ops):
            return self._touch_all(session, ops)  # type: ignore[arg-type]
        bulk = self._bulk_pool is not None and bulk_bytes(ops) >= self._bulk_min_bytes
        pool = self._bulk_pool if bulk else self._pool
        if pool is not None and independent and _distinct_keys(ops):
            return self._execute_grouped(session, ops, pool)
        if bulk and pool is not None:  # one task on the bulk pool, which never submits there
            return pool.submit(self._execute_in_order, session, ops, stop_on_error).result()
        return self._execute_in_order(session, ops, stop_on_error)

    def _execute_in_order(
        self, session: Session, ops: Sequence[Op], stop_on_error: bool
    ) -> list[OpOutcome]:
        outcomes: list[OpOutcome] = []
        failed = False
        for op in ops:
            if failed and stop_on_error:
                outcomes.append(NOT_RUN)
                continue
            if isinstance(op, PutPackedRequest):
                outcome = self._put_packed(session, op)
            else:
                outcome = self._run_one(session, op)
            failed = failed or not outcome.ok
            outcomes.append(outcome)
        return outcomes

    def _execute_grouped(
        self, session: Session, ops: Sequence[Op], pool: ThreadPoolExecutor
    ) -> list[OpOutcome]:
        """Independent ops (distinct keys): gets and deletes run on ``pool``; puts are staged
        (written) on it and then committed together, one metadata transaction for all
        (group commit, :mod:`dualbladed.store.group`). Outcomes keep the request order."""
        started = time.perf_counter()
        puts = [i for i, op in enumerate(ops) if isinstance(op, PutRequest)]
        others = [i for i, op in enumerate(ops) if not isinstance(op, PutRequest)]
        outcomes: list[OpOutcome | None] = [None] * len(ops)
        other_results = self._on_pool(pool, others, lambda i: self._run_one(session, ops[i]))
        staged_or_err = self._stage_on_pool(pool, session, [ops[i] for i in puts])
        ok = [(i, st) for i, st in zip(puts, staged_or_err) if not isinstance(st, OpOutcome)]
        for i, st in zip(puts, staged_or_err):
            if isinstance(st, OpOutcome):
                outcomes[i] = st
        if ok:
            try:
                infos = self._store.commit_puts([st for _, (st, _) in ok])
                for (i, _), info in zip(ok, infos):
                    outcomes[i] = OpOutcome(None, info.size, info.generation, info.path)
            except DualbladeError as err:
                failed = OpOutcome(without_frames(err))
                for i, _ in ok:
                    outcomes[i] = failed
            finally:
                for _, (_, held) in ok:
                    self._unreserve(session, held)
        elapsed = time.perf_counter() - started
        for i, _ in ok:  # a put that failed to stage was recorded by _stage
            out = outcomes[i]
            assert out is not None
            self._record(session.tenant, out.path or "none", "put", out.size, elapsed, out.ok)
        for i, out in zip(others, other_results, strict=True):
            outcomes[i] = out
        return outcomes  # type: ignore[return-value]  # every slot is filled above

    def _on_pool(
        self, pool: ThreadPoolExecutor, items: list[int], fn: Callable[[int], T]
    ) -> list[T]:
        """``[fn(i) for i in items]`` on ``pool``, in ``parallelism`` interleaved chunks: as
        many ops in flight as one future per op would give, without a future (and its lock and
        condition) per op, which dominated batches of many small objects."""
        if not items:
            return []
        n = min(self._parallelism, len(items))
        chunks = [items[k::n] for k in range(n)]
        out: list[T] = [None] * len(items)  # type: ignore[list-item]

        def run(chunk: list[int]) -> list[T]:
            if n == 1:  # one op (or one thread): let a large transfer fan out on the engine
                return [fn(i) for i in chunk]
            with serial_transfers():  # the batch is the fan-out: no second one per op
                return [fn(i) for i in chunk]

        for k, results in enumerate(pool.map(run, chunks)):
            out[k::n] = results
        return out

    def _stage_on_pool(
        self, pool: ThreadPoolExecutor, session: Session, puts: list[PutRequest]
    ) -> list[tuple[StagedPut, int] | OpOutcome]:
        """Stage the puts in ``parallelism`` *contiguous* chunks (each chunk's extents tend to
        be neighbours, which the direct path writes with one request), chunks in parallel."""
        if not puts:
            return []
        n = min(self._parallelism, len(puts))
        step = -(-len(puts) // n)
        chunks = [puts[k : k + step] for k in range(0, len(puts), step)]
        out: list[tuple[StagedPut, int] | OpOutcome] = []
        for results in pool.map(lambda ch: self._stage_chunk(session, ch), chunks):
            out.extend(results)
        return out

    def _stage_chunk(
        self, session: Session, puts: list[PutRequest]
    ) -> list[tuple[StagedPut, int] | OpOutcome]:
        """Check, reserve quota and write puts of a group (:meth:`ObjectStore.stage_many`); an
        error becomes that put's outcome (recorded here), and then it holds nothing."""
        started = time.perf_counter()
        out: list[tuple[StagedPut, int] | OpOutcome | None] = [None] * len(puts)
        views: list[memoryview] = []
        specs: list[PutSpec] = []
        slots: list[tuple[int, int]] = []  # (index into puts, bytes held)
        try:
            for i, op in enumerate(puts):
                try:
                    self._check_size(op.length)
                    if op.path is not None and op.path not in PATH_NAMES:
                        raise InvalidArgument(f"unknown residency path {op.path!r}")
                    src = session.arena.view(op.arena_offset, op.length)
                    views.append(src)
                    held = self._reserve(session, op.key, op.length, durable=op.durable)
                except DualbladeError as err:
                    out[i] = OpOutcome(without_frames(err))
                    continue
                specs.append(PutSpec(op.key, src, op.persistent, op.durable, session.id, op.path))
                slots.append((i, held))
            try:
                staged = self._store.stage_many(session.tenant, specs) if specs else []
            except BaseException:
                for _, held in slots:
                    self._unreserve(session, held)
                raise
            for (i, held), st in zip(slots, staged, strict=True):
                if isinstance(st, DualbladeError):
                    self._unreserve(session, held)
                    out[i] = OpOutcome(without_frames(st))
                else:
                    out[i] = (st, held)
        finally:
            for v in views:
                v.release()
        elapsed = time.perf_counter() - started
        for o in out:
            if isinstance(o, OpOutcome):
                self._record(session.tenant, "none", "put", 0, elapsed, False)
        return out  # type: ignore[return-value]  # every slot is filled above

    def close(self) -> None:
        for pool in (self._pool, self._bulk_pool):
            if pool is not None:
                pool.shutdown(wait=True)

    # -- one op ---------------------------------------------------------------------------

    def _run_one(self, session: Session, op: Op) -> OpOutcome:
        started = time.perf_counter()
        kind = type(op).__name__.removesuffix("Request").lower()
        path, nbytes = "", 0
        try:
            if isinstance(op, (StatRequest, UnpinRequest, TouchRequest)):
                outcome = self._lookup_op(session, op)
                path = outcome.path
            else:
                if isinstance(op, PutRequest):
                    info = self._put(session, op)
                elif isinstance(op, GetRequest):
                    info = self._get(session, op)
                elif isinstance(op, LayerOp):
                    info = self._layer_op(session, op)
                else:
                    info = self._store.delete(session.tenant, op.key, durable=op.durable)
                path, nbytes = info.path, getattr(info, "moved", info.size)
                outcome = OpOutcome(None, info.size, info.generation, info.path)
        except DualbladeError as err:
            outcome = OpOutcome(without_frames(err))
        self._record(
            session.tenant,
            path or "none",
            kind,
            nbytes,
            time.perf_counter() - started,
            outcome.ok or (kind in ("stat", "touch") and isinstance(outcome.error, NotFound)),
        )
        return outcome

    def _stat_all(self, session: Session, ops: Sequence[StatRequest]) -> list[OpOutcome]:
        """A lookup batch: every op a stat, in one store call (see ``ObjectStore.stat_many``).
        The metrics get one ``stat`` per op, each charged an equal share of the time."""
        started = time.perf_counter()
        results = self._store.stat_many(
            session.tenant, [(op.key, op.pin_ms) for op in ops], session=session.id
        )
        share = (time.perf_counter() - started) / len(ops)
        pins = [op.pin_ms > 0 for op in ops]
        return lookup_outcomes(session.tenant, "stat", results, share, self._record, pins)

    def _touch_all(self, session: Session, ops: Sequence[TouchRequest]) -> list[OpOutcome]:
        """A touch batch: one store call; metrics as :meth:`_stat_all` (a miss is no error)."""
        started = time.perf_counter()
        results = self._store.touch_many(session.tenant, [op.key for op in ops])
        share = (time.perf_counter() - started) / len(ops)
        return lookup_outcomes(session.tenant, "touch", results, share, self._record)

    def _lookup_op(
        self, session: Session, op: StatRequest | UnpinRequest | TouchRequest
    ) -> OpOutcome:
        if isinstance(op, UnpinRequest):
            return OpOutcome(pinned=self._store.unpin(session.tenant, op.key, session.id))
        if isinstance(op, TouchRequest):
            r = self._store.touch_many(session.tenant, [op.key])[0]
            if isinstance(r, DualbladeError):
                raise r
            return found(r)
        info = self._store.stat(session.tenant, op.key, session=session.id, pin_ms=op.pin_ms)
        return found(info, pinned=op.pin_ms > 0)

    def _check_size(self, length: int) -> None:
        if length <= 0:
            raise InvalidArgument(f"length must be > 0, got {length}")
        if length > self._limits.max_object_bytes:
            raise InvalidArgument(
                f"length {length} exceeds the object size limit {self._limits.max_object_bytes}"
            )

    def _put(self, session: Session, op: PutRequest):  # -> ObjectInfo
        self._check_size(op.length)
        if op.path is not None and op.path not in PATH_NAMES:
            raise InvalidArgument(f"unknown residency path {op.path!r}")
        src = session.arena.view(op.arena_offset, op.length)
        try:
            held = self._reserve(session, op.key, op.length, durable=op.durable)
            try:
                return self._store.put(
                    session.tenant,
                    op.key,
                    src,
                    persistent=op.persistent,
                    durable=op.durable,
                    session=session.id,
                    path=op.path,
                )
            finally:
                self._unreserve(session, held)
        finally:
            src.release()

    def _put_packed(self, session: Session, op: PutPackedRequest) -> OpOutcome:
        """Many puts, all or nothing, in one store call (``ObjectStore.put_packed``: one
        allocation pass, one write of the packed region when its objects fill their extents,
        one metadata transaction). If any put is refused, nothing changed and the op fails with
        that error. The metrics get one ``put`` per object, each charged an equal share of the
        time."""
        started = time.perf_counter()
        n = len(op.keys)
        lengths = op.lengths
        region: memoryview | None = None
        try:
            if n == 0 or len(lengths) != n:
                raise InvalidArgument(
                    f"put_packed needs one length per key, at least one: got {n} keys and "
                    f"{len(lengths)} lengths"
                )
            if len(set(op.keys)) != n:
                raise InvalidArgument("put_packed keys must be distinct")
            if op.path is not None and op.path not in PATH_NAMES:
                raise InvalidArgument(f"unknown residency path {op.path!r}")
            if min(lengths) <= 0 or max(lengths) > self._limits.max_object_bytes:
                for length in lengths:
                    self._check_size(length)  # raises for the first bad one
            span = sum(map(_round_up, lengths))
            region = session.arena.view(op.arena_offset, span)
            held = self._quotas.reserve_packed(session, op.keys, lengths, durable=op.durable)
            try:
                done = self._store.put_packed(
                    session.tenant,
                    op.keys,
                    region,
                    lengths,
                    align=ALIGNMENT,
                    persistent=op.persistent,
                    durable=op.durable,
                    session=session.id,
                    path=op.path,
                )
            finally:
                self._unreserve(session, held)
        except DualbladeError as err:
            share = (time.perf_counter() - started) / max(n, 1)
            for _ in range(max(n, 1)):
                self._record(session.tenant, "none", "put", 0, share, False)
            return OpOutcome(without_frames(err))
        finally:
            if region is not None:
                region.release()
        share = (time.perf_counter() - started) / n
        return packed_outcome(session.tenant, done, lengths, share, self._record, self._record_many)

    def _get(self, session: Session, op: GetRequest):  # -> ObjectInfo
        self._check_size(op.length)
        dst = session.arena.view(op.arena_offset, op.length)
        try:
            return self._store.get_into(session.tenant, op.key, dst, session=session.id)
        finally:
            dst.release()

    # -- layer objects (issue 12) ------------------------------------------------------------

    def _layer_op(self, session: Session, op: LayerOp) -> LayerDone:
        if isinstance(op, ReserveRequest):
            if not 0 < op.capacity <= self._limits.max_object_bytes:
                raise InvalidArgument(
                    f"reserve capacity {op.capacity} of key {op.key!r} is outside "
                    f"1..{self._limits.max_object_bytes} bytes (the object size limit)"
                )
            if op.path is not None and op.path not in PATH_NAMES:
                raise InvalidArgument(f"unknown residency path {op.path!r}")
            self._reserve(session, op.key, op.capacity)
            try:
                info = self._store.reserve(
                    session.tenant,
                    op.key,
                    op.capacity,
                    persistent=op.persistent,
                    session=session.id,
                    path=op.path,
                )
            finally:
                self._unreserve(session, op.capacity)
            return LayerDone(info.capacity, info.generation, info.path, 0)
        if isinstance(op, AppendRequest):
            self._check_size(op.length)
            src = session.arena.view(op.arena_offset, op.length)
            try:
                info = self._store.append(
                    session.tenant,
                    op.key,
                    src,
                    durable=op.durable,
                    expect_size=op.expect_size,
                )
            finally:
                src.release()
            return LayerDone(info.size, info.generation, info.path, op.length)
        if op.length < 0 or op.offset < 0:
            raise InvalidArgument(f"range offset {op.offset} and length {op.length} must be >= 0")
        room = op.length
        if room == 0:  # to the end: the arena must hold the rest of the object
            room = max(self._store.stat(session.tenant, op.key).size - op.offset, 0)
        if room > self._limits.max_object_bytes:
            raise InvalidArgument(
                f"length {room} exceeds the object size limit {self._limits.max_object_bytes}"
            )
        dst = session.arena.view(op.arena_offset, room)
        try:
            # Ask for exactly ``room`` bytes: an append landing after the stat is not read.
            n, info = self._store.read_range(session.tenant, op.key, op.offset, room, dst)
        finally:
            dst.release()
        return LayerDone(n, info.generation, info.path, n)
