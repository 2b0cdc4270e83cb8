"""Loop devices for the namespace tests: the stand-in for an NVMe namespace on a machine without one.

``LoopDevices`` attaches small images under ``tmp_path`` with ``losetup -f --show --direct-io=on``
and undoes everything it did (swapoff, umount, detach) in reverse order, even when a test fails.
Tests that use it skip with a precise reason where loop devices are unavailable.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
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
