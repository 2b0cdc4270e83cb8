"""What the adaptive policy learns from what it measures (pure: no I/O, no clock, no threads).

The arbiter builds one frozen :class:`Observation` per tick; :class:`Feedback` turns the stream
of observations into three answers the policy acts on:

1. **The cap**: how many bytes of KV the page-cache path may hold. No reserve has to be guessed:

   - ``ceiling = effective_available - reserve`` (the reserve is an optional floor of memory
     always left alone, default 0): what the page cache could hold if every clean page were ours.
   - ``room = free + resident - reserve``: what we can hold without evicting anyone (``free``
     counts no cache at all; ``resident`` is our own cached KV, from mincore), less the pages
     the sessions' processes have mapped and not yet read (:mod:`dualbladed.arbiter.mapped`),
     which they will fault back in: weights evicted during a prefill are read again by the
     next decode step. That never takes ``room`` below ``resident``, and while such pages
     wait nothing probes (below): the memory a probe would test is known to be wanted.
   - The cap starts at ``room`` and, until pressure is seen, **tracks** it (up and down, plus
     what probing earned): free memory is worth using, but others' clean cache (the model's
     mmapped weights) is not ours until a probe shows nobody misses it. Starting at the ceiling
     promoted KV over the weights at ratio 4 of the residency bench, the weights refaulted at
     390 MiB/s and the cap was cut to 0 within a few seconds of decode. Tracking ``room`` never
     demotes what we already hold: ``room >= resident``.
   - It is **cut** when caching KV evicts pages someone needs, with ``base = min(cap, bytes we
     hold)``: file refaults above ``refault_bytes_per_s`` cut by the bytes refaulted since the
     last tick (no "background" rate is subtracted: one learned while we hold nothing is learned
     in a transient, a prefill, and would then hide the refaults our KV causes later); our own
     hit ratio (resident / bytes we hold) below ``min_hit_ratio`` cuts to what stayed resident;
     PSI ``some avg10`` above ``psi_some_pct`` (no size attached) cuts by ``decrease * base``.
     The largest of these applies, at least ``min_cut_bytes`` and at most ``max_cut_fraction *
     base`` (proportional: one burst of refaults caused by an overshoot must not throw away the
     part that fitted). If we held more than at the last tick without pressure, the first cut
     goes no lower than that calm level: what we just added is the likeliest cause, and
     refaults (a page evicted is read back every step) overstate the overshoot several-fold.
   - **Hysteresis.** While we still hold more than the cap (the last cut is being carried out by
     rate-limited demotions), and for ``settle_s`` after a cut unless refaults grow 1.5x beyond
     the rate that caused it over a tick that began with the cut carried out, pressure holds
     the cap rather than cutting again: those refaults
     are the excess already given back, or its echo (pages evicted before the demotion are read
     back during the next steps). Cutting once per tick for them took the cap from ~500 MiB to
     0 in two ticks at ratio 4, and after the first fix still from 218 MiB to 25 MiB in three
     ticks (212, 73, 23 MiB/s of refaults). The level where pressure was seen (``base``) is
     remembered for ``forget_s``: meanwhile the tenant is *contested* (the policy applies the
     split, 2.), the cap no longer follows ``room`` (right after a demotion free memory is what
     we gave back; jumping to it re-created the pressure: cut, jump back, cut at ratio 1), and it
     grows only by probing, and only to one probe below that level. So the cap converges
     between the level that hurt and the one that did not, instead of sawing down to 0.
   - **Probing**: ``calm_s`` after the last pressure, by ``probe_bytes`` per tick, while demand
     exceeds the cap, we actually use it (hold at least ``cap - probe_bytes``: growing an unused
     cap tests nothing), our hit ratio is perfect and no write burst is on; uncontested, also
     only once free memory is used up (we hold within half a probe of ``room``): a probe is
     for others' clean cache, and free memory left over is the fill's to take. A probe's step is
     taken by the policy at once (``Verdict.probed``): its hysteresis band (256 MiB) is for
     noise in the signals, and held probes back for four ticks, longer than the decode at
     ratio 1 of the residency bench, which kept 9 of its 64 layer objects on direct.
   - **Filling** free memory goes in steps: while uncontested, a tick's cap is at most what we
     hold plus ``fill_fraction`` (2/3) of the free room left (at least one probe), so a cap
     that jumps (the end of a prefill) fills two thirds of the free memory, and the rest on the
     next calm tick. Free memory at the end of a prefill is not all free for KV: at ratio 4 of
     the residency bench ``room`` said 365 MB, the first plan promoted 335-453 MB at once, the
     weights refaulted at 31-145 MiB/s and the cuts that followed landed anywhere from 59 to
     250 MB (5-22% of the KV on the page cache, decode 1010 to 696 ms). A step that stays calm
     becomes the calm level the first cut returns to, so an overshoot of the last third is
     undone to two thirds, not to wherever the refaults' echo points. Where everything fits the
     steps cost no time: migrations run at their rate cap (512 MiB/s) anyway, and the second
     plan starts when the first is done. Without MemFree (``room`` is the ceiling) there is no
     free memory to measure and no step.
   - The cap never exceeds the ceiling. Where the host gives no MemFree (tests, odd
     containers), ``room`` is the ceiling and this reduces to the old ``available - reserve``.

2. **The split**: measured read throughput per path (bytes over busy time, EWMA) gives the
   page-cache fraction ``f = r_pc / (r_pc + r_direct)`` at which a step reading its cached part
   from RAM while the direct part streams from disk finishes both at once:
   ``max(f T / r_pc, (1 - f) T / r_direct)`` is smallest there. A tenant's page-cache target
   is ``min(share, f * demand)``, but only while memory is *contested* (pressure seen within
   ``forget_s``); otherwise the target is the whole share. Measured on the residency bench with
   everything fitting (ratios 0.5 and 1): the split held 53-56% of the KV on the page cache
   and decoded at 969 / 1228 ms against 662 / 677 ms all cached; on a CPU-bound host the direct
   part's reads and checksums compete with the cached copies and the compute, which the
   throughput model does not see. No split until both paths were measured (a path with nothing
   on it has no speed), or when ``split`` is off. A page-cache sample from a tick whose hit
   ratio is below ``min_hit_ratio`` is dropped: its reads went to the disk behind evicted
   pages, which the hit-ratio cut (1.) already answers. Taken as the page cache's speed, it
   set the split's target far below the share: at ratio 4 of the residency bench (hit ratio
   0.56) the split demoted 7 of 8 page-cache objects while the budget, 140 MB, held them all.

3. **Write bursts**: on a tick whose interval saw puts place, or writes other than migrations
   write, more than ``write_burst_bytes_per_s`` (at least ``write_burst_min_bytes``),
   migrations wait: prefill's write-back must not compete with migration traffic, and moving
   what is still being written would write it twice. Only that tick: a burst that goes on is
   seen by the next tick's interval, and a placing tenant's burst by :class:`BurstDetector` at
   once. Holding one more tick cost decode at budget ratio 0.5 of the residency bench a
   second of its promotion window (two decode steps on direct reads).

4. **The write path** (used only with the policy's ``place_on_pagecache``; by default every
   new object is written direct and promoted if read, policy 3.): measured write throughput
   per path (same EWMA as reads) names the path
   a write burst goes to (``Verdict.write_path``): the page cache once both were measured and
   its writes are ``pagecache_write_advantage`` (4x) faster, else ``direct``. The margin is
   there because a page-cache write's latency hides its cost: measured in the residency bench,
   page-cache writes sampled 1.57 GB/s against direct's 1.03 early in a prefill, then fell to
   0.63 once dirty pages piled up, and the prefill that followed them took 4.0 s against 1.6 s
   direct. Under a memory limit a page-cache write pays for reclaim and dirty throttling
   (measured 7.3 s against 2.75 s for the same prefill) and its pages are written back later
   anyway; a direct write is written once and is the safe guess. The margin was 2x until a
   sweep measured page-cache writes at 1.65 GB/s against direct's 0.75 (2.2x) at the start of
   a ratio-2 prefill: 620 MB of it went into free memory the weights were about to fault into,
   the weights then refaulted at 0.6-1.0 GB/s and decode ran at 767 ms against 389-460 in the
   other runs. In every sweep on this VM pagecache mode's prefill was slower than direct's
   (1.6-2.4 s against 1.1-1.4 s), so a 2x latency advantage is not a real one; 4x is the
   memcpy-fast page cache beside a slow disk, where absorbing a burst can pay, and then even
   while memory is contested; but a faster write never takes more than the burst's share of
   free memory (below): at ratio 8 of the residency bench a 2.38 GB/s page cache beside a
   0.55 GB/s disk put 380 MB into a room of ~300 MB (hit ratio 0.67, refaults at 859 MiB/s,
   570 MB demoted in the first decode steps). **Whatever the write speeds, when free memory
   holds it**: while memory is not contested, a burst goes to the page cache until its placements
   there take ``burst_free_fraction`` of the free memory seen when it began (MemFree /
   cgroup headroom, never others' clean cache), less the file pages its tenant's processes
   have mapped and not yet read (:mod:`dualbladed.arbiter.mapped`): the weights a prefill
   faults in while it writes its KV. When everything fits, the slower prefill costs
   less than promoting the burst back during decode (policy, 3.). Otherwise hot objects are promoted
   afterwards, off the critical path (rate-limited migrations, none during a burst). Which
   tenant is bursting *now*, at placement time, is :class:`BurstDetector`'s answer.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from dualbladed.arbiter.signals import MemorySignals, PathReads
from dualbladed.paths.abstract import DIRECT, PAGECACHE

MiB = 1 << 20
PAGE = 4096
#: a speed sample needs this much reading in the interval, or it is noise
MIN_SAMPLE_BYTES = 8 * MiB
MIN_SAMPLE_BUSY_S = 0.01
#: below this many bytes on the page-cache path the hit ratio says nothing
MIN_HIT_BYTES = 32 * MiB


@dataclass(frozen=True)
class FeedbackConfig:
    refault_bytes_per_s: int = 16 * MiB
    psi_some_pct: float = 10.0
    min_hit_ratio: float = 0.9
    decrease: float = 0.25
    min_cut_bytes: int = 16 * MiB
    #: one cut takes at most this share of what we hold (module docstring, 1.)
    max_cut_fraction: float = 0.5
    calm_s: float = 5.0
    probe_bytes: int = 64 * MiB
    #: an uncontested cap grows by at most this share of the free room per tick (module
    #: docstring, 1., filling); 1.0 takes all free memory at once
    fill_fraction: float = 2 / 3
    #: how long a level where pressure was seen bounds probing (and keeps the split on)
    forget_s: float = 60.0
    #: after a cut, pressure no stronger than the one that caused it does not cut again for
    #: this long: evicted pages are refaulted for a step or two after the demotion that ended
    #: the eviction (module docstring, 1., hysteresis)
    settle_s: float = 5.0
    write_burst_bytes_per_s: int = 128 * MiB
    write_burst_min_bytes: int = 64 * MiB
    #: a tenant that placed at least this many bytes within ``burst_window_s`` is bursting:
    #: its new objects go to the faster write path (:class:`BurstDetector`)
    tenant_burst_bytes: int = 32 * MiB
    #: a write burst goes to the page cache only when its writes were measured at least this
    #: many times faster than direct ones (module docstring, 4.)
    pagecache_write_advantage: float = 4.0
    #: whatever the write speeds, a burst goes to the page cache while memory is not contested
    #: and its page-cache placements take at most ``burst_free_fraction`` of the free memory
    #: seen when the burst began, less what the tenant's processes have mapped and not yet
    #: read (:mod:`dualbladed.arbiter.mapped`: a model's weights, faulted in by the very prefill
    #: that bursts); 0 turns it off (module docstring, 4.). History (docs/residency.md): off
    #: until the twelfth session, because free memory alone could not tell itself from the
    #: weights' future pages: at 0.3, ratio 2 of the residency bench met refaults at 749 MiB/s
    #: and ratio 4 placed 470 MB into a room the weights shrank to 240-300 MB. With the mapped
    #: pages left out, 0.6 put the whole KV of budget ratio 0.5 on the page cache during the
    #: burst (no promotion window: decode p99 578 / 858 ms against 2360 / 2735 ms at 0), the
    #: decode's wait beyond compute fell at ratios 0.5 and 1, and the bursts of ratios 2, 4
    #: and 8 took 272-320, 64-176 and 16-64 MiB, inside their rooms of 512, 256 and 128 MiB.
    #: The margin (0.4 of free memory) is for what this cannot see: the client's anonymous
    #: memory still to grow (activations) and the kernel's own slack.
    burst_free_fraction: float = 0.6
    burst_window_s: float = 2.0
    #: a burst is over for migrations once its tenant placed nothing for this long (or twice
    #: its last gap between placements, if longer): :class:`BurstDetector`
    burst_quiet_s: float = 0.5
    split: bool = True
    speed_alpha: float = 0.5


@dataclass(frozen=True)
class Observation:
    """One tick's measurements, as the arbiter read them (cumulative counters stay cumulative)."""

    now: float  # monotonic seconds
    signals: MemorySignals
    pagecache_resident: int  # our slabs' resident bytes (mincore)
    pagecache_bytes: int  # bytes of objects we hold on the page-cache path
    demand_bytes: int  # bytes of all objects (both paths)
    reads: Mapping[str, PathReads]  # ReadMeter's cumulative counters per path
    placed_bytes: int  # cumulative bytes placed by puts since the arbiter started
    #: ReadMeter's cumulative write counters per path (appends, puts and migrations)
    writes: Mapping[str, PathReads] = field(default_factory=dict)
    migrated_bytes: int = 0  # cumulative bytes the arbiter moved (their writes are no burst)
    #: the sessions' mapped file pages not yet resident (:mod:`dualbladed.arbiter.mapped`)
    mapped_pending: int = 0


