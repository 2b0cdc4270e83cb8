"""One write-back's work: its layout in write staging, the copy into it, and the backend call.

Split out of :mod:`dualblade.pipeline.pipeline`, whose module docstring gives the rules (the GPU
and CPU paths, when the caller's tensors may be touched again). `LayerPipeline` keeps everything
that spans writes: which earlier writes one must wait for (per key), the futures in flight and the
first error, all under its lock. What is here concerns one write only and holds no lock, so it
adds nothing to the pipeline's lock order; the staging pool it is given locks for itself.

A write happens in two halves. `stage_writes` runs on the model thread: it lays the items out in
one write-staging buffer and, on CUDA, queues their device-to-host copy on the D2H stream.
`write_task` runs on a writer thread: it finishes that copy (waits for its event, or on the CPU
does the copy itself), waits for the earlier writes of the same keys, calls the backend and gives
the staging back, whatever happened.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

from .backend import KVBackend
from .staging import StagingPool

__all__ = ["Staged", "stage_writes", "write_task"]

#: ``(host_items, fill, base, total)``: the items' staging views (key, bytes), the step that puts
#: the bytes there, and the staging buffer to give back (None: nothing staged) with its size
Staged = tuple[list[tuple[bytes, torch.Tensor]], Callable[[], None], torch.Tensor | None, int]


def _copy_sources(sources: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The CPU's write-back copy into staging, run by the write task (module docstring).
    Inference mode, because the views into staging may have been made under the caller's (an
    in-place update of such a view outside it raises), and staging needs no autograd."""
    with torch.inference_mode():
        for dst, src in sources:
            dst.copy_(src.detach())
    sources.clear()  # let the caller's tensors go as soon as they are copied


def stage_writes(
    items: Sequence[tuple[bytes, torch.Tensor]],
    pool: StagingPool,
    align: int,
    *,
    d2h: torch.cuda.Stream | None,
    device: torch.device,
) -> Staged:
    """Lay `items` out in one buffer of `pool` (segments aligned to `align`): ``(host_items,
    fill, base, total)``. The bytes are in staging once ``fill()`` returns, which the write task
    calls first: on CUDA (`d2h`, the side stream of `device` the copies go on) the copy is queued
    here and ``fill`` waits for its event; on the CPU (`d2h` None) ``fill`` is the copy itself
    (module docstring: not on the model thread)."""
    if not items:
        return [], lambda: None, None, 0
    sizes = [t.numel() * t.element_size() for _, t in items]
    offsets, off = [], 0
    for n in sizes:
        offsets.append(off)
        off += -(-n // align) * align
    total = off
    base, host = pool.acquire(total)
    host_items = []
    if d2h is None:
        try:
            sources = []
            for (key, t), o, n in zip(items, offsets, sizes):
                dst = host[o : o + n]
                sources.append((dst.view(t.dtype).view(t.shape), t))
                host_items.append((key, dst))
        except BaseException:
            pool.release(base, total)
            raise
        return host_items, functools.partial(_copy_sources, sources), base, total
    compute = torch.cuda.current_stream(device)
    d2h.wait_stream(compute)
    with torch.cuda.stream(d2h):
        for (key, t), o, n in zip(items, offsets, sizes):
            dst = host[o : o + n]
            dst.view(t.dtype).view(t.shape).copy_(t, non_blocking=True)
            t.record_stream(d2h)
            host_items.append((key, dst))
        event = torch.cuda.Event()
        event.record(d2h)
    return host_items, event.synchronize, base, total


def write_task(
    backend: KVBackend,
    pool: StagingPool,
    deps: set[Future],
    fill: Callable[[], None],
    items: list[tuple[bytes, torch.Tensor]],
    flag: bool,
    base: torch.Tensor | None,
    total: int,
    append: bool = False,
    reserve: Sequence[tuple[bytes, int, bool]] = (),
) -> None:
    """One write on a writer thread: ``fill()``, wait for `deps`, `reserve`, then ``put_many``
    (`flag`: persistent) or ``append_many`` (`flag`: durable); `base` goes back to `pool`."""
    try:
        # before waiting for earlier writes of the same keys: it fills our own staging,
        # which nobody else reads
        fill()
        for dep in deps:
            dep.result()
        for key, capacity, persistent in reserve:
            backend.reserve(key, capacity, persistent=persistent)  # type: ignore[attr-defined]
        if not items:
            pass
        elif append:
            backend.append_many(items, durable=flag)  # type: ignore[attr-defined]
        else:
            backend.put_many(items, persistent=flag)
    finally:
        if base is not None:
            pool.release(base, total)
