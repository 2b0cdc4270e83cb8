"""The accept side of the handshake listener: binding it, how fast connections come in, who waits.

A connect flood must cost the daemon bounded CPU (and GIL) time, and an idle flood from one uid
must not lock out another uid's client. Three rules do that, kept here apart from the handshake
thread's fd bookkeeping (:mod:`dualbladed.sessions.handshake`) so that each can be read and tested
on its own:

* Rate. Accepts are rate-limited by a :class:`~dualbladed.ratelimit.TokenBucket`
  (``max_accepts_per_s``, bursts of a tenth of it; :func:`accept_bucket`). Beyond it the listener is taken out of the selector until a token is due, so the
  flood waits in the kernel's backlog instead of taking the daemon's CPU. Root and the admin group
  have their own, unlimited handshake socket (the admin lane, ``wire.ADMIN_DIR_NAME``), which the
  flood cannot reach. The bucket is pure (the caller passes the clock), so it is tested without
  sockets or sleeps.
* Out of fds. When accept() fails with EMFILE, ENFILE, ENOBUFS or ENOMEM, the listener is paused
  for :data:`EMFILE_PAUSE_S` (100 ms) instead of spinning on a listener that stays readable.
* Eviction. At most ``max_pending`` handshakes wait for their hello; when a newcomer would exceed
  that, :func:`eviction_victim` picks the oldest pending connection *of the uid with the most
  pending* (the newcomer counted), so a flood from one uid costs only that uid's connections.

Instance lock: :func:`bind_listener` replaces a stale socket file at the path (only a socket,
never a regular file). That is safe only because the caller already holds the daemon's instance
lock (``flock`` on the lock file); without it a second daemon would silently steal the socket of
a running one. For the same reason :func:`unlink_if_ours` removes the path only if it is still
the inode this listener bound.

Everything here runs on the handshake thread (:class:`Acceptor` registers and unregisters the
listener in that thread's selector, and never closes it: the handshake server owns the fd).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable, Collection
from typing import Protocol, TypeVar

from dualblade.v1.wire import reachable_path
from dualbladed.errors import FailedPrecondition
from dualbladed.ratelimit import TokenBucket

__all__ = [
    "ACCEPT_BATCH",
    "EMFILE_PAUSE_S",
    "LISTENER",
    "Acceptor",
    "accept_bucket",
    "bind_listener",
    "eviction_victim",
    "unlink_if_ours",
]

logger = logging.getLogger(__name__)

#: accepts per selector wake-up, so pending hellos and leases are served between batches
ACCEPT_BATCH = 64
#: how long accepts pause when the process (or system) is out of fds or buffers
EMFILE_PAUSE_S = 0.1
#: the listener's selector key data
LISTENER = "listener"

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def bind_listener(path: str, mode: int, gid: int | None) -> tuple[socket.socket, int]:
    """Bind and listen on a non-blocking SEQPACKET socket at ``path``: (listener, its inode).

    Replaces a stale socket file (hold the instance lock first); FailedPrecondition if ``path``
    is something else or the socket cannot be set up.
    """
    _remove_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        bind_path, via = reachable_path(path)  # a long path: via /proc/self/fd
        try:
            listener.bind(bind_path)
        finally:
            if via is not None:
                os.close(via)
        # Permissions before listen(): a connect() that slips in before chmod is refused.
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
        listener.listen(128)
        listener.setblocking(False)
        ino = os.stat(path).st_ino
    except OSError as err:
        listener.close()
        raise FailedPrecondition(f"cannot listen on {path}: {err}") from err
    return listener, ino


def unlink_if_ours(path: str, ino: int | None) -> None:
    """Remove the socket file at ``path`` unless another listener has replaced it since."""
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket; refusing to replace it")
    os.unlink(path)


def accept_bucket(max_accepts_per_s: float | None) -> TokenBucket:
    """The accept rate's bucket: bursts of a tenth of the rate (at least one accept); starts
    full; ``None`` means no limit."""
    burst = 1.0 if max_accepts_per_s is None else max(1.0, max_accepts_per_s / 10)
    return TokenBucket(max_accepts_per_s, burst)


class Acceptor:
    """Accepts on a non-blocking listener in batches, rate-limited, pausing when out of fds.

    Registers ``listener`` in ``selector`` (key data :data:`LISTENER`) and takes it out while
    paused; the handshake thread calls :meth:`accept_batch` when it is readable and
    :meth:`maybe_resume` on every loop iteration, and wakes by :attr:`paused_until` at the latest.
    """

    def __init__(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        max_accepts_per_s: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listener = listener
        self._selector = selector
        self._bucket = accept_bucket(max_accepts_per_s)
        self._clock = clock
        #: monotonic time at which accepts resume; 0.0 while not paused
        self.paused_until = 0.0
        selector.register(listener, selectors.EVENT_READ, LISTENER)

    def accept_batch(self, admit: Callable[[socket.socket], None]) -> None:
        """Accept up to :data:`ACCEPT_BATCH` connections and hand each to ``admit``.

        A failing ``admit`` costs only that connection (logged, socket closed).
        """
        for _ in range(ACCEPT_BATCH):
            wait = self._bucket.take(self._clock())
            if wait > 0:  # over the accept rate: the kernel's backlog holds the rest meanwhile
                self._pause(wait)
                return
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _OUT_OF_RESOURCES:
                    logger.warning("handshake accept failed (%s); pausing accepts for 100 ms", err)
                    self._pause(EMFILE_PAUSE_S)
                    return
                logger.warning("handshake accept failed: %s", err)
                continue
            try:
                admit(sock)
            except Exception:
                logger.exception("could not admit a handshake connection")
                sock.close()

    def maybe_resume(self) -> None:
        """Put the listener back in the selector once the pause is over."""
        if self.paused_until and self._clock() >= self.paused_until:
            self.paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ, LISTENER)

    def _pause(self, seconds: float) -> None:
        if not self.paused_until:
            self._selector.unregister(self._listener)
        self.paused_until = self._clock() + seconds


class _HasUid(Protocol):
    @property
    def uid(self) -> int: ...


_C = TypeVar("_C", bound=_HasUid)


def eviction_victim(pending: Collection[_C], newcomer_uid: int) -> _C:
    """The oldest of ``pending`` (oldest first, not empty) of the uid holding the most slots.

    The newcomer counts for its uid, so a uid flooding the queue evicts its own connections; ties
    go to the uid seen first (``Counter.most_common`` keeps insertion order), i.e. the uid of the
    oldest pending connection.
    """
    held = collections.Counter(c.uid for c in pending)
    held[newcomer_uid] += 1
    for uid, _count in held.most_common():
        for c in pending:  # oldest first
            if c.uid == uid:
                return c
    return next(iter(pending))  # pragma: no cover - the loop always finds one
