"""Opening a session: the handshake, then the gRPC channel the session's token is good on.

Shared by :class:`dualblade.Client` and :class:`AdminSession`, the lighter session ``dbctl``
uses for Admin calls: it maps no arena, starts no lease data plane and does not import the
client module (its torch hooks, arena allocator and layer API), which is most of what a short
``dbctl status`` spends its time on besides Python and gRPC themselves.
"""

from __future__ import annotations

import os
from typing import Any

import grpc

from dualblade import errors
from dualblade._handshake import open_session
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade.v1 import wire

__all__ = ["AdminSession", "default_socket", "handshake", "open_channel", "wait_ready"]


def default_socket() -> str:
    """Where the daemon listens by default: $DUALBLADE_SOCKET, else the daemon's own default.

    The default comes from the wire contract the daemon's config uses too, so the two can never
    disagree.
    """
    return os.environ.get("DUALBLADE_SOCKET") or wire.default_socket_path()


def handshake(socket_path: str, tenant: str, arena_bytes: int, timeout: float) -> Any:
    """Handshake on the admin lane where this process can reach it (root, the admin group: a
    flood on the shared handshake socket does not delay it), else on the shared socket."""
    admin = wire.admin_handshake_socket_path(socket_path)
    if os.access(admin, os.W_OK, effective_ids=os.access in os.supports_effective_ids):
        try:
            return open_session(admin, tenant, arena_bytes, timeout=timeout)
        except (errors.Unavailable, errors.PermissionDenied):
            pass  # an older daemon, or a lane not ours after all: the shared socket
    hs_path = wire.handshake_socket_path(socket_path)
    return open_session(hs_path, tenant, arena_bytes, timeout=timeout)


def open_channel(grpc_path: str) -> tuple[grpc.Channel, int | None]:
    """An insecure channel to ``grpc_path``, and the directory fd a path too long for
    sockaddr_un is reached through (the caller closes it after the channel)."""
    target, dir_fd = wire.reachable_path(grpc_path, wire.GRPC_UNIX_PATH_MAX)  # via /proc/self/fd
    channel = grpc.insecure_channel(
        f"unix://{target}",
        options=[("grpc.max_receive_message_length", 64 << 20)],
    )
    return channel, dir_fd


def wait_ready(
    store: pb_grpc.StoreStub, metadata: Any, grpc_path: str, timeout: float
) -> pb.SessionInfo:
    """Wait until the gRPC server answers: one Session call that waits for the channel.

    Not ``grpc.channel_ready_future``: its connectivity watcher polls in 0.2 s steps, and
    ``channel.close()`` then waits for the step in progress, ~0.2 s at every close (half of a
    short-lived ``dbctl status``).
    """
    try:
        return store.Session(
            pb.SessionInfoRequest(), metadata=metadata, timeout=timeout, wait_for_ready=True
        )
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise errors.Unavailable(f"no dualbladed gRPC server on {grpc_path}") from None
        raise errors.from_code(err.code().name, err.details() or "") from None


class AdminSession:
    """A session for ``dualblade.v1.Admin`` calls only (root or the admin group): identity from
    the handshake, no arena mapping, no lease data plane. Close it (or use ``with``): the
    handshake connection is the session's lease."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        tenant: str = "dbctl",
        *,
        timeout: float = 5.0,
    ) -> None:
        socket_path = os.fspath(socket) if socket is not None else default_socket()
        # A session comes with an arena; the smallest one, never mapped (its fd closes with
        # the handshake result, which owns it).
        self._hs = handshake(socket_path, tenant, wire.ALIGNMENT, timeout)
        grpc_path = self._hs.grpc_socket or socket_path
        self._channel, self._dir_fd = open_channel(grpc_path)
        self._metadata = (("authorization", f"Bearer {self._hs.token}"),)
        self.admin = pb_grpc.AdminStub(self._channel)
        self._grpc_path = grpc_path
        #: the first call's wait for the channel (None once a call got through)
        self._connect_timeout: float | None = timeout

    def admin_call(self, rpc: str, request: Any) -> Any:
        """Call ``dualblade.v1.Admin/<rpc>``; errors come back as :mod:`dualblade.errors`.

        No separate readiness round trip (the ``Session`` call :class:`~dualblade.Client` makes):
        the first call waits for the channel itself (``wait_for_ready``, within the session's
        ``timeout``), so a ``dbctl status`` is one handshake and one RPC.
        """
        first = self._connect_timeout
        try:
            if first is None:
                reply = getattr(self.admin, rpc)(request, metadata=self._metadata)
            else:
                reply = getattr(self.admin, rpc)(
                    request, metadata=self._metadata, timeout=first, wait_for_ready=True
                )
        except grpc.RpcError as err:
            # wait_for_ready rides out a daemon that is not listening yet, so no server
            # shows up as the deadline; UNAVAILABLE is then the daemon's own word (stopping).
            if first is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.Unavailable(
                    f"no answer from a dualbladed gRPC server on {self._grpc_path} "
                    f"within {first:g} s"
                ) from None
            raise errors.from_code(err.code().name, err.details() or "") from None
        self._connect_timeout = None
        return reply

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is None:
            return
        channel.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        self._hs.close()  # ends the session

    def __enter__(self) -> AdminSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
