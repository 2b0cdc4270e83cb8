"""The kernel calls the page-cache path makes through libc: ``mincore(2)``, ``fallocate(2)``
with ``FALLOC_FL_PUNCH_HOLE`` and ``sync_file_range(2)`` (not in Python's :mod:`os`).

Why a module of their own: both need ctypes (Python's :class:`mmap.mmap` does not expose the
address of a read-only mapping, and ``os.posix_fallocate`` cannot pass a mode), both bind libc
symbols that may be missing on an exotic platform, and neither knows anything about slabs,
extents or locking. Kept apart from :mod:`dualbladed.paths.pagecache`, the slab logic there
reads as slab logic and the foreign-function declarations can be reviewed (argtypes, errno
handling) in one place. The page-cache path builds each once; a constructor raising
``OSError`` or ``AttributeError`` (no libc, no symbol) makes the path fall back: residency
estimated from allocation, freed space left allocated in the slab files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os

__all__ = ["HolePuncher", "Mincore", "WritebackStarter"]

log = logging.getLogger("dualbladed.paths.pagecache")  # the messages are the path's own

#: byte -> 1 if the page is resident (bit 0 of the mincore vector), else 0.
_RESIDENT_BIT = bytes(b & 1 for b in range(256))

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_SYNC_FILE_RANGE_WRITE = 0x02  # <linux/fs.h>: start write-out of dirty pages, do not wait


class Mincore:
    """``mincore(2)`` over a read-only shared mapping made with libc's own mmap.

    Python's :class:`mmap.mmap` does not expose its address for a read-only map, so the mapping
    is made through ctypes; it is never dereferenced, so no page is faulted in.
    """

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._mmap = libc.mmap
        self._mmap.restype = ctypes.c_void_p
        self._mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self._munmap = libc.munmap
        self._munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._mincore = libc.mincore
        self._mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        self.page = mmap.PAGESIZE

    def resident(self, fd: int, length: int) -> int:
        """Bytes of ``fd``'s first ``length`` bytes that are in the page cache."""
        if length <= 0:
            return 0
        addr = self._mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap for mincore: {os.strerror(err)}")
        try:
            pages = (length + self.page - 1) // self.page
            vec = ctypes.create_string_buffer(pages)
            if self._mincore(addr, length, vec) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mincore: {os.strerror(err)}")
            return vec.raw[:pages].translate(_RESIDENT_BIT).count(1) * self.page
        finally:
            self._munmap(addr, length)


class HolePuncher:
    """``fallocate(fd, PUNCH_HOLE | KEEP_SIZE, offset, length)`` through libc (see the module
    docstring for why ctypes); ``supported`` turns False after the first EOPNOTSUPP."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._fallocate = libc.fallocate
        self._fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        self.supported = True

    def punch(self, fd: int, offset: int, length: int) -> None:
        if not self.supported or length <= 0:
            return
        if self._fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length):
            err = ctypes.get_errno()
            if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                self.supported = False
                log.warning(
                    "page-cache slabs: this filesystem cannot punch holes; freed space "
                    "stays allocated in the slab files"
                )
                return
            raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")


class WritebackStarter:
    """``sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)`` through libc: start
    writing the range's dirty pages to the disk and return without waiting for the I/O.

    Not a durability call (no metadata, no drive cache flush, no wait): see
    :mod:`dualbladed.paths.writeback`. ``calls`` counts the successful calls (tests and
    stats read it).
    """

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._sync_file_range = libc.sync_file_range
        self._sync_file_range.argtypes = [
            ctypes.c_int,
            ctypes.c_longlong,
            ctypes.c_longlong,
            ctypes.c_uint,
        ]
        self.calls = 0

    def start(self, fd: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        if self._sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE):
            err = ctypes.get_errno()
            raise OSError(err, f"sync_file_range(WRITE): {os.strerror(err)}")
        self.calls += 1
