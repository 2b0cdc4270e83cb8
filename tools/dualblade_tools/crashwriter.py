"""The op mix of a crash cycle: the seeded client :class:`Writer` the harness runs against the
daemon until it is killed, and the :func:`payload` bytes it (and the relocation worker) writes.

Why a module of its own: :mod:`dualblade_tools.crashloop` is the harness (start, verify, kill,
fsck, report) and :mod:`dualblade_tools.crashoracle` the judge (what may survive a kill); the
writer is the third part, the workload, and the one most often extended (new ops such as layer
objects, issue 12). Every operation it makes goes through the oracle in the same order --
``begin`` before the call, ``ack_put``/``ack_delete`` after the daemon acknowledged it -- which
is what lets the oracle tell an in-flight op from a lost one; keeping the ops together makes
that pairing easy to review. Live reads are checked on the spot (``corrupt_reads``); keys with
an op in flight are not read, since either state would be right.

Keys: ``p/<n>`` persistent (``KEYS`` of them), ``p/l<n>`` persistent layer objects, ``e/<n>``
ephemeral, ``c/<n>`` ephemeral in a short extra session. The harness relies on these prefixes
when it verifies after a restart.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time

from dualblade_tools.crashoracle import Counts, Digest, Oracle, digest
from dualblade_tools.daemonproc import DaemonProcess

__all__ = [
    "KEYS",
    "LAYER_CAPACITY",
    "LAYER_KEYS",
    "LAYER_ODDS",
    "MAX_SIZE",
    "TENANT",
    "Writer",
    "payload",
]

TENANT = "crash"
KEYS = 48
MAX_SIZE = 160 * 1024
#: Layer objects (issue 12): share of ops, keys ``p/l<n>``, and their reserved capacity.
LAYER_ODDS = 0.2
LAYER_KEYS = 6
LAYER_CAPACITY = 256 << 10


def payload(rng: random.Random) -> bytes:
    """Seeded bytes of a random size (unaligned sizes included)."""
    size = rng.choice((rng.randint(1, 4096), rng.randint(4097, MAX_SIZE), 4096 * rng.randint(1, 8)))
    return rng.randbytes(size)


class Writer:
    """One client doing the seeded mix; every unexpected outcome is a failure."""

    def __init__(self, rng: random.Random, oracle: Oracle, counts: Counts) -> None:
        self.rng = rng
        self.oracle = oracle
        self.counts = counts
        self.failures: list[str] = []
        self.ephemeral: dict[bytes, bytes] = {}
        self.layers: dict[bytes, bytes | None] = {}  # layer key -> its bytes (this cycle)

    def run(self, client: object, daemon: DaemonProcess, deadline: float) -> int:
        from dualblade import errors

        ops = 0
        self.ephemeral = {}
        while time.monotonic() < deadline and daemon.proc is not None:
            try:
                self._one(client, daemon)
                ops += 1
            except (errors.DualbladeError, OSError) as err:
                try:  # the socket closes a moment before the killed process can be reaped
                    daemon.proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    self.counts.unexpected_errors += 1
                    self.failures.append(f"unexpected error from a live daemon: {err!r}")
                return ops
        return ops

    def _one(self, c: object, daemon: DaemonProcess) -> None:  # noqa: C901 (one op mix)
        from dualblade import Client, errors

        rng = self.rng
        if rng.random() < LAYER_ODDS:
            self._layer(c)
            return
        key = f"p/{rng.randrange(KEYS)}".encode()
        roll = rng.random()
        if roll < 0.10:  # a group of puts in one packed op (one allocation, one commit)
            keys = sorted({key, *(f"p/{rng.randrange(KEYS)}".encode() for _ in range(3))})
            items = [(k, payload(rng)) for k in keys]
            durable = rng.random() < 0.5
            for k, data in items:
                self.oracle.begin(k, digest(data), durable)
            c.put_many(items, persistent=True, durable=durable)
            for k, data in items:
                self.oracle.ack_put(k, digest(data), durable)
        elif roll < 0.40:
            data = payload(rng)
            durable = rng.random() < 0.5
            self.oracle.begin(key, digest(data), durable)
            c.put(key, data, persistent=True, durable=durable)
            self.oracle.ack_put(key, digest(data), durable)
        elif roll < 0.55:
            ekey = f"e/{rng.randrange(16)}".encode()
            data = payload(rng)
            c.put(ekey, data)
            self.ephemeral[ekey] = digest(data)
        elif roll < 0.80:
            if self.ephemeral and rng.random() < 0.3:
                ekey = rng.choice(sorted(self.ephemeral))
                got = digest(c.get(ekey))
                if got != self.ephemeral[ekey]:
                    self.counts.corrupt_reads += 1
                    self.failures.append(f"live read of ephemeral {ekey!r} returned wrong bytes")
                return
            want = self.oracle.keys.get(key)
            if want is None or want.in_flight:
                return
            try:
                got: Digest = digest(c.get(key))
            except errors.NotFound:
                got = None
            if got != want.value:
                self.counts.corrupt_reads += 1
                self.failures.append(f"live read of {key!r} disagrees with the acknowledged state")
        elif roll < 0.95:
            self.oracle.begin(key, None, False)
            durable = rng.random() < 0.5
            with contextlib.suppress(errors.NotFound):
                c.delete(key, durable=durable)
            self.oracle.ack_delete(key, durable)
        else:  # a short session: its end frees its ephemeral objects (release_session)
            with Client.connect(daemon.socket, tenant=TENANT, arena_bytes=1 << 20) as extra:
                extra.put_many([(f"c/{i}".encode(), payload(rng)[:8192]) for i in range(6)])

    def _layer(self, c: object) -> None:
        """A layer-object op on a persistent ``p/l<n>`` key: reserve (re-reserve when full or
        now and then) or a durable-or-not append guarded by expect_size. The oracle holds the
        digest of the object's whole bytes, so a crash may expose the acknowledged bytes or
        those of the in-flight op, never a range that was not acknowledged."""
        from dualblade import errors

        rng = self.rng
        key = f"p/l{rng.randrange(LAYER_KEYS)}".encode()
        state = self.oracle.keys.get(key)
        if key not in self.layers:  # first touch this cycle: learn the surviving bytes
            if state is None or state.value is None:
                self.layers[key] = None
            else:
                try:
                    self.layers[key] = c.read_range(key)
                except errors.NotFound:
                    self.layers[key] = None
        current = self.layers[key]
        data = rng.randbytes(rng.choice((rng.randint(1, 4096), 4096 * rng.randint(1, 4))))
        if current is None or len(current) + len(data) > LAYER_CAPACITY or rng.random() < 0.05:
            self.oracle.begin(key, digest(b""), False)
            c.reserve(key, LAYER_CAPACITY, persistent=True)
            self.oracle.ack_put(key, digest(b""), False)
            self.layers[key] = b""
            return
        durable = rng.random() < 0.5
        new = current + data
        self.oracle.begin(key, digest(new), durable)
        size = c.append(key, data, durable=durable, expect_size=len(current))
        self.oracle.ack_put(key, digest(new), durable)
        self.layers[key] = new
        if size != len(new):
            self.counts.corrupt_reads += 1
            self.failures.append(f"append to {key!r} reported size {size}, expected {len(new)}")
        if rng.random() < 0.3:  # a live ranged read of the tail
            start = rng.randrange(len(new))
            if c.read_range(key, start, len(new) - start) != new[start:]:
                self.counts.corrupt_reads += 1
                self.failures.append(f"live ranged read of {key!r} returned wrong bytes")
