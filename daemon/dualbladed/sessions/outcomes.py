"""Building a batch's results: store results and domain errors into outcomes and metric records.

Split out of :mod:`dualbladed.sessions.batch`, which runs the ops (the store calls, quota
reservations, pools and group commit) and hands what came back to the functions here. They make
no store call, take no lock and hold nothing: each turns results the caller already has into
:class:`~dualbladed.sessions.requests.OpOutcome` values, calling the ``record`` callback
(:data:`~dualbladed.sessions.requests.RecordFn`) once per op as the batch module's docstring
says (a stat or touch miss is a successful op on path ``none``; a packed put records one
``put`` per object, each charged an equal share of the time). Every error that becomes an
outcome passes through :func:`without_frames`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dualbladed.errors import DualbladeError, NotFound
from dualbladed.sessions.requests import OpOutcome, RecordFn, RecordManyFn
from dualbladed.store.index import ObjectInfo
from dualbladed.store.packed import PackedDone

__all__ = [
    "LayerDone",
    "found",
    "lookup_outcomes",
    "packed_outcome",
    "without_frames",
]


@dataclass(frozen=True)
class LayerDone:
    """A layer op's result as ``BatchExecutor._run_one`` reads it (``size``: see the OpResult
    docs)."""

    size: int
    generation: int
    path: str
    moved: int  # bytes moved, for the metrics (OpResult.size is not that for reserve/append)


def without_frames(err: DualbladeError) -> DualbladeError:
    """``err`` with the tracebacks of it and its chained causes dropped.

    An outcome outlives the call that failed. A traceback would keep that call's frames alive,
    the arena views in them included, and this frame too (its ``outcome`` refers back to
    ``err``): a reference cycle that only the cyclic GC would break, holding the session's
    mappings meanwhile. The type and the message are all an outcome needs.
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return err


def found(info: ObjectInfo, *, pinned: bool = False) -> OpOutcome:
    """A stat's or a touch's hit (``pinned``: the stat asked for a pin, which the store took)."""
    return OpOutcome(
        None,
        info.size,
        info.generation,
        info.path,
        persistent=info.persistent,
        pinned=pinned,
    )


def lookup_outcomes(
    tenant: str,
    op: str,
    results: Sequence[ObjectInfo | DualbladeError],
    share: float,
    record: RecordFn,
    pins: Sequence[bool] | None = None,
) -> list[OpOutcome]:
    """A stat or touch batch's outcomes from ``ObjectStore.stat_many``'s or ``touch_many``'s
    results, one ``op`` record each, charged ``share`` seconds (a miss is no error);
    ``pins[i]``: op i asked for a pin."""
    outcomes = []
    for i, r in enumerate(results):
        if isinstance(r, DualbladeError):
            outcomes.append(OpOutcome(without_frames(r)))
            record(tenant, "none", op, 0, share, isinstance(r, NotFound))
        else:
            outcomes.append(found(r, pinned=pins is not None and pins[i]))
            record(tenant, r.path, op, 0, share, True)
    return outcomes


def packed_outcome(
    tenant: str,
    done: PackedDone,
    lengths: Sequence[int],
    share: float,
    record: RecordFn,
    record_many: RecordManyFn | None,
) -> OpOutcome:
    """A committed packed put's outcome; one ``put`` per object in the metrics, charged
    ``share`` seconds each (with ``record_many``, one call per path)."""
    n = len(lengths)
    if record_many is not None:
        for name in set(done.paths):
            mine = [n_ for p, n_ in zip(done.paths, lengths) if p == name]
            record_many(tenant, name, "put", sum(mine), share, len(mine))
    else:
        for name, length in zip(done.paths, lengths):
            record(tenant, name, "put", length, share, True)
    first = done.first_generation
    return OpOutcome(
        None,
        sum(lengths),
        first,
        done.paths[0],
        generations=tuple(range(first, first + n)),
        paths=done.paths,
    )
