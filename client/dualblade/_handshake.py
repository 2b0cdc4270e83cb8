"""The SDK side of the handshake: open a session, receive the token and the arena fd, keep the lease.

The constants of the protocol are in :mod:`dualblade.v1.wire`; the field-by-field rules in the
daemon's ``dualbladed.sessions.hello``. In short: one JSON hello datagram out on an
``AF_UNIX``/``SOCK_SEQPACKET`` socket, one JSON reply back carrying the arena memfd with
SCM_RIGHTS. The socket then stays open for the life of the session: it *is* the lease. Closing it
(or exiting, or being killed) ends the session and the daemon frees its ephemeral objects. Keep
:attr:`HandshakeResult.lease` open and close it only through :meth:`HandshakeResult.close`.

Identity on gRPC: the reply names ``grpc_socket``, the gRPC socket this session's token is good
on (the daemon serves one per uid, reachable only by that uid and root). A client must send its
calls there; the shared gRPC socket refuses tokens. A daemon that names none predates per-uid
sockets, and the shared socket is used.

Fork: a forked child inherits the lease socket, but the daemon also watches the pid that opened
the session (a pidfd), so the session ends when that process exits, whoever still holds the fd.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from dualblade import errors
from dualblade.v1.wire import PROTOCOL_VERSION, REPLY_MAX_BYTES, reachable_path

#: how long :meth:`HandshakeResult.close` waits for the daemon to end the session (it takes
#: milliseconds; the bound only matters when the daemon is stopped or hung)
CLOSE_WAIT_S = 2.0

__all__ = ["HandshakeResult", "open_session"]


@dataclass(frozen=True)
class HandshakeResult:
    """An open session: its identity, the lease socket and the arena fd (both owned here)."""

    session_id: str
    #: The bearer token for gRPC metadata ``authorization: Bearer <token>``. Never log it.
    token: str = field(repr=False)
    #: ``"<uid>/<label>"``, the uid as the kernel reported it to the daemon.
    tenant: str
    arena_bytes: int
    alignment: int
    limits: dict[str, int]
    lease: socket.socket = field(repr=False)
    arena_fd: int
    #: The gRPC socket this session's token is accepted on; None: the daemon's shared one.
    grpc_socket: str | None = None

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """End the session: shut the lease down, wait (at most ``wait_s``) for the daemon to
        close its end, then close the lease and the arena fd. Idempotent.

        The daemon closes its end once the session has ended (its admission slot and ephemeral
        objects released: ``dualbladed.sessions.handshake``, ``_lease_lost``), so when this
        returns a session count no longer includes this one and a process at its per-uid
        session limit can open another at once. A daemon that does not close in ``wait_s``
        (stopped, hung) costs that long once; it ends the session when it next runs. Mappings
        of the arena made earlier stay valid until they are unmapped.
        """
        sock = self.lease
        if sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # the daemon's readers see EOF
                await_eof(sock, wait_s)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a caller still in recv
            sock.close()
        with contextlib.suppress(OSError):
            os.close(self.arena_fd)

    def __enter__(self) -> HandshakeResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def await_eof(sock: socket.socket, wait_s: float) -> None:
    """Until the peer closes ``sock`` or ``wait_s`` passes. Frames still arriving (replies to
    calls the lease plane has failed already) are dropped; reads never block, since another
    thread may take a frame between the poll and the read."""
    deadline = time.monotonic() + wait_s
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(left * 1000):
            return
        try:
            if not sock.recv(1, socket.MSG_DONTWAIT):  # EOF (SEQPACKET: rest of a frame is cut)
                return
        except BlockingIOError:
            continue


def open_session(
    path: str | os.PathLike[str],
    tenant: str,
    arena_bytes: int | None = None,
    timeout: float = 5.0,
) -> HandshakeResult:
    """Open a session with the dualbladed listening on the handshake socket ``path``.

    ``arena_bytes`` None takes the daemon's default. Raises Unavailable when no daemon listens
    (or it closes without replying), PermissionDenied when the socket is not ours to connect to,
    and the :mod:`dualblade.errors` type named by the daemon's error reply otherwise.
    """
    where = os.fspath(path)
    hello: dict[str, Any] = {"v": PROTOCOL_VERSION, "tenant": tenant}
    if arena_bytes is not None:
        hello["arena_bytes"] = arena_bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds: list[int] = []
    try:
        sock.settimeout(timeout)
        try:
            _connect(sock, where, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise errors.Unavailable(f"no dualbladed listening on {where}") from None
        except PermissionError as err:
            raise errors.PermissionDenied(
                f"not allowed to connect to {where} ({err.strerror}): is this user in the "
                "daemon's socket group?"
            ) from None
        try:
            sock.send(json.dumps(hello).encode())
            msg, fds, flags, _addr = socket.recv_fds(sock, REPLY_MAX_BYTES, 1)
        except TimeoutError:
            raise errors.Unavailable(
                f"dualbladed on {where} did not answer within {timeout} s"
            ) from None
        except OSError as err:
            raise errors.Unavailable(
                f"dualbladed on {where} dropped the handshake: {err.strerror or err}"
            ) from None
        if not msg:
            raise errors.Unavailable(f"dualbladed on {where} closed the handshake without a reply")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise errors.DualbladeError(f"truncated handshake reply from {where}", code="INTERNAL")
        reply = _decode(msg, where)
        if "error" in reply:
            raise _error_from(reply["error"], where)
        result = _result_from(reply, fds, sock, where)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        sock.close()
        raise
    sock.settimeout(None)
    return result


def _connect(sock: socket.socket, where: str, timeout: float) -> None:
    """connect(), retrying while the listen backlog is full (EAGAIN on AF_UNIX, not a wait)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    target, via = reachable_path(where)  # a path too long for sockaddr_un: via /proc/self/fd
    try:
        _connect_retrying(sock, target, where, deadline, delay)
    finally:
        if via is not None:
            os.close(via)


