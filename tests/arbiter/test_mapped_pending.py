"""dualbladed.arbiter.mapped: file pages a tenant's processes mapped but have not read yet.

Real mappings of a real file in this process and in a child, read through the real /proc; only
the TTL cache's clock and reader are scripted.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
from pathlib import Path

import pytest

from dualblade import Client
from dualbladed.arbiter.mapped import MappedPending, pending_mapped_bytes
from dualbladed.config.load import load_config
from dualbladed.server import Daemon

MiB = 1 << 20
SIZE = 64 * MiB


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    with path.open("wb") as f:
        f.truncate(SIZE)  # sparse: reading it costs no disk
    return path


def _map(path: Path, length: int = SIZE) -> mmap.mmap:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, length, access=mmap.ACCESS_COPY)  # as the residency bench maps
    finally:
        os.close(fd)


def _touch(m: mmap.mmap, upto: int) -> None:
    for off in range(0, upto, mmap.PAGESIZE):
        m[off]


def test_a_mapping_is_pending_until_its_pages_are_read(weights: Path) -> None:
    before = pending_mapped_bytes([os.getpid()])  # whatever else this process maps
    m = _map(weights)
    try:
        assert pending_mapped_bytes([os.getpid()]) - before == SIZE
        _touch(m, SIZE // 2)
        assert pending_mapped_bytes([os.getpid()]) - before == SIZE // 2
        _touch(m, SIZE)
        assert pending_mapped_bytes([os.getpid()]) - before == 0
    finally:
        m.close()


def test_small_and_executable_mappings_do_not_count(weights: Path) -> None:
    before = pending_mapped_bytes([os.getpid()])
    small = _map(weights, 4 * MiB)  # below MIN_MAPPING_BYTES: a library's data, not weights
    try:
        assert pending_mapped_bytes([os.getpid()]) == before
        assert pending_mapped_bytes([os.getpid()], min_bytes=MiB) - before >= 4 * MiB
    finally:
        small.close()
    fd = os.open(weights, os.O_RDONLY)
    try:  # code: faulted in as it runs, never all of it
        code = mmap.mmap(fd, SIZE, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_EXEC)
    except PermissionError:
        pytest.skip("the temp directory's filesystem is mounted noexec")
    finally:
        os.close(fd)
    try:
        assert pending_mapped_bytes([os.getpid()]) == before
    finally:
        code.close()


def _child(path: str, ready, done) -> None:  # type: ignore[no-untyped-def]
    m = _map(Path(path))
    ready.set()
    done.wait(30)
    m.close()


def test_a_file_mapped_by_two_processes_counts_once_and_a_gone_pid_counts_nothing(
    weights: Path,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_child, args=(str(weights), ready, done))
    child.start()
    m = _map(weights)
    try:
        assert ready.wait(60)
        alone = pending_mapped_bytes([child.pid])
        assert alone >= SIZE
        both = pending_mapped_bytes([os.getpid(), child.pid])
        mine = pending_mapped_bytes([os.getpid()])
        # the weights once, plus whatever else each process maps that is not shared
        assert both <= alone + mine - SIZE
        _touch(m, SIZE)  # read in one process: resident for the file, in both
        assert pending_mapped_bytes([os.getpid(), child.pid]) <= both - SIZE
    finally:
        done.set()
        child.join(30)
        m.close()
    assert pending_mapped_bytes([child.pid]) == 0  # exited: nothing, no error


def test_the_cache_reads_once_per_ttl_and_names_the_tenants_pids() -> None:
    calls: list[list[int]] = []
    now = [100.0]

    def reader(pids):  # type: ignore[no-untyped-def]
        calls.append(list(pids))
        return 7 * MiB * len(calls)

    pending = MappedPending(
        lambda: [("0/a", 1), ("0/b", 3), ("0/a", 2)], reader=reader, clock=lambda: now[0]
    )
    assert pending.bytes_for("0/a") == 7 * MiB
    now[0] += 0.2
    assert pending.bytes_for("0/a") == 7 * MiB  # within the TTL: no second reading
    assert pending.bytes_for("0/b") == 14 * MiB
    now[0] += 0.4
    assert pending.bytes_for("0/a") == 21 * MiB
    assert calls == [[1, 2], [3], [1, 2]]
    now[0] += 1.0
    every = pending.by_tenant()  # every live tenant's, each read afresh (the TTL passed)
    assert set(every) == {"0/a", "0/b"} and sorted(every.values()) == [28 * MiB, 35 * MiB]
    assert sorted(calls[-2:]) == [[1, 2], [3]]
    # what they take from the shared room: each at most what it stores (0/c has no session)
    stored = {"0/a": 10 * MiB, "0/b": 100 * MiB, "0/c": 5 * MiB}
    assert pending.claimed(stored) == 10 * MiB + every["0/b"]  # 0/a capped, 0/b whole
    assert MappedPending().bytes_for("0/a") == 0  # not wired to sessions: no pids, nothing


def test_the_daemon_reads_the_mappings_of_a_tenants_sessions(tmp_path: Path, weights: Path) -> None:
    """The server wires the session registry in: a tenant's pids are its live sessions'."""
    sock = tmp_path / "grpc.sock"
    daemon = Daemon(
        load_config(
            [
                *("--namespace", str(tmp_path / "ns.img"), "--namespace-size", "64MiB"),
                *("--state-dir", str(tmp_path / "state"), "--socket", str(sock)),
            ]
        )
    )
    daemon.start()
    try:
        assert daemon.arbiter is not None
        mapped = daemon.arbiter.mapped
        tenant = f"{os.getuid()}/weights"
        with Client.connect(str(sock), tenant="weights", arena_bytes=1 << 20):
            assert list(mapped.tenant_pids(tenant)) == [os.getpid()]  # SO_PEERCRED's pid
            assert list(mapped.tenant_pids(f"{os.getuid()}/other")) == []
            m = _map(weights)
            try:
                assert mapped.bytes_for(tenant) >= SIZE
            finally:
                m.close()
    finally:
        daemon.stop()


def test_shared_memory_mapped_and_untouched_counts() -> None:
    """A session's arena is a memfd: its untouched pages become memory as the client stages
    through it, so they are spoken for like a file's (the A/B and sweep ran with this)."""
    before = pending_mapped_bytes([os.getpid()])
    fd = os.memfd_create("arena-like")
    try:
        os.ftruncate(fd, SIZE)
        m = mmap.mmap(fd, SIZE)
        try:
            assert pending_mapped_bytes([os.getpid()]) - before == SIZE
            m[: SIZE // 4] = b"\1" * (SIZE // 4)
            assert pending_mapped_bytes([os.getpid()]) - before == SIZE - SIZE // 4
        finally:
            m.close()
    finally:
        os.close(fd)
