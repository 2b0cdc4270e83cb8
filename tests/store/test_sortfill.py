"""sortfill (the start-up orders' GIL-friendly build) against SortedKeyList.update: the same
order and the same lookups, for rows in order, in overlapping runs, and with ties."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from sortedcontainers import SortedKeyList

from dualbladed.store import sortfill


@dataclass(eq=False)
class _E:
    last_access: float


@pytest.mark.parametrize("shape", ["in order", "shuffled", "ties"])
def test_fill_of_sorted_runs_matches_update(monkeypatch: pytest.MonkeyPatch, shape: str) -> None:
    monkeypatch.setattr(sortfill, "RUN", 97)  # many runs of a few thousand entries
    rng = random.Random(3)
    if shape == "ties":
        values = [_E(float(rng.randrange(50))) for _ in range(3000)]
    else:
        values = [_E(float(i)) for i in range(3000)]
        if shape == "shuffled":
            rng.shuffle(values)
    want = SortedKeyList(values, key=sortfill._last_access)
    got = SortedKeyList(key=sortfill._last_access)
    got._reset(64)
    sortfill.fill(got, sortfill.sorted_runs(values))
    assert [e.last_access for e in got] == [e.last_access for e in want]
    if shape != "ties":  # stable: equal keys keep their input order in both
        assert list(got) == list(want)
    got._check()  # sortedcontainers' own invariant check (maxes, index, load)
    for e in rng.sample(values, 200):
        assert e in got
        got.remove(e)
    got._check()
    assert len(got) == 2800