@dataclass(frozen=True)
class Verdict:
    """What :meth:`Feedback.update` concluded from one observation (also for dbctl)."""

    cap: int
    ceiling: int
    room: int
    pressure: str | None  # why the cap was cut ("refaults 40 MiB/s"), None without pressure
    refault_bytes_per_s: float | None
    hit_ratio: float | None
    speeds_gbps: Mapping[str, float]  # EWMA per path
    pagecache_fraction: float | None  # the split's f, None: no split
    write_burst: bool
    write_speeds_gbps: Mapping[str, float] = field(default_factory=dict)  # EWMA per path
    write_path: str = DIRECT  # where a write burst goes now (module docstring, 4.)
    #: pressure was seen within ``forget_s``: the split applies (module docstring, 2.)
    contested: bool = False
    #: this tick's cap grew by a probe or a fill step: a deliberate step the policy takes at
    #: once, not noise for its hysteresis band to hold back (module docstring, 1.)
    probed: bool = False


class Feedback:
    """See the module docstring; one instance per policy, fed in time order."""

    def __init__(self, config: FeedbackConfig, reserve_bytes: int = 0) -> None:
        self.config = config
        self.reserve_bytes = reserve_bytes
        self._cap: int | None = None
        self._last: Observation | None = None
        self._last_pressure = -math.inf
        self._speeds: dict[str, float] = {}
        self._write_speeds: dict[str, float] = {}
        self._extra = 0  # what probing earned above ``room`` before any pressure
        self._bad: int | None = None  # the level (bytes we held) where pressure was last seen
        self._last_cut = -math.inf  # when the cap was last cut
        self._cut_rate = 0.0  # the refault rate (bytes/s) that caused it
        #: bytes we held at the last tick without pressure (None: none since the last cut)
        self._calm_held: int | None = None
        #: when we first held no more than the cut cap after the last cut (None: not yet)
        self._carried_at: float | None = None
        self.verdict: Verdict | None = None

    def update(self, obs: Observation) -> Verdict:
        cfg = self.config
        sig = obs.signals
        reserve = self.reserve_bytes
        ceiling = max(0, sig.effective_available - reserve)
        free = sig.free
        room = ceiling
        if free is not None:  # less what mapped weights will fault back into (never below
            spare = free - reserve  # what we hold: this alone must not demote)
            if spare > 0:
                spare = max(0, spare - obs.mapped_pending)
            room = min(ceiling, max(0, spare + obs.pagecache_resident))
        last = self._last
        dt = obs.now - last.now if last is not None else 0.0

        refault_rate = None
        refaulted = 0
        if last is not None and dt > 0 and sig.refault_pages is not None:
            prev = last.signals.refault_pages
            if prev is not None and sig.refault_pages >= prev:
                refaulted = (sig.refault_pages - prev) * PAGE
                refault_rate = refaulted / dt
        hit = None
        if obs.pagecache_bytes >= MIN_HIT_BYTES:
            hit = min(1.0, obs.pagecache_resident / obs.pagecache_bytes)

        burst = self._burst(last, obs, dt)
        cap = before = self._cap
        base = min(cap if cap is not None else ceiling, obs.pagecache_bytes)
        pressure = None
        cut = 0
        if refault_rate is not None and refault_rate > cfg.refault_bytes_per_s:
            pressure = f"refaults {refault_rate / MiB:.0f} MiB/s"
            cut = refaulted  # demote what others had to read back
        if hit is not None and hit < cfg.min_hit_ratio:
            pressure = pressure or f"hit ratio {hit:.2f}"
            cut = max(cut, obs.pagecache_bytes - obs.pagecache_resident)  # keep what stayed
        if sig.psi_some_avg10 is not None and sig.psi_some_avg10 > cfg.psi_some_pct:
            pressure = pressure or f"psi some {sig.psi_some_avg10:.1f}%"
            cut = max(cut, int(cfg.decrease * base))

        contested = obs.now - self._last_pressure < cfg.forget_s
        probed = filling = False
        held = obs.pagecache_bytes
        # pressure while we hold (next to) nothing is not ours to answer: nothing to give back,
        # and learning from it would keep the cap at 0 and the tenant contested for forget_s.
        # Seen at ratio 2 of the residency bench: the host-wide PSI avg10 of the run before
        # (cgroup v1 has no PSI of its own) cut an empty cap to 0 for the whole decode.
        ours = obs.pagecache_bytes >= MIN_HIT_BYTES
        if cap is None:
            # free memory; others' clean cache only once a probe shows it unused
            cap, _ = self._fill(held, room, measured=free is not None)
        elif pressure is not None and ours:
            self._last_pressure = obs.now
            self._extra = 0
            contested = True
            # hold while the last cut is still being carried out, or is settling and the
            # pressure is no stronger than what caused it (module docstring, 1., hysteresis)
            # (only a cut is "carried out": without one, holding more than the cap is the room
            # having shrunk under us, and the first cut must not wait for it; seen at ratio 1)
            carried_out = self._bad is None or obs.pagecache_bytes <= cap + cfg.min_cut_bytes
            # refaults far stronger than the cut's cause cut again before settle_s, but only
            # when measured over a tick that began with the cut carried out: until then they
            # are the echo of what we held above the cap (ratio 4: a cut from 287 to 270 MB on
            # 34 MiB/s measured over 0.2 s, then 141 MiB/s over the next second while the two
            # demotions ran, and a second cut to 134 MB, half of what fitted)
            echo = self._carried_at is None or last is None or last.now < self._carried_at
            settled = obs.now - self._last_cut >= cfg.settle_s or (
                not echo and (refault_rate or 0.0) > self._cut_rate * 1.5
            )
            if carried_out and settled:
                most = max(cfg.min_cut_bytes, int(cfg.max_cut_fraction * base))
                cap = max(0, base - min(max(cut, cfg.min_cut_bytes), most))
                # what we added since the last calm tick is what the pressure answers first:
                # the first cut goes no lower than that level (ratio 1 of the residency bench:
                # a probe took 1007 MB to 1076 MB, the weights refaulted 271 MiB in the next
                # second while the promotions' pages were still dirty, and a cut by that much
                # demoted 17 objects where 4 had been added). Refaults that go on past the
                # settle time cut again from there, by what they measure.
                if self._calm_held is not None and self._calm_held < base:
                    cap = max(cap, min(self._calm_held, base - cfg.min_cut_bytes))
                self._calm_held = None  # spent: the next cut measures from here
                self._bad = base
                self._last_cut = obs.now
                self._cut_rate = refault_rate or 0.0
                self._carried_at = None
        else:
            if not contested:
                self._bad = None
                # tracks free memory, down as well as up, in fill steps
                cap, filling = self._fill(held, room, measured=free is not None)
                cap += self._extra  # plus what probing earned (not a fill step's to bound)
            # uncontested, a probe takes others' cache: only once the free memory is used up
            # (a fill step that binds leaves more than a probe of it). At ratio 4 of the
            # residency bench a probe came on the tick the fill reached the room, holding
            # 100 MB of a 151 MB room: a 218 MB cap, 7 promotions, refaults at 44 MiB/s.
            used_up = contested or held >= room - cfg.probe_bytes // 2
            # and no probe while mapped pages wait to be read: others' cache is theirs for sure
            probed = (
                pressure is None
                and used_up
                and obs.mapped_pending == 0
                and self._probe(obs, cap, hit, burst)
            )
            if probed:
                if not contested:
                    self._extra += cfg.probe_bytes
                    cap += cfg.probe_bytes
                elif self._bad is not None:
                    cap = max(cap, min(cap + cfg.probe_bytes, self._bad - cfg.probe_bytes))
        cap = min(cap, ceiling)
        self._extra = min(self._extra, max(0, ceiling - room))
        self._cap = cap
        if self._carried_at is None and obs.pagecache_bytes <= cap:
            self._carried_at = obs.now

        # a page-cache read sample taken while our pages were being evicted measured the disk
        # behind them: the hit-ratio cut answers that, the split must not answer it again
        evicted = (PAGECACHE,) if hit is not None and hit < cfg.min_hit_ratio else ()
        self._speeds = self._update_speeds(self._speeds, last, obs, "reads", skip=evicted)
        self._write_speeds = self._update_speeds(self._write_speeds, last, obs, "writes")
        write_path = choose_write_path(self._write_speeds, cfg.pagecache_write_advantage)
        fraction = None
        pc, dr = self._speeds.get(PAGECACHE), self._speeds.get(DIRECT)
        if cfg.split and pc and dr:
            fraction = pc / (pc + dr)

        if pressure is None:
            self._calm_held = obs.pagecache_bytes
        self._last = obs
        self.verdict = Verdict(
            cap,
            ceiling,
            room,
            pressure,
            refault_rate,
            hit,
            dict(self._speeds),
            fraction,
            burst,
            dict(self._write_speeds),
            write_path,
            contested,
            (probed or filling) and before is not None and cap > before,
        )
        return self.verdict

    def _fill(self, held: int, room: int, *, measured: bool) -> tuple[int, bool]:
        """The cap free memory gives this tick, and whether the fill step bounded it (module
        docstring, 1., filling): ``room``, or less by the step where free memory was measured."""
        if not measured:
            return room, False
        cfg = self.config
        limit = held + max(cfg.probe_bytes, int(cfg.fill_fraction * (room - held)))
        return min(room, limit), limit < room

    def _probe(self, obs: Observation, cap: int, hit: float | None, burst: bool) -> bool:
        """Grow the cap by a probe now? (module docstring, 1., probing)"""
        cfg = self.config
        return (
            obs.now - self._last_pressure >= cfg.calm_s
            and not burst
            and obs.demand_bytes > cap
            and obs.pagecache_bytes >= cap - cfg.probe_bytes  # the cap is in use
            and (hit is None or hit >= 0.99)
        )

    def _burst(self, last: Observation | None, obs: Observation, dt: float) -> bool:
        """A write burst in this tick's interval (module docstring, 3.)."""
        cfg = self.config
        if last is None or dt <= 0:
            return False
        placed = obs.placed_bytes - last.placed_bytes
        written = sum(w.bytes for w in obs.writes.values()) - sum(
            w.bytes for w in last.writes.values()
        )
        written -= obs.migrated_bytes - last.migrated_bytes  # our own moves are no burst
        return any(
            moved >= cfg.write_burst_min_bytes and moved / dt > cfg.write_burst_bytes_per_s
            for moved in (placed, written)
        )

    def _update_speeds(
        self,
        speeds: dict[str, float],
        last: Observation | None,
        obs: Observation,
        kind: str,
        skip: tuple[str, ...] = (),
    ) -> dict[str, float]:
        """``speeds`` advanced by this interval's samples of ``obs.reads`` or ``obs.writes``
        (none for the paths in ``skip``)."""
        if last is None:
            return speeds
        a = self.config.speed_alpha
        out = dict(speeds)
        before: Mapping[str, PathReads] = getattr(last, kind)
        for path, now in getattr(obs, kind).items():
            if path in skip:
                continue
            d = now.minus(before.get(path, PathReads()))
            if d.bytes < MIN_SAMPLE_BYTES or d.busy_s < MIN_SAMPLE_BUSY_S:
                continue
            sample = d.bytes / d.busy_s / 1e9
            old = out.get(path)
            out[path] = sample if old is None else a * sample + (1 - a) * old
        return out


