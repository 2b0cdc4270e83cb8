"""Byte views of the things users hand the SDK: bytes-likes and (optionally) torch tensors.

torch is imported lazily and only when the caller passes a tensor, so the bytes API works in a
process without torch.
"""

from __future__ import annotations

import sys
from typing import Any

ALIGNMENT = 4096


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


def copy_out(dst: Any, src: memoryview) -> None:
    """Copy ``src`` bytes into ``dst`` (writable bytes-like or tensor of the same byte size)."""
    if is_tensor(dst):
        import torch

        data = torch.frombuffer(src, dtype=torch.uint8, count=src.nbytes)
        target = dst.view(-1).view(torch.uint8) if dst.is_contiguous() else None
        if target is None:
            raise ValueError("get_into needs a contiguous tensor")
        target.copy_(data, non_blocking=dst.device.type == "cuda")
        return
    out = memoryview(dst).cast("B")
    out[: src.nbytes] = src
