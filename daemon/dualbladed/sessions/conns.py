"""The handshake thread's connections: pending handshakes, leases, and closing their fds.

Split out of :mod:`dualbladed.sessions.handshake`, whose module docstring gives the threading and
fd ownership rules this table follows; the server makes it in ``__init__`` and hands it the
selector in ``start()``. A :class:`Connections` belongs to the handshake thread (or to
``HandshakeServer.stop()``, after joining that thread), so it has no lock of its own: only that
thread registers, unregisters or closes the fds of its connections, and other threads reach them
only through the server's queues. The one lock taken here is a lease writer's, in
``LeaseWriter.close()``, with no other lock held. A connection an opener thread owns
(``Conn.opening``) is in neither table until the server takes the outcome back; closing it
meanwhile would hand its fd number to another file while the opener still uses it.

Closing is the delicate part kept here. A lease's socket is shared: its readers read a dup, and a
worker may be writing a reply through its writer, so :meth:`Connections.drop` shuts it down to
wake the readers and lets the writer close it once that reply is out. When the client sees the
lease close matters too; :meth:`Connections.dropping` can hold it open until the server has ended
the session (why: ``HandshakeServer._lease_lost``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from dualbladed.sessions.leaseframes import LeaseWriter
from dualbladed.sessions.registry import Session

__all__ = ["Conn", "Connections"]


@dataclass(eq=False)
class Conn:
    """A connection owned by the handshake thread: pending until its hello, then a lease."""

    sock: socket.socket
    pid: int
    uid: int
    gid: int
    pidfd: int | None
    deadline: float
    session_id: str | None = None
    session: Session | None = None
    writer: LeaseWriter | None = None
    pidfd_registered: bool = field(default=False)
    #: an opener thread owns the work on it (the handshake thread must not close it meanwhile)
    opening: bool = field(default=False)


class Connections:
    """One handshake server's pending handshakes and leases (see the module docstring)."""

    def __init__(self) -> None:
        self._selector: selectors.BaseSelector | None = None
        # Insertion order = deadline order (one constant timeout), so the oldest is first.
        self.pending: collections.OrderedDict[Conn, None] = collections.OrderedDict()
        #: leases by session id
        self.leases: dict[str, Conn] = {}

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Use the handshake thread's selector (made by ``start()``, which calls this)."""
        self._selector = selector

    def drop(self, conn: Conn, *, wake_readers: bool = True) -> None:
        """Forget a connection and close its fds. Idempotent. Handshake thread (or stop()) only.

        ``wake_readers``: shut the lease down so its readers see EOF (False only when they have
        left already: the shutdown would also show the client EOF, see :meth:`dropping`)."""
        assert self._selector is not None
        self.pending.pop(conn, None)
        if conn.session_id is not None and self.leases.get(conn.session_id) is conn:
            del self.leases[conn.session_id]
        if conn.sock.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
            if conn.writer is not None:
                if wake_readers:
                    with contextlib.suppress(OSError):  # wakes the lease's reader with EOF
                        conn.sock.shutdown(socket.SHUT_RDWR)
                conn.writer.close()  # waits for a worker's reply in progress
            else:
                conn.sock.close()
        if conn.pidfd is not None:
            if conn.pidfd_registered:
                self._selector.unregister(conn.pidfd)
                conn.pidfd_registered = False
            os.close(conn.pidfd)
            conn.pidfd = None

    @contextlib.contextmanager
    def dropping(self, conn: Conn, *, readers_left: bool) -> Iterator[None]:
        """Drop ``conn``, then run the body; the peer sees EOF only after the body if
        ``readers_left`` (its readers are gone): a dup holds the socket open until then and no
        shutdown wakes anyone. If the drop fails the body does not run."""
        hold = None
        if readers_left:
            with contextlib.suppress(OSError):
                hold = conn.sock.dup()
        try:
            self.drop(conn, wake_readers=hold is None)
            yield
        finally:
            if hold is not None:
                hold.close()
