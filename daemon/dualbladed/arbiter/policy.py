"""The residency policy: pure decisions from scripted inputs (no I/O, no clock, no threads).

The arbiter feeds it :class:`~dualbladed.arbiter.signals.MemorySignals`, the page-cache path's
resident bytes, per-tenant usage and per-object heat; it answers with a budget, per-tenant
shares, a placement for each new object and a bounded list of migrations. Everything it keeps
between calls (the held budget, the last shares, per-tenant move history) exists to damp
oscillation. ``now`` is always passed in, so tests script time as well as signals.

1. Budget: learned, not configured (:mod:`dualbladed.arbiter.feedback`). The arbiter feeds
   :meth:`ResidencyPolicy.observe` one frozen :class:`~dualbladed.arbiter.feedback.Observation`
   per tick (memory signals with refault and fault counters, PSI, our resident bytes from
   mincore, per-path read throughput, bytes placed); the feedback turns them into a cap on our
   page-cache footprint that starts at ``effective_available - reserve_bytes`` and is cut when
   caching KV makes others (or ourselves) refault, stall or miss, and grows back when memory is
   free. ``reserve_bytes`` is only an optional floor of memory always left alone (default 0).
   Our own page cache is *not* added to ``effective_available``: both MemAvailable and the
   cgroup headroom already count clean page cache (ours included) as reclaimable, so adding
   ``pagecache_resident`` would count it twice and the budget could never fall below our
   footprint -- the arbiter would never demote. The *held* budget only moves when
   ``|raw - held|`` exceeds the hysteresis band, ``max(hysteresis_bytes, hysteresis_fraction *
   held)``, or at once when the feedback saw pressure (a cut must not wait for the band) or
   probed (a probe is one deliberate step up, not noise).
   :meth:`ResidencyPolicy.budget` is the same from signals alone (no history).

2. Shares. The budget is split among tenants with demand (their page-cache + direct bytes) by
   weight, max-min fair (water-filling): every tenant is offered ``remaining * w / sum(w)``; a
   tenant whose demand is below its offer gets its demand and leaves the race, and the rest is
   offered again. Shares never exceed demand; what is left over is *slack*.

3. Placement. Forced modes return their path. In adaptive mode every new object is written
   to the direct path, and the page cache fills only by promoting objects that are read (4.):
   the write goes once to the path that never evicts anyone, and what is cached is chosen
   from the decode's reads, spread along its steps. The sixteenth session measured it
   (docs/residency.md): at budget ratios 4 and 8 of the residency bench a prefill that wrote
   any of its KV to the page cache decoded 12-20% slower than forced direct, in every sweep
   since the thirteenth session, even when the arbiter had demoted all of it within the first
   second of the decode; with placements direct and promotions alone, adaptive decoded at
   0.87x / 0.94x of forced direct (medians of three alternating pairs) against main's
   1.34x / 1.07x in the same pairs. The price is where everything fits (ratios 0.5 and 1):
   the KV is promoted after the prefill instead of written once to the page cache, and two
   pairs decoded at 632 / 970 ms against 625 / 589 at ratio 0.5 and 675 / 690 against
   607 / 636 at ratio 1. Those budgets were tighter than labelled (the bench's overhead
   missed the libraries' page cache: ratio 4 left ~55 MiB, ratio 8 none); rerun at honest
   budgets in the seventeenth session, the rules below still lost at ratios 4 and 8 (by
   28-74% at 8) and won 15-20% of decode at ratio 0.5, where everything fits.
   ``place_on_pagecache`` restores the placement rules below (kept for tests and for hosts
   where they measure better).

   With ``place_on_pagecache``: a tenant writing in a burst
   (``now`` given and :class:`~dualbladed.arbiter.feedback.BurstDetector` says so: prefill)
   gets the path that is faster for writes now (see feedback, 4.), and the page cache only
   into free memory: at most ``burst_free_fraction`` of the free memory seen when the burst
   began (less its processes' mapped file pages not yet read, ``pending_bytes``), and never
   more than ``room`` less our resident bytes (consumed by every page-cache placement until the
   next tick), however much faster its writes were measured: a page-cache write that must evict
   someone pays reclaim now and refaults later, which its own latency does not show until it
   is too late. While memory is not contested and
   free memory holds it with margin (its page-cache placements leave ``1 -
   burst_free_fraction`` of the free memory seen when it began, less its processes' mapped
   file pages not yet read: ``pending_bytes``), a burst goes to the page cache
   whatever the write speeds: promoting it back during decode cost more than the slower write
   (feedback, 4.). Otherwise prefill costs no more than the
   better forced mode, each byte is written once, and the hot part is promoted later by
   migrations, which wait for the burst. Otherwise, once both paths' read speeds
   were measured, the split comes first: a new object goes direct if the tenant's page-cache
   bytes would exceed ``f * (its bytes + size)`` (``f``, the page-cache fraction at which both
   paths finish a step's reads together; see feedback), but only while memory is contested
   (the feedback saw pressure within ``forget_s``): without pressure caching all that fits
   measured faster than any split. Otherwise it goes to the page
   cache while ``pagecache_bytes + size <= share``; beyond the share it may use the slack, which
   is consumed as it is used, so that placements between two ticks cannot oversubscribe the
   budget. Before the first tick there is no budget and everything goes direct (the safe path).

4. Migrations (adaptive mode only), at most ``max_migration_bytes_per_tick`` per tick, demotions
   first (they relieve memory pressure, promotions are only an optimisation):

   A tenant's *target* is its share (without pressure: promote hot objects up to the whole
   cap), or ``min(share, f * demand)`` with a split while memory is contested. No migration
   is planned during a write burst (the feedback's per-tick one, or any tenant bursting in the
   burst detector's window): prefill's write-back is not slowed by migration traffic, and what
   is still being written is not written twice.

   Which objects move: a decode step's layer objects (one tenant's, read within
   ``scan_window_s`` of its newest read) are equally hot, so they move spread along the step,
   each path's part evenly interleaved with the other's (:mod:`dualbladed.arbiter.scan`);
   coldest-first would leave a run of consecutive layers direct, whose reads the step waits
   for. Other objects move by recency: the coldest demoted first, the hottest promoted first.

   - Demote (page cache -> direct, cold objects before a scan's, across tenants) when a tenant
     holds more than ``target + band`` (``target`` alone on a tick that saw pressure: a cut
     the feedback measured is not noise); it is brought down to its share, not to the band edge,
     so the next small wobble does not trigger again.
   - Promote (direct -> page cache, a scan's objects first) when a tenant holds less than
     ``target - min(band, target / 4, probe)``, filling up to its target. The band alone
     (256 MiB by default) would never promote into a target smaller than it: at ratio 4 of the
     residency bench the target was 147 MiB of free memory and adaptive decoded all-direct;
     and a band wider than one probe never fills the probe (see ``_promotion_band``).
   - Anti-flapping: an object that moved within ``min_dwell_s`` does not move again (except a
     demotion on a tick that saw pressure: a promotion that made others refault is undone at
     once), and a tenant demoted within ``min_dwell_s`` gets no promotion. Together with the
     hysteresis on the budget and on the shares this bounds every object to one round trip
     per dwell.

   An object larger than the per-tick bound may still move alone as the first move of a tick
   (otherwise it could never move).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from dualbladed.arbiter.feedback import (
    BurstDetector,
    Feedback,
    FeedbackConfig,
    Observation,
    Verdict,
)
from dualbladed.arbiter.scan import SCAN_WINDOW_S, demotion_order, promotion_order, scans
from dualbladed.arbiter.signals import MemorySignals
from dualbladed.config import ResidencyConfig, ResidencyMode
from dualbladed.errors import InvalidArgument
from dualbladed.paths.abstract import DIRECT, PAGECACHE

PathName = Literal["pagecache", "direct"]
#: The ``[residency]`` defaults: the user-facing settings are declared once, in the config.
_SETTINGS = ResidencyConfig()
#: The tick the default per-tick migration bound assumes (the daemon's arbiter ticks every 1 s).
DEFAULT_TICK_S = 1.0
#: ``residency.weights`` allows 0 ("only what others leave"); the policy needs weights > 0.
MIN_WEIGHT = 1e-6


@dataclass(frozen=True)
class PolicyConfig:
    """What the policy decides by: the ``[residency]`` settings (defaults and meaning from
    :class:`~dualbladed.config.ResidencyConfig`; build it with :meth:`from_residency`) plus
    the policy's own tuning, which users do not set."""

    mode: ResidencyMode = _SETTINGS.mode
    #: memory kept for model weights and the rest of the system, never budgeted
    reserve_bytes: int = _SETTINGS.reserve_bytes
    #: the budget and the shares only react to changes beyond
    #: max(hysteresis_bytes, hysteresis_fraction * value)
    hysteresis_bytes: int = _SETTINGS.hysteresis_bytes
    hysteresis_fraction: float = 0.0
    #: tenant ("uid/label") or label -> weight (> 0); the exact tenant wins over its label, and
    #: tenants matching neither get default_weight
    weights: Mapping[str, float] = field(default_factory=lambda: _SETTINGS.weights)
    default_weight: float = 1.0
    #: an object (or a demoted tenant) does not move back within this time
    min_dwell_s: float = 30.0
    #: promote only while the direct path is being read: within this many seconds of a tick
    #: that saw direct reads. A promotion costs a read, a write, an fdatasync and a metadata
    #: commit; objects nobody reads gain nothing from it (seen: an idle daemon spent 76% of a
    #: core promoting 10^5 freshly put 4 KiB objects, ~550 moves/s, for minutes)
    promote_read_window_s: float = 10.0
    max_migration_bytes_per_tick: int = int(_SETTINGS.migration_bytes_per_s * DEFAULT_TICK_S)
    #: a tenant's objects read within this many seconds of its newest read are one decode
    #: step's scan: they move spread along it, not coldest or hottest first (``arbiter.scan``)
    scan_window_s: float = SCAN_WINDOW_S
    #: what the budget learns from (thresholds, split, write bursts): see feedback
    learn: FeedbackConfig = field(default_factory=FeedbackConfig)
    #: adaptive placements may choose the page cache (bursts into free memory, then the
    #: budget); off, every new object is written direct and the page cache fills by promotion
    #: only (module docstring, 3.: measured better at budget ratios 4 and 8)
    place_on_pagecache: bool = False

    @classmethod
    def from_residency(cls, res: ResidencyConfig, tick_s: float = DEFAULT_TICK_S) -> PolicyConfig:
        """The policy's settings from the ``[residency]`` section, for an arbiter ticking every
        ``tick_s``: the per-tick migration bound is one tick of the rate cap."""
        return cls(
            mode=res.mode,
            reserve_bytes=res.reserve_bytes,
            hysteresis_bytes=res.hysteresis_bytes,
            weights={t: max(w, MIN_WEIGHT) for t, w in res.weights.items()},
            max_migration_bytes_per_tick=max(1, int(res.migration_bytes_per_s * tick_s)),
        )

    def __post_init__(self) -> None:
        # a mode given as its name (tests, tools) becomes the enum, so ``is`` compares work
        object.__setattr__(self, "mode", ResidencyMode.parse(self.mode))
        for name in ("reserve_bytes", "hysteresis_bytes", "max_migration_bytes_per_tick"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} {getattr(self, name)} must not be negative")
        if not 0.0 <= self.hysteresis_fraction < 1.0:
            raise InvalidArgument(
                f"hysteresis_fraction {self.hysteresis_fraction} must be in [0, 1)"
            )
        if self.min_dwell_s < 0:
            raise InvalidArgument(f"min_dwell_s {self.min_dwell_s} must not be negative")
        for tenant, w in {**self.weights, "<default>": self.default_weight}.items():
            if not (w > 0 and math.isfinite(w)):
                raise InvalidArgument(f"weight {w!r} of tenant {tenant!r} must be positive")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    def weight(self, tenant: str) -> float:
        exact = self.weights.get(tenant)
        if exact is not None:
            return exact
        _, _, label = tenant.partition("/")
        return self.weights.get(label, self.default_weight) if label else self.default_weight

    def band(self, value: int) -> int:
        return max(self.hysteresis_bytes, int(self.hysteresis_fraction * value))


