"""Offline consistency check of a stopped daemon's namespace and state directory.

What is checked (in the spirit of ``ceph-bluestore-tool fsck --deep``):

- the superblock: at least one valid copy (a fallback to copy B is reported as a warning);
- the metadata: SQLite ``integrity_check``, and that it is bound to this namespace's UUID;
- the page-cache slab files (``<state_dir>/pagecache/slab-NNNN.dat``): each a non-zero multiple
  of the page-cache alignment, as :class:`~dualbladed.paths.pagecache.PageCachePath` requires
  before it will open them;
- every committed extent: a known residency path, offset and length aligned to *that path's*
  alignment (direct: the namespace block size; page cache: the daemon's ``IO_ALIGNMENT``),
  ``size <= length``, and inside the path's bounds -- direct: between the superblock area and
  the capacity; page cache: inside one existing slab file, addressed the way the path addresses
  it (``offset = slab_index * slab_bytes + offset_in_slab``);
- no two extents of one path overlap;
- layer objects (``capacity > 0``): ``0 <= size <= capacity <= length`` and one chunk crc per
  1 MiB chunk of ``[0, size)``;
- with ``verify_data`` (the default), every object's bytes are read back from wherever they
  live -- the namespace through the direct path's O_DIRECT engine, slab files with ordinary
  buffered ``pread`` -- and their xxh3-64 must equal the committed checksum, computed exactly as
  the store computes it on put and verifies it on get (``xxh3_64_intdigest`` of the payload);
  a layer object's chunks must each match their committed crc32c. Neighbouring extents are read
  together (up to ``SPAN_BYTES`` per read) by a pool of ``workers`` threads, so a namespace of a
  million small objects costs a few thousand large reads, not a million small ones; ``progress``
  reports how far verification got.

Why page-cache objects get the same treatment as direct ones: their bytes are on disk in the
state directory and survive restarts just like direct extents, so a torn or bit-rotted slab is
as real a loss as a bad LBA. Checking only their layout let a corrupted slab pass as ``ok``.

Slab size. ``slab_bytes`` is a daemon setting, not recorded on disk, yet it is what maps a
virtual offset to a slab. Unless the caller passes it, fsck infers it from the slab files: every
slab but the last is created exactly ``slab_bytes`` long, and none may be longer, so the largest
slab file *is* the slab size whenever there are two or more slabs. With a single (possibly
short) slab every valid extent lies inside slab 0, where the mapping does not depend on
``slab_bytes``, so the inference cannot turn a good extent into a bad one there either. Reading
the files rather than the config also follows what the committed offsets were written against.

fsck is read-only on the data: the namespace is opened the way the daemon opens it (O_EXCL for
block devices, an flock for files), so fsck refuses to run against a namespace a live daemon
holds, and slab files are opened ``O_RDONLY`` (a missing slab is reported, never recreated).
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from crc32c import crc32c

from dualbladed.alloc.abstract import Extent
from dualbladed.config import IO_ALIGNMENT
from dualbladed.errors import DualbladeError
from dualbladed.namespace import open_namespace
from dualbladed.namespace.abstract import Namespace
from dualbladed.namespace.superblock import load_superblock
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.engine import aligned_buffer
from dualbladed.paths.pagecache import _SLAB_RE, slab_name  # one definition of the names
from dualbladed.store.layers import LAYER_CHUNK_BYTES, chunk_count
from dualbladed.store.meta import MetaStore, ObjectRecord
from dualbladed.store.recovery import META_FILE, PAGECACHE_DIR

#: data-verification threads by default: enough to keep an NVMe queue busy, few enough for
#: a small box (reads of up to ``SPAN_BYTES`` each)
DEFAULT_WORKERS = min(8, 2 * (os.cpu_count() or 1))

#: The page-cache path's alignment in the daemon (``PageCachePath(alignment=IO_ALIGNMENT)``).
PAGECACHE_ALIGNMENT = IO_ALIGNMENT


@dataclass
class FsckReport:
    namespace: str
    state_dir: str
    ok: bool = True
    objects: int = 0
    bytes: int = 0
    verified: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.ok = False
        self.errors.append(message)

    def render(self) -> str:
        lines = [
            f"fsck {self.namespace} (state {self.state_dir}): {'clean' if self.ok else 'PROBLEMS'}",
            f"  objects {self.objects}, bytes {self.bytes}, data verified {self.verified}",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)


@dataclass(frozen=True)
class SlabSpace:
    """The page-cache path's on-disk space as fsck found it.

    ``sizes`` maps slab index to file size (only files that exist); ``slab_bytes`` is the stride
    of the virtual address space (None when there is no slab file at all, so no page-cache
    extent can be valid).
    """

    directory: Path
    slab_bytes: int | None
    sizes: dict[int, int]

    @property
    def count(self) -> int:
        """Slab indices the daemon would open (dense up to the highest file found)."""
        return max(self.sizes) + 1 if self.sizes else 0

    def locate(self, offset: int, length: int) -> tuple[int, int] | str:
        """``(slab index, offset in slab)`` of an extent, or why it is outside the slab space.

        Mirrors ``PageCachePath._locate``: the extent must start in an existing slab and end
        before that slab's end (no extent crosses a slab), measured against the file's real size
        so that a truncated slab is caught here rather than as a short read.
        """
        span = f"[{offset}, {offset + length})"
        if self.slab_bytes is None:
            return (
                f"extent {span} outside the page-cache slab space: no slab files in "
                f"{self.directory}"
            )
        index, inner = divmod(offset, self.slab_bytes)
        if offset < 0 or length <= 0 or index >= self.count:
            return (
                f"extent {span} outside the page-cache slab space [0, "
                f"{self.count * self.slab_bytes}) ({self.count} slabs of {self.slab_bytes} bytes "
                f"in {self.directory}; no {slab_name(max(index, 0))})"
            )
        size = self.sizes.get(index)
        if size is None:
            return f"extent {span} is in slab {index} but {slab_name(index)} is missing"
        if inner + length > size:
            return (
                f"extent {span} outside slab {index}: [{inner}, {inner + length}) crosses the end "
                f"of {slab_name(index)} ({size} bytes)"
            )
        return index, inner


def fsck(
    namespace: str,
    state_dir: str,
    *,
    verify_data: bool = True,
    pagecache_dir: str | os.PathLike[str] | None = None,
    slab_bytes: int | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> FsckReport:
    """Check a stopped daemon's state; problems are collected in the report, never raised.

    Args:
        namespace: the namespace device or file.
        state_dir: the daemon's state directory (holds the metadata and the page-cache slabs).
        verify_data: read every object back and compare its checksum.
        pagecache_dir: where the slab files are; default ``<state_dir>/pagecache``, where the
            daemon puts them. Only harnesses that build a store by hand need to pass it.
        slab_bytes: the page-cache slab size; default: inferred from the slab files (see the
            module docstring).
        workers: data reads in flight at once (threads; reads and xxh3 release the GIL).
        progress: called with (objects verified, objects to verify) as verification goes.
    """
    report = FsckReport(namespace=namespace, state_dir=state_dir)
    meta_path = Path(state_dir) / META_FILE
    if not meta_path.exists():
        report.error(f"no metadata database at {meta_path}")
        return report
    slab_dir = Path(state_dir) / PAGECACHE_DIR if pagecache_dir is None else Path(pagecache_dir)
    try:
        ns = open_namespace(namespace)
    except DualbladeError as err:
        report.error(f"cannot open namespace: {err}")
        return report
    try:
        _check(
            ns,
            meta_path,
            scan_slabs(slab_dir, slab_bytes, report),
            report,
            verify_data,
            workers,
            progress,
        )
    finally:
        ns.close()
    return report


def scan_slabs(directory: Path, slab_bytes: int | None, report: FsckReport) -> SlabSpace:
    """Find the slab files and report the ones the daemon would refuse to open.

    A slab whose size is not a non-zero multiple of the alignment (or exceeds a known
    ``slab_bytes``) makes ``PageCachePath`` raise at start-up, so the daemon would not start:
    that is an error even if no object lives in it. A gap in the indices is only a warning: the
    daemon recreates it empty, and any object that was in it is reported by the extent checks.
    """
    sizes: dict[int, int] = {}
    if directory.exists() and not directory.is_dir():
        report.error(f"page-cache directory {directory} is not a directory")
    elif directory.is_dir():
        for entry in sorted(directory.iterdir()):
            match = _SLAB_RE.match(entry.name)
            if match is None:
                continue
            try:
                st = entry.stat()
            except OSError as err:
                report.error(f"page-cache slab {entry}: cannot stat: {err}")
                continue
            if not stat.S_ISREG(st.st_mode):
                report.error(f"page-cache slab {entry} is not a regular file")
                continue
            size = st.st_size
            if size == 0 or size % PAGECACHE_ALIGNMENT:
                report.error(
                    f"page-cache slab {entry} is {size} bytes: not a non-zero multiple of "
                    f"{PAGECACHE_ALIGNMENT} (the daemon refuses to open it)"
                )
            elif slab_bytes is not None and size > slab_bytes:
                report.error(
                    f"page-cache slab {entry} is {size} bytes, larger than slab_bytes {slab_bytes}"
                )
            sizes[int(match.group(1))] = size
    stride = slab_bytes if slab_bytes is not None else max(sizes.values(), default=0) or None
    space = SlabSpace(directory, stride, sizes)
    missing = [slab_name(i) for i in range(space.count) if i not in sizes]
    if missing:
        report.warnings.append(
            f"page-cache slabs missing from {directory}: {', '.join(missing)} "
            "(the daemon would recreate them empty)"
        )
    return space


def _check(
    ns: Namespace,
    meta_path: Path,
    slabs: SlabSpace,
    report: FsckReport,
    verify_data: bool,
    workers: int,
    progress: Progress | None,
) -> None:
    try:
        loaded = load_superblock(ns)
    except DualbladeError as err:
        report.error(f"superblock: {err}")
        return
    report.warnings.extend(loaded.warnings)
    sb = loaded.superblock
    try:
        meta = MetaStore(meta_path, namespace_uuid=sb.uuid)
    except DualbladeError as err:
        report.error(f"metadata: {err}")
        return
    with meta:
        integrity = meta.integrity_check()
        if integrity != "ok":
            report.error(f"metadata: sqlite integrity_check: {integrity}")
        # storage order, not ``records()``: ORDER BY generation would sort a million rows in
        # SQLite's temp store (and fail on a nearly full disk); the checks sort by offset
        records = list(meta.iter_records())
    report.objects = len(records)
    report.bytes = sum(r.size for r in records)

    geometry = _Geometry(sb.block_size, sb.data_start, ns.capacity, slabs)
    by_path: dict[str, list[ObjectRecord]] = {}
    readable: dict[str, list[ObjectRecord]] = {}
    for rec in records:
        by_path.setdefault(rec.path, []).append(rec)
        if _check_record(rec, geometry, report):
            readable.setdefault(rec.path, []).append(rec)
    for path, recs in by_path.items():
        recs.sort(key=lambda r: r.offset)
        for a, b in zip(recs, recs[1:]):
            if a.offset + a.length > b.offset:
                report.error(
                    f"overlap on path {path}: {_name(a)} [{a.offset}, {a.offset + a.length}) and "
                    f"{_name(b)} [{b.offset}, {b.offset + b.length})"
                )
    total = sum(len(v) for v in readable.values())
    done = [0]
    if verify_data and readable.get(DIRECT):
        _verify_direct(
            ns,
            readable[DIRECT],
            report,
            workers=workers,
            progress=progress,
            done=done,
            total=total,
        )
    if verify_data and readable.get(PAGECACHE):
        _verify_pagecache(
            slabs,
            readable[PAGECACHE],
            report,
            workers=workers,
            progress=progress,
            done=done,
            total=total,
        )


@dataclass(frozen=True)
class _Geometry:
    """What the per-record checks need to know about both paths."""

    block: int
    data_start: int
    capacity: int
    slabs: SlabSpace


def _name(rec: ObjectRecord) -> str:
    return f"{rec.tenant}:{rec.key!r}"


def _check_record(rec: ObjectRecord, geo: _Geometry, report: FsckReport) -> bool:
    """Report every layout problem of one record; True when its bytes are safe to read.

    A record that fails any check is not read: its extent may point outside the device or a
    slab, and its checksum result would only repeat the layout error.
    """
    if rec.path not in (DIRECT, PAGECACHE):
        report.error(f"{_name(rec)}: unknown residency path {rec.path!r}")
        return False
    good = True
    align = geo.block if rec.path == DIRECT else PAGECACHE_ALIGNMENT
    if rec.offset % align or rec.length % align:
        report.error(
            f"{_name(rec)}: extent [{rec.offset}, +{rec.length}) on path {rec.path} not aligned "
            f"to {align} bytes"
        )
        good = False
    if rec.capacity:  # a layer object: size <= capacity <= extent, one crc per chunk
        good = _check_layer(rec, report) and good
    elif not 0 < rec.size <= rec.length:
        report.error(f"{_name(rec)}: size {rec.size} outside (0, extent length {rec.length}]")
        good = False
    if rec.path == DIRECT:
        if rec.offset < geo.data_start or rec.offset + rec.length > geo.capacity:
            report.error(
                f"{_name(rec)}: extent [{rec.offset}, {rec.offset + rec.length}) outside the "
                f"data area [{geo.data_start}, {geo.capacity})"
            )
            good = False
    else:
        where = geo.slabs.locate(rec.offset, rec.length)
        if isinstance(where, str):
            report.error(f"{_name(rec)}: {where}")
            good = False
    return good


def _check_layer(rec: ObjectRecord, report: FsckReport) -> bool:
    """A layer object's row: ``0 <= size <= capacity <= extent length`` and exactly one chunk
    crc per :data:`~dualbladed.store.layers.LAYER_CHUNK_BYTES` of ``[0, size)``."""
    good = True
    if not 0 <= rec.size <= rec.capacity <= rec.length:
        report.error(
            f"{_name(rec)}: layer object size {rec.size}, capacity {rec.capacity} and extent "
            f"length {rec.length} break 0 <= size <= capacity <= length"
        )
        good = False
    if len(rec.chunk_crcs) != chunk_count(rec.size):
        report.error(
            f"{_name(rec)}: layer object of {rec.size} bytes has {len(rec.chunk_crcs)} chunk "
            f"crcs, expected {chunk_count(rec.size)}"
        )
        good = False
    return good


def _verdict(rec: ObjectRecord, data: memoryview | bytearray) -> str | None:
    """The store's own check (``ObjectStore._read_verified``) on a worker thread: xxh3-64 of
    the payload bytes; for a layer object, crc32c of each chunk (``dualbladed.store.layers``).
    None when the bytes verify, else the error to report."""
    if rec.capacity:
        for index, stored in enumerate(rec.chunk_crcs):
            start = index * LAYER_CHUNK_BYTES
            actual = crc32c(data[start : start + LAYER_CHUNK_BYTES])
            if actual != stored:
                return (
                    f"{_name(rec)}: layer chunk {index} crc32c mismatch on path {rec.path} at "
                    f"[{rec.offset + start}, +{min(LAYER_CHUNK_BYTES, rec.size - start)}) "
                    f"(stored {stored:#010x}, read {actual:#010x})"
                )
        return None
    actual = xxhash.xxh3_64_intdigest(data)
    if actual != rec.checksum:
        return (
            f"{_name(rec)}: checksum mismatch on path {rec.path} at [{rec.offset}, "
            f"+{rec.length}) (stored {rec.checksum:#018x}, read {actual:#018x})"
        )
    return None


#: the largest read that covers several neighbouring extents at once
SPAN_BYTES = 4 << 20
#: extents further apart than this start a new read (reading the gap would cost more)
SPAN_GAP = 64 << 10

#: ``progress(objects checked, objects to check)``; called on the calling thread
Progress = Callable[[int, int], None]


def _spans(recs: list[ObjectRecord], same_unit: Callable[[int], int]) -> list[list[ObjectRecord]]:
    """Group records (sorted by offset) into reads of at most ``SPAN_BYTES``: neighbours whose
    gap is below ``SPAN_GAP`` and that lie in the same ``same_unit(offset)`` (a slab)."""
    spans: list[list[ObjectRecord]] = []
    cur: list[ObjectRecord] = []
    start = end = unit = 0
    for rec in recs:
        r_end = rec.offset + rec.length
        if (
            cur
            and rec.offset >= end  # an overlapping record (reported already) is read alone
            and rec.offset - end <= SPAN_GAP
            and r_end - start <= SPAN_BYTES
            and same_unit(rec.offset) == unit
        ):
            cur.append(rec)
            end = max(end, r_end)
            continue
        if cur:
            spans.append(cur)
        cur, start, end, unit = [rec], rec.offset, r_end, same_unit(rec.offset)
    if cur:
        spans.append(cur)
    return spans


#: one span's outcome: ``(record, checksum error or None, read error or None)`` per record
_Result = list[tuple[ObjectRecord, str | None, str | None]]


def _run_spans(
    spans: list[list[ObjectRecord]],
    read_span: Callable[[list[ObjectRecord]], _Result],
    report: FsckReport,
    workers: int,
    progress: Progress | None,
    done: list[int],
    total: int,
) -> None:
    """Verify spans on ``workers`` threads (O_DIRECT reads and xxh3 of large buffers release
    the GIL); the report and ``progress`` are only touched on this thread, in span order."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fsck") as pool:
        for results in pool.map(read_span, spans):
            for rec, bad, err in results:
                if err is not None:
                    report.error(f"{_name(rec)}: read failed on path {rec.path}: {err}")
                elif bad is not None:
                    report.error(bad)
                else:
                    report.verified += 1
            done[0] += len(results)
            if progress is not None:
                progress(done[0], total)


