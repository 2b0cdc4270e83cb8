"""The arbiter's :class:`ResidencySnapshot` as a ``dualblade.v1.ResidencyStatus``: the one place
where residency state is converted to the wire (Status and Residency both use it).

``None`` in the snapshot becomes an absent message or an absent ``optional`` scalar, so a reader
can tell "not known yet" from zero. Fields are copied by name (:func:`~.protoconv.to_pb`, which
refuses a field nobody fills); only sub-messages and computed values are spelled out here.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

from dualblade.v1 import dualblade_pb2 as pb
from dualbladed.arbiter.feedback import Verdict
from dualbladed.arbiter.snapshot import ResidencySnapshot
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.service.protoconv import to_pb

M = TypeVar("M", bound=Message)


def _feedback_pb(v: Verdict) -> pb.ResidencyFeedback:
    speeds = {}
    for path in (PAGECACHE, DIRECT):
        speeds[f"{path}_read_gbps"] = v.speeds_gbps.get(path)
        speeds[f"{path}_write_gbps"] = v.write_speeds_gbps.get(path)
    return to_pb(pb.ResidencyFeedback, v, **speeds)


def residency_pb(snap: ResidencySnapshot) -> pb.ResidencyStatus:
    def optional(message: type[M], value: object | None) -> M | None:
        return None if value is None else to_pb(message, value)

    return to_pb(
        pb.ResidencyStatus,
        snap,
        mode=str(snap.mode),  # ResidencyMode.__str__ is its value
        psi=to_pb(pb.PsiStatus, snap.psi),
        tenants=[to_pb(pb.TenantResidency, t) for t in snap.tenants],
        migrations=[to_pb(pb.Migration, m, ms=round(m.ms, 3)) for m in snap.migrations],
        totals=to_pb(pb.ResidencyTotals, snap.totals),
        budget=optional(pb.ResidencyBudget, snap.budget),
        signals=optional(pb.MemorySignals, snap.signals),
        pagecache=optional(pb.PageCacheStatus, snap.pagecache),
        feedback=None if snap.feedback is None else _feedback_pb(snap.feedback),
    )
