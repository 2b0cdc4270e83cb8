"""The one place that turns ``OSError`` from device I/O into the daemon's typed errors.

Device code catches ``OSError`` at the syscall and re-raises ``from_oserror(exc, context=...)``
(``raise ... from exc`` keeps the original for logs). Keeping the errno table here means a new
errno is classified once, and every caller reports it the same way to clients.

``context`` says what was being done ("read 1048576 bytes at offset 8192 of /dev/nvme0n1"), so
the message is useful without a traceback.
"""

from __future__ import annotations

import errno
import os

from dualbladed.errors import (
    DeviceIOError,
    DualbladeError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)

__all__ = ["from_oserror"]

_DEVICE_GONE = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EREMOTEIO, errno.ENOMEDIUM}


def from_oserror(exc: OSError, *, context: str) -> DualbladeError:
    """Classify ``exc`` by errno; the returned error's message starts with ``context``."""
    code = exc.errno
    name = errno.errorcode.get(code, "?") if code is not None else "no errno"
    detail = f"{context}: {os.strerror(code) if code is not None else exc} ({name})"
    if code in _DEVICE_GONE:
        return DeviceIOError(detail)
    if code == errno.EINVAL:
        # Almost always O_DIRECT alignment: the engine validates, so this means the device's
        # real requirement (dma_alignment, logical block size) is stricter than configured.
        return InvalidArgument(
            f"{detail}; with O_DIRECT this usually means the offset, length or buffer address "
            "is not a multiple of the device's logical block size"
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{detail}; the device or the filesystem under it is full")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(detail)
    if code == errno.EBUSY:
        return FailedPrecondition(f"{detail}; the device is busy")
    return DeviceIOError(detail)
