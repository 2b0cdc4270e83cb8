"""Early write-back on the page-cache path: ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` after a
large write, on real slab files under tmp_path.

What is checked: a write of at least ``writeback_bytes`` really starts the kernel's write-back
(on a small ext4 on a loop device, the device's own count of sectors written grows by the bytes
written, with no fsync; root only), small writes and a disabled path leave write-back to the
kernel, a failure to start it never fails the write, and it replaces no durability step (the
slab stays on the flush list until ``flush``). ``POSIX_FADV_DONTNEED`` cannot tell clean from
dirty here: it starts write-back itself before dropping pages.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from dualbladed.paths.libc import WritebackStarter
from dualbladed.paths.pagecache import PageCachePath
from loopdev_utils import LoopDevices, SmallExt4, small_fs_skip_reason
from wait_utils import wait_until

KiB = 1 << 10
MiB = 1 << 20


def _path(tmp_path: Path, writeback_bytes: int) -> PageCachePath:
    return PageCachePath(
        tmp_path / "pc",
        slab_bytes=4 * MiB,
        max_bytes=8 * MiB,
        resident_ttl_s=0.0,
        writeback_bytes=writeback_bytes,
    )


def test_a_large_write_starts_write_back_but_still_owes_the_flush(tmp_path: Path) -> None:
    p = _path(tmp_path, writeback_bytes=256 * KiB)
    try:
        data = os.urandom(1 * MiB)
        ext = p.allocate(len(data))
        p.write(ext, memoryview(data))
        assert p.writeback.starter is not None and p.writeback.starter.calls == 1
        # not a durability step: the slab still waits for flush()'s fdatasync
        assert p._dirty == {0}
        p.flush()
        assert p._dirty == set()
        out = bytearray(len(data))
        p.read(ext, memoryview(out))
        assert out == data
    finally:
        p.close()


def _sectors_written(dev: str) -> int:
    """Field 7 of /sys/block/<dev>/stat: 512-byte sectors the device has written."""
    return int(Path(f"/sys/block/{Path(dev).name}/stat").read_text().split()[6])


@pytest.mark.skipif(small_fs_skip_reason() is not None, reason=str(small_fs_skip_reason()))
def test_the_disk_sees_the_bytes_without_any_fsync(tmp_path: Path) -> None:
    loops = LoopDevices(tmp_path)
    try:
        fs = SmallExt4(loops, tmp_path)
        p = PageCachePath(
            fs.mount / "pc", slab_bytes=4 * MiB, max_bytes=8 * MiB, writeback_bytes=256 * KiB
        )
        try:
            data = os.urandom(2 * MiB)
            ext = p.allocate(len(data))
            before = _sectors_written(fs.dev)
            p.write(ext, memoryview(data))
            # the periodic flusher would wait 30 s (dirty_expire_centisecs) for these pages
            assert wait_until(lambda: _sectors_written(fs.dev) - before >= len(data) // 512)
        finally:
            p.close()
    finally:
        loops.cleanup()


def test_small_writes_and_a_disabled_path_leave_write_back_to_the_kernel(
    tmp_path: Path,
) -> None:
    p = _path(tmp_path / "a", writeback_bytes=256 * KiB)
    try:
        ext = p.allocate(64 * KiB)
        p.write(ext, memoryview(os.urandom(64 * KiB)))  # a decode step's append: below the bar
        assert p.writeback.starter is not None and p.writeback.starter.calls == 0
    finally:
        p.close()
    off = _path(tmp_path / "b", writeback_bytes=0)
    try:
        assert off.writeback.starter is None
        ext = off.allocate(1 * MiB)
        data = os.urandom(1 * MiB)
        off.write(ext, memoryview(data))
        out = bytearray(len(data))
        off.read(ext, memoryview(out))
        assert out == data
    finally:
        off.close()


class _FailingStarter(WritebackStarter):
    """A sync_file_range that fails (EIO cannot be provoked on tmp_path's filesystem here)."""

    def start(self, fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "injected")


def test_a_failed_write_back_start_never_fails_the_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = _path(tmp_path, writeback_bytes=256 * KiB)
    p.writeback.starter = _FailingStarter()
    try:
        with caplog.at_level(logging.WARNING, logger="dualbladed.paths.pagecache"):
            for _ in range(2):
                data = os.urandom(512 * KiB)
                ext = p.allocate(len(data))
                p.write(ext, memoryview(data))
                out = bytearray(len(data))
                p.read(ext, memoryview(out))
                assert out == data
        warnings = [r for r in caplog.records if "starting write-back" in r.getMessage()]
        assert len(warnings) == 1  # logged once, not per write
        assert p._dirty == {0}  # flush() still owes the fdatasync
    finally:
        p.close()


def test_without_sync_file_range_the_kernel_flusher_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A libc without the symbol (AttributeError from ctypes): no threshold, no call, no error."""
    from dualbladed.paths import writeback

    def missing() -> WritebackStarter:
        raise AttributeError("sync_file_range")

    monkeypatch.setattr(writeback, "WritebackStarter", missing)
    p = _path(tmp_path, writeback_bytes=256 * KiB)
    try:
        assert p.writeback_bytes == 0 and p.writeback.starter is None
        data = os.urandom(1 * MiB)
        ext = p.allocate(len(data))
        p.write(ext, memoryview(data))
        p.start_writeback(ext)  # a promotion's request: ignored, not raised
        assert p.writeback.starter is None and p._dirty == {0}
        out = bytearray(len(data))
        p.read(ext, memoryview(out))
        assert out == data
    finally:
        p.close()
