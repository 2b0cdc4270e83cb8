"""Offline consistency check of a stopped daemon's namespace and state directory.

What is checked (in the spirit of ``ceph-bluestore-tool fsck --deep``), and where:

- the superblock: at least one valid copy (a fallback to copy B is reported as a warning);
- the metadata: SQLite ``integrity_check``, and that it is bound to this namespace's UUID;
- the page-cache slab files (:mod:`.slabs`): each a non-zero multiple of the page-cache
  alignment, and the slab size inferred from them when not given;
- every committed extent and layer object's row (:mod:`.layout`): path, alignment, bounds,
  no overlaps, chunk crc counts;
- with ``verify_data`` (the default), every object's bytes (:mod:`.verify`): read back by a pool
  of threads, neighbouring extents together, and checked like the store checks them on get.

This module holds the entry point, :func:`fsck`, which runs the checks in that order; the
problems go into a :class:`~.report.FsckReport`, never raised.

fsck is read-only on the data: the namespace is opened the way the daemon opens it (O_EXCL for
block devices, an flock for files), so fsck refuses to run against a namespace a live daemon
holds, and slab files are opened ``O_RDONLY`` (a missing slab is reported, never recreated).
"""

from __future__ import annotations

import os
from pathlib import Path

from dualbladed.errors import DualbladeError
from dualbladed.namespace import open_namespace
from dualbladed.namespace.abstract import Namespace
from dualbladed.namespace.superblock import load_superblock
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.store.fsck.layout import Geometry, check_layout
from dualbladed.store.fsck.report import FsckReport, Progress
from dualbladed.store.fsck.slabs import PAGECACHE_ALIGNMENT, SlabSpace, scan_slabs
from dualbladed.store.fsck.verify import DEFAULT_WORKERS, verify_direct, verify_pagecache
from dualbladed.store.meta import MetaStore
from dualbladed.store.recovery import META_FILE, PAGECACHE_DIR

__all__ = [
    "DEFAULT_WORKERS",
    "META_FILE",
    "PAGECACHE_ALIGNMENT",
    "PAGECACHE_DIR",
    "FsckReport",
    "Progress",
    "SlabSpace",
    "fsck",
    "scan_slabs",
]


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
        slab_bytes: the page-cache slab size; default: inferred from the slab files (see
            :mod:`.slabs`).
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

    readable = check_layout(
        records, Geometry(sb.block_size, sb.data_start, ns.capacity, slabs), report
    )
    total = sum(len(v) for v in readable.values())
    done = [0]
    if verify_data and readable.get(DIRECT):
        verify_direct(
            ns,
            readable[DIRECT],
            report,
            workers=workers,
            progress=progress,
            done=done,
            total=total,
        )
    if verify_data and readable.get(PAGECACHE):
        verify_pagecache(
            slabs,
            readable[PAGECACHE],
            report,
            workers=workers,
            progress=progress,
            done=done,
            total=total,
        )
