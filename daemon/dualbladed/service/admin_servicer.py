"""The ``dualblade.v1.Admin`` servicer (dbctl): root or the admin group only.

Read-only views over the daemon's state. Aggregation (per-tenant totals, per-path usage) is done
by :class:`~dualbladed.service.inventory.Inventory`; this module only converts to protobuf.
"""

from __future__ import annotations

import grpc

from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualbladed.service.calls import rpc
from dualbladed.service.inventory import Inventory, PathTotals
from dualbladed.service.residency import residency_pb
from dualbladed.sessions.registry import Session, SessionRegistry
from dualbladed.sessions.tenancy import require_admin


def _paths_pb(paths: dict[str, PathTotals]) -> list[pb.PathUsage]:
    return [
        pb.PathUsage(path=n, objects=t.objects, bytes=t.bytes) for n, t in sorted(paths.items())
    ]


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(
        self, registry: SessionRegistry, inventory: Inventory, admin_group: str | None
    ) -> None:
        self.registry = registry
        self._inv = inventory
        self._admin_group = admin_group

    def _check(self, session: Session) -> None:
        require_admin(session.uid, session.gid, session.pid, self._admin_group)
        self._inv.note_admin(session.id)

    @rpc()
    def Status(
        self, request: pb.StatusRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.StatusResponse:
        self._check(session)
        s = self._inv.status()
        return pb.StatusResponse(
            version=s.version,
            namespace_path=s.namespace_path,
            namespace_kind=s.namespace_kind,
            namespace_uuid=s.namespace_uuid,
            block_size=s.block_size,
            capacity_bytes=s.capacity_bytes,
            free_bytes=s.free_bytes,
            largest_free_bytes=s.largest_free_bytes,
            fragmentation=s.fragmentation,
            sessions=s.sessions,
            uptime_s=s.uptime_s,
            paths=_paths_pb(s.paths),
            metrics=[
                pb.TenantMetrics(
                    tenant=m.tenant,
                    path=m.path,
                    op=m.op,
                    ops=m.ops,
                    bytes=m.bytes,
                    errors=m.errors,
                    latency=pb.Histogram(
                        bounds_ms=list(m.bounds_ms),
                        counts=list(m.counts),
                        count=m.ops,
                        sum_ms=m.sum_ms,
                    ),
                )
                for m in s.metrics
            ],
            state_dir=s.state_dir,
            residency=None if s.residency is None else residency_pb(s.residency),
            evictions=s.evictions,
            evicted_bytes=s.evicted_bytes,
            pins=s.pins,
        )

    @rpc()
    def Tenants(
        self, request: pb.TenantsRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.TenantsResponse:
        self._check(session)
        return pb.TenantsResponse(
            tenants=[
                pb.Tenant(
                    tenant=t.tenant,
                    uid=t.uid,
                    label=t.label,
                    objects=t.objects,
                    bytes=t.bytes,
                    quota_bytes=t.quota_bytes,
                    sessions=t.sessions,
                    paths=_paths_pb(t.paths),
                    admin_sessions=t.admin_sessions,
                    evictions=t.evictions,
                    evicted_bytes=t.evicted_bytes,
                    pins=t.pins,
                )
                for t in self._inv.tenants()
            ]
        )

    @rpc()
    def Extents(
        self, request: pb.ExtentsRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.ExtentsResponse:
        self._check(session)
        after = (request.after_tenant, request.after_key) if request.after_tenant else None
        infos, more = self._inv.extents(request.tenant or None, after, request.limit)
        return pb.ExtentsResponse(
            more=more,
            extents=[
                pb.Extent(
                    tenant=i.tenant,
                    key=i.key,
                    path=i.path,
                    offset=i.offset,
                    length=i.length,
                    size=i.size,
                    persistent=i.persistent,
                    generation=i.generation,
                )
                for i in infos
            ],
        )

    @rpc()
    def Health(
        self, request: pb.HealthRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.HealthResponse:
        self._check(session)
        problems = self._inv.problems()
        return pb.HealthResponse(serving=not problems, problems=problems)

    @rpc()
    def Residency(
        self, request: pb.ResidencyRequest, context: grpc.ServicerContext, session: Session
    ) -> pb.ResidencyResponse:
        self._check(session)
        snap = self._inv.residency()
        return pb.ResidencyResponse(status=None if snap is None else residency_pb(snap))
