"""Issue 15, disk: the page cache gives space back, stops at a free-space floor, is capped by the
namespace size by default, and a quota-less unprivileged uid can store only its default share.

Slabs live under tmp_path (ext4 here: punching holes is supported; a filesystem that cannot
punch is skipped by name). The daemon tests run the attacker as uid 65534 in a child that
imports first and then drops privileges, against a daemon whose sockets are opened to it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualblade import Client
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.config import ResidencyConfig
from dualbladed.errors import DiskFloorReached
from dualbladed.paths.pagecache import PageCachePath, free_floor_bytes
from dualbladed.server import pagecache_max_bytes
from privdrop_utils import NOBODY, open_to_others, run_as, shared_tmpdir

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def _path(tmp_path: Path, **kw: int) -> PageCachePath:
    kw.setdefault("slab_bytes", 4 * MiB)
    kw.setdefault("max_bytes", 16 * MiB)
    return PageCachePath(tmp_path / "pc", resident_ttl_s=0.0, **kw)  # type: ignore[arg-type]


def _blocks(p: PageCachePath) -> int:
    """Bytes the slab files really occupy on disk (st_blocks is in 512-byte units)."""
    return sum(os.stat(f).st_blocks * 512 for f in p.directory.iterdir())


def _fill(p: PageCachePath, n: int, size: int) -> list:
    extents = []
    for i in range(n):
        e = p.allocate(size)
        p.write(e, memoryview(bytes([i + 1]) * size))
        extents.append(e)
    p.flush()
    return extents


def _require_punch(p: PageCachePath) -> None:
    if p._puncher is None or not p._puncher.supported:
        pytest.skip(f"{p.directory} is on a filesystem that cannot punch holes")


# -- giving space back -----------------------------------------------------------------------------


def test_released_extents_are_punched_out_of_the_slab(tmp_path: Path) -> None:
    p = _path(tmp_path)
    extents = _fill(p, 8, 1 * MiB)
    full = _blocks(p)
    assert full >= 8 * MiB
    for e in extents[:6]:
        p.release(e)
    _require_punch(p)
    after = _blocks(p)
    assert after <= full - 6 * MiB  # the six freed MiB went back to the filesystem
    assert after >= 2 * MiB  # the two live objects did not
    # Live neighbours are intact, and the slab keeps its size (virtual offsets keep meaning).
    for i, e in enumerate(extents[6:], start=6):
        out = bytearray(1 * MiB)
        p.read(e, memoryview(out))
        assert out == bytes([i + 1]) * MiB
    assert all(os.stat(f).st_size == 4 * MiB for f in p.directory.iterdir())
    # A reused range holds the new bytes, not a hole.
    e = p.allocate(1 * MiB)
    p.write(e, memoryview(b"\x77" * MiB))
    out = bytearray(1 * MiB)
    p.read(e, memoryview(out))
    assert out == b"\x77" * MiB
    p.close()


def test_punch_free_after_restart_gives_back_what_nobody_reserved(tmp_path: Path) -> None:
    p = _path(tmp_path)
    extents = _fill(p, 8, 1 * MiB)
    p.close()  # a crash after the deletes were committed but before any punch
    p = _path(tmp_path)
    _require_punch(p)
    before = _blocks(p)
    assert before >= 8 * MiB
    p.reserve(extents[0])  # the only committed object
    punched = p.punch_free()
    assert punched >= 7 * MiB
    assert _blocks(p) <= before - 7 * MiB
    out = bytearray(1 * MiB)
    p.read(extents[0], memoryview(out))
    assert out == b"\x01" * MiB
    p.close()


def test_a_filesystem_that_cannot_punch_only_costs_space(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No such filesystem is mounted here, so fallocate's EOPNOTSUPP is simulated (ctypes'
    private errno); releases keep working, the warning is logged once, punching stops."""
    import ctypes
    import errno

    p = _path(tmp_path)
    _require_punch(p)
    calls = []

    def refuse(*args: object) -> int:
        calls.append(args)
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    p._puncher._fallocate = refuse  # type: ignore[union-attr]
    extents = _fill(p, 3, 64 * KiB)
    for e in extents:
        p.release(e)
    assert len(calls) == 1 and not p._puncher.supported  # type: ignore[union-attr]
    assert sum("cannot punch holes" in r.getMessage() for r in caplog.records) == 1
    assert p.stats().used == 0
    p.close()


# -- the free-space floor --------------------------------------------------------------------------


