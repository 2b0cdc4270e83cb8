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


#: ``read(offset, view)``: fill ``view`` with the stored bytes at ``offset`` (raises
#: ``DualbladeError`` or ``OSError``, whose text becomes the record's "read failed" error)
ReadAt = Callable[[int, memoryview], None]


def verify_spans(
    recs: list[ObjectRecord],
    report: FsckReport,
    *,
    read: ReadAt,
    buffer: Callable[[int], memoryview],
    unit: Callable[[int], int],
    workers: int,
    progress: Progress | None,
    done: list[int] | None,
    total: int,
) -> None:
    """Verify ``recs`` wherever they live: neighbours (:func:`group_spans`, same ``unit``) in
    one ``read`` of up to ``SPAN_BYTES``, ``workers`` reads at a time (:func:`run_spans`).

    ``buffer(nbytes)`` gives a view of at least ``nbytes`` for the calling thread to read into
    (the direct path wants it aligned). When a span's read fails, each of its records is read
    alone (its whole extent) to find out which are unreadable.
    """

    def one(rec: ObjectRecord) -> tuple[ObjectRecord, str | None, str | None]:
        view = buffer(rec.length)[: rec.length]
        try:
            read(rec.offset, view)
            return rec, verdict(rec, view[: rec.size]), None
        except (DualbladeError, OSError) as err:
            return rec, None, str(err)
        finally:
            view.release()

    def read_span(span: list[ObjectRecord]) -> _Result:
        if len(span) == 1:
            return [one(span[0])]
        start = span[0].offset
        end = max(r.offset + r.length for r in span)
        view = buffer(end - start)[: end - start]
        try:
            try:
                read(start, view)
            except (DualbladeError, OSError):
                return [one(r) for r in span]
            out: _Result = []
            for r in span:
                part = view[r.offset - start : r.offset - start + r.size]
                out.append((r, verdict(r, part), None))
                part.release()
            return out
        finally:
            view.release()

    recs = sorted(recs, key=lambda r: r.offset)
    run_spans(
        group_spans(recs, unit),
        read_span,
        report,
        workers,
        progress,
        done if done is not None else [0],
        total or len(recs),
    )


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
    """Read direct objects through the daemon's own O_DIRECT path (records already in bounds)
    into one aligned buffer per thread."""
    path = DirectPath(ns, queue_depth=4)
    local = threading.local()
    buffers: list[mmap.mmap] = []
    lock = threading.Lock()

    def buffer(nbytes: int) -> memoryview:
        buf = getattr(local, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = aligned_buffer(max(nbytes, SPAN_BYTES))
            local.buf = buf
            with lock:
                buffers.append(buf)
        return memoryview(buf)

    def read(offset: int, view: memoryview) -> None:
        path.read(Extent(offset, view.nbytes), view)

    try:
        verify_spans(
            recs,
            report,
            read=read,
            buffer=buffer,
            unit=lambda _: 0,
            workers=workers,
            progress=progress,
            done=done,
            total=total,
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
    against the files' sizes (no extent crosses a slab), so a short read here means the file
    changed under fsck. Only neighbours in one slab are read together.
    """
    assert slabs.slab_bytes is not None  # records reach here only after locate() succeeded
    slab_bytes = slabs.slab_bytes
    fds: dict[int, int] = {}
    lock = threading.Lock()

    def read(offset: int, view: memoryview) -> None:
        index, inner = divmod(offset, slab_bytes)
        try:
            with lock:
                if index not in fds:
                    path = slabs.directory / slab_name(index)
                    fds[index] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                fd = fds[index]
            pread_full(fd, view, inner)
        except OSError as err:
            raise OSError(f"({slabs.directory / slab_name(index)}): {err}") from err

    try:
        verify_spans(
            recs,
            report,
            read=read,
            buffer=lambda nbytes: memoryview(bytearray(nbytes)),
            unit=lambda off: off // slab_bytes,
            workers=workers,
            progress=progress,
            done=done,
            total=total,
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
