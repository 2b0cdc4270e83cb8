"""Early write-back on the page-cache path: start writing a range's dirty pages now, not later.

When. Off for plain writes unless ``threshold`` is set (the daemon's
``residency.pagecache_writeback_bytes``); always on for the arbiter's promotions, which call
:meth:`EarlyWriteback.start` through ``PageCachePath.start_writeback``: a promotion plan writes up
to 512 MiB a second into the page cache, and at ratio 1 of the residency bench the weights
refaulted at 515-662 MiB/s in the second after two of them, the feedback cut the cap by half and
decode ran at 450-511 ms against 317-325 with the promoted pages' write-back started at once. A
write of at least ``threshold`` bytes is followed by ``sync_file_range(SYNC_FILE_RANGE_WRITE)``
over the range it wrote: the kernel starts writing those pages to the disk now and the call
returns without waiting for the I/O.

Why. Under a cgroup v1 memory limit there is no per-group dirty throttling, so a prefill burst
fills the group with dirty pages (the whole 1 GiB of KV in the residency bench, while the host
stayed far below the global background threshold); reclaim at the limit can then only evict
clean pages -- the weights -- or stall on write-back it starts itself. Started early, the KV's
pages turn clean in the background and stay cached, so reclaim may drop them too (measured: dirty
pages stayed under 32 MiB instead of 1 GiB; on its own it changed no decode or prefill time,
docs/residency.md "Follow-up 3", hence off by default for plain writes).

What it is not: a durability step. It neither waits nor flushes metadata or the drive's cache,
so ``PageCachePath.flush`` still ``fdatasync``s every slab written since the last flush, and a
write is acknowledged exactly as before. Small writes (a decode step's one-token appends) are left
to the normal flusher. A failure to start the write-back is logged once and otherwise ignored
(the bytes are in the page cache either way; an I/O error in the write-back itself is reported
by the next ``fdatasync``, as for any buffered write). Where libc has no ``sync_file_range`` the
kernel's flusher decides, and ``threshold`` reads 0.
"""

from __future__ import annotations

import logging

from dualbladed.paths.libc import WritebackStarter

# the page-cache path's logger: these warnings are about its slabs
log = logging.getLogger("dualbladed.paths.pagecache")

__all__ = ["EarlyWriteback"]


class EarlyWriteback:
    """Starts write-back for writes of at least ``threshold`` bytes (0: none) and on request.

    ``starter`` is the libc call, built on first use (None before that, or where libc lacks it).
    Thread-safe without a lock: building the starter twice in a race is harmless, and the
    warn-once flag may at worst warn twice.
    """

    def __init__(self, threshold: int = 0) -> None:
        self.starter: WritebackStarter | None = None
        self._unavailable = False  # libc has no sync_file_range
        self._warned = False
        self.threshold = max(0, threshold)
        if self.threshold and self._get() is None:
            self.threshold = 0

    def after_write(self, fd: int, name: str, offset: int, length: int) -> None:
        """A write of ``length`` bytes at ``offset`` of ``fd`` (``name``, for the log) landed."""
        if self.threshold and length >= self.threshold:
            self.start(fd, name, offset, length)

    def start(self, fd: int, name: str, offset: int, length: int) -> None:
        """Start writing ``[offset, offset + length)`` of ``fd`` to the disk; do not wait.

        Never raises: the write it follows has succeeded whatever happens here."""
        starter = self._get()
        if starter is None:
            return
        try:
            starter.start(fd, offset, length)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning(
                    "page-cache path: starting write-back of %s [%d, +%d) failed (%s); "
                    "further failures are not logged",
                    name,
                    offset,
                    length,
                    e,
                )

    def _get(self) -> WritebackStarter | None:
        if self.starter is None and not self._unavailable:
            try:
                self.starter = WritebackStarter()
            except (OSError, AttributeError):
                self._unavailable = True
        return self.starter
