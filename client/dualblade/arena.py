"""The client's mapping of its session arena, and a small allocator of aligned slots in it.

The arena is the memfd the daemon passed over the handshake socket (see
:mod:`dualblade._handshake`). Both processes map it MAP_SHARED, so it is the region the daemon
DMAs into and out of: a put names a slot's offset and the daemon pwritev()s those bytes to storage
with O_DIRECT; a get names a slot and the daemon preadv()s straight into it. No KV byte crosses
the gRPC socket. A GPU client may pin the whole mapping (cudaHostRegister at :attr:`address`) so
its host-device copies out of slots run at pinned speed.

Slots: every slot starts at a multiple of the alignment (:data:`dualblade.v1.wire.ALIGNMENT`, a
page: legal for O_DIRECT on any device the daemon accepts) and its length is the requested size
rounded up to the alignment, so neighbouring slots never share a page. The allocator is best-fit
over a free map kept in two sorted indexes (by offset for coalescing, by (length, offset) for the
fit), so alloc and free are O(log n) and adjacent free ranges always merge. A slot must not be
freed while the daemon may still be doing I/O into it, i.e. before the call that named it has
returned.

Closing: like the daemon's arena (see ``dualbladed.sessions.arena``), ``close()`` unmaps only
once no view it handed out is alive; otherwise the mapping goes away with the last view. Views are
never force-released, because ``torch.frombuffer`` tensors reference the view without holding a
buffer export and would be left pointing at unmapped memory. For the same reason, never
``release()`` a view that backs a live tensor. ``close()`` never raises.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import threading
from dataclasses import dataclass

from sortedcontainers import SortedDict, SortedList

from dualblade.errors import FailedPrecondition, InvalidArgument, OutOfRange, ResourceExhausted
from dualblade.v1.wire import ALIGNMENT, close_mapping

__all__ = ["ALIGNMENT", "ClientArena", "Slot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """A range of the arena: ``offset`` is aligned; ``length`` is what was reserved."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


class ClientArena:
    """The shared arena mapped into this process, with a thread-safe slot allocator.

    ``fd`` stays the caller's: the mapping holds its own reference to the memfd, so the caller
    may close ``fd`` at any time after construction.
    """

    def __init__(self, fd: int, size: int, *, alignment: int = ALIGNMENT) -> None:
        if size <= 0 or size % alignment:
            raise InvalidArgument(
                f"arena size {size} must be a positive multiple of the alignment {alignment}"
            )
        if alignment <= 0 or alignment & (alignment - 1) or alignment % mmap.PAGESIZE:
            raise InvalidArgument(f"alignment {alignment} must be a power-of-two page multiple")
        self._size = size
        self._alignment = alignment
        self._mmap: mmap.mmap | None = mmap.mmap(
            fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        anchor = ctypes.c_char.from_buffer(self._mmap)
        self._address = ctypes.addressof(anchor)
        del anchor  # drop the buffer export at once, or close() could never unmap
        self._base: memoryview | None = memoryview(self._mmap)
        self._lock = threading.Lock()
        self._free_by_off: SortedDict = SortedDict({0: size})
        self._free_by_len: SortedList = SortedList([(size, 0)])
        self._used: dict[int, int] = {}
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def alignment(self) -> int:
        return self._alignment

    @property
    def address(self) -> int:
        """The virtual address of the mapping's first byte (for cudaHostRegister, data_ptr math)."""
        return self._address

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return self._size - sum(self._used.values())

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- allocator ---------------------------------------------------------------------------

    def alloc(self, nbytes: int) -> Slot:
        """Reserve ``nbytes`` rounded up to the alignment. ResourceExhausted when nothing fits."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise InvalidArgument(f"slot size must be a positive integer, got {nbytes!r}")
        need = -(-nbytes // self._alignment) * self._alignment
        with self._lock:
            if self._closed:
                raise FailedPrecondition("arena is closed")
            i = self._free_by_len.bisect_left((need, -1))
            if i == len(self._free_by_len):
                free = self._size - sum(self._used.values())
                largest = self._free_by_len[-1][0] if self._free_by_len else 0
                raise ResourceExhausted(
                    f"arena full: slot of {need} bytes requested, {free} of {self._size} bytes "
                    f"free, largest free range {largest} bytes"
                )
            length, offset = self._free_by_len.pop(i)
            del self._free_by_off[offset]
            if length > need:
                self._add_free(offset + need, length - need)
            self._used[offset] = need
        return Slot(offset, need)

    def free(self, slot: Slot) -> None:
        """Return a slot from :meth:`alloc`. InvalidArgument for a slot that is not allocated."""
        with self._lock:
            length = self._used.get(slot.offset)
            if length is None or length != slot.length:
                raise InvalidArgument(
                    f"slot offset={slot.offset} length={slot.length} is not allocated "
                    "(double free, or not from this arena)"
                )
            del self._used[slot.offset]
            offset = slot.offset
            i = self._free_by_off.bisect_left(offset)
            if i > 0:
                left_off, left_len = self._free_by_off.peekitem(i - 1)
                if left_off + left_len == offset:
                    self._remove_free(left_off, left_len)
                    offset, length = left_off, left_len + length
            right_len = self._free_by_off.get(offset + length)
            if right_len is not None:
                self._remove_free(offset + length, right_len)
                length += right_len
            self._add_free(offset, length)

    def slot_at(self, offset: int) -> Slot | None:
        """The allocated slot starting at ``offset``, if any."""
        with self._lock:
            length = self._used.get(offset)
        return None if length is None else Slot(offset, length)

    def _add_free(self, offset: int, length: int) -> None:
        self._free_by_off[offset] = length
        self._free_by_len.add((length, offset))

    def _remove_free(self, offset: int, length: int) -> None:
        del self._free_by_off[offset]
        self._free_by_len.remove((length, offset))

    # ---- views -------------------------------------------------------------------------------

    def view(self, slot: Slot) -> memoryview:
        """A writable view of the slot's bytes in the shared mapping.

        The view keeps the mapping alive (even past :meth:`close`). Do not ``release()`` it while
        a tensor made from it with ``torch.frombuffer`` is still in use.
        """
        if slot.offset < 0 or slot.length < 0 or slot.end > self._size:
            raise OutOfRange(
                f"slot offset={slot.offset} length={slot.length} is outside the arena "
                f"of {self._size} bytes"
            )
        with self._lock:
            if self._base is None:
                raise FailedPrecondition("arena is closed")
            view = self._base[slot.offset : slot.end]
        return view

    def close(self) -> None:
        """Unmap now, or when the last view handed out dies. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            mapping, base = self._mmap, self._base
            self._mmap = self._base = None
        if base is not None:
            base.release()
        if mapping is not None and not close_mapping(mapping):
            logger.debug("arena mapping still exported; it is unmapped with the last buffer")

    def __enter__(self) -> ClientArena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
