"""How the residency arbiter's migrations run: pacing, worker threads, bounce buffers, one move.

Split out of :mod:`dualbladed.arbiter.arbiter`, which decides *what* moves (the policy's plan,
demotions before promotions) and books what moved (history, totals, usage estimate,
``last_moved``). This module only runs the moves of one group and keeps no state between
calls: the arbiter hands it the store, its page-cache path, its token bucket and its stop
event at each call, and books every :class:`~dualbladed.arbiter.snapshot.MigrationRecord` that
:func:`move_one` returns. It imports nothing of the arbiter's, so there is no cycle.

- **Bandwidth**. Migrations pass through a token bucket (:mod:`dualbladed.ratelimit`) of
  ``migration_bytes_per_s`` with a burst of one tick's worth: before each relocation the thread
  sleeps until the bucket holds the object's bytes (an object larger than the burst waits for
  a full bucket and drives it negative, so the long-run rate still holds). The sleep is on the
  stop event, so shutdown is prompt, and no lock of the store or of the arbiter is held while
  sleeping. Up to ``migration_workers`` relocations of a group run at once (the arbiter runs
  all demotions before any promotion starts): one relocation is a read, a write, an fdatasync
  and a durable commit in a row, and serially a 16 MiB layer object took ~230 ms on the loaded
  2-vCPU bench VM, i.e. ~70 MB/s, far below the rate cap. Promoting 1 GiB after a prefill then
  took ~15 s, longer than the decode it was for. The rate cap still bounds the bytes, in
  submission order.

- **Safety of a migration** is :meth:`ObjectStore.relocate`'s contract: copy, verify, flush,
  commit durably, then free the old extent; readers see the old copy until the commit, and a
  failure at any step leaves exactly one valid copy. A failed or raced migration (the key was
  overwritten or deleted meanwhile) is logged and returned as a record with ``ok=False``, and
  the loop goes on. After a demotion the old extent's pages are dropped with
  :meth:`PageCachePath.drop_cache` (``release`` already did DONTNEED, but DONTNEED skips dirty
  pages; drop_cache writes the slab back first). If the extent was reused by a new put in the
  meantime, that put's pages are evicted too: a cost in speed, never in correctness.

Ownership and locking. Each worker thread owns one :class:`~dualbladed.store.relocate.Bounce`
for the whole group (not thread-safe, so never shared), unmapped when the group is done. No
lock is taken here: the ``move`` callback of :func:`run_group` (the arbiter's ``_execute``)
takes ``ResidencyArbiter._lock`` only to book a record, after :func:`move_one`'s store calls
returned, so the order stays the arbiter's lock released before any store lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from dualbladed.arbiter.policy import Migration
from dualbladed.arbiter.signals import ReadMeter
from dualbladed.arbiter.snapshot import MigrationRecord
from dualbladed.errors import DualbladeError, FailedPrecondition, NotFound
from dualbladed.paths.abstract import PAGECACHE
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.ratelimit import TokenBucket
from dualbladed.store import Bounce, ObjectStore

__all__ = ["MoveFn", "move_one", "run_group"]

log = logging.getLogger("dualbladed.arbiter.arbiter")  # the messages are the arbiter's own

#: one migration through a bounce buffer, booked by the caller: its record, or None when there
#: was nothing to do (the arbiter's ``_execute``)
MoveFn = Callable[[Migration, Bounce], MigrationRecord | None]


def run_group(
    group: list[Migration],
    move: MoveFn,
    *,
    bucket: TokenBucket,
    stop: threading.Event,
    workers: int,
) -> list[MigrationRecord]:
    """Run ``group`` through ``bucket``, up to ``workers`` at once; the records of the moves made.

    Each thread copies through one bounce buffer for the whole group, unmapped when the
    group is done (:class:`~dualbladed.store.relocate.Bounce`: with a fresh buffer per
    move, faulting its pages in took half to three quarters of a promotion's CPU)."""
    if workers == 1 or len(group) == 1:
        out = []
        bounce = Bounce()
        try:
            for m in group:
                if stop.is_set() or not bucket.wait(m.size, stop):
                    break
                rec = move(m, bounce)
                if rec is not None:
                    out.append(rec)
        finally:
            bounce.close()
        return out
    futures: list[Future[MigrationRecord | None]] = []
    workers = min(workers, len(group))
    local = threading.local()
    bounces: list[Bounce] = []  # one per worker thread of this group

    def run(m: Migration) -> MigrationRecord | None:
        if stop.is_set():
            return None
        bounce = getattr(local, "bounce", None)
        if bounce is None:
            bounce = local.bounce = Bounce()
            bounces.append(bounce)
        return move(m, bounce)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="residency-move") as pool:
            for m in group:
                if stop.is_set() or not bucket.wait(m.size, stop):
                    break
                # move_one logs its failures. The bucket admits a burst of small moves at
                # once, so many can be queued: each checks for a stop first, or a SIGTERM
                # would wait for the whole queue (seen: 18 s to stop behind a 2048-move plan).
                futures.append(pool.submit(run, m))
        return [rec for f in futures if (rec := f.result()) is not None]
    finally:
        for bounce in bounces:  # the pool's threads are done with them
            bounce.close()


def move_one(
    store: ObjectStore,
    pagecache: PageCachePath,
    m: Migration,
    *,
    bounce: Bounce | None,
    fits: Callable[[int], bool],
    meter: ReadMeter | None,
) -> MigrationRecord | None:
    """Relocate ``m`` and say how it went; None when there was nothing to do (the object moved
    or was replaced since the plan, or a promotion found no room: ``fits``, the arbiter's
    page-cache room check). Failures are logged here and come back as ``ok=False`` records;
    the caller books the record."""
    t0 = time.perf_counter()
    error: str | None = None
    try:
        before = store.stat(m.tenant, m.key)
        if before.path != m.src:
            return None  # moved or replaced since the plan: nothing to do
        if m.dst == PAGECACHE and not fits(m.size):
            return None  # no room or at the disk floor: the object stays on direct
        with meter.moving() if meter is not None else contextlib.nullcontext():
            store.relocate(m.tenant, m.key, m.dst, bounce=bounce)
    except (NotFound, FailedPrecondition) as e:  # deleted or overwritten meanwhile
        error = str(e)
        log.info("migration of tenant %s key %r skipped: %s", m.tenant, m.key, e)
    except DualbladeError as e:  # relocate left exactly one valid copy
        error = f"{type(e).__name__}: {e}"
        log.warning("migration of tenant %s key %r failed: %s", m.tenant, m.key, e)
    except Exception as e:  # not a typed error: a bug below us; keep the loop alive
        error = f"{type(e).__name__}: {e}"
        log.exception("migration of tenant %s key %r failed unexpectedly", m.tenant, m.key)
    if error is None and m.src == PAGECACHE:
        try:
            pagecache.drop_cache(before.extent)
        except DualbladeError as e:
            log.warning("dropping the cached pages of demoted key %r failed: %s", m.key, e)
    ms = (time.perf_counter() - t0) * 1000.0
    return MigrationRecord(
        time.time(), m.tenant, m.key, m.src, m.dst, m.size, ms, error is None, m.reason, error
    )
