"""Signal readers on fake cgroup v1 / v2 trees under tmp_path, and on this machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psutil

from dualbladed.arbiter.signals import MemorySignals, SignalReader, parse_psi

GiB = 1 << 30
MiB = 1 << 20

MEMINFO = "MemTotal:       16777216 kB\nMemFree:         1048576 kB\nMemAvailable:    8388608 kB\n"
PSI = (
    "some avg10=1.50 avg60=0.80 avg300=0.10 total=12345\n"
    "full avg10=0.25 avg60=0.10 avg300=0.00 total=678\n"
)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fake_v1(root: Path, *, limit: int, mount_root: str = "/") -> Path:
    _write(root, "proc/meminfo", MEMINFO)
    _write(root, "proc/pressure/memory", PSI)
    _write(root, "proc/self/cgroup", "5:cpu,cpuacct:/\n4:memory:/svc/dualbladed\n0::/\n")
    _write(
        root,
        "proc/self/mountinfo",
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        f"35 31 0:32 {mount_root} /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    )
    rel = "/svc/dualbladed"
    if mount_root != "/":
        rel = rel[len(mount_root) :]
    cg = root / "sys/fs/cgroup/memory" / rel.lstrip("/")
    _write(cg, "memory.limit_in_bytes", f"{limit}\n")
    _write(cg, "memory.usage_in_bytes", f"{3 * GiB}\n")
    _write(
        cg,
        "memory.stat",
        f"cache {1 * GiB}\nrss {2 * GiB}\ntotal_cache {2 * GiB}\n"
        f"hierarchical_memory_limit {9223372036854771712}\n",
    )
    _write(root, "sys/fs/cgroup/unified/cgroup.controllers", "")
    return cg


def test_v1_limit_usage_cache_and_psi(tmp_path: Path) -> None:
    _fake_v1(tmp_path, limit=4 * GiB)
    s = SignalReader(tmp_path).read()
    assert s.cgroup_version == 1
    assert (s.cgroup_limit, s.cgroup_usage, s.cgroup_cache) == (4 * GiB, 3 * GiB, 2 * GiB)
    assert (s.mem_total, s.mem_available) == (16 * GiB, 8 * GiB)
    assert (s.psi_some_avg10, s.psi_full_avg10) == (1.5, 0.25)
    assert s.effective_available == 4 * GiB - 3 * GiB + 2 * GiB  # below MemAvailable


def test_v1_huge_limit_means_unlimited(tmp_path: Path) -> None:
    _fake_v1(tmp_path, limit=9223372036854771712)
    s = SignalReader(tmp_path).read()
    assert s.cgroup_limit is None
    assert s.effective_available == 8 * GiB


def test_v1_hierarchical_limit_of_an_ancestor_applies(tmp_path: Path) -> None:
    cg = _fake_v1(tmp_path, limit=9223372036854771712)
    _write(cg, "memory.stat", f"total_cache {1 * GiB}\nhierarchical_memory_limit {5 * GiB}\n")
    assert SignalReader(tmp_path).read().cgroup_limit == 5 * GiB


def test_v1_container_mount_root_is_stripped(tmp_path: Path) -> None:
    _fake_v1(tmp_path, limit=6 * GiB, mount_root="/svc")
    reader = SignalReader(tmp_path)
    assert reader.cgroup is not None
    assert reader.cgroup.directory == tmp_path / "sys/fs/cgroup/memory/dualbladed"
    assert reader.read().cgroup_limit == 6 * GiB


def _fake_v2(root: Path) -> Path:
    _write(root, "proc/meminfo", MEMINFO)
    _write(root, "proc/pressure/memory", PSI)
    _write(root, "proc/self/cgroup", "0::/system.slice/dualbladed.service\n")
    _write(
        root,
        "proc/self/mountinfo",
        "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
    )
    base = root / "sys/fs/cgroup"
    _write(base, "cgroup.controllers", "cpu memory io\n")
    _write(base, "system.slice/cgroup.controllers", "memory\n")
    _write(base, "system.slice/memory.max", f"{3 * GiB}\n")
    cg = base / "system.slice/dualbladed.service"
    _write(cg, "cgroup.controllers", "memory\n")
    _write(cg, "memory.max", "max\n")
    _write(cg, "memory.high", f"{6 * GiB}\n")
    _write(cg, "memory.current", f"{2 * GiB}\n")
    _write(cg, "memory.stat", f"anon {1 * GiB}\nfile {768 * MiB}\nfile_dirty 0\n")
    _write(cg, "memory.pressure", "some avg10=7.00 avg60=1 avg300=0 total=9\n")
    return cg


def test_v2_limit_from_ancestors_usage_file_cache_and_cgroup_psi(tmp_path: Path) -> None:
    cg = _fake_v2(tmp_path)
    reader = SignalReader(tmp_path)
    s = reader.read()
    assert s.cgroup_version == 2
    assert s.cgroup_limit == 3 * GiB  # the slice's memory.max beats the service's high
    assert (s.cgroup_usage, s.cgroup_cache) == (2 * GiB, 768 * MiB)
    assert (s.psi_some_avg10, s.psi_full_avg10) == (7.0, None)  # the cgroup's own file
    assert reader.psi_path == cg / "memory.pressure"
    assert s.effective_available == 3 * GiB - 2 * GiB + 768 * MiB


def test_v2_unlimited(tmp_path: Path) -> None:
    _fake_v2(tmp_path)
    (tmp_path / "sys/fs/cgroup/system.slice/memory.max").write_text("max\n")
    (tmp_path / "sys/fs/cgroup/system.slice/dualbladed.service/memory.high").write_text("max\n")
    s = SignalReader(tmp_path).read()
    assert s.cgroup_limit is None and s.effective_available == 8 * GiB


def test_missing_files_are_tolerated(tmp_path: Path) -> None:
    _write(tmp_path, "proc/meminfo", MEMINFO)
    s = SignalReader(tmp_path).read()
    assert s.cgroup_version is None and s.cgroup_limit is None and s.psi_some_avg10 is None
    assert s.effective_available == 8 * GiB
    empty = SignalReader(tmp_path / "nothing").read()  # not even /proc
    assert empty.mem_available == 0 and empty.cgroup_version is None


def test_effective_available_never_negative() -> None:
    s = MemorySignals(0.0, 8 * GiB, 4 * GiB, 2, 1 * GiB, 2 * GiB, 0, None, None)
    assert s.effective_available == 0
    assert dataclasses.replace(s, cgroup_cache=3 * GiB).effective_available == 2 * GiB


def test_parse_psi_ignores_garbage() -> None:
    assert parse_psi("some avg10=abc\nfull\n\n") == (None, None)
    assert parse_psi(None) == (None, None)


def test_real_machine_values_are_plausible() -> None:
    reader = SignalReader()
    s = reader.read()
    vm = psutil.virtual_memory()
    assert s.mem_total == vm.total
    assert 0 < s.mem_available <= s.mem_total
    assert 0 <= s.effective_available <= s.mem_available
    if s.cgroup_version is not None:
        assert s.cgroup_usage is not None and s.cgroup_usage > 0
        assert s.cgroup_limit is None or s.cgroup_limit > 0
    if reader.psi_path is not None:
        assert s.psi_some_avg10 is not None and 0.0 <= s.psi_some_avg10 <= 100.0


def test_shmem_is_not_counted_as_reclaimable_cache(tmp_path: Path) -> None:
    """memfd arenas and tmpfs are charged as cache/file but cannot be reclaimed without swap."""
    cg = _fake_v1(tmp_path, limit=4 * GiB)
    _write(
        cg,
        "memory.stat",
        f"total_cache {2 * GiB}\ntotal_shmem {512 * MiB}\n"
        f"total_active_file {1 * GiB}\ntotal_inactive_file {512 * MiB}\n",
    )
    assert SignalReader(tmp_path).read().cgroup_cache == 1536 * MiB  # the file LRUs
    _write(cg, "memory.stat", f"total_cache {2 * GiB}\ntotal_shmem {512 * MiB}\n")
    assert SignalReader(tmp_path).read().cgroup_cache == 1536 * MiB  # cache - shmem

    cg2 = _fake_v2(tmp_path / "v2")
    _write(
        cg2,
        "memory.stat",
        f"file {768 * MiB}\nshmem {256 * MiB}\nactive_file {300 * MiB}\ninactive_file {212 * MiB}\n",
    )
    assert SignalReader(tmp_path / "v2").read().cgroup_cache == 512 * MiB


def test_refaults_from_the_cgroup_else_the_host(tmp_path: Path) -> None:
    cg = _fake_v1(tmp_path, limit=4 * GiB)
    _write(tmp_path, "proc/vmstat", "workingset_refault_file 999\npgmajfault 77\n")
    s = SignalReader(tmp_path).read()  # this v1 memory.stat has no refault counter
    assert (s.refault_pages, s.refault_scope, s.major_faults) == (999, "host", 77)
    _write(
        cg,
        "memory.stat",
        f"total_cache {2 * GiB}\ntotal_workingset_refault_file 42\ntotal_pgmajfault 5\n",
    )
    s = SignalReader(tmp_path).read()  # v1 on 5.8+ kernels: hierarchical refaults
    assert (s.refault_pages, s.refault_scope, s.major_faults) == (42, "cgroup", 5)
    # MemFree (1 GiB) lowered to the cgroup's limit - usage (4 - 3 GiB)
    assert s.mem_free == 1 * GiB and s.free == 1 * GiB


def test_v2_refaults_and_old_kernel_names(tmp_path: Path) -> None:
    cg = _fake_v2(tmp_path)
    _write(cg, "memory.stat", "file 0\nworkingset_refault 12\npgmajfault 3\n")  # before 5.9
    s = SignalReader(tmp_path).read()
    assert (s.refault_pages, s.refault_scope, s.major_faults) == (12, "cgroup", 3)


def test_real_machine_has_a_refault_counter() -> None:
    s = SignalReader().read()
    if not Path("/proc/vmstat").exists():
        return
    assert s.refault_pages is not None and s.refault_pages >= 0
    assert s.free is not None and 0 <= s.free <= s.mem_total
