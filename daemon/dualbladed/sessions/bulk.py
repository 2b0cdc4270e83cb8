"""Bulk writes run behind the tenants' own compute: a second batch pool at a higher nice.

Why. A prefill hands the daemon a layer's KV (tens of MiB) while the model computes the next
layer, and nobody waits for that write until the prefill ends. On a small box the write's CPU
(the copy into the page cache, the checksums) competes with the model's thread for the same
cores: in one sweep of the 2-vCPU residency bench at budget ratio 0.5 the model thread's matmuls
took 1.67-1.89 s with the daemon's writes beside them at nice 0 against 1.29-1.55 s beside the
baseline's in-process writes, and the prefill was 14-19% slower than the baseline's at ratios
0.5-2 (docs/residency.md, "The thirteenth session"). At nice 10 the kernel gives the model thread
~90% of a contended core and the writes take what is left, which on an edge box running one
model is most of a core: the same work, off the critical path. A storage daemon's flusher
running below its applications is the usual order (the kernel's own write-back threads,
ionice's idle class); reads stay at the daemon's priority, because a decode step waits on them.

What counts as bulk: a batch whose every op writes or reserves (put, packed put, append,
reserve) and that carries at least ``io.bulk_write_bytes`` (8 MiB) in all. A decode step's
one-token appends stay on the normal pool: they are small, and a reader of the same layer object
waits for them (the object's append lock), so running them niced could only invert priorities.
Nor do single puts of a few MiB: one waits for its hand-off to the pool and for a niced thread,
and at 1 MiB the threshold cost ``dualblade-bench daemon``'s depth-1 puts ~20% (the config's
comment has the numbers). A prefill's layer batch, a layer's K and V, is 32 MiB in the
residency bench.

Why a pool and not ``setpriority`` around each op: a thread may always raise its own nice, but
lowering it back needs ``CAP_SYS_NICE``, which a daemon run unprivileged (the tests, a user's
own instance) does not have. A pool whose threads lower their priority once, as they start,
needs no privilege and no syscall per op. Its threads never submit to it (the grouped path fans
out *from* the calling thread), so a full pool cannot wait on itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from dualbladed.sessions.requests import (
    AppendRequest,
    Op,
    PutPackedRequest,
    PutRequest,
    ReserveRequest,
)

log = logging.getLogger(__name__)

__all__ = ["BULK_KINDS", "bulk_bytes", "bulk_pool"]

#: the ops a bulk batch may hold: each writes bytes or makes room for them
BULK_KINDS = (PutRequest, PutPackedRequest, AppendRequest, ReserveRequest)


def bulk_bytes(ops: Sequence[Op]) -> int:
    """The bytes ``ops`` write, or 0 when any op is not a write (the batch is not bulk)."""
    total = 0
    for op in ops:
        if not isinstance(op, BULK_KINDS):
            return 0
        if isinstance(op, PutPackedRequest):
            total += sum(op.lengths)
        elif not isinstance(op, ReserveRequest):
            total += op.length
    return total


def bulk_pool(workers: int, nice: int) -> ThreadPoolExecutor | None:
    """A pool of ``workers`` threads each running ``nice`` steps below the daemon (None when
    ``nice`` is 0: bulk writes then share the normal pool)."""
    if nice <= 0:
        return None
    return ThreadPoolExecutor(
        max_workers=max(1, workers),
        thread_name_prefix="batch-bulk",
        initializer=_lower_priority,
        initargs=(nice,),
    )


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice by ``nice`` (Linux: a thread is a PRIO_PROCESS target by its
    tid). Never fails the pool: a refusal (a seccomp filter, an exotic kernel) is logged and the
    thread runs at the daemon's priority."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as err:
        log.warning("bulk-write thread %d keeps the daemon's priority: %s", tid, err)
