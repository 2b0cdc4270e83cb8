"""File pages a tenant's processes have mapped but not yet faulted in: free memory that will
not stay free.

Why. A model runtime maps its weights (llama.cpp, safetensors' mmap, the residency bench) and
faults them in during its first forward pass, which is the prefill, while that prefill writes
its KV. Free memory measured when the KV burst begins still holds the weights' future pages.
A burst placed into a share of it is then squeezed out by the weights (or squeezes them out):
at budget ratio 2 of the residency bench a burst that took 0.3 of free memory met refaults at
749 MiB/s, and at ratio 4 it placed 470 MB into a room the weights then shrank to 240-300 MB
(docs/residency.md). Free memory alone cannot tell "free" from "about to be the weights'"; the
daemon knows its sessions' pids (SO_PEERCRED), so it looks at what they have mapped.

What counts. A file-backed, non-executable mapping of at least ``min_bytes`` (a model's
weights are far larger; shared libraries' data segments are smaller): its size less its
resident set is *pending*. Executable mappings are code, faulted in as it runs, never all.
Shared memory counts too (a session's arena is a memfd, 362 MiB in the residency bench): its
untouched pages become memory as the client stages through them, so free memory they will
take is not free either.

How it is read. ``/proc/<pid>/maps`` (~0.5 ms for a torch process's ~350 mappings) names the
candidates; only where one exists is ``/proc/<pid>/smaps`` read (~5 ms) for their ``Rss``.
``Rss`` counts pages mapped into that process, not pages in the page cache: a cached page the
process has not touched yet counts as pending. That errs toward less page cache for the burst,
i.e. toward the direct path, the behaviour without this signal. ``mincore`` on the file would
be exact but costs ~0.1 ms per MiB mapped (130 ms for the bench's 1.3 GB of weights) on the
thread of the put that starts the burst. A file mapped by several processes counts once (by
device and inode), at its largest mapping and its best residency. A process that has exited or
cannot be read counts nothing (no error: the signal is a hint, and placement must not fail).

Not a library: psutil's ``memory_maps()`` parses the same smaps but for every mapping, with no
way to skip a process that has no candidate, and the placement path pays for it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

MiB = 1 << 20

#: mappings smaller than this are not a model's weights (libraries' data segments are ~MiB)
MIN_MAPPING_BYTES = 16 * MiB
#: one reading serves a tenant's placements for this long: a prefill's first few puts
#: (one reading, before its burst begins) rather than one per put
TTL_S = 0.5

_FileKey = tuple[str, int]  # (device "maj:min", inode)


def _candidates(maps: str, min_bytes: int) -> dict[str, tuple[_FileKey, int]]:
    """``address range -> (file key, size)`` of the mappings that count (module docstring)."""
    out: dict[str, tuple[_FileKey, int]] = {}
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "x" in fields[1] or fields[4] == "0":
            continue  # anonymous, special ([heap], [stack]) or executable
        start, _, end = fields[0].partition("-")
        size = int(end, 16) - int(start, 16)
        if size >= min_bytes:
            out[fields[0]] = ((fields[3], int(fields[4])), size)
    return out


def _rss(smaps: str, address_range: str) -> int:
    """The ``Rss`` of the mapping at ``address_range`` in smaps text (0 if it is gone)."""
    at = smaps.find(address_range + " ")
    if at < 0:
        return 0
    rss = smaps.find("\nRss:", at)
    if rss < 0:
        return 0
    value = smaps[rss + 5 : smaps.find("\n", rss + 5)].split()
    return int(value[0]) * 1024 if value else 0


def pending_mapped_bytes(
    pids: Iterable[int], *, proc: Path = Path("/proc"), min_bytes: int = MIN_MAPPING_BYTES
) -> int:
    """Bytes of large file mappings of ``pids`` not yet resident (module docstring)."""
    mapped: dict[_FileKey, int] = {}
    resident: dict[_FileKey, int] = {}
    for pid in set(pids):
        try:
            candidates = _candidates((proc / str(pid) / "maps").read_text(), min_bytes)
            if not candidates:
                continue
            smaps = (proc / str(pid) / "smaps").read_text()
        except OSError:  # exited, or not readable: counts nothing
            continue
        per_file: dict[_FileKey, list[int]] = {}
        for address_range, (key, size) in candidates.items():
            row = per_file.setdefault(key, [0, 0])
            row[0] += size
            row[1] += _rss(smaps, address_range)
        for key, (size, rss) in per_file.items():
            mapped[key] = max(mapped.get(key, 0), size)
            resident[key] = max(resident.get(key, 0), rss)
    return sum(max(0, size - resident[key]) for key, size in mapped.items())


class MappedPending:
    """:func:`pending_mapped_bytes` of one tenant's processes, or of every session's, read at
    most once per ``ttl_s``.

    ``session_pids`` names the live sessions as ``(tenant, pid)`` pairs (the session registry's,
    wired in by the server; none until then). Called on the put threads (one tenant's, where a
    burst may begin) and on the arbiter's (everyone's, each tick), never under the arbiter's
    lock: the readings are file reads. The cache's own lock is a leaf, not held while reading
    (two threads may read at once; the later reading wins, both are fresh).
    """

    def __init__(
        self,
        session_pids: Callable[[], Iterable[tuple[str, int]]] | None = None,
        *,
        ttl_s: float = TTL_S,
        reader: Callable[[Iterable[int]], int] = pending_mapped_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_pids: Callable[[], Iterable[tuple[str, int]]] = session_pids or tuple
        self._ttl_s = ttl_s
        self._reader = reader
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, int]] = {}

    def tenant_pids(self, tenant: str) -> list[int]:
        return [pid for t, pid in self.session_pids() if t == tenant]

    def bytes_for(self, tenant: str) -> int:
        """The tenant's processes' pending bytes."""
        return self._cached(tenant, lambda: self.tenant_pids(tenant))

    def claimed(self, stored: Mapping[str, int]) -> int:
        """What the live tenants' pending pages take from the room every tenant's page cache
        grows into: each tenant's at most the bytes it ``stored`` with the daemon. So mapping a
        huge file it never reads cannot take the others' cache: to hold back X bytes of room
        a tenant must store X bytes within its quotas, which would compete for the room anyway.
        """
        return sum(min(p, stored.get(t, 0)) for t, p in self.by_tenant().items())

    def by_tenant(self) -> dict[str, int]:
        """:meth:`bytes_for` of every tenant with a live session, from one listing of the
        sessions (a file two tenants map counts for each: :meth:`claimed` caps each)."""
        pids: dict[str, list[int]] = {}
        for tenant, pid in self.session_pids():
            pids.setdefault(tenant, []).append(pid)
        return {t: self._cached(t, functools.partial(tuple, p)) for t, p in pids.items()}

    def _cached(self, key: str, pids: Callable[[], Iterable[int]]) -> int:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        value = self._reader(pids())
        with self._lock:
            self._cache[key] = (now, value)
            for stale in [t for t, (at, _) in self._cache.items() if now - at > 60 * self._ttl_s]:
                del self._cache[stale]
        return value
