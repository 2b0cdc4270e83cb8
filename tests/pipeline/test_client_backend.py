"""The SDK client as the layer pipeline's backend, on the real daemon (no mocks).

Proves `dualblade.Client` satisfies the runtime-checkable `KVBackend` / `StagingBackend`
protocols and the contracts the pipeline relies on (batched put/get_into/contains/delete, missing
keys raise LookupError), that `LayerPipeline` stages reads in the shared arena at the arena's
alignment so the daemon writes every segment in place (no bounce slot inside the client), and
that staging slots go back to the arena (a long run does not fill it).
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from dualblade import Client  # noqa: E402
from dualblade.pipeline import KVBackend, StagingBackend  # noqa: E402
from dualblade.pipeline.backend import staging_alignment, staging_capacity  # noqa: E402
from dualblade.pipeline.pipeline import LayerPipeline, LayerRead, Segment  # noqa: E402
from dualblade_tools.daemonproc import DaemonProcess  # noqa: E402


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with DaemonProcess(tmp_path_factory.mktemp("d")) as d:
        yield d


@pytest.fixture
def client(daemon):
    with Client.connect(daemon.socket, tenant="pipe", arena_bytes=16 << 20) as c:
        yield c


class CountingArena:
    """Wraps the client's real arena allocator to count slot allocations (instrumentation only)."""

    def __init__(self, client: Client) -> None:
        self.calls = 0
        self._alloc = client.arena.alloc
        client.arena.alloc = self  # type: ignore[method-assign]

    def __call__(self, nbytes: int):
        self.calls += 1
        return self._alloc(nbytes)


def test_client_satisfies_the_protocols(client) -> None:
    assert isinstance(client, KVBackend)
    assert isinstance(client, StagingBackend)
    assert staging_alignment(client) == 4096
    assert staging_capacity(client) == 16 << 20


def test_kvbackend_contracts_on_the_daemon(client) -> None:
    a = torch.arange(1000, dtype=torch.float32)
    b = bytearray(os.urandom(5000))
    client.put_many([(b"kv/a", a), (b"kv/b", b)], persistent=False)
    a[:] = 0  # put_many copied the bytes before it returned
    out_a = torch.empty(1000, dtype=torch.float32)
    out_b = bytearray(5000)
    client.get_many_into([(b"kv/a", out_a), (b"kv/b", out_b)])
    assert torch.equal(out_a, torch.arange(1000, dtype=torch.float32))
    assert out_b == b
    assert client.contains_many([b"kv/a", b"kv/zz", b"kv/b", b"other/a"]) == [
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(LookupError):
        client.get_many_into([(b"kv/missing", bytearray(10))])
    client.delete_many([b"kv/a", b"kv/b"])
    assert client.contains_many([b"kv/a", b"kv/b"]) == [False, False]


def test_contains_many_is_one_batch_of_exact_stats(client) -> None:
    keys = [f"cl/{h}/L{layer}/{kind}/B0".encode() for h in ("aa", "bb") for layer in range(8)
            for kind in "kv"]  # fmt: skip
    client.put_many([(k, b"x" * 100) for k in keys[::2]])
    calls = []
    real_batch = client._batch
    client._batch = lambda ops, **kw: calls.append(ops) or real_batch(ops, **kw)
    try:
        assert client.contains_many(keys) == [i % 2 == 0 for i in range(len(keys))]
    finally:
        del client._batch
    assert len(calls) == 1  # one round trip for every key, not one per key
    assert [op.stat.key for op in calls[0]] == keys


def _layer_reads(client: Client, layers: int, sizes: list[int]) -> list[LayerRead]:
    reads = []
    for layer in range(layers):
        segs = []
        for i, n in enumerate(sizes):
            key = f"pl/L{layer}/S{i}".encode()
            client.put(key, bytes([layer * 16 + i]) * n)
            segs.append(Segment(key, n))
        reads.append(LayerRead(tuple(segs), align=staging_alignment(client)))
    return reads


def test_pipeline_reads_land_in_the_arena_without_bounce_copies(client) -> None:
    sizes = [3000, 8192, 4097, 100]  # odd sizes: only the aligned layout keeps them in place
    reads = _layer_reads(client, 4, sizes)
    counter = CountingArena(client)
    with LayerPipeline(client, num_layers=4, depth=2) as pipe:
        pipe.begin_step(reads)
        for layer in range(4):
            buf = pipe.layer(layer)
            lo, hi = client.arena.address, client.arena.address + client.arena.size
            assert lo <= buf.data_ptr() < hi  # the result is arena memory
            for i, (seg, off) in enumerate(zip(reads[layer].segments, reads[layer].offsets)):
                assert off % 4096 == 0
                assert bool((buf[off : off + seg.nbytes] == layer * 16 + i).all())
        pipe.end_step()
        stats = pipe.stats()
    # At most one staging slot per layer read (a released one is recycled, not allocated
    # again) and nothing else: no per-segment bounce slots.
    assert 1 <= counter.calls <= 4
    assert stats.staging_fallbacks == 0


def test_staging_slots_return_to_the_arena(client) -> None:
    reads = _layer_reads(client, 3, [1 << 20])
    free_before = client.arena.free_bytes
    with LayerPipeline(client, num_layers=3, depth=2) as pipe:
        for _step in range(40):  # 120 MiB of reads through a 16 MiB arena
            pipe.begin_step(reads)
            for layer in range(3):
                pipe.layer(layer)
                pipe.writeback(layer, [(f"pl/w{layer}".encode(), torch.ones(300))])
            pipe.end_step()
        pipe.flush()
        assert pipe.stats().staging_fallbacks == 0
    assert client.arena.free_bytes == free_before
    out = torch.empty(300)
    client.get_into(b"pl/w2", out)
    assert torch.equal(out, torch.ones(300))
