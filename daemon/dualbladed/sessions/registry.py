"""The session registry: who is connected, under which token, and what happens when they leave.

A session is born in the handshake (:mod:`dualbladed.sessions.handshake`): the kernel tells us the
peer's pid/uid/gid (SO_PEERCRED), the client names a tenant label, and the registry issues a
random 128-bit bearer token. Every gRPC call presents the token; :meth:`SessionRegistry.authenticate`
maps it back to the session. The tenant is ``"<uid>/<label>"``: the uid comes from the kernel, so
one user can never act as another user's tenant by choosing the same label.

Token lookup: tokens are stored keyed by their SHA-256 digest, never by the token itself. A dict
lookup compares hashes and then the stored key with ``==``, which exits at the first differing
byte; here those bytes belong to a digest, and learning a prefix of the digest of a token tells an
attacker nothing about the token (preimage resistance). That gives the property
``hmac.compare_digest`` would give, without a linear scan over all sessions.

Ending: a session ends exactly once, through :meth:`SessionRegistry.end`, whoever asks (lease loss
in the handshake thread, an admin, daemon shutdown). The token stops working before ``end``
returns. The ``on_end`` callbacks (free ephemeral objects, drop the lease connection, ...) then run
on the ending thread, outside the registry lock, in registration order; an exception in one is
logged and does not stop the others. Finally the session's arena is closed (lazily if I/O still
holds views of it, see :mod:`dualbladed.sessions.arena`). Callbacks must be quick: the handshake
thread runs them when a lease breaks, so heavy work belongs on a worker.

Admission: a session slot and its arena bytes are charged *before* the arena exists, through
:meth:`SessionRegistry.admit` (limits per uid, reserves for root and the admin group; see
:mod:`dualbladed.sessions.admission`). :meth:`~SessionRegistry.register` turns the claim into a
session, :meth:`~SessionRegistry.cancel` gives it back, and :meth:`~SessionRegistry.end` releases
it with the session.

Lock order: the registry lock is a leaf. Nothing is called while it is held (no callbacks, no
arena operations, no logging of anything but constants), so callers may hold their own locks when
they call into the registry, and callbacks may call back into it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dualbladed.errors import InvalidArgument, Unauthenticated
from dualbladed.sessions.admission import Admission, AdmissionLimits, Ledger
from dualbladed.sessions.arena import Arena
from dualbladed.store import tenant_name

__all__ = ["TOKEN_BYTES", "EndCallback", "Session", "SessionRegistry"]

logger = logging.getLogger(__name__)

#: 128 bits of randomness per token (rendered as 32 hex characters).
TOKEN_BYTES = 16

EndCallback = Callable[["Session"], None]

_UNAUTHENTICATED = "unknown or expired session token"


@dataclass(frozen=True)
class Session:
    """One client connection's identity and resources. Immutable; the registry tracks liveness."""

    id: str
    #: The bearer secret. Never log it; ``repr`` hides it.
    token: str = field(repr=False)
    pid: int
    uid: int
    gid: int
    tenant_label: str
    arena: Arena
    #: ``time.time()`` at registration.
    created: float
    #: The peer's pidfd, owned and closed by the handshake server (None where none could be had).
    pidfd: int | None = None
    #: The admission charge the session carries (released when it ends).
    admission: Admission | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def tenant(self) -> str:
        """``"<uid>/<label>"``: the uid is the kernel's word, the label the client's.

        Cached (both parts are immutable): every lease frame and every op asks for it."""
        return tenant_name(self.uid, self.tenant_label)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class SessionRegistry:
    """All live sessions, keyed by id and by token digest. Thread-safe."""

    def __init__(self, max_sessions: int, admission: AdmissionLimits | None = None) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise InvalidArgument(f"max_sessions must be a positive integer, got {max_sessions!r}")
        if admission is not None and admission.max_sessions != max_sessions:
            raise InvalidArgument("admission.max_sessions must equal the registry's max_sessions")
        self._max_sessions = max_sessions
        self._ledger = Ledger(admission or AdmissionLimits.unlimited(max_sessions))
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}
        self._by_digest: dict[bytes, Session] = {}
        self._on_end: list[EndCallback] = []

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    def on_end(self, callback: EndCallback) -> None:
        """Call ``callback(session)`` once for every session that ends from now on."""
        with self._lock:
            self._on_end.append(callback)

    def remove_on_end(self, callback: EndCallback) -> None:
        with self._lock:
            self._on_end = [cb for cb in self._on_end if cb != callback]

    @property
    def limits(self) -> AdmissionLimits:
        return self._ledger.limits

    def admit(self, uid: int, arena_bytes: int, *, privileged: bool = False) -> Admission:
        """Claim a session slot and ``arena_bytes`` for ``uid`` before allocating anything.

        ResourceExhausted names the limit that refused it (see dualbladed.sessions.admission).
        """
        with self._lock:
            return self._ledger.admit(uid, arena_bytes, privileged)

    def cancel(self, admission: Admission) -> None:
        """Give back a claim that did not become a session. Idempotent."""
        with self._lock:
            self._ledger.release(admission)

    def usage(self, uid: int) -> tuple[int, int]:
        """``(sessions, arena bytes)`` charged to ``uid``, admitted claims included."""
        with self._lock:
            return self._ledger.usage(uid)

    def register(
        self,
        *,
        pid: int,
        uid: int,
        gid: int,
        tenant_label: str,
        arena: Arena,
        pidfd: int | None = None,
        admission: Admission | None = None,
    ) -> Session:
        """Create a session with a fresh id and token from an :meth:`admit` claim.

        Without ``admission`` the session is admitted here, as an unprivileged one of
        ``arena.size`` bytes (ResourceExhausted when that is refused). The caller keeps ownership
        of ``arena`` and of ``admission`` if this raises; afterwards the registry closes the arena
        and releases the claim when the session ends.
        """
        token = secrets.token_hex(TOKEN_BYTES)
        with self._lock:
            if admission is None:
                admission = self._ledger.admit(uid, arena.size, privileged=False)
            elif admission.uid != uid or admission.settled:
                raise InvalidArgument("the admission belongs to another uid or was given back")
            session_id = secrets.token_hex(8)
            while session_id in self._by_id:  # pragma: no cover - 64-bit collision
                session_id = secrets.token_hex(8)
            session = Session(
                id=session_id,
                token=token,
                pid=pid,
                uid=uid,
                gid=gid,
                tenant_label=tenant_label,
                arena=arena,
                created=time.time(),
                pidfd=pidfd,
                admission=admission,
            )
            self._by_id[session_id] = session
            self._by_digest[_digest(token)] = session
        return session

    def authenticate(self, token: str | None) -> Session:
        """The live session holding ``token``; Unauthenticated for missing/unknown/ended tokens."""
        if not token or not isinstance(token, str):
            raise Unauthenticated(_UNAUTHENTICATED)
        digest = _digest(token)
        with self._lock:
            session = self._by_digest.get(digest)
        if session is None:
            raise Unauthenticated(_UNAUTHENTICATED)
        return session

    def check_live(self, session: Session) -> Session:
        """``session`` itself if it has not ended; Unauthenticated otherwise.

        The lease data plane already knows its session (no token to hash and look up); it only
        needs to know that the session did not end while the frame was in flight.
        """
        with self._lock:
            live = self._by_id.get(session.id) is session
        if not live:
            raise Unauthenticated(_UNAUTHENTICATED)
        return session

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            return self._by_id.get(session_id)

    def end(self, session_id: str) -> bool:
        """End a session: token invalid at once, then callbacks, then the arena is closed.

        Returns False (and does nothing) if the session is unknown or already ended, so racing
        enders (lease loss vs. admin vs. shutdown) produce exactly one set of callbacks.
        """
        with self._lock:
            session = self._by_id.pop(session_id, None)
            if session is None:
                return False
            del self._by_digest[_digest(session.token)]
            if session.admission is not None:
                self._ledger.release(session.admission)
            callbacks = list(self._on_end)
        for callback in callbacks:
            try:
                callback(session)
            except Exception:
                logger.exception(
                    "on_end callback %r failed for session %s (tenant %s)",
                    callback,
                    session.id,
                    session.tenant,
                )
        session.arena.close()
        return True

    def end_all(self) -> int:
        """End every session (daemon shutdown). Returns how many were ended."""
        with self._lock:
            ids = list(self._by_id)
        return sum(self.end(session_id) for session_id in ids)

    def sessions(self) -> list[Session]:
        """A snapshot of the live sessions, oldest first (for admin listings)."""
        with self._lock:
            snapshot = list(self._by_id.values())
        return sorted(snapshot, key=lambda s: s.created)

    def count_by_tenant(self) -> dict[str, int]:
        """Live sessions per tenant (``"<uid>/<label>"``)."""
        with self._lock:
            return dict(Counter(s.tenant for s in self._by_id.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)
