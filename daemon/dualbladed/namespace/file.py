"""A regular file as the namespace: the embedded default, usable without privileges.

The file is sized once, up front, with ``posix_fallocate`` so that its blocks exist before the
first KV write: an O_DIRECT write into a hole makes the filesystem allocate under the write
(slower, and it can fail with ENOSPC long after start-up). It is opened
``O_RDWR | O_DIRECT | O_CLOEXEC``; every offset, length and buffer address must then be a multiple
of :data:`BLOCK_SIZE` (4096 works on every filesystem that supports O_DIRECT, including 4Kn
devices underneath). A filesystem without O_DIRECT (tmpfs before Linux 6.6) fails the open
with EINVAL, which the one errno map reports as ``InvalidArgument`` naming the cause.

Size rules: a new file needs an explicit ``size`` that is a multiple of 4096 and holds at least
the metadata area plus 1 MiB of data. An existing file keeps its size; a larger requested size
grows it (logged), a smaller one is refused, because the tail may hold live extents.

Two daemons on one file would corrupt each other as surely as two on one block device, so the
file is claimed with a non-blocking ``flock`` for as long as it is open (the analogue of O_EXCL
on a block device); a second opener gets :class:`~dualbladed.errors.DeviceBusy`.

``discard`` stays the inherited no-op: punching holes would undo the up-front allocation and bring
ENOSPC back into the write path.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat

from dualbladed.errors import DeviceBusy, InvalidArgument
from dualbladed.namespace.abstract import METADATA_AREA, FdNamespace
from dualbladed.oserrors import translated

logger = logging.getLogger(__name__)

#: Logical block size of every file namespace.
BLOCK_SIZE = 4096
#: Smallest namespace file: the superblock area plus 1 MiB of data.
MIN_SIZE = METADATA_AREA + (1 << 20)

_OPEN_FLAGS = os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC


def _check_size(path: str, size: int, what: str) -> None:
    if size % BLOCK_SIZE or size < MIN_SIZE:
        raise InvalidArgument(
            f"{what} of namespace file {path} is {size} bytes; it must be a multiple of "
            f"{BLOCK_SIZE} and at least {MIN_SIZE} (metadata area {METADATA_AREA} + 1 MiB data)"
        )


def _open_direct(path: str, flags: int) -> int:
    with translated(f"opening namespace file {path} with O_DIRECT"):
        return os.open(path, flags, 0o600)


def _fallocate(fd: int, path: str, offset: int, length: int) -> None:
    with translated(f"allocating {length} bytes at offset {offset} of namespace file {path}"):
        os.posix_fallocate(fd, offset, length)


class FileNamespace(FdNamespace):
    """A preallocated regular file opened with O_DIRECT.

    Args:
        path: the namespace file.
        size: bytes wanted; required when the file does not exist yet. For an existing file,
            ``None`` keeps its size, a larger value grows it, a smaller one is refused.
        create: create the file when it is missing (else refuse).

    Raises:
        InvalidArgument: bad size, a missing file without ``size`` (or with ``create=False``),
            a path that is not a regular file, or a filesystem without O_DIRECT.
        DeviceBusy: another process holds the file open as a namespace.
        ResourceExhausted: the filesystem has no room for the requested size.
        DualbladeError: any other failed syscall, classified by :mod:`dualbladed.oserrors`.
    """

    kind = "file"
    block_size = BLOCK_SIZE

    def __init__(
        self, path: str | os.PathLike[str], size: int | None = None, *, create: bool = True
    ) -> None:
        self.path = os.fspath(path)
        if size is not None:
            _check_size(self.path, size, "requested size")
        self._fd = -1
        # Every OSError below becomes a typed error through the one errno map; the syscalls
        # that matter (open, fallocate) name themselves more precisely inside.
        with translated(f"opening namespace file {self.path}"):
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is None:
                self._create(size, create)
            else:
                if not stat.S_ISREG(st.st_mode):
                    raise InvalidArgument(
                        f"{self.path} is not a regular file; block devices open as BlockNamespace"
                    )
                self._open_existing(size)

    def _create(self, size: int | None, create: bool) -> None:
        if not create:
            raise InvalidArgument(f"namespace file {self.path} does not exist and create=False")
        if size is None:
            raise InvalidArgument(
                f"namespace file {self.path} does not exist; give a size to create it "
                f"(a multiple of {BLOCK_SIZE}, at least {MIN_SIZE} bytes)"
            )
        # O_EXCL: if another process creates the file between our stat and here, we fail
        # loudly instead of sizing a file someone else is setting up.
        fd = _open_direct(self.path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL)
        try:
            self._claim(fd)
            _fallocate(fd, self.path, 0, size)
            os.fsync(fd)
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        self._fd = fd
        self.capacity = size
        logger.info("created namespace file %s (%d bytes)", self.path, size)

    def _open_existing(self, size: int | None) -> None:
        fd = _open_direct(self.path, _OPEN_FLAGS)
        try:
            self._claim(fd)
            current = os.fstat(fd).st_size
            _check_size(self.path, current, "existing size")
            if size is not None and size < current:
                raise InvalidArgument(
                    f"namespace file {self.path} is {current} bytes; refusing to shrink it to "
                    f"{size} (the tail may hold live extents)"
                )
            if size is not None and size > current:
                _fallocate(fd, self.path, current, size - current)
                os.fsync(fd)
                logger.warning(
                    "grew namespace file %s from %d to %d bytes", self.path, current, size
                )
                current = size
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.capacity = current

    def _claim(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise DeviceBusy(
                self.path, ["another process holds this namespace file open (flock)"]
            ) from err

    def __repr__(self) -> str:
        return f"FileNamespace({self.path!r}, capacity={self.capacity})"


def _fsync_dir(path: str) -> None:
    """Make a new directory entry durable (the file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
