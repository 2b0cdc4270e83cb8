"""The crash loop's oracle: what may a key read back as after a SIGKILL?

Kept by the harness (``tools/crashloop``), which is never killed. For each persistent key it
holds the last *acknowledged* state (a digest of the bytes, or absent), whether that put was
acknowledged durable, the bytes a non-durable delete could resurrect, and the states that
unacknowledged (in-flight) operations could have left. :meth:`Oracle.check` judges one observed
state against those rules (spelled out in :mod:`dualblade_tools.crashloop`) and then adopts it,
so the next cycle starts from what actually survived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import xxhash

__all__ = ["Counts", "Digest", "KeyState", "Oracle", "digest"]

Digest = bytes | None  # xxh3-128 of the payload; None: absent


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


@dataclass
class KeyState:
    value: Digest = None  # last acknowledged state
    durable: bool = False  # that put was acknowledged durable
    before_delete: Digest = None  # bytes a non-durable delete may resurrect
    deleted_durably: Digest = None  # bytes a durable delete removed: must never come back
    in_flight: list[tuple[Digest, bool]] = field(default_factory=list)  # unacknowledged ops


@dataclass
class Counts:
    objects_checked: int = 0
    durable_lost: int = 0
    nondurable_missing: int = 0
    resurrected: int = 0
    durable_resurrected: int = 0  # a durable delete undone (must stay 0)
    in_flight_landed: int = 0
    corrupt_reads: int = 0
    checksum_missing: int = 0
    phantoms: int = 0
    ephemeral_survived: int = 0
    overlaps: int = 0
    fsck_problems: int = 0
    unexpected_errors: int = 0


class Oracle:
    """Acknowledged persistent state per key; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.keys: dict[bytes, KeyState] = {}

    def begin(self, key: bytes, value: Digest, durable: bool) -> None:
        self.keys.setdefault(key, KeyState()).in_flight.append((value, durable))

    def ack_put(self, key: bytes, value: bytes, durable: bool) -> None:
        st = self.keys.setdefault(key, KeyState())
        st.value, st.durable, st.before_delete, st.in_flight = value, durable, None, []
        st.deleted_durably = None

    def ack_delete(self, key: bytes, durable: bool = False) -> None:
        """A delete was acknowledged; ``durable``: committed with synchronous=FULL, so the
        deleted bytes may not come back even after a power loss."""
        st = self.keys.setdefault(key, KeyState())
        if st.value is not None:
            if durable:
                st.deleted_durably, st.before_delete = st.value, None
            else:
                st.before_delete = st.value
        st.value, st.durable, st.in_flight = None, False, []

    def check(self, key: bytes, observed: Digest, counts: Counts, failures: list[str]) -> None:
        """Judge one key's state after a restart, then adopt it as acknowledged."""
        st = self.keys[key]
        counts.objects_checked += 1
        landed = {v: d for v, d in st.in_flight}
        durable = st.durable
        if observed == st.value:
            pass
        elif observed in landed:
            counts.in_flight_landed += 1
            durable = landed[observed]
        elif observed is None and st.durable:
            counts.durable_lost += 1
            failures.append(f"durable object {key!r} lost")
        elif observed is None:
            counts.nondurable_missing += 1
        elif st.value is None and observed == st.before_delete:
            counts.resurrected += 1
        elif st.value is None and observed == st.deleted_durably:
            counts.durable_resurrected += 1
            failures.append(f"durably deleted object {key!r} came back")
        else:
            counts.corrupt_reads += 1
            failures.append(f"{key!r} returned bytes that were never acknowledged")
        st.value, st.durable, st.in_flight = observed, durable and observed is not None, []
        st.before_delete = st.deleted_durably = None

    def expected_live(self, key: bytes) -> Digest:
        """What a get must return while nothing crashed (only for keys with nothing in flight)."""
        return self.keys[key].value
