"""Which gRPC socket a session token is good on: only its own uid's.

gRPC Python cannot tell who is calling over a Unix socket (no SO_PEERCRED, no peer fd), so a token
alone is a bearer secret: issue 15 showed a token leaked from a root session working from uid
65534, for Stat and for an admin RPC. The daemon therefore serves gRPC on one socket per uid
with live sessions, in a directory only that uid and root can enter
(:mod:`dualbladed.service.uidsockets`); the filesystem, checked by the kernel at ``connect()``,
says who the caller is. This interceptor enforces the other half on every call:

* on a uid's own socket, a token is accepted only if its session belongs to that uid (only that
  uid and root can connect there, and root's own tokens belong on root's socket);
* on the shared socket (``grpc.sock``, which every client of the socket group can reach) any
  token is refused, with UNAUTHENTICATED naming the problem; calls without a token pass through
  (the servicers then answer them as before).

Unknown or malformed tokens pass through unchanged: :func:`dualbladed.service.calls.rpc`
answers them with its usual UNAUTHENTICATED. The token is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from dualbladed.errors import DualbladeError
from dualbladed.service.calls import TOKEN_PREFIX
from dualbladed.sessions.registry import SessionRegistry

__all__ = ["SHARED_SOCKET_REFUSAL", "WRONG_UID_REFUSAL", "TokenGate"]

logger = logging.getLogger(__name__)

SHARED_SOCKET_REFUSAL = (
    "session tokens are not accepted on the shared gRPC socket: a session's calls go to the "
    "per-uid socket its handshake reply named (<runtime dir>/uid/<uid>/grpc.sock). A token "
    "presented here was handed to another process, or comes from an SDK older than this daemon"
)
WRONG_UID_REFUSAL = (
    "this session token belongs to another uid's session: tokens work only on the gRPC socket "
    "of the uid that opened the session"
)


def _token(metadata: Any) -> str | None:
    """The ``authorization`` value, whatever its shape (None without one)."""
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else ""
    return None


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds: list[tuple[str, Callable[..., grpc.RpcMethodHandler]]] = [
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ]
    for attr, make in kinds:
        if getattr(handler, attr) is not None:
            return make(abort, handler.request_deserializer, handler.response_serializer)
    raise AssertionError("a method handler of no known kind")  # pragma: no cover


class TokenGate(grpc.ServerInterceptor):
    """Refuse tokens on the wrong socket. ``uid`` None: the shared socket (no token is good)."""

    def __init__(self, registry: SessionRegistry, uid: int | None) -> None:
        self._registry = registry
        self._uid = uid

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        raw = _token(handler_call_details.invocation_metadata)
        if raw is None:
            return handler
        if self._uid is None:
            logger.warning(
                "refused a session token on the shared gRPC socket (%s)",
                handler_call_details.method,
            )
            return _refusal(handler, SHARED_SOCKET_REFUSAL)
        token = raw[len(TOKEN_PREFIX) :] if raw.startswith(TOKEN_PREFIX) else ""
        try:
            session = self._registry.authenticate(token)
        except DualbladeError:
            return handler  # the servicer answers unknown/malformed tokens the usual way
        if session.uid != self._uid:
            logger.warning(
                "refused session %s of uid %d on the gRPC socket of uid %d (%s)",
                session.id,
                session.uid,
                self._uid,
                handler_call_details.method,
            )
            return _refusal(handler, WRONG_UID_REFUSAL)
        return handler
