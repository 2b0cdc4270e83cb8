"""Capacity eviction: persistent objects make room, least recently used first.

A KV cache that refuses puts once full is useless, so when a put does not fit, the store evicts
persistent objects in LRU order (:class:`~dualbladed.store.lru.LruOrder`) until it does:

- **the path is full** (its allocator raises :class:`~dualbladed.errors.OutOfSpace`): the path's
  least recently used objects, of any tenant, one at a time until the allocation succeeds (a
  fragmented path may need more than the bytes asked for). If nothing evictable is left, the put
  fails with the allocator's OutOfSpace as before. The page-cache path's disk floor
  (``DiskFloorReached``) is not "full": it protects the host's filesystem, and placement moves
  puts to the direct path instead of evicting;
- **the tenant's quota is full** (checked by :mod:`dualbladed.sessions.batch` before the data
  write): the tenant's own least recently used objects, but only when evicting them all would
  make enough room -- a put that fails anyway must not empty the cache first;
- **the uid's quota is full** (``quotas.per_uid`` / the default per-uid cap over all of a uid's
  labels): the least recently used objects of that uid's tenants, all or nothing likewise. Labels
  are one user's own partition, so one user's tenants may evict each other, another user's never.

Never evicted: ephemeral objects (they die with their session), objects whose key a session has
hit-pinned (:mod:`dualbladed.store.pins`), objects an in-flight read pins, and the key being
overwritten by the quota check's own put (its bytes are already counted as freed).

An eviction is a delete: the row's removal is committed (with the durability of the put that
caused it, so a durable put never lands on an extent whose old row could come back) and then the
extent is freed. ``limits.evict_persistent = false`` turns it off: a full path or quota then fails
the put with RESOURCE_EXHAUSTED, as before this module existed.

The counters (:class:`Evictions`) are the one table behind ``dbctl`` (Status/Tenants) and the
Prometheus counters ``dualblade_evictions_total`` / ``dualblade_evicted_bytes_total``.
Everything here runs under ``ObjectStore._lock``; each walk costs O(log n) per victim, never a
scan of all objects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dualbladed.errors import DualbladeError, InvalidArgument, NotFound, OutOfSpace
from dualbladed.store.input import check_key

if TYPE_CHECKING:
    from dualbladed.alloc.abstract import Extent
    from dualbladed.paths.abstract import ResidencyPath
    from dualbladed.store.index import IndexEntry, ObjectIndex, ObjectInfo
    from dualbladed.store.pins import HitPins

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIN_MS",
    "DEFAULT_MAX_PINS_PER_SESSION",
    "CapacityPolicy",
    "EvictionSite",
    "EvictionTotals",
    "Evictions",
]

DEFAULT_MAX_PINS_PER_SESSION = 16384
DEFAULT_MAX_PIN_MS = 600_000
#: keys one lock round of ``stat_many`` looks up
STAT_CHUNK = 128


@dataclass(frozen=True)
class CapacityPolicy:
    """What the store may do to make room, and how many hits a session may pin."""

    #: evict persistent objects (LRU) when a path or a tenant's quota is full
    evict_persistent: bool = True
    #: live hit pins one session may hold
    max_pins_per_session: int = DEFAULT_MAX_PINS_PER_SESSION
    #: the longest ``pin_ms`` a stat op may ask for
    max_pin_ms: int = DEFAULT_MAX_PIN_MS


@dataclass(frozen=True)
class EvictionTotals:
    count: int = 0
    bytes: int = 0  # payload bytes of the evicted objects


class Evictions:
    """Evictions since start per ``(tenant, path)``. Own leaf lock: readers need not take the
    store's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[tuple[str, str], EvictionTotals] = {}

    def note(self, tenant: str, path: str, nbytes: int) -> None:
        with self._lock:
            old = self._table.get((tenant, path), EvictionTotals())
            self._table[(tenant, path)] = EvictionTotals(old.count + 1, old.bytes + nbytes)

    def snapshot(self) -> dict[tuple[str, str], EvictionTotals]:
        with self._lock:
            return dict(self._table)

    def by_tenant(self) -> dict[str, EvictionTotals]:
        out: dict[str, EvictionTotals] = {}
        for (tenant, _path), t in self.snapshot().items():
            old = out.get(tenant, EvictionTotals())
            out[tenant] = EvictionTotals(old.count + t.count, old.bytes + t.bytes)
        return out

    def total(self) -> EvictionTotals:
        snap = self.snapshot().values()
        return EvictionTotals(sum(t.count for t in snap), sum(t.bytes for t in snap))


