"""Where a vLLM engine's chunks live in dualblade: the key namespace and the default tenant.

A stored chunk is only valid for an engine that would have produced the same bytes, so every key
starts with a prefix derived from what fixes those bytes: the model and its KV dtype, the chunk
geometry (tokens per hash, blocks per chunk, bytes per block and per chunk, the KV groups and their
layers), the host layout (replicated / canonical), and -- unless vLLM says the layout is
parallelism-agnostic -- the rank and the parallel sizes. A different model or geometry therefore
lands in another namespace and can never hit; two engines with the same configuration share one,
which is prefix reuse across processes and restarts.

Key layout (bytes): ``b"vllm/" + <32 hex digits of sha256(fields)> + b"/" + <vLLM OffloadKey>``.
``NAMESPACE_FORMAT`` is part of the hashed fields; bump it when the stored chunk format changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

NAMESPACE_FORMAT = 1
KEY_ROOT = b"vllm/"
_TENANT_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_TENANT_MAX = 64  # the daemon's tenant syntax: [A-Za-z0-9._-]{1,64}


def namespace_fields(spec: Any, chunk_bytes: int) -> dict[str, Any]:
    """The facts that fix a chunk's bytes, from a vLLM ``OffloadingSpec`` (duck-typed).

    ``chunk_bytes`` is the primary pool's row stride: what one stored object holds.
    """
    config = spec.config
    parallel = config.parallel
    fields: dict[str, Any] = {
        "format": NAMESPACE_FORMAT,
        "model": config.model.name,
        "kv_dtype": str(config.model.dtype),
        "tokens_per_hash": config.cache.tokens_per_hash,
        "blocks_per_chunk": config.cache.blocks_per_chunk,
        "worker_kv_bytes_per_block": config.worker_kv_bytes_per_block,
        "chunk_bytes": int(chunk_bytes),
        "groups": [[g.tokens_per_block, list(g.layer_names)] for g in config.groups],
        "replicated_layout": bool(config.replicated_layout),
        "canonical_layout": bool(config.canonical_layout),
        "kv_cache_layout": config.kv_cache_layout,
    }
    if not (parallel.is_parallelism_agnostic or config.replicated_layout):
        fields["parallel"] = {
            "rank": parallel.rank,
            "world_size": parallel.world_size,
            "tp_size": parallel.tp_size,
            "pp_size": parallel.pp_size,
            "pcp_size": parallel.pcp_size,
            "dcp_size": parallel.dcp_size,
        }
    return fields


def key_prefix(fields: dict[str, Any]) -> bytes:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return KEY_ROOT + digest.encode() + b"/"


def default_tenant(model_name: str) -> str:
    """A daemon-legal tenant name from a model name (``meta-llama/Llama-3.1-8B`` ->
    ``meta-llama_Llama-3.1-8B``); long names keep a hash suffix so two never collide."""
    name = _TENANT_CHARS.sub("_", model_name).strip("_") or "vllm"
    if len(name) <= _TENANT_MAX:
        return name
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    return f"{name[: _TENANT_MAX - 9]}-{digest}"
