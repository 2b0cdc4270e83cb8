"""Building the start-up recency and eviction orders without long GIL holds.

The orders of a start-up load (:mod:`.heat`, :mod:`.lru`) are sorted after READY=1 in a
background thread (``ObjectStore.complete_load``) while requests are served. A
``SortedKeyList.update`` of N entries is one ``sorted()`` call: C code that holds the GIL for
all of it, ~1 s for 10^6 entries in random ``last_access`` order. On main a request that came
right after READY could wait 1.8 s for it (10^6 objects; measured in-process at 5e5: 2.5 s of
build with a longest GIL hold of 458 ms, ten holds over 100 ms).

Here the entries are sorted in runs of :data:`RUN` (a few ms each), the runs concatenated
when they do not overlap (the usual case: rows come in key order, which for a bulk-put store
is also their ``last_access`` order) or else merged by ``heapq.merge`` (a Python generator,
so the interpreter can switch threads between elements), and :func:`fill` installs the sorted
list into an empty ``SortedKeyList`` sublist by sublist instead of sorting it again.

:func:`fill` writes ``SortedKeyList``'s sublists through :mod:`.sortedappend` (the one module
that writes sortedcontainers' private layout; :mod:`.keymap` reads it); tests compare the
result with ``update``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from sortedcontainers import SortedKeyList

from dualbladed.store.sortedappend import append_keyed

__all__ = ["RUN", "fill", "sorted_runs"]

#: entries per ``sorted()`` call (~10-30 ms at 2^16 under load)
RUN = 1 << 16

_last_access = attrgetter("last_access")


def sorted_runs(values: list[Any], key: Callable[[Any], Any] = _last_access) -> list[Any]:
    """``sorted(values, key=key)`` (stable), in GIL-friendly pieces (see the module doc)."""
    if len(values) <= RUN:
        return sorted(values, key=key)
    runs = [sorted(values[i : i + RUN], key=key) for i in range(0, len(values), RUN)]
    if all(key(a[-1]) <= key(b[0]) for a, b in zip(runs, runs[1:])):
        out: list[Any] = []
        for run in runs:
            out.extend(run)
        return out
    return list(heapq.merge(*runs, key=key))


def fill(order: SortedKeyList, values: list[Any]) -> None:
    """Install ``values`` (already sorted by ``order``'s key) into ``order`` sublist by sublist
    (:func:`.sortedappend.append_keyed`); if they do not go past its end, fall back to
    ``update`` (one sort of both)."""
    if not append_keyed(order, values, order._key):
        order.update(values)
