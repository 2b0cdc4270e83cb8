"""A throw-away memory cgroup for benchmarks: create, limit, join, read, remove.

The residency benchmark emulates an edge box by putting the daemon and its one client in a single
memory cgroup, so that their anonymous memory, the shared arena (shmem), the mmapped weights and
every page-cache page they fault in are charged to one limit, and the kernel reclaims within it.

Both hierarchies are handled, picked at creation:

* v1 (this VM): ``/sys/fs/cgroup/memory/<name>/`` with ``memory.limit_in_bytes``,
  ``memory.stat`` (``cache``, ``rss``, ``shmem``, ``mapped_file``; ``total_*`` include children)
  and ``memory.max_usage_in_bytes``;
* v2 (a unified mount with the memory controller): ``<mount>/<name>/`` with ``memory.max``,
  ``memory.stat`` (``file``, ``anon``, ``shmem``, ``file_mapped``) and ``memory.peak``.

Joining happens in the child (the harness stays outside): `MemoryCgroup.join_command` prefixes a
command with a shell that writes its own pid to ``cgroup.procs`` and then ``exec``s, so every byte
the process ever allocates is charged inside. Removal moves any survivors to the parent first
(v1 cannot remove a cgroup with tasks; charged page cache is reparented by the kernel).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupUnavailable", "MemoryCgroup", "MemoryStat", "drop_caches", "find_memory_root"]

_V1_ROOT = Path("/sys/fs/cgroup/memory")
_V2_CANDIDATES = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


class CgroupUnavailable(RuntimeError):
    """No writable memory cgroup hierarchy here (not root, or no memory controller)."""


@dataclass(frozen=True)
class MemoryStat:
    """One reading of the cgroup's memory, normalised across v1 and v2 (bytes)."""

    limit: int
    usage: int
    peak: int
    cache: int  # page cache incl. shmem (v1 "cache", v2 "file")
    shmem: int
    anon: int  # v1 "rss", v2 "anon"
    mapped_file: int


def find_memory_root() -> tuple[int, Path]:
    """``(version, root)`` of a memory hierarchy we can create children in."""
    if os.geteuid() != 0:
        raise CgroupUnavailable("creating a memory cgroup needs root")
    if (_V1_ROOT / "memory.limit_in_bytes").exists() and os.access(_V1_ROOT, os.W_OK):
        return 1, _V1_ROOT
    for root in _V2_CANDIDATES:
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            return 2, root
    raise CgroupUnavailable("no cgroup v1 memory controller and no v2 hierarchy with 'memory'")


class MemoryCgroup:
    """A child memory cgroup; use as a context manager so it is always removed."""

    def __init__(self, name: str, limit_bytes: int | None = None) -> None:
        self.version, root = find_memory_root()
        self.path = root / name
        if self.version == 2:
            subtree = root / "cgroup.subtree_control"
            if "memory" not in subtree.read_text().split():
                subtree.write_text("+memory")
        self.path.mkdir(exist_ok=False)
        if limit_bytes is not None:
            self.set_limit(limit_bytes)

    # -- control -------------------------------------------------------------------------------

    def set_limit(self, limit_bytes: int) -> None:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        (self.path / name).write_text(f"{int(limit_bytes)}\n")

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def join_command(self, command: list[str]) -> list[str]:
        """``command`` run by a shell that first moves itself into this cgroup."""
        script = f'echo $$ > "{self.procs_file}" && exec "$@"'
        return ["/bin/sh", "-c", script, "cgroup-join", *command]

    def add(self, pid: int) -> None:
        self.procs_file.write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        return [int(line) for line in self.procs_file.read_text().split()]

    # -- reading -------------------------------------------------------------------------------

    def stat(self) -> MemoryStat:
        raw: dict[str, int] = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            raw[key] = int(value)
        if self.version == 1:
            return MemoryStat(
                limit=_read_int(self.path / "memory.limit_in_bytes"),
                usage=_read_int(self.path / "memory.usage_in_bytes"),
                peak=_read_int(self.path / "memory.max_usage_in_bytes"),
                cache=raw.get("total_cache", raw.get("cache", 0)),
                shmem=raw.get("total_shmem", raw.get("shmem", 0)),
                anon=raw.get("total_rss", raw.get("rss", 0)),
                mapped_file=raw.get("total_mapped_file", raw.get("mapped_file", 0)),
            )
        peak_file = self.path / "memory.peak"
        usage = _read_int(self.path / "memory.current")
        return MemoryStat(
            limit=_read_int(self.path / "memory.max"),
            usage=usage,
            peak=_read_int(peak_file) if peak_file.exists() else usage,
            cache=raw.get("file", 0),
            shmem=raw.get("shmem", 0),
            anon=raw.get("anon", 0),
            mapped_file=raw.get("file_mapped", 0),
        )

    # -- removal -------------------------------------------------------------------------------

    def remove(self, timeout: float = 10.0) -> None:
        """Move survivors to the parent and remove the directory (idempotent)."""
        if not self.path.exists():
            return
        parent_procs = self.path.parent / "cgroup.procs"
        deadline = time.monotonic() + timeout
        while True:
            try:
                for pid in self.pids():
                    with contextlib.suppress(OSError):  # it may exit meanwhile
                        parent_procs.write_text(f"{pid}\n")
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _read_int(path: Path) -> int:
    text = path.read_text().strip()
    return (1 << 63) - 1 if text == "max" else int(text)


def drop_caches() -> bool:
    """Write back dirty pages and drop the page cache (root); False if not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True
