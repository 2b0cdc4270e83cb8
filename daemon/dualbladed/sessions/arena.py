"""A session's shared-memory arena: a sealed memfd mapped MAP_SHARED by the daemon and the client.

Why a memfd: it has no name that could leak in /dev/shm when a process crashes, its memory lives
exactly as long as some fd or mapping refers to it, and the fd travels to the client with
SCM_RIGHTS over the handshake socket (see :mod:`dualbladed.sessions.handshake`). KV bytes move
between the namespace and page-aligned slices of this mapping with O_DIRECT preadv/pwritev, so the
data plane makes no CPU copy.

Why the seals: ``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`` freeze the size for good. Without
``F_SEAL_SHRINK`` a client could ftruncate the memfd to zero while the daemon is reading into it
and the daemon would take SIGBUS on the next touch of the vanished pages, killing every tenant.
``F_SEAL_SEAL`` stops anyone from removing or adding seals later. Writes stay allowed: that is the
point of a shared arena.

No prefault: an arena costs nothing until the client touches it. ``create`` only sizes the
memfd (sparse) and maps it; each page is committed by the first write to it, from either side,
and charged to the memory cgroup of the process that faults it in -- normally the client, which
fills its arena before the daemon reads from it. Prefaulting every page up front
(``MADV_POPULATE_WRITE``) made each hello cost its full arena size in the daemon's memory and
seconds of the handshake thread (issue 15: three 4 GiB hellos took 12 GiB and 8-12 s each), so
the daemon never asks for it; ``prefault=True`` remains for a caller that wants it off any
shared thread. What an arena *may* cost is bounded at admission instead
(:mod:`dualbladed.sessions.admission`). Older kernels answer EINVAL to the advice and the pages
fault in lazily.

Closing and exported buffers: unmapping memory that something can still reach is a
use-after-free (a segfault, or a DMA into whatever gets mapped there next). Every view
:meth:`Arena.view` hands out is a slice of one memoryview of the mapping, and a live slice keeps
the mapping exported, so ``mmap.close()`` raises ``BufferError``. ``close()`` therefore closes the
memfd at once, releases only its own base view and tries to unmap; if a view is still alive (an
in-flight ``preadv`` into it, a caller that kept it) it drops its reference to the mapping
instead, and CPython unmaps when the last view is garbage-collected ("lazy close"). Views are
deliberately *not* force-released: ``torch.frombuffer`` keeps a reference to the view object but
no buffer export, so releasing the view and unmapping would leave such a tensor pointing at
unmapped memory. The price is that a view kept forever keeps its arena's pages alive. Callers must
not ``release()`` a view that backs a tensor still in use. ``close()`` never raises.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import threading

from dualblade.v1.wire import ALIGNMENT, close_mapping
from dualbladed.errors import FailedPrecondition, InvalidArgument, Misaligned, OutOfRange

__all__ = ["ALIGNMENT", "MADV_POPULATE_WRITE", "SEALS", "Arena"]

logger = logging.getLogger(__name__)

#: ``MADV_POPULATE_WRITE`` from <linux/mman.h>; Python 3.11 has no constant for it.
MADV_POPULATE_WRITE: int = getattr(mmap, "MADV_POPULATE_WRITE", 23)

#: The seals every arena carries: size frozen, seal set frozen.
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class Arena:
    """One sealed, MAP_SHARED memfd of a fixed size. Thread-safe.

    Use :meth:`create`; the constructor is private to it.
    """

    def __init__(self, fd: int, size: int, mapping: mmap.mmap) -> None:
        self._fd = fd
        self._size = size
        self._mmap: mmap.mmap | None = mapping
        self._base: memoryview | None = memoryview(mapping)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def create(cls, size: int, *, name: str = "dualbladed-arena", prefault: bool = False) -> Arena:
        """Create, size, seal and map a new arena of ``size`` bytes (a positive multiple of 4096).

        Raises InvalidArgument for a bad size and OSError (ENOMEM, EMFILE, ...) from the kernel.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"arena size must be a positive integer, got {size!r}")
        if size % ALIGNMENT:
            raise Misaligned("arena size", size, ALIGNMENT)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        if prefault:
            _prefault(mapping, size)
        return cls(fd, size, mapping)

    @property
    def fd(self) -> int:
        """The memfd (close-on-exec). Owned by the arena: send it, never close it."""
        if self._closed:
            raise FailedPrecondition("arena is closed")
        return self._fd

    @property
    def size(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def view(self, offset: int, length: int) -> memoryview:
        """A writable view of ``[offset, offset + length)``.

        ``offset`` must be a multiple of :data:`ALIGNMENT` (Misaligned); the range must lie inside
        the arena (OutOfRange). ``length`` need not be aligned: callers doing O_DIRECT check the
        length against the namespace's block size themselves.
        """
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise InvalidArgument(f"arena offset must be an integer, got {offset!r}")
        if isinstance(length, bool) or not isinstance(length, int):
            raise InvalidArgument(f"arena length must be an integer, got {length!r}")
        if offset % ALIGNMENT:
            what = f"arena offset (view of {length} bytes in a {self._size}-byte arena)"
            raise Misaligned(what, offset, ALIGNMENT)
        if offset < 0 or length < 0 or offset + length > self._size:
            raise OutOfRange(
                f"arena range offset={offset} length={length} is outside the arena "
                f"of {self._size} bytes"
            )
        with self._lock:
            if self._base is None:
                raise FailedPrecondition("arena is closed")
            view = self._base[offset : offset + length]
        return view

    def close(self) -> None:
        """Close the memfd and unmap, now or when the last view dies (see the module docstring).

        Idempotent; never raises.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            mapping, base = self._mmap, self._base
            self._mmap = self._base = None
        if base is not None:
            base.release()
        if mapping is not None and not close_mapping(mapping):
            logger.debug("arena of %d bytes still has live views; unmapping lazily", self._size)
        try:
            os.close(self._fd)
        except OSError:  # pragma: no cover - only if someone closed our fd behind our back
            logger.warning("arena memfd %d was already closed", self._fd)

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"Arena(size={self._size}, {state})"


def _prefault(mapping: mmap.mmap, size: int) -> None:
    """Populate every page writable; silently fall back to lazy faults where unsupported."""
    madvise = getattr(mapping, "madvise", None)
    if madvise is None:  # pragma: no cover - every Linux build has it
        return
    try:
        madvise(MADV_POPULATE_WRITE, 0, size)
    except OSError as err:
        logger.debug("MADV_POPULATE_WRITE unavailable (%s); pages fault in lazily", err)
