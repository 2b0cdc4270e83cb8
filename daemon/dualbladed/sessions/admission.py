"""Admission: whether a new session may exist, decided before anything is allocated for it.

One unprivileged uid must not be able to exhaust what every other uid needs (issue 15: one uid
opened all 256 sessions in 0.1 s, and three 4 GiB arenas took 12 GiB of the daemon's memory).
So a hello is admitted, or refused with ResourceExhausted naming the limit, *before* its arena
is created, and the admitted amount is charged at once (two hellos racing for the last slot
cannot both win).

The rules, for a session of ``b`` arena bytes asked by uid ``u``:

* everyone: sessions < ``max_sessions`` and arena bytes + b <= ``arena_bytes``;
* unprivileged uids (not root, not the admin group) additionally stop short of the reserves:
  sessions < ``max_sessions - reserved_sessions`` and arena bytes + b <=
  ``arena_bytes - reserved_arena_bytes``, counted over *all* sessions, so root and dbctl always
  find at least the reserve free; and each such uid holds at most ``per_uid_sessions`` sessions
  and ``per_uid_arena_bytes`` arena bytes.

Arena bytes count what the arena *may* cost, its size: its pages are committed only when the
client touches them (:mod:`dualbladed.sessions.arena`), but a client may touch all of them, so
the size is the honest bound on the shared memory one uid can pin.

Defaults (:meth:`AdmissionLimits.resolve`), sized from the machine when the daemon starts:
``per_uid_sessions = max_sessions // 4``, ``reserved_sessions = max_sessions // 16``,
``arena_bytes = MemTotal // 2``, ``per_uid_arena_bytes = MemTotal // 4``,
``reserved_arena_bytes = arena_bytes // 8`` (all at least 1 / one page where that matters).

The :class:`Ledger` is not thread-safe: the session registry owns it under its lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import psutil

from dualblade.v1.wire import ALIGNMENT
from dualbladed.config import AdmissionConfig
from dualbladed.errors import InvalidArgument, ResourceExhausted

__all__ = ["Admission", "AdmissionLimits", "Ledger"]

_UNLIMITED = 1 << 62


def _floor_page(n: int) -> int:
    return max(ALIGNMENT, n - n % ALIGNMENT)


@dataclass(frozen=True)
class AdmissionLimits:
    """The resolved limits (every field a number; see the module docstring)."""

    max_sessions: int
    per_uid_sessions: int
    reserved_sessions: int = 0
    arena_bytes: int = _UNLIMITED
    per_uid_arena_bytes: int = _UNLIMITED
    reserved_arena_bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.per_uid_sessions < 1:
            raise InvalidArgument("max_sessions and admission.per_uid_sessions must be >= 1")
        if not 0 <= self.reserved_sessions < self.max_sessions:
            raise InvalidArgument(
                f"admission.reserved_sessions {self.reserved_sessions} must be below "
                f"limits.max_sessions {self.max_sessions}, or no other uid could connect"
            )
        if not 0 <= self.reserved_arena_bytes < self.arena_bytes:
            raise InvalidArgument(
                f"admission.reserved_arena_bytes {self.reserved_arena_bytes} must be below "
                f"admission.arena_bytes {self.arena_bytes}"
            )

    @classmethod
    def unlimited(cls, max_sessions: int) -> AdmissionLimits:
        """Only the global session count (the registry's behaviour before admission existed)."""
        return cls(max_sessions=max_sessions, per_uid_sessions=max_sessions)

    @classmethod
    def resolve(
        cls, config: AdmissionConfig, max_sessions: int, mem_total: int | None = None
    ) -> AdmissionLimits:
        """Fill the settings left unset from ``max_sessions`` and the machine's RAM."""
        ram = psutil.virtual_memory().total if mem_total is None else mem_total
        reserved = config.reserved_sessions
        if reserved is None:
            reserved = min(max_sessions // 16, max_sessions - 1)
        per_uid = config.per_uid_sessions
        if per_uid is None:
            per_uid = max(1, max_sessions // 4)
        total = config.arena_bytes if config.arena_bytes is not None else _floor_page(ram // 2)
        per_uid_arena = config.per_uid_arena_bytes
        if per_uid_arena is None:
            per_uid_arena = _floor_page(ram // 4)
        reserved_arena = config.reserved_arena_bytes
        if reserved_arena is None:
            reserved_arena = total // 8 - (total // 8) % ALIGNMENT
        return cls(max_sessions, per_uid, reserved, total, per_uid_arena, reserved_arena)


@dataclass(frozen=True, eq=False)
class Admission:
    """A granted claim: one session slot and ``arena_bytes`` charged to ``uid``.

    Hand it to :meth:`SessionRegistry.register` (the session then carries the charge until it
    ends) or give it back with :meth:`SessionRegistry.cancel`.
    """

    uid: int
    arena_bytes: int
    privileged: bool
    _settled: list[bool] = field(default_factory=lambda: [False], repr=False)

    @property
    def settled(self) -> bool:
        """Given back already (the session ended, or the claim was cancelled)."""
        return self._settled[0]


class Ledger:
    """Sessions and arena bytes held, per uid and in total. Not thread-safe (see module doc)."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._sessions: Counter[int] = Counter()
        self._arena: Counter[int] = Counter()
        self.total_sessions = 0
        self.total_arena_bytes = 0

    def admit(self, uid: int, arena_bytes: int, privileged: bool) -> Admission:
        """Charge one session of ``arena_bytes`` to ``uid``, or raise ResourceExhausted."""
        lim = self.limits
        if self.total_sessions >= lim.max_sessions:
            raise ResourceExhausted(
                f"too many sessions: {self.total_sessions} open, limit {lim.max_sessions}"
            )
        if self.total_arena_bytes + arena_bytes > lim.arena_bytes:
            raise ResourceExhausted(
                f"arena of {arena_bytes} bytes refused: {self.total_arena_bytes} of the daemon's "
                f"{lim.arena_bytes} arena bytes (admission.arena_bytes) are in use"
            )
        if not privileged:
            self._check_unprivileged(uid, arena_bytes)
        self._sessions[uid] += 1
        self._arena[uid] += arena_bytes
        self.total_sessions += 1
        self.total_arena_bytes += arena_bytes
        return Admission(uid, arena_bytes, privileged)

    def _check_unprivileged(self, uid: int, arena_bytes: int) -> None:
        lim = self.limits
        if self.total_sessions >= lim.max_sessions - lim.reserved_sessions:
            raise ResourceExhausted(
                f"too many sessions: {self.total_sessions} open; the last "
                f"{lim.reserved_sessions} of {lim.max_sessions} are reserved for root and the "
                "admin group (admission.reserved_sessions)"
            )
        if self._sessions[uid] >= lim.per_uid_sessions:
            raise ResourceExhausted(
                f"too many sessions for uid {uid}: {self._sessions[uid]} open, limit "
                f"{lim.per_uid_sessions} per uid (admission.per_uid_sessions)"
            )
        if self.total_arena_bytes + arena_bytes > lim.arena_bytes - lim.reserved_arena_bytes:
            raise ResourceExhausted(
                f"arena of {arena_bytes} bytes refused: {self.total_arena_bytes} arena bytes in "
                f"use and the last {lim.reserved_arena_bytes} of {lim.arena_bytes} are reserved "
                "for root and the admin group (admission.reserved_arena_bytes)"
            )
        if self._arena[uid] + arena_bytes > lim.per_uid_arena_bytes:
            raise ResourceExhausted(
                f"arena of {arena_bytes} bytes refused: uid {uid} holds {self._arena[uid]} arena "
                f"bytes, limit {lim.per_uid_arena_bytes} per uid (admission.per_uid_arena_bytes)"
            )

    def release(self, admission: Admission) -> bool:
        """Give the charge back, once; False if it was already given back."""
        if admission._settled[0]:
            return False
        admission._settled[0] = True
        uid = admission.uid
        self._sessions[uid] -= 1
        self._arena[uid] -= admission.arena_bytes
        if self._sessions[uid] <= 0:
            del self._sessions[uid]
            self._arena.pop(uid, None)
        self.total_sessions -= 1
        self.total_arena_bytes -= admission.arena_bytes
        return True

    def usage(self, uid: int) -> tuple[int, int]:
        """``(sessions, arena bytes)`` held by ``uid``."""
        return self._sessions.get(uid, 0), self._arena.get(uid, 0)
