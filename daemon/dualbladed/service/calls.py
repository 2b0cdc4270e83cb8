"""Per-call plumbing shared by the servicers: authentication, log context, error conversion.

Every RPC handler is wrapped by :func:`rpc`. The wrapper

1. reads the session token from the ``authorization: Bearer <token>`` metadata and resolves it
   through the session registry (``Unauthenticated`` for a missing, unknown or ended token);
2. binds ``rpc``, ``session`` and ``tenant`` to the structlog context for the duration of the
   call (bound inside the handler thread and reset in ``finally``: grpc's sync server reuses
   threads, and a contextvar set in an interceptor runs on the server's ``_serve`` thread and
   would leak into that thread's later RPCs);
3. converts a :class:`~dualbladed.errors.DualbladeError` into its gRPC status via
   :mod:`dualbladed.service.status`, and anything else into INTERNAL after logging the
   traceback. No traceback or payload ever reaches the wire.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from dualbladed.errors import Unauthenticated
from dualbladed.logs import bound
from dualbladed.service.status import to_status
from dualbladed.sessions.registry import Session, SessionRegistry

logger = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.ServicerContext, Session], T]

TOKEN_PREFIX = "Bearer "


def session_token(context: grpc.ServicerContext) -> str:
    """The bearer token of the call. The value is never echoed: it may be someone's secret."""
    for key, value in context.invocation_metadata() or ():
        if key != "authorization":
            continue
        ok = isinstance(value, str) and value.startswith(TOKEN_PREFIX)
        token = value[len(TOKEN_PREFIX) :] if ok else ""
        if not token or token != token.strip():
            raise Unauthenticated(
                "malformed authorization metadata: expected 'Bearer <token>' with the token "
                "issued by the handshake socket"
            )
        return token
    raise Unauthenticated("missing session token: open a session on the handshake socket first")


def rpc(registry_attr: str = "registry") -> Callable[[Handler[T]], Callable[..., T]]:
    """Decorate a servicer method ``(self, request, context, session)``."""

    def decorate(fn: Handler[T]) -> Callable[..., T]:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> T:
            registry: SessionRegistry = getattr(self, registry_attr)
            try:
                session = registry.authenticate(session_token(context))
            except Exception as err:  # noqa: BLE001 - converted to a status below
                _abort(context, name, err)
            with bound(rpc=name, session=session.id, tenant=session.tenant):
                try:
                    return fn(self, request, context, session)
                except Exception as err:  # noqa: BLE001 - converted to a status below
                    _abort(context, name, err)

        return wrapper

    return decorate


def failure_status(name: str, err: BaseException) -> tuple[grpc.StatusCode, str]:
    """Log a failed call the one way (traceback only for INTERNAL) and return its status."""
    code, message = to_status(err)
    if code is grpc.StatusCode.INTERNAL:
        logger.error("rpc %s failed", name, exc_info=err)
    else:
        logger.info("rpc %s rejected: %s %s", name, code.name, message)
    return code, message


def _abort(context: grpc.ServicerContext, name: str, err: BaseException) -> None:
    context.abort(*failure_status(name, err))
