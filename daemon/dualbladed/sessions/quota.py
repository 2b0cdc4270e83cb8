"""Tenant and uid quota reservations for puts (the batch executor's quota side).

A tenant's usage is what the store holds for it plus what in-flight puts have reserved. The
reservation is taken under ``_quota_lock`` before the data write and released after the
commit, so concurrent puts from one tenant cannot jointly overshoot its quota while still
running their I/O in parallel. Lock order: ``_quota_lock`` is a leaf lock (nothing is called
while it is held except the store's cheap ``usage()``, and its ``evict_for_quota``: a put that
would pass the quota first evicts the tenant's least recently used persistent objects, see
:mod:`dualbladed.store.capacity`, so that two puts cannot both count the same evicted bytes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from dualbladed.errors import DualbladeError, QuotaExceeded
from dualbladed.sessions.registry import Session
from dualbladed.store import ObjectStore

__all__ = ["QuotaReservations"]


def _take_back(table: dict, name: object, length: int) -> None:
    """Lower a reservation, dropping the entry at zero (the tables stay small)."""
    left = table.get(name, 0) - length
    if left > 0:
        table[name] = left
    else:
        table.pop(name, None)


class QuotaReservations:
    """Per-tenant and per-uid bytes held by in-flight puts, checked against the quotas."""

    def __init__(
        self,
        store: ObjectStore,
        quota_for: Callable[[Session], int],
        uid_quota_for: Callable[[Session], int] | None = None,
    ) -> None:
        self._store = store
        self._quota_for = quota_for
        self._quota_lock = threading.Lock()
        self._reserved: dict[str, int] = {}
        # Per-uid caps over all of a uid's labels (0 = none); keyed by uid like ``_reserved``.
        self._uid_quota_for = uid_quota_for
        self._uid_reserved: dict[int, int] = {}

    def reserve(self, session: Session, key: bytes, length: int, *, durable: bool = False) -> int:
        """Check the quotas and hold what the put adds: ``length`` less the size of the
        version it replaces (which goes when it commits), so a batch that rewrites its own
        objects at the quota is not refused for holding old and new at once. Returns the bytes
        held, for :meth:`unreserve`."""
        quota = self._quota_for(session)
        uid_quota = self._uid_quota_for(session) if self._uid_quota_for is not None else 0
        uid = session.uid
        with self._quota_lock:
            reserved = self._reserved.get(session.tenant, 0)
            uid_reserved = self._uid_reserved.get(uid, 0)
            replaced = self._replaced_size(session.tenant, key) if quota or uid_quota else 0
            if quota:
                used = self._store.usage(session.tenant) + reserved - replaced
                if used + length > quota:  # make room: LRU eviction (all or nothing)
                    used -= self._store.evict_for_quota(
                        session.tenant, used + length - quota, keep=key, durable=durable
                    )
                if used + length > quota:
                    raise QuotaExceeded(
                        f"quota exceeded for tenant {session.tenant}: {used} bytes used, "
                        f"{length} requested, quota {quota} bytes"
                    )
            if uid_quota:
                used = self._store.uid_usage(uid) + uid_reserved - replaced
                if used + length > uid_quota:  # the same, over all of the uid's tenants
                    used -= self._store.evict_for_quota(
                        session.tenant,
                        used + length - uid_quota,
                        keep=key,
                        durable=durable,
                        uid=uid,
                    )
                if used + length > uid_quota:
                    raise QuotaExceeded(
                        f"quota exceeded for uid {uid}: {used} bytes used over all its tenants, "
                        f"{length} requested, per-uid quota {uid_quota} bytes"
                    )
            held = max(0, length - replaced)
            self._reserved[session.tenant] = reserved + held
            self._uid_reserved[uid] = uid_reserved + held
            return held

    def unreserve(self, session: Session, length: int) -> None:
        with self._quota_lock:
            _take_back(self._reserved, session.tenant, length)
            _take_back(self._uid_reserved, session.uid, length)

    def _replaced_size(self, tenant: str, key: bytes) -> int:
        """What replacing ``key`` gives back: its extent (usage counts extents, and a layer
        object's extent is its whole capacity, whatever its size)."""
        try:
            return self._store.stat(tenant, key).length
        except DualbladeError:
            return 0

    def reserve_packed(
        self,
        session: Session,
        keys: Sequence[bytes],
        lengths: Sequence[int],
        *,
        durable: bool = False,
    ) -> int:
        """:meth:`reserve` for a packed put: one reservation of the total when the session
        has no quota to check (nothing is replaced-counted then), else one per object, so
        the replaced-version and eviction rules stay exactly those of single puts."""
        quota = self._quota_for(session)
        uid_quota = self._uid_quota_for(session) if self._uid_quota_for is not None else 0
        if not quota and not uid_quota:
            return self.reserve(session, b"", sum(lengths), durable=durable)
        held = 0
        try:
            for key, length in zip(keys, lengths):
                held += self.reserve(session, key, length, durable=durable)
        except BaseException:
            self.unreserve(session, held)
            raise
        return held
