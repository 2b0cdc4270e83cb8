"""Data verification: every readable object's bytes read back and checked like the store does.

Bytes are read from wherever they live -- the namespace through the direct path's O_DIRECT
engine, slab files with ordinary buffered ``pread`` -- and their xxh3-64 must equal the committed
checksum, computed exactly as the store computes it on put and verifies it on get
(``xxh3_64_intdigest`` of the payload); a layer object's chunks must each match their committed
crc32c. Neighbouring extents are read together (up to ``SPAN_BYTES`` per read) by a pool of
``workers`` threads, so a namespace of a million small objects costs a few thousand large reads,
not a million small ones; ``progress`` reports how far verification got.

Why page-cache objects get the same treatment as direct ones: their bytes are on disk in the
state directory and survive restarts just like direct extents, so a torn or bit-rotted slab is
as real a loss as a bad LBA. Checking only their layout let a corrupted slab pass as ``ok``.

Read-only: slab files are opened ``O_RDONLY``, never through a ``PageCachePath`` (which would
create missing slabs and take the files read-write).
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import xxhash
from crc32c import crc32c

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import DualbladeError
from dualbladed.namespace.abstract import Namespace
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.engine import aligned_buffer
from dualbladed.paths.pagecache import slab_name
from dualbladed.store.fsck.report import FsckReport, Progress, record_name
from dualbladed.store.fsck.slabs import SlabSpace
from dualbladed.store.layers import LAYER_CHUNK_BYTES
from dualbladed.store.meta import ObjectRecord

#: data-verification threads by default: enough to keep an NVMe queue busy, few enough for
#: a small box (reads of up to ``SPAN_BYTES`` each)
DEFAULT_WORKERS = min(8, 2 * (os.cpu_count() or 1))


def verdict(rec: ObjectRecord, data: memoryview | bytearray) -> str | None:
    """The store's own check (``ObjectStore._read_verified``) on a worker thread: xxh3-64 of
    the payload bytes; for a layer object, crc32c of each chunk (``dualbladed.store.layers``).
    None when the bytes verify, else the error to report."""
    if rec.capacity:
        for index, stored in enumerate(rec.chunk_crcs):
            start = index * LAYER_CHUNK_BYTES
            actual = crc32c(data[start : start + LAYER_CHUNK_BYTES])
            if actual != stored:
                return (
                    f"{record_name(rec)}: layer chunk {index} crc32c mismatch on path {rec.path} "
                    f"at [{rec.offset + start}, +{min(LAYER_CHUNK_BYTES, rec.size - start)}) "
                    f"(stored {stored:#010x}, read {actual:#010x})"
                )
        return None
    actual = xxhash.xxh3_64_intdigest(data)
    if actual != rec.checksum:
        return (
            f"{record_name(rec)}: checksum mismatch on path {rec.path} at [{rec.offset}, "
            f"+{rec.length}) (stored {rec.checksum:#018x}, read {actual:#018x})"
        )
    return None


#: the largest read that covers several neighbouring extents at once
SPAN_BYTES = 4 << 20
#: extents further apart than this start a new read (reading the gap would cost more)
SPAN_GAP = 64 << 10


def group_spans(
    recs: list[ObjectRecord], same_unit: Callable[[int], int]
) -> list[list[ObjectRecord]]:
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


def run_spans(
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
                    report.error(f"{record_name(rec)}: read failed on path {rec.path}: {err}")
                elif bad is not None:
                    report.error(bad)
                else:
                    report.verified += 1
            done[0] += len(results)
            if progress is not None:
                progress(done[0], total)


def verify_direct(
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
            return rec, verdict(rec, view), None
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
                out.append((r, verdict(r, part), None))
                part.release()
            return out
        finally:
            view.release()

    try:
        recs = sorted(recs, key=lambda r: r.offset)
        run_spans(
            group_spans(recs, lambda _: 0),
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


def verify_pagecache(
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
            pread_full(fd_of(index), memoryview(data), inner)
        except OSError as err:
            file = slabs.directory / slab_name(index)
            if len(span) == 1:
                return [(span[0], None, f"({file}): {err}")]
            out: _Result = []
            for r in span:  # which ones are unreadable (a slab shorter than its records)
                one = bytearray(r.size)
                try:
                    pread_full(fd_of(index), memoryview(one), r.offset - index * slab_bytes)
                except OSError as e:
                    out.append((r, None, f"({file}): {e}"))
                else:
                    out.append((r, verdict(r, one), None))
            return out
        view = memoryview(data)
        out = []
        for r in span:
            part = view[r.offset - span[0].offset : r.offset - span[0].offset + r.size]
            out.append((r, verdict(r, part), None))
            part.release()
        view.release()
        return out

    try:
        recs = sorted(recs, key=lambda r: r.offset)
        run_spans(
            group_spans(recs, lambda off: off // slab_bytes),
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


def pread_full(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``fd`` at ``offset``; a premature end of file is an OSError."""
    done = 0
    while done < view.nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += got
