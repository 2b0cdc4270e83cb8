"""Client-side adaptive I/O-compute pipeline for offloaded KV (needs torch).

`LayerPipeline` overlaps per-layer KV reads and write-backs through a `KVBackend` with model
compute; `AdaptiveController` picks the prefetch depth and chunk size from measured timings.
`backend` (the protocol and `InMemoryBackend`) and `adaptive` do not import torch.
"""

from __future__ import annotations

from .adaptive import AdaptiveConfig, AdaptiveController, PipelinePlan
from .backend import BackendCounters, InMemoryBackend, KVBackend, StagingBackend

__all__ = [
    "AdaptiveConfig",
    "AdaptiveController",
    "BackendCounters",
    "InMemoryBackend",
    "KVBackend",
    "LayerPipeline",
    "LayerRead",
    "PipelinePlan",
    "Segment",
    "StagingBackend",
]


def __getattr__(name: str) -> object:
    # The pipeline itself needs torch; import it only when asked for.
    if name in {"LayerPipeline", "LayerRead", "Segment", "PipelineStats"}:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