def test_floor_refuses_allocations_that_would_cross_it(tmp_path: Path) -> None:
    probe = _path(tmp_path)
    available = probe.disk_available()
    probe.close()
    # A floor just below what is available now: 64 KiB fits, 64 MiB would cross it.
    p = _path(tmp_path, free_floor=available - 32 * MiB)
    assert p.has_room(64 * KiB)
    p.allocate(64 * KiB)
    assert not p.has_room(64 * MiB)
    assert p.room_refusal(64 * KiB) is None
    before = p.stats()
    with pytest.raises(DiskFloorReached) as err:
        p.allocate(64 * MiB)
    assert err.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert f"floor {available - 32 * MiB} bytes" in str(err.value)
    assert str(p.directory) in str(err.value)
    assert p.stats() == before  # nothing allocated, no slab created
    p.close()
    # what the arbiter logs when the page cache starts refusing: allocate's own text
    below = _path(tmp_path, free_floor=available + 1 * GiB)
    reason = below.room_refusal(64 * KiB)
    assert reason is not None and f"floor {available + 1 * GiB} bytes" in reason
    assert str(below.directory) in reason
    below.close()


def test_room_refusal_names_the_cap_or_the_slab_size(tmp_path: Path) -> None:
    p = _path(tmp_path, slab_bytes=4 * MiB, max_bytes=8 * MiB)
    assert p.room_refusal(4 * MiB) is None
    reason = p.room_refusal(6 * MiB)  # larger than a slab: no range can ever hold it
    assert reason == (
        f"an object of {6 * MiB} bytes is larger than a page-cache slab "
        f"({4 * MiB} bytes; residency.slab_bytes)"
    )
    assert not p.has_room(6 * MiB)
    p.allocate(4 * MiB)
    p.allocate(3 * MiB)
    reason = p.room_refusal(2 * MiB)  # both slabs made, 1 MiB left in the second
    assert reason is not None
    assert f"page-cache cap of {8 * MiB} bytes (largest {1 * MiB}" in reason
    p.close()


