"""Layout checks of the committed extent table, record by record and path by path.

Every committed extent must have a known residency path, offset and length aligned to *that
path's* alignment (direct: the namespace block size; page cache: the daemon's ``IO_ALIGNMENT``),
``size <= length``, and lie inside the path's bounds -- direct: between the superblock area and
the capacity; page cache: inside one existing slab file (:meth:`.slabs.SlabSpace.locate`). No two
extents of one path may overlap. Layer objects (``capacity > 0``) must satisfy
``0 <= size <= capacity <= length`` and carry one chunk crc per 1 MiB chunk of ``[0, size)``.

Only records that pass every check are handed on to data verification (:mod:`.verify`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.store.fsck.report import FsckReport, record_name
from dualbladed.store.fsck.slabs import PAGECACHE_ALIGNMENT, SlabSpace
from dualbladed.store.layers import chunk_count
from dualbladed.store.meta import ObjectRecord


@dataclass(frozen=True)
class Geometry:
    """What the per-record checks need to know about both paths."""

    block: int
    data_start: int
    capacity: int
    slabs: SlabSpace


def check_layout(
    records: list[ObjectRecord], geometry: Geometry, report: FsckReport
) -> dict[str, list[ObjectRecord]]:
    """Report every record's layout problems, then overlaps per path; return the records whose
    bytes are safe to read, by path."""
    by_path: dict[str, list[ObjectRecord]] = {}
    readable: dict[str, list[ObjectRecord]] = {}
    for rec in records:
        by_path.setdefault(rec.path, []).append(rec)
        if check_record(rec, geometry, report):
            readable.setdefault(rec.path, []).append(rec)
    for path, recs in by_path.items():
        recs.sort(key=lambda r: r.offset)
        for a, b in zip(recs, recs[1:]):
            if a.offset + a.length > b.offset:
                report.error(
                    f"overlap on path {path}: {record_name(a)} [{a.offset}, "
                    f"{a.offset + a.length}) and {record_name(b)} [{b.offset}, "
                    f"{b.offset + b.length})"
                )
    return readable


def check_record(rec: ObjectRecord, geo: Geometry, report: FsckReport) -> bool:
    """Report every layout problem of one record; True when its bytes are safe to read.

    A record that fails any check is not read: its extent may point outside the device or a
    slab, and its checksum result would only repeat the layout error.
    """
    if rec.path not in (DIRECT, PAGECACHE):
        report.error(f"{record_name(rec)}: unknown residency path {rec.path!r}")
        return False
    good = True
    align = geo.block if rec.path == DIRECT else PAGECACHE_ALIGNMENT
    if rec.offset % align or rec.length % align:
        report.error(
            f"{record_name(rec)}: extent [{rec.offset}, +{rec.length}) on path {rec.path} "
            f"not aligned to {align} bytes"
        )
        good = False
    if rec.capacity:  # a layer object: size <= capacity <= extent, one crc per chunk
        good = check_layer(rec, report) and good
    elif not 0 < rec.size <= rec.length:
        report.error(f"{record_name(rec)}: size {rec.size} outside (0, extent length {rec.length}]")
        good = False
    if rec.path == DIRECT:
        if rec.offset < geo.data_start or rec.offset + rec.length > geo.capacity:
            report.error(
                f"{record_name(rec)}: extent [{rec.offset}, {rec.offset + rec.length}) outside the "
                f"data area [{geo.data_start}, {geo.capacity})"
            )
            good = False
    else:
        where = geo.slabs.locate(rec.offset, rec.length)
        if isinstance(where, str):
            report.error(f"{record_name(rec)}: {where}")
            good = False
    return good


def check_layer(rec: ObjectRecord, report: FsckReport) -> bool:
    """A layer object's row: ``0 <= size <= capacity <= extent length`` and exactly one chunk
    crc per :data:`~dualbladed.store.layers.LAYER_CHUNK_BYTES` of ``[0, size)``."""
    good = True
    if not 0 <= rec.size <= rec.capacity <= rec.length:
        report.error(
            f"{record_name(rec)}: layer object size {rec.size}, capacity {rec.capacity} and extent "
            f"length {rec.length} break 0 <= size <= capacity <= length"
        )
        good = False
    if len(rec.chunk_crcs) != chunk_count(rec.size):
        report.error(
            f"{record_name(rec)}: layer object of {rec.size} bytes has {len(rec.chunk_crcs)} chunk "
            f"crcs, expected {chunk_count(rec.size)}"
        )
        good = False
    return good