class EvictionSite:
    """The eviction and pin half of :class:`~dualbladed.store.objects.ObjectStore` (a mixin:
    it runs on the store's lock, index and metadata; kept here so the store module stays about
    the put/get/delete protocol)."""

    capacity: CapacityPolicy
    evictions: Evictions
    _index: ObjectIndex
    _pins: HitPins
    _lock: threading.Lock

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def _commit(
            self, entry: IndexEntry | None, old: IndexEntry | None, *, durable: bool
        ) -> None: ...
        def _retire(self, entry: IndexEntry) -> None: ...

    def stat_many(
        self, tenant: str, requests: Sequence[tuple[bytes, int]], *, session: str
    ) -> list[ObjectInfo | DualbladeError]:
        """Many ``stat(tenant, key, session=session, pin_ms=pin_ms)``: each result is the
        object's info (its ``last_access`` not refreshed: a lookup needs size, generation and
        path) or the error that stat would raise (NotFound for a miss).

        One lock round per :data:`STAT_CHUNK` keys instead of one per key (a KV tier's lookup
        asks about hundreds), and short enough rounds that puts and gets of other sessions wait
        microseconds, not the whole lookup.
        """
        out: list[ObjectInfo | DualbladeError] = []
        for start in range(0, len(requests), STAT_CHUNK):
            checked: list[tuple[bytes, int] | DualbladeError] = []
            for key, pin_ms in requests[start : start + STAT_CHUNK]:
                try:
                    key = check_key(tenant, key)
                    self._check_pin(session, pin_ms)
                    checked.append((key, pin_ms))
                except DualbladeError as err:
                    checked.append(err)
            with self._lock:
                self._check_open()
                for item in checked:
                    if isinstance(item, DualbladeError):
                        out.append(item)
                        continue
                    try:
                        out.append(self._stat_locked(tenant, item[0], session, item[1]).info)
                    except DualbladeError as err:
                        out.append(err)
        return out

    def touch_many(self, tenant: str, keys: Sequence[bytes]) -> list[ObjectInfo | DualbladeError]:
        """Mark each key's object as used now, without reading it (a KV tier's ``touch``).

        The object moves to the young end of the eviction LRU (:mod:`dualbladed.store.lru`) just
        as a get would move it: one ``last_access`` per object, shared with the residency
        arbiter's heat and persisted in the batched access update, so the LRU order after a
        restart keeps the touch. Each result is the object's info after the touch, or the error
        (NotFound for a miss, InvalidArgument for a bad key). Pins nothing; locked in rounds of
        :data:`STAT_CHUNK` keys, as :meth:`stat_many`.
        """
        out: list[ObjectInfo | DualbladeError] = []
        for start in range(0, len(keys), STAT_CHUNK):
            checked: list[bytes | DualbladeError] = []
            for key in keys[start : start + STAT_CHUNK]:
                try:
                    checked.append(check_key(tenant, key))
                except DualbladeError as err:
                    checked.append(err)
            with self._lock:
                self._check_open()
                for item in checked:
                    if isinstance(item, DualbladeError):
                        out.append(item)
                        continue
                    entry = self._index.lookup(tenant, item)
                    if entry is None:  # names only the caller's key, as stat does
                        out.append(NotFound(f"key {item!r} not found"))
                        continue
                    self._index.note_access(entry)
                    out.append(entry.snapshot())
        return out

    def _check_pin(self, session: str | None, pin_ms: int) -> None:
        if not pin_ms:
            return
        if session is None:
            raise InvalidArgument("pin_ms needs a session to hold the pin")
        if not 0 < pin_ms <= self.capacity.max_pin_ms:
            raise InvalidArgument(
                f"pin_ms {pin_ms} is outside 1..{self.capacity.max_pin_ms} (limits.max_pin_ms)"
            )

    def _stat_locked(self, tenant: str, key: bytes, session: str | None, pin_ms: int) -> ObjectInfo:
        entry = self._index.lookup(tenant, key)
        if entry is None:
            # The message names only the caller's key: other tenants' keys look absent.
            raise NotFound(f"key {key!r} not found")
        if pin_ms:
            self._pins.pin(session, entry, pin_ms)  # type: ignore[arg-type]
        return entry

    def unpin(self, tenant: str, key: bytes, session: str) -> bool:
        """End ``session``'s hit pin on ``key``; False when it held none."""
        key = check_key(tenant, key)
        with self._lock:
            self._check_open()
            return self._pins.unpin(session, tenant, key)

    def pin_counts(self) -> dict[str, int]:
        """Keys hit-pinned now, per tenant (expired pins collected first)."""
        with self._lock:
            self._pins.expire()
            return self._pins.by_tenant()

    def evict_for_quota(
        self, tenant: str, need: int, *, keep: bytes, durable: bool, uid: int | None = None
    ) -> int:
        """Evict ``tenant``'s (with ``uid``: any of that uid's tenants') least recently used
        persistent objects to free ``need`` bytes of quota (extent lengths); return the bytes
        freed. All or nothing: when the evictable objects (``tenant``'s ``keep``, the key being
        overwritten, excluded) cannot free ``need``, nothing is evicted and 0 is returned. See
        :mod:`dualbladed.store.capacity`."""
        if need <= 0 or not self.capacity.evict_persistent:
            return 0
        with self._lock:
            self._check_open()
            self._pins.expire()
            victims, freed = [], 0
            walk = self._index.lru.oldest(tenant=tenant if uid is None else None, uid=uid)
            for entry in walk:
                if entry.key == keep and entry.tenant == tenant:
                    continue
                victims.append(entry)
                freed += entry.length
                if freed >= need:
                    break
            if freed < need:
                return 0
            for entry in victims:
                self._evict(entry, durable=durable, why="quota" if uid is None else "uid quota")
            return freed

    def _allocate(
        self, target: ResidencyPath, path_name: str, size: int, *, durable: bool
    ) -> Extent:
        """Allocate on ``target``, evicting its least recently used objects while it is full."""
        try:
            return target.allocate(size)
        except OutOfSpace:
            if not self.capacity.evict_persistent:
                raise
        self._pins.expire()
        for victim in self._index.lru.oldest(path=path_name):
            self._evict(victim, durable=durable, why=f"{path_name} path full")
            try:
                return target.allocate(size)
            except OutOfSpace:
                continue
        return target.allocate(size)  # nothing evictable left: raises OutOfSpace

    def _evict(self, entry: IndexEntry, *, durable: bool, why: str) -> None:
        """Delete one persistent object to make room (commit the row's removal, then free)."""
        info = entry.info
        self._commit(None, entry, durable=durable)
        self._retire(entry)
        self.evictions.note(info.tenant, info.path, info.size)
        logger.debug(
            "evicted tenant %s key %r (%d bytes on %s, last access %.3f): %s",
            info.tenant,
            info.key,
            info.size,
            info.path,
            entry.last_access,
            why,
        )
