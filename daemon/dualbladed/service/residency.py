"""The arbiter's :class:`ResidencySnapshot` as a ``dualblade.v1.ResidencyStatus``: the one place
where residency state is converted to the wire (Status and Residency both use it).

``None`` in the snapshot becomes an absent message or an absent ``optional`` scalar, so a reader
can tell "not known yet" from zero.
"""

from __future__ import annotations

from dualblade.v1 import dualblade_pb2 as pb
from dualbladed.arbiter.feedback import Verdict
from dualbladed.arbiter.snapshot import MemorySignals, MigrationRecord, ResidencySnapshot
from dualbladed.paths.abstract import DIRECT, PAGECACHE


def _signals_pb(s: MemorySignals) -> pb.MemorySignals:
    msg = pb.MemorySignals(
        mem_total=s.mem_total,
        mem_available=s.mem_available,
        effective_available=s.effective_available,
    )
    for name in (
        "cgroup_version",
        "cgroup_limit",
        "cgroup_usage",
        "cgroup_cache",
        "psi_some_avg10",
        "psi_full_avg10",
    ):
        value = getattr(s, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def _migration_pb(m: MigrationRecord) -> pb.Migration:
    msg = pb.Migration(
        time=m.time,
        tenant=m.tenant,
        key=m.key,
        src=m.src,
        dst=m.dst,
        bytes=m.bytes,
        ms=round(m.ms, 3),
        ok=m.ok,
        reason=m.reason,
    )
    if m.error is not None:
        msg.error = m.error
    return msg


def _feedback_pb(v: Verdict) -> pb.ResidencyFeedback:
    msg = pb.ResidencyFeedback(
        cap=v.cap,
        ceiling=v.ceiling,
        room=v.room,
        write_burst=v.write_burst,
        write_path=v.write_path,
    )
    optional = {
        "pressure": v.pressure,
        "refault_bytes_per_s": v.refault_bytes_per_s,
        "hit_ratio": v.hit_ratio,
        "pagecache_fraction": v.pagecache_fraction,
    }
    for path in (PAGECACHE, DIRECT):
        optional[f"{path}_read_gbps"] = v.speeds_gbps.get(path)
        optional[f"{path}_write_gbps"] = v.write_speeds_gbps.get(path)
    for name, value in optional.items():
        if value is not None:
            setattr(msg, name, value)
    return msg


def residency_pb(snap: ResidencySnapshot) -> pb.ResidencyStatus:
    msg = pb.ResidencyStatus(
        mode=str(snap.mode),  # ResidencyMode.__str__ is its value
        tick_s=snap.tick_s,
        ticks=snap.ticks,
        migration_bytes_per_s=snap.migration_bytes_per_s,
        psi=pb.PsiStatus(events=snap.psi.events),
        tenants=[
            pb.TenantResidency(
                tenant=t.tenant,
                pagecache=t.pagecache,
                direct=t.direct,
                share=t.share,
                weight=t.weight,
            )
            for t in snap.tenants
        ],
        migrations=[_migration_pb(m) for m in snap.migrations],
        totals=pb.ResidencyTotals(**vars(snap.totals)),
    )
    if snap.last_tick_age_s is not None:
        msg.last_tick_age_s = snap.last_tick_age_s
    if snap.psi.mode is not None:
        msg.psi.mode = snap.psi.mode
    if snap.psi.last_event_age_s is not None:
        msg.psi.last_event_age_s = snap.psi.last_event_age_s
    if snap.budget is not None:
        msg.budget.CopyFrom(pb.ResidencyBudget(**vars(snap.budget)))
    if snap.signals is not None:
        msg.signals.CopyFrom(_signals_pb(snap.signals))
    if snap.pagecache is not None:
        msg.pagecache.CopyFrom(pb.PageCacheStatus(**vars(snap.pagecache)))
    if snap.feedback is not None:
        msg.feedback.CopyFrom(_feedback_pb(snap.feedback))
    return msg
