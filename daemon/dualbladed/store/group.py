"""Group commit: the record of a put that is written but not yet committed.

:meth:`ObjectStore.stage_put <dualbladed.store.objects.ObjectStore.stage_put>` writes a put's
payload into a fresh extent and returns a :class:`StagedPut`; :meth:`ObjectStore.commit_puts`
then commits many of them in one metadata transaction (one ``BEGIN``/``COMMIT``, one fsync when
any is durable) instead of one each. The batch executor stages the puts of one ``Batch`` call in
parallel and commits them together, so a batch of 1000 small puts pays one transaction.

Crash guarantees are the single put's: a staged put owns an extent that no committed row names,
so a crash before the commit leaves it free after restart (free maps are rebuilt from rows), and
nothing is acknowledged before the commit returns. The kill point ``put.group_before_commit``
sits between the last staged write (and flush) and the transaction.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import DualbladeError
from dualbladed.killpoints import killpoint
from dualbladed.paths.abstract import ResidencyPath

__all__ = [
    "FREEZE_EVERY",
    "PutSpec",
    "StagedPut",
    "committed",
    "flush_staged",
    "note_installed",
    "write_all",
    "write_staged",
]


@dataclass(frozen=True, slots=True)
class PutSpec:
    """One put of :meth:`ObjectStore.stage_many` (the arguments of ``put`` but the tenant)."""

    key: bytes
    src: memoryview
    persistent: bool = False
    durable: bool = False
    session: str | None = None
    path: str | None = None


def write_all(
    target: ResidencyPath, items: Sequence[tuple[Extent, memoryview]]
) -> list[DualbladeError | None]:
    """Write each ``(extent, data)``; one error (or None) per item. Uses the path's
    ``write_many`` when it has one (neighbouring extents in one request), else ``write``."""
    many = getattr(target, "write_many", None)
    if many is not None:
        return many(items)
    errors: list[DualbladeError | None] = []
    for extent, data in items:
        try:
            target.write(extent, data)
        except DualbladeError as err:
            errors.append(err)
        else:
            errors.append(None)
    return errors


# The put's kill points, one call site each, on both ways a put goes (stage_many + commit_puts,
# and a packed put's put_packed): the same points in the same order whichever way it went.


def write_staged(write: Callable[[], None]) -> None:
    """``[put.after_alloc]``, then ``write()`` (the payloads into their fresh extents), then
    ``[put.after_data_write]``. The caller frees the extents if this raises."""
    killpoint("put.after_alloc")
    write()
    killpoint("put.after_data_write")


def flush_staged(targets: Iterable[ResidencyPath], *, durable: bool) -> None:
    """Before a group's commit: when it is durable, flush every path it wrote (data before
    the row), ``[put.after_flush]``; then ``[put.group_before_commit]``."""
    if durable:
        for target in targets:
            target.flush()
        killpoint("put.after_flush")
    killpoint("put.group_before_commit")


def committed() -> None:
    """``[put.after_commit]``: the group's rows are committed, nothing is acknowledged yet."""
    killpoint("put.after_commit")


@dataclass(frozen=True, slots=True)
class StagedPut:
    """A put whose bytes are in ``extent`` on ``path``; owned by the caller until committed
    (``commit_puts``) or abandoned (``abandon_puts``), which both consume it."""

    tenant: str
    key: bytes
    size: int
    path: str
    extent: Extent
    checksum: int
    persistent: bool
    durable: bool
    session: str | None


#: Objects installed between two heap freezes (:func:`note_installed`).
FREEZE_EVERY = 100_000

_freeze_lock = threading.Lock()
_installed_since_freeze = 0


def note_installed(n: int) -> bool:
    """Count ``n`` objects newly installed in the index; after :data:`FREEZE_EVERY` of them,
    collect the unfrozen heap once and freeze it (``gc.collect(); gc.freeze()``). True when it
    froze. Call it without the store lock (the collection takes ~0.1 s).

    Why: every put leaves a few long-lived, acyclic objects (entry, info, key, sort keys), and
    CPython's full collection runs each time the long-lived heap grew by a quarter, walking the
    whole heap; measured in-process with 4 KiB packed puts, collections took 5-11 us per put,
    about a fifth of the store's CPU, as 0.3-0.8 s pauses at 5e5-1e6 objects. Frozen objects
    are never walked again, so a collection here walks only what came since the last freeze
    (constant per put at any object count). Start-up freezes after a large load the same way
    (:mod:`dualbladed.store.recovery`).

    The price, bounded: an object alive at a freeze that later becomes part of garbage cycle
    is never collected (reference counting still frees everything acyclic, which index
    entries are). The collection just before the freeze leaves no pending garbage frozen, and
    freezes are at least :data:`FREEZE_EVERY` puts apart. Nothing is done while the collector
    is disabled (start-up pauses it for its own bulk load).
    """
    global _installed_since_freeze
    with _freeze_lock:
        _installed_since_freeze += n
        if _installed_since_freeze < FREEZE_EVERY or not gc.isenabled():
            return False
        _installed_since_freeze = 0
    gc.collect()
    gc.freeze()
    return True
