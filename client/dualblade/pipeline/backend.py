"""The storage interface the layer pipeline is written against, and an in-memory implementation.

`KVBackend` is the slice of the SDK client that the pipeline needs: batched put, batched get
*into caller-owned memory*, batched existence check and batched delete. Every method takes a whole
batch because one round trip to dualbladed costs ~0.5 ms (gRPC over a Unix socket), so the
pipeline must issue one call per layer (or per chunk of a layer), never one per block. The real
`dualblade.Client` satisfies this protocol structurally; nothing here imports it.

Contracts (the SDK follows the same ones):

* ``put_many`` copies the bytes of every buffer before it returns; the caller may reuse them.
  Tensors must be contiguous CPU tensors. A put replaces an existing object with the same key.
* ``get_many_into`` fills every destination completely. A missing key raises `LookupError` (the
  SDK's ``NotFound`` subclasses it); a destination whose size differs from the stored object
  raises `ValueError`. Either way no partial result should be relied on.
* The ranged methods are optional (see `RangedBackend`, issue 12's layer objects): a layer
  object is one (sequence, layer, K|V) stream, ``reserve``d with a capacity, appended to with
  ``append_many`` (a key may repeat; its appends land in order; past the capacity raises) and
  read by byte ranges with ``read_ranges_into`` (one batch for many ranges; a range past the
  object's end raises). A decode step then costs one read batch and one append batch per layer.
* ``staging(nbytes)`` is optional (see `StagingBackend`): a CPU tensor the backend can fill or
  drain without an extra copy (the SDK hands out slices of its shared, pinned arena). Such a
  buffer is handed back with ``release_tensor``. ``staging_alignment`` is the offset alignment a
  sub-range of a staging buffer needs to stay copy-free (the SDK's arena: 4096, the O_DIRECT
  alignment; unaligned ranges still work, through a bounce copy), and ``staging_capacity`` the
  most staging memory the backend can hand out at once (the SDK: its arena size).

This module does not import torch: the daemon-side tooling and the SDK can import the protocol
without it. Tensors are recognised by duck typing and torch is imported only when one is seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    BufferOrTensor = torch.Tensor | bytearray | memoryview
else:
    BufferOrTensor = Any

__all__ = [
    "BackendCounters",
    "BufferOrTensor",
    "InMemoryBackend",
    "KVBackend",
    "RangedBackend",
    "StagingBackend",
    "is_ranged",
    "buffer_nbytes",
    "staging_alignment",
    "staging_capacity",
]

# The smallest segment alignment: any dtype view of an aligned segment is legal.
MIN_SEGMENT_ALIGN = 64


@runtime_checkable
class KVBackend(Protocol):
    """Batched object store for KV blocks (see the module docstring for the contracts)."""

    def put_many(
        self, items: Sequence[tuple[bytes, BufferOrTensor]], *, persistent: bool = False
    ) -> None: ...

    def get_many_into(self, items: Sequence[tuple[bytes, BufferOrTensor]]) -> None: ...

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]: ...

    def delete_many(self, keys: Sequence[bytes]) -> None: ...


@runtime_checkable
class RangedBackend(KVBackend, Protocol):
    """A backend with layer objects: reserve, append, read by ranges (module docstring)."""

    def reserve(
        self, key: bytes, capacity: int, *, persistent: bool = False, path: str | None = None
    ) -> None: ...

    def append_many(
        self, items: Sequence[tuple[bytes, BufferOrTensor]], *, durable: bool = False
    ) -> list[int]: ...

    def read_ranges_into(self, items: Sequence[tuple[bytes, int, BufferOrTensor]]) -> list[int]: ...


def is_ranged(backend: object) -> bool:
    """Whether `backend` has the layer-object methods (the SDK has them since issue 12)."""
    return all(
        callable(getattr(backend, m, None)) for m in ("reserve", "append_many", "read_ranges_into")
    )


@runtime_checkable
class StagingBackend(KVBackend, Protocol):
    """A backend that can hand out staging memory it moves without a copy."""

    def staging(self, nbytes: int) -> BufferOrTensor: ...

    def release_tensor(self, tensor: BufferOrTensor) -> None: ...


def staging_alignment(backend: object) -> int:
    """Offset alignment that keeps sub-ranges of `backend`'s staging buffers copy-free."""
    align = int(getattr(backend, "staging_alignment", 0) or 0)
    return max(MIN_SEGMENT_ALIGN, align)


