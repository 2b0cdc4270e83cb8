"""The tier's I/O side, free of vLLM: worker threads that move chunks between vLLM's CPU pool and
``dualbladed`` through one SDK :class:`~dualblade.Client`.

Why threads and a queue: every :class:`DualBladeTier` method runs on vLLM's scheduler thread and
must not block, so submitting a job only appends it to a queue; ``threads`` workers take jobs off
it and report :class:`Outcome` s on ``results``, which the scheduler drains without waiting.

Arena budget: each worker copies at most ``piece_chunks`` chunks through the client's arena at a
time, and ``threads * piece_chunks`` chunk slots fit in the arena, so concurrent jobs never run the
arena out (all slots have one size, so the free space cannot fragment below one slot).

The load path: a worker reads a piece of a job (``piece_chunks`` chunks, one Batch) with
``Client.try_get_many_into`` straight into the pool's slices (the SDK stages each chunk in an
arena slot and copies it on with torch, which releases the GIL). The Batch's per-op outcomes make
a partial load one round trip: a missing chunk, or an object of another size (not a chunk of this
geometry), fails alone and the rest load. A smaller object's bytes do land in its chunk's pool
slot; that key is reported failed, so vLLM never treats the slot as loaded. Measured on the
shared 2-vCPU VM (same-run A/Bs, issue 13) against this path: pipelining the copy of piece i
with the read of piece i+1 (double-buffered pieces of 8, a copy thread per worker), one Batch per
chunk on 16 chunk threads, and reading into arena tensors held for the whole job with the copy
done here were no faster and mostly slower, and one Batch per chunk cost ~25 % more CPU per GB
(client and daemon together); that box is CPU-bound, so CPU per byte is what counts.

A lost daemon: :class:`Connection` drops the client on a connection-type error and makes a new one
on the next use (no more often than every ``retry_interval`` seconds), so jobs fail fast while the
daemon is away and work again once it is back. Lock order: ``Connection._lock`` is never held while
``IoPool._cond`` is taken, and neither while waiting on the daemon except for the connect itself.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dualblade import errors
from dualblade.client import DEFAULT_ARENA_BYTES, Client
from dualblade.v1.wire import ALIGNMENT


def _as_tensor(pool: memoryview) -> Any:
    """The pool as a flat uint8 torch tensor when torch is there (always, with vLLM): the SDK
    copies tensors with torch, which releases the GIL, so the scheduler thread keeps running
    while workers copy; a memoryview copy holds the GIL for the whole chunk."""
    try:
        import torch
    except ImportError:
        return pool
    return torch.frombuffer(pool, dtype=torch.uint8)


__all__ = [
    "DEFAULT_ARENA_BYTES",
    "ChunkJob",
    "Connection",
    "IoPool",
    "Outcome",
    "Touch",
    "Unpin",
]

#: Codes after which the session is presumed gone (daemon died, restarted, or closed the lease).
_CONNECTION_CODES = frozenset(
    {
        "UNAVAILABLE",
        "UNAUTHENTICATED",
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "UNKNOWN",
        "INTERNAL",
        "FAILED_PRECONDITION",
    }
)
_SLOT_ALIGNMENT = ALIGNMENT


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, EOFError)):
        return True
    return isinstance(exc, errors.DualbladeError) and exc.code in _CONNECTION_CODES


class Connection:
    """One lazily made SDK client, remade after the daemon was lost. Thread-safe."""

    def __init__(
        self,
        socket: str | None,
        tenant: str,
        arena_bytes: int,
        *,
        connect_timeout: float = 5.0,
        retry_interval: float = 0.5,
    ) -> None:
        self.socket = socket
        self.tenant = tenant
        self.arena_bytes = arena_bytes
        self._connect_timeout = connect_timeout
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._retry_at = 0.0
        self._closed = False
        self.connects = 0  # sessions opened so far (a reconnect shows as 2, 3, ...)

    def get(self) -> Client:
        """The live client, connecting if needed; Unavailable while the daemon is away."""
        with self._lock:
            if self._closed:
                raise errors.Unavailable("the dualblade tier is shut down")
            if self._client is not None:
                return self._client
            now = time.monotonic()
            if now < self._retry_at:
                raise errors.Unavailable("dualbladed unreachable; retrying shortly")
            try:
                self._client = Client.connect(
                    self.socket,
                    tenant=self.tenant,
                    arena_bytes=self.arena_bytes,
                    timeout=self._connect_timeout,
                )
            except Exception as exc:
                self._retry_at = now + self._retry_interval
                if isinstance(exc, errors.DualbladeError):
                    raise
                raise errors.Unavailable(f"cannot connect to dualbladed: {exc}") from exc
            self.connects += 1
            return self._client

    def lost(self, client: Client, exc: BaseException) -> None:
        """Drop ``client`` if ``exc`` says its session is gone (and it is still the current one)."""
        if not is_connection_error(exc):
            return
        with self._lock:
            if self._client is not client:
                return
            self._client = None
        client.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()


@dataclass(frozen=True)
class ChunkJob:
    """One vLLM transfer job in daemon terms: ``keys[i]`` is the chunk at byte ``offsets[i]``."""

    job_id: int
    is_store: bool
    keys: tuple[bytes, ...]
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class Unpin:
    """Give back the session's hit pins on ``keys`` (no outcome; best effort: a pin also ends at
    its deadline or with the session)."""

    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class Touch:
    """Mark ``keys`` used now in the daemon's eviction LRU (no outcome; best effort: a missing
    key, or a daemon without TouchOp, changes nothing a load depends on)."""

    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class Outcome:
    """What a job did: indices into its keys that moved and that did not, bytes, seconds."""

    job_id: int
    is_store: bool
    done: tuple[int, ...]
    failed: tuple[int, ...]
    nbytes: int
    seconds: float
    error: str | None = None


class IoPool:
    """Worker threads running :class:`ChunkJob` s against the daemon; see the module docstring."""

    def __init__(
        self,
        conn: Connection,
        pool: memoryview,
        chunk_bytes: int,
        *,
        threads: int = 8,
        path: str | None = None,
        name: str = "dualblade-vllm",
    ) -> None:
        slot = -(-chunk_bytes // _SLOT_ALIGNMENT) * _SLOT_ALIGNMENT
        slots = conn.arena_bytes // slot
        if slots < 1:
            raise ValueError(
                f"arena of {conn.arena_bytes} bytes cannot hold a {chunk_bytes}-byte chunk"
            )
        self.threads = max(1, min(threads, slots))
        #: chunks per Batch: the arena slots one worker holds at a time
        self.piece_chunks = max(1, slots // self.threads)
        self._conn = conn
        self._pool = _as_tensor(pool)
        self._chunk_bytes = chunk_bytes
        self._path = path
        self._jobs: queue.SimpleQueue[ChunkJob | Unpin | Touch | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-io{i}", daemon=True)
            for i in range(self.threads)
        ]
        for w in self._workers:
            w.start()

    # -- scheduler side (never blocks on the daemon) ----------------------------------------

    def submit(self, job: ChunkJob) -> None:
        with self._cond:
            self._pending += 1
        self._jobs.put(job)

    def unpin(self, keys: Sequence[bytes]) -> None:
        """Queue an unpin of ``keys``; not a job (drain_jobs does not wait for it)."""
        if keys:
            self._jobs.put(Unpin(tuple(keys)))

    def touch(self, keys: Sequence[bytes]) -> None:
        """Queue a touch of ``keys``; not a job either."""
        if keys:
            self._jobs.put(Touch(tuple(keys)))

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has reported its outcome."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def shutdown(self) -> None:
        self.wait_idle()
        for _ in self._workers:
            self._jobs.put(None)
        for w in self._workers:
            w.join()

    # -- lookups (called from vLLM's lookup thread) ----------------------------------------

    def lookup(self, keys: Sequence[bytes], pin_ms: int = 0) -> list[bool]:
        """Which keys hold a whole chunk, in one daemon round trip per ``max_batch_ops`` keys;
        ``pin_ms > 0`` pins each hit for this session (see :mod:`._pins`). An object of another
        size (not written by an engine of this geometry) is a miss."""
        client = self._conn.get()
        try:
            infos = client.stat_many(keys, pin_ms=pin_ms)
        except Exception as exc:
            self._conn.lost(client, exc)
            raise
        return [info is not None and info.size == self._chunk_bytes for info in infos]

    # -- workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, (Unpin, Touch)):
                self._lookup_side(job)
                continue
            start = time.monotonic()
            try:
                outcome = self._store(job, start) if job.is_store else self._load(job, start)
            except BaseException as exc:  # noqa: BLE001 -- a job must always report
                outcome = Outcome(
                    job.job_id,
                    job.is_store,
                    (),
                    tuple(range(len(job.keys))),
                    0,
                    time.monotonic() - start,
                    repr(exc),
                )
            self.results.put(outcome)  # before the count drops: drained means reported
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _lookup_side(self, job: Unpin | Touch) -> None:
        try:
            client = self._conn.get()
        except Exception:  # noqa: BLE001 -- daemon away: its session and pins are gone anyway
            return
        try:
            if isinstance(job, Unpin):
                client.unpin_many(job.keys)
            else:
                client.touch_many(job.keys)
        except Exception as exc:  # noqa: BLE001 -- best effort, see Unpin and Touch
            self._conn.lost(client, exc)

    @staticmethod
    def _pieces(n: int, step: int) -> list[range]:
        return [range(i, min(i + step, n)) for i in range(0, n, step)]

    def _slice(self, offset: int) -> Any:
        return self._pool[offset : offset + self._chunk_bytes]

    def _store(self, job: ChunkJob, start: float) -> Outcome:
        client = self._conn.get()
        done = 0
        for piece in self._pieces(len(job.keys), self.piece_chunks):
            items = [(job.keys[i], self._slice(job.offsets[i])) for i in piece]
            try:
                client.put_many(items, persistent=True, path=self._path)
            except Exception as exc:
                self._conn.lost(client, exc)
                return Outcome(
                    job.job_id,
                    True,
                    tuple(range(done)),
                    tuple(range(done, len(job.keys))),
                    done * self._chunk_bytes,
                    time.monotonic() - start,
                    repr(exc),
                )
            done += len(piece)
        return Outcome(
            job.job_id,
            True,
            tuple(range(done)),
            (),
            done * self._chunk_bytes,
            time.monotonic() - start,
        )

    def _load(self, job: ChunkJob, start: float) -> Outcome:
        """Read the job a piece (one Batch) at a time straight into the pool's slices; see the
        module docstring ("The load path")."""
        client = self._conn.get()
        done: list[int] = []
        failed: list[int] = []
        error = None
        pieces = self._pieces(len(job.keys), self.piece_chunks)
        for n, piece in enumerate(pieces):
            items = [(job.keys[i], self._slice(job.offsets[i])) for i in piece]
            try:
                results = client.try_get_many_into(items)  # per-op: the rest still loads
            except Exception as exc:
                self._conn.lost(client, exc)
                error = repr(exc)
                failed.extend(i for p in pieces[n:] for i in p)
                break
            for i, r in zip(piece, results):
                (done if r == self._chunk_bytes else failed).append(i)
        return self._load_outcome(job, done, failed, error, start)

    def _load_outcome(
        self, job: ChunkJob, done: list[int], failed: list[int], error: str | None, start: float
    ) -> Outcome:
        if failed and error is None:
            error = f"{len(failed)} of {len(job.keys)} chunks missing or not chunk-sized"
        return Outcome(
            job.job_id,
            False,
            tuple(done),
            tuple(failed),
            len(done) * self._chunk_bytes,
            time.monotonic() - start,
            error,
        )
