"""``Store.Batch`` over the session's lease socket: the daemon's side of the fast data plane.

The transport (frame format, worker pool, refusals of oversize or id-less frames) lives in
:mod:`dualbladed.sessions.leaseframes`; this module is the glue between a request frame and the
same code the gRPC servicer runs, so the two transports cannot drift apart:

- the session is re-checked through the registry on every frame (:func:`calls.rpc` looks up the
  bearer token instead), so a frame that races the session's end gets UNAUTHENTICATED;
- the request decodes to a ``dualblade.v1.BatchRequest`` and runs through
  :func:`store_servicer.run_batch` on the shared :class:`BatchExecutor` (which records the
  metrics, exactly as for gRPC calls);
- the log context carries ``rpc``, ``session``, ``tenant`` and ``transport="lease"``;
- errors become google.rpc codes through :mod:`dualbladed.service.status` and are logged by
  :func:`calls.failure_status`. An undecodable payload is INVALID_ARGUMENT; the session goes on.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1.wire import REQUEST_HEADER
from dualbladed.errors import InvalidArgument
from dualbladed.logs import bound
from dualbladed.service.calls import failure_status
from dualbladed.service.store_servicer import run_batch
from dualbladed.sessions.batch import BatchExecutor
from dualbladed.sessions.leaseframes import error_frame, ok_frame
from dualbladed.sessions.registry import Session, SessionRegistry

__all__ = ["LeasePlane"]

_RPC = "Batch"


class LeasePlane:
    """The ``on_request`` handler of :class:`~dualbladed.sessions.handshake.HandshakeServer`."""

    def __init__(self, registry: SessionRegistry, executor: BatchExecutor) -> None:
        self._registry = registry
        self._executor = executor

    def __call__(self, session: Session, frame: bytes) -> bytes:
        (request_id,) = REQUEST_HEADER.unpack_from(frame)
        with bound(rpc=_RPC, session=session.id, tenant=session.tenant, transport="lease"):
            try:
                live = self._registry.check_live(session)
                try:
                    request = pb.BatchRequest.FromString(frame[REQUEST_HEADER.size :])
                except DecodeError:
                    raise InvalidArgument(
                        "lease frame is not a dualblade.v1.BatchRequest"
                    ) from None
                reply = run_batch(self._executor, live, request)
            except Exception as err:  # noqa: BLE001 - converted to an error frame
                code, message = failure_status(_RPC, err)
                return error_frame(request_id, code.value[0], message)
        return ok_frame(request_id, reply.SerializeToString())
