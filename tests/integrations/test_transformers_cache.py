"""DualBladeCache with real transformers generate on tiny random Llama / Qwen2 models (CPU).

The models are built offline from configs (no hub, no tokenizer). The backend is the in-memory
test double; what is checked is that every past-KV byte the model attended to went through it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache, LlamaConfig  # noqa: E402

from dualblade.integrations import transformers as dbt  # noqa: E402
from dualblade.pipeline import InMemoryBackend  # noqa: E402
from dualblade_tools.tinymodels import TEST_SHAPE, tiny_model  # noqa: E402

NEW = 5


def build(kind: str):
    return tiny_model(kind)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    return build(request.param)


def greedy(model, ids, cache):
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
        **dbt.generate_kwargs(model, cache),
    )


def reference(model, ids):
    return greedy(model, ids, DynamicCache(config=model.config))


@pytest.mark.parametrize("batch", [1, 2])
def test_generate_matches_dynamic_cache_and_kv_goes_through_backend(model, batch) -> None:
    ids = torch.randint(0, 128, (batch, 19), generator=torch.Generator().manual_seed(batch))
    backend = InMemoryBackend()
    with dbt.DualBladeCache(
        backend, model.config, window=2, block_tokens=8, resident_bytes=0
    ) as cache:
        out = greedy(model, ids, cache)
        cache.finish()
        stats = cache.pipeline.stats()
        c = backend.counters()
        # No layer keeps KV between updates: residency is only the pipeline's window.
        assert all(layer.keys is None for layer in cache.layers)
        assert cache.resident_layers == 0
        assert cache.get_seq_length() == 19 + NEW - 1
    assert torch.equal(out, reference(model, ids))
    assert stats.depth <= 1  # window 2: one layer computing, at most one prefetched
    # Each decode step (NEW - 1 of them) reads every layer's whole past KV back.
    layers, heads, dim, elt = 4, 2, 16, 4
    token_bytes = 2 * batch * heads * dim * elt  # K and V
    expected = sum(layers * (19 + s) * token_bytes for s in range(NEW - 1))
    assert c.get_bytes >= expected
    assert c.put_bytes >= layers * (19 + NEW - 1) * token_bytes
    # close() removed this sequence's ephemeral objects.
    assert backend.counters().objects == 0


@pytest.mark.parametrize("layout", ["blocks", "layers"])
def test_prefix_reuse_skips_prefix_compute_and_reads_it_from_backend(model, layout) -> None:
    ids = torch.randint(0, 128, (1, 21), generator=torch.Generator().manual_seed(7))
    ref = reference(model, ids)
    backend = InMemoryBackend()
    seen_lengths: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: seen_lengths.append(args[0].shape[-1])
    )
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    try:
        with dbt.DualBladeCache(backend, model.config, block_tokens=8, layout=layout) as first:
            out1 = dbt.generate_with_prefix_reuse(model, ids, first, **kw)
            assert first.reused_tokens == 0
        backend.drop_ephemeral()  # a new session: only persistent prefix blocks survive
        # blocks: 2 full blocks x 4 layers x K+V; layers: one prefix object per layer and K/V
        per_layer_kv = 2 if layout == "blocks" else 1
        assert backend.counters().persistent_objects == per_layer_kv * 4 * 2
        first_prefill = seen_lengths[0]
        seen_lengths.clear()
        backend.keys_read.clear()
        with dbt.DualBladeCache(backend, model.config, block_tokens=8, layout=layout) as second:
            out2 = dbt.generate_with_prefix_reuse(model, ids, second, **kw)
            assert second.reused_tokens == 16
    finally:
        hook.remove()
    assert torch.equal(out1, ref)
    assert torch.equal(out2, ref)
    assert first_prefill == 21
    assert seen_lengths[0] == 21 - 16  # only the uncached tail was computed
    prefix_reads = {k for k in backend.keys_read if k.startswith(b"db/pfx/")}
    assert len(prefix_reads) == per_layer_kv * 4 * 2


def test_layer_objects_reuse_an_earlier_prompt_that_this_one_extends(model) -> None:
    """A conversation: the second prompt is the first plus more tokens. One ranged read per
    layer and K/V serves the reused prefix; the extended prompt publishes its own prefix."""
    backend = InMemoryBackend()
    first = torch.randint(0, 128, (1, 17), generator=torch.Generator().manual_seed(5))
    more = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(6))
    second = torch.cat([first, more], dim=1)  # 26 tokens: 3 full blocks of 8
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    with dbt.DualBladeCache(backend, model.config, block_tokens=8, layout="layers") as cache:
        dbt.generate_with_prefix_reuse(model, first, cache, **kw)
    backend.drop_ephemeral()
    with dbt.DualBladeCache(backend, model.config, block_tokens=8, layout="layers") as cache:
        assert cache.layered
        out = dbt.generate_with_prefix_reuse(model, second, cache, **kw)
        assert cache.reused_tokens == 16
        reads = cache.pipeline.stats().read_calls
        steps = cache.pipeline.stats().steps
    assert torch.equal(out, reference(model, second))
    assert reads <= 4 * steps  # one ranged read batch per layer per step, 4 layers
    backend.drop_ephemeral()
    assert backend.counters().persistent_objects == 2 * 4 * 2  # the 2-block and 3-block prefixes


def test_prefix_reuse_with_a_different_prompt_reuses_only_the_common_blocks(model) -> None:
    backend = InMemoryBackend()
    base = torch.randint(0, 128, (1, 25), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=2, do_sample=False, pad_token_id=0)
    with dbt.DualBladeCache(backend, model.config, block_tokens=8, layout="blocks") as cache:
        dbt.generate_with_prefix_reuse(model, base, cache, **kw)
    other = base.clone()
    other[0, 12] = (other[0, 12] + 1) % 128  # differs inside block 1
    with dbt.DualBladeCache(backend, model.config, block_tokens=8, layout="blocks") as cache:
        out = dbt.generate_with_prefix_reuse(model, other, cache, **kw)
        assert cache.reused_tokens == 8
    assert torch.equal(out, model.generate(other, attention_mask=torch.ones_like(other), **kw))


def test_beam_search_is_refused(model) -> None:
    ids = torch.randint(0, 128, (1, 6))
    with (
        dbt.DualBladeCache(InMemoryBackend(), model.config) as cache,
        pytest.raises(NotImplementedError),
    ):
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=2,
            num_beams=2,
            pad_token_id=0,
            **dbt.generate_kwargs(model, cache),
        )


def test_window_must_leave_room_to_prefetch() -> None:
    with pytest.raises(ValueError):
        dbt.DualBladeCache(InMemoryBackend(), LlamaConfig(**TEST_SHAPE), window=1)


def test_cache_kwarg_installed_version() -> None:
    model = build("llama")
    if dbt._version_tuple(transformers.__version__) >= (5, 24):
        assert dbt.generate_kwargs(model, "C") == {"cache": "C"}
    else:
        assert dbt.generate_kwargs(model, "C") == {"past_key_values": "C"}


def test_cache_kwarg_older_signature() -> None:
    class Old:  # the 4.57 .. 5.23 shape: forward takes past_key_values
        def generate(self, inputs=None, **kwargs): ...

        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    assert dbt.generate_kwargs(Old(), "C") == {"past_key_values": "C"}


@pytest.mark.parametrize(("version", "name"), [("4.57.6", "past_key_values"), ("5.24.0", "cache")])
def test_cache_kwarg_falls_back_to_version(monkeypatch, version, name) -> None:
    class Opaque:
        def generate(self, *args, **kwargs): ...

        def forward(self, *args, **kwargs): ...

    monkeypatch.setattr(dbt.transformers, "__version__", version)
    assert dbt.cache_kwarg_name(Opaque()) == name


def test_importing_dualblade_does_not_import_transformers() -> None:
    code = (
        "import sys, dualblade, dualblade.pipeline, dualblade.integrations; "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generate_on_cuda_matches_dynamic_cache() -> None:
    model = build("llama").to("cuda")
    ids = torch.randint(0, 128, (1, 19), generator=torch.Generator().manual_seed(5)).to("cuda")
    backend = InMemoryBackend()
    with dbt.DualBladeCache(backend, model.config, window=3, block_tokens=8) as cache:
        out = greedy(model, ids, cache)
        cache.finish()
    assert torch.equal(out, reference(model, ids))
    assert backend.counters().get_bytes > 0


def test_layer_objects_grow_into_a_new_generation_and_match_dynamic_cache(model) -> None:
    """A 5-token prompt reserves room for 16 tokens; 20 new tokens outgrow it, so the sequence
    object moves to a new generation (room for twice what it holds) filled from the KV in hand."""
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(11))
    kw = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    backend = InMemoryBackend()
    with dbt.DualBladeCache(backend, model.config, block_tokens=2, layout="layers") as cache:
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), **kw, **dbt.generate_kwargs(model, cache)
            )
        cache.finish()
        gens = {lay.gen for lay in cache.layers}
        caps = {lay.seq_capacity for lay in cache.layers}
    assert gens == {2} and caps == {64}  # 17 tokens needed: twice that, to a power of two
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    assert torch.equal(out, ref)
    assert backend.counters().objects == 0  # every generation was deleted at close


def _layer_kv_bytes(tokens: int, batch: int = 1) -> int:
    """K plus V bytes of one layer of the test shape (2 KV heads x 16, fp32)."""
    return 2 * batch * 2 * 16 * 4 * tokens


@pytest.mark.parametrize("batch", [1, 2])
def test_resident_kv_reads_nothing_back_and_still_stores_every_token(model, batch) -> None:
    """The default on a CPU model: KV that fits stays in memory; the backend still gets every
    token (write-behind, one append batch per step), stored once `finish` returns."""
    ids = torch.randint(0, 128, (batch, 19), generator=torch.Generator().manual_seed(batch))
    backend = InMemoryBackend()
    with dbt.DualBladeCache(backend, model.config, window=2, block_tokens=8) as cache:
        out = greedy(model, ids, cache)
        cache.finish()
        stats = cache.pipeline.stats()
        assert cache.resident_layers == 4
        stored = sum(len(data) for k, data in backend._objects.items() if b"/g" in k)
    assert torch.equal(out, reference(model, ids))
    assert stats.read_calls == 0 and backend.counters().get_bytes == 0
    assert stored == 4 * _layer_kv_bytes(19 + NEW - 1, batch)
    assert stats.writes <= NEW  # one batched write per step (prefill included), not per layer


def test_a_small_resident_budget_evicts_the_top_layers_and_reads_them_back(model) -> None:
    """Room for about two layers: the others are evicted (or never adopted) and read back from
    the backend each step; the tokens do not change."""
    ids = torch.randint(0, 128, (1, 19), generator=torch.Generator().manual_seed(4))
    budget = 2 * _layer_kv_bytes(64)  # two layers at capacity 64 (>= 2 x 24 tokens, a power of 2)
    backend = InMemoryBackend()
    with dbt.DualBladeCache(
        backend, model.config, block_tokens=8, resident_bytes=budget, layout="layers"
    ) as cache:
        out = greedy(model, ids, cache)
        cache.finish()
        assert cache.resident.total <= budget
        resident = cache.resident_layers
        read_keys = {k.split(b"/")[3] for k in backend.keys_read}
    assert torch.equal(out, reference(model, ids))
    assert 1 <= resident < 4
    assert read_keys == {f"L{i}".encode() for i in range(resident, 4)}  # only the top layers


def test_an_evicted_layer_reads_what_the_write_behind_stored() -> None:
    """Growth past the budget evicts a layer in the middle of a generation: its next read must
    wait for the queued appends (the backend is slowed so they are still in flight)."""
    model = build("llama")
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(9))
    kw = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0)
    backend = InMemoryBackend(write_latency_s=0.002)
    budget = 4 * _layer_kv_bytes(32)  # all 4 layers until they outgrow 32 tokens
    with dbt.DualBladeCache(
        backend, model.config, block_tokens=4, resident_bytes=budget, layout="layers"
    ) as cache:
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), **kw, **dbt.generate_kwargs(model, cache)
            )
        cache.finish()
        assert cache.resident.evictions >= 1
    assert torch.equal(out, model.generate(ids, attention_mask=torch.ones_like(ids), **kw))
    assert backend.counters().get_bytes > 0


def test_resident_bytes_must_be_a_size_or_auto() -> None:
    with pytest.raises(ValueError):
        dbt.DualBladeCache(InMemoryBackend(), LlamaConfig(**TEST_SHAPE), resident_bytes=-1)
