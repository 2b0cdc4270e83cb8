"""Data-plane frames on the lease socket: the wire format, the reply writer, the worker pool.

A gRPC-Python unary round trip costs ~0.5 ms; a datagram round trip on an ``AF_UNIX`` socket costs
~0.05 ms. The lease connection of a session (see :mod:`dualbladed.sessions.handshake`) is already
authenticated by ``SO_PEERCRED`` and bound to one session, so after the hello it doubles as a
fast path for ``Store.Batch``. SEQPACKET keeps message boundaries, so one frame is one datagram;
the frame layout is part of the wire contract shared with the SDK, :mod:`dualblade.v1.wire`.

The request id is the client's choice and is echoed verbatim; replies may come in any order (a
client keeps several calls in flight). The daemon announces the path in the hello reply's
``limits`` as ``wire.LEASE_FRAME_MAX_BYTES``; a client that does not see it uses gRPC only. Refusals
cost the frame, never the session: a frame above the limit gets RESOURCE_EXHAUSTED, one shorter
than the id gets INVALID_ARGUMENT with id 0. Only EOF, a socket error or the client's exit end
the session.

Threading (standing readers). Each lease has one or two threads parked in ``recv`` on a dup of
the lease fd. The kernel wakes exactly one parked reader per datagram (an exclusive wait), and
that reader runs the request itself and sends the reply: the thread the kernel wakes is the one
that does the work, with no hand-off on the critical path. A reader that takes a frame while no
other reader is parked first starts one more, so a client with several calls in flight still has
them run concurrently; a reader that finishes while two others are already parked retires. A
lease thus costs one or two parked threads at rest, and one submit to the pool only when its
concurrency grows (the old design passed the reader role to a fresh pool task on every frame,
~20 us and a GIL tug-of-war per call on a 2-vCPU box). The pool is sized ``2 * max_leases +
workers``, so parked readers can never starve the runners.

Each reader receives into its own buffer of ``max_frame_bytes`` (an anonymous mmap: only the
pages a frame touches become resident, and those above 64 KiB are handed back with
``MADV_DONTNEED`` after the frame is copied out) with ``MSG_TRUNC``, so one ``recv`` both takes
the frame and learns its true length: an oversize frame is consumed and refused without a second read, and
there is no peek-then-read window in which two readers could see the same frame's size.

Fd ownership: the handshake thread owns the lease socket and closes it; the readers share a dup.
To stop them the handshake thread shuts the socket down (``shutdown`` acts on the socket, which
both fds share), every reader's ``recv`` returns EOF, and the last reader to leave closes the dup
and reports through ``on_closed`` (the handshake thread ends the session); a reader never touches
the lease fd itself. Replies go through :class:`LeaseWriter`, which sends and closes under one
lock, so a runner never writes to an fd number that was closed (and perhaps reused) under it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dualblade.v1.wire import REPLY_HEADER, REQUEST_HEADER, Code
from dualbladed.sessions.registry import Session

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FrameWorkers",
    "LeaseReaders",
    "LeaseWriter",
    "RequestHandler",
    "error_frame",
    "ok_frame",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 4 << 20
_SEND_PATIENCE_S = 5.0
#: A reader's receive buffer keeps at most this much resident between frames (Batch frames are
#: usually a few KiB; a client sending 4 MiB frames must not pin 4 MiB per parked reader).
_RESIDENT_BUFFER_BYTES = 64 << 10

#: ``(session, request frame) -> reply frame``; runs on a worker thread, must not raise.
RequestHandler = Callable[[Session, bytes], bytes]


def ok_frame(request_id: int, body: bytes) -> bytes:
    return REPLY_HEADER.pack(request_id, Code.OK) + body


def error_frame(request_id: int, code: int, message: str) -> bytes:
    """A refusal; ``code`` is a :class:`~dualblade.v1.wire.Code` (or its int value)."""
    return REPLY_HEADER.pack(request_id, code) + message.encode("utf-8", "replace")


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


class LeaseReaders:
    """What the readers of one lease share: the dup'd fd, session, writer, close report, and the
    reader counts (under ``lock``; read without it, they are a snapshot)."""

    __slots__ = ("sock", "session", "writer", "lock", "readers", "parked", "_on_closed")

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
        self.lock = threading.Lock()
        self.readers = 0  # reader threads alive (or submitted)
        self.parked = 0  # of those, the ones in (or on their way to) recv
        self._on_closed = on_closed

    def took_frame(self) -> bool:
        """A parked reader took a frame; True if it was the last one parked, so the caller must
        start another reader (already counted here) before it runs the frame."""
        with self.lock:
            self.parked -= 1
            grow = self.parked == 0
            if grow:
                self.readers += 1
                self.parked += 1
        return grow

    def not_started(self) -> None:
        """The reader counted by :meth:`took_frame` could not be started."""
        with self.lock:
            self.readers -= 1
            self.parked -= 1

    def frame_done(self) -> bool:
        """A reader sent its reply; True if it should retire (two others are parked), else it
        is counted as parked again."""
        with self.lock:
            retire = self.parked >= 2
            if retire:
                self.readers -= 1
            else:
                self.parked += 1
        return retire

    def leave(self, reason: str) -> None:
        """A reader exits on EOF or error; the last one closes the dup and reports, once.

        The socket is shut down for reading first: an empty datagram also reads as EOF but is
        not sticky, and the other parked readers must see the end too.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        with self.lock:
            self.readers -= 1
            self.parked -= 1
            last = self.readers == 0
        if not last:
            return
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
            max_workers=2 * max_leases + workers, thread_name_prefix="lease"
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
    ) -> LeaseReaders:
        """Start reading frames from ``sock`` (a dup of the lease, owned from now on by the
        readers); ``on_closed(reason)`` runs once, on a reader, when the lease hits EOF or an
        error."""
        # Blocking reads; this also clears O_NONBLOCK on the lease fd it shares, which is why
        # LeaseWriter sends with MSG_DONTWAIT.
        sock.setblocking(True)
        lease = LeaseReaders(sock, session, writer, on_closed)
        lease.readers = lease.parked = 1
        self._pool.submit(self._read, lease)
        return lease

    def close(self) -> None:
        """Wait for the readers (the caller shut their leases down) and the requests in flight
        (their replies go out), then stop."""
        self._pool.shutdown(wait=True)

    # -- the readers ---------------------------------------------------------------------

    def _read(self, lease: LeaseReaders) -> None:
        """One standing reader of ``lease``: receive a frame, run it, reply; until EOF."""
        with mmap.mmap(-1, self.max_frame_bytes) as buffer:
            while True:
                try:
                    frame = self._receive(lease.sock, buffer)
                except Exception as err:  # noqa: BLE001 - any failure ends this lease, not the pool
                    lease.leave(f"lease socket error: {err}")
                    return
                if frame is None:
                    lease.leave("lease socket closed")
                    return
                if lease.took_frame():
                    try:
                        self._pool.submit(self._read, lease)
                    except RuntimeError:  # the pool is stopping: no new readers
                        lease.not_started()
                lease.writer.send(self._reply(lease.session, frame))
                if lease.frame_done():
                    return

    def _receive(self, sock: socket.socket, buffer: mmap.mmap) -> bytes | _Oversize | None:
        """The next frame (exactly its bytes), an oversize marker (consumed), or None at EOF.

        A zero-length datagram reads as EOF on SEQPACKET, so sending one ends the session.
        """
        length = sock.recv_into(buffer, self.max_frame_bytes, socket.MSG_TRUNC)
        if length == 0:
            return None
        if length > self.max_frame_bytes:
            frame: bytes | _Oversize = _Oversize(REQUEST_HEADER.unpack_from(buffer)[0])
        else:
            frame = buffer[:length]
        if length > _RESIDENT_BUFFER_BYTES:  # give the pages a big frame touched back
            buffer.madvise(mmap.MADV_DONTNEED, 0, min(length, self.max_frame_bytes))
        return frame

    def _reply(self, session: Session, frame: bytes | _Oversize) -> bytes:
        if isinstance(frame, _Oversize):
            return error_frame(
                frame.request_id,
                Code.RESOURCE_EXHAUSTED,
                f"lease frame exceeds {self.max_frame_bytes} bytes; use gRPC for this call",
            )
        if len(frame) < REQUEST_HEADER.size:
            return error_frame(
                0, Code.INVALID_ARGUMENT, f"lease frame of {len(frame)} bytes has no id"
            )
        request_id = REQUEST_HEADER.unpack_from(frame)[0]
        if self._handler is None:
            return error_frame(
                request_id, Code.UNIMPLEMENTED, "this server has no lease data plane"
            )
        try:
            return self._handler(session, frame)
        except Exception:
            logger.exception("lease request handler failed")
            return error_frame(request_id, Code.INTERNAL, "internal error in dualbladed")
