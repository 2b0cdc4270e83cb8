"""Opening a session off the handshake thread: admission, the uid's gRPC socket, the arena.

The handshake thread (:mod:`dualbladed.sessions.handshake`) reads and validates a hello, then
hands the connection to a :class:`SessionOpener`, whose small pool of threads does the rest,
so hellos are served concurrently and a slow one (a uid's first gRPC server start) delays nobody
else. The order matters:

1. the peer must still be there (its connection not hung up, its pidfd not readable);
2. admission (:meth:`SessionRegistry.admit`) charges the slot and the arena bytes to the uid, or
   refuses, *before* anything is allocated;
3. the uid's gRPC socket (:class:`GrpcSockets`) is started or referenced;
4. the peer is checked again, then the arena (a sparse memfd: no page is committed) is created
   and the session registered.

Any failure undoes the steps before it in reverse. The outcome (:class:`Opened`) goes back to
the handshake thread through the ``done`` callback, which sends the reply only to a live peer.

Ownership: while an opener works on a connection it only *polls* the connection's socket and
pidfd; the handshake thread does not close them until it has drained the outcome.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from dualbladed.errors import DualbladeError, PermissionDenied, ResourceExhausted
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.hello import Hello
from dualbladed.sessions.registry import Session, SessionRegistry

__all__ = [
    "GrpcSockets",
    "Opened",
    "Peer",
    "SessionOpener",
    "Throttled",
    "peer_gone",
    "root_only",
]

logger = logging.getLogger(__name__)


class GrpcSockets(Protocol):
    """Per-uid gRPC sockets (:class:`dualbladed.service.uidsockets.UidSockets`)."""

    def acquire(self, uid: int) -> str:
        """The path of ``uid``'s gRPC socket, serving once this returns; one reference more."""
        ...

    def release(self, uid: int) -> None:
        """One reference less; the socket retires some time after the last one."""
        ...


class Peer(Protocol):
    """What an opener needs of a handshake connection (the kernel's word on who it is)."""

    sock: socket.socket
    pid: int
    uid: int
    gid: int
    pidfd: int | None


def root_only(uid: int, gid: int, pid: int) -> bool:
    """The default privilege test: root alone may use the reserves."""
    return uid == 0


def peer_gone(peer: Peer) -> bool:
    """Has the peer hung up its end, or exited? Non-blocking."""
    poller = select.poll()
    poller.register(peer.sock.fileno(), select.POLLRDHUP)  # POLLHUP/POLLERR come regardless
    if peer.pidfd is not None:
        poller.register(peer.pidfd, select.POLLIN)
    return bool(poller.poll(0))


class Throttled:
    """One log line per ``period_s`` for an event a client can repeat at will (a refused or
    abandoned handshake), with the count of those folded into it: a flood of cheap hellos must
    not become a flood of log lines."""

    def __init__(self, log: logging.Logger, level: int, period_s: float = 1.0) -> None:
        self._log = log
        self._level = level
        self._period_s = period_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._folded = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._folded += 1
                return
            folded, self._folded, self._next = self._folded, 0, now + self._period_s
        if folded:
            msg += " (and %d more like it not logged)"
            args = (*args, folded)
        self._log.log(self._level, msg, *args)


@dataclass(frozen=True, eq=False)
class Opened:
    """An opener's outcome: a session to grant, an error to reply, or (neither) a vanished peer."""

    conn: Any
    session: Session | None = None
    grpc_socket: str | None = None
    error: tuple[str, str] | None = None  # (code, message)


class _Vanished(Exception):
    """The peer hung up (or exited) while its session was being opened."""


