"""A whole block device as the namespace: an NVMe namespace (``nvme``) or a loop device (``loop``).

Opening order, and why:

1. :func:`~dualbladed.namespace.safety.check_device` refuses devices that are mounted,
   partitioned, held, used as swap or carry a foreign signature (``force`` overrides only the
   signature). Every reason is reported at once in :class:`~dualbladed.errors.DeviceRefused`.
2. ``open(O_RDWR | O_DIRECT | O_EXCL | O_CLOEXEC)``. On a block device O_EXCL is an exclusive
   claim: the kernel answers EBUSY while anyone else mounts or claims it, and refuses later
   mounts while we hold the fd. The fd is kept for the daemon's lifetime; closing it releases
   the claim. EBUSY becomes :class:`~dualbladed.errors.DeviceBusy`.
3. Geometry comes from the ioctls on that fd (BLKGETSIZE64 for bytes, BLKSSZGET for the logical
   block size), not from sysfs, so it describes exactly the device we hold.

Only NVMe namespaces (``nvmeXnY``, block major 259) and loop devices (major 7) are accepted;
other disks (SATA, virtio, dm) are refused because the design has not been validated on them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import struct

from dualbladed.errors import DeviceBusy, DeviceRefused, InvalidArgument
from dualbladed.namespace.abstract import METADATA_AREA, FdNamespace
from dualbladed.namespace.safety import check_device

logger = logging.getLogger(__name__)

# <linux/fs.h> ioctl numbers (_IOR(0x12, 114, u64), _IO(0x12, 104), _IO(0x12, 119)); checked on
# a 4Kn loop device (losetup --sector-size 4096): the size, 4096, and a TRIM that took.
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKDISCARD = 0x1277

LOOP_MAJOR = 7
_NVME_NAME = re.compile(r"^nvme\d+n\d+$")
_OPEN_FLAGS = os.O_RDWR | os.O_DIRECT | os.O_EXCL | os.O_CLOEXEC


def device_kind(path: str) -> str | None:
    """``"nvme"`` or ``"loop"`` for the device node ``path``; None for anything else."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return None
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if major == LOOP_MAJOR:
        return "loop"
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{major}:{minor}"))
    if _NVME_NAME.match(name):
        return "nvme"
    return None


class BlockNamespace(FdNamespace):
    """An exclusively claimed NVMe namespace or loop device.

    Args:
        path: the device node (``/dev/nvme0n1``, ``/dev/loop3``, or a by-id symlink).
        force: accept a device carrying a foreign filesystem or partition-table signature.

    Raises:
        InvalidArgument: not a block device, not NVMe or loop, or too small.
        DeviceRefused: the safety check failed; ``reasons`` lists every problem.
        DeviceBusy: another holder has the device (O_EXCL open got EBUSY).
    """

    def __init__(self, path: str | os.PathLike[str], *, force: bool = False) -> None:
        self.path = os.fspath(path)
        try:
            kind = device_kind(self.path)
        except OSError as err:
            raise InvalidArgument(f"cannot use {self.path}: {err.strerror}") from err
        if kind is None:
            raise InvalidArgument(
                f"{self.path} is not an NVMe namespace or loop device; "
                "use a regular file for anything else"
            )
        self.kind = kind

        verdict = check_device(self.path, force=force)
        if not verdict.ok:
            logger.error("refusing %s: %s", self.path, "; ".join(verdict.reasons))
            raise DeviceRefused(self.path, list(verdict.reasons))

        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise DeviceBusy(
                    self.path,
                    [
                        "busy: another holder has it (mounted, claimed by device-mapper/md/swap, "
                        "or opened exclusively by another process)"
                    ],
                ) from err
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise DeviceRefused(self.path, [f"cannot open read-write: {err.strerror}"]) from err
            raise
        try:
            size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0]
            lbs = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, bytes(4)))[0]
            capacity = size - size % lbs
            if capacity < METADATA_AREA + (1 << 20):
                raise InvalidArgument(
                    f"{self.path} has {size} bytes; a namespace needs at least "
                    f"{METADATA_AREA + (1 << 20)} (metadata area + 1 MiB)"
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.block_size = lbs
        self.capacity = capacity
        self.verdict = verdict
        logger.info(
            "claimed %s %s: %d bytes, logical block size %d%s",
            kind,
            self.path,
            capacity,
            lbs,
            " (existing dualblade superblock)" if verdict.ours else "",
        )

    # -- I/O --------------------------------------------------------------------------------

    def discard(self, offset: int, length: int) -> None:
        """TRIM ``[offset, offset+length)``; silently skipped where the device cannot."""
        if length <= 0:
            return
        try:
            fcntl.ioctl(self._fd, BLKDISCARD, struct.pack("QQ", offset, length))
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                logger.debug("%s does not support discard", self.path)
                return
            raise

    def __repr__(self) -> str:
        return (
            f"BlockNamespace({self.path!r}, kind={self.kind!r}, capacity={self.capacity}, "
            f"block_size={self.block_size})"
        )
