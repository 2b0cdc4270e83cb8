"""systemd readiness notification (sd_notify(3)) without libsystemd.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, a datagram socket path, or an abstract
address written with a leading ``@``. One datagram of newline-separated ``KEY=VALUE`` lines is the
whole protocol. Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op returning
False, so the daemon calls these unconditionally.

Order in the daemon: ``ready()`` after the gRPC and handshake sockets are bound and serving;
``stopping()`` on SIGTERM *before* the server drains; ``watchdog()`` every half of
:func:`watchdog_interval` when the unit sets ``WatchdogSec=``. A failed send is logged and
reported as False, never raised: readiness must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` to systemd; True if a notification socket exists and took it."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    elif addr[0] != "/":
        log.warning("ignoring NOTIFY_SOCKET that is neither a path nor abstract: %r", addr)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning("sd_notify to %r failed: %s", os.environ["NOTIFY_SOCKET"], err)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def ready(status: str | None = None) -> bool:
    """READY=1 (plus STATUS= when given): the daemon is serving."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def stopping(status: str | None = None) -> bool:
    """STOPPING=1: shutdown has begun (sent before draining RPCs)."""
    return notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def status(text: str) -> bool:
    """STATUS=: a one-line human status shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """WATCHDOG=1: keep-alive ping for ``WatchdogSec=``."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between required pings (half of ``WATCHDOG_USEC``), or None if not enabled.

    As sd_watchdog_enabled(3): ignored when ``WATCHDOG_PID`` names another process.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
