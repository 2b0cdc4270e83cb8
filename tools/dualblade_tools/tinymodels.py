"""Tiny randomly initialised Llama and Qwen2 models, built offline (no hub, no tokenizer).

Shared by the tests, the demo and the GPU check: greedy generation with such a model is
deterministic, so DualBladeCache's tokens can be compared with DynamicCache's exactly.
"""

from __future__ import annotations

import os
from typing import Any

#: The shape the tests use: 4 layers, grouped-query attention (4 heads, 2 KV heads).
TEST_SHAPE: dict[str, int] = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

KINDS = ("llama", "qwen2")


def tiny_model(kind: str = "llama", *, seed: int = 0, **shape: int) -> Any:
    """An eval-mode ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` with ``TEST_SHAPE`` + ``shape``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if kind not in classes:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {', '.join(KINDS)}")
    config_cls, model_cls = classes[kind]
    torch.manual_seed(seed)
    return model_cls(config_cls(**{**TEST_SHAPE, **shape})).eval()
