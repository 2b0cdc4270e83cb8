"""Least-recently-used order of the evictable objects, per tenant and per residency path.

Capacity eviction (see :mod:`dualbladed.store.capacity`) needs, for a full tenant quota, the
tenant's least recently used evictable object, for a full per-uid quota the uid's (over all its
labels), and for a full path allocator the path's, across tenants. Scanning every object per put would make a put cost grow with the object count (issue
14 forbids that), so the order is kept incrementally: one ``SortedDict`` per tenant and one per
path (and one per uid), keyed by ``(last_access, generation)`` (generations are unique, so keys never collide),
with O(log n) insert, remove and touch. Keys sort by ``last_access`` rather than by insertion,
so the order rebuilt at start-up from the committed rows (each carrying its batched
``last_access``) is the same LRU order as before the restart, whatever order the rows come in.

Membership: a *live persistent* object whose key no session holds a hit pin on
(:mod:`dualbladed.store.pins`; :attr:`LruOrder.held` counts the pins per key). Ephemeral objects
never enter (they die with their session), a pinned key's object leaves while pinned (and a new
version installed under a pinned key does not enter), so an eviction walk never steps over
pinned objects.
Objects pinned by an in-flight *reader* (``IndexEntry.pins``) stay in the order and are stepped
over by :meth:`LruOrder.oldest`: retiring them would not free their extent until the read ends.

Deferred start-up load (:meth:`LruOrder.defer`). Sorting a million members into three
``SortedDict`` s is a good part of a 10^6-object start, and nothing needs the order before the
first eviction, so a start-up load only *records* its groups and the orders are built after
READY=1 (:meth:`dualbladed.store.index.ObjectIndex.complete_orders` for the protocol). While
deferred, :meth:`add` and :meth:`discard` only note the entry's last requested membership in
``_changed``, and :meth:`touch` notes the entry without writing ``last_access`` (the index
queues the new value), so the entries a build reads do not change under it. The swap takes
every changed entry out of the built orders by the key the build filed it under, applies the
queued ``last_access`` values, installs the orders and replays :meth:`add` for the changed
entries whose last request was ``add`` (which re-checks persistent / dead / held as any ``add``
does). Readers (:meth:`oldest`, ``len``, ``in``) build first if nothing has yet.

Not thread-safe: every method runs under ``ObjectStore._lock`` (via ``ObjectIndex``), except
:meth:`build`, which writes only its new object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING

from sortedcontainers import SortedDict

from dualbladed.store.sortedappend import append_items

if TYPE_CHECKING:
    from dualbladed.store.index import IndexEntry

__all__ = ["LruOrder"]

_SortKey = tuple[float, int]
_Key = tuple[str, bytes]  # (tenant, key)
_first = itemgetter(0)
_info = attrgetter("info")
_persistent = attrgetter("persistent")
_dead = attrgetter("dead")
_last_access = attrgetter("last_access")
_generation = attrgetter("generation")


class LruOrder:
    """Evictable objects, oldest access first, by tenant and by path."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, SortedDict] = {}  # tenant -> {(last_access, gen): entry}
        self._by_path: dict[str, SortedDict] = {}  # path -> {(last_access, gen): entry}
        self._by_uid: dict[str, SortedDict] = {}  # "uid" (the tenant's head) -> the same
        self._keys: dict[IndexEntry, _SortKey] = {}  # member -> its key in both dicts
        #: (tenant, key) -> live hit pins on it, all sessions (kept by HitPins via hold/release)
        self.held: dict[_Key, int] = {}
        #: a deferred load's groups (None: nothing deferred), see the module docstring
        self._pending: Mapping[tuple[str, str], list[IndexEntry]] | None = None
        #: while a load is deferred: entry -> its last requested membership (add True)
        self._changed: dict[IndexEntry, bool] = {}
        self._complete: Callable[[], None] | None = None  # ObjectIndex.complete_orders

    def __len__(self) -> int:
        self._require()
        return len(self._keys)

    def __contains__(self, entry: IndexEntry) -> bool:
        self._require()
        return entry in self._keys

    @property
    def deferred(self) -> bool:
        """True while a start-up load waits to be built."""
        return self._pending is not None

    def defer(
        self, groups: Mapping[tuple[str, str], list[IndexEntry]], complete: Callable[[], None]
    ) -> None:
        """Record a bulk load (as :meth:`load_groups`); ``complete`` builds it (and the other
        deferred orders) when a reader needs it first."""
        self._pending = groups
        self._complete = complete

    def _require(self) -> None:
        if self._pending is not None and self._complete is not None:
            self._complete()

    def build(self, groups: Mapping[tuple[str, str], list[IndexEntry]]) -> LruOrder:
        """The deferred load's orders, in a new ``LruOrder`` (callable without the store lock:
        it reads the entries and ``held``, and writes only the new object)."""
        fresh = LruOrder()
        fresh.held = self.held  # read only, for the membership checks
        fresh.load_groups(groups)
        return fresh

    def adopt_begin(self, built: LruOrder) -> None:
        """Take the entries changed while deferred out of ``built`` (by the key it filed)."""
        for entry in self._changed:
            built.discard(entry)

    def adopt_end(self, built: LruOrder) -> None:
        """Install ``built``'s orders and re-add the changed entries by their current state."""
        changed, self._changed = self._changed, {}
        self._pending = self._complete = None
        self._by_tenant, self._by_path, self._by_uid = (
            built._by_tenant,
            built._by_path,
            built._by_uid,
        )
        self._keys = built._keys
        for entry, member in changed.items():
            if member:
                self.add(entry)

    def add(self, entry: IndexEntry) -> None:
        """Make ``entry`` a member if it is evictable by nature (live and persistent)."""
        if self._pending is not None:
            self._changed[entry] = True
            return
        info = entry.info
        if not info.persistent or entry.dead or entry in self._keys:
            return
        if (info.tenant, info.key) in self.held:
            return
        key = (entry.last_access, info.generation)
        self._keys[entry] = key
        for table, name in self._tables(info.tenant, info.path):
            order = table.get(name)
            if order is None:
                order = table[name] = SortedDict()
            order[key] = entry

    def add_many(self, entries: list[IndexEntry]) -> None:
        """:meth:`add` of many entries (a group commit's): each order's new members appended
        in one step when they are its newest (:mod:`dualbladed.store.sortedappend`), else
        added one by one."""
        if self._pending is not None:
            for entry in entries:
                self.add(entry)
            return
        keys, held = self._keys, self.held
        groups: dict[tuple[str, str], list[tuple[_SortKey, IndexEntry]]] = {}
        for entry in entries:
            info = entry.info
            if not info.persistent or entry.dead or entry in keys:
                continue
            if held and (info.tenant, info.key) in held:
                continue
            key = (entry.last_access, info.generation)
            keys[entry] = key
            group = groups.get((info.tenant, info.path))
            if group is None:
                group = groups[(info.tenant, info.path)] = []
            group.append((key, entry))
        merged: dict[tuple[int, str], tuple[dict[str, SortedDict], str, list]] = {}
        for (tenant, path), items in groups.items():
            for table, name in self._tables(tenant, path):
                got = merged.get((id(table), name))
                if got is None:
                    merged[(id(table), name)] = (table, name, items)
                else:  # one order fed by several groups (a uid's tenants, a path's)
                    merged[(id(table), name)] = (table, name, got[2] + items)
        for table, name, items in merged.values():
            items.sort(key=_first)  # sorted runs: about linear
            order = table.get(name)
            if order is None:
                order = table[name] = SortedDict()
            if not append_items(order, items):
                for key, entry in items:
                    order[key] = entry

    def load(self, entries: Iterable[IndexEntry]) -> None:
        """Bulk :meth:`add` (start-up): one sorted update per order, not one insert per entry."""
        groups: dict[tuple[str, str], list[IndexEntry]] = {}
        for entry in entries:
            info = entry.info
            group = groups.get((info.tenant, info.path))
            if group is None:
                group = groups[(info.tenant, info.path)] = []
            group.append(entry)
        self.load_groups(groups)

    def load_groups(self, groups: Mapping[tuple[str, str], list[IndexEntry]]) -> None:
        """Bulk :meth:`add` of entries already grouped by ``(tenant, path)``.

        Per group the sort keys and members are built by C-level ``map``/``zip`` when every
        entry is evictable by nature and not yet a member (all persistent, live, not held: any
        start-up without ephemeral objects), else by the per-entry checks of :meth:`add`; each group is sorted
        once, and every order (tenant, path, uid) is updated from already-sorted items, which
        ``SortedDict.update`` re-sorts in linear time (timsort on sorted runs).
        """
        keys, held = self._keys, self.held
        merged: dict[tuple[int, str], tuple[dict[str, SortedDict], str, list[list]]] = {}
        for (tenant, path), entries in groups.items():
            infos = list(map(_info, entries))
            if (
                not held
                and all(map(_persistent, infos))
                and not any(map(_dead, entries))
                and not any(map(keys.__contains__, entries))
            ):
                sort_keys = list(zip(map(_last_access, entries), map(_generation, infos)))
                keys.update(zip(entries, sort_keys))
                items = list(zip(sort_keys, entries))
            else:
                items = []
                for entry, info in zip(entries, infos):
                    if not info.persistent or entry.dead or entry in keys:
                        continue
                    if (info.tenant, info.key) in held:
                        continue
                    key = (entry.last_access, info.generation)
                    keys[entry] = key
                    items.append((key, entry))
            items.sort(key=_first)
            for table, name in self._tables(tenant, path):
                got = merged.get((id(table), name))
                if got is None:
                    merged[(id(table), name)] = (table, name, [items])
                else:
                    got[2].append(items)
        for table, name, parts in merged.values():
            # sorted runs: timsort merges them in about linear time
            items = parts[0] if len(parts) == 1 else sorted(chain(*parts), key=_first)
            order = table.get(name)
            if order is None:
                order = table[name] = SortedDict()
            order.update(items)

    def discard(self, entry: IndexEntry) -> None:
        if self._pending is not None:
            self._changed[entry] = False
            return
        key = self._keys.pop(entry, None)
        if key is None:
            return
        info = entry.info
        for table, name in self._tables(info.tenant, info.path):
            order = table[name]
            del order[key]
            if not order:
                del table[name]

    def hold(self, key: _Key, live: IndexEntry | None) -> None:
        """One more hit pin on ``key``; its live object (if any) leaves the order."""
        held = self.held.get(key, 0)
        self.held[key] = held + 1
        if not held and live is not None:
            self.discard(live)

    def release(self, key: _Key, live: IndexEntry | None) -> None:
        """One hit pin on ``key`` fewer; at none, its live object (if any) rejoins the order."""
        held = self.held[key] - 1
        if held:
            self.held[key] = held
            return
        del self.held[key]
        if live is not None:
            self.add(live)

    def touch(self, entry: IndexEntry, when: float) -> None:
        """Record an access: ``entry.last_access = when``, moving it to the young end."""
        if self._pending is not None:  # ObjectIndex queues ``when`` until the orders are built
            self._changed.setdefault(entry, True)
            return
        member = entry in self._keys
        if member:
            self.discard(entry)
        entry.last_access = when
        if member:
            self.add(entry)

    def _tables(self, tenant: str, path: str) -> tuple[tuple[dict[str, SortedDict], str], ...]:
        uid = tenant.partition("/")[0]
        return ((self._by_tenant, tenant), (self._by_path, path), (self._by_uid, uid))

    def oldest(
        self, *, tenant: str | None = None, path: str | None = None, uid: int | None = None
    ) -> Iterator[IndexEntry]:
        """Members of ``tenant`` (or on ``path``, or of ``uid``'s tenants), least recently used
        first.

        Entries an in-flight reader pins are skipped. The caller may evict each yielded entry
        (removing it from this order) before asking for the next one; the walk stays correct.
        """
        self._require()
        if tenant is not None:
            table, name = self._by_tenant, tenant
        elif uid is not None:
            table, name = self._by_uid, str(uid)
        else:
            table, name = self._by_path, path  # type: ignore[assignment]
        i = 0
        while True:
            order = table.get(name)  # type: ignore[arg-type]
            if order is None or i >= len(order):
                return
            entry = order.peekitem(i)[1]
            if entry.pins:
                i += 1
                continue
            yield entry
            if entry in self._keys:  # not evicted by the caller: step over it
                i += 1