def staging_capacity(backend: object) -> int | None:
    """The most staging memory `backend` can hand out at once, or None if it has no bound."""
    cap = getattr(backend, "staging_capacity", None)
    return None if cap is None else int(cap)


def _is_tensor(buf: object) -> bool:
    return hasattr(buf, "data_ptr") and hasattr(buf, "element_size")


def buffer_nbytes(buf: BufferOrTensor) -> int:
    """Size in bytes of a tensor, bytearray or memoryview."""
    if _is_tensor(buf):
        return int(buf.numel()) * int(buf.element_size())
    return memoryview(buf).nbytes


def _read_bytes(buf: BufferOrTensor) -> bytes:
    if _is_tensor(buf):
        import torch

        if buf.device.type != "cpu":
            raise ValueError(f"put_many needs CPU tensors, got one on {buf.device}")
        if not buf.is_contiguous():
            raise ValueError("put_many needs contiguous tensors")
        if buf.numel() == 0:
            return b""
        return buf.reshape(-1).view(torch.uint8).numpy().tobytes()
    return memoryview(buf).cast("B").tobytes()


def _write_into(dst: BufferOrTensor, data: bytes) -> None:
    if _is_tensor(dst):
        import torch

        if not dst.is_contiguous():
            raise ValueError("get_many_into needs contiguous destination tensors")
        if not data:
            return
        src = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        dst.reshape(-1).view(torch.uint8).copy_(src)
        return
    memoryview(dst).cast("B")[:] = data


@dataclass(frozen=True)
class BackendCounters:
    """A snapshot of what went through an `InMemoryBackend`."""

    put_calls: int
    put_objects: int
    put_bytes: int
    get_calls: int
    get_objects: int
    get_bytes: int
    contains_calls: int
    delete_calls: int
    objects: int
    persistent_objects: int


