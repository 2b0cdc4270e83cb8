"""The residency arbiter under real memory pressure: the real daemon inside a real memory cgroup.

A child memory cgroup is made under this process's own (v1: ``memory.limit_in_bytes``; v2:
``memory.max``), the daemon is started inside it (the test process joins the group just for the
spawn, so the daemon's SignalReader finds the group at start-up, then leaves), objects are
written until they sit on the page cache, and the limit is lowered under the daemon's feet:
the kernel reclaims, the daemon's signals show the smaller headroom, and the arbiter must demote
to the direct path while every read stays byte-correct. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from dualblade import Client
from dualblade_tools.daemonproc import DaemonProcess

MiB = 1 << 20
RESERVE = 48 * MiB
TARGET_BUDGET = 16 * MiB
OBJECTS, SIZE = 32, 2 * MiB


@dataclass
class Cgroup:
    version: int
    directory: Path
    parent: Path

    def write(self, name: str, value: str) -> None:
        (self.directory / name).write_text(value)

    def read_int(self, name: str) -> int:
        return int((self.directory / name).read_text().split()[0])

    def stat(self) -> dict[str, int]:
        out = {}
        for line in (self.directory / "memory.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def usage_and_cache(self) -> tuple[int, int]:
        if self.version == 1:
            st = self.stat()
            return self.read_int("memory.usage_in_bytes"), st.get("total_cache", st["cache"])
        return self.read_int("memory.current"), self.stat()["file"]

    def set_limit(self, limit: int) -> None:
        self.write("memory.limit_in_bytes" if self.version == 1 else "memory.max", str(limit))

    def join(self, pid: int) -> None:
        self.write("cgroup.procs", str(pid))

    def leave(self, pid: int) -> None:
        (self.parent / "cgroup.procs").write_text(str(pid))


def _own_memory_cgroup() -> tuple[int, Path] | tuple[None, str]:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if (d / "memory.limit_in_bytes").exists():
                return 1, d
            return None, f"cgroup v1 memory directory {d} is not visible"
    for line in lines:
        if line.startswith("0::"):
            d = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            if (d / "cgroup.controllers").exists():
                return 2, d
    return None, "no memory cgroup (neither a v1 memory controller nor a v2 tree) is mounted"


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    version, where = _own_memory_cgroup()
    if version is None:
        pytest.skip(str(where))
    parent = Path(where)
    child = parent / f"dualblade-test-{os.getpid()}"
    try:
        child.mkdir()
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup under {parent}: {e.strerror}")
    cg = Cgroup(version, child, parent)
    try:
        limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
        if not (child / limit_file).exists():
            pytest.skip(f"the memory controller is not enabled for children of {parent} (v2)")
        try:
            cg.set_limit(1 << 30)
        except OSError as e:
            pytest.skip(f"cannot set {limit_file} in {child}: {e.strerror}")
        yield cg
    finally:
        for _ in range(50):  # move every process back to the parent, then remove the group
            pids = (child / "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(OSError):  # it exited meanwhile
                    cg.leave(int(pid))
            try:
                child.rmdir()
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.1)


def payload(i: int) -> bytes:
    block = xxhash.xxh3_128_digest(i.to_bytes(8, "little"))
    return block * (SIZE // len(block))


def residency(c: Client) -> dict:
    """The Residency RPC's typed status, in dbctl's JSON shape."""
    from dualblade.v1 import dualblade_pb2 as pb
    from dualblade_tools.dbctl import residency_dict

    return residency_dict(c.admin_call("Residency", pb.ResidencyRequest()).status)


def dbctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dualblade_tools.dbctl", "--socket", str(daemon.socket), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_lowering_the_cgroup_limit_demotes_to_direct_and_reads_stay_correct(
    cgroup: Cgroup, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: moving processes between memory cgroups")
    config = tmp_path / "dualbladed.toml"
    config.write_text(
        "[residency]\n"
        'mode = "adaptive"\n'
        f"reserve_bytes = {RESERVE}\n"
        f'hysteresis_bytes = "4MiB"\n'
        f'migration_bytes_per_s = "64MiB"\n'
        f'slab_bytes = "16MiB"\n'
        f'pagecache_max_bytes = "256MiB"\n'
    )
    daemon = DaemonProcess(tmp_path / "d", namespace_size="256MiB", config=config)
    cgroup.join(os.getpid())  # the daemon starts inside the group (its SignalReader looks once)
    try:
        daemon.start()
    finally:
        cgroup.leave(os.getpid())
    try:
        assert str(daemon.proc.pid) in (cgroup.directory / "cgroup.procs").read_text().split()
        with Client.connect(daemon.socket, tenant="cg", arena_bytes=4 * SIZE) as c:
            snap = residency(c)
            assert snap["signals"]["cgroup_version"] == cgroup.version
            assert snap["signals"]["cgroup_limit"] == 1 << 30
            data = {b"kv/%02d" % i: payload(i) for i in range(OBJECTS)}
            for key, value in data.items():
                c.put(key, value)  # written direct (policy, 3.)
            # read until the arbiter has promoted all of it: this test starts from all cached
            deadline = time.monotonic() + 30
            while residency(c)["tenants"] and (
                next(iter(residency(c)["tenants"].values()))["pagecache"] < OBJECTS * SIZE
            ):
                assert time.monotonic() < deadline, json.dumps(residency(c), indent=1)[:3000]
                for key in data:
                    c.get(key)
                time.sleep(0.1)
            before = json.loads(dbctl(daemon, "--json", "residency").stdout)
            (tenant,) = before["tenants"]
            assert before["tenants"][tenant]["pagecache"] == OBJECTS * SIZE  # all in the cache

            stop, errors, reads = threading.Event(), [], [0]

            def reader() -> None:
                with Client.connect(daemon.socket, tenant="cg", arena_bytes=4 * SIZE) as r:
                    while not stop.is_set():
                        for key, value in data.items():
                            got = r.get(key)
                            if xxhash.xxh3_64_intdigest(got) != xxhash.xxh3_64_intdigest(value):
                                errors.append(key)
                            reads[0] += 1

            thread = threading.Thread(target=reader)
            thread.start()
            try:
                # Squeeze: leave the daemon its non-cache memory + the reserve + a small budget.
                for attempt in range(10):
                    usage, cache = cgroup.usage_and_cache()
                    limit = usage - cache + RESERVE + TARGET_BUDGET
                    try:
                        cgroup.set_limit(limit - limit % 4096)
                        break
                    except OSError as e:  # EBUSY: the kernel could not reclaim enough yet
                        if e.errno != errno.EBUSY or attempt == 9:
                            raise
                        os.sync()
                deadline = time.monotonic() + 15
                while True:
                    snap = residency(c)
                    t = snap["tenants"][tenant]
                    if t["pagecache"] <= TARGET_BUDGET + 8 * MiB:
                        break
                    assert time.monotonic() < deadline, json.dumps(snap, indent=1)[:3000]
                    time.sleep(0.2)
            finally:
                stop.set()
                thread.join()
            assert errors == [] and reads[0] > 0

            after = json.loads(dbctl(daemon, "--json", "residency").stdout)
            t = after["tenants"][tenant]
            assert t["direct"] >= OBJECTS * SIZE - TARGET_BUDGET - 8 * MiB
            assert t["pagecache"] + t["direct"] == OBJECTS * SIZE
            assert after["budget"]["total"] < before["budget"]["total"]
            assert after["signals"]["cgroup_limit"] < 1 << 30
            moves = after["migrations"]  # the promotions above, then the demotions
            assert moves and all(m["ok"] for m in moves)
            assert ("pagecache", "direct") in {(m["from"], m["to"]) for m in moves}
            assert after["totals"]["demoted_bytes"] == t["direct"]
            for key, value in data.items():  # and after the migration
                assert c.get(key) == value
            table = dbctl(daemon, "residency")
            assert table.returncode == 0, table.stderr
            assert "pagecache -> direct" in table.stdout and tenant in table.stdout
    finally:
        code = daemon.terminate()
        assert code == 0, daemon.log_tail()
