"""Least-recently-used order of the evictable objects, per tenant and per residency path.

Capacity eviction (see :mod:`dualbladed.store.capacity`) needs, for a full tenant quota, the
tenant's least recently used evictable object, for a full per-uid quota the uid's (over all its
labels), and for a full path allocator the path's, across tenants. Scanning every object per
put would make a put cost grow with the object count (issue 14 forbids that), so the order is
kept incrementally: one ``SortedKeyList`` of index entries per tenant, per path and per uid,
ordered by the entry's own ``last_access`` float, with O(log n) insert, remove and touch. Keys
sort by ``last_access`` rather than by insertion, so the order rebuilt at start-up from the
committed rows (each carrying its batched ``last_access``) is the same LRU order as before the
restart, whatever order the rows come in. Entries with equal ``last_access`` keep their
insertion order (a put group's entries get distinct stamps, see ``StoreWrites.commit_puts``).

Memory (measured in-process, 2e5 4 KiB objects, tracemalloc by line): the previous layout --
three ``SortedDict`` s keyed by a ``(last_access, generation)`` tuple plus an ``entry -> key``
dict -- cost ~290 B per object (three dict entries ~52 B each plus their sorted key lists, the
56 B tuple, the 52 B ``_keys`` entry): the ~300 B/object the daemon's RSS grew by when the
order was added. A ``SortedKeyList`` keyed by ``attrgetter("last_access")`` stores two pointers
per member (the entry and the float it already holds), ~17 B with the sublists' slack, so the
three orders cost ~55 B. Membership is asked of the path's order itself (``in``: a bisect by
``last_access``, then identity among equal stamps), not of a side table.

Membership: a *live persistent* object whose key no session holds a hit pin on
(:mod:`dualbladed.store.pins`; :attr:`LruOrder.held` counts the pins per key). Ephemeral objects
never enter (they die with their session), a pinned key's object leaves while pinned (and a new
version installed under a pinned key does not enter), so an eviction walk never steps over
pinned objects.
Objects pinned by an in-flight *reader* (``IndexEntry.pins``) stay in the order and are stepped
over by :meth:`LruOrder.oldest`: retiring them would not free their extent until the read ends.

An entry's ``last_access`` must only change through :meth:`touch` while it is a member (the
lists find an entry by the value it was filed under).

Deferred start-up load (:meth:`LruOrder.defer`). Sorting a million members into three orders
is a good part of a 10^6-object start, and nothing needs the order before the first eviction,
so a start-up load only *records* its groups and the orders are built after READY=1
(:meth:`dualbladed.store.index.ObjectIndex.complete_orders` for the protocol). While deferred,
:meth:`add` and :meth:`discard` only note the entry's last requested membership in
``_changed``, and :meth:`touch` notes the entry without writing ``last_access`` (the index
queues the new value), so the entries a build reads do not change under it. The swap takes
every changed entry out of the built orders by the value the build filed it under, applies the
queued ``last_access`` values, installs the orders and replays :meth:`add` for the changed
entries whose last request was ``add`` (which re-checks persistent / dead / held as any ``add``
does). Readers (:meth:`oldest`, ``len``, ``in``) build first if nothing has yet.

Not thread-safe: every method runs under ``ObjectStore._lock`` (via ``ObjectIndex``), except
:meth:`build`, which writes only its new object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING

from sortedcontainers import SortedKeyList

from dualbladed.store.sortedappend import append_keyed
from dualbladed.store.sortfill import fill, sorted_runs

if TYPE_CHECKING:
    from dualbladed.store.index import IndexEntry

__all__ = ["LruOrder"]

_Key = tuple[str, bytes]  # (tenant, key)
_persistent = attrgetter("persistent")
_dead = attrgetter("dead")
_last_access = attrgetter("last_access")


def _order() -> SortedKeyList:
    return SortedKeyList(key=_last_access)


class LruOrder:
    """Evictable objects, oldest access first, by tenant, by path and by uid."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, SortedKeyList] = {}  # tenant -> entries by last_access
        self._by_path: dict[str, SortedKeyList] = {}  # path -> the same
        self._by_uid: dict[str, SortedKeyList] = {}  # "uid" (the tenant's head) -> the same
        self._len = 0
        #: (tenant, key) -> live hit pins on it, all sessions (kept by HitPins via hold/release)
        self.held: dict[_Key, int] = {}
        #: a deferred load's groups (None: nothing deferred), see the module docstring
        self._pending: Mapping[tuple[str, str], list[IndexEntry]] | None = None
        #: while a load is deferred: entry -> its last requested membership (add True)
        self._changed: dict[IndexEntry, bool] = {}
        self._complete: Callable[[], None] | None = None  # ObjectIndex.complete_orders

    def __len__(self) -> int:
        self._require()
        return self._len

    def __contains__(self, entry: IndexEntry) -> bool:
        self._require()
        return self._member(entry)

    def _member(self, entry: IndexEntry) -> bool:
        order = self._by_path.get(entry.path)
        return order is not None and entry in order

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
        """Take the entries changed while deferred out of ``built`` (by the value it filed)."""
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
        self._len = built._len
        for entry, member in changed.items():
            if member:
                self.add(entry)

    def add(self, entry: IndexEntry) -> None:
        """Make ``entry`` a member if it is evictable by nature (live and persistent)."""
        if self._pending is not None:
            self._changed[entry] = True
            return
        info = entry
        if not info.persistent or entry.dead or (info.tenant, info.key) in self.held:
            return
        if self._member(entry):
            return
        for table, name in self._tables(info.tenant, info.path):
            order = table.get(name)
            if order is None:
                order = table[name] = _order()
            order.add(entry)
        self._len += 1

    def add_many(self, entries: list[IndexEntry]) -> None:
        """:meth:`add` of many entries (a group commit's): each order's new members appended
        in one step when they are its newest (:mod:`dualbladed.store.sortedappend`), else
        added one by one."""
        if self._pending is not None:
            for entry in entries:
                self.add(entry)
            return
        held = self.held
        groups: dict[tuple[str, str], list[IndexEntry]] = {}
        for entry in entries:
            if not entry.persistent or entry.dead:
                continue
            if held and (entry.tenant, entry.key) in held:
                continue
            order = self._by_path.get(entry.path)
            if (  # a member already? only possible at or below the order's newest stamp
                order is not None
                and order._maxes
                and entry.last_access <= order._maxes[-1]
                and entry in order
            ):
                continue
            group = groups.get((entry.tenant, entry.path))
            if group is None:
                group = groups[(entry.tenant, entry.path)] = []
            group.append(entry)
        merged: dict[tuple[int, str], tuple[dict[str, SortedKeyList], str, list]] = {}
        for (tenant, path), members in groups.items():
            self._len += len(members)
            for table, name in self._tables(tenant, path):
                got = merged.get((id(table), name))
                if got is None:
                    merged[(id(table), name)] = (table, name, members)
                else:  # one order fed by several groups (a uid's tenants, a path's)
                    merged[(id(table), name)] = (table, name, got[2] + members)
        for table, name, members in merged.values():
            members.sort(key=_last_access)  # stable; a group's stamps already ascend
            order = table.get(name)
            if order is None:
                order = table[name] = _order()
            if not append_keyed(order, members, _last_access):
                for entry in members:
                    order.add(entry)

    def load(self, entries: Iterable[IndexEntry]) -> None:
        """Bulk :meth:`add` (start-up): one sorted update per order, not one insert per entry."""
        groups: dict[tuple[str, str], list[IndexEntry]] = {}
        for entry in entries:
            info = entry
            group = groups.get((info.tenant, info.path))
            if group is None:
                group = groups[(info.tenant, info.path)] = []
            group.append(entry)
        self.load_groups(groups)

    def load_groups(self, groups: Mapping[tuple[str, str], list[IndexEntry]]) -> None:
        """Bulk :meth:`add` of entries already grouped by ``(tenant, path)``.

        A group is taken whole when every entry is evictable by nature and not yet a member
        (all persistent, live, not held: any start-up without ephemeral objects), else entry by
        entry through the checks of :meth:`add`. Each order (tenant, path, uid) is then updated
        once with all its groups (:func:`.sortfill.sorted_runs` by ``last_access``, then
        :func:`.sortfill.fill`).
        """
        held = self.held
        merged: dict[tuple[int, str], tuple[dict[str, SortedKeyList], str, list[list]]] = {}
        for (tenant, path), entries in groups.items():
            infos = entries  # (entries carry the ObjectInfo fields)
            if (
                not held
                and all(map(_persistent, infos))
                and not any(map(_dead, entries))
                and not any(map(self._member, entries))
            ):
                members = entries
            else:
                members = [
                    entry
                    for entry, info in zip(entries, infos)
                    if info.persistent
                    and not entry.dead
                    and (info.tenant, info.key) not in held
                    and not self._member(entry)
                ]
            self._len += len(members)
            for table, name in self._tables(tenant, path):
                got = merged.get((id(table), name))
                if got is None:
                    merged[(id(table), name)] = (table, name, [members])
                else:
                    got[2].append(members)
        for table, name, parts in merged.values():
            order = table.get(name)
            if order is None:
                order = table[name] = _order()
            # sorted in runs and installed sublist by sublist: no long GIL hold (sortfill)
            fill(order, sorted_runs(parts[0] if len(parts) == 1 else list(chain(*parts))))

    def discard(self, entry: IndexEntry) -> None:
        if self._pending is not None:
            self._changed[entry] = False
            return
        self.leave(entry)

    def leave(self, entry: IndexEntry) -> bool:
        """Take ``entry`` out of the orders (not deferred); True if it was a member. The index
        brackets a ``last_access`` change it shares with the recency order with this and
        :meth:`add` (see :meth:`ObjectIndex.note_access`)."""
        if not self._member(entry):
            return False
        info = entry
        for table, name in self._tables(info.tenant, info.path):
            order = table[name]
            order.remove(entry)
            if not order:
                del table[name]
        self._len -= 1
        return True

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
        member = self.leave(entry)
        entry.last_access = when
        if member:
            self.add(entry)

    def _tables(self, tenant: str, path: str) -> tuple[tuple[dict[str, SortedKeyList], str], ...]:
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
            entry = order[i]
            if entry.pins:
                i += 1
                continue
            yield entry
            if i < len(order) and order[i] is entry:  # not evicted by the caller: step over it
                i += 1
