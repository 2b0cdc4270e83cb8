"""A real vLLM ``OffloadingSpec`` made without an engine: what the tier's benchmark and tests use.

vLLM builds its spec from a whole ``VllmConfig`` (a model, a GPU). ``DualBladeTier`` reads only
the spec's :class:`OffloadingConfig` (geometry, model, parallel layout, ``extra_config``), so
the benchmark (``dualblade-bench vllm-tier``) and ``tests/integrations/test_vllm_tier.py`` build
that config from vLLM's own frozen dataclasses and wrap it in a spec whose scheduler manager
and GPU worker are never made. One place, so both follow vLLM's config fields together.

vLLM is optional: it is imported when a function here is called, never at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["offloading_config", "standalone_spec"]


def offloading_config(
    *,
    layer_names: Sequence[str],
    kv_bytes_per_block: int,
    blocks_per_chunk: int,
    engine_id: str,
    model: str,
    dtype: str,
    tp_size: int = 1,
    rank: int = 0,
    agnostic: bool = False,
    events: bool = False,
    extra: dict[str, Any] | None = None,
) -> Any:
    """vLLM 0.33's ``OffloadingConfig`` for one KV group of 16-token blocks, hashed every 16
    tokens, with tensor parallelism only (``tp_size`` ranks, this one ``rank``)."""
    from vllm.v1.kv_offload.config import (
        OffloadingCacheConfig,
        OffloadingConfig,
        OffloadingGroupConfig,
        OffloadingModelConfig,
        OffloadingParallelConfig,
    )

    return OffloadingConfig(
        groups=(
            OffloadingGroupConfig(tokens_per_block=16, layer_names=tuple(layer_names), group_id=0),
        ),
        worker_kv_bytes_per_block=kv_bytes_per_block,
        enable_kv_cache_events=events,
        extra_config=extra or {},
        engine_id=engine_id,
        model=OffloadingModelConfig(name=model, dtype=dtype),
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=blocks_per_chunk),
        parallel=OffloadingParallelConfig(
            rank=rank,
            world_size=tp_size,
            tp_size=tp_size,
            pp_size=1,
            pcp_size=1,
            dcp_size=1,
            data_parallel_index=0,
            data_parallel_size=1,
            data_parallel_rank_local=None,
            is_parallelism_agnostic=agnostic,
        ),
    )


def standalone_spec(config: Any) -> Any:
    """A real ``OffloadingSpec`` over ``config``; asking it for its scheduler manager or GPU
    worker raises (the tier is made through ``SecondaryTierFactory`` from it directly)."""
    from vllm.v1.kv_offload.base import OffloadingSpec

    class StandaloneSpec(OffloadingSpec):
        def get_manager(self) -> Any:
            raise NotImplementedError("the tier is made directly through SecondaryTierFactory")

        def get_worker(self, kv_caches: Any) -> Any:
            raise NotImplementedError("no vLLM GPU worker is made here")

    return StandaloneSpec(config)
