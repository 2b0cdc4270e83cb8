"""The arbiter's typed snapshot on the wire and back in dbctl's JSON shape.

Built by hand so every field has a distinct value (a swapped field fails) and so the "not known
yet" cases (None) are covered: no budget, no signals, no PSI trigger, a closed page-cache path.
"""

from __future__ import annotations

import dataclasses
import json

from dualblade.v1 import dualblade_pb2 as pb
from dualblade_tools.dbctl import residency_dict
from dualbladed.arbiter.feedback import Verdict
from dualbladed.arbiter.snapshot import (
    BudgetStatus,
    MemorySignals,
    MigrationRecord,
    PageCacheStatus,
    PsiStatus,
    ResidencySnapshot,
    ResidencyTotals,
    TenantResidency,
)
from dualbladed.config import ResidencyMode
from dualbladed.service.residency import residency_pb

TB = 1 << 40  # above 2**32, so a 32-bit field on the wire would fail


def full() -> ResidencySnapshot:
    return ResidencySnapshot(
        mode=ResidencyMode.ADAPTIVE,
        tick_s=0.5,
        ticks=12,
        last_tick_age_s=0.25,
        migration_bytes_per_s=64 << 20,
        budget=BudgetStatus(TB + 1, TB + 2, TB + 3, TB + 4, TB + 5, TB + 6),
        signals=MemorySignals(
            timestamp=1.0,
            mem_total=TB + 10,
            mem_available=TB + 11,
            cgroup_version=2,
            cgroup_limit=TB + 12,
            cgroup_usage=TB + 13,
            cgroup_cache=TB + 14,
            psi_some_avg10=1.5,
            psi_full_avg10=0.5,
        ),
        psi=PsiStatus(mode="trigger", events=3, last_event_age_s=2.0),
        pagecache=PageCacheStatus(TB + 20, TB + 21, TB + 22, 7, "free-space floor reached"),
        tenants=(
            TenantResidency("0/a", TB + 30, TB + 31, TB + 32, 2.0),
            TenantResidency("1000/b", 1, 2, 3, 0.5),
        ),
        migrations=(
            MigrationRecord(
                1700000000.5, "0/a", b"k\xff", "pagecache", "direct", 4096, 1.25, True, "over share"
            ),
            MigrationRecord(
                1700000001.5,
                "1000/b",
                b"x",
                "direct",
                "pagecache",
                8192,
                2.5,
                False,
                "under share",
                "NotFound: gone",
            ),
        ),
        totals=ResidencyTotals(1, 2, 3, 4, TB + 40, TB + 41, TB + 42, TB + 43, 5),
        feedback=Verdict(
            cap=TB + 50,
            ceiling=TB + 51,
            room=TB + 52,
            pressure="refaults 40 MiB/s",
            refault_bytes_per_s=41943040.0,
            hit_ratio=0.75,
            speeds_gbps={"pagecache": 6.5, "direct": 1.25},
            pagecache_fraction=0.8,
            write_burst=True,
            write_speeds_gbps={"pagecache": 0.25, "direct": 1.5},
            write_path="direct",
        ),
    )


