"""Incremental recency order and running totals of the live objects.

The residency arbiter ranks objects by ``last_access`` every tick (coldest page-cache objects are
demoted first, hottest direct ones promoted first) and ``dbctl status`` reports per-path and
per-tenant totals. Recomputing either from the whole index costs time proportional to what is
*stored*; these structures are updated on every install, retire and access instead, so a tick
or a status call costs what it *reads* (``n`` candidates, one row per tenant and path).

:class:`HeatIndex` keeps, per residency path, a ``SortedKeyList`` of index entries ordered by
``(last_access)``: ``coldest(path, n)`` / ``hottest(path, n)`` are O(log N + n), a touch is a
remove and an add (O(log N)). The list holds the entries themselves (two pointers per object,
the sort key is the entry's own ``last_access`` float, not a copy), so it adds little memory.
An entry's ``last_access`` must only change through :meth:`HeatIndex.touch`, which takes the
entry out and puts it back around the change (the sorted list finds an entry by its key).

It is a reusable LRU: eviction (the ``capacity`` work) can take victims from ``coldest``.

:class:`Totals` keeps ``tenant -> path -> [objects, payload bytes]`` and the path sums.

Deferred start-up load (:meth:`HeatIndex.defer`), as for the eviction LRU
(:mod:`dualbladed.store.lru`): a start-up load records its per-path entries and
:meth:`HeatIndex.build` sorts them later, possibly without the store lock. While deferred,
``add``/``discard`` record the entry's last requested membership and ``touch`` only notes the
entry (the index queues its new ``last_access``, so nothing a build sorts by changes under it);
the swap (``adopt_begin``, queued values applied, ``adopt_end``) takes the changed entries out of
the built lists and re-adds those whose last request was ``add``. ``len`` and ``iter_path``
build first if nothing has yet; ``coldest``/``hottest`` answer nothing until the build.

Neither does I/O nor takes a lock: the caller (``ObjectIndex``, under ``ObjectStore._lock``)
serializes every call but :meth:`HeatIndex.build`, which only reads entries no call changes
while a load is deferred.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple

from sortedcontainers import SortedKeyList

from dualbladed.store.sortedappend import append_keyed
from dualbladed.store.sortfill import fill, sorted_runs

if TYPE_CHECKING:
    from dualbladed.store.index import IndexEntry

__all__ = ["HeatIndex", "Totals", "Usage"]


_last_access = attrgetter("last_access")


class HeatIndex:
    """Per-path entries in ``last_access`` order. Not thread-safe (the store lock guards it)."""

    def __init__(self) -> None:
        self._by_path: dict[str, SortedKeyList] = {}
        self._pending: dict[str, list[IndexEntry]] | None = None
        #: while a load is deferred: entry -> (path, last requested membership: add True)
        self._changed: dict[IndexEntry, tuple[str, bool]] = {}
        self._complete: Callable[[], None] | None = None  # ObjectIndex.complete_orders

    @property
    def deferred(self) -> bool:
        return self._pending is not None

    def defer(self, by_path: dict[str, list[IndexEntry]], complete: Callable[[], None]) -> None:
        """Record a bulk :meth:`load` of ``path -> entries``; ``complete`` builds it (and the
        other deferred orders) when a reader needs it first."""
        self._pending = by_path
        self._complete = complete

    @property
    def ranked(self) -> bool:
        """False while a start-up load is deferred: :meth:`coldest`/:meth:`hottest` answer
        nothing then rather than build the lists under the store lock (the arbiter's first tick
        comes right after READY=1 and would otherwise sort a million entries while holding
        it, twice over with the background build); its plans are advisory and wait a tick."""
        return self._pending is None

    def _require(self) -> None:
        if self._pending is not None and self._complete is not None:
            self._complete()

    @staticmethod
    def build(pending: Mapping[str, list[IndexEntry]]) -> dict[str, SortedKeyList]:
        """The deferred load's lists (callable without the store lock: it only reads the
        entries' ``last_access``, which nothing writes while the load is deferred)."""
        out: dict[str, SortedKeyList] = {}
        for path, entries in pending.items():
            lst = out[path] = SortedKeyList(key=_last_access)
            fill(lst, sorted_runs(entries))  # no long GIL hold (see sortfill)
        return out

    def adopt_begin(self, built: dict[str, SortedKeyList]) -> None:
        """Take the entries changed while deferred out of ``built`` (before their queued
        ``last_access`` is applied: the lists find an entry by the value it was sorted by)."""
        for entry, (path, _member) in self._changed.items():
            lst = built.get(path)
            if lst is not None:
                lst.discard(entry)

    def adopt_end(self, built: dict[str, SortedKeyList]) -> None:
        """Install ``built`` and re-add the changed entries by their current state."""
        changed, self._changed = self._changed, {}
        self._pending = self._complete = None
        for path, lst in built.items():
            have = self._by_path.get(path)
            if have:
                have.update(lst)
            else:
                self._by_path[path] = lst
        for entry, (path, member) in changed.items():
            if member:
                self._list(path).add(entry)

    def _list(self, path: str) -> SortedKeyList:
        lst = self._by_path.get(path)
        if lst is None:
            lst = self._by_path[path] = SortedKeyList(key=_last_access)
        return lst

    def load(self, path: str, entries: Iterable[IndexEntry]) -> None:
        """Bulk-add (one sort, for start-up): O(N log N) in C instead of N Python inserts."""
        self._list(path).update(entries)

    def add(self, path: str, entry: IndexEntry) -> None:
        if self._pending is not None:
            self._changed[entry] = (path, True)
            return
        self._list(path).add(entry)

    def add_many(self, path: str, entries: list[IndexEntry]) -> None:
        """:meth:`add` of many entries (a group commit's): appended in one step when they are
        the newest (:mod:`dualbladed.store.sortedappend`), else one by one."""
        if self._pending is None:
            lst = self._list(path)
            if append_keyed(lst, entries, _last_access):
                return
        for entry in entries:
            self.add(path, entry)

    def discard(self, path: str, entry: IndexEntry) -> None:
        if self._pending is not None:
            self._changed[entry] = (path, False)
            return
        lst = self._by_path.get(path)
        if lst is not None:
            lst.discard(entry)

    def touch(self, path: str, entry: IndexEntry, when: float) -> None:
        """Set ``entry.last_access = when`` and move it to its new place in the order.

        While a load is deferred it only notes the entry (``last_access`` must not change under
        a build that may be sorting by it; :class:`ObjectIndex` applies ``when`` at the swap)."""
        if self._pending is not None:  # ObjectIndex queues ``when`` until the orders are built
            self._changed.setdefault(entry, (path, True))
            return
        lst = self._by_path.get(path)
        if lst is None:
            entry.last_access = when
            return
        lst.discard(entry)
        entry.last_access = when
        lst.add(entry)

    def coldest(self, path: str, n: int) -> list[IndexEntry]:
        """Up to ``n`` entries on ``path``, least recently accessed first. None while a load is deferred
        (see :meth:`ranked`)."""
        if self._pending is not None:
            return []
        lst = self._by_path.get(path)
        return list(islice(lst, n)) if lst else []

    def hottest(self, path: str, n: int) -> list[IndexEntry]:
        """Up to ``n`` entries on ``path``, most recently accessed first. None while a load is deferred
        (see :meth:`ranked`)."""
        if self._pending is not None:
            return []
        lst = self._by_path.get(path)
        return list(islice(reversed(lst), n)) if lst else []

    def __len__(self) -> int:
        self._require()
        return sum(len(lst) for lst in self._by_path.values())

    def iter_path(self, path: str) -> Iterator[IndexEntry]:
        """Every entry of ``path``, coldest first (tests and offline checks)."""
        self._require()
        return iter(self._by_path.get(path, ()))


