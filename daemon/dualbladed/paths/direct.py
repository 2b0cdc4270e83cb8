"""The NVMe-direct residency path: one contiguous LBA extent per object, O_DIRECT, no page cache.

Space: an :class:`~dualbladed.alloc.extent.ExtentAllocator` over the namespace's data area
``[namespace.data_start, namespace.capacity)`` with the logical block size as the allocation unit,
so the superblock area is never handed out. It is a public attribute (``allocator``) because the
store reads its stats and free map; the path serializes its own allocator calls under
``_alloc_lock``, and anyone touching ``allocator`` directly must hold the store's lock.

Bytes: a :class:`~dualbladed.paths.engine.DirectEngine`. ``write(extent, src)`` and
``read(extent, dst)`` move ``len(buffer)`` bytes at the start of the extent:

- Aligned address, length a block multiple: straight between the caller's buffer (an arena slice)
  and the device. Zero copies; this is the path KV blocks take.
- Aligned address, ragged length: the aligned prefix still goes direct; only the last partial
  block is bounced through a one-block aligned buffer (zero-padded on write). O_DIRECT cannot move
  a partial block, and copying one block is cheap next to copying the whole object.
- Misaligned address: O_DIRECT cannot DMA from that buffer at all, so everything is bounced in
  ``request_bytes`` chunks. This is a slow path for odd callers, not for arena traffic.

The padded tail of the last block stays inside the extent, because extents are rounded up to the
block size. Bounce buffers are per thread (``threading.local``): no lock on the data path, and a
thread's buffer is unmapped when the thread ends.

Release order: the extent is freed in the allocator and discarded (TRIM) under the same lock, so
no other caller can be handed the range and write it before the discard lands. A discard failure
is logged and ignored: it is a hint, the data are unreferenced either way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from dualbladed.alloc.abstract import AllocStats, Extent
from dualbladed.alloc.extent import ExtentAllocator, Span
from dualbladed.errors import DualbladeError, FailedPrecondition, InvalidArgument, OutOfRange
from dualbladed.namespace.abstract import Namespace
from dualbladed.oserrors import translated
from dualbladed.paths.abstract import DIRECT, ResidencyPath
from dualbladed.paths.engine import DirectEngine, aligned_buffer, buffer_address, byte_view

logger = logging.getLogger(__name__)

#: most buffers in one coalesced pwritev (Linux's IOV_MAX)
_IOV_MAX = 1024

__all__ = ["DirectPath"]


class DirectPath(ResidencyPath):
    """Objects as contiguous extents of ``namespace``, moved with O_DIRECT.

    Args:
        namespace: the owned device; the path does not close it.
        request_bytes: largest single I/O request (see :class:`DirectEngine`).
        queue_depth: requests in flight for one large transfer.
    """

    name = DIRECT

    def __init__(
        self, namespace: Namespace, *, request_bytes: int = 1 << 20, queue_depth: int = 8
    ) -> None:
        self.namespace = namespace
        self.alignment = namespace.block_size
        self.allocator = ExtentAllocator(
            namespace.data_start, namespace.capacity, namespace.block_size
        )
        self.engine = DirectEngine(namespace, request_bytes=request_bytes, queue_depth=queue_depth)
        self._bounce_bytes = request_bytes
        self._alloc_lock = threading.Lock()
        self._local = threading.local()
        self._closed = False

    # ------------------------------------------------------------------ space

    def allocate(self, length: int) -> Extent:
        with self._alloc_lock:
            self._check_open()
            return self.allocator.allocate(length)

    def reserve(self, extent: Extent) -> None:
        with self._alloc_lock:
            self._check_open()
            self.allocator.reserve(extent)

    def reserve_many(self, extents: Sequence[Span]) -> None:
        with self._alloc_lock:
            self._check_open()
            self.allocator.reserve_sorted(extents)

    def release(self, extent: Extent) -> None:
        with self._alloc_lock:
            self._check_open()
            self.allocator.free(extent)
            try:
                self.namespace.discard(extent.offset, extent.length)
            except OSError as exc:  # a hint: whatever the errno, the range is unreferenced
                logger.warning(
                    "discard of %d bytes at offset %d failed (ignored): %s",
                    extent.length,
                    extent.offset,
                    exc,
                )

    def stats(self) -> AllocStats:
        with self._alloc_lock:
            return self.allocator.stats()

    # ------------------------------------------------------------------ bytes

    def write(self, extent: Extent, src: memoryview) -> None:
        mv = byte_view(src)
        nbytes = mv.nbytes
        self._check_fits("write", extent, nbytes)
        block = self.alignment
        if buffer_address(mv) % block == 0:
            direct = nbytes - nbytes % block
            if direct:
                self.engine.write(extent.offset, mv[:direct])
            if direct < nbytes:
                self._write_bounced(extent.offset + direct, mv[direct:])
            return
        for start in range(0, nbytes, self._bounce_bytes):
            piece = mv[start : start + self._bounce_bytes]
            self._write_bounced(extent.offset + start, piece)

    def write_many(self, items: Sequence[tuple[Extent, memoryview]]) -> list[DualbladeError | None]:
        """Write each ``(extent, data)``; one error (or None) per item.

        Runs of items whose extents follow each other on the device and whose data are
        block-aligned buffers filling their extent exactly go out as one ``pwritev`` (up to
        ``_IOV_MAX`` buffers, ``engine.request_bytes`` bytes): a batch of small puts on a fresh
        namespace costs a few large writes, not one per object. Anything else, and a run whose
        write fails or is short, is written item by item (so each error lands on its own item).
        """
        errors: list[DualbladeError | None] = [None] * len(items)
        block = self.alignment
        limit = self.engine.request_bytes
        i = 0
        while i < len(items):
            j = i
            end = items[i][0].offset
            size = 0
            while j < len(items) and j - i < _IOV_MAX:
                extent, data = items[j]
                mv = byte_view(data)
                if (
                    extent.offset != end
                    or mv.nbytes != extent.length
                    or buffer_address(mv) % block
                    or (size and size + mv.nbytes > limit)
                ):
                    break
                end += extent.length
                size += mv.nbytes
                j += 1
            if j - i >= 2 and self._write_run(items[i:j]):
                i = j
                continue
            for k in range(i, max(j, i + 1)):
                try:
                    self.write(*items[k])
                except DualbladeError as err:
                    errors[k] = err
            i = max(j, i + 1)
        return errors

    def _write_run(self, run: Sequence[tuple[Extent, memoryview]]) -> bool:
        """One pwritev of a contiguous run; False (nothing assumed written) if it failed."""
        self._check_open()
        for extent, data in run:
            self._check_fits("write", extent, byte_view(data).nbytes)
        offset = run[0][0].offset
        total = sum(extent.length for extent, _ in run)
        try:
            done = self.namespace.pwritev([byte_view(d) for _, d in run], offset)
        except OSError as exc:
            logger.debug("coalesced write of %d bytes at %d failed: %s", total, offset, exc)
            return False
        return done == total

    def read(self, extent: Extent, dst: memoryview) -> None:
        mv = byte_view(dst)
        if mv.readonly:
            raise InvalidArgument("read needs a writable buffer, got a read-only one")
        nbytes = mv.nbytes
        self._check_fits("read", extent, nbytes)
        block = self.alignment
        if buffer_address(mv) % block == 0:
            direct = nbytes - nbytes % block
            if direct:
                self.engine.read(extent.offset, mv[:direct])
            if direct < nbytes:
                self._read_bounced(extent.offset + direct, mv[direct:])
            return
        for start in range(0, nbytes, self._bounce_bytes):
            piece = mv[start : start + self._bounce_bytes]
            self._read_bounced(extent.offset + start, piece)

    def flush(self) -> None:
        self._check_open()
        with translated(f"flush of {self.namespace.path}"):
            self.namespace.flush()

    def close(self) -> None:
        self._closed = True
        self.engine.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the direct path is closed")

    def _check_fits(self, op: str, extent: Extent, nbytes: int) -> None:
        self._check_open()
        if not isinstance(extent, Extent):
            raise InvalidArgument(f"{op} needs an Extent, got {type(extent).__name__}")
        if nbytes > extent.length:
            raise OutOfRange(
                f"{op} of {nbytes} bytes does not fit extent at offset {extent.offset} "
                f"of {extent.length} bytes"
            )

    def _bounce(self) -> memoryview:
        """This thread's aligned bounce buffer (``request_bytes``, mapped on first use)."""
        view = getattr(self._local, "bounce", None)
        if view is None:
            view = memoryview(aligned_buffer(self._bounce_bytes))
            self._local.bounce = view
        return view

    def _padded(self, nbytes: int) -> int:
        return -(-nbytes // self.alignment) * self.alignment

    def _write_bounced(self, offset: int, piece: memoryview) -> None:
        """Copy ``piece`` (at most ``request_bytes``) to the bounce buffer, zero-pad, write."""
        length = piece.nbytes
        padded = self._padded(length)
        bounce = self._bounce()
        bounce[:length] = piece
        if padded > length:
            bounce[length:padded] = bytes(padded - length)
        self.engine.write(offset, bounce[:padded])

    def _read_bounced(self, offset: int, piece: memoryview) -> None:
        """Read the blocks covering ``piece`` into the bounce buffer and copy its bytes out."""
        length = piece.nbytes
        bounce = self._bounce()
        self.engine.read(offset, bounce[: self._padded(length)])
        piece[:] = bounce[:length]
