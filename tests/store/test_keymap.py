"""KeyMap (the per-tenant sorted key -> entry map) against a dict and sorted(): lookups of
present and absent keys around sublist boundaries, replacement, removal and ordered ranges.

Small load factor so a few thousand keys span many sublists (the bisect on the sublists'
maxima is what a wrong internal layout would break)."""

from __future__ import annotations

import random

from dualbladed.store.index import IndexEntry, ObjectInfo
from dualbladed.store.keymap import KeyMap


def _entry(key: bytes) -> IndexEntry:
    return IndexEntry(ObjectInfo("1000/a", key, 1, "direct", 0, 4096, 0, 1, True, 0.0, None))


def test_keymap_matches_a_dict_across_sublists() -> None:
    rng = random.Random(7)
    km = KeyMap()
    km._reset(16)  # sublists of 16..32 entries
    want: dict[bytes, IndexEntry] = {}
    keys = [b"k%05d" % rng.randrange(20_000) for _ in range(3000)]
    for key in keys:
        e = _entry(key)
        km.put(e)
        want[key] = e  # put replaces, as d[k] = v
    assert len(km) == len(want)
    for key in rng.sample(sorted(want), 500):
        km.remove(want.pop(key))
    for probe in [b"", b"k", b"k00000", b"k19999", b"k99999", b"z", *keys, *keys[::7]]:
        assert km.get(probe) is want.get(probe)
    assert [e.info.key for e in km] == sorted(want)
    mid = sorted(want)[len(want) // 2]
    assert [e.info.key for e in km.starting_at(mid)] == [k for k in sorted(want) if k >= mid]
    after = [e.info.key for e in km.starting_at(mid, inclusive=False)]
    assert after == [k for k in sorted(want) if k > mid]
    assert km.get(b"k0") is None and KeyMap().get(b"x") is None


def test_append_new_takes_only_strictly_newer_keys() -> None:
    km = KeyMap([_entry(b"b"), _entry(b"d")])
    assert not km.append_new([_entry(b"d"), _entry(b"e")])  # equal to the last key
    assert not km.append_new([_entry(b"e"), _entry(b"e")])  # a repeated key
    assert not km.append_new([_entry(b"c")])  # not past the end
    assert [e.key for e in km] == [b"b", b"d"]
    assert km.append_new([_entry(b"e"), _entry(b"f")])
    km._check()
    assert [e.key for e in km] == [b"b", b"d", b"e", b"f"] and km.get(b"f") is not None
