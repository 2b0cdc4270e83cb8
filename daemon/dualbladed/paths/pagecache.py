"""The page-cache residency path: objects packed into a few large slab files, buffered I/O.

Why slabs and not one file per object: a KV object is small (a layer's block, KiB to a few MiB)
and there are millions of them. One file each would cost an inode, a dentry and a directory
update per put, plus an fsync of the directory for durability; the filesystem journal would
become the bottleneck. Slab files are created once, sized with ``ftruncate`` (sparse), and
objects are ranges inside them, so a put is one ``pwritev`` and nothing else.

Addressing. An :class:`~dualbladed.alloc.abstract.Extent` offset here is *virtual*::

    offset = slab_index * slab_bytes + offset_in_slab

so the store keeps one extent schema for both paths. Each slab has its own
:class:`~dualbladed.alloc.extent.ExtentAllocator` over ``[0, slab_capacity)``. One allocator per
slab (rather than one allocator over the whole virtual range with boundary handling) makes "no
extent crosses a slab" true by construction: an allocator can only hand out ranges inside its
own slab, coalescing cannot merge free space across a boundary, and a lazily created slab is
simply a new allocator. Allocation tries slabs in index order (best-fit inside each), which
packs objects into the low slabs and keeps the slab count small.

On-disk layout: ``<directory>/slab-0000.dat``, ``slab-0001.dat``, ... Every slab's file size is
its capacity, ``min(slab_bytes, max_bytes - index * slab_bytes)`` rounded down to the alignment;
the last slab may be short. Slabs are created lazily when no existing slab has room, until the
total reaches ``max_bytes`` (then :class:`~dualbladed.errors.OutOfSpace`, nothing changed). The
free map is never persisted: after a restart the slabs are found again, every allocator starts
fully free, and the store calls :meth:`PageCachePath.reserve` for each committed extent.

Cache control. ``posix_fadvise``: WILLNEED in :meth:`prefetch`, DONTNEED in :meth:`release`
and :meth:`drop_cache` (used after a demotion moved the bytes to the direct path). DONTNEED
only drops *clean* pages, so :meth:`drop_cache` first writes back a dirty slab.

Residency. :meth:`resident_bytes` maps each slab read-only (no page is touched) and asks
``mincore(2)`` which pages are in RAM. Cost: one mmap/munmap plus one byte of vector per 4 KiB
page, and kernel time to look up every page (measured ~11 ms of CPU for 448 MiB of slabs on a
loaded 2-vCPU VM: the one per-tick cost that grows with what the path stores). The answer is
cached for ``resident_ttl_s`` (default 1 s) because the arbiter asks on every tick, and for at
least 100x the CPU the last sweep took, so an idle daemon with many GiB of slabs spends at most
~1% of a core on it; a write or release drops the cache (the count changed). Where mincore is not
available the estimate is the allocated bytes (an upper bound).

Giving space back and the disk floor (hostile-user hardening, issue 15). A released extent's
range is punched out of its slab (``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``) *before*
it returns to the allocator, so no new owner's bytes can be punched; :meth:`punch_free` does the
same for every free range after a restart (space freed by a crash or an older version). Python
has no ``os.fallocate`` with a mode (``os.posix_fallocate`` only allocates), hence ctypes: both
libc calls (this and ``mincore``) live in :mod:`dualbladed.paths.libc`. Where
the filesystem cannot punch (EOPNOTSUPP) it is logged once and the slab keeps its blocks.
``free_floor`` bytes must stay available to unprivileged users (``statvfs`` ``f_bavail``, so
root's reserved blocks are not counted as ours) on the slabs' filesystem: :meth:`allocate` refuses
with :class:`~dualbladed.errors.DiskFloorReached` below it, and :meth:`has_room` lets placement
choose the direct path instead.

Early write-back: a write of at least ``writeback_bytes`` (and every promotion, through
:meth:`PageCachePath.start_writeback`) starts its range's write-back at once; why, and why it is
no durability step, in :mod:`dualbladed.paths.writeback`.

Locking: one lock guards the allocators, the slab table and the dirty set; data I/O runs
outside it (``pread``/``pwrite`` on a shared fd are thread-safe and release the GIL).

Errors: every ``OSError`` goes through :func:`dualbladed.oserrors.from_oserror`, so a full
filesystem under the slabs (ENOSPC from a write into a sparse slab, or from ``fdatasync``) is
``ResourceExhausted`` and EIO is ``DeviceIOError``, exactly as on the direct path.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dualbladed.alloc.abstract import AllocStats, Extent
from dualbladed.alloc.extent import ExtentAllocator, Span
from dualbladed.errors import (
    DeviceIOError,
    DiskFloorReached,
    DualbladeError,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    OutOfSpace,
)
from dualbladed.oserrors import from_oserror, translated
from dualbladed.paths.abstract import PAGECACHE, ResidencyPath
from dualbladed.paths.engine import byte_view
from dualbladed.paths.libc import HolePuncher, Mincore
from dualbladed.paths.writeback import EarlyWriteback

log = logging.getLogger(__name__)

MiB = 1 << 20
_SLAB_RE = re.compile(r"^slab-(\d{4,})\.dat$")


def slab_name(index: int) -> str:
    return f"slab-{index:04d}.dat"


@dataclass
class _Slab:
    index: int
    fd: int
    capacity: int
    alloc: ExtentAllocator


def free_floor_bytes(directory: Path, min_free_bytes: int, min_free_fraction: float) -> int:
    """The free-space floor for ``directory``'s filesystem: the smaller of an absolute figure
    and a fraction of the filesystem's size (either 0 turns the floor off)."""
    st = os.statvfs(directory)
    return min(min_free_bytes, int(st.f_blocks * st.f_frsize * min_free_fraction))


