"""LayerPipeline on the CPU: data correctness, ordering, overlap and error propagation.

The overlap checks are timing-independent: the backend blocks on events, and the test proves a
read or write was *in progress* while the model thread was still "computing" a layer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import torch

from dualblade.pipeline import AdaptiveConfig, InMemoryBackend
from dualblade.pipeline.pipeline import LayerPipeline, LayerRead, Segment
from dualblade.pipeline.staging import StagingPool

L = 4


def layer_key(layer: int, part: int = 0) -> bytes:
    return b"L%d/p%d" % (layer, part)


def seeded(backend: InMemoryBackend, layers: int = L, parts: int = 1, n: int = 64) -> None:
    for layer in range(layers):
        backend.put_many(
            [(layer_key(layer, p), torch.full((n,), 100.0 * layer + p)) for p in range(parts)]
        )


def reads(layers: int = L, parts: int = 1, n: int = 64) -> list[LayerRead]:
    return [
        LayerRead(tuple(Segment(layer_key(layer, p), 4 * n) for p in range(parts)))
        for layer in range(layers)
    ]


def test_multi_segment_layers_in_chunks_round_trip() -> None:
    backend = InMemoryBackend()
    seeded(backend, parts=5, n=1024)
    cfg = AdaptiveConfig(min_chunk_bytes=4096, initial_chunk_bytes=4096)
    with LayerPipeline(backend, num_layers=L, depth=2, config=cfg) as pipe:
        plan = pipe.begin_step(reads(parts=5, n=1024))
        assert plan.chunk_bytes == 4096
        for layer in range(L):
            buf = pipe.layer(layer)
            read = reads(parts=5, n=1024)[layer]
            for p, off in enumerate(read.offsets):
                seg = buf[off : off + 4096].view(torch.float32)
                assert torch.all(seg == 100.0 * layer + p)
        pipe.end_step()
        stats = pipe.stats()
    # 5 segments of 4 KiB per layer with a 4 KiB chunk: 5 calls per layer.
    assert stats.reads == L and stats.read_calls == 5 * L
    assert backend.counters().get_objects == 5 * L


def test_layers_without_reads_return_none() -> None:
    backend = InMemoryBackend()
    seeded(backend)
    with LayerPipeline(backend, num_layers=L, depth=1) as pipe:
        pipe.begin_step([None, reads()[1], None, None])
        assert pipe.layer(0) is None
        assert pipe.layer(1).view(torch.float32)[0].item() == 100.0
        assert pipe.layer(2) is None
        pipe.end_step()
    assert backend.keys_read == [layer_key(1)]


def test_next_layer_read_starts_while_current_layer_computes() -> None:
    started = {layer: threading.Event() for layer in range(L)}

    def on_get(keys: Sequence[bytes]) -> None:
        started[int(keys[0][1:2])].set()

    backend = InMemoryBackend(on_get=on_get)
    seeded(backend)
    with LayerPipeline(backend, num_layers=L, depth=1) as pipe:
        pipe.begin_step(reads())
        for layer in range(L - 1):
            pipe.layer(layer)
            # "Compute" of this layer cannot end until the next layer's read has started: a
            # serial pipeline would hang here (and fail on the timeout).
            assert started[layer + 1].wait(timeout=10), f"read of {layer + 1} never overlapped"
        pipe.layer(L - 1)
        pipe.end_step()


def test_depth_bounds_reads_in_flight() -> None:
    gate = threading.Event()
    seen: list[bytes] = []
    lock = threading.Lock()

    def on_get(keys: Sequence[bytes]) -> None:
        with lock:
            seen.extend(keys)
        gate.wait(timeout=10)

    backend = InMemoryBackend()
    seeded(backend, layers=8)
    backend.on_get = on_get
    with LayerPipeline(backend, num_layers=8, depth=3, io_threads=8) as pipe:
        pipe.begin_step(reads(layers=8))
        # begin_step issues layers 0..d-1 only; the rest wait for the model to advance.
        deadline = threading.Event()
        deadline.wait(0.2)
        with lock:
            assert sorted(seen) == [layer_key(i) for i in range(3)]
        gate.set()
        for layer in range(8):
            pipe.layer(layer)
        pipe.end_step()


def test_writeback_overlaps_next_layer_compute_and_flush_waits() -> None:
    release = threading.Event()
    entered = threading.Event()

    class SlowPut(InMemoryBackend):
        def put_many(self, items, *, persistent=False):
            entered.set()
            release.wait(timeout=10)
            super().put_many(items, persistent=persistent)

    backend = SlowPut()
    with LayerPipeline(backend, num_layers=L, depth=1) as pipe:
        pipe.begin_step([None] * L)
        pipe.layer(0)
        kv = torch.arange(16, dtype=torch.float32)
        fut = pipe.writeback(0, [(b"w0", kv)])
        # writeback returned while put_many is still blocked: layer 1 "computes" meanwhile.
        assert entered.wait(timeout=10)
        kv.zero_()  # the write task copied it before the backend call: the store keeps ours
        assert not fut.done()
        pipe.layer(1)
        release.set()
        pipe.end_step()
        pipe.flush()
        assert fut.done()
    out = torch.empty(16)
    backend.get_many_into([(b"w0", out)])
    assert torch.equal(out, torch.arange(16, dtype=torch.float32))


class _CopyWitness(torch.Tensor):
    """Records the thread every ``copy_`` that reads this tensor runs on."""

    threads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_:
            cls.threads.append(threading.current_thread().name)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_cpu_writeback_copies_in_the_write_task_not_on_the_model_thread() -> None:
    """The CPU's stand-in for the D2H stream: the model thread queues, a writer copies (on the
    model thread the copy serialised with compute), and the bytes stored are the tensor's."""
    _CopyWitness.threads = []
    backend = InMemoryBackend()
    kv = torch.arange(32, dtype=torch.float32).as_subclass(_CopyWitness)
    with LayerPipeline(backend, num_layers=L, depth=1) as pipe:
        pipe.writeback(0, [(b"w0", kv)])
        pipe.append(1, [(b"a1", kv[:8])], reserve=[(b"a1", 4096, False)])
        pipe.flush()
    assert len(_CopyWitness.threads) == 2, _CopyWitness.threads
    assert all(name.startswith("dualblade-write") for name in _CopyWitness.threads), (
        _CopyWitness.threads
    )
    out = torch.empty(32)
    backend.get_many_into([(b"w0", out)])
    assert torch.equal(out, torch.arange(32, dtype=torch.float32))
    head = torch.empty(8)
    assert backend.read_ranges_into([(b"a1", 0, head)]) == [32]
    assert torch.equal(head, torch.arange(8, dtype=torch.float32))


