"""Read-only aggregation of daemon state for the admin API and dbctl.

Kept out of the servicer so the servicer stays a protobuf adapter, and so the same views can be
rendered by other front ends (the Prometheus collector, tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dualbladed.arbiter.snapshot import ResidencySnapshot
from dualbladed.namespace.abstract import Namespace
from dualbladed.service.metrics import Metrics, MetricSample
from dualbladed.sessions.registry import SessionRegistry
from dualbladed.store import ObjectInfo, ObjectStore, parse_tenant

VERSION = "0.1.0"
#: the most extents one Extents reply carries (about 100 bytes each on the wire): a client pages
#: through larger listings, so neither side ever holds a whole namespace's table at once
EXTENTS_PAGE = 4096


@dataclass
class PathTotals:
    objects: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class StatusView:
    version: str
    namespace_path: str
    namespace_kind: str
    namespace_uuid: str
    block_size: int
    capacity_bytes: int
    free_bytes: int
    largest_free_bytes: int
    fragmentation: float
    sessions: int
    uptime_s: float
    paths: dict[str, PathTotals]
    metrics: list[MetricSample]
    state_dir: str
    residency: ResidencySnapshot | None  # None: no arbiter runs
    evictions: int = 0  # capacity evictions since start, all tenants
    evicted_bytes: int = 0
    pins: int = 0  # keys hit-pinned now


@dataclass(frozen=True)
class TenantView:
    tenant: str
    uid: int
    label: str
    objects: int
    bytes: int
    quota_bytes: int
    sessions: int  # live sessions, admin ones included
    paths: dict[str, PathTotals] = field(default_factory=dict)
    admin_sessions: int = 0  # of ``sessions``, those that called the Admin service
    evictions: int = 0  # capacity evictions of the tenant's objects since start
    evicted_bytes: int = 0
    pins: int = 0  # the tenant's keys hit-pinned now


class Inventory:
    def __init__(
        self,
        *,
        namespace: Namespace,
        namespace_uuid: str,
        state_dir: str,
        store: ObjectStore,
        registry: SessionRegistry,
        metrics: Metrics,
        quota_for_tenant: Callable[[int, str], int],
        residency: Callable[[], ResidencySnapshot] | None = None,
    ) -> None:
        self._ns = namespace
        self._uuid = namespace_uuid
        self._state_dir = state_dir
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._quota_for_tenant = quota_for_tenant
        self._residency = residency
        self._started = time.monotonic()
        # Sessions that passed an admin check (dbctl's own, typically): ids of live sessions
        # only, as the registry's end callback drops each one. ``set`` add/discard are atomic.
        self._admin_ids: set[str] = set()
        registry.on_end(lambda s: self._admin_ids.discard(s.id))

    def note_admin(self, session_id: str) -> None:
        """Mark a session as an admin session (called once it passed the admin check)."""
        self._admin_ids.add(session_id)

    def status(self) -> StatusView:
        """O(tenants x paths + sessions): the store keeps running totals (issue 14)."""
        direct = self._store.paths["direct"].stats()
        paths: dict[str, PathTotals] = {}
        for per_path in self._store.totals().values():
            for name, u in per_path.items():
                t = paths.setdefault(name, PathTotals())
                t.objects += u.objects
                t.bytes += u.bytes
        evicted = self._store.evictions.total()
        return StatusView(
            version=VERSION,
            namespace_path=self._ns.path,
            namespace_kind=self._ns.kind,
            namespace_uuid=self._uuid,
            block_size=self._ns.block_size,
            capacity_bytes=self._ns.capacity,
            free_bytes=direct.free,
            largest_free_bytes=direct.largest_free,
            fragmentation=direct.fragmentation,
            sessions=len(self._registry.sessions()),
            uptime_s=time.monotonic() - self._started,
            paths=paths,
            metrics=self._metrics.snapshot(),
            state_dir=self._state_dir,
            residency=self.residency(),
            evictions=evicted.count,
            evicted_bytes=evicted.bytes,
            pins=sum(self._store.pin_counts().values()),
        )

    def tenants(self) -> list[TenantView]:
        totals = {
            tenant: {name: PathTotals(u.objects, u.bytes) for name, u in per_path.items()}
            for tenant, per_path in self._store.totals().items()
        }
        sessions: dict[str, int] = {}
        admin: dict[str, int] = {}
        live = self._registry.sessions()
        for gone in self._admin_ids - {s.id for s in live}:  # ended while being marked
            self._admin_ids.discard(gone)
        for s in live:
            sessions[s.tenant] = sessions.get(s.tenant, 0) + 1
            if s.id in self._admin_ids:
                admin[s.tenant] = admin.get(s.tenant, 0) + 1
        evicted = self._store.evictions.by_tenant()
        pins = self._store.pin_counts()
        views = []
        for name in sorted(set(totals) | set(sessions) | set(evicted)):
            if (
                name not in totals
                and name not in evicted
                and admin.get(name, 0) == sessions.get(name, 0)
            ):
                continue  # only admin sessions and no objects: dbctl itself, not a tenant
            uid, label = parse_tenant(name)
            paths = totals.get(name, {})
            views.append(
                TenantView(
                    tenant=name,
                    uid=uid,
                    label=label,
                    objects=sum(p.objects for p in paths.values()),
                    bytes=sum(p.bytes for p in paths.values()),
                    quota_bytes=self._quota_for_tenant(uid, label),
                    sessions=sessions.get(name, 0),
                    paths=paths,
                    admin_sessions=admin.get(name, 0),
                    evictions=evicted[name].count if name in evicted else 0,
                    evicted_bytes=evicted[name].bytes if name in evicted else 0,
                    pins=pins.get(name, 0),
                )
            )
        return views

    def extents(
        self, tenant: str | None, after: tuple[str, bytes] | None, limit: int = 0
    ) -> tuple[list[ObjectInfo], bool]:
        """One page in (tenant, key) order after the cursor, at most ``EXTENTS_PAGE`` long
        (``limit`` 0: the cap); returns the page and whether more follow."""
        n = min(limit, EXTENTS_PAGE) if limit > 0 else EXTENTS_PAGE
        infos = self._store.list_page(tenant, after, n + 1)
        return infos[:n], len(infos) > n

    def problems(self) -> list[str]:
        out = []
        direct = self._store.paths["direct"].stats()
        if direct.capacity and direct.free < direct.capacity * 0.02:
            out.append(f"namespace nearly full: {direct.free} of {direct.capacity} bytes free")
        return out

    def residency(self) -> ResidencySnapshot | None:
        return None if self._residency is None else self._residency()
