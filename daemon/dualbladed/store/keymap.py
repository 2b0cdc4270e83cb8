"""One tenant's live entries in key order: a sorted list that is also the key -> entry map.

``ObjectIndex`` needs, per tenant, an exact lookup by key (every put, get and delete) and key
order (prefix listings, paged ``Extents``). A ``SortedDict`` gives both by keeping a hash table
*and* a sorted list of the keys; measured in-process (tracemalloc by line, 10^5 4 KiB objects)
its hash table alone cost ~52 B per object (a 24 B entry plus the index slots, at the table's
load factor; ~42 B at 10^6) on top of ~9 B for the sorted key list.

:class:`KeyMap` keeps only the sorted list: a ``SortedKeyList`` of the entries keyed by their
``key`` (the key bytes the entry already holds: two pointers, ~18 B per object with the
sublists' slack). A lookup is two C-level bisects, on the sublists' maxima and then inside one
sublist of at most ~2000 keys (~0.3-0.5 us against ~0.1 us for a dict lookup); an insert or a
removal costs what the ``SortedDict``'s key list already cost. Keys are unique within a tenant,
so no lookup ever walks equal keys.

:meth:`KeyMap.get` reads ``SortedKeyList``'s sublists (``_maxes``, ``_keys``, ``_lists``): the
layout sortedcontainers has had since 2.0 (pyproject asks for >= 2.4, the last release);
``tests/store/test_keymap.py`` checks it against a dict.

Not thread-safe: the store lock guards it (as all of :mod:`dualbladed.store.index`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING

from sortedcontainers import SortedKeyList

from dualbladed.store.sortedappend import append_keyed

if TYPE_CHECKING:
    from dualbladed.store.index import IndexEntry

__all__ = ["KeyMap"]

_entry_key = attrgetter("key")


class KeyMap(SortedKeyList):
    """``key -> IndexEntry`` of one tenant, iterated in key order (entries, not keys)."""

    def __init__(self, entries: Iterable[IndexEntry] | None = None) -> None:
        super().__init__(entries, key=_entry_key)

    def get(self, key: bytes) -> IndexEntry | None:
        """The entry filed under ``key``, or None: O(log n) in two C bisects."""
        maxes = self._maxes
        pos = bisect_left(maxes, key)
        if pos == len(maxes):
            return None
        keys = self._keys[pos]
        idx = bisect_left(keys, key)  # < len(keys): maxes[pos] >= key
        if keys[idx] == key:
            return self._lists[pos][idx]  # type: ignore[no-any-return]
        return None

    def put(self, entry: IndexEntry) -> None:
        """File ``entry`` under its key, replacing the entry filed there (as ``d[k] = v``)."""
        old = self.get(entry.key)
        if old is not None:
            self.remove(old)
        self.add(entry)

    def append_new(self, entries: list[IndexEntry]) -> bool:
        """Add ``entries`` (strictly increasing keys, all past the last one: a group commit of
        sequential keys) in one step; False (nothing changed) otherwise, then :meth:`put` each."""
        if not entries:
            return True
        # append_keyed allows equal keys (a recency order has ties); a key map must not
        if self._maxes and not self._maxes[-1] < entries[0].key:
            return False
        if any(b.key <= a.key for a, b in zip(entries, entries[1:])):
            return False
        return append_keyed(self, entries, _entry_key)

    def starting_at(self, key: bytes, *, inclusive: bool = True) -> Iterator[IndexEntry]:
        """Entries from ``key`` on (or strictly after it), in key order."""
        return self.irange_key(min_key=key, inclusive=(inclusive, True))  # type: ignore[no-any-return]