class Usage(NamedTuple):
    objects: int
    bytes: int  # payload bytes


class Totals:
    """Running ``tenant -> path -> (objects, bytes)`` counts, kept by install/retire."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, list[int]]] = {}
        self._paths: dict[str, list[int]] = {}
        self.objects = 0
        self.persistent = 0

    def add(self, tenant: str, path: str, size: int, persistent: bool, sign: int = 1) -> None:
        paths = self._rows.get(tenant)
        if paths is None:
            paths = self._rows[tenant] = {}
        row = paths.get(path)
        if row is None:
            row = paths[path] = [0, 0]
        row[0] += sign
        row[1] += sign * size
        if not row[0]:
            del paths[path]
            if not paths:
                del self._rows[tenant]
        p = self._paths.get(path)
        if p is None:
            p = self._paths[path] = [0, 0]
        p[0] += sign
        p[1] += sign * size
        if not p[0]:
            del self._paths[path]
        self.objects += sign
        if persistent:
            self.persistent += sign

    def add_many(self, tenant: str, path: str, objects: int, size: int, persistent: int) -> None:
        """``objects`` installs of ``size`` payload bytes in all, ``persistent`` of them
        persistent (bulk start-up)."""
        if not objects:
            return
        row = self._rows.setdefault(tenant, {}).setdefault(path, [0, 0])
        row[0] += objects
        row[1] += size
        p = self._paths.setdefault(path, [0, 0])
        p[0] += objects
        p[1] += size
        self.objects += objects
        self.persistent += persistent

    def by_tenant(self) -> dict[str, dict[str, Usage]]:
        """A copy: O(tenants x paths), never O(objects)."""
        return {
            t: {p: Usage(o, b) for p, (o, b) in paths.items()} for t, paths in self._rows.items()
        }

    def by_path(self) -> dict[str, Usage]:
        return {p: Usage(o, b) for p, (o, b) in self._paths.items()}
