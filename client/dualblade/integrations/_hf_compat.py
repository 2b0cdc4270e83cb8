"""The parts of `DualBladeCache` that follow transformers' versions: the per-layer object and
the keyword that passes a cache to ``generate``.

Version range: transformers 4.57 .. 5.24. `DualBladeLayer` subclasses ``DynamicLayer`` and accepts
both the 4.57 and 5.x method signatures; the cache is passed as ``cache=`` (5.24+) or
``past_key_values=`` (older), see `generate_kwargs`. Split out of ``transformers.py`` (which
re-exports these names) to keep that module about the cache itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["DualBladeLayer", "cache_kwarg_name", "generate_kwargs"]


class DualBladeLayer(DynamicLayer):
    """One layer's bookkeeping; its KV is materialised only while the pipeline holds it.

    ``keys``/``values`` stay None between updates: the tensors returned by `update` belong to
    the attention call that asked for them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.length = 0
        self.batch = 0
        self.k_shape: tuple[int, int] = (0, 0)  # (heads, head_dim)
        self.v_shape: tuple[int, int] = (0, 0)
        self.dtype: torch.dtype | None = None
        # layer objects: (prefix hash, tokens) held by a persistent prefix object, and the
        # sequence object's generation and capacity in tokens
        self.pfx: tuple[str, int] | None = None
        self.gen = 0
        self.seq_capacity = 0

    def lazy_initialization(
        self, key_states: torch.Tensor, value_states: torch.Tensor | None = None
    ) -> None:
        # 4.57 passes key_states only; 5.x passes both.
        value_states = key_states if value_states is None else value_states
        self.init_meta(
            batch=key_states.shape[0],
            k_shape=(key_states.shape[1], key_states.shape[3]),
            v_shape=(value_states.shape[1], value_states.shape[3]),
            dtype=key_states.dtype,
            device=key_states.device,
        )

    def init_meta(
        self,
        *,
        batch: int,
        k_shape: tuple[int, int],
        v_shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.batch, self.k_shape, self.v_shape = batch, k_shape, v_shape
        self.dtype, self.device = dtype, device
        self.is_initialized = True

    def token_bytes(self, kind: str) -> int:
        heads, dim = self.k_shape if kind == "k" else self.v_shape
        # dtype.itemsize, not torch.empty(()).element_size(): this runs per layer per token, and
        # an allocation there cost more than the layer's bookkeeping (profiled on the demo)
        return self.batch * heads * dim * self.dtype.itemsize

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise RuntimeError("DualBladeLayer is updated through DualBladeCache.update")

    def get_seq_length(self, *args: Any) -> int:
        return self.length

    def offload(self) -> None:  # the pipeline owns movement
        return None

    def prefetch(self) -> None:
        return None

    def reset(self) -> None:
        raise NotImplementedError("DualBladeCache cannot be reset in place; use a new cache")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("DualBladeCache does not support crop (assisted decoding)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("DualBladeCache does not support beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("DualBladeCache does not support batch expansion")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("DualBladeCache does not support batch selection")


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def cache_kwarg_name(model: Any) -> str:
    """``"cache"`` on transformers >= 5.24, ``"past_key_values"`` on 4.57 .. 5.23.

    Decided from the signatures (``generate``, then ``forward``), falling back to the version.
    """
    for fn in (getattr(model, "generate", None), getattr(model, "forward", None)):
        if fn is None:
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        if "cache" in params:
            return "cache"
        if "past_key_values" in params:
            return "past_key_values"
    return "cache" if _version_tuple(transformers.__version__) >= (5, 24) else "past_key_values"


def generate_kwargs(model: Any, cache: Cache) -> dict[str, Cache]:
    """The keyword that passes `cache` to ``model.generate`` on this transformers version."""
    return {cache_kwarg_name(model): cache}
