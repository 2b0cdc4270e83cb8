"""The residency arbiter: one loop for all tenants that places objects and migrates them.

It joins the pure :class:`~dualbladed.arbiter.policy.ResidencyPolicy` to the live daemon:

- **Placement** (:meth:`ResidencyArbiter.place`, the ``placement`` callback of
  :class:`~dualbladed.store.objects.ObjectStore`, called on a gRPC thread for every put without a path
  hint). The policy decides from the tenant's share; the arbiter keeps a per-tenant usage
  estimate (refreshed from the store every tick, then advanced by its own placements and
  migrations) so a put costs a dict lookup, not a scan of the index. A page-cache choice falls
  back to ``direct`` when the page-cache path has no free extent large enough, or its
  filesystem is at the free-space floor, which also skips promotions (a racing put may
  still take the last one; its put then fails with ``OutOfSpace`` and the client retries).

- **The loop** (one background thread). Every ``tick_s`` from the start of the last tick (at
  once after a tick that ran longer), or at once when a PSI trigger fires
  (only kernel triggers are kept: a polling watcher would read avg10 no faster than the tick),
  it reads :class:`~dualbladed.arbiter.signals.MemorySignals` (with refault counters), the
  page-cache footprint (mincore) and the :class:`~dualbladed.arbiter.signals.ReadMeter`'s
  per-path read and write counters, reads per-tenant usage from the store's running totals and, in adaptive mode, a
  bounded set of candidates (the coldest page-cache and hottest direct objects, from the
  store's recency order: O(candidates), never O(objects)), hands the policy one frozen :class:`~dualbladed.arbiter.feedback.Observation` (it learns its
  budget and split from it) and asks it for
  shares and a bounded migration plan, and executes the plan with :meth:`ObjectStore.relocate`
  (all demotions finished before any promotion starts: they free memory). Forced modes
  (``pagecache`` / ``direct``, for benchmarks) still observe, so dbctl shows the signals, but
  never migrate.

- **Migrations** run in :mod:`dualbladed.arbiter.migrate`, whose docstring says how they are
  paced (a token bucket of ``migration_bytes_per_s``, burst one tick's worth), how many run at
  once (``migration_workers``, each thread with one bounce buffer per group) and why a failed or
  raced move leaves exactly one valid copy. That module keeps no state: the arbiter books each
  move's record here (history, totals, usage estimate, ``last_moved``).

Clocks. The policy wants one clock for ``now``, ``last_access`` and ``last_moved``; the store's
``last_access`` is wall time, so it is converted to ``time.monotonic()`` at each tick
(``now_mono - (now_wall - last_access)``) and the arbiter keeps its own monotonic
``last_moved`` per key (pruned to moves younger than twice the dwell time: older ones no
longer hold an object back).

Locking. ``_lock`` guards the policy (not thread-safe: ``place`` runs on gRPC threads, the plan
on the arbiter thread) and the published state (usage estimate, last signals, history, totals).
It is never held across store calls, path I/O or sleeps (a move takes it only to book its
record, after :func:`~dualbladed.arbiter.migrate.move_one` returned); the policy's planning is
the only non-trivial work under it (a sort of the candidates). The store's lock is only taken
inside store calls, so the order is always ``ResidencyArbiter._lock`` released before any
store lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence

from dualbladed.arbiter.feedback import Observation
from dualbladed.arbiter.mapped import MappedPending
from dualbladed.arbiter.migrate import move_one, run_group
from dualbladed.arbiter.policy import (
    Budget,
    Migration,
    ObjectHeat,
    ResidencyPolicy,
    TenantUsage,
)
from dualbladed.arbiter.psi import TRIGGER, PressureEvent, PsiWatcher
from dualbladed.arbiter.room import PageCacheRoom
from dualbladed.arbiter.signals import MemorySignals, ReadMeter, SignalReader
from dualbladed.arbiter.snapshot import (
    BudgetStatus,
    MigrationRecord,
    PageCacheStatus,
    PsiStatus,
    ResidencySnapshot,
    ResidencyTotals,
    TenantResidency,
)
from dualbladed.config import ResidencyMode
from dualbladed.errors import DualbladeError, FailedPrecondition, InvalidArgument
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.ratelimit import TokenBucket
from dualbladed.store import Bounce, ObjectStore, Usage

log = logging.getLogger(__name__)

#: builds the PSI watcher around the arbiter's wake-up callback (the watcher needs the callback
#: at construction, the arbiter needs the watcher: a factory breaks the cycle).
PsiWatcherFactory = Callable[[Callable[[PressureEvent], None]], PsiWatcher]

HISTORY = 256
#: relocations of one plan in flight at once (:mod:`dualbladed.arbiter.migrate`, Bandwidth)
MIGRATION_WORKERS = 4
#: objects read per tick as demotion (coldest page-cache) and promotion (hottest direct)
#: candidates while nothing moves; see ``ResidencyArbiter._adapt_candidates``
CANDIDATES = 256


def _path_bytes(totals: dict[str, dict[str, Usage]]) -> dict[str, list[int]]:
    """``tenant -> [page-cache bytes, direct bytes]`` from the store's running totals."""
    out = {}
    for tenant, paths in totals.items():
        pc, dr = paths.get(PAGECACHE), paths.get(DIRECT)
        if pc is not None or dr is not None:
            out[tenant] = [pc.bytes if pc else 0, dr.bytes if dr else 0]
    return out


