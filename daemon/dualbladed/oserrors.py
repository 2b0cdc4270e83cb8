"""The one place that turns ``OSError`` from device and file I/O into the daemon's typed errors.

Every residency path and every namespace constructor catches ``OSError`` at the syscall and
re-raises ``from_oserror(exc, context=...)`` (``raise ... from exc`` keeps the original for
logs), or wraps a cold block of syscalls in ``with translated(context):``. Nothing above the
paths sees an ``OSError`` or looks at an errno: the table below classifies each errno once, so the
same condition reports the same type, and hence the same gRPC code (the one map in
:mod:`dualbladed.service.status`), whichever path or device it happened on. A full filesystem
under the page-cache slabs and a full thin device under the direct path are both
RESOURCE_EXHAUSTED; EIO is INTERNAL on both.

``context`` says what was being done ("read 1048576 bytes at offset 8192 of /dev/nvme0n1"), so
the message is useful without a traceback.

SQLite's own I/O failures (the metadata in the state directory) are classified here too, by
:func:`from_sqlite_error`: a full state filesystem is RESOURCE_EXHAUSTED, like ENOSPC on a path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator

from dualbladed.errors import (
    DeviceIOError,
    DualbladeError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)

__all__ = ["from_oserror", "from_sqlite_error", "translated"]

_DEVICE_GONE = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EREMOTEIO, errno.ENOMEDIUM}


def from_oserror(exc: OSError, *, context: str) -> DualbladeError:
    """Classify ``exc`` by errno; the returned error's message starts with ``context``."""
    code = exc.errno
    name = errno.errorcode.get(code, "?") if code is not None else "no errno"
    detail = f"{context}: {os.strerror(code) if code is not None else exc} ({name})"
    if code in _DEVICE_GONE:
        return DeviceIOError(detail)
    if code == errno.EINVAL:
        # With O_DIRECT: at open, a filesystem without O_DIRECT (old tmpfs); at I/O, the device's
        # real requirement (dma_alignment, logical block size) is stricter than configured,
        # since the engine validates alignment against the configured block size first.
        return InvalidArgument(
            f"{detail}; with O_DIRECT this means the filesystem does not support it (tmpfs "
            "before Linux 6.6: use ext4 or xfs), or the offset, length or buffer address is not "
            "a multiple of the device's logical block size"
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{detail}; the device or the filesystem under it is full")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(detail)
    if code == errno.EBUSY:
        return FailedPrecondition(f"{detail}; the device is busy")
    return DeviceIOError(detail)


@contextlib.contextmanager
def translated(context: str) -> Iterator[None]:
    """Re-raise any ``OSError`` from the block as :func:`from_oserror` of it (for cold paths)."""
    try:
        yield
    except OSError as exc:
        raise from_oserror(exc, context=context) from exc


# Primary result codes (the low byte of an extended code); named here because Python < 3.11
# exposes neither ``sqlite_errorcode`` nor the constants.
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26


def from_sqlite_error(exc: sqlite3.Error, *, context: str) -> DualbladeError | None:
    """Classify a SQLite failure of the metadata store, or None for a bug (bad SQL, misuse).

    The code comes from ``sqlite_errorcode`` (3.11+); on older Pythons the message, which SQLite
    fixes per code ("database or disk is full"), decides.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    text = str(exc)
    detail = f"{context}: {text}"
    if primary == _SQLITE_FULL or "database or disk is full" in text:
        return ResourceExhausted(f"{detail}; the state directory's filesystem is full")
    if primary == _SQLITE_IOERR or "disk I/O error" in text:
        return DeviceIOError(detail)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text:
        return DeviceIOError(f"{detail}; the metadata database is damaged (run dbctl fsck)")
    return None
