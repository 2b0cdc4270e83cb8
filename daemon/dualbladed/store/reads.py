"""The store's read side: get into the caller's buffer, stat, listings and usage totals.

A mixin of :class:`~dualbladed.store.objects.ObjectStore`: it runs on the store's lock and
index, and verifies through the store's ``_read_verified``, under the rules stated there.

Get reads straight into the caller's buffer and verifies the checksum there. On a mismatch
``dst[:size]`` is zeroed before :class:`~dualbladed.errors.ChecksumMismatch` is raised and the
object is dropped (row deleted, extent freed), so torn or stale bytes are reported, never
returned. Reading into ``dst`` avoids a bounce copy on the hot path; the zeroing is the price of
a rare failure.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from dualbladed.errors import ChecksumMismatch, InvalidArgument
from dualbladed.store.index import IndexEntry, ObjectInfo, Usage
from dualbladed.store.input import as_bytes_view, check_key

if TYPE_CHECKING:
    from dualbladed.store.index import ObjectIndex
    from dualbladed.store.pins import HitPins


class StoreReads:
    """The read half of ``ObjectStore`` (a mixin; see the module docstring)."""

    _index: ObjectIndex
    _lock: threading.Lock
    _pins: HitPins

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def _check_pin(self, session: str | None, pin_ms: int) -> None: ...
        def _drop_corrupt(self, entry: IndexEntry, actual: int) -> None: ...
        def _read_verified(self, entry: IndexEntry, view: memoryview) -> int | None: ...
        def _require(self, tenant: str, key: bytes) -> IndexEntry: ...
        def _stat_locked(
            self, tenant: str, key: bytes, session: str | None, pin_ms: int
        ) -> ObjectInfo: ...
        def _unpin(self, entry: IndexEntry) -> None: ...

    def get_into(
        self, tenant: str, key: bytes, dst: memoryview, *, session: str | None = None
    ) -> ObjectInfo:
        """Read the object into ``dst[:size]`` and verify it.

        A successful read by ``session`` ends that session's hit pin on the key, if any.

        Raises:
            NotFound: no such key for this tenant.
            InvalidArgument: ``dst`` is smaller than the object or not writable.
            ChecksumMismatch: the stored bytes are torn or stale; ``dst[:size]`` was zeroed and
                the object dropped.
            DeviceIOError: the read failed (the object is kept).
        """
        key = check_key(tenant, key)
        out = as_bytes_view(dst, writable=True, what="destination")
        with self._lock:
            self._check_open()
            entry = self._require(tenant, key)
            size = entry.size
            if out.nbytes < size:
                raise InvalidArgument(
                    f"destination buffer holds {out.nbytes} bytes, key {key!r} needs {size}"
                )
            self._index.pin(entry)
            self._index.note_access(entry)
        try:
            actual = self._read_verified(entry, out[:size])
        except BaseException:
            with self._lock:
                self._unpin(entry)
            raise
        with self._lock:
            self._unpin(entry)
            if actual is not None:
                self._drop_corrupt(entry, actual)
            elif session is not None:
                self._pins.unpin(session, tenant, key)
        if actual is not None:
            raise ChecksumMismatch(key, entry.checksum, actual)
        return entry.snapshot()

    def stat(
        self, tenant: str, key: bytes, *, session: str | None = None, pin_ms: int = 0
    ) -> ObjectInfo:
        """The object's metadata. ``pin_ms > 0`` with a ``session`` also pins a hit for that
        session (see :mod:`dualbladed.store.pins`); a miss raises NotFound and pins nothing.

        Raises:
            InvalidArgument: ``pin_ms`` above ``capacity.max_pin_ms``, or without a session.
            PinLimitExceeded: the session already holds ``capacity.max_pins_per_session`` pins.
        """
        key = check_key(tenant, key)
        self._check_pin(session, pin_ms)
        with self._lock:
            self._check_open()
            return self._stat_locked(tenant, key, session, pin_ms).snapshot()

    def list(self, tenant: str | None, prefix: bytes = b"", limit: int = 0) -> list[ObjectInfo]:
        """Objects in (tenant, key) order whose key starts with ``prefix``; ``limit`` 0: all.

        ``tenant=None`` lists every tenant (admin tools only).
        """
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0, got {limit}")
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.scan(tenant, bytes(prefix), limit)]

    def list_page(
        self, tenant: str | None, after: tuple[str, bytes] | None, limit: int
    ) -> list[ObjectInfo]:
        """Up to ``limit`` (> 0) objects in (tenant, key) order after the cursor ``after``
        (None: from the start); a page costs O(log N + limit) (admin listings, ``dbctl``)."""
        if limit <= 0:
            raise InvalidArgument(f"page limit must be > 0, got {limit}")
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.page(tenant, after, limit)]

    def coldest(self, path: str, n: int) -> list[ObjectInfo]:
        """Up to ``n`` objects on ``path``, least recently accessed first (O(log N + n): the
        arbiter's demotion candidates, an evictor's victims)."""
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.coldest(path, n)]

    def hottest(self, path: str, n: int) -> list[ObjectInfo]:
        """Up to ``n`` objects on ``path``, most recently accessed first (O(log N + n))."""
        with self._lock:
            self._check_open()
            return [e.snapshot() for e in self._index.hottest(path, n)]

    def totals(self) -> dict[str, dict[str, Usage]]:
        """``tenant -> path -> Usage(objects, payload bytes)``: running totals, never a scan."""
        with self._lock:
            self._check_open()
            return self._index.totals()

    def usage(self, tenant: str) -> int:
        """Bytes of space allocated to ``tenant`` (extent lengths, ephemeral included)."""
        with self._lock:
            return self._index.usage(tenant)

    def uid_usage(self, uid: int) -> int:
        """Bytes allocated to all of ``uid``'s tenants together (per-uid quotas)."""
        with self._lock:
            return self._index.uid_usage(uid)
