"""The requests and outcomes of a ``Store.Batch``, as the batch executor sees them.

The servicer converts protobuf ops into these dataclasses (and outcomes back), so
:mod:`dualbladed.sessions.batch` never speaks gRPC. An outcome carries the domain error itself
(a :class:`~dualbladed.errors.DualbladeError`, or None); the service layer maps it to a wire
status code once (:func:`dualbladed.service.status.op_code`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dualbladed.errors import Aborted, DualbladeError

__all__ = [
    "NOT_RUN",
    "AppendRequest",
    "BatchLimits",
    "DeleteRequest",
    "GetRequest",
    "LayerOp",
    "Op",
    "OpOutcome",
    "PutPackedRequest",
    "PutRequest",
    "ReadRangeRequest",
    "RecordFn",
    "RecordManyFn",
    "ReserveRequest",
    "StatRequest",
    "TouchRequest",
    "UnpinRequest",
]


@dataclass(frozen=True)
class PutRequest:
    key: bytes
    arena_offset: int
    length: int
    persistent: bool = False
    durable: bool = False
    path: str | None = None


@dataclass(frozen=True)
class PutPackedRequest:
    """Many puts in one op (``PutPackedOp``): object ``i`` lies in the arena at ``arena_offset``
    plus the aligned sizes of the objects before it. All or nothing (see :meth:`_put_packed`)."""

    keys: Sequence[bytes]
    lengths: Sequence[int]
    arena_offset: int
    persistent: bool = False
    durable: bool = False
    path: str | None = None


@dataclass(frozen=True)
class GetRequest:
    key: bytes
    arena_offset: int
    length: int


@dataclass(frozen=True)
class DeleteRequest:
    key: bytes
    durable: bool = False


@dataclass(frozen=True)
class ReserveRequest:
    """Create an empty layer object of ``capacity`` bytes (see ``dualbladed.store.layers``)."""

    key: bytes
    capacity: int
    persistent: bool = False
    path: str | None = None


@dataclass(frozen=True)
class AppendRequest:
    key: bytes
    arena_offset: int
    length: int
    durable: bool = False
    expect_size: int | None = None


@dataclass(frozen=True)
class ReadRangeRequest:
    key: bytes
    offset: int
    length: int  # 0: to the end of the object
    arena_offset: int


@dataclass(frozen=True)
class StatRequest:
    key: bytes
    pin_ms: int = 0


@dataclass(frozen=True)
class UnpinRequest:
    key: bytes


@dataclass(frozen=True)
class TouchRequest:
    """Mark ``key`` as used now without reading it (see ``ObjectStore.touch_many``)."""

    key: bytes


Op = (
    PutRequest
    | PutPackedRequest
    | GetRequest
    | DeleteRequest
    | ReserveRequest
    | AppendRequest
    | ReadRangeRequest
    | StatRequest
    | UnpinRequest
    | TouchRequest
)
LayerOp = ReserveRequest | AppendRequest | ReadRangeRequest


@dataclass(frozen=True)
class OpOutcome:
    """One op's result. ``error`` is the domain error (None: the op succeeded); the service
    layer turns it into a wire status code, so this layer never speaks gRPC."""

    error: DualbladeError | None = None
    size: int = 0
    generation: int = 0
    path: str = ""
    persistent: bool = False  # stat, touch
    pinned: bool = False  # stat: this op pinned the hit; unpin: a pin was dropped
    #: put_packed: each object's generation and path, in the op's key order
    generations: tuple[int, ...] = ()
    paths: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


#: the outcome of an op skipped by ``stop_on_error`` after an earlier op failed
NOT_RUN = OpOutcome(Aborted("not run: an earlier op in the batch failed"))


@dataclass(frozen=True)
class BatchLimits:
    max_batch_ops: int
    max_object_bytes: int


#: ``(tenant, path, op, nbytes, seconds, ok)`` -- the metrics sink.
RecordFn = Callable[[str, str, str, int, float, bool], None]
#: ``(tenant, path, op, nbytes in all, seconds each, count)`` -- many successful ops at once
#: (:meth:`dualbladed.service.metrics.Metrics.record_many`).
RecordManyFn = Callable[[str, str, str, int, float, int], None]
