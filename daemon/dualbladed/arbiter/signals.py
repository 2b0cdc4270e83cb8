"""Memory signals for the residency arbiter: host memory, the daemon's own cgroup, PSI.

What is read, and why:

- ``MemAvailable`` (psutil, i.e. /proc/meminfo): the kernel's estimate of what can be allocated
  without swapping, clean page cache included.
- The daemon's OWN memory cgroup, found from ``/proc/self/cgroup``: on cgroup v1 the line whose
  controller list contains ``memory``; on v2 the unified ``0::`` line. A host may be hybrid
  (v1 memory controller plus a v2 tree without it); the v1 memory line wins then, because that is
  where the limit is enforced. The mount point comes from ``/proc/self/mountinfo``, with the
  mount's root stripped from the cgroup path (containers bind-mount a sub-tree); the classic
  ``/sys/fs/cgroup[/memory|/unified]`` locations are the fallback. Page cache written by the
  daemon is charged to this cgroup, so this is the limit that bounds the page-cache path.

  - v1: ``memory.limit_in_bytes`` (values >= 2**60 mean unlimited), lowered by
    ``hierarchical_memory_limit`` from ``memory.stat`` (an ancestor's limit);
    ``memory.usage_in_bytes``; cache = ``total_active_file + total_inactive_file`` from
    ``memory.stat`` (else ``total_cache - total_shmem``).
  - v2: the smallest ``memory.max`` / ``memory.high`` ("max" = unlimited) of the cgroup and
    its visible ancestors (``high`` is where the kernel starts reclaiming and throttling, so it
    is the effective ceiling); ``memory.current``; cache = ``active_file + inactive_file``
    from ``memory.stat`` (else ``file - shmem``).

  Why the file LRU lists and not ``cache``/``file``: those include shmem -- tmpfs and the
  sessions' memfd arenas, which are charged here too -- and shmem cannot be reclaimed without
  swap. Counting a 362 MiB arena as reclaimable once inflated the budget by exactly that much.

- PSI memory pressure (avg10 of ``some`` and ``full``, percent): from the cgroup's
  ``memory.pressure`` on v2, otherwise ``/proc/pressure/memory``.

- File refaults (cumulative pages, the arbiter turns them into a rate): a refault is a file page
  read back in shortly after the kernel evicted it, i.e. the page cache is too small for what is
  being used -- the signal that caching more KV evicts pages someone needs (the model's mmapped
  weights, or our own KV). v2: ``workingset_refault_file`` in the cgroup's ``memory.stat``
  (``workingset_refault`` before 5.9). v1: recent kernels (5.8+) print the same counters in
  memory.stat (``total_workingset_refault_file``, hierarchical); older v1 kernels have no refault
  counter at all, only ``total_pgmajfault`` (major faults: mmapped weights read back from disk)
  and ``memory.failcnt`` (times usage hit the limit), so the reader falls back to the host's
  ``/proc/vmstat`` ``workingset_refault_file`` / ``workingset_refault`` (every cgroup's refaults:
  coarser, never blind). ``major_faults`` is read too (cgroup ``pgmajfault``, else vmstat).

- ``mem_free``: memory nobody uses at all, ``min(MemFree, limit - usage)``; unlike
  ``effective_available`` it does not count anyone's reclaimable cache, so the arbiter may take
  it without evicting a page someone needs.

Effective available memory: ``min(MemAvailable, limit - usage + cache)``: usage counts the page
cache charged to the cgroup and that cache is reclaimable, so it is added back.

Every reader tolerates missing or unreadable files (``None`` fields, never an exception): a
container may hide /sys, a kernel may lack PSI. ``root`` re-bases every path, so tests build a
fake ``/proc`` and ``/sys`` under ``tmp_path``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

#: cgroup v1 reports "no limit" as PAGE_COUNTER_MAX rounded to pages (~2**63); anything this
#: large is no limit at all.
V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class MemorySignals:
    timestamp: float  # time.monotonic() of the read
    mem_total: int
    mem_available: int
    cgroup_version: int | None  # 1, 2, or None (no memory cgroup found)
    cgroup_limit: int | None  # None when unlimited or unknown
    cgroup_usage: int | None
    cgroup_cache: int | None  # page cache charged to the cgroup
    psi_some_avg10: float | None  # percent
    psi_full_avg10: float | None
    #: cumulative file refaults in pages (cgroup if it counts them, else host); None: unknown
    refault_pages: int | None = None
    #: cumulative major faults (cgroup if it counts them, else host); None: unknown
    major_faults: int | None = None
    #: MemFree, lowered to ``limit - usage`` in a limited cgroup; None: unknown
    mem_free: int | None = None
    #: where refault_pages comes from: "cgroup" or "host" (None when unknown)
    refault_scope: str | None = None

    @property
    def free(self) -> int | None:
        """Memory nobody uses (no cache at all), ``min(MemFree, limit - usage)``."""
        if self.mem_free is None:
            return None
        free = self.mem_free
        if self.cgroup_limit is not None and self.cgroup_usage is not None:
            free = min(free, self.cgroup_limit - self.cgroup_usage)
        return max(0, free)

    @property
    def effective_available(self) -> int:
        """``min(MemAvailable, limit - usage + cache)``, never negative."""
        avail = self.mem_available
        if self.cgroup_limit is not None and self.cgroup_usage is not None:
            headroom = self.cgroup_limit - self.cgroup_usage + (self.cgroup_cache or 0)
            avail = min(avail, headroom)
        return max(0, avail)


@dataclass(frozen=True)
class CgroupLocation:
    version: int  # 1 or 2
    directory: Path


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_psi(text: str | None) -> tuple[float | None, float | None]:
    """(some avg10, full avg10) from a pressure file's text."""
    some = full = None
    for line in (text or "").splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        try:
            value = float(fields["avg10"])
        except (KeyError, ValueError):
            continue
        if kind == "some":
            some = value
        elif kind == "full":
            full = value
    return some, full


