"""One gRPC server per uid with live sessions, on a socket only that uid (and root) can reach.

Why: gRPC Python never learns a Unix-socket caller's uid (it exposes no SO_PEERCRED), so identity on the
gRPC side has to come from somewhere the kernel checks. Here it is the filesystem: uid ``U``'s
sessions are served on ``<runtime dir>/uid/<U>/grpc.sock``, in a directory only ``U`` (and root,
and the daemon) can enter, so only they can ``connect()``;
:class:`~dualbladed.service.tokengate.TokenGate` accepts on that socket only tokens of ``U``'s
sessions. A token handed to another uid is then useless: that uid cannot reach the socket the
token is good on, and its own socket refuses it. The handshake reply names the socket
(``grpc_socket``), so the SDK needs no configuration.

Layout and modes. ``<runtime dir>/uid`` is the daemon's, mode 0711 (anyone may traverse to their
own directory, nobody may list or create). ``uid/<U>`` and its socket are the daemon's too, modes
0700 and 0600, plus a POSIX ACL entry for ``U`` (:mod:`dualbladed.service.acl`): traverse on the
directory, read-write on the socket. No chown is needed, so this works for a daemon running as
its own unprivileged user under systemd's ``~@privileged`` filter, and ``U`` can connect but not
create, rename or remove anything there. The daemon binds and sets the socket's mode and ACL
while nobody else can write the directory, so nothing can be swapped in between. Root and the
daemon's own uid need no entry.

Without ACLs (a filesystem that answers EOPNOTSUPP) a daemon running as root falls back to
giving ``uid/<U>`` and the socket to ``U`` (after binding); a daemon not running as root then
refuses hellos from other uids with PERMISSION_DENIED, naming the reason.

Lifetime. :meth:`UidSockets.acquire` (the handshake's opener threads, before the reply) starts the
uid's server if needed and counts a reference; :meth:`UidSockets.release` (the session's end,
possibly on the handshake thread: quick, no I/O) drops it. A server without references retires
after ``linger_s`` on the reaper thread, so a client reconnecting at once reuses the running one.
All servers share the daemon's gRPC executor.

Lock order: a uid's lock, then ``_lock``. ``_lock`` is held only for dictionary updates; server
start and stop happen under the uid's lock alone, so one uid's start never delays another uid's
release, and a restart for a uid waits until its retiring server has let go of the path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from dualblade.v1.wire import GRPC_SOCKET_NAME, GRPC_UNIX_PATH_MAX, UID_DIR_NAME, reachable_path
from dualbladed.errors import FailedPrecondition, PermissionDenied, Unavailable
from dualbladed.service import acl

__all__ = ["UID_DIR", "UidSockets", "let_group_into_socket", "prepare_admin_dir"]

logger = logging.getLogger(__name__)

#: the directory of the per-uid socket directories, inside the runtime directory (wire contract)
UID_DIR = UID_DIR_NAME


def prepare_admin_dir(path: str | os.PathLike[str], gid: int | None) -> bool:
    """Create or check the admin lane's directory (``wire.ADMIN_DIR_NAME``).

    The daemon's own, mode 0700, plus an ACL entry letting group ``gid`` (the admin group)
    traverse it, so only root, the daemon and the admin group reach the handshake socket inside
    (:func:`let_group_into_socket` opens the socket itself to the group). A directory owned by
    someone else is refused; a link or file in its place is replaced. False when the admin
    group could not be let in (no such group, or no ACLs here): root still can.
    """
    where = os.fspath(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(where, 0o700)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(where)
        os.mkdir(where, 0o700)
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise FailedPrecondition(
                f"{where} is owned by uid {st.st_uid}, not by the daemon's uid {os.geteuid()}; "
                "refusing to serve the admin lane in it"
            )
        os.fchmod(fd, 0o700)
        if gid is None:
            return False
        return acl.grant(fd, owner=acl.R | acl.W | acl.X, groups={gid: acl.X})
    finally:
        os.close(fd)


def let_group_into_socket(path: str | os.PathLike[str], gid: int) -> bool:
    """Let group ``gid`` connect to the socket at ``path`` (an ACL entry); False without ACLs."""
    return acl.grant(os.fspath(path), owner=acl.R | acl.W, groups={gid: acl.R | acl.W})


#: how long to wait, after a server's shutdown completed, for grpc to unlink its socket file
#: (grpc does it when the listener is destroyed, which may come just after the shutdown event)
_UNLINK_WAIT_S = 1.0


def _inode(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else None


@dataclass(eq=False)
class _Entry:
    server: grpc.Server
    path: str
    #: the socket file's inode once bound (None before: nothing of ours to remove)
    ino: int | None = None
    #: the directory fd a path too long for sockaddr_un was bound through (wire.reachable_path)
    bound_via: int | None = None
    refs: int = 0
    idle_since: float | None = None

    def stop(self, grace: float | None) -> int | None:
        """Stop the server and see its socket file gone before anyone may bind the path again.

        grpc unlinks the file itself, possibly just after the shutdown completed (through the
        path it bound, which may be ``/proc/self/fd/<bound_via>/...``): wait for that, so a
        late unlink cannot remove a newer server's socket. Past the wait the file (if still
        this server's inode) is removed here. Returns the directory fd to close once grpc can no
        longer use it: at once when the file went away, else only at the daemon's stop.
        """
        self.server.stop(grace).wait()
        deadline = time.monotonic() + _UNLINK_WAIT_S
        while self.ino is not None and _inode(self.path) == self.ino:
            if time.monotonic() >= deadline:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                return self.bound_via  # grpc may still unlink through it: close it last
            time.sleep(0.01)
        if self.bound_via is not None:
            os.close(self.bound_via)
        return None


class UidSockets:
    """The per-uid gRPC servers (see the module docstring). Thread-safe."""

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str],
        make_server: Callable[[int], grpc.Server],
        *,
        linger_s: float = 2.0,
    ) -> None:
        self._base = os.path.join(os.fspath(runtime_dir), UID_DIR)
        self._make_server = make_server
        self._linger_s = linger_s
        self._euid, self._egid = os.geteuid(), os.getegid()
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._uid_locks: dict[int, threading.Lock] = {}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        #: directory fds a retired server might still unlink through (closed at stop)
        self._late_fds: list[int] = []

    @property
    def base(self) -> str:
        return self._base

    def path_for(self, uid: int) -> str:
        return os.path.join(self._base, str(uid), GRPC_SOCKET_NAME)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Create ``uid/`` (mode 0711, ours) and start the reaper."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self._base, 0o711)
        fd = os.open(self._base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if st.st_uid != self._euid:
                raise FailedPrecondition(
                    f"{self._base} is owned by uid {st.st_uid}, not by the daemon's uid "
                    f"{self._euid}; refusing to serve per-uid sockets in it"
                )
            os.fchmod(fd, 0o711)
        finally:
            os.close(fd)
        self._reaper = threading.Thread(
            target=self._reap, name="dualbladed-uidsockets", daemon=True
        )
        self._reaper.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop every server (in-flight calls get ``grace`` seconds) and the reaper."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.server.stop(grace)  # all at once; each waits below
        late = [entry.stop(grace) for entry in entries]
        with self._lock:
            late += self._late_fds
            self._late_fds = []
        for fd in late:
            if fd is not None:
                os.close(fd)

    # ---- references ------------------------------------------------------------------------

    def acquire(self, uid: int) -> str:
        """``uid``'s socket path, its server serving; one reference more (see module doc)."""
        if self._stop.is_set():
            raise Unavailable("the daemon is shutting down")
        with self._uid_lock(uid):
            with self._lock:
                entry = self._entries.get(uid)
                if entry is not None:
                    entry.refs += 1
                    entry.idle_since = None
                    return entry.path
            entry = self._start_server(uid)
            with self._lock:
                stopped = self._stop.is_set()  # stop() took its snapshot: do not add to it
                if not stopped:
                    self._entries[uid] = entry
            if stopped:
                self._keep_late(entry.stop(None))
                raise Unavailable("the daemon is shutting down")
            path = entry.path
        logger.info("gRPC socket for uid %d serving on %s", uid, path)
        return path

    def release(self, uid: int) -> None:
        """One reference less; the server retires ``linger_s`` after its last one."""
        with self._lock:
            entry = self._entries.get(uid)
            if entry is None and self._stop.is_set():
                return  # stopped: every server is gone already
            if entry is None or entry.refs <= 0:
                logger.warning("release of uid %d's gRPC socket without a reference", uid)
                return
            entry.refs -= 1
            if entry.refs == 0:
                entry.idle_since = time.monotonic()

    def serving(self) -> dict[int, int]:
        """``{uid: references}`` of the running servers (for tests and metrics)."""
        with self._lock:
            return {uid: e.refs for uid, e in self._entries.items()}

    # ---- internals -------------------------------------------------------------------------

    def _keep_late(self, fd: int | None) -> None:
        if fd is not None:
            with self._lock:
                self._late_fds.append(fd)

    def _uid_lock(self, uid: int) -> threading.Lock:
        with self._lock:
            return self._uid_locks.setdefault(uid, threading.Lock())

    def _start_server(self, uid: int) -> _Entry:
        """Bind ``uid``'s server in its directory and let ``uid`` in (see the module doc)."""
        directory = os.path.join(self._base, str(uid))
        path = os.path.join(directory, GRPC_SOCKET_NAME)
        fd = self._open_dir(directory)
        try:
            st = os.fstat(fd)
            if st.st_uid != self._euid:
                if self._euid != 0:
                    raise FailedPrecondition(
                        f"{directory} is owned by uid {st.st_uid}, not by the daemon's uid "
                        f"{self._euid}; refusing to serve uid {uid}'s gRPC socket in it"
                    )
                os.fchown(fd, self._euid, self._egid)  # root: take it back while binding
            os.fchmod(fd, 0o700)  # also clears the mask of any ACL left from before
            let_in = uid not in (self._euid, 0)  # root and the daemon's own uid need no entry
            by_acl = let_in and acl.grant(fd, owner=acl.R | acl.W | acl.X, users={uid: acl.X})
            if let_in and not by_acl and self._euid != 0:
                raise PermissionDenied(
                    f"cannot let uid {uid} into {directory}: its filesystem has no POSIX ACLs "
                    "and the daemon does not run as root"
                )
            server = self._make_server(uid)
            bind_path, bound_via = reachable_path(path, GRPC_UNIX_PATH_MAX)
            try:  # grpc raises RuntimeError where older releases returned 0
                bound = server.add_insecure_port(f"unix://{bind_path}")
            except RuntimeError as exc:
                bound, why = 0, f": {exc}"
            else:
                why = ""
            if not bound:
                if bound_via is not None:
                    os.close(bound_via)
                raise Unavailable(f"could not bind the gRPC socket {path} for uid {uid}{why}")
            try:
                os.chmod(path, 0o600)  # the directory is writable by the daemon alone
                if by_acl:
                    acl.grant(path, owner=acl.R | acl.W, users={uid: acl.R | acl.W})
                elif let_in:  # root without ACLs: give the socket, then the directory, away
                    os.chown(path, uid, -1)
                server.start()
                if let_in and not by_acl:
                    os.fchown(fd, uid, -1)
            except BaseException:
                self._keep_late(_Entry(server, path, _inode(path), bound_via).stop(None))
                raise
        finally:
            os.close(fd)
        return _Entry(server, path, _inode(path), bound_via, refs=1)

    def _open_dir(self, directory: str) -> int:
        """An fd of ``directory`` (created 0700 if missing; anything but a directory replaced)."""
        for _attempt in range(2):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
            try:
                return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
            st = os.lstat(directory)  # a link or a file where our directory belongs: ours, stale
            if stat.S_ISDIR(st.st_mode):  # pragma: no cover - raced with ourselves
                continue
            os.unlink(directory)
        raise FailedPrecondition(f"cannot create the socket directory {directory}")

    def _reap(self) -> None:
        period = max(0.05, self._linger_s / 4)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                idle = [
                    uid
                    for uid, e in self._entries.items()
                    if e.refs == 0 and e.idle_since is not None
                    if now - e.idle_since >= self._linger_s
                ]
            for uid in idle:
                try:
                    self._retire(uid)
                except Exception:
                    logger.exception("retiring uid %d's gRPC socket failed", uid)

    def _retire(self, uid: int) -> None:
        with self._uid_lock(uid):
            with self._lock:
                entry = self._entries.get(uid)
                if entry is None or entry.refs > 0:
                    return  # reacquired meanwhile
                del self._entries[uid]
            self._keep_late(entry.stop(0.5))  # the socket file is gone on return
        logger.info("gRPC socket for uid %d retired", uid)
