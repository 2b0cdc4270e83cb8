"""Issue 14: the Admin ``Status`` call costs the same however many objects are stored.

Not a timing test: the daemon's Status handler (inventory, arbiter snapshot, protobuf
conversion) runs under a line tracer on a real store (file namespace, SQLite state, direct and
page-cache paths) and a real arbiter, and the number of Python lines it executes must not grow
when the store grows twentyfold. A control shows the tracer does see per-object work: a listing
of the same store executes more lines at the larger size. Work in C (``len``, a dict copy)
is invisible to the tracer, which is why the control matters and why the sizes differ twentyfold:
any per-object Python step would add thousands of lines.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import pytest

from dualblade.v1 import dualblade_pb2 as pb
from dualbladed.arbiter.arbiter import ResidencyArbiter
from dualbladed.arbiter.policy import PolicyConfig, ResidencyPolicy
from dualbladed.arbiter.signals import SignalReader
from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.direct import DirectPath
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.service.admin_servicer import AdminServicer
from dualbladed.service.inventory import Inventory
from dualbladed.service.metrics import Metrics
from dualbladed.sessions.registry import SessionRegistry
from dualbladed.store import ObjectStore

MiB = 1 << 20
TENANTS = ("1000/a", "1001/b")
SMALL, LARGE = 30, 600


def lines_run(fn: Callable[[], Any]) -> int:
    """How many Python lines ``fn()`` executes on this thread (``sys.settrace`` line events).

    The collector is run first and held off during the call: a finalizer of an earlier test's
    garbage, run by a collection that happens to fall inside ``fn()``, would count its lines as
    ``fn``'s (seen once in a full-suite run, never alone)."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    gc.collect()
    gc.disable()
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
        gc.enable()
    return count


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SimpleNamespace]:
    ns = FileNamespace(tmp_path / "ns.img", 64 * MiB)
    pc = PageCachePath(tmp_path / "pc", slab_bytes=4 * MiB, max_bytes=16 * MiB, resident_ttl_s=0)
    store = ObjectStore.open(
        ns,
        tmp_path / "state",
        paths={DIRECT: DirectPath(ns), PAGECACHE: pc},
        access_flush_interval=0,
    )
    arbiter = ResidencyArbiter(
        store,
        ResidencyPolicy(PolicyConfig()),
        SignalReader(),
        pc,
        migration_bytes_per_s=64 * MiB,
    )  # never started: no tick runs between the two measurements
    registry = SessionRegistry(4)
    inventory = Inventory(
        namespace=ns,
        namespace_uuid=str(store.namespace_uuid),
        state_dir=str(tmp_path / "state"),
        store=store,
        registry=registry,
        metrics=Metrics(),
        quota_for_tenant=lambda uid, label: 0,
        residency=arbiter.snapshot,
    )
    servicer = AdminServicer(registry, inventory, admin_group=None)
    # The handler proper, past the token check: the caller is root (an admin).
    admin = SimpleNamespace(id="s-admin", uid=0, gid=0, pid=os.getpid())
    status = AdminServicer.Status.__wrapped__  # type: ignore[attr-defined]
    yield SimpleNamespace(
        store=store,
        status=lambda: status(servicer, pb.StatusRequest(), None, admin),
    )
    store.close()
    ns.close()


def fill(store: ObjectStore, upto: int, start: int = 0) -> None:
    data = memoryview(b"x" * 4096)
    for i in range(start, upto):
        path = PAGECACHE if i % 2 else DIRECT
        store.put(TENANTS[i % 2], b"o/%06d" % i, data, persistent=True, path=path)


def test_status_runs_the_same_lines_at_20x_the_objects(rig: SimpleNamespace) -> None:
    fill(rig.store, SMALL)
    rig.status()  # first call warms caches (descriptor pools, lazily built tables)
    small = lines_run(rig.status)
    listing_small = lines_run(lambda: rig.store.list(None))
    reply = rig.status()
    assert sum(p.objects for p in reply.paths) == SMALL  # it does count them: from totals

    fill(rig.store, LARGE, start=SMALL)
    rig.status()
    large = lines_run(rig.status)
    listing_large = lines_run(lambda: rig.store.list(None))
    reply = rig.status()
    assert sum(p.objects for p in reply.paths) == LARGE

    # The control: a walk over the objects is visible to the tracer (one or more lines each).
    assert listing_large - listing_small >= LARGE - SMALL
    # Status: no line more at 20x the objects (a per-object step would add >= 570).
    assert large == small, f"Status ran {small} lines at {SMALL} objects, {large} at {LARGE}"