class InMemoryBackend:
    """A `StagingBackend` that keeps objects in a dict, for tests and benchmarks.

    It is thread-safe (the pipeline calls it from several I/O threads at once) and counts calls,
    objects and bytes so tests can prove data really went through it.

    Args:
        read_latency_s: fixed cost added to every `get_many_into` call (models an RPC).
        read_s_per_byte: additional cost per byte read (models device bandwidth).
        write_latency_s / write_s_per_byte: the same for `put_many`.
        on_get: called with the keys of each `get_many_into` before the data is copied; tests
            use it to block reads on an event or record their order.

    Latency is spent in `time.sleep`, which releases the GIL like real I/O does.
    """

    def __init__(
        self,
        *,
        read_latency_s: float = 0.0,
        read_s_per_byte: float = 0.0,
        write_latency_s: float = 0.0,
        write_s_per_byte: float = 0.0,
        on_get: Callable[[Sequence[bytes]], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._objects: dict[bytes, bytes] = {}
        self._capacity: dict[bytes, int] = {}  # layer objects only
        self._persistent: set[bytes] = set()
        self.read_latency_s = read_latency_s
        self.read_s_per_byte = read_s_per_byte
        self.write_latency_s = write_latency_s
        self.write_s_per_byte = write_s_per_byte
        self.on_get = on_get
        self._put_calls = self._put_objects = self._put_bytes = 0
        self._get_calls = self._get_objects = self._get_bytes = 0
        self._contains_calls = self._delete_calls = 0
        self.keys_read: list[bytes] = []

    # -- KVBackend ---------------------------------------------------------------------------

    def put_many(
        self, items: Sequence[tuple[bytes, BufferOrTensor]], *, persistent: bool = False
    ) -> None:
        copies = [(bytes(key), _read_bytes(buf)) for key, buf in items]
        nbytes = sum(len(data) for _, data in copies)
        self._spend(self.write_latency_s, self.write_s_per_byte, nbytes)
        with self._lock:
            for key, data in copies:
                self._objects[key] = data
                if persistent:
                    self._persistent.add(key)
                else:
                    self._persistent.discard(key)
            self._put_calls += 1
            self._put_objects += len(copies)
            self._put_bytes += nbytes

    def get_many_into(self, items: Sequence[tuple[bytes, BufferOrTensor]]) -> None:
        keys = [bytes(key) for key, _ in items]
        if self.on_get is not None:
            self.on_get(keys)
        with self._lock:
            found = []
            for key, dst in items:
                data = self._objects.get(bytes(key))
                if data is None:
                    raise LookupError(f"no object for key {bytes(key)!r}")
                if len(data) != buffer_nbytes(dst):
                    raise ValueError(
                        f"object {bytes(key)!r} has {len(data)} bytes, "
                        f"destination has {buffer_nbytes(dst)}"
                    )
                found.append((dst, data))
        self._deliver(keys, found)

    def _deliver(self, keys: list[bytes], found: list[tuple[BufferOrTensor, bytes]]) -> None:
        """Spend the modelled read time for ``found``'s bytes, copy them out, count the call."""
        nbytes = sum(len(data) for _, data in found)
        self._spend(self.read_latency_s, self.read_s_per_byte, nbytes)
        for dst, data in found:
            _write_into(dst, data)
        with self._lock:
            self._get_calls += 1
            self._get_objects += len(found)
            self._get_bytes += nbytes
            self.keys_read.extend(keys)

    # -- RangedBackend -----------------------------------------------------------------------

    def reserve(
        self, key: bytes, capacity: int, *, persistent: bool = False, path: str | None = None
    ) -> None:
        with self._lock:
            self._objects[bytes(key)] = b""
            self._capacity[bytes(key)] = capacity
            if persistent:
                self._persistent.add(bytes(key))
            else:
                self._persistent.discard(bytes(key))

    def append_many(
        self, items: Sequence[tuple[bytes, BufferOrTensor]], *, durable: bool = False
    ) -> list[int]:
        copies = [(bytes(key), _read_bytes(buf)) for key, buf in items]
        nbytes = sum(len(data) for _, data in copies)
        self._spend(self.write_latency_s, self.write_s_per_byte, nbytes)
        sizes = []
        with self._lock:
            for key, data in copies:
                if key not in self._capacity:
                    raise LookupError(f"no layer object for key {key!r}")
                new = self._objects[key] + data
                if len(new) > self._capacity[key]:
                    raise ValueError(
                        f"append to {key!r} past its capacity {self._capacity[key]}: {len(new)}"
                    )
                self._objects[key] = new
                sizes.append(len(new))
            self._put_calls += 1
            self._put_objects += len(copies)
            self._put_bytes += nbytes
        return sizes

    def read_ranges_into(self, items: Sequence[tuple[bytes, int, BufferOrTensor]]) -> list[int]:
        keys = [bytes(key) for key, _, _ in items]
        if self.on_get is not None:
            self.on_get(keys)
        with self._lock:
            found = []
            for key, offset, dst in items:
                data = self._objects.get(bytes(key))
                if data is None:
                    raise LookupError(f"no object for key {bytes(key)!r}")
                n = buffer_nbytes(dst)
                if offset + n > len(data):
                    raise ValueError(
                        f"range [{offset}, {offset + n}) is past the end of {bytes(key)!r} "
                        f"({len(data)} bytes)"
                    )
                found.append((dst, data[offset : offset + n]))
        self._deliver(keys, found)
        return [len(data) for _, data in found]

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        with self._lock:
            self._contains_calls += 1
            return [bytes(key) in self._objects for key in keys]

    def delete_many(self, keys: Sequence[bytes]) -> None:
        with self._lock:
            self._delete_calls += 1
            for key in keys:
                self._objects.pop(bytes(key), None)
                self._capacity.pop(bytes(key), None)
                self._persistent.discard(bytes(key))

    def staging(self, nbytes: int) -> BufferOrTensor:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8)

    def release_tensor(self, tensor: BufferOrTensor) -> None:
        return None  # plain host memory: the garbage collector frees it

    # -- test helpers ------------------------------------------------------------------------

    def drop_ephemeral(self) -> int:
        """Forget every non-persistent object, as the daemon does when a session ends."""
        with self._lock:
            doomed = [key for key in self._objects if key not in self._persistent]
            for key in doomed:
                del self._objects[key]
            return len(doomed)

    def keys(self) -> list[bytes]:
        with self._lock:
            return sorted(self._objects)

    def counters(self) -> BackendCounters:
        with self._lock:
            return BackendCounters(
                put_calls=self._put_calls,
                put_objects=self._put_objects,
                put_bytes=self._put_bytes,
                get_calls=self._get_calls,
                get_objects=self._get_objects,
                get_bytes=self._get_bytes,
                contains_calls=self._contains_calls,
                delete_calls=self._delete_calls,
                objects=len(self._objects),
                persistent_objects=len(self._persistent),
            )

    @staticmethod
    def _spend(fixed_s: float, per_byte_s: float, nbytes: int) -> None:
        delay = fixed_s + per_byte_s * nbytes
        if delay > 0:
            time.sleep(delay)
