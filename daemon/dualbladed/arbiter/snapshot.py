"""What the residency arbiter shows of itself: frozen, typed, free of any wire format.

:meth:`~dualbladed.arbiter.arbiter.ResidencyArbiter.snapshot` returns a
:class:`ResidencySnapshot`; the admin servicer converts it to the ``dualblade.v1.ResidencyStatus``
message in one place (:mod:`dualbladed.service.residency`), and dbctl renders that message. The
schema therefore lives in these dataclasses and in the proto, and nowhere else.

Sizes are bytes, times are seconds. ``None`` means "not known yet" (no tick has run, no PSI
trigger has fired, the page-cache path is closing), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualbladed.arbiter.feedback import Verdict
from dualbladed.arbiter.signals import MemorySignals
from dualbladed.config import ResidencyMode

__all__ = [
    "BudgetStatus",
    "MemorySignals",
    "MigrationRecord",
    "PageCacheStatus",
    "PsiStatus",
    "ResidencySnapshot",
    "ResidencyTotals",
    "TenantResidency",
]


@dataclass(frozen=True)
class MigrationRecord:
    """One executed (or attempted) migration, for dbctl and the logs."""

    time: float  # unix seconds when it ended
    tenant: str
    key: bytes
    src: str
    dst: str
    bytes: int
    ms: float
    ok: bool
    reason: str  # the policy's reason ("over share" / "under share")
    error: str | None = None


@dataclass(frozen=True)
class BudgetStatus:
    """The held page-cache budget with the two settings that shape it."""

    total: int  # the budget in force (after hysteresis)
    raw: int  # what the last tick's signals alone would give
    effective_available: int
    pagecache_resident: int  # our page-cache footprint (mincore)
    reserve: int
    hysteresis: int


@dataclass(frozen=True)
class PsiStatus:
    mode: str | None  # the watcher's mode; None when no PSI trigger is armed
    events: int
    last_event_age_s: float | None


@dataclass(frozen=True)
class PageCacheStatus:
    max_bytes: int
    used: int
    free: int
    slabs: int
    refusing: str = ""  # why it refuses objects now (arbiter/room.py); empty: it takes them


@dataclass(frozen=True)
class TenantResidency:
    tenant: str
    pagecache: int  # bytes on the page-cache path
    direct: int  # bytes on the direct path
    share: int  # the tenant's share of the budget
    weight: float


@dataclass(frozen=True)
class ResidencyTotals:
    """Counters since start, plus the bytes on each path now."""

    placed_pagecache: int = 0
    placed_direct: int = 0
    migrations: int = 0
    failed_migrations: int = 0
    demoted_bytes: int = 0
    promoted_bytes: int = 0
    pagecache_bytes: int = 0
    direct_bytes: int = 0
    pagecache_refusals: int = 0  # page-cache refusals: placements, promotions, plans (room.py)


@dataclass(frozen=True)
class ResidencySnapshot:
    mode: ResidencyMode
    tick_s: float
    ticks: int
    last_tick_age_s: float | None
    migration_bytes_per_s: int
    budget: BudgetStatus | None
    signals: MemorySignals | None
    psi: PsiStatus
    pagecache: PageCacheStatus | None
    tenants: tuple[TenantResidency, ...]  # sorted by tenant
    migrations: tuple[MigrationRecord, ...]  # oldest first
    totals: ResidencyTotals
    #: what the budget learned on the last tick (cap, pressure, speeds, split, write path);
    #: on the wire as ``ResidencyStatus.feedback`` (service/residency.py)
    feedback: Verdict | None = None
