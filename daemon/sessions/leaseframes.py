"""Data-plane frames on the lease socket: the wire format, the reply writer, the worker pool.

A gRPC-Python unary round trip costs ~0.5 ms; a datagram round trip on an ``AF_UNIX`` socket costs
~0.05 ms. The lease connection of a session (see :mod:`dualbladed.sessions.handshake`) is already
authenticated by ``SO_PEERCRED`` and bound to one session, so after the hello it doubles as a
fast path for ``Store.Batch``. SEQPACKET keeps message boundaries, so one frame is one datagram::

    request  (client -> daemon)  u64 request_id | serialized dualblade.v1.BatchRequest
    reply    (daemon -> client)  u64 request_id | u32 code (google.rpc.Code, 0 = OK) |
                                 serialized dualblade.v1.BatchResponse (code 0) or a UTF-8 message

(integers little-endian).

The request id is the client's choice and is echoed verbatim; replies may come in any order (a
client keeps several calls in flight). The daemon announces the path in the hello reply's
``limits`` as ``lease_frame_max_bytes``; a client that does not see it uses gRPC only. Refusals
cost the frame, never the session: a frame above the limit gets RESOURCE_EXHAUSTED, one shorter
than the id gets INVALID_ARGUMENT with id 0. Only EOF, a socket error or the client's exit end
the session.

Threading (leader/follower). Each lease has exactly one thread parked in ``recv`` on it: the
*reader*, on a dup of the lease fd. A reader that gets a frame first hands the reader role to a
pool thread (:meth:`FrameWorkers.serve` again), then runs the request itself and sends the
reply. So the thread the kernel wakes is the one that does the work: no hand-off on the critical
path (on a 2-vCPU box the old handshake-thread-then-worker hop cost ~40 us per call, mostly
waiting for the GIL), while a client with several calls in flight still has them run
concurrently, because the next frame is read by the follower while this one runs. The cost is
one parked thread per session (the pool is sized ``max_leases + workers``, so parked readers can
never starve the runners).

Fd ownership: the handshake thread owns the lease socket and closes it; the reader owns its dup.
To stop a reader the handshake thread shuts the socket down (``shutdown`` acts on the socket,
which both fds share), the reader's ``recv`` returns EOF, and the reader closes its dup. A reader
that meets EOF or an error on its own reports it through ``on_closed`` (the handshake thread ends
the session) and never touches the lease fd. Replies go through :class:`LeaseWriter`, which
sends and closes under one lock, so a runner never writes to an fd number that was closed (and
perhaps reused) under it.

A frame's length is read with ``MSG_PEEK | MSG_TRUNC`` before it is received, so each frame is
received into a buffer of exactly its size (no per-session 4 MiB buffer) and an oversize frame
is consumed and refused without being copied.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dualbladed.sessions.registry import Session

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "INVALID_ARGUMENT",
    "REQUEST_HEADER",
    "REPLY_HEADER",
    "FrameWorkers",
    "LeaseWriter",
    "RequestHandler",
    "error_frame",
    "ok_frame",
    "size_socket_buffers",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 4 << 20
REQUEST_HEADER = struct.Struct("<Q")
REPLY_HEADER = struct.Struct("<QI")
#: google.rpc.Code values used by the transport itself (the handler maps everything else).
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
#: Room for the kernel's per-datagram overhead on top of the largest frame.
_BUFFER_SLACK = 64 << 10
_SEND_PATIENCE_S = 5.0

#: ``(session, request frame) -> reply frame``; runs on a worker thread, must not raise.
RequestHandler = Callable[[Session, bytes], bytes]


def ok_frame(request_id: int, body: bytes) -> bytes:
    return REPLY_HEADER.pack(request_id, 0) + body


def error_frame(request_id: int, code: int, message: str) -> bytes:
    return REPLY_HEADER.pack(request_id, code) + message.encode("utf-8", "replace")


def size_socket_buffers(sock: socket.socket, max_frame_bytes: int) -> None:
    """Let one frame of ``max_frame_bytes`` fit the socket (an AF_UNIX datagram is bounded by
    the sender's SO_SNDBUF). Best effort: the kernel caps the value at ``net.core.wmem_max``."""
    size = max_frame_bytes + _BUFFER_SLACK
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


class LeaseWriter:
    """The reply side of one lease: workers send, the handshake thread closes (see module doc)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, frame: bytes) -> None:
        """Send one reply; give up (logged) if the lease is gone or the client stops reading."""
        deadline = time.monotonic() + _SEND_PATIENCE_S
        delay = 0.0005
        while True:
            with self._lock:
                if self._sock.fileno() < 0:
                    return
                try:
                    self._sock.send(frame, socket.MSG_DONTWAIT)
                    return
                except BlockingIOError:
                    pass
                except OSError as err:
                    logger.debug("lease reply not sent: %s", err)
                    return
            if time.monotonic() > deadline:
                logger.warning(
                    "lease reply dropped: the client read nothing for %.0f s", _SEND_PATIENCE_S
                )
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def close(self) -> None:
        with self._lock:
            self._sock.close()


@dataclass(frozen=True)
class _Oversize:
    """A frame above the limit, already consumed: only its id is kept for the refusal."""

    request_id: int


class _Lease:
    """What the readers of one lease share: its dup'd fd, session, writer and close report."""

    __slots__ = ("sock", "session", "writer", "_on_closed")

    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        writer: LeaseWriter,
        on_closed: Callable[[str], None],
    ) -> None:
        self.sock = sock
        self.session = session
        self.writer = writer
        self._on_closed = on_closed

    def close(self, reason: str) -> None:
        """The last reader leaves: close the dup and report (exactly once: only one thread
        holds the reader role)."""
        self.sock.close()
        try:
            self._on_closed(reason)
        except Exception:
            logger.exception("lease close report failed")


