"""Host staging memory for the layer pipeline: a byte budget with first-in-first-out admission.

Every in-flight layer read holds one staging buffer from the moment its first backend call starts
until its bytes are no longer needed on the host (on a GPU: when the host-to-device copy has
completed; on the CPU: when the consumer moves past the layer, because the staging buffer *is*
the result). The pool bounds the bytes held at once, which is what bounds the prefetch depth.

Why tickets: reads are admitted in the order they were issued. Without that, the read of layer
l+2 could take the last staging bytes while the read of layer l+1 waits, and the consumer, which
blocks on l+1, would never release anything: a deadlock. With FIFO admission the read the
consumer waits for is always the oldest, and every buffer held is older and will be released.
A single request larger than the whole budget is admitted when nothing else is held.

Buffer reuse: pinned or arena-backed memory is expensive to obtain, so released buffers are kept
for reuse (``reuse=True``), within the same byte budget as the buffers in use. The pipeline's
read pool reuses on the GPU only (the buffer comes back once its host-to-device copy is done);
on the CPU its buffers go back to the arena at release (see the pipeline's comment: cached
fragments sized for shorter layers filled the arena). Its write pool reuses everywhere. With
``reuse=False`` only the byte accounting is returned.

Giving memory back: a buffer the pool stops tracking (released without reuse, trimmed from the
cache, or cached at `close`) is passed to ``free``. For arena-backed staging that returns the
slot to the SDK's arena allocator; without it every layer read would leak arena space.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from dualblade.v1.wire import ALIGNMENT

if TYPE_CHECKING:
    import torch

__all__ = ["StagingPool", "staging_size_class"]

_ALIGN = ALIGNMENT


class StagingPool:
    """A byte budget of host buffers; `acquire` blocks until the budget allows the request."""

    def __init__(
        self,
        capacity: int,
        alloc: Callable[[int], torch.Tensor],
        *,
        reuse: bool,
        ordered: bool,
        free: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"staging capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._alloc = alloc
        self._free_fn = free
        self._reuse = reuse
        self._ordered = ordered
        self._cond = threading.Condition()
        self._in_use = 0
        self._free: list[torch.Tensor] = []
        self._next_ticket = 0
        self._issued = 0
        self._skipped: set[int] = set()
        self._closed = False

    def ticket(self) -> int:
        """Reserve a place in the admission order (call in issue order)."""
        with self._cond:
            ticket = self._issued
            self._issued += 1
            return ticket

    def skip(self, ticket: int) -> None:
        """Give up a ticket whose request will never be made (a cancelled read)."""
        with self._cond:
            self._skipped.add(ticket)
            self._advance()
            self._cond.notify_all()

    def acquire(self, nbytes: int, ticket: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(base, view)``: `view` is ``nbytes`` long; hand `base` back to `release`."""
        want = max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN)
        with self._cond:
            while not self._closed and not (
                (not self._ordered or ticket is None or ticket == self._next_ticket)
                and (self._in_use == 0 or self._in_use + want <= self.capacity)
            ):
                self._cond.wait()
            if self._closed:
                raise RuntimeError("staging pool is closed")
            if self._ordered and ticket is not None:
                self._next_ticket += 1
                self._advance()
            self._in_use += want
            base = self._take_free(want)
            self._cond.notify_all()
        if base is None:
            try:
                base = self._alloc(want)
            except BaseException:
                self.release(None, nbytes)
                raise
        return base, base[:nbytes]

    def release(self, base: torch.Tensor | None, nbytes: int) -> None:
        """Return a buffer from `acquire` (``nbytes`` as requested there)."""
        want = max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN)
        dropped: list[torch.Tensor] = []
        with self._cond:
            self._in_use -= want
            if base is not None:
                if self._reuse and not self._closed:
                    self._free.append(base)
                else:
                    dropped.append(base)
                # Keep cached buffers within the budget too.
                while self._free and self._in_use + sum(b.numel() for b in self._free) > (
                    self.capacity
                ):
                    biggest = max(range(len(self._free)), key=lambda i: self._free[i].numel())
                    dropped.append(self._free.pop(biggest))
            self._cond.notify_all()
        self._give_back(dropped)

    def close(self) -> None:
        """Wake waiters with an error and give every cached buffer back (held ones come back
        through `release`)."""
        with self._cond:
            self._closed = True
            dropped, self._free = self._free, []
            self._cond.notify_all()
        self._give_back(dropped)

    def _give_back(self, buffers: list[torch.Tensor]) -> None:
        if self._free_fn is not None:
            for buf in buffers:
                self._free_fn(buf)

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use

    def _advance(self) -> None:
        while self._next_ticket in self._skipped:
            self._skipped.discard(self._next_ticket)
            self._next_ticket += 1

    def _take_free(self, want: int) -> torch.Tensor | None:
        # By index, never list.remove: tensors compare element-wise, not by identity.
        fitting = [i for i, b in enumerate(self._free) if b.numel() >= want]
        if not fitting:
            return None
        best = min(fitting, key=lambda i: self._free[i].numel())
        return self._free.pop(best)


def staging_size_class(nbytes: int) -> int:
    """What to ask the arena for, for a staging buffer of ``nbytes``: rounded up to 1/16 of
    its power of two (at least a page), so at most ~6% is wasted.

    Why classes: a decode step reads every layer one token longer than the step before, so
    the holes the last step's buffers left in the best-fit arena were each a few KiB too small
    for this step's. In the residency bench the arena then failed with most of it free ("slot
    of 33570816 bytes requested, 77520896 free, largest free range 33562624") and the pipeline
    fell back to host memory, paying a bounce copy per read (client CPU 263 -> 487 ms a step).
    With classes a layer changes class once per ~512 steps, and freed holes fit the next step.
    A class is always strictly larger than a whole number of granules' worth of request: a
    context of 2^k tokens sits exactly on a boundary, and its first decode step would otherwise
    cross it (17 fallbacks in six runs, all in the first two steps, before this rule).
    """
    granule = max(_ALIGN, 1 << max(0, nbytes.bit_length() - 5))
    return (max(nbytes, 1) // granule + 1) * granule