class SessionOpener:
    """The opener threads (see the module docstring). Thread-safe."""

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        make_arena: Callable[[int], Arena],
        workers: int,
        allow_tenant: Callable[[int, str], None] | None = None,
        is_privileged: Callable[[int, int, int], bool] = root_only,
        grpc_sockets: GrpcSockets | None = None,
        privileged_only: bool = False,
    ) -> None:
        self._registry = registry
        self._privileged_only = privileged_only
        self._make_arena = make_arena
        self._allow_tenant = allow_tenant
        self._is_privileged = is_privileged
        self._sockets = grpc_sockets
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dualbladed-open")
        # Sessions holding a reference on their uid's gRPC socket. The lock makes "registered"
        # and "recorded here" one step as seen by on_session_end, which may run on any thread.
        self._holders: set[str] = set()
        self._holders_lock = threading.Lock()
        self._log_vanished = Throttled(logger, logging.INFO)
        self._log_refused = Throttled(logger, logging.INFO)

    def submit(self, conn: Peer, hello: Hello, done: Callable[[Opened], None]) -> None:
        """Open ``conn``'s session on a pool thread; ``done(outcome)`` runs there afterwards.

        RuntimeError once :meth:`shutdown` has been called.
        """
        self._pool.submit(self._open, conn, hello, done)

    def shutdown(self) -> None:
        """Wait for the sessions being opened (their ``done`` callbacks have run on return)."""
        self._pool.shutdown(wait=True)

    def on_session_end(self, session: Session) -> None:
        """Registry callback: give back the session's reference on its uid's gRPC socket."""
        with self._holders_lock:
            held = session.id in self._holders
            self._holders.discard(session.id)
        if held and self._sockets is not None:
            self._sockets.release(session.uid)

    def _open(self, conn: Peer, hello: Hello, done: Callable[[Opened], None]) -> None:
        try:
            session, path = self._open_session(conn, hello)
            opened = Opened(conn, session, path)
        except _Vanished:
            self._log_vanished(
                "handshake peer pid %d vanished; nothing was allocated for it", conn.pid
            )
            opened = Opened(conn)
        except DualbladeError as err:
            self._log_refused(
                "handshake from pid %d uid %d refused: %s %s",
                conn.pid,
                conn.uid,
                err.grpc_code,
                err,
            )
            opened = Opened(conn, error=(err.grpc_code, str(err)))
        except Exception:
            logger.exception("handshake from pid %d uid %d failed", conn.pid, conn.uid)
            opened = Opened(conn, error=("INTERNAL", "internal error while opening the session"))
        done(opened)

    def _open_session(self, conn: Peer, hello: Hello) -> tuple[Session, str | None]:
        """Admission, then the uid's gRPC socket, then the arena, then the session."""
        if peer_gone(conn):
            raise _Vanished
        if self._allow_tenant is not None:
            self._allow_tenant(conn.uid, hello.tenant)
        privileged = self._is_privileged(conn.uid, conn.gid, conn.pid)
        if self._privileged_only and not privileged:
            raise PermissionDenied(
                f"uid {conn.uid} is neither root nor in the admin group: this handshake socket "
                "is the admin lane; use the shared one"
            )
        admission = self._registry.admit(conn.uid, hello.arena_bytes, privileged=privileged)
        try:
            path = self._sockets.acquire(conn.uid) if self._sockets is not None else None
            try:
                return self._create(conn, hello, admission, path), path
            except BaseException:
                if path is not None:
                    self._sockets.release(conn.uid)  # type: ignore[union-attr]
                raise
        except BaseException:
            self._registry.cancel(admission)  # a no-op once a session owns it
            raise

    def _create(self, conn: Peer, hello: Hello, admission: Any, path: str | None) -> Session:
        if peer_gone(conn):
            raise _Vanished
        try:
            arena = self._make_arena(hello.arena_bytes)
        except OSError as err:
            raise ResourceExhausted(
                f"cannot create an arena of {hello.arena_bytes} bytes: {err.strerror or err}"
            ) from err
        try:
            with self._holders_lock:
                session = self._registry.register(
                    pid=conn.pid,
                    uid=conn.uid,
                    gid=conn.gid,
                    tenant_label=hello.tenant,
                    arena=arena,
                    pidfd=conn.pidfd,
                    admission=admission,
                )
                if path is not None:
                    self._holders.add(session.id)
        except BaseException:
            arena.close()
            raise
        return session
