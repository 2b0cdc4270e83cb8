"""``Store.Batch`` over the lease socket: the SDK's side of the fast data plane.

The frame format is in :mod:`dualblade.v1.wire` (the daemon's side in
``dualbladed.sessions.leaseframes``): a request is ``u64 id (LE) | BatchRequest``, a reply
``u64 id | u32 code | BatchResponse or UTF-8 message``.
A datagram round trip on the lease costs ~0.05 ms against ~0.5 ms for a gRPC-Python unary call.

:class:`LeasePlane` multiplexes calls from many threads (the pipeline's I/O threads) onto the one
lease: sends are serialized by a lock (one datagram each, atomic anyway on SEQPACKET); replies
are received by whichever waiting caller holds the receive lock, which hands each reply, by
request id, to the caller waiting for it (leader/follower: no reader thread, so a lone caller
pays no thread switch). When the lease dies (daemon gone, session ended elsewhere) every waiting
and later call raises Unavailable. :meth:`LeasePlane.close` shuts the socket down, which wakes a
receiving caller with EOF; the owner then closes the socket (it is the session's lease).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import socket
import threading

from dualblade import errors
from dualblade._handshake import CLOSE_WAIT_S, await_eof
from dualblade.v1.wire import REPLY_HEADER, REQUEST_HEADER, Code, code_name, size_socket_buffers

__all__ = ["LeasePlane", "TooLarge"]


class TooLarge(Exception):
    """The request does not fit one lease frame: the caller should use gRPC for it."""


class _Waiter:
    """One call's reply slot. ``code``, ``body`` and ``event`` change only under
    ``LeasePlane._lock``.

    ``event`` is made only when the caller has to sleep (another caller is receiving): a lone
    caller reads its own reply and never needs one, and a ``threading.Event`` (a Condition and
    two locks) was the largest allocation of an empty call on the client.
    """

    __slots__ = ("event", "code", "body")

    def __init__(self) -> None:
        #: Set when the reply is in (``code`` is no longer None) or to offer the receiver role.
        self.event: threading.Event | None = None
        self.code: int | None = None
        self.body = b""


class LeasePlane:
    """Request/reply calls over a session's lease socket (see the module docstring)."""

    def __init__(self, sock: socket.socket, max_frame_bytes: int) -> None:
        self._sock = sock
        self.max_frame_bytes = max_frame_bytes
        size_socket_buffers(sock, max_frame_bytes)
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()  # held by the one caller receiving for everyone
        self._buffer = bytearray(max_frame_bytes + REPLY_HEADER.size)
        self._lock = threading.Lock()  # guards _waiters and _dead
        self._waiters: dict[int, _Waiter] = {}
        self._dead: str | None = None

    def call(self, request: bytes) -> bytes:
        """Send one serialized BatchRequest; return the serialized BatchResponse.

        Raises TooLarge when the frame exceeds the daemon's limit or the socket's (nothing was
        sent), the :mod:`dualblade.errors` type of the daemon's error code, or Unavailable once
        the lease is dead.
        """
        if len(request) + REQUEST_HEADER.size > self.max_frame_bytes:
            raise TooLarge
        request_id = next(self._ids)
        waiter = _Waiter()
        with self._lock:
            if self._dead is not None:
                raise errors.Unavailable(self._dead)
            self._waiters[request_id] = waiter
        try:
            with self._send_lock:
                self._sock.sendmsg([REQUEST_HEADER.pack(request_id), request])
        except OSError as err:
            with self._lock:
                self._waiters.pop(request_id, None)
            if err.errno == errno.EMSGSIZE:
                raise TooLarge from None
            raise errors.Unavailable(f"dualbladed lease send failed: {err}") from None
        self._wait(waiter)
        if waiter.code == Code.OK:
            return waiter.body
        if waiter.code is None or waiter.code < 0:
            raise errors.Unavailable(waiter.body.decode())
        message = waiter.body.decode("utf-8", "replace")
        raise errors.from_code(code_name(waiter.code), message)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Shut the lease down, wake a caller blocked in recv (EOF) and fail every waiting
        call. The socket stays open: its owner closes it.

        Writing is shut first and the daemon's EOF awaited (at most ``wait_s``): the daemon
        closes its end once it has ended the session, so the owner's close that follows
        returns with the session gone (:meth:`dualblade._handshake.HandshakeResult.close`)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
            await_eof(self._sock, wait_s)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._fail_all("the dualblade client was closed")

    def _wait(self, waiter: _Waiter) -> None:
        """Until the reply is in: receive for everyone when nobody else does, else sleep.

        Leader/follower: the caller holding ``_recv_lock`` reads replies and hands each to its
        waiter; when its own arrives it lets go and offers the role to a caller still waiting.
        A lone caller thus reads its own reply with no thread switch in between.
        """
        while waiter.code is None:
            if self._recv_lock.acquire(blocking=False):
                try:
                    while waiter.code is None:
                        self._receive_one()
                finally:
                    self._recv_lock.release()
                self._offer_receiver_role()
                return
            with self._lock:  # the receiver sets code under this lock: no wake-up is lost
                if waiter.code is not None:
                    return
                if waiter.event is None:
                    waiter.event = threading.Event()
                event = waiter.event
            event.wait()
            event.clear()

    def _receive_one(self) -> None:
        try:
            nbytes = self._sock.recv_into(self._buffer)
        except OSError as err:
            self._fail_all(f"dualbladed lease failed: {err}")
            return
        if nbytes == 0:
            self._fail_all("dualbladed closed the lease (daemon stopped or session ended)")
            return
        if nbytes < REPLY_HEADER.size:
            return  # not a reply; nothing to dispatch it to
        request_id, code = REPLY_HEADER.unpack_from(self._buffer)
        body = bytes(memoryview(self._buffer)[REPLY_HEADER.size : nbytes])
        with self._lock:
            waiter = self._waiters.pop(request_id, None)
            if waiter is None:
                return  # an id-less refusal (id 0) or a reply nobody waits for any more
            waiter.body = body
            waiter.code = code
            event = waiter.event
        if event is not None:
            event.set()

    def _offer_receiver_role(self) -> None:
        with self._lock:
            nxt = next(iter(self._waiters.values()), None)
            if nxt is None:
                return
            if nxt.event is None:  # about to sleep: it will find the event already set
                nxt.event = threading.Event()
            event = nxt.event
        event.set()

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = reason
            waiters, self._waiters = self._waiters, {}
            events = []
            for waiter in waiters.values():
                waiter.body = self._dead.encode()
                waiter.code = -1
                if waiter.event is not None:
                    events.append(waiter.event)
        for event in events:
            event.set()
