"""The one place where domain errors become gRPC status codes.

Servicers never build status codes themselves: they raise (or let through)
:class:`~dualbladed.errors.DualbladeError` subclasses, and :func:`to_status` turns them into
``(grpc.StatusCode, message)``. Anything that is not a ``DualbladeError`` is a bug: it maps to
INTERNAL with a generic message (the traceback goes to the daemon log, never to the wire).

Per-op results inside a Batch carry the same codes as integers (``google.rpc.Code``), produced by
:func:`op_code` from the domain error an outcome carries (None for success), so a client sees
identical semantics for a failed call and a failed op.
"""

from __future__ import annotations

import grpc

from dualbladed.errors import DualbladeError

_BY_NAME: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}

INTERNAL_MESSAGE = "internal error in dualbladed (details are in the daemon log)"


def to_status(err: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, DualbladeError):
        return _BY_NAME.get(err.grpc_code, grpc.StatusCode.INTERNAL), str(err)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def to_code(err: BaseException) -> tuple[int, str]:
    """``(google.rpc.Code value, message)`` for a per-op result."""
    status, message = to_status(err)
    return status.value[0], message


def op_code(error: DualbladeError | None) -> tuple[int, str]:
    """``(google.rpc.Code value, message)`` for a batch op's outcome; ``(OK, "")`` for None."""
    return (OK, "") if error is None else to_code(error)


OK = grpc.StatusCode.OK.value[0]
ABORTED = grpc.StatusCode.ABORTED.value[0]
