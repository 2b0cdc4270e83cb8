"""Who is on the other end of a Unix socket: ``SO_PEERCRED`` and a pidfd for the peer.

The kernel fills both in at ``connect()`` time, so neither can be forged by the message that
follows. ``SO_PEERPIDFD`` (Linux 6.5+) hands out a pidfd for that very process, race-free;
older kernels answer ENOPROTOOPT and :func:`peer_pidfd` falls back to ``pidfd_open(pid)``, which
could name a recycled pid if the client died within microseconds of connecting (the caller's
lease socket EOF covers that case).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct

__all__ = ["SO_PEERPIDFD", "peer_credentials", "peer_pidfd"]

logger = logging.getLogger(__name__)

#: ``SO_PEERPIDFD`` from <asm-generic/socket.h> (Linux 6.5+); Python 3.11 has no constant.
SO_PEERPIDFD = 77
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process that connected ``sock``. Raises OSError."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid, gid


def peer_pidfd(sock: socket.socket, pid: int) -> int | None:
    """A pidfd for the peer: SO_PEERPIDFD where the kernel has it, else pidfd_open(pid).

    Raises ProcessLookupError if the peer is already gone; None where no pidfd can be had (pid 0
    for a peer in another pid namespace, pidfds unsupported): the lease socket alone then counts.
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
        return struct.unpack("i", raw)[0]
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise ProcessLookupError(pid) from err
    if pid <= 0:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (OSError, AttributeError) as err:
        logger.debug("no pidfd for pid %d (%s); the lease socket alone tracks it", pid, err)
        return None
