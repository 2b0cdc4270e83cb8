"""Byte views of the things users hand the SDK: bytes-likes and (optionally) torch tensors.

torch is imported lazily and only when the caller passes a tensor, so the bytes API works in a
process without torch.
"""

from __future__ import annotations

import sys
from typing import Any


def is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def nbytes_of(obj: Any) -> int:
    if is_tensor(obj):
        return obj.numel() * obj.element_size()
    return memoryview(obj).nbytes


def copy_into(dst: memoryview, src: Any) -> int:
    """Copy ``src`` (bytes-like or CPU tensor) into the start of ``dst``; returns the length."""
    if is_tensor(src):
        import torch

        flat = src.detach().contiguous().reshape(-1).view(torch.uint8)
        n = flat.numel()
        if src.device.type != "cpu":
            flat = flat.cpu()
        torch.frombuffer(dst, dtype=torch.uint8, count=n).copy_(flat)
        return n
    mv = memoryview(src).cast("B")
    n = mv.nbytes
    dst[:n] = mv
    return n


def copy_out(dst: Any, src: memoryview) -> Any:
    """Copy ``src`` bytes into the start of ``dst`` (writable bytes-like or contiguous tensor).

    Returns None when the copy is complete, or, for a CUDA ``dst``, a ``torch.cuda.Event``
    recorded after the copy: from a pinned arena the copy is asynchronous, so ``src`` must not be
    reused before the event has completed (the caller synchronizes before freeing the slot).
    """
    if is_tensor(dst):
        import torch

        if not dst.is_contiguous():
            raise ValueError("get_into needs a contiguous tensor")
        data = torch.frombuffer(src, dtype=torch.uint8, count=src.nbytes)
        target = dst.view(-1).view(torch.uint8)[: src.nbytes]
        if dst.device.type != "cuda":
            target.copy_(data)
            return None
        target.copy_(data, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(dst.device))
        return done
    out = memoryview(dst).cast("B")
    out[: src.nbytes] = src
    return None


def tail(obj: Any, start: int) -> Any:
    """``obj`` from byte ``start`` on, without a copy: a uint8 view of a contiguous tensor, or a
    memoryview of a bytes-like (what :func:`copy_out` then copies into)."""
    if is_tensor(obj):
        import torch

        if not obj.is_contiguous():
            raise ValueError("get_into needs a contiguous tensor")
        return obj.view(-1).view(torch.uint8)[start:]
    return memoryview(obj).cast("B")[start:]
