"""LayerPipeline over layer objects (issue 12): one ranged read batch and one append batch per
layer, with the same ordering guarantees as block objects. InMemoryBackend stands in for the
daemon (its ranged methods follow the SDK's contracts); the daemon-backed run is in
tests/tools/bench (kvtrace on a real dualbladed)."""

from __future__ import annotations

import threading

import pytest
import torch

from dualblade.pipeline import InMemoryBackend
from dualblade.pipeline.backend import is_ranged
from dualblade.pipeline.pipeline import LayerPipeline, LayerRead, Segment

L = 4
TOKEN = 16  # bytes per token of K (or V)


def keys(layer: int) -> tuple[bytes, bytes]:
    return b"L%d/k" % layer, b"L%d/v" % layer


def ranged_read(layer: int, tokens: int) -> LayerRead:
    k, v = keys(layer)
    return LayerRead((Segment(k, tokens * TOKEN), Segment(v, tokens * TOKEN)), ranged=True)


def token(layer: int, t: int, kind: int) -> torch.Tensor:
    return torch.full((TOKEN,), (7 * layer + 3 * t + kind) % 251, dtype=torch.uint8)


def test_decode_steps_read_one_batch_and_append_one_batch_per_layer() -> None:
    backend = InMemoryBackend()
    assert is_ranged(backend)
    for layer in range(L):
        for key in keys(layer):
            backend.reserve(key, 64 * TOKEN)
    with LayerPipeline(backend, num_layers=L, depth=2) as pipe:
        for layer in range(L):  # prefill: 8 tokens per layer
            k, v = keys(layer)
            pipe.append(
                layer,
                [
                    (k, torch.cat([token(layer, t, 0) for t in range(8)])),
                    (v, torch.cat([token(layer, t, 1) for t in range(8)])),
                ],
            )
        pipe.flush()  # the prefill's appends are not this test's step counts
        length = 8
        for _step in range(3):
            before = backend.counters()
            pipe.begin_step([ranged_read(layer, length) for layer in range(L)])
            for layer in range(L):
                buf = pipe.layer(layer)
                expect_k = torch.cat([token(layer, t, 0) for t in range(length)])
                expect_v = torch.cat([token(layer, t, 1) for t in range(length)])
                read = ranged_read(layer, length)
                ko, vo = read.offsets
                assert torch.equal(buf[ko : ko + length * TOKEN], expect_k)
                assert torch.equal(buf[vo : vo + length * TOKEN], expect_v)
                k, v = keys(layer)
                pipe.append(layer, [(k, token(layer, length, 0)), (v, token(layer, length, 1))])
            pipe.end_step()
            pipe.flush()
            after = backend.counters()
            assert after.get_calls - before.get_calls == L  # one read batch per layer
            assert after.put_calls - before.put_calls == L  # one append batch per layer
            length += 1


def test_a_ranged_read_waits_for_the_appends_queued_before_it() -> None:
    gate = threading.Event()

    class SlowAppends(InMemoryBackend):
        def append_many(self, items, *, durable=False):  # noqa: ANN001, ANN201
            assert gate.wait(5)
            return super().append_many(items, durable=durable)

    backend = SlowAppends()
    k, v = keys(0)
    backend.reserve(k, 1024)
    backend.reserve(v, 1024)
    with LayerPipeline(backend, num_layers=1, depth=1) as pipe:
        pipe.append(0, [(k, token(0, 0, 0)), (v, token(0, 0, 1))])
        pipe.begin_step([ranged_read(0, 1)])
        threading.Timer(0.2, gate.set).start()
        buf = pipe.layer(0)  # would be past the end (LookupError/ValueError) if not ordered
        assert torch.equal(buf[:TOKEN], token(0, 0, 0))
        pipe.end_step()


def test_append_past_capacity_surfaces_in_flush() -> None:
    backend = InMemoryBackend()
    backend.reserve(b"L0/k", TOKEN)
    with LayerPipeline(backend, num_layers=1, depth=1) as pipe:
        pipe.append(0, [(b"L0/k", torch.zeros(2 * TOKEN, dtype=torch.uint8))])
        with pytest.raises(ValueError, match="capacity"):
            pipe.flush()
