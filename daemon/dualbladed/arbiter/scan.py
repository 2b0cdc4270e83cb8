"""Which objects of a decode step's scan move first: keep each path's share spread along it.

Pure functions of the policy's candidates (no I/O, no clock: ``now`` comes in).

Why. A decode step reads every layer object of a sequence, in layer order, once per step. They
are all equally hot, so their recency order is only the step's order, rotated to wherever the
tick fell. Taking the coldest (or the hottest) first then moves a contiguous run of layers. At
ratio 1 of the residency bench, the 9% of the KV left direct were L3-L5 and L22-L24: each run's
disk reads (~50 ms for three layers) outlasted the compute of the layers the pipeline had read
ahead (~25 ms), and the step waited on the disk twice. Spread out, each direct layer's read
hides behind the compute of the cached layers around it; and where the disk is the bottleneck
(ratio 4, a few cached layers among many direct ones), it never idles through a run of cached
layers at a step's end.

The scan. A tenant's layer objects read within ``window_s`` of its newest read (one decode step
fits well inside it). In last-access order they form a cycle: the step's order, rotated. Each path's
objects form runs along the cycle.

The order. Objects leave a path from the middle of its longest run first (equal runs in the
bit-reversed order of where they start, so the last single objects are spread too). Splitting
the longest run first is bisection, so whatever the split, each path's objects end up evenly
spread, and the other path's as well. The runs depend only on
the cycle and the placement, not on where the cycle starts, so two ticks that saw the step at
different points choose alike (only the first split of a cycle held wholly by one path depends
on the rotation). Objects outside every scan (read longer ago) keep recency order: the coldest
are demoted before any scan object, and promoted after every one.

Cost: O(n log n) for the policy's bounded candidates (the arbiter reads at most a few hundred
per direction), by a heap of runs.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar


class Scanned(Protocol):
    """What ordering needs of a candidate (``policy.ObjectHeat`` has it)."""

    @property
    def tenant(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def last_access(self) -> float: ...

    @property
    def layer(self) -> bool: ...


T = TypeVar("T")
S = TypeVar("S", bound=Scanned)

#: a decode step longer than this is not one scan (the bench's slowest daemon step is ~2.3 s
#: while promotions run; 2 s keeps its steady steps, 0.3-1.4 s, whole)
SCAN_WINDOW_S = 2.0


class Scans(NamedTuple, Generic[S]):
    """The candidates split once per plan, for both orders."""

    inside: dict[str, list[S]]  # tenant -> its scan, in last-access order
    outside: list[S]  # everything else, coldest first


def scans(objects: Iterable[S], window_s: float = SCAN_WINDOW_S) -> Scans[S]:
    """Split the candidates into tenants' scans and the rest; only layer objects are scanned
    (blocks are put and got one by one: recency is their heat)."""
    by_tenant: dict[str, list[S]] = {}
    outside: list[S] = []
    for o in objects:
        if o.layer:
            by_tenant.setdefault(o.tenant, []).append(o)
        else:
            outside.append(o)
    inside: dict[str, list[S]] = {}
    for tenant, objs in by_tenant.items():
        newest = max(o.last_access for o in objs)
        objs.sort(key=lambda o: o.last_access)
        cut = next(i for i, o in enumerate(objs) if o.last_access >= newest - window_s)
        outside += objs[:cut]
        inside[tenant] = objs[cut:]
    outside.sort(key=lambda o: o.last_access)
    return Scans(inside, outside)


def leaving_order(cycle: Sequence[S], path: str) -> list[S]:
    """The objects of ``cycle`` on ``path``, middle of the longest run first (module docstring)."""
    n = len(cycle)
    on = [o.path == path for o in cycle]
    if not any(on):
        return []
    bits = max(1, (n - 1).bit_length())

    def run(begin: int, length: int) -> tuple[int, int, int, int]:
        # longest first; equal runs in bit-reversed order of their start, so the last, shortest
        # runs are taken spread along the cycle rather than left to right
        return (-length, int(f"{begin:0{bits}b}"[::-1], 2), begin, length)

    out: list[S] = []
    if all(on):  # one cycle, no ends: take any object, and the rest is one run after it
        out.append(cycle[0])
        runs = [run(1, n - 1)] if n > 1 else []
    else:
        start = on.index(False)  # walk the cycle from an object off the path
        runs = []
        first: int | None = None
        for step in range(1, n + 1):
            i = (start + step) % n
            if on[i] and first is None:
                first = i
            elif not on[i] and first is not None:
                runs.append(run(first, (i - first) % n))
                first = None
    heapq.heapify(runs)
    while runs:
        _, _, begin, length = heapq.heappop(runs)
        half = length // 2
        out.append(cycle[(begin + half) % n])
        for b, m in ((begin, half), ((begin + half + 1) % n, length - half - 1)):
            if m:
                heapq.heappush(runs, run(b, m))
    return out


def interleave(orders: Iterable[Sequence[T]]) -> list[T]:
    """Round-robin over tenants' orders: one tenant's long run does not starve the next."""
    return [o for group in itertools.zip_longest(*orders) for o in group if o is not None]


def demotion_order(split: Scans[S]) -> list[S]:
    """Page-cache objects to demote, best first: outside the scans coldest first, then each
    scan's page-cache objects from the middle of their longest run."""
    cold = [o for o in split.outside if o.path == "pagecache"]  # coldest first
    return cold + interleave(leaving_order(c, "pagecache") for c in split.inside.values())


def promotion_order(split: Scans[S]) -> list[S]:
    """Direct objects to promote, best first: each scan's direct objects from the middle of
    their longest run, then those outside the scans hottest first."""
    warm = interleave(leaving_order(c, "direct") for c in split.inside.values())
    return warm + [o for o in reversed(split.outside) if o.path == "direct"]
