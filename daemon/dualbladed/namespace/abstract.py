"""The namespace: the one device the daemon owns, addressed by byte offsets that are LBA multiples.

Primitives (every implementation provides all of them):

- ``kind``            "file" | "loop" | "nvme".
- ``path``            what was opened.
- ``block_size``      logical block size; every offset, length and buffer address is a multiple.
- ``capacity``        usable bytes of the whole device (a multiple of ``block_size``).
- ``preadv(bufs, offset) -> int``   O_DIRECT read into page-aligned writable memoryviews.
- ``pwritev(bufs, offset) -> int``  O_DIRECT write from page-aligned memoryviews.
- ``flush()``         make completed writes durable (fdatasync: O_DIRECT skips the page cache,
                      not the device's volatile write cache).
- ``discard(offset, length)``  optional hint that a range is free (TRIM); no-op by default.
- ``close()``         release the fd (and the O_EXCL claim for block devices).

``preadv``/``pwritev`` are the only I/O entry points, so a fault-injecting wrapper
(:class:`dualbladed.namespace.faulty.FaultyNamespace`) sees every byte that reaches the medium.
They do not validate alignment themselves: the I/O engine does, once, with a typed error.

The first :data:`METADATA_AREA` bytes hold the two superblock copies and are never handed to the
allocator.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence

#: Bytes reserved at the start of every namespace for superblock copies A and B.
METADATA_AREA = 1 << 20


class Namespace(abc.ABC):
    kind: str
    path: str
    block_size: int
    capacity: int

    @abc.abstractmethod
    def preadv(self, bufs: Sequence[memoryview], offset: int) -> int: ...

    @abc.abstractmethod
    def pwritev(self, bufs: Sequence[memoryview], offset: int) -> int: ...

    @abc.abstractmethod
    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None:  # noqa: B027 - optional hook
        """Hint that ``[offset, offset+length)`` holds no live data. Default: nothing."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    def data_start(self) -> int:
        """First byte the allocator may hand out."""
        return METADATA_AREA

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FdNamespace(Namespace):
    """A namespace that is one O_DIRECT file descriptor (``self._fd``, -1 once closed).

    Files and block devices differ in how they are opened and claimed (flock vs O_EXCL), sized
    and trimmed; reading, writing, flushing and closing are the same syscalls on the fd.
    ``flush`` is fdatasync: O_DIRECT bypasses the page cache, not the drive's volatile write
    cache, and fdatasync on a block device issues the FLUSH command.
    """

    _fd: int = -1

    def preadv(self, bufs: Sequence[memoryview], offset: int) -> int:
        return os.preadv(self._fd, bufs, offset)

    def pwritev(self, bufs: Sequence[memoryview], offset: int) -> int:
        return os.pwritev(self._fd, bufs, offset)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # also drops an flock or O_EXCL claim held through it

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        return self._fd
