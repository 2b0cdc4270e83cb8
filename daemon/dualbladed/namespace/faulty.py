"""Power-failure injection around any namespace, for tests (after SPDK's ``bs_dev_common.c``).

``FaultyNamespace`` counts ``pwritev`` calls. Writes ``1..fail_after_writes`` reach the medium
normally; from then on the power is "off": every later write raises ``OSError(EIO)`` and puts
nothing on the medium, so the image is frozen at exactly the Nth write. A crash-consistency test
sweeps N over every write a scenario makes, then reopens the inner namespace's medium and checks
that the state equals some acknowledged commit point.

Two variants shape the first failing write:

- ``torn=True``: it puts its first half on the medium (rounded down to the block size, so a
  one-block write puts nothing: blocks are the atomic unit) and then raises EIO.
- ``silent_torn=True``: it puts its first half on the medium and *returns success* with the full
  length, like a device that acknowledges a write it never finished. Nothing above the namespace
  can notice at write time; the per-extent checksum must catch it on read. Later writes raise EIO
  as with a plain power failure.

Reads, flushes, discards and close always go to the inner namespace (so a test can inspect the
frozen image through the same object); they are counted for assertions on I/O patterns.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from dualbladed.namespace.abstract import Namespace


@dataclass(frozen=True)
class FaultStats:
    reads: int = 0
    writes: int = 0  # pwritev calls, including the ones that failed
    flushes: int = 0
    discards: int = 0
    failed_writes: int = 0  # raised EIO
    torn_writes: int = 0  # put only part of their data on the medium (raising or not)
    bytes_written: int = 0  # bytes that actually reached the inner namespace


class FaultyNamespace(Namespace):
    """Wraps ``inner``; see the module docstring for the fault model.

    Args:
        inner: the namespace that holds the medium.
        fail_after_writes: number of writes that succeed; ``None`` never fails.
        torn: the first failing write puts its first half on the medium before raising.
        silent_torn: the first failing write puts its first half on the medium and reports
            success.
    """

    def __init__(
        self,
        inner: Namespace,
        *,
        fail_after_writes: int | None = None,
        torn: bool = False,
        silent_torn: bool = False,
    ) -> None:
        if fail_after_writes is not None and fail_after_writes < 0:
            raise ValueError(f"fail_after_writes must be >= 0 or None, got {fail_after_writes}")
        if torn and silent_torn:
            raise ValueError("torn and silent_torn are exclusive: pick one failure shape")
        self.inner = inner
        self.fail_after_writes = fail_after_writes
        self.torn = torn
        self.silent_torn = silent_torn
        self._lock = threading.Lock()  # the counters; I/O itself runs outside it
        self._stats = FaultStats()

    # Geometry is the inner namespace's.
    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.inner.kind

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.inner.path

    @property
    def block_size(self) -> int:  # type: ignore[override]
        return self.inner.block_size

    @property
    def capacity(self) -> int:  # type: ignore[override]
        return self.inner.capacity

    @property
    def data_start(self) -> int:
        return self.inner.data_start

    @property
    def stats(self) -> FaultStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats

    @property
    def power_failed(self) -> bool:
        """True once a write has failed (or silently torn): the medium is frozen."""
        with self._lock:
            return self._power_failed_locked()

    def _power_failed_locked(self) -> bool:
        n = self.fail_after_writes
        return n is not None and self._stats.writes > n

    def _bump(self, **deltas: int) -> None:
        s = self._stats
        self._stats = FaultStats(
            **{k: getattr(s, k) + deltas.get(k, 0) for k in s.__dataclass_fields__}
        )

    # -- I/O --------------------------------------------------------------------------------

    def preadv(self, bufs: Sequence[memoryview], offset: int) -> int:
        with self._lock:
            self._bump(reads=1)
        return self.inner.preadv(bufs, offset)

    def pwritev(self, bufs: Sequence[memoryview], offset: int) -> int:
        with self._lock:
            first_failure = not self._power_failed_locked()
            self._bump(writes=1)
            failing = self._power_failed_locked()
        if not failing:
            done = self.inner.pwritev(bufs, offset)
            with self._lock:
                self._bump(bytes_written=done)
            return done
        total = sum(b.nbytes for b in bufs)
        if first_failure and (self.torn or self.silent_torn):
            half = (total // 2) // self.block_size * self.block_size
            written = self.inner.pwritev(_prefix(bufs, half), offset) if half else 0
            with self._lock:
                self._bump(torn_writes=1, bytes_written=written)
                if self.torn:
                    self._bump(failed_writes=1)
            if self.silent_torn:
                return total
        else:
            with self._lock:
                self._bump(failed_writes=1)
        raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected power failure)", self.path)

    def flush(self) -> None:
        with self._lock:
            self._bump(flushes=1)
        self.inner.flush()

    def discard(self, offset: int, length: int) -> None:
        with self._lock:
            self._bump(discards=1)
        self.inner.discard(offset, length)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return (
            f"FaultyNamespace({self.inner!r}, fail_after_writes={self.fail_after_writes}, "
            f"torn={self.torn}, silent_torn={self.silent_torn})"
        )


def _prefix(bufs: Sequence[memoryview], length: int) -> list[memoryview]:
    """The first ``length`` bytes of ``bufs`` as a buffer list (cuts stay block-aligned)."""
    out: list[memoryview] = []
    for buf in bufs:
        if length <= 0:
            break
        buf = buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
        take = min(len(buf), length)
        out.append(buf[:take])
        length -= take
    return out
