"""InMemoryBackend: the test double for the SDK client honours the KVBackend contracts."""

from __future__ import annotations

import pytest
import torch

from dualblade.pipeline.backend import InMemoryBackend, KVBackend, StagingBackend, buffer_nbytes


def test_satisfies_protocols() -> None:
    b = InMemoryBackend()
    assert isinstance(b, KVBackend)
    assert isinstance(b, StagingBackend)


def test_tensor_and_buffer_round_trip_and_counters() -> None:
    b = InMemoryBackend()
    t = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    b.put_many([(b"a", t), (b"b", bytearray(b"xyz"))])
    t.zero_()  # the backend copied the bytes
    out = torch.empty(3, 4, dtype=torch.bfloat16)
    raw = bytearray(3)
    b.get_many_into([(b"a", out), (b"b", memoryview(raw))])
    assert torch.equal(out, torch.arange(12, dtype=torch.bfloat16).reshape(3, 4))
    assert raw == b"xyz"
    c = b.counters()
    assert (c.put_calls, c.put_objects, c.put_bytes) == (1, 2, 27)
    assert (c.get_calls, c.get_objects, c.get_bytes) == (1, 2, 27)
    assert b.keys_read == [b"a", b"b"]


def test_missing_key_raises_lookup_error() -> None:
    b = InMemoryBackend()
    with pytest.raises(LookupError):
        b.get_many_into([(b"nope", torch.empty(4))])


def test_size_mismatch_raises_value_error() -> None:
    b = InMemoryBackend()
    b.put_many([(b"k", torch.zeros(4))])
    with pytest.raises(ValueError):
        b.get_many_into([(b"k", torch.empty(5))])


def test_rejects_non_contiguous_tensor() -> None:
    b = InMemoryBackend()
    with pytest.raises(ValueError):
        b.put_many([(b"k", torch.zeros(4, 4).t())])


def test_contains_delete_and_session_end() -> None:
    b = InMemoryBackend()
    b.put_many([(b"eph", torch.zeros(2))])
    b.put_many([(b"per", torch.zeros(2))], persistent=True)
    assert b.contains_many([b"eph", b"per", b"x"]) == [True, True, False]
    assert b.drop_ephemeral() == 1
    assert b.contains_many([b"eph", b"per"]) == [False, True]
    b.delete_many([b"per"])
    assert b.counters().objects == 0


def test_staging_and_nbytes() -> None:
    b = InMemoryBackend()
    s = b.staging(100)
    assert buffer_nbytes(s) == 100
    assert buffer_nbytes(bytearray(7)) == 7