def test_read_waits_for_pending_write_of_same_key() -> None:
    backend = InMemoryBackend(write_latency_s=0.05)
    seeded(backend)
    with LayerPipeline(backend, num_layers=L, depth=2) as pipe:
        pipe.begin_step([None] * L)
        for layer in range(L):
            pipe.layer(layer)
            pipe.writeback(layer, [(layer_key(layer), torch.full((64,), -1.0 - layer))])
        pipe.end_step()
        # Next step reads what the previous one wrote, while the writes are still sleeping.
        pipe.begin_step(reads())
        for layer in range(L):
            assert pipe.layer(layer).view(torch.float32)[0].item() == -1.0 - layer
        pipe.end_step()


def test_rewrites_of_one_key_land_in_order() -> None:
    class FirstWriteSlow(InMemoryBackend):
        first = True

        def put_many(self, items, *, persistent=False):
            if self.first:
                self.first = False
                threading.Event().wait(0.1)
            super().put_many(items, persistent=persistent)

    backend = FirstWriteSlow()
    with LayerPipeline(backend, num_layers=1, depth=1, write_threads=4) as pipe:
        for value in range(4):
            pipe.writeback(0, [(b"tail", torch.full((8,), float(value)))])
        pipe.flush()
    out = torch.empty(8)
    backend.get_many_into([(b"tail", out)])
    assert torch.all(out == 3.0)