class PageCachePath(ResidencyPath):
    """Buffered slab files in ``directory``; see the module docstring."""

    name = PAGECACHE

    def __init__(
        self,
        directory: Path,
        *,
        slab_bytes: int = 256 * MiB,
        max_bytes: int,
        alignment: int = 4096,
        resident_ttl_s: float = 1.0,
        free_floor: int = 0,
        writeback_bytes: int = 0,
    ) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise InvalidArgument(f"alignment {alignment} must be a positive power of two")
        if slab_bytes <= 0 or slab_bytes % alignment:
            raise InvalidArgument(
                f"slab_bytes {slab_bytes} must be a positive multiple of alignment {alignment}"
            )
        if max_bytes < alignment:
            raise InvalidArgument(f"max_bytes {max_bytes} is below one block ({alignment})")
        self.alignment = alignment
        self.directory = Path(directory)
        self.slab_bytes = slab_bytes
        self.max_bytes = max_bytes - max_bytes % alignment
        self._resident_ttl = resident_ttl_s
        self._resident_cost = 0.0  # CPU seconds the last mincore sweep took
        self._lock = threading.Lock()
        self._slabs: list[_Slab] = []
        self._fit_hint = 0  # the slab that served the last allocation: tried first next time
        self._dirty: set[int] = set()
        self._closed = False
        self._resident_cache: tuple[float, int] | None = None
        self.free_floor = max(0, free_floor)
        #: starts the write-back of large writes and of promotions (module docstring)
        self.writeback = EarlyWriteback(writeback_bytes)
        try:
            self._puncher: HolePuncher | None = HolePuncher()
        except (OSError, AttributeError):  # no libc fallocate symbol: slabs keep their blocks
            self._puncher = None
        try:
            self._mincore: Mincore | None = Mincore()
        except (OSError, AttributeError):  # no libc / no mincore symbol: estimate instead
            self._mincore = None
        with translated(f"opening the page-cache directory {self.directory}"):
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open_existing()

    # ------------------------------------------------------------------ slabs

    def _open_existing(self) -> None:
        found = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _SLAB_RE.match(p.name))
        )
        # Slab indices are dense by construction; a gap (a deleted file) is recreated empty so
        # that virtual offsets keep their meaning.
        for index in range(found[-1] + 1 if found else 0):
            self._open_slab(index, create=index not in found)
        if found:
            log.info(
                "page-cache path reopened %d slabs (%d bytes) in %s",
                len(self._slabs),
                sum(s.capacity for s in self._slabs),
                self.directory,
            )

    def _capacity_for(self, index: int) -> int:
        return min(self.slab_bytes, self.max_bytes - index * self.slab_bytes)

    def _open_slab(self, index: int, *, create: bool) -> _Slab:
        path = self.directory / slab_name(index)
        with translated(f"{'creating' if create else 'opening'} page-cache slab {path}"):
            return self._open_slab_file(index, path, create=create)

    def _open_slab_file(self, index: int, path: Path, *, create: bool) -> _Slab:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                capacity = self._capacity_for(index)
                if capacity < self.alignment:
                    raise OutOfSpace(self.alignment, 0, 0)
                os.ftruncate(fd, capacity)
            else:
                capacity = os.fstat(fd).st_size
                if capacity > self.slab_bytes or capacity % self.alignment or capacity == 0:
                    raise FailedPrecondition(
                        f"{path} is {capacity} bytes: a slab must be a non-zero multiple of "
                        f"{self.alignment} no larger than slab_bytes {self.slab_bytes} "
                        "(was slab_bytes changed?)"
                    )
        except BaseException:
            os.close(fd)
            if create:
                path.unlink(missing_ok=True)
            raise
        slab = _Slab(index, fd, capacity, ExtentAllocator(0, capacity, self.alignment))
        self._slabs.append(slab)
        return slab

    def _locate(self, extent: Extent) -> tuple[_Slab, int]:
        """The slab holding ``extent`` and the offset inside it; OutOfRange if it crosses."""
        index, inner = divmod(extent.offset, self.slab_bytes)
        if extent.offset < 0 or extent.length <= 0 or index >= len(self._slabs):
            raise OutOfRange(f"extent {extent} is outside the page-cache slabs")
        slab = self._slabs[index]
        if inner + extent.length > slab.capacity:
            raise OutOfRange(
                f"extent {extent} crosses the end of slab {index} (capacity {slab.capacity})"
            )
        return slab, inner

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the page-cache path is closed")

    # ------------------------------------------------------------- allocation

    def allocate(self, length: int) -> Extent:
        if length <= 0:
            raise InvalidArgument(f"allocation length {length} must be positive")
        self._check_floor(length)
        with self._lock:
            self._check_open()
            # the last slab that fitted first (O(1) while it has room, rather than a walk over
            # every full slab per allocation), then all of them, lowest first
            hint = self._slabs[self._fit_hint : self._fit_hint + 1]
            for slab in itertools.chain(hint, self._slabs):
                if slab.alloc.largest_free() >= length:
                    inner = slab.alloc.allocate(length)
                    self._fit_hint = slab.index
                    return Extent(slab.index * self.slab_bytes + inner.offset, inner.length)
            index = len(self._slabs)
            rounded = -(-length // self.alignment) * self.alignment
            if index * self.slab_bytes >= self.max_bytes or rounded > self._capacity_for(index):
                st = self._stats_locked()
                raise OutOfSpace(length, st.free, st.largest_free)
            slab = self._open_slab(index, create=True)
            self._fit_hint = slab.index
            log.info("page-cache path created %s (%d bytes)", slab_name(index), slab.capacity)
            inner = slab.alloc.allocate(length)
            return Extent(slab.index * self.slab_bytes + inner.offset, inner.length)

    def release(self, extent: Extent) -> None:
        with self._lock:
            self._check_open()
            slab, inner = self._locate(extent)
        # Punch while the range is still allocated to the dying object: once freed, a new put
        # may own it. A failed punch only costs space, never the release.
        self._punch(slab, inner, extent.length)
        with self._lock:
            self._check_open()
            slab.alloc.free(Extent(inner, extent.length))
            self._resident_cache = None
        self._fadvise(slab.fd, inner, extent.length, os.POSIX_FADV_DONTNEED)

    def reserve(self, extent: Extent) -> None:
        with self._lock:
            self._check_open()
            slab, inner = self._locate(extent)
            slab.alloc.reserve(Extent(inner, extent.length))

    def reserve_many(self, extents: Sequence[Span]) -> None:
        """Start-up bulk reserve: the extents (sorted by offset) split by slab, and each slab's
        free map built in one pass (:meth:`ExtentAllocator.reserve_sorted`) instead of one
        split per extent. All or nothing: on any error every slab gets back the wholly free
        map it had. A slab that is not wholly free (not a start-up) takes the one-by-one path.
        """
        with self._lock:
            self._check_open()
            per_slab: dict[int, list[Extent]] = {}
            slab_bytes, slabs = self.slab_bytes, self._slabs
            for span in extents:
                offset, length = span.offset, span.length
                index, inner = divmod(offset, slab_bytes)
                if offset < 0 or length <= 0 or index >= len(slabs):
                    self._locate(Extent(offset, length))  # raises the precise OutOfRange
                group = per_slab.get(index)
                if group is None:
                    group = per_slab[index] = []
                group.append(Extent(inner, length))
            if any(slabs[i].alloc.stats().used for i in per_slab):
                bulk = False
            else:
                bulk = True
                try:
                    for index, group in per_slab.items():
                        slabs[index].alloc.reserve_sorted(group)  # checks bounds and overlaps
                except BaseException:
                    for index in per_slab:
                        slab = slabs[index]
                        slab.alloc = ExtentAllocator(0, slab.capacity, self.alignment)
                    raise
        if not bulk:
            super().reserve_many(extents)

    # --------------------------------------------------- disk floor and holes

    def disk_available(self) -> int:
        """Bytes unprivileged users may still write on the slabs' filesystem (``f_bavail``)."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def _check_floor(self, length: int) -> None:
        if not self.free_floor:
            return
        try:
            available = self.disk_available()
        except OSError as e:
            raise from_oserror(e, context=f"statvfs of {self.directory}") from e
        if available - length < self.free_floor:
            raise DiskFloorReached(str(self.directory), length, available, self.free_floor)

    def has_room(self, length: int) -> bool:
        """Whether :meth:`allocate` of ``length`` would succeed now (racy: a hint for placement)."""
        return self.room_refusal(length) is None

    def larger_than_a_slab(self, length: int) -> bool:
        """No slab can ever hold ``length`` bytes, however empty the page cache is."""
        return length > self.slab_bytes  # slab_bytes is a multiple of the alignment

    def room_refusal(self, length: int) -> str | None:
        """Why :meth:`allocate` of ``length`` would fail now, or None if it would succeed (racy,
        as :meth:`has_room`): the reason an operator needs when placements and promotions stop
        going to the page cache (the arbiter logs it)."""
        rounded = -(-length // self.alignment) * self.alignment
        if self.larger_than_a_slab(length):  # a property of the size, tested first
            return (
                f"an object of {rounded} bytes is larger than a page-cache slab "
                f"({self.slab_bytes} bytes; residency.slab_bytes)"
            )
        try:
            self._check_floor(length)  # allocate's own check: the same error text
            largest = self.largest_free()
        except (DualbladeError, OSError) as e:  # at the floor, or closed while shutting down
            return str(e)
        if largest < rounded:
            return (
                f"no free range of {rounded} bytes within the page-cache cap of "
                f"{self.max_bytes} bytes (largest {largest}; residency.pagecache_max_bytes)"
            )
        return None

    def _punch(self, slab: _Slab, inner: int, length: int) -> None:
        if self._puncher is None:
            return
        try:
            self._puncher.punch(slab.fd, inner, length)
        except OSError as e:
            log.warning("punching %s [%d, +%d) failed: %s", slab_name(slab.index), inner, length, e)

    def punch_free(self) -> int:
        """Punch every free range of every slab; returns the bytes covered.

        Called at start-up once the committed extents are reserved, so space freed before a
        crash, or by a version that did not punch, goes back to the filesystem. Runs under the
        lock (no allocation can take a range while it is being punched).
        """
        total = 0
        with self._lock:
            self._check_open()
            for slab in self._slabs:
                for free in slab.alloc.free_extents():
                    self._punch(slab, free.offset, free.length)
                    total += free.length
        return total

    # -------------------------------------------------------------------- I/O

    def write(self, extent: Extent, src: memoryview) -> None:
        view = byte_view(src)
        n = view.nbytes
        slab, inner = self._io_target(extent, n)
        done = 0
        while done < n:
            wrote = self._io("write", slab, view[done:], inner + done)
            if wrote == 0:
                raise DeviceIOError(f"short write to page-cache extent {extent} at byte {done}")
            done += wrote
        with self._lock:
            self._dirty.add(slab.index)
            self._resident_cache = None
        self.writeback.after_write(slab.fd, slab_name(slab.index), inner, n)

    @property
    def writeback_bytes(self) -> int:
        """Writes of at least this many bytes start their write-back at once (0: never)."""
        return self.writeback.threshold

    def start_writeback(self, extent: Extent) -> None:
        """Start ``extent``'s write-back whatever ``writeback_bytes`` says (the arbiter's
        promotions: :mod:`dualbladed.paths.writeback`)."""
        slab, inner = self._io_target(extent, extent.length)
        self.writeback.start(slab.fd, slab_name(slab.index), inner, extent.length)

    def read(self, extent: Extent, dst: memoryview) -> None:
        view = byte_view(dst)
        if view.readonly:
            raise InvalidArgument("read needs a writable buffer, got a read-only one")
        n = view.nbytes
        slab, inner = self._io_target(extent, n)
        done = 0
        while done < n:
            got = self._io("read", slab, view[done:], inner + done)
            if got == 0:  # cannot happen inside a slab (ftruncate'd), unless it was cut short
                raise DeviceIOError(f"unexpected end of slab reading {extent} at byte {done}")
            done += got

    @staticmethod
    def _io(op: str, slab: _Slab, buf: memoryview, offset: int) -> int:
        try:
            if op == "read":
                return os.preadv(slab.fd, [buf], offset)
            return os.pwritev(slab.fd, [buf], offset)
        except OSError as e:
            raise from_oserror(
                e,
                context=f"page-cache {op} of {buf.nbytes} bytes at {offset} of "
                f"{slab_name(slab.index)}",
            ) from e

    def _io_target(self, extent: Extent, nbytes: int) -> tuple[_Slab, int]:
        with self._lock:
            self._check_open()
            slab, inner = self._locate(extent)
        if nbytes > extent.length:
            raise OutOfRange(f"{nbytes} bytes do not fit in extent {extent}")
        return slab, inner

    def flush(self) -> None:
        with self._lock:
            self._check_open()
            dirty = sorted(self._dirty)
            self._dirty.clear()
        for index in dirty:
            try:
                os.fdatasync(self._slabs[index].fd)
            except OSError as e:
                with self._lock:
                    self._dirty.update(dirty)
                raise from_oserror(e, context=f"fdatasync of {slab_name(index)}") from e

    # ---------------------------------------------------------- cache control

    def prefetch(self, extent: Extent) -> None:
        with self._lock:
            self._check_open()
            slab, inner = self._locate(extent)
        self._fadvise(slab.fd, inner, extent.length, os.POSIX_FADV_WILLNEED)

    def drop_cache(self, extent: Extent) -> None:
        """Evict ``extent``'s pages from RAM (after a demotion), keeping the bytes on disk.

        DONTNEED skips dirty pages, so a dirty slab is written back first (one fdatasync of the
        slab: drop_cache is a background-migration call, not a hot-path one).
        """
        with self._lock:
            self._check_open()
            slab, inner = self._locate(extent)
            dirty = slab.index in self._dirty
            self._dirty.discard(slab.index)
            self._resident_cache = None
        if dirty:
            try:
                os.fdatasync(slab.fd)
            except OSError as e:
                with self._lock:
                    self._dirty.add(slab.index)
                raise from_oserror(e, context=f"fdatasync of {slab_name(slab.index)}") from e
        self._fadvise(slab.fd, inner, extent.length, os.POSIX_FADV_DONTNEED)

    @staticmethod
    def _fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        try:
            os.posix_fadvise(fd, offset, length, advice)
        except OSError as e:  # advice only: whatever the errno, never fail the caller for it
            log.warning("posix_fadvise(%d) failed: %s", advice, e)

    def resident_bytes(self) -> int:
        now = time.monotonic()
        with self._lock:
            self._check_open()
            cached = self._resident_cache
            # mincore costs CPU in proportion to the slabs' size (~0.1 ms per MiB): besides
            # the configured TTL, a result stays fresh for 100x what computing it cost, so
            # refreshing it never takes more than ~1% of a core however large the slabs grow
            # (``resident_ttl_s=0`` still means: measure on every call)
            ttl = self._resident_ttl and max(self._resident_ttl, 100.0 * self._resident_cost)
            if cached is not None and now - cached[0] < ttl:
                return cached[1]
            slabs = [(s.fd, s.capacity) for s in self._slabs]
            used = self._stats_locked().used
        total = used
        if self._mincore is not None:
            try:
                cpu0 = time.thread_time()
                total = sum(self._mincore.resident(fd, cap) for fd, cap in slabs)
                self._resident_cost = time.thread_time() - cpu0
            except OSError as e:
                log.warning("mincore failed, estimating residency from allocation: %s", e)
                self._mincore = None
        with self._lock:
            self._resident_cache = (now, total)
        return total

    # ------------------------------------------------------------- accounting

    def stats(self) -> AllocStats:
        with self._lock:
            return self._stats_locked()

    def largest_free(self) -> int:
        """``stats().largest_free`` in O(slabs created), without the per-slab stats and the
        list of slabs not created yet (the arbiter asks on every placement)."""
        with self._lock:
            pending = len(self._slabs) * self.slab_bytes < self.max_bytes
            largest = self._capacity_for(len(self._slabs)) if pending else 0
            for slab in self._slabs:
                largest = max(largest, slab.alloc.largest_free())
            return largest

    def _stats_locked(self) -> AllocStats:
        """Space over ``max_bytes``: slabs not yet created count as free, one extent each."""
        per = [s.alloc.stats() for s in self._slabs]
        made = sum(s.capacity for s in self._slabs)
        pending = [
            self._capacity_for(i)
            for i in range(len(self._slabs), -(-self.max_bytes // self.slab_bytes))
        ]
        free = sum(p.free for p in per) + sum(pending)
        used = sum(p.used for p in per)
        largest = max([p.largest_free for p in per] + pending + [0])
        return AllocStats(
            capacity=made + sum(pending),
            free=free,
            used=used,
            largest_free=largest,
            free_extents=sum(p.free_extents for p in per) + len(pending),
            fragmentation=0.0 if free == 0 else 1.0 - largest / free,
        )

    def free_extents(self) -> Iterator[Extent]:
        """The free map in virtual offsets (created slabs only)."""
        with self._lock:
            out = [
                Extent(s.index * self.slab_bytes + e.offset, e.length)
                for s in self._slabs
                for e in s.alloc.free_extents()
            ]
        return iter(out)

    @property
    def slab_count(self) -> int:
        return len(self._slabs)

    def close(self) -> None:
        """Write back dirty slabs (best effort) and close the files; idempotent."""
        with self._lock:
            if self._closed:
                return
        try:
            self.flush()
        except DualbladeError as e:
            log.error("page-cache path: write-back on close failed: %s", e)
        with self._lock:
            self._closed = True
            slabs, self._slabs = self._slabs, []
        for slab in slabs:
            try:
                os.close(slab.fd)
            except OSError as e:  # the fd is gone either way; the write-back was reported
                log.warning("closing %s failed: %s", slab_name(slab.index), e)