@dataclass(frozen=True)
class Budget:
    total: int  # the held page-cache budget (what shares split)
    raw: int  # what this tick's signals alone would give
    effective_available: int
    pagecache_resident: int
    changed: bool  # the held budget moved on this call


@dataclass(frozen=True)
class TenantUsage:
    pagecache_bytes: int
    direct_bytes: int

    @property
    def total(self) -> int:
        return self.pagecache_bytes + self.direct_bytes


@dataclass(frozen=True)
class ObjectHeat:
    tenant: str
    key: bytes
    size: int
    path: PathName
    last_access: float  # same clock as ``now``
    last_moved: float | None  # None: never migrated since it was placed
    #: a layer object (read by range every decode step): it moves in scan order (``arbiter.scan``)
    layer: bool = False


@dataclass(frozen=True)
class Migration:
    tenant: str
    key: bytes
    size: int
    src: PathName
    dst: PathName
    reason: str  # for dbctl and logs: "over share" / "under share"


class ResidencyPolicy:
    """See the module docstring. Not thread-safe: the arbiter calls it from its one thread."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._held: int | None = None
        self._budget: Budget | None = None
        self._shares: dict[str, int] = {}
        self._slack = 0
        self._last_demotion: dict[str, float] = {}
        self._feedback = Feedback(config.learn, config.reserve_bytes)
        self._fraction: float | None = None  # the split's page-cache fraction
        self._direct_read_bytes: int | None = None  # the direct path's cumulative reads
        self._direct_read_at = -math.inf  # the last tick that saw them grow
        self._reads_known = False  # False: no read meter, promotions are not gated on reads
        self._contested = False  # pressure seen lately: the split applies (feedback, 2.)
        self._defer = False  # a write burst: no migrations
        self._pressure = False  # the last observation saw pressure: demote without a band
        self._write_path: PathName = DIRECT  # where a write burst goes (feedback, 4.)
        self._free_left = 0  # free memory not yet taken by page-cache placements since the tick
        #: per bursting tenant: what is left of the page cache its burst may take whatever the
        #: write speeds (``burst_free_fraction`` of the free memory when the burst began)
        self._burst_room: dict[str, int] = {}
        self._bursts = BurstDetector(
            config.learn.tenant_burst_bytes, config.learn.burst_window_s, config.learn.burst_quiet_s
        )

    @property
    def verdict(self) -> Verdict | None:
        """The feedback's last conclusions (cap, pressure, speeds, split), for dbctl."""
        return self._feedback.verdict

    @property
    def current_budget(self) -> Budget | None:
        return self._budget

    @property
    def current_shares(self) -> Mapping[str, int]:
        return MappingProxyType(self._shares)

    # ------------------------------------------------------------------ budget

    def budget(self, signals: MemorySignals, pagecache_resident: int) -> Budget:
        """The budget from signals alone: an observation without history or reads."""
        return self.observe(
            Observation(
                now=signals.timestamp,
                signals=signals,
                pagecache_resident=pagecache_resident,
                pagecache_bytes=0,
                demand_bytes=0,
                reads={},
                placed_bytes=0,
            )
        )

    def observe(self, obs: Observation) -> Budget:
        """Learn from one tick's measurements; the budget plan() and place() then use."""
        cfg = self.config
        verdict = self._feedback.update(obs)
        raw = verdict.cap
        held = self._held
        changed = (
            held is None
            or abs(raw - held) > cfg.band(held)
            or (verdict.pressure is not None and raw < held)
            or (verdict.probed and raw > held)
        )
        if held is None or changed:
            held = self._held = raw
        self._note_direct_reads(obs)
        self._fraction = verdict.pagecache_fraction
        self._contested = verdict.contested
        self._defer = verdict.write_burst
        self._pressure = verdict.pressure is not None
        self._write_path = verdict.write_path  # type: ignore[assignment]
        self._free_left = max(0, verdict.room - obs.pagecache_resident)  # free - reserve
        self._budget = Budget(
            held, raw, obs.signals.effective_available, obs.pagecache_resident, changed
        )
        return self._budget

    def _note_direct_reads(self, obs: Observation) -> None:
        """Did clients read the direct path since the last tick? (``reads`` counts clients'
        reads only: the arbiter's own moves are metered apart, ``ReadMeter.moving``.)"""
        # a meter feeds the policy once it counted any I/O (puts write before anyone reads)
        self._reads_known = self._reads_known or bool(obs.reads) or bool(obs.writes)
        seen = obs.reads.get(DIRECT)
        if seen is None:
            return
        if self._direct_read_bytes is not None and seen.bytes > self._direct_read_bytes:
            self._direct_read_at = obs.now
        self._direct_read_bytes = seen.bytes

    def promotions_pay(self, now: float) -> bool:
        """Whether promoting can help now: the direct path was read within the window (or no
        read meter feeds the policy, and then it cannot tell)."""
        window = self.config.promote_read_window_s
        return not self._reads_known or now - self._direct_read_at <= window

    # ------------------------------------------------------------------ shares

    def shares(self, budget: Budget, demand: Mapping[str, int]) -> dict[str, int]:
        """Weighted max-min fair split of ``budget.total``; also remembers it for place()."""
        out = self._fair_split(budget.total, demand)
        self._shares = out
        self._slack = max(0, budget.total - sum(out.values()))
        return dict(out)

    def _fair_split(self, total: int, demand: Mapping[str, int]) -> dict[str, int]:
        """Weighted max-min fair split of ``total`` bytes over ``demand``."""
        out = {t: 0 for t in demand}
        active = {t: d for t, d in demand.items() if d > 0}
        remaining = total
        while active and remaining > 0:
            weight_sum = sum(self.config.weight(t) for t in active)
            offers = {t: remaining * self.config.weight(t) / weight_sum for t in active}
            sated = [t for t, d in active.items() if d <= offers[t]]
            if not sated:
                for t in active:
                    out[t] += int(offers[t])
                break
            for t in sated:
                out[t] += active.pop(t)
                remaining -= out[t]
        return out

    def targets(self, shares: Mapping[str, int], demand: Mapping[str, int]) -> dict[str, int]:
        """Per tenant, the page-cache bytes to aim for: the share, or less with a split (only
        while memory is contested: without pressure the whole share, feedback 2.)."""
        f = self._split()
        if f is None:
            return dict(shares)
        return {t: min(s, int(f * demand.get(t, 0))) for t, s in shares.items()}

    # --------------------------------------------------------------- placement

    def place(
        self,
        tenant: str,
        size: int,
        usage: TenantUsage,
        now: float | None = None,
        pending_bytes: int = 0,
    ) -> PathName:
        """The path of a new object; ``now`` (the policy's clock) enables burst placement."""
        return self.place_many(tenant, (size,), usage, now, pending_bytes=pending_bytes)[0]

    @property
    def may_place_on_pagecache(self) -> bool:
        """Whether a placement can choose the page cache at all (forced pagecache mode, or
        adaptive with ``place_on_pagecache``): only then is the path's room worth asking."""
        mode = self.config.mode
        return mode is ResidencyMode.PAGECACHE or (
            mode is ResidencyMode.ADAPTIVE and self.config.place_on_pagecache
        )

    def wants_pending(self, tenant: str) -> bool:
        """Whether the tenant's next placement may begin a burst that takes free memory, and
        so needs ``pending_bytes``: its processes' mapped file pages not yet faulted in
        (:mod:`dualbladed.arbiter.mapped`), which free memory still counts but will lose."""
        return (
            self.config.place_on_pagecache
            and self.config.learn.burst_free_fraction > 0
            and tenant not in self._burst_room
        )

    def place_many(
        self,
        tenant: str,
        sizes: Sequence[int],
        usage: TenantUsage,
        now: float | None = None,
        fits: Mapping[int, bool] | None = None,
        pending_bytes: int = 0,
    ) -> list[PathName]:
        """The paths of new objects of one tenant, in order: :meth:`place` of each, every one
        seeing the usage the earlier ones added (``usage`` is the tenant's before the first).
        ``fits[size]``: whether the page-cache path has room for an object of that size (the
        caller asks it; a page-cache choice without room goes direct and counts as direct in
        the usage the next object sees); None: room for all. ``pending_bytes``: the tenant's
        mapped file pages not yet resident (:meth:`wants_pending`); a burst that begins here
        takes its share of free memory less them.

        Why one call for many: a packed put places 1000 objects, and per object this is the
        hot loop of ``dualblade-bench scale``. The burst detector is fed the group at once
        (same ``now``; its answer is a prefix: bursting starts at one object and stays), and a
        bursting object refused the page cache on its size refuses every later one at least
        as large (a direct choice changes none of the inputs), so a uniform burst costs O(1)
        past its first refusal.
        """
        forced = self.config.mode.forced_path
        if forced is not None:  # a forced mode is named after its path
            if forced == PAGECACHE and fits is not None:
                return [PAGECACHE if fits[size] else DIRECT for size in sizes]
            return [forced] * len(sizes)  # type: ignore[list-item]
        # noted in either case: a burst holds migrations back (docstring, 4.)
        first_burst = len(sizes) if now is None else self._bursts.note_many(tenant, sizes, now)
        if not self.config.place_on_pagecache:  # written direct, promoted if read (docstring, 3.)
            return [DIRECT] * len(sizes)
        pc, total = usage.pagecache_bytes, usage.total
        refused = math.inf  # smallest bursting size refused the page cache so far
        out: list[PathName] = []
        for i, size in enumerate(sizes):
            bursting = i >= first_burst
            if not bursting:
                self._burst_room.pop(tenant, None)
            elif tenant not in self._burst_room:  # a burst begins: its share of free memory
                free = max(0, self._free_left - pending_bytes)
                room = int(self.config.learn.burst_free_fraction * free)
                self._burst_room[tenant] = room
            # a write burst goes where writes are fastest (docstring, 3.), and to the page cache
            # only into free memory: evicting others to make room is what makes page-cache
            # writes slow (reclaim in the write, refaults after it)
            if bursting and (
                size >= refused
                or size > self._free_left
                or not self._burst_to_pagecache(tenant, size)
            ):
                refused = min(refused, size)
                choice: PathName = DIRECT
            else:
                choice = self._place_in_budget(tenant, size, pc, total)
                if choice == PAGECACHE:
                    self._free_left = max(0, self._free_left - size)
                    if bursting:
                        self._burst_room[tenant] -= size
                    if fits is not None and not fits[size]:
                        choice = DIRECT
            if choice == PAGECACHE:
                pc += size
            total += size
            out.append(choice)
        return out

    def _burst_to_pagecache(self, tenant: str, size: int) -> bool:
        """May a burst's object of ``size`` go to the page cache (module docstring, 3.)?"""
        # Only into its share of the free memory seen when it began, whatever the write speeds:
        # a write measured 4x faster into the page cache still evicts someone once free memory
        # is used up (at ratio 8 of the residency bench it put 380 MB into a room of ~300 MB:
        # hit ratio 0.67, refaults at 859 MiB/s). The share is per burst, not per tick:
        # refilled every tick, a 1 GiB prefill at ratio 1 took all the free memory (the cgroup
        # filled with dirty KV and the weights refaulted).
        if size > self._burst_room.get(tenant, 0):
            return False
        if self._write_path == PAGECACHE:
            return True  # measured faster for writes (feedback, 4.): even while contested
        # free memory holds it with margin and nobody is short of memory: writing it there once
        # beats writing it direct and promoting it back during decode
        return not self._contested and not self._pressure

    def _split(self) -> float | None:
        """The split's page-cache fraction when it applies: measured, and memory contested."""
        return self._fraction if self._contested else None

    def _place_in_budget(self, tenant: str, size: int, pc: int, total: int) -> PathName:
        """Where an object goes outside a burst, for a tenant with ``pc`` page-cache bytes of
        ``total`` (docstring, 3.)."""
        f = self._split()
        if f is not None and pc + size > f * (total + size):
            return DIRECT  # the split: this share of the tenant's reads streams from disk
        share = self._shares.get(tenant, 0)
        excess = max(0, pc + size - share)
        if excess == 0:
            return PAGECACHE
        # beyond the share only what is really new above it draws on the slack
        draw = min(excess, size)
        if draw <= self._slack:
            self._slack -= draw
            return PAGECACHE
        return DIRECT

    # -------------------------------------------------------------- migrations

    def plan(
        self,
        usage: Mapping[str, TenantUsage],
        objects_lru: Iterable[ObjectHeat],
        now: float,
        *,
        budget: Budget | None = None,
    ) -> list[Migration]:
        """Bounded demotions then promotions for this tick (``budget``: the last one held)."""
        budget = budget or self._budget
        if self.config.mode is not ResidencyMode.ADAPTIVE or budget is None:
            return []
        cfg = self.config
        demand = {t: u.total for t, u in usage.items()}
        shares = self.targets(self.shares(budget, demand), demand)
        if self._defer or self._bursts.bursting(now):
            return []  # a write burst: migrations wait (module docstring, 4.)
        objects = list(objects_lru)
        movable = [
            o
            for o in objects
            if o.tenant in usage and (o.last_moved is None or now - o.last_moved >= cfg.min_dwell_s)
        ]
        left = cfg.max_migration_bytes_per_tick
        plan: list[Migration] = []

        def take(o: ObjectHeat, need: dict[str, int], dst: PathName, reason: str) -> bool:
            nonlocal left
            if need.get(o.tenant, 0) < o.size or (o.size > left and plan):
                return False
            need[o.tenant] -= o.size
            left -= o.size
            plan.append(Migration(o.tenant, o.key, o.size, o.path, dst, reason))
            self._note(o.tenant, dst, now)
            return True

        over = {
            t: u.pagecache_bytes - shares[t]
            for t, u in usage.items()
            # under pressure the cut is measured, not noise: no dead band before demoting
            if u.pagecache_bytes > shares[t] + (0 if self._pressure else cfg.band(shares[t]))
        }
        # demotions stop a tenant at its share: round up, the last object may overshoot
        demote_need = dict(over)
        # Under measured pressure a just-promoted object may go back at once: what it evicts
        # is refaulted every step until it does (ratio 1 of the residency bench: all the KV
        # promoted, the weights refaulted at 214 MiB/s, and the dwell let one object of 62 go
        # back). Still one round trip per dwell: the demotion bars the tenant's promotions.
        demotable = objects if self._pressure else movable
        split = scans(objects, cfg.scan_window_s)  # once, for both orders
        if demote_need:
            ok = {id(o) for o in demotable if o.tenant in usage}
            for o in demotion_order(split):
                if left <= 0 and plan:
                    break
                if id(o) in ok and demote_need.get(o.tenant, 0) > 0:
                    demote_need[o.tenant] = max(demote_need[o.tenant], o.size)
                    take(o, demote_need, DIRECT, "over share")

        if not self.promotions_pay(now):
            return plan  # nobody reads the direct path: promoting would only cost
        if budget.raw < budget.total:
            # The band holds a budget this tick's signals no longer give. It keeps noise from
            # demoting, but promoting into it fills memory that is no longer free (ratio 4 of
            # the residency bench: a budget held at 412 MB from a tick with 611 MB of room,
            # the room under 300 MB when the prefill ended, 23 promotions of 386 MB, refaults
            # at 47 MiB/s, 19 demotions). Promotions grow only to ``raw``.
            shares = self.targets(self._fair_split(budget.raw, demand), demand)
        under = {
            t: shares[t] - u.pagecache_bytes
            for t, u in usage.items()
            if u.pagecache_bytes < shares[t] - self._promotion_band(shares[t])
            and now - self._last_demotion.get(t, -math.inf) >= cfg.min_dwell_s
        }
        if under:
            ok = {id(o) for o in movable}
            for o in promotion_order(split):
                if left <= 0:
                    break
                if id(o) in ok:
                    take(o, under, PAGECACHE, "under share")
        return plan

    def _promotion_band(self, target: int) -> int:
        """How far below its target a tenant may stay without promotions (docstring, 4.): the
        band, but at most a quarter of the target and at most one probe. A probe grows the cap
        only while the cap is in use, so a band wider than a probe never lets the probe be
        filled: at ratio 1 of the residency bench 53 of 64 layer objects were promoted, 99 MB
        below a 1005 MB target, and there the cap and the placement stayed for the whole run."""
        cfg = self.config
        return min(cfg.band(target), target // 4, cfg.learn.probe_bytes)

    def _note(self, tenant: str, dst: PathName, now: float) -> None:
        if dst == DIRECT:
            self._last_demotion[tenant] = now
