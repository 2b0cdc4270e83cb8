"""ClientArena: the SDK's mapping of the session arena and its aligned slot allocator."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualblade.arena import ALIGNMENT, ClientArena, Slot
from dualblade.errors import InvalidArgument, OutOfRange, ResourceExhausted
from dualbladed.sessions.arena import Arena


@pytest.fixture
def shared() -> Iterator[tuple[Arena, ClientArena]]:
    daemon = Arena.create(16 * ALIGNMENT, prefault=False)
    client = ClientArena(daemon.fd, daemon.size)
    yield daemon, client
    client.close()
    daemon.close()


def test_slots_are_aligned_and_shared_with_the_daemon(shared: tuple[Arena, ClientArena]) -> None:
    daemon, client = shared
    a = client.alloc(1)
    b = client.alloc(ALIGNMENT + 1)
    assert a == Slot(0, ALIGNMENT) or a.offset % ALIGNMENT == 0
    assert b.offset % ALIGNMENT == 0 and b.length == 2 * ALIGNMENT
    assert not (a.offset < b.end and b.offset < a.end)
    client.view(b)[:5] = b"hello"
    assert bytes(daemon.view(b.offset, 5)) == b"hello"
    daemon.view(a.offset, 3)[:] = b"abc"
    assert bytes(client.view(a)[:3]) == b"abc"
    assert ctypes.string_at(client.address + b.offset, 5) == b"hello"
    assert client.slot_at(b.offset) == b and client.slot_at(b.offset + ALIGNMENT) is None


def test_full_arena_and_bad_frees(shared: tuple[Arena, ClientArena]) -> None:
    _, client = shared
    slots = [client.alloc(ALIGNMENT) for _ in range(16)]
    assert client.free_bytes == 0
    with pytest.raises(ResourceExhausted, match="arena full"):
        client.alloc(1)
    client.free(slots[3])
    with pytest.raises(InvalidArgument, match="not allocated"):
        client.free(slots[3])
    with pytest.raises(InvalidArgument):
        client.alloc(0)
    with pytest.raises(OutOfRange):
        client.view(Slot(15 * ALIGNMENT, 2 * ALIGNMENT))
    assert client.alloc(ALIGNMENT) == slots[3]


def test_free_ranges_coalesce(shared: tuple[Arena, ClientArena]) -> None:
    _, client = shared
    slots = [client.alloc(4 * ALIGNMENT) for _ in range(4)]
    for slot in (slots[1], slots[3], slots[2], slots[0]):
        client.free(slot)
    whole = client.alloc(16 * ALIGNMENT)  # only possible if all four merged back
    assert whole == Slot(0, 16 * ALIGNMENT)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5 * ALIGNMENT)), max_size=60))
def test_allocator_never_overlaps_and_accounts_exactly(ops: list[tuple[bool, int]]) -> None:
    fd = os.memfd_create("prop")
    os.ftruncate(fd, 32 * ALIGNMENT)
    arena = ClientArena(fd, 32 * ALIGNMENT)
    os.close(fd)
    live: list[Slot] = []
    for is_alloc, n in ops:
        if is_alloc or not live:
            with contextlib.suppress(ResourceExhausted):
                live.append(arena.alloc(n))
        else:
            arena.free(live.pop(n % len(live)))
        spans = sorted((s.offset, s.end) for s in live)
        assert all(a_end <= b_off for (_, a_end), (b_off, _) in zip(spans, spans[1:]))
        assert all(off % ALIGNMENT == 0 and end <= arena.size for off, end in spans)
        assert arena.free_bytes == arena.size - sum(s.length for s in live)
    for slot in live:
        arena.free(slot)
    assert arena.alloc(arena.size).length == arena.size
    arena.close()


def test_concurrent_alloc_free(shared: tuple[Arena, ClientArena]) -> None:
    _, client = shared
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(300):
                slot = client.alloc(ALIGNMENT)
                client.view(slot)[0] = 1
                client.free(slot)
        except ResourceExhausted:
            pass  # 4 threads x 1 slot never exhausts 16; anything else is a bug
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert client.free_bytes == client.size


def test_close_with_a_torch_tensor_on_the_arena_is_lazy() -> None:
    torch = pytest.importorskip("torch")
    daemon = Arena.create(4 * ALIGNMENT, prefault=False)
    client = ClientArena(daemon.fd, daemon.size)
    slot = client.alloc(ALIGNMENT)
    tensor = torch.frombuffer(client.view(slot), dtype=torch.uint8)
    tensor[0] = 7
    client.close()  # must not raise although the tensor still exports the mapping
    assert int(tensor[0]) == 7
    assert bytes(daemon.view(0, 1)) == b"\x07"
    del tensor
    daemon.close()
