"""The object store's in-memory index and its public record types.

:class:`ObjectIndex` maps ``tenant -> key -> IndexEntry`` (one sorted :class:`KeyMap` per
tenant, so a prefix listing is a range scan) and keeps the derived tables next to it: each session's
ephemeral members, each tenant's allocated bytes, the batched ``last_access`` updates and the
pin counts that defer freeing an extent while a reader uses it.

Derived state is kept incrementally (:mod:`dualbladed.store.heat`): per-path recency order for
the arbiter's coldest/hottest candidates and running per-tenant, per-path totals for stats, so
no caller has to walk every entry on a timer or per status call.

It does no I/O and takes no lock: every method must be called with ``ObjectStore._lock`` held.
The methods that may end an extent's life (``retire``, ``unpin``) return ``True`` when the caller
must release the extent now, so the index never needs to know the residency paths.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter

from dualbladed.alloc.abstract import AllocStats
from dualbladed.store.entry import (
    IndexEntry,
    LayerEntry,
    ObjectInfo,
    entry_from_values,
    info_from_values,
    shared_int,
)
from dualbladed.store.heat import HeatIndex, Totals, Usage
from dualbladed.store.keymap import KeyMap
from dualbladed.store.lru import LruOrder

__all__ = [
    "IndexEntry",
    "LayerEntry",
    "ObjectIndex",
    "ObjectInfo",
    "PathUsage",
    "StoreStats",
    "Usage",
    "entry_from_values",
    "info_from_values",
    "shared_int",
]

_length = attrgetter("length")
_size = attrgetter("size")
_persistent = attrgetter("persistent")


@dataclass(frozen=True)
class PathUsage:
    objects: int
    bytes: int  # payload bytes of the objects on this path
    alloc: AllocStats
    resident_bytes: int


@dataclass(frozen=True)
class StoreStats:
    paths: dict[str, PathUsage]
    objects: int
    persistent_objects: int
    ephemeral_objects: int
    sessions: dict[str, int]  # session -> live ephemeral objects
    pinned: int  # entries currently pinned by readers (including retired ones)


class ObjectIndex:
    """In-memory index of live objects. Not thread-safe: the store's lock guards it."""

    def __init__(self) -> None:
        self._tenants: dict[str, KeyMap] = {}  # tenant -> its entries by key
        self._sessions: dict[str, set[tuple[str, bytes]]] = {}
        self._usage: dict[str, int] = {}  # tenant -> allocated bytes (extent lengths)
        self._uid_usage: dict[str, int] = {}  # "uid" (the tenant's head) -> the same, summed
        self._dirty_access: dict[tuple[str, bytes], float] = {}
        #: last_access values queued while the orders are deferred (see begin_orders)
        self._access: dict[IndexEntry, float] = {}
        self._heat = HeatIndex()
        self._totals = Totals()
        self.pinned = 0
        #: evictable persistent objects, least recently used first (capacity eviction)
        self.lru = LruOrder()

    def __len__(self) -> int:
        return self._totals.objects

    def load(self, by_path: Mapping[str, list[IndexEntry]]) -> None:
        """Install many entries of distinct keys (``path -> entries``) into an empty index
        (start-up): grouped by tenant, then :meth:`load_groups`."""
        groups: dict[tuple[str, str], list[IndexEntry]] = {}
        for path, entries in by_path.items():
            for entry in entries:
                group = groups.get((path, entry.tenant))
                if group is None:
                    group = groups[(path, entry.tenant)] = []
                group.append(entry)
        self.load_groups(groups)

    def load_groups(self, groups: Mapping[tuple[str, str], list[IndexEntry]]) -> None:
        """Install many entries of distinct keys, grouped ``(path, tenant) -> entries``, into
        an empty index (start-up): one sort per tenant instead of one sorted insert per entry,
        the running totals added once per group from C-level sums. The recency and eviction
        orders are only recorded (:meth:`HeatIndex.defer`, :meth:`LruOrder.defer`): they are
        built by :meth:`complete_orders`, or by their first reader, after the daemon is ready."""
        by_tenant: dict[str, list[list[IndexEntry]]] = {}
        by_path: dict[str, list[list[IndexEntry]]] = {}
        usage, uid_usage = self._usage, self._uid_usage
        for (path, tenant), group in groups.items():
            infos = group  # entries carry the ObjectInfo fields
            length = sum(map(_length, infos))
            usage[tenant] = usage.get(tenant, 0) + length
            uid = tenant.partition("/")[0]
            uid_usage[uid] = uid_usage.get(uid, 0) + length
            persistent = sum(map(_persistent, infos))
            self._totals.add_many(tenant, path, len(infos), sum(map(_size, infos)), persistent)
            if persistent != len(infos):  # ephemeral entries: their sessions' member sets
                for info in infos:
                    if info.session is not None:
                        self._sessions.setdefault(info.session, set()).add((info.tenant, info.key))
            by_tenant.setdefault(tenant, []).append(group)
            by_path.setdefault(path, []).append(group)
        self.complete_orders()  # a second load: build the first one's orders first
        if groups:  # (an empty load records nothing: no background build needed)
            self._heat.defer(
                {
                    path: parts[0] if len(parts) == 1 else list(chain(*parts))
                    for path, parts in by_path.items()
                },
                self.complete_orders,
            )
            self.lru.defer(
                {(tenant, path): group for (path, tenant), group in groups.items()},
                self.complete_orders,
            )
        for tenant, parts in by_tenant.items():
            entries = parts[0] if len(parts) == 1 else list(chain(*parts))
            self._tenants.setdefault(tenant, KeyMap()).update(entries)

    @property
    def orders_deferred(self) -> bool:
        """True while the recency or eviction order of a start-up load is not built yet."""
        return self._heat.deferred or self.lru.deferred

    # Deferred orders. A start-up load records the recency (heat) and eviction (LRU) orders'
    # entries and READY=1 goes out before they are sorted. Protocol, all steps but the build
    # under ObjectStore._lock:
    #   1. begin_orders(): the job (the recorded loads);
    #   2. build_orders(job): sort them into new structures, the lock released (the daemon's
    #      background thread) or held (complete_orders, for a reader that comes first);
    #   3. finish_orders(job, built): if the job is still the pending one, swap: entries
    #      changed since the load leave the built orders by the key they were filed under,
    #      the queued last_access values are applied, the built orders installed and the
    #      changed entries re-added by their current state. A stale job is dropped.
    # While deferred, every update only records (install/retire/pin/touch) and note_access
    # queues last_access in _access instead of writing it, so a build reads stable entries;
    # snapshots show the previous access time until the swap (the persisted one is current).

    def begin_orders(self) -> tuple[object, object] | None:
        if not self.orders_deferred:
            return None
        return (self._heat._pending, self.lru._pending)

    def build_orders(self, job: tuple[object, object]) -> tuple[object, object]:
        heat, lru = job
        return (
            HeatIndex.build(heat) if heat is not None else None,  # type: ignore[arg-type]
            self.lru.build(lru) if lru is not None else None,  # type: ignore[arg-type]
        )

    def finish_orders(self, job: tuple[object, object], built: tuple[object, object]) -> bool:
        """Swap in ``built`` if ``job`` is still pending (True), else drop it."""
        if self._heat._pending is not job[0] or self.lru._pending is not job[1]:
            return False
        heat, lru = built
        if heat is not None:
            self._heat.adopt_begin(heat)  # type: ignore[arg-type]
        if lru is not None:
            self.lru.adopt_begin(lru)  # type: ignore[arg-type]
        access, self._access = self._access, {}
        for entry, when in access.items():
            entry.last_access = when
        if heat is not None:
            self._heat.adopt_end(heat)  # type: ignore[arg-type]
        if lru is not None:
            self.lru.adopt_end(lru)  # type: ignore[arg-type]
        return True

    def complete_orders(self) -> None:
        """Build the deferred orders now, the caller holding the store lock."""
        job = self.begin_orders()
        if job is not None:
            self.finish_orders(job, self.build_orders(job))

    def lookup(self, tenant: str, key: bytes) -> IndexEntry | None:
        keys = self._tenants.get(tenant)
        return keys.get(key) if keys is not None else None

    def install(self, entry: IndexEntry) -> None:
        """Make ``entry`` the live version of its key (the caller retired the old one)."""
        info = entry  # (the entry's own fields)
        keys = self._tenants.get(info.tenant)
        if keys is None:
            keys = self._tenants[info.tenant] = KeyMap()
        keys.put(entry)
        self._usage[info.tenant] = self._usage.get(info.tenant, 0) + info.length
        uid = info.tenant.partition("/")[0]
        self._uid_usage[uid] = self._uid_usage.get(uid, 0) + info.length
        self._heat.add(info.path, entry)
        self._totals.add(info.tenant, info.path, info.size, info.persistent)
        if info.session is not None:
            self._sessions.setdefault(info.session, set()).add((info.tenant, info.key))
        self.lru.add(entry)

    def install_many(self, entries: list[IndexEntry]) -> None:
        """:meth:`install` for the entries of one group commit (distinct keys, old versions
        retired): usage and running totals added once per (tenant, path), not per entry."""
        counts: dict[tuple[str, str], list[int]] = {}
        by_path: dict[str, list[IndexEntry]] = {}
        by_tenant: dict[str, list[IndexEntry]] = {}
        for entry in entries:
            info = entry  # (the entry's own fields)
            c = counts.get((info.tenant, info.path))
            if c is None:
                c = counts[(info.tenant, info.path)] = [0, 0, 0, 0]
                by_path.setdefault(info.path, [])
                by_tenant.setdefault(info.tenant, [])
            c[0] += 1
            c[1] += info.size
            c[2] += info.length
            if info.persistent:
                c[3] += 1
            by_path[info.path].append(entry)
            by_tenant[info.tenant].append(entry)
            if info.session is not None:
                self._sessions.setdefault(info.session, set()).add((info.tenant, info.key))
        for tenant, items in by_tenant.items():  # sequential keys: appended in one step
            keys = self._tenants.get(tenant)
            if keys is None:
                keys = self._tenants[tenant] = KeyMap()
            if not keys.append_new(items):
                for entry in items:
                    keys.put(entry)
        for path, group in by_path.items():
            self._heat.add_many(path, group)
        self.lru.add_many(entries)
        for (tenant, path), (n, size, length, persistent) in counts.items():
            self._usage[tenant] = self._usage.get(tenant, 0) + length
            uid = tenant.partition("/")[0]
            self._uid_usage[uid] = self._uid_usage.get(uid, 0) + length
            self._totals.add_many(tenant, path, n, size, persistent)

    def retire(self, entry: IndexEntry) -> bool:
        """Take ``entry`` out of the index. True: release its extent now (nobody pins it)."""
        if entry.dead:
            return False
        info = entry  # (the entry's own fields)
        keys = self._tenants.get(info.tenant)
        if keys is not None and keys.get(info.key) is entry:
            keys.remove(entry)
            if not keys:
                del self._tenants[info.tenant]
        self._heat.discard(info.path, entry)
        self._totals.add(info.tenant, info.path, info.size, info.persistent, -1)
        self._usage[info.tenant] -= info.length
        if not self._usage[info.tenant]:
            del self._usage[info.tenant]
        uid = info.tenant.partition("/")[0]
        self._uid_usage[uid] -= info.length
        if not self._uid_usage[uid]:
            del self._uid_usage[uid]
        if info.session is not None:
            members = self._sessions.get(info.session)
            if members is not None:
                members.discard((info.tenant, info.key))
                if not members:
                    del self._sessions[info.session]
        self._dirty_access.pop((info.tenant, info.key), None)
        self.lru.discard(entry)
        entry.dead = True
        return entry.pins == 0

    def replace_info(self, entry: IndexEntry, info: ObjectInfo) -> None:
        """Swap a live layer entry's snapshot for one of the same object and extent (an
        append: a new ``size``), keeping the running totals in step."""
        if not isinstance(entry, LayerEntry):
            raise TypeError("only a layer object's info changes in place")
        if entry.size != info.size:
            self._totals.add(entry.tenant, entry.path, entry.size, entry.persistent, -1)
            self._totals.add(info.tenant, info.path, info.size, info.persistent)
        entry.set_info(info)

    def pin(self, entry: IndexEntry) -> None:
        if entry.pins == 0:
            self.pinned += 1
        entry.pins += 1

    def unpin(self, entry: IndexEntry) -> bool:
        """Drop one pin. True: the entry was retired meanwhile, release its extent now."""
        entry.pins -= 1
        if entry.pins:
            return False
        self.pinned -= 1
        return entry.dead

    def session_members(self, session: str) -> list[IndexEntry]:
        """The live ephemeral entries of ``session``."""
        out = []
        for tenant, key in self._sessions.get(session, ()):
            entry = self.lookup(tenant, key)
            if entry is not None and entry.session == session:
                out.append(entry)
        return out

    def note_access(self, entry: IndexEntry) -> None:
        now = time.time()
        if self.orders_deferred:  # the orders only note it: a build may be sorting by it
            if not entry.dead:
                self._heat.touch(entry.path, entry, now)
            self.lru.touch(entry, now)
            self._access[entry] = now
        else:
            # Both orders file the entry under its own last_access: out of the LRU by the old
            # value, moved in the recency order (which writes the new one), back into the LRU.
            member = self.lru.leave(entry)
            if not entry.dead:
                self._heat.touch(entry.path, entry, now)
            else:
                entry.last_access = now
            if member:
                self.lru.add(entry)
        if entry.persistent:
            self._dirty_access[(entry.tenant, entry.key)] = now

    def take_dirty_access(self) -> dict[tuple[str, bytes], float]:
        batch, self._dirty_access = self._dirty_access, {}
        return batch

    def usage(self, tenant: str) -> int:
        return self._usage.get(tenant, 0)

    def uid_usage(self, uid: int) -> int:
        """Allocated bytes over every tenant ``"<uid>/..."`` (per-uid quotas)."""
        return self._uid_usage.get(str(uid), 0)

    def coldest(self, path: str, n: int) -> list[IndexEntry]:
        """Up to ``n`` live entries on ``path``, least recently accessed first: O(log N + n).
        None until a deferred start-up load is built (:attr:`HeatIndex.ranked`)."""
        return self._heat.coldest(path, n)

    def hottest(self, path: str, n: int) -> list[IndexEntry]:
        """Up to ``n`` live entries on ``path``, most recently accessed first: O(log N + n).
        None until a deferred start-up load is built (:attr:`HeatIndex.ranked`)."""
        return self._heat.hottest(path, n)

    def totals(self) -> dict[str, dict[str, Usage]]:
        """``tenant -> path -> Usage(objects, payload bytes)``, from running totals."""
        return self._totals.by_tenant()

    def session_counts(self) -> dict[str, int]:
        return {s: len(m) for s, m in self._sessions.items()}

    def scan(self, tenant: str | None, prefix: bytes, limit: int) -> Iterator[IndexEntry]:
        """Entries in (tenant, key) order whose key starts with ``prefix``; ``limit`` 0: all."""
        count = 0
        names = sorted(self._tenants) if tenant is None else [tenant]
        for name in names:
            keys = self._tenants.get(name)
            if keys is None:
                continue
            for entry in keys.starting_at(prefix):
                if not entry.key.startswith(prefix):
                    break
                yield entry
                count += 1
                if limit and count >= limit:
                    return

    def page(
        self, tenant: str | None, after: tuple[str, bytes] | None, limit: int
    ) -> list[IndexEntry]:
        """Up to ``limit`` entries in (tenant, key) order strictly after ``after`` (None: from
        the start): O(tenants + log N + limit), so a listing can be paged with a cursor."""
        out: list[IndexEntry] = []
        names = sorted(self._tenants) if tenant is None else [tenant]
        for name in names:
            if after is not None and name < after[0]:
                continue
            keys = self._tenants.get(name)
            if keys is None:
                continue
            if after is not None and name == after[0]:
                it = keys.starting_at(after[1], inclusive=False)
            else:
                it = iter(keys)
            for entry in it:
                out.append(entry)
                if len(out) >= limit:
                    return out
        return out

    def stats(self, paths: Mapping[str, tuple[AllocStats, int]]) -> StoreStats:
        """Object counts per path, given each path's ``(alloc stats, resident bytes)``."""
        by_path = self._totals.by_path()
        persistent = self._totals.persistent
        ephemeral = self._totals.objects - persistent
        return StoreStats(
            paths={
                name: PathUsage(
                    objects=by_path.get(name, Usage(0, 0)).objects,
                    bytes=by_path.get(name, Usage(0, 0)).bytes,
                    alloc=alloc,
                    resident_bytes=resident,
                )
                for name, (alloc, resident) in paths.items()
            },
            objects=persistent + ephemeral,
            persistent_objects=persistent,
            ephemeral_objects=ephemeral,
            sessions=self.session_counts(),
            pinned=self.pinned,
        )

    def entries(self) -> Iterator[IndexEntry]:
        for keys in self._tenants.values():
            yield from keys
