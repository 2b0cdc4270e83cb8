"""`DualBladeCache`: a transformers KV cache whose layers live in dualblade, not in device memory.

Residency. Only a bounded window of layers holds KV in device memory at any time: the layer
being computed plus at most ``window - 1`` layers prefetched by the `LayerPipeline`. Every other
layer's KV lives in the backend (the dualblade daemon, or `InMemoryBackend` in tests). On a CPU
model, where device memory is process memory, ``resident_bytes`` (default: a quarter of
MemAvailable) lets whole layers' KV stay in memory between steps instead (see ``_resident.py``):
they are never read back, only written behind -- their appends go out as one batch per step,
off the model's path -- so when the KV fits the cache costs about what DynamicCache does, and
the daemon still holds every token (`finish` waits for them). Layers beyond the budget are
evicted, highest first, and read back through the pipeline like any offloaded layer. Within a
forward pass, ``Cache.update(k, v, l)`` is the only hook the model gives us, so it drives the
pipeline: it takes layer l's past KV from the pipeline (waiting only for that layer), appends
the new tokens, queues the write-back of the touched blocks, and the pipeline meanwhile reads the
next layers. After the last layer, the next step's first layers are prefetched at once: their
past KV is exactly what has been written so far, whatever the next step's query length.

Object layout. A layer's K (and V) is cut into blocks of ``block_tokens`` tokens. One object per
(layer, K/V, block) holds a ``[tokens, batch, heads, head_dim]`` token-major tensor, so the blocks
of a layer concatenate into one contiguous ``[T, B, H, D]`` buffer that is viewed (not copied) as
``[B, H, T, D]``. Only blocks that received new tokens are written; the partly filled tail block
is rewritten each decode step (one block per layer, bounded), full blocks never again.

Layer objects (issue 12; the default where the backend has them, see
`dualblade.pipeline.backend.is_ranged`): a layer's K (and V) is ONE appendable object holding
``[T, B, H, D]`` token-major, reserved with room to grow (powers of two; when it is full a new
generation twice as large is reserved and filled from the KV the attention call already holds).
A decode step then costs one ranged read batch and one append batch per layer, whatever the
context length. Keys: ``db/seq/<id>/L<layer>/<k|v>/g<generation>`` (ephemeral) and
``db/pfx/<hash of the prompt's full blocks>/L<layer>/<k|v>`` (persistent, exactly the prompt's
full blocks). With layer objects a prefix is reused when an earlier prompt's full blocks are
a prefix of this prompt (a shared system prompt, an extended conversation); a prompt sharing only
some of an earlier prompt's full blocks recomputes them (``layout="blocks"`` keeps block-granular
reuse).

Keys of the block layout (ASCII, readable in dbctl)::

    db/seq/<sequence id>/L<layer>/<k|v>/B<block>    ephemeral, this cache's sequence
    db/pfx/<prefix hash>/L<layer>/<k|v>/B<block>    persistent, shared prompt prefix

Prefix reuse. ``<prefix hash>`` for block b chains xxh3-128 over the token ids of blocks 0..b,
seeded with the model tag, dtype and block size, so equal hashes mean an equal token prefix on
the same model. `generate_with_prefix_reuse` looks up the longest run of leading full blocks
whose objects all exist, marks the cache as holding those tokens (their KV is fetched through the
pipeline on first use) and calls the real ``model.generate`` with the *full* ``input_ids``:
generate derives ``cache_position`` from ``cache.get_seq_length()`` and feeds the model only the
uncached tail. The prompt's full blocks are written under prefix keys (persistent) so a later
request can reuse them. Limits: batch size 1; block-granular (a partial last block is recomputed);
at least one prompt token is always recomputed (generate needs logits); the model tag must
distinguish different weights (the default uses ``config.name_or_path`` and the shapes, which is
not enough for two different checkpoints under the same name).

Not supported (they raise): beam search / batch expansion (``reorder_cache``,
``batch_repeat_interleave``, ``batch_select_indices``), ``crop`` (assisted decoding), sliding-window
or linear-attention layers.

Version range: transformers 4.57 .. 5.24. The layers subclass ``DynamicLayer`` and accept both
the 4.57 and 5.x method signatures; the cache is passed as ``cache=`` (5.24+) or
``past_key_values=`` (older), see `generate_kwargs`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import transformers  # noqa: F401  (re-exported: callers and tests reach the version through it)
import xxhash
from transformers.cache_utils import Cache

from dualblade.pipeline.adaptive import AdaptiveConfig
from dualblade.pipeline.backend import KVBackend, is_ranged, staging_alignment
from dualblade.pipeline.pipeline import LayerPipeline, LayerRead, Segment

from ._hf_compat import DualBladeLayer, cache_kwarg_name, generate_kwargs
from ._hf_compat import _version_tuple as _version_tuple  # re-exported for callers and tests
from ._resident import ResidentKV, mem_available_bytes

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "DualBladeCache",
    "DualBladeLayer",
    "cache_kwarg_name",
    "generate_kwargs",
    "generate_with_prefix_reuse",
]

log = logging.getLogger(__name__)


class DualBladeCache(Cache):
    """A `transformers` Cache backed by a `KVBackend` through a `LayerPipeline`.

    Args:
        backend: the dualblade client (or any `KVBackend`).
        config: the model config (layers, KV heads, head dim).
        window: layers whose KV may be on the device at once (>= 2: one computing, the rest
            prefetched); bounds the pipeline depth to ``window - 1``.
        block_tokens: tokens per stored block.
        depth: pipeline depth, or "auto" (adaptive, capped by the window).
        model_tag: identifies the weights for prefix keys (see the module docstring).
        pipeline_config: staging budget and controller settings.
        layout: "layers" (one appendable object per layer and K/V), "blocks" (one object per
            block), or "auto": layers where the backend has layer objects.
        resident_bytes: KV bytes kept in process memory between steps (whole layers, lowest
            first; see `dualblade.integrations._resident`); the rest is read back through the
            pipeline. "auto": a quarter of MemAvailable on a CPU model, 0 on CUDA (there the
            window bounds device memory; an explicit budget keeps layers in device memory).
            0: every layer's past is read back every step.

    Use as a context manager, or call `close()`: it waits for the writes and deletes this
    sequence's ephemeral objects (persistent prefix blocks stay).
    """

    def __init__(
        self,
        backend: KVBackend,
        config: PretrainedConfig,
        *,
        window: int = 2,
        block_tokens: int = 256,
        depth: int | Literal["auto"] = "auto",
        model_tag: str | None = None,
        pipeline_config: AdaptiveConfig | None = None,
        layout: Literal["auto", "layers", "blocks"] = "auto",
        resident_bytes: int | Literal["auto"] = "auto",
    ) -> None:
        num_layers = int(config.num_hidden_layers)
        if window < 2:
            raise ValueError(f"window must be >= 2 (one layer computing, one prefetched): {window}")
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        super().__init__(layers=[DualBladeLayer() for _ in range(num_layers)])
        self.backend = backend
        self.model_config = config
        self.window = window
        self.block_tokens = block_tokens
        self.sequence_id = uuid.uuid4().hex
        if layout not in ("auto", "layers", "blocks"):
            raise ValueError(f"layout must be auto, layers or blocks: {layout!r}")
        self.layered = layout == "layers" or (layout == "auto" and is_ranged(backend))
        # Segments at the backend's staging alignment: with the SDK client every block is then
        # its own arena range and the daemon reads it in place (see LayerPipeline).
        self._align = staging_alignment(backend)
        self.model_tag = model_tag or _default_model_tag(config)
        cfg = pipeline_config or AdaptiveConfig()
        cfg = AdaptiveConfig(**{**cfg.__dict__, "max_depth": min(cfg.max_depth, window - 1)})
        self._pipeline_args = {"num_layers": num_layers, "depth": depth, "config": cfg}
        self._pipeline: LayerPipeline | None = None
        self._step_open = False
        self._last_idx = -1
        self._planned: tuple[int, ...] | None = None
        #: (layer, length) -> its LayerRead, built once per step for both the plan and _unpack
        self._read_cache: dict[tuple, LayerRead | None] = {}
        self._prefix_hashes: list[str] = []
        self._ephemeral_keys: set[bytes] = set()
        self.reused_tokens = 0
        if resident_bytes != "auto" and (not isinstance(resident_bytes, int) or resident_bytes < 0):
            raise ValueError(f"resident_bytes must be an int >= 0 or 'auto': {resident_bytes!r}")
        self._resident_arg = resident_bytes
        self.resident = ResidentKV(0)  # sized when the device is known (first update)
        # Appends of resident layers, sent as one append batch per step (write-behind): the
        # model never waits for them; a read of the same key (after an eviction) or `finish` does.
        self._batch_items: list[tuple[bytes, torch.Tensor]] = []
        self._batch_reserve: list[tuple[bytes, int, bool]] = []
        self._batch_bytes = 0

    # -- transformers hooks ------------------------------------------------------------------

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kw
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer: DualBladeLayer = self.layers[layer_idx]
        if not layer.is_initialized:
            layer.lazy_initialization(key_states, value_states)
        pipe = self._ensure_pipeline(key_states.device)
        lengths = tuple(lay.length for lay in self.layers)
        new_pass = not self._step_open or layer_idx <= self._last_idx
        if new_pass or (self._last_idx == -1 and self._planned != lengths):
            # A new forward pass (or a plan made for other lengths): (re)start the step.
            self._close_step()
            self._open_step(lengths)
        self._last_idx = layer_idx

        past = pipe.layer(layer_idx)
        old = layer.length
        resident = layer_idx in self.resident
        if resident:  # planned without a read: the past is here
            keys, values = self.resident.extend(layer_idx, key_states, value_states)
        else:
            if past is None:
                keys, values = key_states, value_states
            else:
                past_k, past_v = self._unpack(layer_idx, past)
                keys = torch.cat([past_k, key_states], dim=-2)
                values = torch.cat([past_v, value_states], dim=-2)
            adopted = self.resident.adopt(layer_idx, keys, values)
            if adopted is not None:
                keys, values = adopted
                resident = True
        layer.length = old + key_states.shape[-2]
        if self.layered:
            self._write_layer(layer_idx, keys, values, old, defer=resident)
        else:
            self._write_blocks(layer_idx, keys, values, old)

        if layer_idx == len(self.layers) - 1:
            # Prefetch the next step's first layers while the model finishes this one.
            self._close_step()
            self._open_step(tuple(lay.length for lay in self.layers))
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].length

    # -- prefix reuse ------------------------------------------------------------------------

    def prefix_hashes(self, token_ids: Sequence[int], dtype: torch.dtype) -> list[str]:
        """Chained block hashes of the full blocks of `token_ids`."""
        seed = f"{self.model_tag}|{dtype}|{self.block_tokens}".encode()
        prev = xxhash.xxh3_128_digest(seed)
        out = []
        ids = [int(t) for t in token_ids]
        for b in range(len(ids) // self.block_tokens):
            block = ids[b * self.block_tokens : (b + 1) * self.block_tokens]
            data = prev + b"".join(t.to_bytes(8, "little", signed=True) for t in block)
            prev = xxhash.xxh3_128_digest(data)
            out.append(prev.hex())
        return out

    def load_prefix(
        self, token_ids: Sequence[int], *, dtype: torch.dtype, device: torch.device
    ) -> int:
        """Attach the longest stored prefix of `token_ids` (batch 1); returns its token count.

        Also arranges for the prompt's full blocks to be written under prefix keys. At least
        one token is left for the model to compute.
        """
        if any(lay.length for lay in self.layers):
            raise ValueError("load_prefix needs an empty cache")
        hashes = self.prefix_hashes(token_ids, dtype)
        usable = (len(token_ids) - 1) // self.block_tokens
        cfg = self.model_config
        heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        if self.layered:
            token_bytes = heads * head_dim * dtype.itemsize  # one of K or V, batch 1
            reused_blocks = self._find_prefix_object(hashes, usable, token_bytes)
        else:
            reused_blocks = self._find_prefix_blocks(hashes, usable)
        self._prefix_hashes = hashes
        self._read_cache.clear()  # keys changed
        self.reused_tokens = reused_blocks * self.block_tokens
        if self.reused_tokens:
            for lay in self.layers:
                lay.init_meta(
                    batch=1,
                    k_shape=(heads, head_dim),
                    v_shape=(heads, head_dim),
                    dtype=dtype,
                    device=torch.device(device),
                )
                lay.length = self.reused_tokens
                if self.layered:
                    lay.pfx = (hashes[reused_blocks - 1], self.reused_tokens)
        log.info("prefix reuse: %d of %d prompt tokens", self.reused_tokens, len(token_ids))
        return self.reused_tokens

    def _find_prefix_blocks(self, hashes: Sequence[str], usable: int) -> int:
        """Leading full blocks whose block objects all exist (block layout)."""
        keys = [
            self._key(layer, kind, b, hashes)
            for b in range(usable)
            for layer in range(len(self.layers))
            for kind in "kv"
        ]
        present = self.backend.contains_many(keys) if keys else []
        per_block = 2 * len(self.layers)
        reused_blocks = 0
        for b in range(usable):
            if not all(present[b * per_block : (b + 1) * per_block]):
                break
            reused_blocks += 1
        return reused_blocks

    def _find_prefix_object(self, hashes: Sequence[str], usable: int, token_bytes: int) -> int:
        """The most full blocks held by one stored prefix object per layer (layer objects).

        Where the backend can stat (the SDK), a prefix object counts only when it holds all its
        bytes: the write-behind reserves and then appends it, so one reserved but not yet (or,
        after a crash in between, never) filled is skipped instead of read past its end."""
        if usable == 0:
            return 0
        first = [self._pfx_key(hashes[b - 1], 0, "k") for b in range(1, usable + 1)]
        found = [b for b, ok in zip(range(1, usable + 1), self.backend.contains_many(first)) if ok]
        stat_many = getattr(self.backend, "stat_many", None)
        for b in sorted(found, reverse=True):
            n = len(self.layers)
            keys = [self._pfx_key(hashes[b - 1], i, k) for i in range(n) for k in "kv"]
            if stat_many is None:
                complete = all(self.backend.contains_many(keys))
            else:
                want = b * self.block_tokens * token_bytes
                complete = all(i is not None and i.size == want for i in stat_many(keys))
            if complete:
                return b
        return 0

    # -- lifecycle ---------------------------------------------------------------------------

    def finish(self) -> None:
        """Drop pending prefetches and wait until every write-back is stored."""
        self._close_step()
        if self._pipeline is not None:
            self._pipeline.flush()

    @property
    def resident_layers(self) -> int:
        """Layers whose KV is held in process memory now."""
        return len(self.resident)

    def close(self) -> None:
        """`finish`, delete this sequence's ephemeral objects and stop the pipeline threads."""
        if self._pipeline is None:
            return
        try:
            self.finish()
            if self._ephemeral_keys:
                self.backend.delete_many(sorted(self._ephemeral_keys))
                self._ephemeral_keys.clear()
        finally:
            self.resident.clear()
            self._pipeline.close()
            self._pipeline = None

    def __enter__(self) -> DualBladeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pipeline(self) -> LayerPipeline | None:
        return self._pipeline

    # -- internals ---------------------------------------------------------------------------

    def _ensure_pipeline(self, device: torch.device) -> LayerPipeline:
        if self._pipeline is None:
            self._pipeline = LayerPipeline(self.backend, device=device, **self._pipeline_args)
            budget = self._resident_arg
            if budget == "auto":
                cpu = torch.device(device).type == "cpu"
                budget = (mem_available_bytes() or 0) // 4 if cpu else 0
            self.resident = ResidentKV(budget)
        return self._pipeline

    def _key(self, layer: int, kind: str, block: int, hashes: Sequence[str] | None = None) -> bytes:
        hashes = self._prefix_hashes if hashes is None else hashes
        if block < len(hashes):
            return f"db/pfx/{hashes[block]}/L{layer}/{kind}/B{block}".encode()
        return f"db/seq/{self.sequence_id}/L{layer}/{kind}/B{block}".encode()

    def _read_for(self, layer_idx: int, length: int) -> LayerRead | None:
        layer: DualBladeLayer = self.layers[layer_idx]
        at = (layer_idx, length, layer.gen, layer.pfx)
        cached = self._read_cache.get(at, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        read = self._build_read(layer_idx, length)
        if len(self._read_cache) > 4 * len(self.layers):
            self._read_cache.clear()  # only this step's and the next step's are ever asked for
        self._read_cache[at] = read
        return read

    def _build_read(self, layer_idx: int, length: int) -> LayerRead | None:
        if length == 0:
            return None
        layer: DualBladeLayer = self.layers[layer_idx]
        if self.layered:  # K: prefix range + sequence range, then V the same way
            pfx_tokens = layer.pfx[1] if layer.pfx else 0
            segs = []
            for kind in "kv":
                per_token = layer.token_bytes(kind)
                if layer.pfx is not None:
                    segs.append(
                        Segment(
                            self._pfx_key(layer.pfx[0], layer_idx, kind), pfx_tokens * per_token
                        )
                    )
                if length > pfx_tokens:
                    key = self._seq_key(layer_idx, kind, layer.gen)
                    segs.append(Segment(key, (length - pfx_tokens) * per_token))
            return LayerRead(tuple(segs), align=self._align, ranged=True)
        segments = []
        for kind in "kv":
            per_token = layer.token_bytes(kind)
            for b in range(-(-length // self.block_tokens)):
                tokens = min(self.block_tokens, length - b * self.block_tokens)
                segments.append(Segment(self._key(layer_idx, kind, b), tokens * per_token))
        return LayerRead(tuple(segments), align=self._align)

    def _open_step(self, lengths: tuple[int, ...]) -> None:
        self.resident.fit()  # evicted layers are read back from this step on
        resident = self.resident
        reads = [None if i in resident else self._read_for(i, n) for i, n in enumerate(lengths)]
        self._pipeline.begin_step(reads)
        self._planned = lengths
        self._step_open = True
        self._last_idx = -1

    def _close_step(self) -> None:
        if self._step_open and self._pipeline is not None:
            self._pipeline.end_step()
        self._step_open = False
        self._planned = None
        self._send_batch()

    def _send_batch(self) -> None:
        """Queue this step's deferred reserves and appends as one write (before any read that
        the next step plans, so such a read waits for them)."""
        if self._pipeline is not None and (self._batch_items or self._batch_reserve):
            self._pipeline.append(0, self._batch_items, reserve=self._batch_reserve)
        self._batch_items, self._batch_reserve, self._batch_bytes = [], [], 0

    def _unpack(self, layer_idx: int, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer: DualBladeLayer = self.layers[layer_idx]
        read = self._read_for(layer_idx, layer.length)
        nblocks = len(read.segments) // 2
        out = []
        for part, (heads, dim) in enumerate((layer.k_shape, layer.v_shape)):
            segs = read.segments[part * nblocks : (part + 1) * nblocks]
            offs = read.offsets[part * nblocks : (part + 1) * nblocks]
            adjacent = all(offs[i] + segs[i].nbytes == offs[i + 1] for i in range(len(segs) - 1))
            if adjacent:
                total = sum(s.nbytes for s in segs)
                flat = buf[offs[0] : offs[0] + total].view(layer.dtype)
                tensor = flat.view(-1, layer.batch, heads, dim)
            else:  # per-block views only when they must be concatenated (a view per block
                # per layer per token was a visible cost in the demo's profile)
                tensor = torch.cat(
                    [
                        buf[o : o + s.nbytes].view(layer.dtype).view(-1, layer.batch, heads, dim)
                        for s, o in zip(segs, offs)
                    ],
                    dim=0,
                )
            out.append(tensor.permute(1, 2, 0, 3))  # [T, B, H, D] -> [B, H, T, D], a view
        return out[0], out[1]

    def _pfx_key(self, digest: str, layer: int, kind: str) -> bytes:
        return f"db/pfx/{digest}/L{layer}/{kind}".encode()

    def _seq_key(self, layer: int, kind: str, gen: int) -> bytes:
        return f"db/seq/{self.sequence_id}/L{layer}/{kind}/g{gen}".encode()

    def _write_layer(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, old: int, *, defer: bool
    ) -> None:
        """Layer objects: append the new tokens; publish the prompt's full blocks as a prefix
        object; grow the sequence object into a new generation when it is full. Reserves go
        with the appends (write-behind); `defer` joins this step's batch instead of queueing
        a write for this layer alone (resident layers: nothing reads them back this step)."""
        layer: DualBladeLayer = self.layers[layer_idx]
        reserve: list[tuple[bytes, int, bool]] = []
        items: list[tuple[bytes, torch.Tensor]] = []
        new = keys.shape[-2]
        tensors = (("k", keys), ("v", values))
        n_full = len(self._prefix_hashes) * self.block_tokens
        pfx_tokens = layer.pfx[1] if layer.pfx else 0
        fresh = False
        if n_full and pfx_tokens < n_full <= new:
            digest = self._prefix_hashes[-1]
            for kind, t in tensors:
                key = self._pfx_key(digest, layer_idx, kind)
                reserve.append((key, n_full * layer.token_bytes(kind), True))
                items.append((key, t[:, :, :n_full, :].permute(2, 0, 1, 3)))
            layer.pfx, pfx_tokens = (digest, n_full), n_full
            fresh = True  # the sequence object restarts after the prefix
        need = new - pfx_tokens
        start = old
        if need > 0 and (fresh or need > layer.seq_capacity):
            cap = max(2 * self.block_tokens, 1 << (2 * need - 1).bit_length())
            layer.gen += 1
            layer.seq_capacity = cap
            for kind, _ in tensors:
                key = self._seq_key(layer_idx, kind, layer.gen)
                reserve.append((key, cap * layer.token_bytes(kind), False))
                self._ephemeral_keys.add(key)
            start = pfx_tokens  # the new generation is filled from what we hold
        if need > 0:
            items += [
                (
                    self._seq_key(layer_idx, kind, layer.gen),
                    t[:, :, start:new, :].permute(2, 0, 1, 3),
                )
                for kind, t in tensors
            ]
        if not defer:
            self._pipeline.append(layer_idx, items, reserve=reserve)
            return
        self._batch_items += items
        self._batch_reserve += reserve
        self._batch_bytes += sum(t.nbytes for _, t in items)
        if self._batch_bytes >= self._pipeline.config.staging_bytes // 4:
            self._send_batch()  # bound the write staging one batch holds

    def _write_blocks(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, old: int
    ) -> None:
        new = keys.shape[-2]
        first, last = old // self.block_tokens, (new - 1) // self.block_tokens
        prefix, ephemeral = [], []
        for b in range(first, last + 1):
            lo, hi = b * self.block_tokens, min((b + 1) * self.block_tokens, new)
            for kind, tensor in (("k", keys), ("v", values)):
                key = self._key(layer_idx, kind, b)
                item = (key, tensor[:, :, lo:hi, :].permute(2, 0, 1, 3))
                (prefix if b < len(self._prefix_hashes) else ephemeral).append(item)
        if prefix:
            self._pipeline.writeback(layer_idx, prefix, persistent=True)
        if ephemeral:
            self._ephemeral_keys.update(key for key, _ in ephemeral)
            self._pipeline.writeback(layer_idx, ephemeral)


def _default_model_tag(config: PretrainedConfig) -> str:
    parts = [
        getattr(config, "name_or_path", "") or "",
        getattr(config, "model_type", ""),
        str(config.num_hidden_layers),
        str(getattr(config, "hidden_size", "")),
        str(getattr(config, "num_key_value_heads", "")),
        str(getattr(config, "vocab_size", "")),
    ]
    return "/".join(parts)


def generate_with_prefix_reuse(
    model: PreTrainedModel, input_ids: torch.Tensor, cache: DualBladeCache, **kwargs: Any
) -> torch.Tensor:
    """``model.generate`` that reuses (and publishes) stored KV for the prompt's prefix.

    `input_ids` must be one sequence (batch 1) and `cache` fresh. Returns what ``generate``
    returns (prompt + new tokens). The cache's writes are flushed before returning, so the
    prompt's prefix blocks are stored for the next request. See the module docstring for limits.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError("prefix reuse supports batch size 1 (input_ids of shape [1, T])")
    cache.load_prefix(input_ids[0].tolist(), dtype=model.dtype, device=model.device)
    kwargs.setdefault("attention_mask", torch.ones_like(input_ids))
    out = model.generate(input_ids, **generate_kwargs(model, cache), **kwargs)
    cache.finish()
    return out