class FrameWorkers:
    """The lease readers and request runners of one handshake server (see the module doc)."""

    def __init__(
        self,
        handler: RequestHandler | None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        workers: int = 16,
        max_leases: int = 256,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._handler = handler
        self._pool = ThreadPoolExecutor(
            max_workers=max_leases + workers, thread_name_prefix="lease"
        )

    @property
    def enabled(self) -> bool:
        return self._handler is not None

    def serve(
        self,
        sock: socket.socket,
        session: Session,
        writer: LeaseWriter,
        on_closed: Callable[[str], None],
    ) -> None:
        """Start reading frames from ``sock`` (a dup of the lease, owned from now on by the
        readers); ``on_closed(reason)`` runs once, on a reader, when the lease hits EOF or an
        error."""
        # Blocking reads; this also clears O_NONBLOCK on the lease fd it shares, which is why
        # LeaseWriter sends with MSG_DONTWAIT.
        sock.setblocking(True)
        self._pool.submit(self._lead, _Lease(sock, session, writer, on_closed))

    def close(self) -> None:
        """Wait for the readers (the caller shut their leases down) and the requests in flight
        (their replies go out), then stop."""
        self._pool.shutdown(wait=True)

    # -- the reader role ---------------------------------------------------------------

    def _lead(self, lease: _Lease) -> None:
        """Hold the reader role of ``lease`` until one frame is in, pass it on, run the frame."""
        try:
            frame = self._receive(lease.sock)
        except Exception as err:  # noqa: BLE001 - any failure ends this lease, not the pool
            lease.close(f"lease socket error: {err}")
            return
        if frame is None:
            lease.close("lease socket closed")
            return
        try:
            self._pool.submit(self._lead, lease)
        except RuntimeError:  # the pool is shutting down: this frame is the lease's last
            lease.close("the daemon is stopping")
        lease.writer.send(self._reply(lease.session, frame))

    def _receive(self, sock: socket.socket) -> bytes | _Oversize | None:
        """The next frame (exactly its bytes), an oversize marker (consumed), or None at EOF.

        A zero-length datagram reads as EOF on SEQPACKET, so sending one ends the session.
        """
        head = bytearray(REQUEST_HEADER.size)
        length = sock.recv_into(head, len(head), socket.MSG_PEEK | socket.MSG_TRUNC)
        if length == 0:
            return None
        if length > self.max_frame_bytes:
            sock.recv_into(head, len(head))  # consumes (and truncates) the whole datagram
            return _Oversize(REQUEST_HEADER.unpack_from(head)[0])
        return sock.recv(length)

    def _reply(self, session: Session, frame: bytes | _Oversize) -> bytes:
        if isinstance(frame, _Oversize):
            return error_frame(
                frame.request_id,
                RESOURCE_EXHAUSTED,
                f"lease frame exceeds {self.max_frame_bytes} bytes; use gRPC for this call",
            )
        if len(frame) < REQUEST_HEADER.size:
            return error_frame(0, INVALID_ARGUMENT, f"lease frame of {len(frame)} bytes has no id")
        request_id = REQUEST_HEADER.unpack_from(frame)[0]
        if self._handler is None:
            return error_frame(request_id, UNIMPLEMENTED, "this server has no lease data plane")
        try:
            return self._handler(session, frame)
        except Exception:
            logger.exception("lease request handler failed")
            return error_frame(request_id, INTERNAL, "internal error in dualbladed")