def _connect_retrying(
    sock: socket.socket, target: str, where: str, deadline: float, delay: float
) -> None:
    while True:
        try:
            sock.connect(target)
            return
        except BlockingIOError:
            if time.monotonic() + delay > deadline:
                raise errors.Unavailable(
                    f"dualbladed on {where} is not accepting connections (backlog full)"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _decode(msg: bytes, where: str) -> dict[str, Any]:
    try:
        reply = json.loads(msg)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
        raise errors.DualbladeError(
            f"unintelligible handshake reply from {where} (expected protocol v{PROTOCOL_VERSION})",
            code="INTERNAL",
        )
    return reply


def _error_from(error: Any, where: str) -> errors.DualbladeError:
    if not isinstance(error, dict):
        return errors.DualbladeError(f"malformed error reply from {where}", code="INTERNAL")
    code = str(error.get("code") or "UNKNOWN")
    message = str(error.get("message") or "handshake refused")
    return errors.from_code(code, message)


def _result_from(
    reply: dict[str, Any], fds: list[int], sock: socket.socket, where: str
) -> HandshakeResult:
    if len(fds) != 1:
        raise errors.DualbladeError(
            f"handshake reply from {where} carried {len(fds)} fds, expected the arena's",
            code="INTERNAL",
        )
    try:
        arena_bytes = int(reply["arena_bytes"])
        result = HandshakeResult(
            session_id=str(reply["session_id"]),
            token=str(reply["token"]),
            tenant=str(reply["tenant"]),
            arena_bytes=arena_bytes,
            alignment=int(reply["alignment"]),
            limits={str(k): int(v) for k, v in dict(reply.get("limits") or {}).items()},
            lease=sock,
            arena_fd=fds[0],
            grpc_socket=None if reply.get("grpc_socket") is None else str(reply["grpc_socket"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise errors.DualbladeError(
            f"handshake reply from {where} lacks a valid field: {err}", code="INTERNAL"
        ) from None
    # The arena must be what was announced and sealed against shrinking, or touching it could
    # SIGBUS this process.
    size = os.fstat(fds[0]).st_size
    seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
    if size != arena_bytes or not seals & fcntl.F_SEAL_SHRINK:
        raise errors.DualbladeError(
            f"arena from {where} is {size} bytes with seals {seals:#x}; expected {arena_bytes} "
            "bytes sealed against shrinking",
            code="INTERNAL",
        )
    return result
