"""DualBladeCache on the real daemon: same tokens as DynamicCache, and the KV really went there.

Nothing is mocked: `DaemonProcess` runs ``python -m dualbladed`` on a file namespace under
tmp_path, the backend is `dualblade.Client` over the real sockets and shared arena, and the
models are tiny randomly initialised Llama / Qwen2 stacks (4 layers, built offline from configs).
The daemon's own per-tenant counters (Admin Status, allowed because the tests run as root or as
the daemon's owner) prove the bytes went through it.
"""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402

from dualblade import Client  # noqa: E402
from dualblade.integrations import transformers as dbt  # noqa: E402
from dualblade.v1 import dualblade_pb2 as pb  # noqa: E402
from dualblade_tools.daemonproc import DaemonProcess  # noqa: E402
from dualblade_tools.tinymodels import tiny_model  # noqa: E402

NEW = 6
PROMPT = 21
BLOCK = 8


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with DaemonProcess(tmp_path_factory.mktemp("d")) as d:
        yield d


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    return tiny_model(request.param)


def connect(daemon: DaemonProcess, tenant: str) -> Client:
    return Client.connect(daemon.socket, tenant=tenant, arena_bytes=32 << 20)


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


def io_bytes(client: Client) -> dict[str, int]:
    """The daemon's byte counters for this client's tenant, summed over residency paths and
    over block ops (put/get) and layer-object ops (append/readrange)."""
    status = client.admin.Status(pb.StatusRequest(), metadata=client._metadata)
    out = {"put": 0, "get": 0}
    # layer objects (issue 12) move their bytes with append / readrange ops
    ops = {"put": "put", "append": "put", "get": "get", "readrange": "get"}
    for m in status.metrics:
        if m.tenant == client.tenant and m.op in ops:
            out[ops[m.op]] += m.bytes
    return out


def kv_token_bytes(model) -> int:
    """Bytes of K plus V for one token of one layer (batch 1)."""
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_key_value_heads * head_dim * model.dtype.itemsize


@pytest.mark.parametrize("batch", [1, 2])
def test_generate_on_the_daemon_matches_dynamic_cache(daemon, model, batch) -> None:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 128, (batch, PROMPT), generator=gen)
    expected = greedy(model, ids, DynamicCache(config=model.config))
    with connect(daemon, f"gen-{uuid.uuid4().hex[:8]}") as client:
        before = io_bytes(client)
        with dbt.DualBladeCache(
            client, model.config, window=2, block_tokens=BLOCK, resident_bytes=0
        ) as cache:
            out = greedy(model, ids, cache)
            cache.finish()
            stats = cache.pipeline.stats()
            # Every layer's KV is in the daemon, under this sequence's keys.
            stored = client.list(f"db/seq/{cache.sequence_id}/".encode())
        after = io_bytes(client)
        # close() deleted the sequence's ephemeral objects.
        assert client.list(f"db/seq/{cache.sequence_id}/".encode()) == []
    assert torch.equal(out, expected)

    layers = model.config.num_hidden_layers
    per_token = batch * kv_token_bytes(model)
    total_tokens = PROMPT + NEW - 1  # the last token's KV is never computed
    assert sum(o.size for o in stored) == layers * total_tokens * per_token
    # Decode step s (s = 1 .. NEW-1) reads every layer's whole past: PROMPT + s - 1 tokens.
    expected_reads = sum(layers * (PROMPT + s - 1) * per_token for s in range(1, NEW))
    put = after["put"] - before["put"]
    get = after["get"] - before["get"]
    assert put >= layers * total_tokens * per_token
    assert get >= expected_reads
    assert stats.read_bytes >= expected_reads
    assert get >= stats.read_bytes  # the pipeline's reads are exactly what the daemon served


