"""Loop devices for the namespace tests: the stand-in for an NVMe namespace on a machine without one.

``LoopDevices`` attaches small images under ``tmp_path`` with ``losetup -f --show --direct-io=on``
and undoes everything it did (swapoff, umount, detach) in reverse order, even when a test fails.
Tests that use it skip with a precise reason where loop devices are unavailable.

``SmallExt4`` is a real filesystem of a few MiB on a loop device, for the error-contract tests:
``fill()`` makes it return ENOSPC, ``cut_under(files)`` makes reads and write-back of those files'
blocks fail with EIO (the device is shrunk below them, so the block layer fails the bios: real
kernel errors, no mock). This machine has neither device-mapper nor fault injection, which would
be the usual tools. It lives at the top of ``tests/``, which pytest puts on ``sys.path`` for
every test folder (``tests/conftest.py`` has no package around it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

IMAGE_BYTES = 64 << 20


def loop_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for losetup"
    if shutil.which("losetup") is None:
        return "needs losetup (util-linux)"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control (loop driver not available)"
    return None


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


class LoopDevices:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._undo: list[list[str]] = []
        self._count = 0

    def attach(
        self, *, sector_size: int | None = None, partscan: bool = False, image: Path | None = None
    ) -> str:
        if image is None:
            self._count += 1
            image = self.tmp_path / f"loop{self._count}.img"
            with open(image, "wb") as f:
                f.truncate(IMAGE_BYTES)
        argv = ["losetup", "-f", "--show", "--direct-io=on"]
        if sector_size is not None:
            argv += ["--sector-size", str(sector_size)]
        if partscan:
            argv.append("-P")
        try:
            dev = run(*argv, str(image))
        except RuntimeError as err:
            pytest.skip(f"cannot attach a loop device here: {err}")
        self._undo.append(["losetup", "-d", dev])
        return dev

    def mount(self, dev: str, mount_point: Path) -> None:
        mount_point.mkdir(parents=True, exist_ok=True)
        run("mount", dev, str(mount_point))
        self._undo.append(["umount", str(mount_point)])

    def swapon(self, dev: str) -> None:
        run("mkswap", dev)
        try:
            run("swapon", dev)
        except RuntimeError as err:
            pytest.skip(f"swapon is not permitted here: {err}")
        self._undo.append(["swapoff", dev])

    def cleanup(self) -> None:
        while self._undo:
            subprocess.run(self._undo.pop(), capture_output=True, check=False)


def small_fs_skip_reason() -> str | None:
    reason = loop_skip_reason()
    if reason is None and shutil.which("mkfs.ext4") is None:
        reason = "needs mkfs.ext4 (e2fsprogs)"
    return reason


class SmallExt4:
    """An ext4 of ``size`` bytes (4 KiB blocks) on a loop device, mounted at ``mount``."""

    def __init__(self, loops: LoopDevices, tmp_path: Path, size: int = 24 << 20) -> None:
        self.image = tmp_path / "small-ext4.img"
        with open(self.image, "wb") as f:
            f.truncate(size)
        self.dev = loops.attach(image=self.image)
        run("mkfs.ext4", "-q", "-F", "-b", "4096", self.dev)
        self.mount = tmp_path / "small-ext4"
        loops.mount(self.dev, self.mount)

    def fill(self) -> int:
        """Write a filler file until ENOSPC (root may use the reserved blocks too); its size."""
        written = 0
        fd = os.open(self.mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 64 << 10, 4 << 10):
                data = bytes(chunk)
                while True:
                    try:
                        written += os.write(fd, data)
                    except OSError as err:
                        if err.errno != errno.ENOSPC:
                            raise
                        break
            os.fsync(fd)
        finally:
            os.close(fd)
        return written

    def cut_under(self, files: Iterable[Path]) -> None:
        """Shrink the device to end below every block of ``files``: their I/O then fails (EIO)."""
        first = min(block for f in files for block in physical_offsets(f))
        first -= first % 4096
        os.truncate(self.image, first)
        run("losetup", "-c", self.dev)


_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 1
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")


def physical_offsets(path: Path, max_extents: int = 256) -> list[int]:
    """Byte offsets on the device of each extent of ``path`` (FIEMAP, after syncing the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        req = bytearray(_FIEMAP_HEAD.size + _FIEMAP_EXTENT.size * max_extents)
        _FIEMAP_HEAD.pack_into(req, 0, 0, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0, max_extents, 0)
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, req)
    finally:
        os.close(fd)
    mapped = _FIEMAP_HEAD.unpack_from(req, 0)[3]
    return [
        _FIEMAP_EXTENT.unpack_from(req, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)[1]
        for i in range(mapped)
    ]


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give ``[offset, offset+length)`` of a file back to its filesystem (size unchanged)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"punching a hole: {os.strerror(err)}")


def write_dos_partition_table(dev: str) -> None:
    """One Linux partition (type 0x83) at LBA 2048: what sfdisk/parted would write, by hand
    because neither is installed here."""
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, bytes(3), 0x83, bytes(3), 2048, 16384)
    mbr[510:512] = b"\x55\xaa"
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(mbr), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def zero_fill(dev: str, length: int, offset: int = 0) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(length), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
