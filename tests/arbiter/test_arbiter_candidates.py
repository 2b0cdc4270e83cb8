"""Issue 14: an arbiter tick reads candidates and running totals, never the whole index.

Same rig as test_arbiter (real file namespace, direct and page-cache paths, scripted memory
signals); ``ObjectStore.list`` is made to fail, so any tick or snapshot that still walks every
object fails the test.
"""

from __future__ import annotations

import pytest
from test_arbiter import KiB, MiB, make_rig, settle  # noqa: F401 - make_rig is a fixture

from dualbladed.paths.abstract import DIRECT, PAGECACHE


def _forbid_listing(rig) -> None:  # noqa: ANN001
    def no_list(*a: object, **k: object) -> None:
        raise AssertionError("the arbiter listed every object")

    rig.store.list = no_list  # type: ignore[method-assign]


def test_demotes_the_coldest_from_candidates_without_listing(make_rig) -> None:  # noqa: F811
    rig = make_rig(budget=8 * MiB, band=64 * KiB)
    rig.arbiter.run_once()
    keys = [b"c%02d" % i for i in range(8)]
    for k in keys:
        rig.put(k, 1 * MiB)
    assert {i.path for i in rig.store.list(None)} == {PAGECACHE}
    for k in keys[4:]:  # the last four are read: hotter than the first four
        rig.read(k)
    _forbid_listing(rig)
    rig.signals.set_budget(4 * MiB)
    assert settle(rig) == 4
    on = {i.key: i.path for i in rig.store.coldest(DIRECT, 100)}
    assert set(on) == set(keys[:4])  # exactly the four cold ones went down
    assert {i.key for i in rig.store.coldest(PAGECACHE, 100)} == set(keys[4:])
    snap = rig.arbiter.snapshot()
    assert (snap.tenants[0].pagecache, snap.tenants[0].direct) == (4 * MiB, 4 * MiB)


@pytest.mark.parametrize("base", [1, 2])
def test_candidate_window_grows_while_busy(make_rig, base) -> None:  # noqa: F811
    rig = make_rig(budget=16 * MiB, band=64 * KiB)
    rig.arbiter._base_candidates = base
    rig.arbiter._want = {PAGECACHE: base, DIRECT: base}
    rig.arbiter.run_once()
    for i in range(12):
        rig.put(b"w%02d" % i, 1 * MiB)
    rig.signals.set_budget(2 * MiB)
    _forbid_listing(rig)
    moved = settle(rig)
    assert moved == 10  # everything above the budget, though a tick starts with `base`
    assert rig.arbiter._want[PAGECACHE] == base  # back to the base once calm
