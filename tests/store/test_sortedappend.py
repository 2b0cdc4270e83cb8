"""``dualbladed.store.sortedappend``: a sorted run appended past the end keeps every invariant
of ``sortedcontainers`` (its own ``_check``) and the same contents as item-by-item adds."""

from __future__ import annotations

import random
from operator import neg

import pytest
from sortedcontainers import SortedDict, SortedKeyList

from dualbladed.store.sortedappend import append_items, append_keyed


@pytest.mark.parametrize("before", [0, 1, 7, 999, 1000, 1500, 2001, 5003])
@pytest.mark.parametrize("run", [1, 3, 1000, 2500])
def test_append_items_equals_update_and_keeps_the_invariants(before: int, run: int) -> None:
    sd = SortedDict((i, -i) for i in range(before))
    ref = SortedDict(sd)
    items = [(before + i, str(i)) for i in range(run)]
    assert append_items(sd, items)
    ref.update(items)
    sd._list._check()
    assert list(sd.items()) == list(ref.items())
    assert sd.peekitem(0) == ref.peekitem(0) and sd.peekitem(-1) == ref.peekitem(-1)
    assert sd.index(before + run // 2) == before + run // 2  # the positional index rebuilds
    del sd[before + run - 1]  # and later edits still work
    sd[-5] = "x"
    sd._list._check()


def test_append_items_refuses_what_is_not_past_the_end() -> None:
    sd = SortedDict({5: "a", 9: "b"})
    assert not append_items(sd, [(9, "c"), (10, "d")])  # not greater than the last
    assert not append_items(sd, [(12, "c"), (11, "d")])  # not increasing
    assert not append_items(sd, [(12, "c"), (12, "d")])  # repeated
    assert dict(sd) == {5: "a", 9: "b"}
    sd._list._check()
    assert append_items(sd, [])


def test_append_keyed_files_equal_keys_after_as_add_does() -> None:
    rng = random.Random(3)
    skl = SortedKeyList((rng.randrange(100) for _ in range(3000)), key=neg)
    ref = SortedKeyList(skl, key=neg)
    last = skl[-1]  # the smallest value: the largest key
    run = [last, last, last - 1, last - 5, last - 5]
    assert append_keyed(skl, run, neg)
    for v in run:
        ref.add(v)
    skl._check()
    assert list(skl) == list(ref)
    assert not append_keyed(skl, [last], neg)  # key below the last key
    assert not append_keyed(skl, [last - 9, last - 8], neg)  # keys decreasing
    skl._check()
    assert list(skl) == list(ref)