def _file_cache(stat: dict[str, int], prefix: str) -> int | None:
    """Reclaimable page cache from a memory.stat: the file LRU lists (shmem excluded).

    ``prefix`` is "total_" for v1's hierarchical counters, "" for v2. Older kernels without the
    LRU counters fall back to cache minus shmem.
    """
    active, inactive = stat.get(prefix + "active_file"), stat.get(prefix + "inactive_file")
    if active is not None and inactive is not None:
        return active + inactive
    cache = stat.get(prefix + "cache", stat.get("cache")) if prefix else stat.get("file")
    if cache is None:
        return None
    return max(0, cache - stat.get(prefix + "shmem", stat.get("shmem", 0)))


class SignalReader:
    """Reads :class:`MemorySignals`; cheap enough to call every arbiter tick (a few small files).

    The cgroup is located once, at construction (a daemon does not change cgroup while running;
    call :meth:`relocate` if it is moved).
    """

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = Path(root)
        self._proc = self.root / "proc"
        self.cgroup: CgroupLocation | None = None
        self._mem_free: int | None = None
        self.relocate()

    def relocate(self) -> None:
        self.cgroup = self._find_cgroup()
        log.info("memory cgroup: %s", self.cgroup)

    # ----------------------------------------------------------- discovery

    def _find_cgroup(self) -> CgroupLocation | None:
        v1_path = v2_path = None
        for line in (_read_text(self._proc / "self" / "cgroup") or "").splitlines():
            hid, sep, rest = line.partition(":")
            controllers, sep2, cg_path = rest.partition(":")
            if not sep or not sep2:
                continue
            if hid == "0" and controllers == "":
                v2_path = cg_path
            elif "memory" in controllers.split(","):
                v1_path = cg_path
        mounts = self._cgroup_mounts()
        if v1_path is not None:
            for mount_root, point in mounts.get("v1-memory", []) + [
                ("/", self.root / "sys/fs/cgroup/memory")
            ]:
                found = self._resolve(point, mount_root, v1_path, "memory.usage_in_bytes")
                if found is not None:
                    return CgroupLocation(1, found)
        if v2_path is not None:
            for mount_root, point in mounts.get("v2", []) + [
                ("/", self.root / "sys/fs/cgroup"),
                ("/", self.root / "sys/fs/cgroup/unified"),
            ]:
                found = self._resolve(point, mount_root, v2_path, "cgroup.controllers")
                if found is not None:
                    return CgroupLocation(2, found)
        return None

    def _cgroup_mounts(self) -> dict[str, list[tuple[str, Path]]]:
        """{"v1-memory" | "v2": [(mount root, mount point under self.root)]} from mountinfo."""
        out: dict[str, list[tuple[str, Path]]] = {}
        for line in (_read_text(self._proc / "self" / "mountinfo") or "").splitlines():
            left, sep, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if not sep or len(fields) < 5 or len(rfields) < 3:
                continue
            mount_root, point = fields[3], self.root / fields[4].lstrip("/")
            if rfields[0] == "cgroup2":
                out.setdefault("v2", []).append((mount_root, point))
            elif rfields[0] == "cgroup" and "memory" in rfields[2].split(","):
                out.setdefault("v1-memory", []).append((mount_root, point))
        return out

    @staticmethod
    def _resolve(point: Path, mount_root: str, cg_path: str, marker: str) -> Path | None:
        """The cgroup's directory under ``point``; the nearest existing ancestor if hidden."""
        rel = cg_path
        if mount_root != "/" and (rel == mount_root or rel.startswith(mount_root + "/")):
            rel = rel[len(mount_root) :]
        candidate = point / rel.lstrip("/")
        while True:
            if (candidate / marker).exists():
                return candidate
            if candidate == point or point not in candidate.parents:
                return None
            candidate = candidate.parent

    # --------------------------------------------------------------- reading

    def read(self) -> MemorySignals:
        total, available = self._meminfo()
        limit = usage = cache = None
        version = None
        psi_file = self._proc / "pressure" / "memory"
        cg = self.cgroup
        if cg is not None:
            version = cg.version
            stat = _read_stat(cg.directory / "memory.stat")
            if cg.version == 1:
                limit = _min_limit(
                    _read_int(cg.directory / "memory.limit_in_bytes"),
                    stat.get("hierarchical_memory_limit"),
                )
                usage = _read_int(cg.directory / "memory.usage_in_bytes")
                cache = _file_cache(stat, "total_")
            else:
                limit = self._v2_limit(cg.directory)
                usage = _read_int(cg.directory / "memory.current")
                cache = _file_cache(stat, "")
                if (cg.directory / "memory.pressure").exists():
                    psi_file = cg.directory / "memory.pressure"
        some, full = parse_psi(_read_text(psi_file))
        refaults, majfaults, scope = self._faults(cg, stat if cg is not None else {})
        return MemorySignals(
            timestamp=time.monotonic(),
            mem_total=total,
            mem_available=available,
            cgroup_version=version,
            cgroup_limit=limit,
            cgroup_usage=usage,
            cgroup_cache=cache,
            psi_some_avg10=some,
            psi_full_avg10=full,
            refault_pages=refaults,
            major_faults=majfaults,
            mem_free=self._mem_free,
            refault_scope=scope,
        )

    def _faults(
        self, cg: CgroupLocation | None, stat: dict[str, int]
    ) -> tuple[int | None, int | None, str | None]:
        """(refault pages, major faults, scope) from the cgroup's memory.stat, else vmstat."""
        prefix = "total_" if cg is not None and cg.version == 1 else ""
        refaults = majfaults = None
        scope = None
        if cg is not None:
            refaults = _first(
                stat, prefix + "workingset_refault_file", prefix + "workingset_refault"
            )
            majfaults = stat.get(prefix + "pgmajfault")
            scope = "cgroup" if refaults is not None else None
        if refaults is None or majfaults is None:
            vm = _read_stat(self._proc / "vmstat")
            if refaults is None:
                refaults = _first(vm, "workingset_refault_file", "workingset_refault")
                scope = "host" if refaults is not None else None
            if majfaults is None:
                majfaults = vm.get("pgmajfault")
        return refaults, majfaults, scope

    @property
    def psi_path(self) -> Path | None:
        """The pressure file :class:`~dualbladed.arbiter.psi.PsiWatcher` should watch."""
        cg = self.cgroup
        if cg is not None and cg.version == 2 and (cg.directory / "memory.pressure").exists():
            return cg.directory / "memory.pressure"
        path = self._proc / "pressure" / "memory"
        return path if path.exists() else None

    def _v2_limit(self, directory: Path) -> int | None:
        limit = None
        d = directory
        while True:
            for name in ("memory.max", "memory.high"):
                limit = _min_limit(limit, _read_int(d / name))
            if not (d.parent / "cgroup.controllers").exists() or d.parent == d:
                return limit
            d = d.parent

    def _meminfo(self) -> tuple[int, int]:
        """(MemTotal, MemAvailable); MemFree is kept in ``self._mem_free``."""
        if self.root == Path("/"):
            vm = psutil.virtual_memory()
            self._mem_free = int(vm.free)
            return int(vm.total), int(vm.available)
        info = {}
        for line in (_read_text(self._proc / "meminfo") or "").splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                info[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
        total = info.get("MemTotal", 0)
        self._mem_free = info.get("MemFree")
        return total, info.get("MemAvailable", info.get("MemFree", 0))


def _first(stat: dict[str, int], *keys: str) -> int | None:
    return next((stat[k] for k in keys if k in stat), None)


def _min_limit(a: int | None, b: int | None) -> int | None:
    vals = [v for v in (a, b) if v is not None and v < V1_UNLIMITED]
    return min(vals) if vals else None


# --------------------------------------------------------------------------- read throughput


@dataclass(frozen=True)
class PathReads:
    """Cumulative reads of one residency path, as :class:`ReadMeter` counted them."""

    bytes: int = 0
    ops: int = 0
    #: wall seconds during which at least one read of this path was in flight (the union of
    #: the reads' intervals: eight concurrent reads of 1 s count 1 s, not 8)
    busy_s: float = 0.0

    def minus(self, older: PathReads) -> PathReads:
        return PathReads(self.bytes - older.bytes, self.ops - older.ops, self.busy_s - older.busy_s)

    @property
    def gbps(self) -> float | None:
        return self.bytes / self.busy_s / 1e9 if self.busy_s > 0 else None


class ReadMeter:
    """The daemon times its own I/O, per path and direction: bytes over busy wall time.

    The narrow hook: whoever reads a path's extent (the store) calls
    ``with meter.reading(path_name, nbytes): <the read>``, or :meth:`record` with the read's
    start and end on ``time.monotonic()``; writes likewise with :meth:`writing` (placement of
    write bursts picks the path that is faster for *writes* now: under a memory limit a
    page-cache write pays for reclaim and dirty throttling, a direct one does not). Busy time is
    the union of the intervals of one direction, so the throughput is what the path delivered
    while it was in use, at whatever queue depth the executor ran it. Thread-safe (a counter
    update under a lock per I/O).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # (op, path) -> [bytes, ops, busy_s]; op is "read" or "write"
        self._totals: dict[tuple[str, str], list[float]] = {}
        self._active: dict[tuple[str, str], int] = {}
        self._since: dict[tuple[str, str], float] = {}
        self._moves = threading.local()  # .on: this thread runs one of the arbiter's moves

    def reading(self, path: str, nbytes: int) -> _Timed:
        # A move's read of its source counts as "move-read", not "read": the policy promotes
        # only while clients read the direct path, and a promotion's own read must not look
        # like one (promotions then fed on themselves: an idle daemon moved 550 objects/s).
        op = "move-read" if getattr(self._moves, "on", False) else "read"
        return _Timed(self, (op, path), nbytes)

    def moving(self) -> _Moving:
        """``with meter.moving(): <a relocation>``: reads on this thread are the move's own."""
        return _Moving(self._moves)

    def writing(self, path: str, nbytes: int) -> _Timed:
        return _Timed(self, ("write", path), nbytes)

    def record(self, path: str, nbytes: int, start: float, end: float, *, op: str = "read") -> None:
        """One finished I/O (for callers that time it themselves; not merged with others)."""
        with self._lock:
            row = self._totals.setdefault((op, path), [0, 0, 0.0])
            row[0] += nbytes
            row[1] += 1
            row[2] += max(0.0, end - start)

    def _begin(self, key: tuple[str, str]) -> None:
        now = self._clock()
        with self._lock:
            if self._active.get(key, 0) == 0:
                self._since[key] = now
            self._active[key] = self._active.get(key, 0) + 1

    def _end(self, key: tuple[str, str], nbytes: int) -> None:
        now = self._clock()
        with self._lock:
            row = self._totals.setdefault(key, [0, 0, 0.0])
            row[0] += nbytes
            row[1] += 1 if nbytes else 0
            self._active[key] -= 1
            if self._active[key] == 0:
                row[2] += now - self._since.pop(key)

    def snapshot(self, op: str = "read") -> dict[str, PathReads]:
        """Cumulative counters per path for ``op`` ("read" or "write"; busy time of I/O still
        in flight not included)."""
        with self._lock:
            return {
                p: PathReads(int(b), int(n), s)
                for (o, p), (b, n, s) in self._totals.items()
                if o == op
            }


class _Timed:
    """``with meter.reading(...)``: one I/O's interval; its bytes count only if it succeeded.

    A class, not ``@contextmanager``: it wraps every put's and get's I/O, and two nested
    generator context managers cost more than the lock updates they carry.
    """

    __slots__ = ("_meter", "_key", "_nbytes")

    def __init__(self, meter: ReadMeter, key: tuple[str, str], nbytes: int) -> None:
        self._meter = meter
        self._key = key
        self._nbytes = nbytes

    def __enter__(self) -> None:
        self._meter._begin(self._key)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._meter._end(self._key, 0 if exc_type is not None else self._nbytes)


class _Moving:
    __slots__ = ("_flag",)

    def __init__(self, flag: threading.local) -> None:
        self._flag = flag

    def __enter__(self) -> None:
        self._flag.on = True

    def __exit__(self, *exc: object) -> None:
        self._flag.on = False


class MeteredPath:
    """A residency path whose ``read`` and ``write`` (and ``write_many``) go through a
    :class:`ReadMeter`; all else delegates.

    The server wraps the store's paths with this so the arbiter sees per-path read and write
    throughput without the store knowing. I/O issued by migrations is counted too (it is I/O
    of the path as well; the feedback subtracts migrated bytes where that matters).
    """

    def __init__(self, path: Any, name: str, meter: ReadMeter) -> None:
        self._path = path
        self._name = name
        self._meter = meter

    def read(self, extent: Any, dst: memoryview) -> None:
        with self._meter.reading(self._name, dst.nbytes):
            self._path.read(extent, dst)

    def write(self, extent: Any, src: memoryview) -> None:
        with self._meter.writing(self._name, src.nbytes):
            self._path.write(extent, src)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._path, name)
        if name == "write_many":  # a batch of puts is a write burst too: time it as one write

            def write_many(items: Any) -> Any:
                nbytes = sum(data.nbytes for _, data in items)
                with self._meter.writing(self._name, nbytes):
                    return attr(items)

            return write_many
        return attr
