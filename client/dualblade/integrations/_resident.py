"""Whole layers' KV kept in process memory between decode steps, within a byte budget.

Why: when a model's KV fits in memory, reading every layer's past back from the daemon each
step costs a daemon round trip, a copy and GIL time per layer per token, for bytes this process
had a step ago. `DualBladeCache` therefore keeps the KV of as many layers as the budget allows
here (lowest layers first) and only *writes* them to the daemon, behind the model (the daemon
still holds every token: an evicted layer, a prefix for a later request, a crash of this process
before `finish` loses only what was never acknowledged). Layers that do not fit go through the
`LayerPipeline` exactly as before.

Layout: per layer one ``[B, H, capacity, D]`` buffer for K and one for V, capacity a power of two
of at least twice the tokens held, so appending a token is one small copy (no ``torch.cat`` of
the whole past, which DynamicCache pays every step) and the attention call gets the view
``[:, :, :T, :]``, whose rows are contiguous per head.

Budget: bytes of allocated capacity (K and V). A resident layer stays resident for the whole step
it is planned in (its KV is in memory for that attention call anyway); `fit` runs when the next
step is planned and evicts the highest layers until the total is within the budget, so the budget
can be exceeded by at most one step's growth. Eviction only drops the in-memory copy: the daemon
already holds (or has queued, in order, before any read of that key) every byte.
"""

from __future__ import annotations

import torch

__all__ = ["ResidentKV", "mem_available_bytes"]


def _capacity(tokens: int) -> int:
    """A power of two >= 2 * tokens (at least 16)."""
    return max(16, 1 << (2 * tokens - 1).bit_length())


def mem_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Layer:
    __slots__ = ("k", "v", "length")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
        self.k, self.v, self.length = k, v, length

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class ResidentKV:
    """Per-layer in-memory KV within ``budget`` bytes (see the module docstring)."""

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"resident budget must be >= 0, got {budget}")
        self.budget = budget
        self._layers: dict[int, _Layer] = {}
        self.total = 0
        self.promotions = 0
        self.evictions = 0

    def __contains__(self, layer: int) -> bool:
        return layer in self._layers

    def __len__(self) -> int:
        return len(self._layers)

    def extend(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, H, n, D]`` new K/V to resident `layer`; return its whole K/V (views)."""
        entry = self._layers[layer]
        old, n = entry.length, k_new.shape[-2]
        if old + n > entry.k.shape[-2]:
            cap = _capacity(old + n)
            k, v = self._alloc(entry.k, cap), self._alloc(entry.v, cap)
            k[:, :, :old].copy_(entry.k[:, :, :old])
            v[:, :, :old].copy_(entry.v[:, :, :old])
            self.total += k.nbytes + v.nbytes - entry.nbytes
            entry.k, entry.v = k, v
        entry.k[:, :, old : old + n].copy_(k_new)
        entry.v[:, :, old : old + n].copy_(v_new)
        entry.length = old + n
        return entry.k[:, :, : entry.length], entry.v[:, :, : entry.length]

    def adopt(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Make `layer` resident from its whole ``[B, H, T, D]`` K/V if the budget allows;
        returns the resident views (same values), or None when it does not fit."""
        tokens = keys.shape[-2]
        cap = _capacity(tokens)
        need = (keys[:, :, :1].nbytes + values[:, :, :1].nbytes) * cap
        if layer in self._layers or self.total + need > self.budget:
            return None
        k, v = self._alloc(keys, cap), self._alloc(values, cap)
        k[:, :, :tokens].copy_(keys)
        v[:, :, :tokens].copy_(values)
        entry = _Layer(k, v, tokens)
        self._layers[layer] = entry
        self.total += entry.nbytes
        self.promotions += 1
        return k[:, :, :tokens], v[:, :, :tokens]

    def fit(self) -> list[int]:
        """Evict the highest layers until the total is within the budget; returns them."""
        evicted = []
        for layer in sorted(self._layers, reverse=True):
            if self.total <= self.budget:
                break
            self.total -= self._layers.pop(layer).nbytes
            evicted.append(layer)
        self.evictions += len(evicted)
        return evicted

    def clear(self) -> None:
        self._layers.clear()
        self.total = 0

    @staticmethod
    def _alloc(like: torch.Tensor, cap: int) -> torch.Tensor:
        b, h, _, d = like.shape
        return torch.empty((b, h, cap, d), dtype=like.dtype, device=like.device)
