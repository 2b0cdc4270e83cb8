"""The ``dualblade.v1.Store`` servicer: protobuf in, domain call, protobuf out. Nothing else."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualbladed.errors import InvalidArgument
from dualbladed.service.calls import rpc
from dualbladed.service.status import op_code
from dualbladed.sessions.batch import BatchExecutor
from dualbladed.sessions.registry import Session, SessionRegistry
from dualbladed.sessions.requests import (
    AppendRequest,
    BatchLimits,
    DeleteRequest,
    GetRequest,
    Op,
    OpOutcome,
    PutPackedRequest,
    PutRequest,
    ReadRangeRequest,
    ReserveRequest,
    StatRequest,
    TouchRequest,
    UnpinRequest,
)
from dualbladed.store import ObjectInfo, ObjectStore

PATH_TO_PB = {"direct": pb.RESIDENCY_PATH_DIRECT, "pagecache": pb.RESIDENCY_PATH_PAGECACHE}
PB_TO_PATH = {v: k for k, v in PATH_TO_PB.items()}


def object_info_pb(info: ObjectInfo) -> pb.ObjectInfo:
    return pb.ObjectInfo(
        key=info.key,
        size=info.size,
        path=PATH_TO_PB.get(info.path, pb.RESIDENCY_PATH_UNSPECIFIED),
        generation=info.generation,
        persistent=info.persistent,
        last_access=info.last_access,
        checksum=info.checksum,
        capacity=info.capacity,
    )


def _op_from_pb(op: pb.Op) -> Op:
    which = op.WhichOneof("op")
    if which == "put":
        p = op.put
        if p.path not in (pb.RESIDENCY_PATH_UNSPECIFIED, *PB_TO_PATH):
            raise InvalidArgument(f"unknown residency path value {p.path}")
        return PutRequest(
            p.key, p.arena_offset, p.length, p.persistent, p.durable, PB_TO_PATH.get(p.path)
        )
    if which == "put_packed":
        pp = op.put_packed
        if pp.path not in (pb.RESIDENCY_PATH_UNSPECIFIED, *PB_TO_PATH):
            raise InvalidArgument(f"unknown residency path value {pp.path}")
        return PutPackedRequest(
            list(pp.keys),
            list(pp.lengths),
            pp.arena_offset,
            pp.persistent,
            pp.durable,
            PB_TO_PATH.get(pp.path),
        )
    if which == "get":
        return GetRequest(op.get.key, op.get.arena_offset, op.get.length)
    if which == "delete":
        return DeleteRequest(op.delete.key, op.delete.durable)
    if which == "stat":
        return StatRequest(op.stat.key, op.stat.pin_ms)
    if which == "unpin":
        return UnpinRequest(op.unpin.key)
    if which == "touch":
        return TouchRequest(op.touch.key)
    if which in ("reserve", "append", "read_range"):
        return _layer_op_from_pb(which, op)
    raise InvalidArgument(
        "batch op has none of put, get, delete, reserve, append, read_range, stat, unpin, touch set"
    )


def _layer_op_from_pb(which: str, op: pb.Op) -> Op:
    """The layer-object ops (issue 12): reserve, append, read_range."""
    if which == "reserve":
        r = op.reserve
        if r.path and r.path not in PATH_TO_PB:
            raise InvalidArgument(
                f"unknown residency path {r.path!r} in reserve (expected one of "
                f"{', '.join(sorted(PATH_TO_PB))} or empty)"
            )
        return ReserveRequest(r.key, r.capacity, r.persistent, r.path or None)
    if which == "append":
        a = op.append
        expect = a.expect_size if a.HasField("expect_size") else None
        return AppendRequest(a.key, a.arena_offset, a.length, a.durable, expect)
    r = op.read_range
    return ReadRangeRequest(r.key, r.offset, r.length, r.arena_offset)


def op_result_pb(outcome: OpOutcome) -> pb.OpResult:
    """An op's outcome on the wire: its domain error becomes a google.rpc code, here only."""
    code, message = op_code(outcome.error)
    if outcome.generations:  # put_packed
        return pb.OpResult(
            code=code,
            size=outcome.size,
            generation=outcome.generation,
            path=PATH_TO_PB.get(outcome.path, pb.RESIDENCY_PATH_UNSPECIFIED),
            generations=outcome.generations,
            paths=[PATH_TO_PB.get(p, pb.RESIDENCY_PATH_UNSPECIFIED) for p in outcome.paths],
        )
    return pb.OpResult(
        code=code,
        message=message,
        size=outcome.size,
        generation=outcome.generation,
        path=PATH_TO_PB.get(outcome.path, pb.RESIDENCY_PATH_UNSPECIFIED),
        persistent=outcome.persistent,
        pinned=outcome.pinned,
    )


def run_batch(
    executor: BatchExecutor, session: Session, request: pb.BatchRequest
) -> pb.BatchResponse:
    """One ``Store.Batch``, whichever transport carried it (gRPC or the lease data plane)."""
    ops = [_op_from_pb(op) for op in request.ops]
    outcomes = executor.execute(session, ops, stop_on_error=request.stop_on_error)
    return pb.BatchResponse(results=[op_result_pb(o) for o in outcomes])


class StoreServicer(pb_grpc.StoreServicer):
    def __init__(
        self,
        registry: SessionRegistry,
        store: ObjectStore,
        executor: BatchExecutor,
        limits: BatchLimits,
        quota_for: Callable[[Session], int],
    ) -> None:
        self.registry = registry
        self._store = store
        self._executor = executor
        self._limits = limits
        self._quota_for = quota_for

    @rpc()
    def Batch(
        self, request: pb.BatchRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.BatchResponse:
        return run_batch(self._executor, session, request)

    @rpc()
    def Stat(
        self, request: pb.StatRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.ObjectInfo:
        return object_info_pb(self._store.stat(session.tenant, request.key))

    @rpc()
    def List(
        self, request: pb.ListRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.ListResponse:
        infos = self._store.list(session.tenant, prefix=request.prefix, limit=request.limit)
        return pb.ListResponse(objects=[object_info_pb(i) for i in infos])

    @rpc()
    def Session(
        self, request: pb.SessionInfoRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.SessionInfo:
        return pb.SessionInfo(
            session_id=session.id,
            tenant=session.tenant,
            arena_bytes=session.arena.size,
            quota_bytes=self._quota_for(session),
            used_bytes=self._store.usage(session.tenant),
            max_batch_ops=self._limits.max_batch_ops,
            max_object_bytes=self._limits.max_object_bytes,
            max_pins_per_session=self._store.capacity.max_pins_per_session,
            max_pin_ms=self._store.capacity.max_pin_ms,
            evict_persistent=self._store.capacity.evict_persistent,
        )
