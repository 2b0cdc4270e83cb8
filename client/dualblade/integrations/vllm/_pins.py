"""Which requests rely on which hit pins, so a pin is dropped only when nobody needs it.

A lookup that answers HIT pins the chunk in the daemon for the tier's session (``stat_many`` with
``pin_ms``), so capacity eviction cannot turn the hit into a failed load. The daemon ends the pin
itself on the session's first successful get of the key (the load), at its deadline, or when the
session ends. This book covers the other ending: a request that finishes (or is aborted) without
loading gives its pins back, unless another request still holds the same chunk -- vLLM answers a
second request's lookup of a key from the first one's verdict, without a new daemon call, so both
rely on one pin.

Threading: ``pinned`` runs on vLLM's lookup thread, the rest on the scheduler thread; one lock
guards both maps and is never held while talking to the daemon.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class PinBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[bytes, set[str]] = {}  # daemon key -> requests relying on its pin
        self._by_request: dict[str, set[bytes]] = {}

    def pinned(self, req_id: str, keys: Iterable[bytes]) -> None:
        """The daemon pinned ``keys`` for a lookup made on behalf of ``req_id``."""
        with self._lock:
            for key in keys:
                self._hold(req_id, key)

    def share(self, req_id: str, key: bytes) -> None:
        """``req_id`` got a HIT for ``key`` from an earlier lookup's verdict: it relies on the same
        pin, if the key is pinned at all."""
        with self._lock:
            if key in self._holders:
                self._hold(req_id, key)

    def loading(self, keys: Iterable[bytes]) -> None:
        """A load of ``keys`` was submitted: its get ends the daemon's pin, nothing to give back."""
        with self._lock:
            for key in keys:
                for req_id in self._holders.pop(key, ()):
                    held = self._by_request.get(req_id)
                    if held is not None:
                        held.discard(key)
                        if not held:
                            del self._by_request[req_id]

    def finish(self, req_id: str) -> list[bytes]:
        """``req_id`` is done: the keys whose pins nobody holds any more (to unpin)."""
        with self._lock:
            free = []
            for key in self._by_request.pop(req_id, ()):
                holders = self._holders.get(key)
                if holders is None:
                    continue
                holders.discard(req_id)
                if not holders:
                    del self._holders[key]
                    free.append(key)
            return free

    def unheld(self, keys: Iterable[bytes]) -> list[bytes]:
        """Those of ``keys`` that no request holds."""
        with self._lock:
            return [k for k in keys if k not in self._holders]

    def __len__(self) -> int:
        with self._lock:
            return len(self._holders)

    def _hold(self, req_id: str, key: bytes) -> None:
        self._holders.setdefault(key, set()).add(req_id)
        self._by_request.setdefault(req_id, set()).add(key)