class ResidencyArbiter:
    """See the module docstring. ``start()`` / ``stop()``; ``place`` is the store's callback."""

    def __init__(
        self,
        store: ObjectStore,
        policy: ResidencyPolicy,
        signals: SignalReader,
        pagecache: PageCachePath,
        *,
        tick_s: float = 1.0,
        migration_bytes_per_s: int,
        psi_watcher: PsiWatcherFactory | None = None,
        history: int = HISTORY,
        candidates: int = CANDIDATES,
        meter: ReadMeter | None = None,
        migration_workers: int = MIGRATION_WORKERS,
    ) -> None:
        if migration_workers < 1:
            raise InvalidArgument(f"migration workers {migration_workers} must be positive")
        if tick_s <= 0:
            raise InvalidArgument(f"arbiter tick {tick_s} s must be positive")
        if migration_bytes_per_s <= 0:
            raise InvalidArgument(f"migration rate {migration_bytes_per_s} must be positive")
        if candidates < 1:
            raise InvalidArgument(f"candidates {candidates} must be positive")
        self._store = store
        self._policy = policy
        self._signals = signals
        self._pagecache = pagecache
        self._room = PageCacheRoom(pagecache)  # its refusals are logged (room.py)
        #: the tenants' mapped-but-not-resident file pages; the server sets ``session_pids``
        self.mapped = MappedPending()
        self.tick_s = tick_s
        self.migration_bytes_per_s = migration_bytes_per_s
        self.migration_workers = migration_workers
        self.mode = policy.config.mode
        burst = max(int(migration_bytes_per_s * tick_s), pagecache.alignment)
        self._bucket = TokenBucket(migration_bytes_per_s, burst)
        self._psi_factory = psi_watcher
        self._psi: PsiWatcher | None = None
        #: the daemon's own read timing per path (None: no speeds, so no split)
        self.meter = meter
        self._placed_bytes = 0  # cumulative, for the write-burst detector
        self._write_path = DIRECT  # the last logged write path (feedback's default)

        self._lock = threading.Lock()
        self._usage: dict[str, list[int]] = {}  # tenant -> [pagecache bytes, direct bytes]
        self._moved: dict[tuple[str, bytes], float] = {}  # monotonic time of the last move
        self._history: collections.deque[MigrationRecord] = collections.deque(maxlen=history)
        self._signals_now: MemorySignals | None = None
        self._ticks = 0
        self._last_tick: float | None = None
        self._psi_events = 0
        self._last_psi: PressureEvent | None = None
        self._totals = collections.Counter[str]()
        # Candidates read per tick and direction: ``candidates`` normally, doubled while a
        # direction's plan uses at least half of them, up to what one tick may move.
        self._base_candidates = candidates
        self._max_candidates = max(
            candidates, policy.config.max_migration_bytes_per_tick // pagecache.alignment
        )
        self._want = {PAGECACHE: candidates, DIRECT: candidates}

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Observe once (so the first put already has a budget), then start the loop."""
        if self._thread is not None:
            return
        self._stop.clear()
        try:
            self._observe(plan=False)
        except DualbladeError as e:
            log.warning("residency arbiter: first observation failed: %s", e)
        if self._psi_factory is not None:
            try:
                self._psi = self._psi_factory(self._on_pressure)
                self._psi.start()
                if self._psi.mode != TRIGGER:
                    # a polling watcher would read avg10 as often as the tick already does
                    log.info("no PSI triggers here: the tick's avg10 read stands in for them")
                    self._psi.stop()
                    self._psi = None
            except (OSError, DualbladeError) as e:
                log.warning("PSI watcher unavailable, ticking only: %s", e)
                self._psi = None
        self._thread = threading.Thread(target=self._run, name="residency-arbiter", daemon=True)
        self._thread.start()
        log.info(
            "residency arbiter started: mode %s, tick %.2f s, migration cap %d B/s",
            self.mode,
            self.tick_s,
            self.migration_bytes_per_s,
        )

    def stop(self) -> None:
        """Stop the loop (an in-flight relocation completes first) and the PSI watcher."""
        self._stop.set()
        self._wake.set()
        if self._psi is not None:
            self._psi.stop()
            self._psi = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        log.info("residency arbiter stopped")

    def wake(self) -> None:
        """Run a tick now (also what a PSI event does)."""
        self._wake.set()

    def _on_pressure(self, event: PressureEvent) -> None:
        with self._lock:
            self._psi_events += 1
            self._last_psi = event
        self._wake.set()

    def _run(self) -> None:
        # Ticks are due ``tick_s`` after the last one *began*: a tick whose moves ran longer
        # is followed at once, and the token bucket, not an idle second, bounds the rate
        # (promoting 1 GiB at 512 MiB/s after a prefill sat a second between its two plans).
        due = time.monotonic() + self.tick_s
        while not self._stop.is_set():
            if self._wake.wait(max(0.0, due - time.monotonic())):
                self._wake.clear()
            if self._stop.is_set():
                return
            due = time.monotonic() + self.tick_s
            try:
                self.run_once()
            except FailedPrecondition as e:  # the store is closing under us
                log.info("residency arbiter: tick skipped: %s", e)
            except Exception:  # a dead arbiter would silently stop all demotions
                log.exception("residency arbiter tick failed")

    # -------------------------------------------------------------------- placement

    def place(self, tenant: str, size: int) -> str:
        """The path for a new object of ``size`` bytes (ObjectStore's placement callback)."""
        if self.mode == DIRECT:
            choice = DIRECT
        else:
            pending = self._pending(tenant)
            with self._lock:
                pc, dr = self._usage.get(tenant, (0, 0))
                usage = TenantUsage(pc, dr)
                choice = self._policy.place(tenant, size, usage, time.monotonic(), pending)
            if choice == PAGECACHE and not self._pagecache_fits(size):
                choice = DIRECT
        with self._lock:
            row = self._usage.setdefault(tenant, [0, 0])
            row[0 if choice == PAGECACHE else 1] += size
            self._placed_bytes += size
            self._totals[f"placed_{choice}"] += 1
        return choice

    def place_many(self, tenant: str, sizes: Sequence[int]) -> list[str]:
        """:meth:`place` for each of many new objects of one tenant (a packed put), in order:
        the same decisions, each seeing the usage the earlier ones added, but one lock
        acquisition, one clock reading and one page-cache room check per distinct size instead
        of one each (``has_room`` is a racy hint either way; nothing is allocated while
        placing, and it is asked before the lock, as :meth:`place` asks it outside)."""
        # the room is asked (statvfs, the allocator's lock) only where a placement can use it
        may_cache = self._policy.may_place_on_pagecache
        fits = {s: self._pagecache_fits(s) for s in set(sizes)} if may_cache else None
        pending = 0 if self.mode == DIRECT else self._pending(tenant)
        choices: list[str] = []
        total = sum(sizes)
        with self._lock:
            row = self._usage.setdefault(tenant, [0, 0])
            if self.mode == DIRECT:
                choices = [DIRECT] * len(sizes)
                cached = 0
            else:
                usage = TenantUsage(row[0], row[1])
                choices = self._policy.place_many(
                    tenant, sizes, usage, time.monotonic(), fits, pending_bytes=pending
                )
                cached = sum(s for c, s in zip(choices, sizes) if c == PAGECACHE)
            row[0] += cached
            row[1] += total - cached
            self._placed_bytes += total
            for choice in set(choices):
                self._totals[f"placed_{choice}"] += choices.count(choice)
        return choices

    def _pending(self, tenant: str) -> int:
        """The tenant's mapped file pages not yet resident, where a burst may begin (read
        outside ``_lock``: they are /proc reads; see :mod:`dualbladed.arbiter.mapped`)."""
        with self._lock:
            wanted = self._policy.wants_pending(tenant)
        return self.mapped.bytes_for(tenant) if wanted else 0

    def _pagecache_fits(self, size: int) -> bool:
        # free extent *and* the state filesystem's free-space floor (a racy hint; refusals logged)
        return self._room.fits(size)

    # ------------------------------------------------------------------------ a tick

    def run_once(self) -> list[MigrationRecord]:
        """One tick on the caller's thread: observe, plan, migrate. Returns what it did."""
        plan = self._observe(plan=True)
        done: list[MigrationRecord] = []
        # demotions first, all of them finished before a promotion starts: they free memory
        for group in ([m for m in plan if m.dst == DIRECT], [m for m in plan if m.dst != DIRECT]):
            if group:
                done.extend(self._execute_all(group))
        return done

    def _execute_all(self, group: list[Migration]) -> list[MigrationRecord]:
        """Run ``group`` paced by the token bucket, up to ``migration_workers`` at once
        (:func:`~dualbladed.arbiter.migrate.run_group`), each move booked by :meth:`_execute`."""
        stop, workers = self._stop, self.migration_workers
        return run_group(group, self._execute, bucket=self._bucket, stop=stop, workers=workers)

    def _observe(self, *, plan: bool) -> list[Migration]:
        signals = self._signals.read()
        try:
            resident = self._pagecache.resident_bytes()
        except DualbladeError:
            resident = 0
        usage = _path_bytes(self._store.totals())
        adaptive = self.mode is ResidencyMode.ADAPTIVE
        # what the sessions mapped and have yet to read leaves the fill's room (feedback, 1.);
        # /proc reads: forced modes skip them
        pending = self.mapped.claimed({t: sum(b) for t, b in usage.items()}) if adaptive else 0
        now, wall = time.monotonic(), time.time()
        with self._lock:
            moved = self._moved
        # Candidates only: the store keeps each path in recency order, so a tick reads the
        # coldest page-cache and hottest direct objects, never the whole index (issue 14).
        heat: list[ObjectHeat] = []
        if plan and adaptive:
            for info in [
                *self._store.coldest(PAGECACHE, self._want[PAGECACHE]),
                *self._store.hottest(DIRECT, self._want[DIRECT]),
            ]:
                heat.append(
                    ObjectHeat(
                        info.tenant,
                        info.key,
                        info.size,
                        info.path,  # type: ignore[arg-type]
                        now - max(0.0, wall - info.last_access),
                        moved.get((info.tenant, info.key)),
                        info.is_layer,
                    )
                )
        horizon = 2.0 * max(self._policy.config.min_dwell_s, self.tick_s)
        kept = {k: t for k, t in moved.items() if now - t <= horizon}
        tenant_usage = {t: TenantUsage(pc, dr) for t, (pc, dr) in usage.items()}
        reads = self.meter.snapshot() if self.meter is not None else {}
        writes = self.meter.snapshot("write") if self.meter is not None else {}
        with self._lock:
            obs = Observation(
                now=now,
                signals=signals,
                pagecache_resident=resident,
                pagecache_bytes=sum(u.pagecache_bytes for u in tenant_usage.values()),
                demand_bytes=sum(u.total for u in tenant_usage.values()),
                reads=reads,
                placed_bytes=self._placed_bytes,
                writes=writes,
                migrated_bytes=self._totals["demoted_bytes"] + self._totals["promoted_bytes"],
                mapped_pending=pending,
            )
            budget = self._policy.observe(obs)
            verdict = self._policy.verdict
            migrations: list[Migration] = []
            if plan:
                migrations = self._policy.plan(tenant_usage, heat, now, budget=budget)
            if not plan or self.mode is not ResidencyMode.ADAPTIVE:  # plan() did not split it
                self._policy.shares(budget, {t: u.total for t, u in tenant_usage.items()})
            self._usage = usage
            self._moved = kept  # only moves recent enough to matter (the moves are on this thread)
            self._signals_now = signals
            self._ticks += 1
            self._last_tick = now
        if budget.changed:
            log.info(
                "page-cache budget %d B (effective available %d B, room %s B, our footprint %d B,"
                " mapped not resident %d B%s%s)",
                budget.total,
                budget.effective_available,
                "?" if verdict is None else verdict.room,
                budget.pagecache_resident,
                pending,
                "" if verdict is None or verdict.pressure is None else f", {verdict.pressure}",
                ", contested" if verdict is not None and verdict.contested else "",
            )
        if verdict is not None and verdict.write_path != self._write_path:
            self._write_path = verdict.write_path
            log.info(
                "write bursts now go to %s (writes: %s; free for a burst %d B)",
                verdict.write_path,
                ", ".join(f"{p} {g:.2f} GB/s" for p, g in sorted(verdict.write_speeds_gbps.items()))
                or "not measured",
                max(0, verdict.room - obs.pagecache_resident),
            )
        promotions = [m.size for m in migrations if m.dst != DIRECT]
        if promotions and not self._pagecache_fits(min(promotions)):
            # none would land (each is asked again when it runs): plan and log what can happen
            migrations = [m for m in migrations if m.dst == DIRECT]
        self._adapt_candidates(migrations)
        if migrations:
            down = [m.size for m in migrations if m.dst == DIRECT]
            up = [m.size for m in migrations if m.dst != DIRECT]
            log.info(
                "residency plan: %d migrations, %d bytes (%d demotions %d B, %d promotions %d B)",
                len(migrations),
                sum(down) + sum(up),
                len(down),
                sum(down),
                len(up),
                sum(up),
            )
        return migrations

    def _adapt_candidates(self, plan: list[Migration]) -> None:
        """Read more candidates next tick in a direction whose plan used at least half of
        them (a big move under way), back to the base when it calms down: an idle tick stays
        O(candidates), a busy one can still fill the per-tick migration bound."""
        for path in (PAGECACHE, DIRECT):
            used = sum(1 for m in plan if m.src == path)
            want = self._want[path]
            if used * 2 >= want:
                self._want[path] = min(want * 2, self._max_candidates)
            else:
                self._want[path] = self._base_candidates

    def _execute(self, m: Migration, bounce: Bounce | None = None) -> MigrationRecord | None:
        """Move ``m`` (:func:`~dualbladed.arbiter.migrate.move_one`) and book its record."""
        fits, meter = self._pagecache_fits, self.meter
        rec = move_one(self._store, self._pagecache, m, bounce=bounce, fits=fits, meter=meter)
        if rec is None:
            return None
        with self._lock:
            self._history.append(rec)
            self._totals["migrations"] += 1
            if not rec.ok:
                self._totals["failed_migrations"] += 1
            else:
                self._moved[(m.tenant, m.key)] = time.monotonic()
                self._totals["demoted_bytes" if m.dst == DIRECT else "promoted_bytes"] += m.size
                row = self._usage.setdefault(m.tenant, [0, 0])
                src, dst = (0, 1) if m.dst == DIRECT else (1, 0)
                row[src] = max(0, row[src] - m.size)
                row[dst] += m.size
        return rec

    # ----------------------------------------------------------------- observation

    def migrations(self) -> list[MigrationRecord]:
        """The recent migrations, oldest first."""
        with self._lock:
            return list(self._history)

    @property
    def budget(self) -> Budget | None:
        with self._lock:
            return self._policy.current_budget

    def totals(self) -> dict[str, int]:
        refusals = self._room.refusals
        with self._lock:
            return {**self._totals, "pagecache_refusals": refusals}

    def snapshot(self) -> ResidencySnapshot:
        """The state ``dbctl residency`` and the Status RPC show (converted by the service)."""
        live: dict[str, list[int]] | None
        try:
            live = _path_bytes(self._store.totals())
        except DualbladeError:
            live = None  # closing: fall back to the last tick's view
        try:
            pc_stats = self._pagecache.stats()
        except DualbladeError:
            pc_stats = None
        now = time.monotonic()
        with self._lock:
            cfg = self._policy.config
            budget = self._policy.current_budget
            shares = dict(self._policy.current_shares)
            usage = live if live is not None else {t: list(v) for t, v in self._usage.items()}
            sig = self._signals_now
            history = tuple(self._history)
            counts = dict(self._totals)
            psi_events, last_psi = self._psi_events, self._last_psi
            ticks, last_tick = self._ticks, self._last_tick
            verdict = self._policy.verdict
        tenants = tuple(
            TenantResidency(t, pc, dr, shares.get(t, 0), cfg.weight(t))
            for t, (pc, dr) in sorted(usage.items())
        )
        return ResidencySnapshot(
            mode=self.mode,
            tick_s=self.tick_s,
            ticks=ticks,
            last_tick_age_s=None if last_tick is None else round(now - last_tick, 3),
            migration_bytes_per_s=self.migration_bytes_per_s,
            budget=None
            if budget is None
            else BudgetStatus(
                total=budget.total,
                raw=budget.raw,
                effective_available=budget.effective_available,
                pagecache_resident=budget.pagecache_resident,
                reserve=cfg.reserve_bytes,
                hysteresis=cfg.hysteresis_bytes,
            ),
            signals=sig,
            psi=PsiStatus(
                mode=self._psi.mode if self._psi is not None else None,
                events=psi_events,
                last_event_age_s=None if last_psi is None else round(now - last_psi.timestamp, 3),
            ),
            pagecache=None
            if pc_stats is None
            else PageCacheStatus(
                max_bytes=self._pagecache.max_bytes,
                used=pc_stats.used,
                free=pc_stats.free,
                slabs=self._pagecache.slab_count,
                refusing=self._room.refusing or "",
            ),
            tenants=tenants,
            migrations=history,
            feedback=verdict,
            totals=ResidencyTotals(
                placed_pagecache=counts.get(f"placed_{PAGECACHE}", 0),
                placed_direct=counts.get(f"placed_{DIRECT}", 0),
                migrations=counts.get("migrations", 0),
                failed_migrations=counts.get("failed_migrations", 0),
                demoted_bytes=counts.get("demoted_bytes", 0),
                promoted_bytes=counts.get("promoted_bytes", 0),
                pagecache_bytes=sum(t.pagecache for t in tenants),
                direct_bytes=sum(t.direct for t in tenants),
                pagecache_refusals=self._room.refusals,
            ),
        )
