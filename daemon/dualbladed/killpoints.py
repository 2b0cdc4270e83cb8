"""White-box kill points: named places on the write path where the daemon may SIGKILL itself.

This is RocksDB's ``kill_random_test`` / ZFS ztest's self-kill, for the crash loop
(``tools/crashloop``). A kill point is a call ``killpoint("put.after_commit")`` between two steps
of a crash-ordering protocol. It does nothing unless the environment armed it when this module
was imported::

    DUALBLADE_KILL_POINT=put.after_commit        # one point, a comma list, or "*" for all
    DUALBLADE_KILL_ODDS=20                       # fire with probability 1/20 per hit (default 1)
    DUALBLADE_KILL_SEED=7                        # seed of that coin (default: from os.urandom)

When it fires the process sends itself SIGKILL: no ``finally`` block, no atexit, no flush, no
SQLite checkpoint -- exactly what a crash, the OOM killer or ``kill -9`` does. What must survive is
whatever the protocol had already handed to the kernel (writes and commits).

Cost when disabled: the environment is read once at import; ``killpoint`` then tests one module
global and returns, so call sites need no guard.

The points (keep :data:`KILL_POINTS` in step with the call sites; the crash loop rotates through
this tuple and a test fails when a name here has no call site, or a call site names no entry):

``put.after_alloc``
    a fresh extent is allocated (in memory only), nothing written yet.
``put.after_data_write``
    the payload is in the fresh extent, not flushed, no row committed.
``put.after_flush``
    durable puts only: the path is flushed (fdatasync), the row is not committed yet.
``put.group_before_commit``
    every put of the commit group (one put, or a Batch's puts committed together) is written,
    and flushed when any is durable; no row of the group is committed.
``put.after_commit``
    the row (for a group: every row of the group) is committed (persistent puts; ephemeral ones skip SQLite), the reply not sent;
    the replaced version's extent is not freed in memory yet.
``delete.before_commit``
    the object was found; its row is still committed.
``delete.after_commit``
    the row is gone; the extent is not freed in memory yet, the reply not sent.
``relocate.after_copy``
    the copy on the destination path is written and flushed; the row still names the source.
``relocate.after_commit``
    the row names the destination (committed durably); the source extent is not freed yet.
``release_session.mid``
    some of an ended session's ephemeral objects are retired, the rest are not.
``append.before_data_write``
    a layer-object append passed its checks (expect_size, capacity); nothing written.
``append.after_data_write``
    the new bytes are past the committed size on disk, not flushed; size and crcs unchanged.
``append.before_commit``
    written (and flushed when durable); the row still has the old size and crcs.
``append.after_commit``
    the row has the new size and crcs (persistent objects), the reply not sent.
"""

from __future__ import annotations

import logging
import os
import random
import signal

logger = logging.getLogger(__name__)

__all__ = ["ENV_ODDS", "ENV_POINT", "ENV_SEED", "KILL_POINTS", "armed", "killpoint"]

ENV_POINT = "DUALBLADE_KILL_POINT"
ENV_ODDS = "DUALBLADE_KILL_ODDS"
ENV_SEED = "DUALBLADE_KILL_SEED"

#: Every kill point, in protocol order. The crash loop covers all of them.
KILL_POINTS: tuple[str, ...] = (
    "put.after_alloc",
    "put.after_data_write",
    "put.after_flush",
    "put.group_before_commit",
    "put.after_commit",
    "delete.before_commit",
    "delete.after_commit",
    "relocate.after_copy",
    "relocate.after_commit",
    "release_session.mid",
    "append.before_data_write",
    "append.after_data_write",
    "append.before_commit",
    "append.after_commit",
)


def _parse(env: dict[str, str] | os._Environ[str]) -> tuple[frozenset[str], int, random.Random]:
    """(armed points, odds, coin) from an environment; no points means disabled."""
    spec = env.get(ENV_POINT, "").strip()
    if not spec:
        return frozenset(), 1, random.Random(0)
    names = {n.strip() for n in spec.split(",") if n.strip()}
    if "*" in names:
        names = set(KILL_POINTS)
    unknown = sorted(names - set(KILL_POINTS))
    if unknown:
        # A typo must not silently disarm a crash test.
        raise ValueError(f"{ENV_POINT}: unknown kill point(s) {', '.join(unknown)}")
    try:
        odds = int(env.get(ENV_ODDS, "1"))
    except ValueError:
        raise ValueError(f"{ENV_ODDS} must be an integer >= 1") from None
    if odds < 1:
        raise ValueError(f"{ENV_ODDS} must be an integer >= 1, got {odds}")
    seed_text = env.get(ENV_SEED)
    seed = int(seed_text) if seed_text else int.from_bytes(os.urandom(8), "little")
    return frozenset(names), odds, random.Random(seed)


_ARMED, _ODDS, _COIN = _parse(os.environ)
if _ARMED:
    logger.warning(
        "kill points armed: %s (odds 1/%d); this process will SIGKILL itself",
        ", ".join(sorted(_ARMED)),
        _ODDS,
    )


def armed() -> frozenset[str]:
    """The kill points this process was started with (empty: disabled)."""
    return _ARMED


def killpoint(name: str) -> None:
    """SIGKILL this process here if ``name`` is armed and the coin says so."""
    if not _ARMED:
        return
    if name not in _ARMED:
        return
    if _ODDS > 1 and _COIN.randrange(_ODDS):
        return
    # stderr, unbuffered and unformatted: the crash loop greps the daemon log for the point that
    # fired. Logging would go through handlers that may buffer; this must reach the file first.
    os.write(2, f"\nKILLPOINT {name} pid {os.getpid()}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