def test_resident_kv_on_the_daemon_is_written_behind_and_stored_at_finish(daemon, model) -> None:
    """The default on a CPU model: the KV stays in memory (nothing is read back) and every token
    is in the daemon once `finish` returns -- what the cache acknowledges is stored."""
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(3))
    expected = greedy(model, ids, DynamicCache(config=model.config))
    with connect(daemon, f"res-{uuid.uuid4().hex[:8]}") as client:
        before = io_bytes(client)
        with dbt.DualBladeCache(client, model.config, window=2, block_tokens=BLOCK) as cache:
            out = greedy(model, ids, cache)
            cache.finish()
            stats = cache.pipeline.stats()
            resident = cache.resident_layers
            stored = client.list(f"db/seq/{cache.sequence_id}/".encode())
        after = io_bytes(client)
    assert torch.equal(out, expected)
    layers = model.config.num_hidden_layers
    assert resident == layers
    assert stats.read_calls == 0 and after["get"] == before["get"]
    assert stats.writes <= NEW  # one append batch per step
    total_tokens = PROMPT + NEW - 1
    assert sum(o.size for o in stored) == layers * total_tokens * kv_token_bytes(model)


def test_prefix_reuse_through_the_daemon(daemon, model) -> None:
    ids = torch.randint(0, 128, (1, 25), generator=torch.Generator().manual_seed(7))
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    tenant = f"pfx-{uuid.uuid4().hex[:8]}"
    tag = f"test-{uuid.uuid4().hex}"  # fresh prefix keys for this model and run
    with (
        connect(daemon, tenant) as first,
        dbt.DualBladeCache(first, model.config, block_tokens=BLOCK, model_tag=tag) as cache,
    ):
        out1 = dbt.generate_with_prefix_reuse(model, ids, cache, **kw)
        assert cache.reused_tokens == 0
    # A new session (the first one's ephemeral objects are gone) finds the persistent prefix.
    with connect(daemon, tenant) as second:
        prefix = second.list(b"db/pfx/")
        reused_blocks = (ids.shape[1] - 1) // BLOCK
        layers = model.config.num_hidden_layers
        # block layout: one object per block, layer and K/V; layer objects: one per layer and
        # K/V holding the prompt's full blocks
        assert len(prefix) >= (layers * 2 if cache.layered else reused_blocks * layers * 2)
        assert sum(o.size for o in prefix) >= reused_blocks * BLOCK * layers * kv_token_bytes(model)
        assert all(o.persistent for o in prefix)
        before = io_bytes(second)
        with dbt.DualBladeCache(second, model.config, block_tokens=BLOCK, model_tag=tag) as cache:
            out2 = dbt.generate_with_prefix_reuse(model, ids, cache, **kw)
            assert cache.reused_tokens == reused_blocks * BLOCK
        after = io_bytes(second)
    assert torch.equal(out1, expected)
    assert torch.equal(out2, expected)
    prefix_bytes = reused_blocks * BLOCK * layers * kv_token_bytes(model)
    assert after["get"] - before["get"] >= prefix_bytes


def test_a_prefix_object_reserved_but_never_filled_is_not_reused(daemon, model) -> None:
    """A crash between the write-behind's reserve and its append leaves empty persistent prefix
    objects: a later request must recompute that prefix, not read past their end."""
    ids = torch.randint(0, 128, (1, 25), generator=torch.Generator().manual_seed(8))
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    tag = f"test-{uuid.uuid4().hex}"
    with connect(daemon, f"half-{uuid.uuid4().hex[:8]}") as client:
        probe = dbt.DualBladeCache(client, model.config, block_tokens=BLOCK, model_tag=tag)
        assert probe.layered
        digest = probe.prefix_hashes(ids[0].tolist(), model.dtype)[-1]
        layers = model.config.num_hidden_layers
        for layer in range(layers):
            for kind in "kv":  # what a reserve without its append leaves behind
                client.reserve(probe._pfx_key(digest, layer, kind), 1 << 16, persistent=True)
        with dbt.DualBladeCache(client, model.config, block_tokens=BLOCK, model_tag=tag) as cache:
            out = dbt.generate_with_prefix_reuse(model, ids, cache, **kw)
            assert cache.reused_tokens == 0
        # ...and that request's own write-behind replaced them with complete prefix objects.
        with dbt.DualBladeCache(client, model.config, block_tokens=BLOCK, model_tag=tag) as cache:
            again = dbt.generate_with_prefix_reuse(model, ids, cache, **kw)
            assert cache.reused_tokens == (ids.shape[1] - 1) // BLOCK * BLOCK
    assert torch.equal(out, expected)
    assert torch.equal(again, expected)
