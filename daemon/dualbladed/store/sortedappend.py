"""Appending a sorted run past the end of a ``sortedcontainers`` structure in one step.

A packed put installs ~1000 entries at once, and most of them go past the *end* of every sorted
structure of the index: the recency and eviction orders are keyed by ``(last_access,
generation)`` (the group's commit time and its consecutive generations, newer than everything
filed), and sequential keys (``o/000000042``...) extend their tenant's key order. ``add`` pays a
bisect and a list insert through several Python calls per item; here the run is sliced into
sublists of the structure's load and appended, which is what ``SortedList.update`` itself does
for a large run into an empty list.

This writes the private layout of ``sortedcontainers`` 2.x (``_lists``, ``_keys``, ``_maxes``,
``_len``, ``_index``, ``_load``), which 2.x has kept since 2.0 (2018) and whose invariants
``_check()`` asserts (the tests call it after every append). It keeps them: every sublist but
the last at least half the load and none over twice it (the last one is first topped up to the
load), ``_maxes`` the last item (key) of each sublist, ``_len`` the count, and the positional
index dropped (rebuilt on the next positional access, as any insert that splits a sublist does).

Each function returns False and changes nothing when its precondition does not hold (the run
is not past the end); the caller then adds item by item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sortedcontainers import SortedDict, SortedKeyList, SortedList

__all__ = ["append_items", "append_keyed"]


def _append(sl: SortedList, values: Sequence[Any], keys: Sequence[Any] | None) -> None:
    lists, maxes, load = sl._lists, sl._maxes, sl._load
    parallel = sl._keys if keys is not None else None
    marks = keys if keys is not None else values
    done = 0
    if lists:
        last = lists[-1]
        done = min(len(values), max(0, load - len(last)))
        if done:
            last.extend(values[:done])
            if parallel is not None:
                parallel[-1].extend(keys[:done])  # type: ignore[index]
            maxes[-1] = marks[done - 1]
    for start in range(done, len(values), load):
        lists.append(list(values[start : start + load]))
        if parallel is not None:
            parallel.append(list(keys[start : start + load]))  # type: ignore[index]
        maxes.append(marks[min(start + load, len(values)) - 1])
    sl._len += len(values)
    del sl._index[:]


def append_items(sd: SortedDict, items: Sequence[tuple[Any, Any]]) -> bool:
    """``sd.update(items)`` for ``items`` sorted by strictly increasing key, all keys greater
    than ``sd``'s last; False (nothing changed) otherwise."""
    if not items:
        return True
    keys = [k for k, _ in items]
    sl = sd._list
    if (sl and not sl[-1] < keys[0]) or any(b <= a for a, b in zip(keys, keys[1:])):
        return False
    dict.update(sd, items)
    _append(sl, keys, None)
    return True


def append_keyed(skl: SortedKeyList, values: Sequence[Any], key: Callable[[Any], Any]) -> bool:
    """``skl.update(values)`` for ``values`` in non-decreasing ``key`` order, none below
    ``skl``'s last key (equal keys go after, as ``add`` files them); False (nothing changed)
    otherwise. ``key`` must be the list's own key function."""
    if not values:
        return True
    keys = list(map(key, values))
    if (skl._maxes and keys[0] < skl._maxes[-1]) or any(b < a for a, b in zip(keys, keys[1:])):
        return False
    _append(skl, values, keys)
    return True