def test_missing_object_raises_lookup_error_in_layer() -> None:
    backend = InMemoryBackend()
    with LayerPipeline(backend, num_layers=L, depth=2) as pipe:
        pipe.begin_step(reads())
        with pytest.raises(LookupError):
            pipe.layer(0)
        pipe.end_step()


def test_failed_write_surfaces_in_flush_and_dependent_read() -> None:
    class Broken(InMemoryBackend):
        def put_many(self, items, *, persistent=False):
            raise OSError("disk gone")

    pipe = LayerPipeline(Broken(), num_layers=1, depth=1)
    pipe.writeback(0, [(b"k", torch.zeros(4))])
    pipe.begin_step([LayerRead((Segment(b"k", 16),))])
    # Either the read saw the failed write (OSError) or the key is simply absent.
    with pytest.raises((OSError, LookupError)):
        pipe.layer(0)
    pipe.end_step()
    with pytest.raises(OSError, match="disk gone"):
        pipe.flush()
    pipe.close()


def test_unconsumed_reads_are_drained_by_end_step() -> None:
    backend = InMemoryBackend()
    seeded(backend)
    with LayerPipeline(backend, num_layers=L, depth=3) as pipe:
        for _ in range(3):
            pipe.begin_step(reads())
            pipe.layer(0)
            pipe.end_step()  # layers 1..3 issued but never consumed
        pipe.begin_step(reads())
        for layer in range(L):
            assert pipe.layer(layer) is not None
        pipe.end_step()


def test_adaptive_depth_rises_when_io_is_slower_than_compute() -> None:
    # io / compute is 30 nominally: busy cores stretch the 1 ms of "compute" several times over
    # and the depth must still rise above 2.
    backend = InMemoryBackend(read_latency_s=0.03)
    seeded(backend)
    with LayerPipeline(backend, num_layers=L, depth="auto", io_threads=4) as pipe:
        for _ in range(4):
            pipe.begin_step(reads())
            for layer in range(L):
                pipe.layer(layer)
                threading.Event().wait(0.001)  # ~1 ms of "compute"
            pipe.end_step()
        plan = pipe.begin_step(reads())
        pipe.end_step()
    assert plan.depth >= 3


def test_usage_errors() -> None:
    pipe = LayerPipeline(InMemoryBackend(), num_layers=2, depth=1)
    with pytest.raises(RuntimeError):
        pipe.layer(0)
    with pytest.raises(ValueError):
        pipe.begin_step([None])
    pipe.begin_step([None, None])
    with pytest.raises(RuntimeError):
        pipe.begin_step([None, None])
    with pytest.raises(IndexError):
        pipe.layer(2)
    pipe.close()
    with pytest.raises(ValueError):
        LayerPipeline(InMemoryBackend(), num_layers=2, depth=0)


def test_staging_pool_admits_in_ticket_order() -> None:
    pool = StagingPool(8192, lambda n: torch.empty(n, dtype=torch.uint8), reuse=True, ordered=True)
    t0, t1, t2 = pool.ticket(), pool.ticket(), pool.ticket()
    got: list[int] = []
    base0, _ = pool.acquire(4096, t0)
    th = threading.Thread(target=lambda: got.append(pool.acquire(4096, t2) and 2))
    th.start()
    th.join(0.1)
    assert got == []  # t2 waits for t1 although the budget has room
    pool.skip(t1)
    th.join(5)
    assert got == [2]
    assert pool.in_use == 8192
    pool.release(base0, 4096)
    assert pool.in_use == 4096


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_prefetch_and_writeback_round_trip() -> None:
    backend = InMemoryBackend(read_latency_s=0.001)
    seeded(backend)
    with LayerPipeline(backend, num_layers=L, depth=2, device="cuda") as pipe:
        for _ in range(3):
            pipe.begin_step(reads())
            for layer in range(L):
                buf = pipe.layer(layer)
                assert buf.is_cuda
                x = buf.view(torch.float32) + 1.0
                pipe.writeback(layer, [(layer_key(layer), x)])
            pipe.end_step()
        pipe.flush()
    out = torch.empty(64)
    backend.get_many_into([(layer_key(2), out)])
    assert torch.all(out == 203.0)
