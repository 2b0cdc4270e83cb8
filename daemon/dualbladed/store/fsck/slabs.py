"""The page-cache path's slab files as fsck finds them (``<state_dir>/pagecache/slab-NNNN.dat``).

Each slab must be a non-zero multiple of the page-cache alignment, as
:class:`~dualbladed.paths.pagecache.PageCachePath` requires before it will open them, and a
page-cache extent is addressed the way the path addresses it
(``offset = slab_index * slab_bytes + offset_in_slab``).

Slab size. ``slab_bytes`` is a daemon setting, not recorded on disk, yet it is what maps a
virtual offset to a slab. Unless the caller passes it, fsck infers it from the slab files: every
slab but the last is created exactly ``slab_bytes`` long, and none may be longer, so the largest
slab file *is* the slab size whenever there are two or more slabs. With a single (possibly
short) slab every valid extent lies inside slab 0, where the mapping does not depend on
``slab_bytes``, so the inference cannot turn a good extent into a bad one there either. Reading
the files rather than the config also follows what the committed offsets were written against.

Slab files are only listed and stat'ed here (a missing slab is reported, never recreated).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from dualbladed.config import IO_ALIGNMENT
from dualbladed.paths.pagecache import _SLAB_RE, slab_name  # one definition of the names
from dualbladed.store.fsck.report import FsckReport

#: The page-cache path's alignment in the daemon (``PageCachePath(alignment=IO_ALIGNMENT)``).
PAGECACHE_ALIGNMENT = IO_ALIGNMENT


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