def test_every_field_crosses_the_wire_and_lands_in_dbctls_shape() -> None:
    wire = pb.ResidencyStatus.FromString(residency_pb(full()).SerializeToString())
    d = json.loads(json.dumps(residency_dict(wire)))
    assert (d["mode"], d["tick_s"], d["ticks"], d["last_tick_age_s"]) == ("adaptive", 0.5, 12, 0.25)
    assert d["migration_bytes_per_s"] == 64 << 20
    assert d["budget"] == {
        "total": TB + 1,
        "raw": TB + 2,
        "effective_available": TB + 3,
        "pagecache_resident": TB + 4,
        "reserve": TB + 5,
        "hysteresis": TB + 6,
    }
    assert d["signals"] == {
        "mem_total": TB + 10,
        "mem_available": TB + 11,
        "cgroup_version": 2,
        "cgroup_limit": TB + 12,
        "cgroup_usage": TB + 13,
        "cgroup_cache": TB + 14,
        "psi_some_avg10": 1.5,
        "psi_full_avg10": 0.5,
        "effective_available": TB + 11,  # min(MemAvailable, limit - usage + cache)
    }
    assert d["psi"] == {"mode": "trigger", "events": 3, "last_event_age_s": 2.0}
    assert d["pagecache"] == {
        "max_bytes": TB + 20,
        "used": TB + 21,
        "free": TB + 22,
        "slabs": 7,
        "refusing": "free-space floor reached",
    }
    assert d["tenants"] == {
        "0/a": {"pagecache": TB + 30, "direct": TB + 31, "share": TB + 32, "weight": 2.0},
        "1000/b": {"pagecache": 1, "direct": 2, "share": 3, "weight": 0.5},
    }
    first, second = d["migrations"]
    assert first == {
        "time": 1700000000.5,
        "tenant": "0/a",
        "key": "k\\xff",
        "from": "pagecache",
        "to": "direct",
        "bytes": 4096,
        "ms": 1.25,
        "ok": True,
        "reason": "over share",
        "error": None,
    }
    assert (second["from"], second["to"], second["ok"]) == ("direct", "pagecache", False)
    assert second["error"] == "NotFound: gone"
    assert d["totals"] == {
        "placed_pagecache": 1,
        "placed_direct": 2,
        "migrations": 3,
        "failed_migrations": 4,
        "demoted_bytes": TB + 40,
        "promoted_bytes": TB + 41,
        "pagecache_bytes": TB + 42,
        "direct_bytes": TB + 43,
        "pagecache_refusals": 5,
    }
    assert d["feedback"] == {
        "cap": TB + 50,
        "ceiling": TB + 51,
        "room": TB + 52,
        "pressure": "refaults 40 MiB/s",
        "refault_bytes_per_s": 41943040.0,
        "hit_ratio": 0.75,
        "pagecache_fraction": 0.8,
        "write_burst": True,
        "write_path": "direct",
        "pagecache_read_gbps": 6.5,
        "direct_read_gbps": 1.25,
        "pagecache_write_gbps": 0.25,
        "direct_write_gbps": 1.5,
    }


def test_unknowns_stay_null_not_zero() -> None:
    snap = ResidencySnapshot(
        mode=ResidencyMode.DIRECT,
        tick_s=1.0,
        ticks=0,
        last_tick_age_s=None,
        migration_bytes_per_s=1,
        budget=None,
        signals=MemorySignals(1.0, 100, 50, None, None, None, None, None, None),
        psi=PsiStatus(None, 0, None),
        pagecache=None,
        tenants=(),
        migrations=(),
        totals=ResidencyTotals(),
    )
    d = residency_dict(pb.ResidencyStatus.FromString(residency_pb(snap).SerializeToString()))
    assert d["budget"] is None and d["pagecache"] is None and d["last_tick_age_s"] is None
    assert d["psi"] == {"mode": None, "events": 0, "last_event_age_s": None}
    sig = d["signals"]
    assert sig["cgroup_version"] is None and sig["cgroup_limit"] is None
    assert sig["psi_some_avg10"] is None and sig["mem_available"] == 50
    assert d["tenants"] == {} and d["migrations"] == []
    assert d["feedback"] is None  # no observation yet
    # a verdict before any speed was measured: the speeds and the split stay null, not 0
    early = Verdict(1, 2, 3, None, None, None, {}, None, False)
    d = residency_dict(residency_pb(dataclasses.replace(snap, feedback=early)))
    assert d["feedback"]["pressure"] is None and d["feedback"]["pagecache_fraction"] is None
    assert d["feedback"]["direct_write_gbps"] is None and d["feedback"]["write_path"] == "direct"


def test_dbctl_renders_the_tables_from_the_typed_status(capsys) -> None:
    from dualblade_tools.dbctl import render_residency

    render_residency(residency_dict(residency_pb(full())))
    out = capsys.readouterr().out
    assert "0/a" in out and "1000/b" in out and "cgroup v2" in out
    assert "pagecache -> direct" in out and "failed: NotFound: gone" in out
    assert "3 (4 failed)" in out and "triggers: trigger, 3 events" in out
    assert "refaults 40 MiB/s" in out and "6.50 GB/s / 1.25 GB/s" in out
    assert "0.25 GB/s / 1.50 GB/s" in out and "direct (burst now: migrations wait)" in out
    assert "5, now: free-space floor reached" in out
    snap = dataclasses.replace(full(), budget=None, signals=None, tenants=(), migrations=())
    render_residency(residency_dict(residency_pb(snap)))
    out = capsys.readouterr().out
    assert "none yet" in out and "(no objects)" in out and "->" not in out
    render_residency(residency_dict(residency_pb(dataclasses.replace(snap, feedback=None))))
    assert "nothing yet" in capsys.readouterr().out
