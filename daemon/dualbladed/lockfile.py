"""Single-instance locks: one daemon per socket, one daemon per namespace.

Why: gRPC unlinks an existing Unix socket file and binds again *without an error* (the socket's
inode changes even while another server listens on it), so a second ``dualbladed`` would silently steal the first one's socket, and two daemons on
two sockets must never write one namespace. :func:`acquire_instance_locks` therefore takes two
``flock(LOCK_EX | LOCK_NB)`` locks **before any socket is bound or the namespace is opened**:

1. the instance lock, ``config.lock_path`` (default ``dualbladed.lock`` next to the gRPC socket);
2. the namespace lock, from :func:`namespace_lock_path`:

   * a block device is keyed by its device number (``st_rdev``), so ``/dev/nvme0n1`` and any
     ``/dev/disk/by-id/...`` alias collide: ``<default runtime dir>/blockdev-<major>-<minor>.lock``
     (``/run/dualblade`` for root). The kernel's ``O_EXCL`` claim that the namespace layer takes
     on open remains the system-wide guard; this lock adds the clear message;
   * a file is keyed by its resolved path, with the lock file beside it (``<file>.lock``), so every
     daemon that names the file through any symlink, whatever its socket or user, meets the same
     lock. (Hard links and bind-mount aliases of one file are not detected.)

Lock order is always instance, then namespace; both are non-blocking, so no wait cycle exists.

File format: the holder truncates the file and writes ``<pid>\\nsocket=<path>\\nnamespace=<path>\\n``
after it owns the lock, so a loser can say who holds it; a reader that races the holder's write
reports "pid unknown". Lock files are never unlinked: unlinking a locked file lets a process that
opened the old inode and a process that creates a new one both "win". ``flock`` locks die with
their process, so a crashed daemon never leaves a stale lock, only a stale pid in the file, which
is overwritten by the next holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from types import TracebackType

from dualbladed.config import DaemonConfig, default_dirs
from dualbladed.errors import FailedPrecondition

log = logging.getLogger(__name__)


class InstanceLock:
    """An exclusive, non-blocking ``flock`` on ``path`` that records its holder.

    Use as a context manager or with :meth:`acquire`/:meth:`release`. A second holder (in any
    process) gets :class:`FailedPrecondition` naming the first holder's pid, socket and namespace.
    """

    def __init__(self, path: str, *, socket: str = "", namespace: str = "") -> None:
        self.path = path
        self.socket = socket
        self.namespace = namespace
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise FailedPrecondition(f"lock file {self.path} is already held by this object")
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o750, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        except OSError as err:
            raise FailedPrecondition(f"cannot open lock file {self.path}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise FailedPrecondition(f"cannot lock {self.path}: {err.strerror}") from err
            raise FailedPrecondition(
                f"dualbladed is already running {holder}; lock file {self.path}"
            ) from None
        record = f"{os.getpid()}\nsocket={self.socket}\nnamespace={self.namespace}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        log.debug("took lock %s", self.path)

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays; its pid record is cleared."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """``(pid N) for socket S / namespace N`` from the holder's record, as far as it was written."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        text = ""
    first, _, rest = text.partition("\n")
    fields = dict(line.partition("=")[::2] for line in rest.splitlines() if "=" in line)
    pid = first if first.isdigit() else "unknown"
    return (
        f"(pid {pid}) for socket {fields.get('socket') or '?'} "
        f"/ namespace {fields.get('namespace') or '?'}"
    )


def namespace_lock_path(namespace: str, runtime_dir: str | None = None) -> str:
    """The lock file guarding ``namespace`` (see the module docstring for the keying)."""
    resolved = os.path.realpath(namespace)
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        directory = runtime_dir if runtime_dir is not None else default_dirs()[1]
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        return os.path.join(directory, f"blockdev-{major}-{minor}.lock")
    return resolved + ".lock"


def acquire_instance_locks(
    config: DaemonConfig, runtime_dir: str | None = None
) -> contextlib.ExitStack:
    """Take the instance lock, then the namespace lock; return a stack that releases both.

    Call before binding any socket or opening the namespace, and keep the stack open for the
    daemon's lifetime (``with acquire_instance_locks(cfg): serve()``). On failure nothing stays
    held and :class:`FailedPrecondition` says which daemon holds what. ``runtime_dir`` overrides
    where block-device locks live (tests).
    """
    ns = os.path.realpath(config.namespace.path)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(InstanceLock(config.lock_path, socket=config.socket, namespace=ns))
        ns_lock = namespace_lock_path(config.namespace.path, runtime_dir)
        stack.enter_context(InstanceLock(ns_lock, socket=config.socket, namespace=ns))
    except BaseException:
        stack.close()
        raise
    return stack
