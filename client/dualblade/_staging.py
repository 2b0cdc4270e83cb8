"""Zero-copy arena tensors and staging of :class:`dualblade.Client`.

An arena tensor *is* a slice of the session's shared arena, so put/get_into with one move bytes
between it and storage with no copy in this process; other payloads are staged through an arena
slot (one copy). The arena is page-locked for fast host-to-device copies when a CUDA build of
torch is loaded. Split into this mixin to keep ``client.py`` short; it uses the Client's
``arena`` and adds no state of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dualblade import _buffers
from dualblade.arena import Slot
from dualblade.v1 import wire

if TYPE_CHECKING:
    from dualblade.arena import ClientArena

__all__ = ["StagingMethods"]


class StagingMethods:
    """Arena tensors and staging slots (a mixin of :class:`dualblade.Client`)."""

    arena: ClientArena

    def arena_tensor(self, shape: Sequence[int], dtype: Any) -> Any:
        """A CPU tensor that *is* a slice of the shared arena (pinned on CUDA builds).

        put/get_into with such a tensor move bytes between it and storage with no copy in this
        process. Free it with :meth:`release_tensor` when done.
        """
        import torch

        numel = 1
        for d in shape:
            numel *= int(d)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        slot = self.arena.alloc(max(nbytes, 1))
        view = self.arena.view(slot)
        t = torch.frombuffer(view, dtype=torch.uint8, count=nbytes).view(dtype).view(*shape)
        return t

    def staging(self, nbytes: int) -> Any:
        import torch

        return self.arena_tensor((nbytes,), torch.uint8)

    @property
    def staging_alignment(self) -> int:
        """Arena offsets the daemon can address directly (sub-ranges of a staging tensor at
        multiples of this are read and written in place)."""
        return self.arena.alignment

    @property
    def staging_capacity(self) -> int:
        """The most staging memory :meth:`staging` can hand out at once: the arena size."""
        return self.arena.size

    def release_tensor(self, tensor: Any) -> None:
        slot = self.arena.slot_at(tensor.data_ptr() - self.arena.address)
        if slot is not None:
            self.arena.free(slot)

    def _arena_offset_of(self, obj: Any, nbytes: int) -> int | None:
        """Where ``obj`` lies in the arena, if it is a page-aligned arena tensor (zero copy)."""
        if not _buffers.is_tensor(obj) or obj.device.type != "cpu" or not obj.is_contiguous():
            return None
        off = obj.data_ptr() - self.arena.address
        if off >= 0 and off + nbytes <= self.arena.size and off % wire.ALIGNMENT == 0:
            return off
        return None

    def _stage_out(self, data: Any, n: int, offset: int | None) -> tuple[Slot, bool]:
        if offset is not None:
            return Slot(offset, n), False
        slot = self.arena.alloc(max(n, 1))
        view = self.arena.view(slot)
        try:
            _buffers.copy_into(view, data)
        finally:
            view.release()
        return slot, True

    def _stage_in(self, n: int, offset: int | None) -> tuple[Slot, bool]:
        if offset is not None:
            return Slot(offset, n), False
        return self.arena.alloc(max(n, 1)), True


def _pin_for_cuda(arena: ClientArena) -> bool:
    """Page-lock the arena for fast H2D copies when a CUDA build of torch is loaded."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return False
    from dualblade.cuda import host_register

    return host_register(arena.address, arena.size)


def _unpin_for_cuda(arena: ClientArena, pinned: bool) -> None:
    if pinned:
        from dualblade.cuda import host_unregister

        host_unregister(arena.address)
