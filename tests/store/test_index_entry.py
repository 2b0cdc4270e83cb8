"""IndexEntry holds the ObjectInfo fields itself (store/entry.py): its ``info`` round-trips,
the bulk constructor builds the same entry, and a layer entry's snapshot changes whole."""

from __future__ import annotations

import dataclasses

import pytest

from dualbladed.store.entry import IndexEntry, LayerEntry, ObjectInfo, entry_from_values
from dualbladed.store.layers import new_entry

INFO = ObjectInfo("1000/a", b"k", 100, "direct", 8192, 4096, 2**63 + 5, 7, True, 12.5, None)
LAYER = dataclasses.replace(INFO, capacity=1 << 20, length=1 << 20, chunk_crcs=(3,))


def test_entry_info_round_trips_and_bulk_constructor_matches() -> None:
    a = IndexEntry(INFO)
    b = entry_from_values(dataclasses.astuple(INFO)[:11])
    for e in (a, b):
        assert e.info == INFO and e.snapshot() == INFO
        assert (e.pins, e.dead, e.layer, e.capacity, e.chunk_crcs) == (0, False, None, 0, ())
        assert not e.is_layer and e.extent == INFO.extent
        assert e.record() == INFO.record(INFO.last_access)
    a.last_access = 99.0
    assert a.info == dataclasses.replace(INFO, last_access=99.0)
    assert a.record().last_access == 99.0


def test_layer_entry_keeps_its_snapshot_whole() -> None:
    with pytest.raises(TypeError):
        IndexEntry(LAYER)
    e = new_entry(LAYER)
    assert isinstance(e, LayerEntry) and e.is_layer and e.layer is not None
    assert e.info is LAYER and e.capacity == 1 << 20 and e.chunk_crcs == (3,)
    grown = dataclasses.replace(LAYER, size=2 << 20, chunk_crcs=(3, 4))
    e.set_info(grown)
    assert e.size == 2 << 20 and e.chunk_crcs == (3, 4) and e.info is grown
    e.last_access = 50.0
    assert e.info == dataclasses.replace(grown, last_access=50.0)
    assert e.record().chunk_crcs == (3, 4)
    assert not isinstance(new_entry(INFO), LayerEntry)