def choose_write_path(write_speeds: Mapping[str, float], advantage: float) -> str:
    """The path a write burst goes to: the page cache once both were measured and its writes
    are ``advantage`` times faster, else ``direct`` (written once, no reclaim or dirty
    throttling; and writing there measures it). A page-cache write's latency is not its cost:
    its bytes are written back to the same disk later, and its throttling starts only once
    dirty pages pile up, after the sample. Only a memcpy-fast page cache pays for that."""
    pc, dr = write_speeds.get(PAGECACHE), write_speeds.get(DIRECT)
    if pc and dr and pc >= advantage * dr:
        return PAGECACHE
    return DIRECT


class BurstDetector:
    """Which tenants are writing in a burst now (pure: ``now`` is passed in).

    Fed every placement (``note``); a tenant that placed at least ``threshold`` bytes within
    the last ``window_s`` seconds is bursting, and so its next objects go to the faster write
    path. The per-tick detector in :class:`Feedback` sees a burst only after a tick; prefill
    reserves its layers one by one while it computes, so placement must know at once.

    Migrations wait for a burst only while it goes on (:meth:`bursting`): a tenant whose
    placements stopped for ``max(quiet_s, 2 x its last gap between them)`` has ended its burst,
    though its bytes stay in the window. The window is what classifies a write rate; the end
    is what decode waits for: a prefill's last layer is followed by decode at once, and in the
    residency bench each second of waiting for the window to drain was two decode steps
    reading direct what a promotion would have cached.
    """

    def __init__(self, threshold: int, window_s: float, quiet_s: float = 0.5) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.quiet_s = quiet_s
        self._recent: dict[str, deque[tuple[float, int]]] = {}
        self._bytes: dict[str, int] = {}
        #: per tenant: the last gap between two instants it placed at (none yet: 0)
        self._gap: dict[str, float] = {}

    def note(self, tenant: str, size: int, now: float) -> bool:
        """Record a placement of ``size`` bytes; True if the tenant is bursting with it."""
        return self.note_many(tenant, (size,), now) == 0

    def note_many(self, tenant: str, sizes: Sequence[int], now: float) -> int:
        """:meth:`note` of each of ``sizes`` in order, at one ``now``; the index of the first
        with which the tenant is bursting (``len(sizes)``: none). The group is one record: its
        objects would expire together anyway, and its bytes only grow along it, so bursting,
        once reached, holds to its end."""
        total = sum(sizes)
        q = self._recent.setdefault(tenant, deque())
        if q and now > q[-1][0]:  # placements at one instant are one (note_many is note of each)
            self._gap[tenant] = now - q[-1][0]
        q.append((now, total))
        self._bytes[tenant] = self._bytes.get(tenant, 0) + total
        self._expire(tenant, now)
        before = self._bytes[tenant] - total
        if before + total < self.threshold:
            return len(sizes)
        return next(i for i, n in enumerate(accumulate(sizes)) if before + n >= self.threshold)

    def bursting(self, now: float) -> bool:
        """Any tenant bursting within the window and not yet quiet (migrations wait for it)."""
        for tenant in list(self._recent):
            self._expire(tenant, now)
        return any(
            b >= self.threshold
            and now - self._recent[t][-1][0] < max(self.quiet_s, 2.0 * self._gap.get(t, 0.0))
            for t, b in self._bytes.items()
        )

    def _expire(self, tenant: str, now: float) -> None:
        q = self._recent[tenant]
        while q and now - q[0][0] > self.window_s:
            _, size = q.popleft()
            self._bytes[tenant] -= size
        if not q:
            del self._recent[tenant]
            self._bytes.pop(tenant, None)
            self._gap.pop(tenant, None)