def test_floor_is_the_smaller_of_bytes_and_fraction(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    size = st.f_blocks * st.f_frsize
    assert free_floor_bytes(tmp_path, 2 * GiB, 0.10) == min(2 * GiB, int(size * 0.10))
    assert free_floor_bytes(tmp_path, 1 << 50, 0.5) == int(size * 0.5)
    assert free_floor_bytes(tmp_path, 0, 0.5) == 0  # 0 turns it off
    assert free_floor_bytes(tmp_path, 2 * GiB, 0.0) == 0


def test_capacity_defaults_to_the_namespace_size_not_free_disk() -> None:
    assert pagecache_max_bytes(ResidencyConfig(), 512 * MiB) == 512 * MiB
    assert pagecache_max_bytes(ResidencyConfig(pagecache_max_bytes=64 * MiB), 512 * MiB) == (
        64 * MiB
    )
    # Free disk, RAM: not consulted at all (a 1 TiB namespace on this small VM keeps 1 TiB).
    assert pagecache_max_bytes(ResidencyConfig(), 1 << 40) == 1 << 40


def test_daemon_places_on_direct_at_the_floor(tmp_path: Path) -> None:
    """Forced page-cache mode with an unreachable floor: puts succeed, on the direct path."""
    cfg = tmp_path / "d.toml"
    cfg.write_text(
        '[residency]\nmode = "pagecache"\npagecache_min_free_fraction = 1.0\n'
        f"pagecache_min_free_bytes = {1 << 50}\n"
    )
    with (
        DaemonProcess(tmp_path / "d", namespace_size="64MiB", config=cfg) as d,
        Client.connect(d.socket, tenant="t", arena_bytes=4 * MiB) as c,
    ):
        info = c.put(b"k", b"x" * 100_000)
        assert info.path == "direct"
        assert c.get(b"k") == b"x" * 100_000
        st = os.statvfs(d.state_dir)
        logged = (d.root / "daemon.log").read_text()
        assert f"free-space floor {st.f_blocks * st.f_frsize} bytes" in logged
    # Without the floor the same mode lands on the page cache (the test can fail).
    cfg.write_text('[residency]\nmode = "pagecache"\npagecache_min_free_bytes = 0\n')
    with (
        DaemonProcess(tmp_path / "e", namespace_size="64MiB", config=cfg) as d,
        Client.connect(d.socket, tenant="t", arena_bytes=4 * MiB) as c,
    ):
        assert c.put(b"k", b"x" * 100_000).path == "pagecache"


# -- the default per-uid quota ---------------------------------------------------------------------


@pytest.fixture
def open_daemon() -> Iterator[DaemonProcess]:
    """A 64 MiB daemon whose sockets uid 65534 can reach, in forced page-cache mode."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as uid 65534")
    with shared_tmpdir("dbquota-") as root:
        cfg = root / "d.toml"
        # evict_persistent = false: a uid at its cap is refused here; with eviction (the
        # default) it would evict its own oldest objects instead and still hold no more than
        # the cap (tests/daemon/test_capacity_daemon.py)
        cfg.write_text('[limits]\nevict_persistent = false\n\n[residency]\nmode = "pagecache"\n')
        daemon = DaemonProcess(root, namespace_size="64MiB", config=cfg).start()
        try:
            open_to_others(daemon.socket, daemon.socket.parent / "handshake.sock")
            yield daemon
        finally:
            daemon.terminate()


def _fill_as_nobody(daemon: DaemonProcess) -> dict[str, int]:
    """uid 65534 puts 1 MiB objects under many labels until refused; what did it store?"""
    code = f"""
        import json
        from dualblade import Client, errors
        stored, refusal = 0, ""
        for label in range(8):  # labels are free: the cap must hold over all of them
            with Client.connect({str(daemon.socket)!r}, tenant=f"l{{label}}",
                                arena_bytes=2 << 20) as c:
                try:
                    for i in range(64):
                        c.put(f"k{{i}}", b"z" * (1 << 20), persistent=True)
                        stored += 1 << 20
                except errors.ResourceExhausted as err:
                    refusal = str(err)
        print(json.dumps({{"stored": stored, "refusal": refusal}}))
        """
    res = run_as(code, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_quota_less_uid_stores_at_most_its_default_share(open_daemon: DaemonProcess) -> None:
    out = _fill_as_nobody(open_daemon)
    cap = 64 * MiB // 4  # quotas.uid_default_fraction = 0.25 of the namespace
    assert cap - 1 * MiB <= out["stored"] <= cap
    assert f"quota exceeded for uid {NOBODY}" in out["refusal"]
    assert f"per-uid quota {cap} bytes" in out["refusal"]
    # Root is not bound by the default: it stores more than the unprivileged share.
    with Client.connect(open_daemon.socket, tenant="root", arena_bytes=4 * MiB) as c:
        for i in range(24):
            c.put(f"r{i}", b"r" * MiB, persistent=True)
        assert len(c.list()) == 24


# -- the floor on a real small filesystem, attacked by a real other uid ---------------------------


def _loop_mount_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to loop-mount a filesystem and run a client as uid 65534"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control (loop driver not available)"
    return None


def test_floor_holds_while_a_quota_less_uid_fills_the_page_cache(tmp_path: Path) -> None:
    """The issue's attack on a 128 MiB state filesystem: the page cache stops at the floor, the
    rest of the puts land on direct (none fails), and deleting everything empties the slabs."""
    reason = _loop_mount_skip_reason()
    if reason:
        pytest.skip(reason)
    from dualblade_tools.hostile_disk import measure_floor

    with shared_tmpdir("dbfloor-") as work:
        out = measure_floor(work, 128 * MiB)
    size, floor = out["filesystem_bytes"], out["floor_bytes"]
    assert floor == int(size * 0.10)  # 10% of a small disk is below the 2 GiB default
    # Page-cache puts stop one object short of the floor; what still grows below it is the
    # metadata of the direct puts (SQLite's WAL checkpoints at 1000 pages, about 4 MiB).
    assert out["lowest_free_fraction"] * size >= floor - 1 * MiB - 4 * MiB
    attacker = out["attacker"]
    assert attacker["refusals"] == []
    assert attacker["paths"]["pagecache"] > 0 and attacker["paths"]["direct"] > 0
    assert out["slab_bytes_on_disk_at_peak"] >= attacker["paths"]["pagecache"] * MiB
    assert out["delete_rc"] == 0
    assert out["slab_bytes_on_disk_after_delete"] <= 1 * MiB


def test_uid_quota_rules() -> None:
    from dualbladed.config import QuotaConfig

    q = QuotaConfig()
    assert q.uid_quota(1000, privileged=False, namespace_bytes=512 * MiB) == 128 * MiB
    assert q.uid_quota(0, privileged=True, namespace_bytes=512 * MiB) == 0  # unlimited
    q = QuotaConfig(uid_default_bytes=10 * MiB, per_uid={1000: 0, 0: 5 * MiB})
    assert q.uid_quota(1001, privileged=False, namespace_bytes=512 * MiB) == 10 * MiB
    assert q.uid_quota(1000, privileged=False, namespace_bytes=512 * MiB) == 0  # explicit: none
    assert q.uid_quota(0, privileged=True, namespace_bytes=512 * MiB) == 5 * MiB  # explicit wins
