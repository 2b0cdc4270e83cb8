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

Threading: the handshake thread reads frames (non-blocking, into one reused buffer) and hands
each to :class:`FrameWorkers`; the request runs and its reply is sent on a worker thread. A send
of one SEQPACKET datagram is atomic, so concurrent replies on one lease never interleave. The fd
stays owned by the handshake thread: :class:`LeaseWriter` sends and closes under one lock, so a
worker never writes to an fd number that was closed (and perhaps reused) under it.
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
                    self._sock.send(frame)
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


class FrameWorkers:
    """Runs request frames on a small pool and sends each reply from there."""

    def __init__(
        self,
        handler: RequestHandler | None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        workers: int = 16,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._handler = handler
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lease")
        #: One receive buffer for the handshake thread: a byte more than the largest frame, so
        #: that an oversize frame shows up as MSG_TRUNC.
        self.buffer = memoryview(bytearray(max_frame_bytes + 1))

    @property
    def enabled(self) -> bool:
        return self._handler is not None

    def submit(self, session: Session, writer: LeaseWriter, nbytes: int, truncated: bool) -> None:
        """Handle the frame now in :attr:`buffer` (handshake thread: copies, then returns)."""
        frame = bytes(self.buffer[:nbytes])
        request_id = REQUEST_HEADER.unpack_from(frame)[0] if nbytes >= REQUEST_HEADER.size else 0
        if truncated:
            reply = error_frame(
                request_id,
                RESOURCE_EXHAUSTED,
                f"lease frame exceeds {self.max_frame_bytes} bytes; use gRPC for this call",
            )
            self._pool.submit(writer.send, reply)
        elif nbytes < REQUEST_HEADER.size:
            reply = error_frame(0, INVALID_ARGUMENT, f"lease frame of {nbytes} bytes has no id")
            self._pool.submit(writer.send, reply)
        elif self._handler is None:
            reply = error_frame(request_id, UNIMPLEMENTED, "this server has no lease data plane")
            self._pool.submit(writer.send, reply)
        else:
            self._pool.submit(self._run, self._handler, session, writer, request_id, frame)

    @staticmethod
    def _run(
        handler: RequestHandler,
        session: Session,
        writer: LeaseWriter,
        request_id: int,
        frame: bytes,
    ) -> None:
        try:
            reply = handler(session, frame)
        except Exception:
            logger.exception("lease request handler failed")
            reply = error_frame(request_id, INTERNAL, "internal error in dualbladed")
        writer.send(reply)

    def close(self) -> None:
        """Finish the requests already queued (their replies go out), then stop."""
        self._pool.shutdown(wait=True)
