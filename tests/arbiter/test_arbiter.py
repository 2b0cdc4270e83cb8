"""The residency arbiter on a real store: file namespace (O_DIRECT), real page-cache slabs.

Only the memory signals are scripted (a stand-in for SignalReader whose MemAvailable the test
sets): everything else is the daemon's own code on real files in tmp_path, so placements,
demotions and promotions really move bytes between the slab files and the namespace.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from dualbladed.arbiter.arbiter import ResidencyArbiter
from dualbladed.arbiter.mapped import MappedPending
from dualbladed.arbiter.policy import PolicyConfig, ResidencyPolicy
from dualbladed.arbiter.room import PageCacheRoom
from dualbladed.arbiter.signals import MemorySignals
from dualbladed.errors import DeviceIOError
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.store import ObjectStore

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
RESERVE = 1 * GiB
T = "1000/llama"


class ScriptedSignals:
    """Stands in for SignalReader: MemAvailable is whatever the test says (no real pressure)."""

    psi_path = None

    def __init__(self, budget: int) -> None:
        self.set_budget(budget)
        self.reads = 0
        self.free: int | None = None  # MemFree: None, the room is the ceiling

    def set_budget(self, budget: int) -> None:
        self.available = RESERVE + budget  # the policy's budget is available - reserve

    def read(self) -> MemorySignals:
        self.reads += 1
        return MemorySignals(
            time.monotonic(),
            64 * GiB,
            self.available,
            None,
            None,
            None,
            None,
            None,
            None,
            mem_free=None if self.free is None else RESERVE + self.free,
        )


class FlakyDirect(DirectPath):
    """The real direct path, whose writes fail on demand (a dying disk during a migration)."""

    fail = False

    def write(self, extent, src):  # noqa: ANN001, ANN201
        if self.fail:
            raise DeviceIOError("injected write failure")
        return super().write(extent, src)


@dataclass
class Rig:
    store: ObjectStore
    arbiter: ResidencyArbiter
    signals: ScriptedSignals
    pagecache: PageCachePath
    direct: FlakyDirect

    def put(self, key: bytes, size: int, tenant: str = T) -> bytes:
        data = payload(key, size)
        self.store.put(tenant, key, memoryview(data), persistent=True)
        return data

    def paths(self, tenant: str = T) -> dict[bytes, str]:
        return {i.key: i.path for i in self.store.list(tenant)}

    def bytes_on(self, path: str) -> int:
        return sum(i.size for i in self.store.list(None) if i.path == path)

    def read(self, key: bytes, tenant: str = T) -> bytes:
        info = self.store.stat(tenant, key)
        buf = bytearray(info.size)
        self.store.get_into(tenant, key, memoryview(buf))
        return bytes(buf)


def payload(key: bytes, size: int) -> bytes:
    block = xxhash.xxh3_128_digest(key)
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator:
    made: list[tuple[Rig, FileNamespace]] = []

    def make(
        *,
        budget: int,
        mode: str = "adaptive",
        rate: int = 256 * MiB,
        tick_s: float = 0.05,
        dwell: float = 0.0,
        band: int = 256 * KiB,
        pagecache_bytes: int = 32 * MiB,
        workers: int = 4,
    ) -> Rig:
        root = tmp_path / f"rig{len(made)}"
        root.mkdir()
        ns = FileNamespace(root / "ns.img", 64 * MiB)
        direct = FlakyDirect(ns)
        pc = PageCachePath(
            root / "pagecache", slab_bytes=4 * MiB, max_bytes=pagecache_bytes, resident_ttl_s=0
        )
        holder: list[ResidencyArbiter] = []
        store = ObjectStore.open(
            ns,
            root / "state",
            paths={DIRECT: direct, PAGECACHE: pc},
            placement=lambda tenant, size: holder[0].place(tenant, size),
            placement_many=lambda tenant, sizes: holder[0].place_many(tenant, sizes),
            access_flush_interval=0,
        )
        policy = ResidencyPolicy(
            PolicyConfig(
                mode=mode,  # type: ignore[arg-type]
                reserve_bytes=RESERVE,
                hysteresis_bytes=band,
                min_dwell_s=dwell,
                max_migration_bytes_per_tick=int(rate * tick_s),
                # the rigs place within a budget, then move: the default (every placement
                # direct, policy 3.) is tested in test_policy
                place_on_pagecache=True,
            )
        )
        signals = ScriptedSignals(budget)
        arb = ResidencyArbiter(
            store,
            policy,
            signals,
            pc,
            tick_s=tick_s,
            migration_bytes_per_s=rate,  # type: ignore[arg-type]
            migration_workers=workers,
        )
        holder.append(arb)
        rig = Rig(store, arb, signals, pc, direct)
        made.append((rig, ns))
        return rig

    yield make
    for rig, ns in made:
        rig.arbiter.stop()
        rig.store.close()
        ns.close()


def settle(rig: Rig, ticks: int = 200) -> int:
    """Tick on this thread until a tick moves nothing; return how many migrations ran."""
    moved = 0
    for _ in range(ticks):
        done = rig.arbiter.run_once()
        if not done:
            return moved
        moved += len(done)
    raise AssertionError("the arbiter never settled")


# ----------------------------------------------------------------------------- placement


def test_placement_follows_the_budget(make_rig) -> None:
    rig = make_rig(budget=8 * MiB)
    rig.arbiter.run_once()  # the first observation gives the budget
    data = {b"k%02d" % i: rig.put(b"k%02d" % i, 1 * MiB) for i in range(14)}
    paths = rig.paths()
    assert sum(p == PAGECACHE for p in paths.values()) == 8
    assert [paths[b"k%02d" % i] for i in range(8)] == [PAGECACHE] * 8  # first come, first served
    assert rig.bytes_on(PAGECACHE) == 8 * MiB
    for key, value in data.items():
        assert rig.read(key) == value


def test_a_packed_put_is_placed_as_its_objects_one_by_one(make_rig) -> None:
    """``place_many`` (one call for a packed put) decides as ``place`` per object would: the
    first 8 MiB of the budget to the page cache, first come first served, the rest direct,
    and the usage estimate and placement totals advance by every object."""
    rig = make_rig(budget=8 * MiB)
    rig.arbiter.run_once()
    keys = [b"k%02d" % i for i in range(14)]
    datas = [payload(k, 1 * MiB) for k in keys]
    done = rig.store.put_packed(
        T, keys, memoryview(b"".join(datas)), [MiB] * 14, align=4096, persistent=True
    )
    assert list(done.paths) == [PAGECACHE] * 8 + [DIRECT] * 6
    assert rig.paths() == dict(zip(keys, done.paths, strict=True))
    assert rig.arbiter._usage[T] == [8 * MiB, 6 * MiB]
    assert rig.arbiter._totals["placed_pagecache"] == 8
    assert rig.arbiter._totals["placed_direct"] == 6
    for key, value in zip(keys, datas, strict=True):
        assert rig.read(key) == value


def test_before_any_observation_everything_goes_direct(make_rig) -> None:
    rig = make_rig(budget=64 * MiB)
    rig.put(b"early", 4096)
    assert rig.paths() == {b"early": DIRECT}


def test_a_full_page_cache_path_falls_back_to_direct(make_rig) -> None:
    rig = make_rig(budget=1 * GiB, mode="pagecache", pagecache_bytes=4 * MiB)
    data = {b"f%d" % i: rig.put(b"f%d" % i, 1 * MiB) for i in range(6)}
    paths = rig.paths()
    assert sorted(paths.values()) == [DIRECT] * 2 + [PAGECACHE] * 4
    for key, value in data.items():
        assert rig.read(key) == value


@pytest.mark.parametrize("mode", [PAGECACHE, DIRECT])
def test_forced_modes_place_everything_on_their_path_and_never_migrate(make_rig, mode) -> None:
    rig = make_rig(budget=0 if mode == PAGECACHE else 1 * GiB, mode=mode)
    rig.arbiter.run_once()
    for i in range(4):
        rig.put(b"m%d" % i, 256 * KiB)
    assert set(rig.paths().values()) == {mode}
    rig.signals.set_budget(1 * GiB if mode == PAGECACHE else 0)  # would move everything
    assert settle(rig) == 0
    assert set(rig.paths().values()) == {mode}
    assert rig.arbiter.snapshot().mode == mode


# ---------------------------------------------------------------------------- migrations


def test_lower_memory_demotes_and_drops_the_cached_pages(make_rig) -> None:
    rig = make_rig(budget=16 * MiB)
    rig.arbiter.run_once()
    data = {b"d%02d" % i: rig.put(b"d%02d" % i, 1 * MiB) for i in range(12)}
    assert rig.bytes_on(PAGECACHE) == 12 * MiB
    for key in sorted(data)[6:]:  # the newer half is hot
        rig.read(key)
    rig.store.flush()
    resident_before = rig.pagecache.resident_bytes()

    rig.signals.set_budget(4 * MiB)
    assert settle(rig) == 8
    paths = rig.paths()
    assert rig.bytes_on(PAGECACHE) == 4 * MiB
    demoted = {k for k, p in paths.items() if p == DIRECT}
    assert demoted == set(sorted(data)[:8])  # the coldest went first
    assert rig.pagecache.resident_bytes() <= resident_before - 6 * MiB
    for key, value in data.items():
        assert rig.read(key) == value
    moves = rig.arbiter.migrations()
    assert len(moves) == 8 and all(m.ok and (m.src, m.dst) == (PAGECACHE, DIRECT) for m in moves)


def test_higher_memory_promotes_the_hottest(make_rig) -> None:
    rig = make_rig(budget=0)
    rig.arbiter.run_once()
    data = {b"p%02d" % i: rig.put(b"p%02d" % i, 1 * MiB) for i in range(10)}
    assert set(rig.paths().values()) == {DIRECT}
    for key in (b"p07", b"p02", b"p05"):  # touched last: the hottest
        time.sleep(0.002)
        rig.read(key)
    rig.signals.set_budget(3 * MiB)
    assert settle(rig) == 3
    assert {k for k, p in rig.paths().items() if p == PAGECACHE} == {b"p07", b"p02", b"p05"}
    rig.signals.set_budget(1 * GiB)
    settle(rig)
    assert set(rig.paths().values()) == {PAGECACHE}
    for key, value in data.items():
        assert rig.read(key) == value


def test_promotions_stop_loudly_at_the_disk_floor(make_rig, caplog) -> None:
    """At the state filesystem's free-space floor (issue 15) the page cache refuses every
    object: promotions are left out of the plan (the plan log says what will happen), one
    warning names the floor, and when the floor clears they run and one line says so. A
    benchmark once sat below the floor with "31 promotions" logged every tick and none done."""
    rig = make_rig(budget=0)
    rig.arbiter.run_once()
    data = {b"f%d" % i: rig.put(b"f%d" % i, 1 * MiB) for i in range(4)}
    assert set(rig.paths().values()) == {DIRECT}
    rig.pagecache.free_floor = rig.pagecache.disk_available() + 1 * GiB  # always below it
    rig.signals.set_budget(1 * GiB)
    caplog.set_level("INFO", logger="dualbladed.arbiter")
    for _ in range(3):
        assert rig.arbiter.run_once() == []
    assert set(rig.paths().values()) == {DIRECT}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "free-space floor reached" in warnings[0].getMessage()
    assert "promotions wait" in warnings[0].getMessage()
    assert not [r for r in caplog.records if "residency plan" in r.getMessage()]
    assert rig.arbiter.totals()["pagecache_refusals"] >= 3
    snap = rig.arbiter.snapshot()  # what dbctl residency shows
    assert snap.pagecache is not None and "free-space floor reached" in snap.pagecache.refusing
    assert snap.totals.pagecache_refusals >= 3
    caplog.clear()
    rig.pagecache.free_floor = 0
    assert settle(rig) == 4
    assert set(rig.paths().values()) == {PAGECACHE}
    assert rig.arbiter.snapshot().pagecache.refusing == ""
    again = [r for r in caplog.records if "takes objects again" in r.getMessage()]
    assert len(again) == 1 and "free-space floor" in again[0].getMessage()
    for key, value in data.items():
        assert rig.read(key) == value


def test_migration_bandwidth_is_bounded(make_rig) -> None:
    rate, tick = 8 * MiB, 0.125
    t0 = time.monotonic()
    rig = make_rig(budget=16 * MiB, rate=rate, tick_s=tick)
    burst = rate * tick
    rig.arbiter.run_once()
    for i in range(12):
        rig.put(b"b%02d" % i, 512 * KiB)
    rig.signals.set_budget(0)
    per_tick = []
    while done := rig.arbiter.run_once():
        per_tick.append(sum(r.bytes for r in done))
    assert sum(per_tick) == 6 * MiB
    assert max(per_tick) <= burst  # the policy's per-tick bound
    moved = 0
    for rec in rig.arbiter.migrations():  # the token bucket: never ahead of rate * time + burst
        moved += rec.bytes
        elapsed = rec.time - (time.time() - (time.monotonic() - t0))
        assert moved <= burst + rate * elapsed + 64 * KiB
    assert time.monotonic() - t0 >= (6 * MiB - burst) / rate * 0.95


def test_a_tick_that_ran_long_is_followed_at_once(make_rig) -> None:
    """Ticks are due ``tick_s`` after the last one began: a tick busy with its moves for longer
    than that is not followed by an idle ``tick_s`` (the token bucket bounds the rate)."""
    rig = make_rig(budget=16 * MiB, tick_s=2.0)
    starts: list[float] = []
    ends: list[float] = []
    two = threading.Event()

    def tick() -> list:
        starts.append(time.monotonic())
        if len(starts) == 1:
            time.sleep(2.2)  # a tick promoting a prefill's KV for longer than a tick
        ends.append(time.monotonic())
        if len(starts) == 2:
            two.set()
        return []

    rig.arbiter.run_once = tick  # type: ignore[method-assign]
    rig.arbiter.start()
    rig.arbiter.wake()  # the first tick now
    assert two.wait(30), "no second tick"
    gap = starts[1] - ends[0]
    assert gap < 1.0, f"the second tick waited {gap:.2f} s (an idle tick would be 2 s)"


@pytest.mark.parametrize("workers", [1, 4])
def test_a_ticks_relocations_run_up_to_the_worker_count_at_once(make_rig, workers) -> None:
    """Serially one 16 MiB layer object took ~230 ms to promote on the loaded bench VM (read,
    write, fdatasync, commit): a tick's plan runs ``workers`` of them at once, and every byte
    still arrives intact."""
    rig = make_rig(budget=0, rate=1 << 40, workers=workers)
    rig.arbiter.run_once()
    data = {b"w%02d" % i: rig.put(b"w%02d" % i, 2 * MiB) for i in range(8)}
    assert set(rig.paths().values()) == {DIRECT}
    lock, flight, peak = threading.Lock(), [0], [0]
    relocate, bounces = rig.store.relocate, []

    def slow_relocate(tenant, key, path, *, bounce):  # noqa: ANN001, ANN202 - the real move
        with lock:
            flight[0] += 1
            peak[0] = max(peak[0], flight[0])
            bounces.append(bounce)
        try:
            time.sleep(0.05)  # long enough that moves submitted together overlap
            return relocate(tenant, key, path, bounce=bounce)
        finally:
            with lock:
                flight[0] -= 1

    rig.store.relocate = slow_relocate  # type: ignore[method-assign]
    rig.signals.set_budget(1 * GiB)
    done = rig.arbiter.run_once()
    assert len(done) == 8 and all(r.ok for r in done)
    assert peak[0] == min(workers, 8)
    assert set(rig.paths().values()) == {PAGECACHE}
    assert rig.arbiter.totals()["promoted_bytes"] == 16 * MiB
    for key, value in data.items():
        assert rig.read(key) == value
    # each thread copied through one bounce buffer for the whole plan, unmapped after it
    assert len({id(b) for b in bounces}) <= workers < len(bounces)
    assert all(b is not None and b.capacity == 0 for b in bounces)


def test_a_stop_skips_the_queued_relocations_of_a_plan(make_rig) -> None:
    """A plan of many small moves is admitted by the bucket at once and queued on the workers;
    a stop (SIGTERM) must not wait for the whole queue, only for the moves already running."""
    rig = make_rig(budget=0, rate=1 << 40, workers=2)
    rig.arbiter.run_once()
    for i in range(8):  # 16 MiB: all fit the rig's page-cache path
        rig.put(b"s%02d" % i, 2 * MiB)
    relocate, queued = rig.store.relocate, threading.Event()

    def slow_relocate(tenant, key, path, **kw):  # noqa: ANN001, ANN003, ANN202 - held open
        time.sleep(0.3)
        return relocate(tenant, key, path, **kw)

    class Open:  # admits every move at once and says when the last one is queued
        calls = 0

        def wait(self, nbytes: int, stop: threading.Event) -> bool:
            Open.calls += 1
            if Open.calls == 8:
                queued.set()
            return True

    rig.store.relocate = slow_relocate  # type: ignore[method-assign]
    rig.arbiter._bucket = Open()  # type: ignore[assignment]
    rig.signals.set_budget(1 * GiB)
    result: list[list[object]] = []
    tick = threading.Thread(target=lambda: result.append(rig.arbiter.run_once()))
    tick.start()
    assert queued.wait(30)
    rig.arbiter._stop.set()  # what stop() does first; the tick runs on the test's thread
    tick.join(60)
    assert not tick.is_alive() and result
    # 8 queued moves of 0.3 s on 2 workers would all run (1.2 s, 8 records): only those
    # already running when the stop came may finish.
    assert len(result[0]) <= 4
    assert sum(p == DIRECT for p in rig.paths().values()) >= 4


def test_no_flapping_under_a_noisy_memory_script(make_rig) -> None:
    dwell = 0.4
    rig = make_rig(budget=8 * MiB, dwell=dwell, band=2 * MiB)
    rig.arbiter.run_once()
    for i in range(16):
        rig.put(b"n%02d" % i, 1 * MiB)
    rng = random.Random(7)
    settle(rig)
    quiet = len(rig.arbiter.migrations())
    for _ in range(30):  # noise inside the band: nothing moves
        rig.signals.set_budget(8 * MiB + rng.randint(-1 * MiB, 1 * MiB))
        rig.arbiter.run_once()
    assert len(rig.arbiter.migrations()) == quiet
    start = time.monotonic()
    while time.monotonic() - start < 2.0:  # swings of +-5 MiB every 0.3 s, with noise
        swing = 5 * MiB if int((time.monotonic() - start) / 0.3) % 2 else -5 * MiB
        rig.signals.set_budget(8 * MiB + swing + rng.randint(-1 * MiB, 1 * MiB))
        rig.arbiter.run_once()
        time.sleep(0.01)
    history: dict[bytes, list[tuple[float, str]]] = {}
    for rec in rig.arbiter.migrations():
        history.setdefault(rec.key, []).append((rec.time, rec.dst))
    assert len(rig.arbiter.migrations()) > quiet  # the swings did move objects
    for key, moves in history.items():
        for (t1, d1), (t2, d2) in zip(moves, moves[1:]):
            assert d1 != d2, f"{key!r} moved twice to {d2}"
            assert t2 - t1 >= dwell * 0.95, f"{key!r} flapped: {moves}"


def test_reads_stay_correct_while_the_arbiter_migrates_in_the_background(make_rig) -> None:
    rig = make_rig(budget=32 * MiB, rate=64 * MiB, tick_s=0.02, band=512 * KiB)
    rig.arbiter.run_once()
    data = {b"r%02d" % i: rig.put(b"r%02d" % i, 256 * KiB + 1000 * i) for i in range(24)}
    stop = threading.Event()
    reads, errors = [0], []

    def reader() -> None:
        while not stop.is_set():
            for key, value in data.items():
                try:
                    got = rig.read(key)
                except Exception as e:  # noqa: BLE001 - every failure is the test's finding
                    errors.append(f"{key!r}: {type(e).__name__}: {e}")
                    continue
                if xxhash.xxh3_64_intdigest(got) != xxhash.xxh3_64_intdigest(value):
                    errors.append(f"{key!r}: wrong bytes")
                reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    rig.arbiter.start()
    try:
        for budget, want in ((0, DIRECT), (32 * MiB, PAGECACHE), (0, DIRECT)):
            rig.signals.set_budget(budget)
            rig.arbiter.wake()
            deadline = time.monotonic() + 10
            while set(rig.paths().values()) != {want}:
                assert time.monotonic() < deadline, f"not all on {want}: {rig.paths()}"
                time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
        rig.arbiter.stop()
    assert errors == []
    assert reads[0] > len(data)
    moves = rig.arbiter.migrations()
    assert {(m.src, m.dst) for m in moves} == {(PAGECACHE, DIRECT), (DIRECT, PAGECACHE)}
    assert all(m.ok for m in moves)
    for key, value in data.items():
        assert rig.read(key) == value


def test_a_failed_migration_leaves_one_valid_copy_and_the_loop_goes_on(make_rig) -> None:
    rig = make_rig(budget=8 * MiB)
    rig.arbiter.run_once()
    data = {b"x%d" % i: rig.put(b"x%d" % i, 1 * MiB) for i in range(4)}
    rig.signals.set_budget(0)
    rig.direct.fail = True
    done = rig.arbiter.run_once()
    assert done and not any(r.ok for r in done)
    assert all(r.error for r in done)
    # The typed device error surfaces, not a BufferError from unmapping the bounce buffer.
    assert all("injected write failure" in r.error for r in done), [r.error for r in done]
    assert set(rig.paths().values()) == {PAGECACHE}
    assert rig.store.stats().paths[DIRECT].alloc.used == 0  # the half-made copy was freed
    for key, value in data.items():
        assert rig.read(key) == value
    rig.direct.fail = False
    settle(rig)
    assert set(rig.paths().values()) == {DIRECT}
    for key, value in data.items():
        assert rig.read(key) == value


def test_a_key_overwritten_or_deleted_after_the_plan_is_skipped(make_rig) -> None:
    rig = make_rig(budget=8 * MiB)
    rig.arbiter.run_once()
    rig.put(b"gone", 1 * MiB)
    rig.put(b"stay", 1 * MiB)
    rig.signals.set_budget(0)
    plan = rig.arbiter._observe(plan=True)  # plan now, execute after the keys changed
    assert {m.key for m in plan} == {b"gone", b"stay"}
    rig.store.delete(T, b"gone")
    results = [rig.arbiter._execute(m) for m in plan]
    by_key = {r.key: r for r in results if r is not None}
    assert not by_key[b"gone"].ok and by_key[b"stay"].ok
    assert rig.paths() == {b"stay": DIRECT}


# ------------------------------------------------------------------------------ snapshot


def test_snapshot_is_typed_and_shows_tenants_budget_signals_and_moves(make_rig) -> None:
    rig = make_rig(budget=4 * MiB)
    rig.arbiter.run_once()
    rig.put(b"a", 3 * MiB)
    rig.put(b"b", 3 * MiB, tenant="1000/other")
    rig.signals.set_budget(2 * MiB)
    settle(rig)
    snap = rig.arbiter.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.mode = "direct"  # type: ignore[misc]
    assert snap.mode == "adaptive"
    assert snap.budget is not None and snap.signals is not None
    assert snap.budget.total == 2 * MiB and snap.budget.reserve == RESERVE
    assert snap.signals.mem_available == RESERVE + 2 * MiB
    tenants = {t.tenant: t for t in snap.tenants}
    assert [t.tenant for t in snap.tenants] == sorted({T, "1000/other"})
    assert sum(t.pagecache + t.direct for t in tenants.values()) == 6 * MiB
    assert snap.totals.pagecache_bytes + snap.totals.direct_bytes == 6 * MiB
    assert all(t.share <= 2 * MiB for t in tenants.values())
    assert snap.migrations and snap.migrations[0].src == PAGECACHE
    assert snap.migrations[0].dst == DIRECT and snap.migrations[0].ok is True
    assert snap.totals.demoted_bytes == 3 * MiB
    assert snap.totals.placed_pagecache + snap.totals.placed_direct >= 2


def test_page_cache_refusals_log_at_most_one_pair_per_quiet_period(caplog) -> None:
    """Objects of mixed sizes alternate between fitting and not (a slab-sized cap): one warning
    and one clearing line per ``quiet_s``, not a pair per placement."""

    class Fragmented:
        def larger_than_a_slab(self, length: int) -> bool:
            return length > 64 * MiB

        def room_refusal(self, length: int) -> str | None:
            if self.larger_than_a_slab(length):
                return f"an object of {length} bytes is larger than a page-cache slab"
            return None if length <= 4 * MiB else f"no free range of {length} bytes"

    now = [0.0]
    room = PageCacheRoom(Fragmented(), clock=lambda: now[0])
    caplog.set_level("INFO", logger="dualbladed.arbiter.room")
    for _ in range(5):
        assert not room.fits(8 * MiB)
        assert room.fits(1 * MiB)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert room.refusals == 5 and room.refusing is None
    now[0] = room.quiet_s + 1  # the next refusal is news again
    assert not room.fits(16 * MiB)
    assert room.refusing == f"no free range of {16 * MiB} bytes"
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]
    # larger than a slab: a property of the size, said once, and the refusal in force stays
    for _ in range(3):
        assert not room.fits(100 * MiB)
    assert room.refusing == f"no free range of {16 * MiB} bytes" and room.refusals == 9
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING", "WARNING"]
    assert "larger than a slab stay on the direct path" in caplog.records[-1].getMessage()


def test_mapped_pages_hold_back_the_fill_only_up_to_what_their_tenant_stores(make_rig) -> None:
    """A tenant's unread mapped pages leave the fill's room (they will fault back in), but no
    more of them than it stores: mapping a huge file it never reads cannot starve the others.
    The signal alone never demotes. (The pids and their pages are scripted; the free memory is
    too, and stays 8 MiB whatever we cache.)"""
    rig = make_rig(budget=1 * GiB)
    rig.signals.free = 0  # no room while the objects are put: all direct
    hostile = "1001/huge-map"
    pages = {1: 64 * GiB, 2: 64 * GiB}  # pid -> mapped and not resident
    rig.arbiter.mapped = MappedPending(
        lambda: [(T, 1), (hostile, 2)], reader=lambda pids: sum(pages[p] for p in pids), ttl_s=0
    )
    rig.arbiter.run_once()
    rig.put(b"x", 1 * MiB, tenant=hostile)  # it stores 1 MiB: that much room is its to hold
    data = {b"m%d" % i: rig.put(b"m%d" % i, 1 * MiB) for i in range(8)}
    for key in data:
        rig.read(key)
    assert set(rig.paths().values()) == {DIRECT}
    rig.signals.free = 8 * MiB
    settle(rig)
    # T's own unread weights (counted up to the 8 MiB it stores) and the hostile 1 MiB take
    # all 8 MiB of free memory: nothing to fill
    assert rig.bytes_on(PAGECACHE) == 0
    pages[1] = 0  # T's weights are read: the hostile mapping holds back only its 1 MiB
    settle(rig)
    assert set(rig.paths().values()) == {PAGECACHE}
    pages[1] = 64 * GiB  # T's weights evicted again: no more growth, and no demotion either
    settle(rig)
    assert set(rig.paths().values()) == {PAGECACHE}
    for key, value in data.items():
        assert rig.read(key) == value
