"""The handshake socket: kernel-attested identity, a session token, the arena fd, and the lease.

gRPC Python cannot see a Unix-socket peer's credentials (``context.peer()`` is just ``"unix:"``,
local credentials never read SO_PEERCRED, and there is no API to reach the connection's fd; a pid
in metadata would only be a claim), so identity is established here, on a small
``AF_UNIX``/``SOCK_SEQPACKET`` socket next to the gRPC one. SEQPACKET keeps message boundaries
(one hello = one datagram, no framing code) and, unlike SOCK_DGRAM, is connection-oriented, so
the connection itself can be the lease. The pid/uid/gid come from ``SO_PEERCRED``, never from a
message. The messages (hello, reply, error) and their field rules are in
:mod:`dualbladed.sessions.hello`; how connections are accepted (rate limit, fd exhaustion, which
pending connection is evicted) in :mod:`dualbladed.sessions.accept`.

Opening a session (admission before any allocation, the uid's gRPC socket, a sparse arena)
runs on opener threads, not on the handshake thread (:mod:`dualbladed.sessions.opener`), and the
reply goes only to a peer still connected: a hello followed by a hang-up leaves no session.

The lease: after a successful hello the connection stays open. Further datagrams on it are
data-plane request frames (``Store.Batch`` without gRPC's cost), read and run by the lease's own
reader threads (format and threading in :mod:`dualbladed.sessions.leaseframes`); a bad frame
costs only that frame. EOF, a socket error, or the peer's pidfd turning readable (the process
exited) ends the session through
:meth:`SessionRegistry.end`, typically within milliseconds and always within one second. The
pidfd matters when the client forked: the child inherits the lease socket, so the connection
outlives the parent, but the pidfd still reports the parent's exit. The pidfd comes from
``SO_PEERPIDFD`` (:mod:`dualbladed.sessions.peer`); older kernels fall back to ``pidfd_open(pid)`` right
after accept, which could name a recycled pid if the client died within microseconds of
connecting; its lease socket's EOF ends that session anyway. Conversely, when a session is ended
from elsewhere (admin, shutdown), the lease connection is closed, so the client sees EOF.

Threading and fd ownership. One thread runs a selector over the listener, a wake-up pipe, the
pending handshakes and the leases' pidfds; only that thread opens or closes those fds (or
``stop()``, after joining it; the connection table and how a connection is closed are in
:mod:`dualbladed.sessions.conns`), so an fd number is never closed while another thread may
still use it: the kernel reuses a closed number at once, and a late read or write would hit
whatever file got it. The same rule is why the other threads never touch these fds and instead
talk to the handshake thread through queues plus the pipe:

* a lease's frames are read on a *dup* of its fd by its readers, which report EOF back
  (``_lost``) instead of closing anything;
* while an opener thread works on a connection (``Conn.opening``) it owns it, and the
  handshake thread neither reads nor closes it until the outcome comes back through ``_opened``;
* sessions ended elsewhere arrive through ``_ended``;
* ``_wake_lock`` makes the pipe write atomic with ``stop()``'s close of the pipe, so a late
  ``_wake()`` from another thread cannot write into an fd number the kernel has handed out again.

Every per-connection failure is caught and logged and costs only that connection; the thread
never dies. ``on_end`` callbacks triggered by a broken lease run on this thread, so they must be
quick.

Robustness limits on the handshake thread (those on accepting are in
:mod:`dualbladed.sessions.accept`): at most ``max_opening_per_uid`` hellos of one uid are queued
for the openers; that uid's further connections stay pending with their hello unread until one
of its openers finishes, so a flood from one uid never queues ahead of another uid's hello
(:mod:`dualbladed.sessions.turns`). A pending connection that sends nothing for ``hello_timeout_s`` is closed. Datagrams above
``wire.HELLO_MAX_BYTES`` and hellos that carry file descriptors are refused (the kernel discards
fds we did not ask for, so none leak).

Instance lock: :meth:`HandshakeServer.start` replaces a stale socket file at ``path``, which is
safe only because the caller already holds the daemon's instance lock (see
:func:`dualbladed.sessions.accept.bind_listener`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from dualblade.v1.wire import (
    LEASE_FRAME_MAX_BYTES,
    PUT_PACKED,
    size_socket_buffers,
)
from dualbladed.config import LimitsConfig
from dualbladed.errors import DualbladeError, FailedPrecondition, InvalidArgument
from dualbladed.sessions.accept import (
    LISTENER,
    Acceptor,
    bind_listener,
    eviction_victim,
    unlink_if_ours,
)
from dualbladed.sessions.arena import Arena
from dualbladed.sessions.conns import Conn, Connections
from dualbladed.sessions.hello import error_reply, grant_reply, receive_hello
from dualbladed.sessions.leaseframes import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameWorkers,
    LeaseWriter,
    RequestHandler,
)
from dualbladed.sessions.opener import (
    GrpcSockets,
    Opened,
    SessionOpener,
    Throttled,
    peer_gone,
    root_only,
)
from dualbladed.sessions.peer import peer_credentials, peer_pidfd
from dualbladed.sessions.registry import Session, SessionRegistry
from dualbladed.sessions.turns import OpeningTurns

__all__ = ["HandshakeConfig", "HandshakeServer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandshakeConfig:
    """How the handshake listener behaves.

    ``limits`` is the daemon's ``[limits]`` section, validated where it was built (the config
    loader checks each size, :class:`~dualbladed.config.LimitsConfig` checks default <= max);
    the server announces all of it to clients in the reply's ``limits``. The other fields are
    not user settings: the daemon uses the defaults, tests tighten them.
    """

    limits: LimitsConfig = field(default_factory=LimitsConfig)
    socket_mode: int = 0o660
    socket_gid: int | None = None
    hello_timeout_s: float = 2.0
    max_pending: int = 64
    #: the largest lease frame (announced only when the server has a request handler)
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    request_workers: int = 16
    #: threads that open sessions (admission, per-uid socket, arena) off the handshake thread
    open_workers: int = 4
    #: connections accepted per second (a token bucket, bursts of a tenth of it); beyond that
    #: they wait in the kernel's backlog, so a connect flood costs the daemon bounded CPU (and
    #: GIL) time. None: no limit (the admin lane, which only root and admins reach).
    max_accepts_per_s: float | None = 1000.0
    #: hellos of one uid being opened at once; more wait unread (still pending) for their turn
    max_opening_per_uid: int = 8

    def __post_init__(self) -> None:
        if not self.hello_timeout_s > 0:
            raise InvalidArgument(f"hello_timeout_s must be positive, got {self.hello_timeout_s!r}")
        if self.max_pending < 1:
            raise InvalidArgument(f"max_pending must be at least 1, got {self.max_pending!r}")
        if self.max_accepts_per_s is not None and not self.max_accepts_per_s > 0:
            raise InvalidArgument(
                f"max_accepts_per_s must be positive, got {self.max_accepts_per_s!r}"
            )
        if self.open_workers < 1:
            raise InvalidArgument(f"open_workers must be at least 1, got {self.open_workers!r}")


class HandshakeServer:
    """The handshake listener and lease watcher (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        registry: SessionRegistry,
        config: HandshakeConfig,
        *,
        make_arena: Callable[[int], Arena],
        allow_tenant: Callable[[int, str], None] | None = None,
        on_request: RequestHandler | None = None,
        is_privileged: Callable[[int, int, int], bool] = root_only,
        grpc_sockets: GrpcSockets | None = None,
        privileged_only: bool = False,
    ) -> None:
        self._path = os.fspath(path)
        self._registry = registry
        self._config = config
        self._make_arena = make_arena
        self._opener = SessionOpener(
            registry,
            make_arena=make_arena,
            workers=config.open_workers,
            allow_tenant=allow_tenant,
            is_privileged=is_privileged,
            grpc_sockets=grpc_sockets,
            privileged_only=privileged_only,
        )
        self._turns: OpeningTurns[Conn] = OpeningTurns(config.max_opening_per_uid)
        self._opened: collections.deque[Opened] = collections.deque()
        self._log_evicted = Throttled(logger, logging.WARNING)
        self._log_refused = Throttled(logger, logging.INFO)
        self._log_vanished = Throttled(logger, logging.INFO)
        self._log_silent = Throttled(logger, logging.INFO)
        self._limits: dict[str, int] = asdict(config.limits)
        self._limits[PUT_PACKED] = 1  # Batch takes PutPackedOp (either transport)
        if on_request is not None:
            self._limits[LEASE_FRAME_MAX_BYTES] = config.max_frame_bytes
        self._frames = FrameWorkers(
            on_request,
            max_frame_bytes=config.max_frame_bytes,
            workers=config.request_workers,
            max_leases=registry.max_sessions,
        )
        # Owned by the handshake thread once started.
        self._listener: socket.socket | None = None
        self._listener_ino: int | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._conns = Connections()  # pending handshakes and leases
        self._acceptor: Acceptor | None = None
        # Shared with other threads. The wake lock keeps a late _wake() from writing to a pipe fd
        # that stop() closed (and the kernel may have handed out again).
        self._wake_lock = threading.Lock()
        self._ended: collections.deque[str] = collections.deque()
        self._lost: collections.deque[tuple[str, str]] = collections.deque()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return self._path

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (replacing a stale socket file: hold the instance lock first), listen, serve."""
        if self._thread is not None:
            raise FailedPrecondition("handshake server already started")
        listener, self._listener_ino = bind_listener(
            self._path, self._config.socket_mode, self._config.socket_gid
        )
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._acceptor = Acceptor(listener, self._selector, self._config.max_accepts_per_s)
        self._conns.attach(self._selector)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._registry.on_end(self._on_session_end)
        self._thread = threading.Thread(target=self._run, name="dualbladed-handshake", daemon=True)
        self._thread.start()
        logger.info("handshake socket listening on %s", self._path)

    def stop(self) -> None:
        """Stop serving, close every pending handshake, end every session this server leased."""
        thread = self._thread
        if thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake()
        thread.join()
        self._opener.shutdown()  # sessions being opened land in _opened
        while self._opened:
            opened = self._opened.popleft()
            opened.conn.opening = False
            if opened.session is not None:
                self._registry.end(opened.session.id)
            self._conns.drop(opened.conn)
        for conn in self._conns.leases.values():  # the readers see EOF and leave
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RD)
        self._frames.close()  # requests already read still get their replies
        self._registry.remove_on_end(self._on_session_end)
        for conn in list(self._conns.pending):
            self._conns.drop(conn)
        for conn in list(self._conns.leases.values()):
            self._conns.drop(conn)
            if conn.session_id is not None:
                self._registry.end(conn.session_id)
        assert self._selector is not None and self._listener is not None
        self._selector.close()
        self._listener.close()
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        unlink_if_ours(self._path, self._listener_ino)
        logger.info("handshake socket %s closed", self._path)

    def _wake(self) -> None:
        # A full pipe (BlockingIOError) means the thread is already due to wake up.
        with self._wake_lock, contextlib.suppress(OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")

    def _on_session_end(self, session: Session) -> None:
        # Registry callback, any thread: ask the handshake thread to drop the lease connection.
        self._opener.on_session_end(session)
        self._ended.append(session.id)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _on_lease_closed(self, session_id: str, reason: str) -> None:
        # A lease reader met EOF or an error: the handshake thread ends the session.
        self._lost.append((session_id, reason))
        self._wake()

    # ---- the handshake thread --------------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        while not self._stopping.is_set():
            try:
                events = self._selector.select(self._next_timeout())
                for key, _mask in events:
                    self._dispatch(key)
                self._expire_pending()
                self._drain_opened()
                self._drain_lost()
                self._drain_ended()
                assert self._acceptor is not None
                self._acceptor.maybe_resume()
            except Exception:
                logger.exception("handshake loop iteration failed; continuing")
                time.sleep(0.01)

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        deadlines = []
        if self._conns.pending:
            deadlines.append(next(iter(self._conns.pending)).deadline)
        if self._acceptor is not None and self._acceptor.paused_until:
            deadlines.append(self._acceptor.paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _dispatch(self, key: selectors.SelectorKey) -> None:
        data = key.data
        if data == LISTENER:
            assert self._acceptor is not None
            self._acceptor.accept_batch(self._admit)
        elif data == "wake":
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        else:
            kind, conn = data
            self._guarded(conn, kind)

    def _guarded(self, conn: Conn, kind: str) -> None:
        """Handle one event on one connection; a failure costs that connection only."""
        try:
            if kind == "pidfd":
                self._lease_lost(conn, "client process exited")
            elif conn.session_id is None:
                self._on_hello(conn)
        except Exception:
            logger.exception("handshake connection from pid %d failed; closing it", conn.pid)
            if conn.session_id is None:
                self._conns.drop(conn)
            else:
                self._lease_lost(conn, "internal error")

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError as err:
            logger.warning("SO_PEERCRED failed (%s); closing the connection", err)
            sock.close()
            return
        try:
            pidfd = peer_pidfd(sock, pid)
        except ProcessLookupError:
            logger.debug("handshake peer pid %d exited before accept; closing", pid)
            sock.close()
            return
        conn = Conn(sock, pid, uid, gid, pidfd, time.monotonic() + self._config.hello_timeout_s)
        while len(self._conns.pending) >= self._config.max_pending:
            victim = eviction_victim(self._conns.pending, conn.uid)
            self._log_evicted(
                "too many pending handshakes (%d); closing the oldest of uid %d (pid %d)",
                self._config.max_pending,
                victim.uid,
                victim.pid,
            )
            self._conns.drop(victim)
        assert self._selector is not None
        try:
            self._selector.register(sock, selectors.EVENT_READ, ("conn", conn))
        except BaseException:
            self._conns.drop(conn)
            raise
        self._conns.pending[conn] = None
        # A well-behaved client has usually queued its hello already: serve it now.
        self._guarded(conn, "conn")

    def _on_hello(self, conn: Conn) -> None:
        if self._turns.park_if_busy(conn):
            # Parked unread until one of this uid's openers finishes (see _drain_opened).
            assert self._selector is not None
            self._selector.unregister(conn.sock)
            return
        try:
            hello = receive_hello(
                conn.sock,
                default_arena_bytes=self._config.limits.default_arena_bytes,
                max_arena_bytes=self._config.limits.max_arena_bytes,
            )
        except BlockingIOError:
            return
        except OSError as err:
            logger.debug("handshake peer pid %d vanished: %s", conn.pid, err)
            self._conns.drop(conn)
            return
        except DualbladeError as err:
            self._log_refused(
                "handshake from pid %d uid %d refused: %s %s",
                conn.pid,
                conn.uid,
                err.grpc_code,
                err,
            )
            self._reply_error(conn, err.grpc_code, str(err))
            return
        if hello is None:
            logger.debug("handshake peer pid %d closed before its hello", conn.pid)
            self._conns.drop(conn)
            return
        # The opener owns the connection until it hands it back through _opened.
        self._turns.begin(conn)
        del self._conns.pending[conn]
        assert self._selector is not None
        self._selector.unregister(conn.sock)
        conn.opening = True
        try:
            self._opener.submit(conn, hello, self._on_opened)
        except RuntimeError:  # shutting down
            self._turns.end(conn)
            conn.opening = False
            self._conns.drop(conn)

    def _on_opened(self, opened: Opened) -> None:
        # Opener thread: hand the outcome to the handshake thread.
        self._opened.append(opened)
        self._wake()

    # ---- back on the handshake thread ------------------------------------------------------

    def _drain_opened(self) -> None:
        while self._opened:
            opened = self._opened.popleft()
            conn = opened.conn
            self._turns.end(conn)
            conn.opening = False
            self._resume_parked(conn.uid)
            if opened.session is not None:
                self._grant(conn, opened.session, opened.grpc_socket)
            elif opened.error is not None:
                self._reply_error(conn, *opened.error)
            else:
                self._conns.drop(conn)

    def _resume_parked(self, uid: int) -> None:
        """Read the hello of the oldest parked connection of ``uid`` still pending."""
        conn = self._turns.next_parked(uid, self._conns.pending.__contains__)
        if conn is not None:
            assert self._selector is not None
            self._selector.register(conn.sock, selectors.EVENT_READ, ("conn", conn))
            self._guarded(conn, "conn")

    def _grant(self, conn: Conn, session: Session, grpc_socket: str | None = None) -> None:
        reply = grant_reply(
            session_id=session.id,
            token=session.token,
            tenant=session.tenant,
            arena_bytes=session.arena.size,
            limits=self._limits,
            grpc_socket=grpc_socket,
        )
        if peer_gone(conn):
            self._log_vanished("handshake peer pid %d vanished before the reply", conn.pid)
            self._conns.drop(conn)
            self._registry.end(session.id)
            return
        try:
            socket.send_fds(conn.sock, [reply], [session.arena.fd])
        except OSError as err:
            logger.info("handshake peer pid %d vanished before the reply: %s", conn.pid, err)
            self._conns.drop(conn)
            self._registry.end(session.id)
            return
        conn.session_id = session.id
        conn.session = session
        conn.writer = LeaseWriter(conn.sock)
        if self._frames.enabled:
            size_socket_buffers(conn.sock, self._frames.max_frame_bytes)
        self._conns.leases[session.id] = conn
        self._frames.serve(  # from now on its readers read it
            conn.sock.dup(),
            session,
            conn.writer,
            functools.partial(self._on_lease_closed, session.id),
        )
        if conn.pidfd is not None:
            assert self._selector is not None
            self._selector.register(conn.pidfd, selectors.EVENT_READ, ("pidfd", conn))
            conn.pidfd_registered = True
        logger.info(
            "session %s opened: pid %d uid %d gid %d tenant %s arena %d bytes",
            session.id,
            conn.pid,
            conn.uid,
            conn.gid,
            session.tenant,
            session.arena.size,
        )

    def _reply_error(self, conn: Conn, code: str, message: str) -> None:
        try:
            conn.sock.send(error_reply(code, message))
        except OSError as err:
            logger.debug("could not send the error reply to pid %d: %s", conn.pid, err)
        self._conns.drop(conn)

    def _lease_lost(self, conn: Conn, reason: str, *, readers_left: bool = False) -> None:
        """End ``conn``'s session and close its lease.

        ``readers_left``: the lease's readers met EOF (the client shut its side down) and are
        gone. Then the client sees the lease close only once the session has ended (a dup holds
        it open across ``registry.end``: :meth:`Connections.dropping`), so a client that waits
        for that EOF (``Client.close``) finds its session, its admission slot and its ephemeral
        objects released, and a close-then-reopen at a session limit is not refused.
        """
        session_id = conn.session_id
        with self._conns.dropping(conn, readers_left=readers_left):
            if session_id is not None and self._registry.end(session_id):
                logger.info("session %s ended (pid %d): %s", session_id, conn.pid, reason)

    def _expire_pending(self) -> None:
        now = time.monotonic()
        while self._conns.pending:
            conn = next(iter(self._conns.pending))
            if conn.deadline > now:
                return
            self._log_silent(
                "handshake from pid %d sent no hello within %.1f s; closing",
                conn.pid,
                self._config.hello_timeout_s,
            )
            self._conns.drop(conn)

    def _drain_lost(self) -> None:
        while self._lost:
            session_id, reason = self._lost.popleft()
            conn = self._conns.leases.get(session_id)
            if conn is not None:
                self._lease_lost(conn, reason, readers_left=True)

    def _drain_ended(self) -> None:
        while self._ended:
            conn = self._conns.leases.get(self._ended.popleft())
            if conn is not None:
                logger.info("session %s ended elsewhere; closing its lease", conn.session_id)
                self._conns.drop(conn)
