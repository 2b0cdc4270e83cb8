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

from collections.abc import Sequence
from dataclasses import dataclass

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import DualbladeError
from dualbladed.paths.abstract import ResidencyPath

__all__ = ["PutSpec", "StagedPut", "write_all"]


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
