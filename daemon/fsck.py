"""Offline consistency check of a stopped daemon's namespace and state directory.

What is checked (in the spirit of ``ceph-bluestore-tool fsck --deep``):

- the superblock: at least one valid copy (a fallback to copy B is reported as a warning);
- the metadata: SQLite ``integrity_check``, and that it is bound to this namespace's UUID;
- every committed extent: a known residency path, offset and length aligned to the path's
  alignment, ``size <= length``, inside the path's bounds (direct: between the superblock area
  and the capacity);
- no two extents of one path overlap;
- with ``verify_data`` (the default), every object's bytes are read back and their xxh3-64 must
  equal the committed checksum.

The namespace is opened the way the daemon opens it (O_EXCL for block devices, an flock for
files), so fsck refuses to run against a namespace a live daemon holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from dualbladed.alloc.abstract import Extent
from dualbladed.errors import DualbladeError
from dualbladed.meta.store import MetaStore, ObjectRecord
from dualbladed.namespace import open_namespace
from dualbladed.namespace.superblock import load_superblock
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.engine import aligned_buffer

META_FILE = "meta.sqlite3"


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


def fsck(namespace: str, state_dir: str, *, verify_data: bool = True) -> FsckReport:
    report = FsckReport(namespace=namespace, state_dir=state_dir)
    meta_path = Path(state_dir) / META_FILE
    if not meta_path.exists():
        report.error(f"no metadata database at {meta_path}")
        return report
    try:
        ns = open_namespace(namespace)
    except DualbladeError as err:
        report.error(f"cannot open namespace: {err}")
        return report
    try:
        _check(ns, meta_path, report, verify_data)
    finally:
        ns.close()
    return report


def _check(ns, meta_path: Path, report: FsckReport, verify_data: bool) -> None:  # noqa: ANN001
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
        records = meta.records()
    report.objects = len(records)
    report.bytes = sum(r.size for r in records)

    by_path: dict[str, list[ObjectRecord]] = {}
    for rec in records:
        by_path.setdefault(rec.path, []).append(rec)
        _check_record(rec, sb.block_size, sb.data_start, ns.capacity, report)
    for path, recs in by_path.items():
        recs.sort(key=lambda r: r.offset)
        for a, b in zip(recs, recs[1:]):
            if a.offset + a.length > b.offset:
                report.error(
                    f"overlap on path {path}: {_name(a)} [{a.offset}, {a.offset + a.length}) and "
                    f"{_name(b)} [{b.offset}, {b.offset + b.length})"
                )
    if verify_data and DIRECT in by_path:
        _verify_direct(ns, by_path[DIRECT], report)
    if verify_data and PAGECACHE in by_path:
        report.warnings.append(
            f"{len(by_path[PAGECACHE])} page-cache objects checked for layout only "
            "(their slab files are verified by the daemon on read)"
        )


def _name(rec: ObjectRecord) -> str:
    return f"{rec.tenant}:{rec.key!r}"


def _check_record(
    rec: ObjectRecord, block: int, data_start: int, capacity: int, report: FsckReport
) -> None:
    if rec.path not in (DIRECT, PAGECACHE):
        report.error(f"{_name(rec)}: unknown residency path {rec.path!r}")
    if rec.offset % block or rec.length % block:
        report.error(
            f"{_name(rec)}: extent [{rec.offset}, +{rec.length}) not aligned to {block} bytes"
        )
    if not 0 < rec.size <= rec.length:
        report.error(f"{_name(rec)}: size {rec.size} outside (0, extent length {rec.length}]")
    if rec.path == DIRECT and (rec.offset < data_start or rec.offset + rec.length > capacity):
        report.error(
            f"{_name(rec)}: extent [{rec.offset}, {rec.offset + rec.length}) outside the data "
            f"area [{data_start}, {capacity})"
        )


def _verify_direct(ns, recs: list[ObjectRecord], report: FsckReport) -> None:  # noqa: ANN001
    path = DirectPath(ns, queue_depth=4)
    try:
        for rec in recs:
            if rec.offset + rec.length > ns.capacity or rec.offset % ns.block_size:
                continue  # already reported; do not read outside the device
            buf = aligned_buffer(max(rec.length, os.sysconf("SC_PAGE_SIZE")))
            try:
                view = memoryview(buf)[: rec.size]
                path.read(Extent(rec.offset, rec.length), view)
                actual = xxhash.xxh3_64_intdigest(view)
                view.release()
            finally:
                buf.close()
            if actual != rec.checksum:
                report.error(
                    f"{_name(rec)}: checksum mismatch (stored {rec.checksum:#018x}, "
                    f"read {actual:#018x})"
                )
            else:
                report.verified += 1
    finally:
        path.close()