def _verify_direct(
    ns: Namespace,
    recs: list[ObjectRecord],
    report: FsckReport,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    done: list[int] | None = None,
    total: int = 0,
) -> None:
    """Read direct objects through the daemon's own O_DIRECT path (records already in bounds),
    neighbouring extents in one read of up to ``SPAN_BYTES``, ``workers`` reads at a time."""
    path = DirectPath(ns, queue_depth=4)
    local = threading.local()
    buffers: list[mmap.mmap] = []
    lock = threading.Lock()

    def buffer(nbytes: int) -> mmap.mmap:
        buf = getattr(local, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = aligned_buffer(max(nbytes, SPAN_BYTES))
            local.buf = buf
            with lock:
                buffers.append(buf)
        return buf

    def one(rec: ObjectRecord) -> tuple[ObjectRecord, str | None, str | None]:
        buf = buffer(rec.length)
        view = memoryview(buf)[: rec.size]
        try:
            path.read(Extent(rec.offset, rec.length), view)
            return rec, _verdict(rec, view), None
        except (DualbladeError, OSError) as err:
            return rec, None, str(err)
        finally:
            view.release()

    def read_span(span: list[ObjectRecord]) -> _Result:
        start = span[0].offset
        end = max(r.offset + r.length for r in span)
        if len(span) == 1:
            return [one(span[0])]
        buf = buffer(end - start)
        view = memoryview(buf)[: end - start]
        try:
            try:
                path.read(Extent(start, end - start), view)
            except (DualbladeError, OSError):
                return [one(r) for r in span]  # find out which extents are unreadable
            out: _Result = []
            for r in span:
                part = view[r.offset - start : r.offset - start + r.size]
                out.append((r, _verdict(r, part), None))
                part.release()
            return out
        finally:
            view.release()

    try:
        recs = sorted(recs, key=lambda r: r.offset)
        _run_spans(
            _spans(recs, lambda _: 0),
            read_span,
            report,
            workers,
            progress,
            done if done is not None else [0],
            total or len(recs),
        )
    finally:
        path.close()
        for buf in buffers:
            buf.close()


def _verify_pagecache(
    slabs: SlabSpace,
    recs: list[ObjectRecord],
    report: FsckReport,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    done: list[int] | None = None,
    total: int = 0,
) -> None:
    """Read page-cache objects from their slab files with plain buffered ``pread``.

    Plain reads, not a :class:`PageCachePath`: opening one would create missing slabs and take
    the files read-write. Each slab is opened once, ``O_RDONLY``. Records were bounds-checked
    against the files' sizes, so a short read here means the file changed under fsck.
    Neighbours in one slab are read together, ``workers`` reads at a time.
    """
    assert slabs.slab_bytes is not None  # records reach here only after locate() succeeded
    slab_bytes = slabs.slab_bytes
    fds: dict[int, int] = {}
    lock = threading.Lock()

    def fd_of(index: int) -> int:
        with lock:
            if index not in fds:
                fds[index] = os.open(slabs.directory / slab_name(index), os.O_RDONLY | os.O_CLOEXEC)
            return fds[index]

    def read_span(span: list[ObjectRecord]) -> _Result:
        index, inner = divmod(span[0].offset, slab_bytes)
        end = max(r.offset + r.length for r in span)
        data = bytearray(min(end, (index + 1) * slab_bytes) - span[0].offset)
        try:
            _pread_full(fd_of(index), memoryview(data), inner)
        except OSError as err:
            file = slabs.directory / slab_name(index)
            if len(span) == 1:
                return [(span[0], None, f"({file}): {err}")]
            out: _Result = []
            for r in span:  # which ones are unreadable (a slab shorter than its records)
                one = bytearray(r.size)
                try:
                    _pread_full(fd_of(index), memoryview(one), r.offset - index * slab_bytes)
                except OSError as e:
                    out.append((r, None, f"({file}): {e}"))
                else:
                    out.append((r, _verdict(r, one), None))
            return out
        view = memoryview(data)
        out = []
        for r in span:
            part = view[r.offset - span[0].offset : r.offset - span[0].offset + r.size]
            out.append((r, _verdict(r, part), None))
            part.release()
        view.release()
        return out

    try:
        recs = sorted(recs, key=lambda r: r.offset)
        _run_spans(
            _spans(recs, lambda off: off // slab_bytes),
            read_span,
            report,
            workers,
            progress,
            done if done is not None else [0],
            total or len(recs),
        )
    finally:
        for fd in fds.values():
            os.close(fd)


def _pread_full(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``fd`` at ``offset``; a premature end of file is an OSError."""
    done = 0
    while done < view.nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += got
