"""The residency benchmark's storage backends for `dualblade_tools.bench.kvtrace`.

`FileBackend` is the baseline (FlexGen-style buffered per-layer files), `ClientBackend` the SDK
client, `TimedReads` the wrapper that measures what the trace reads (``kv_read_gbps``). All three
speak the pipeline's `KVBackend` protocol, and the layer-object methods where they exist.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualblade_tools.bench.kvtrace import TraceSpec

__all__ = ["ClientBackend", "FileBackend", "TimedReads"]


class FileBackend:
    """FlexGen-style offload: one buffered file per layer, fixed slots, the page cache decides.

    Layout of ``layer{l}.kv``: K blocks ``[0, max_blocks)`` then V blocks, each slot
    ``block_bytes`` long, so a layer's K (or V) is one sequential run of the file and kernel
    readahead sees what FlexGen's per-layer reads look like. No O_DIRECT, no fadvise: whatever
    the page cache keeps is served from memory, whatever it drops is re-read from the disk.
    """

    def __init__(self, directory: Path, spec: TraceSpec) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self._fds = [
            os.open(directory / f"layer{i}.kv", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            for i in range(spec.layers)
        ]
        self._sizes: dict[bytes, int] = {}

    def _where(self, key: bytes) -> tuple[int, int]:
        layer, kind, block = key.decode().split("/")
        slot = int(block[1:]) + (self.spec.max_blocks if kind == "v" else 0)
        return self._fds[int(layer[1:])], slot * self.spec.block_bytes

    def put_many(self, items: Sequence[tuple[bytes, Any]], *, persistent: bool = False) -> None:
        for key, tensor in items:
            data = memoryview(tensor.reshape(-1).view(_uint8()).numpy())
            fd, offset = self._where(key)
            os.pwrite(fd, data, offset)
            self._sizes[key] = data.nbytes

    def get_many_into(self, items: Sequence[tuple[bytes, Any]]) -> None:
        for key, dst in items:
            view = memoryview(dst.reshape(-1).view(_uint8()).numpy())
            if self._sizes.get(key) != view.nbytes:
                raise ValueError(f"size mismatch for {key!r}")
            fd, offset = self._where(key)
            got = os.preadv(fd, [view], offset)
            if got != view.nbytes:
                raise OSError(f"short read of {key!r}: {got} of {view.nbytes}")

    # Layer objects: K at [0, max_tokens * token_bytes) of the layer's file, V right after.

    def _where_range(self, key: bytes) -> tuple[int, int]:
        layer, kind = key.decode().split("/")
        span = self.spec.max_tokens * self.spec.token_bytes
        return self._fds[int(layer[1:])], span if kind == "v" else 0

    def reserve(
        self, key: bytes, capacity: int, *, persistent: bool = False, path: str | None = None
    ) -> None:
        self._sizes[key] = 0

    def append_many(
        self, items: Sequence[tuple[bytes, Any]], *, durable: bool = False
    ) -> list[int]:
        out = []
        for key, tensor in items:
            data = memoryview(tensor.reshape(-1).view(_uint8()).numpy())
            fd, base = self._where_range(key)
            os.pwrite(fd, data, base + self._sizes[key])
            self._sizes[key] += data.nbytes
            out.append(self._sizes[key])
        return out

    def read_ranges_into(self, items: Sequence[tuple[bytes, int, Any]]) -> list[int]:
        out = []
        for key, offset, dst in items:
            view = memoryview(dst.reshape(-1).view(_uint8()).numpy())
            if offset + view.nbytes > self._sizes.get(key, -1):
                raise ValueError(f"range past the end of {key!r}")
            fd, base = self._where_range(key)
            got = os.preadv(fd, [view], base + offset)
            if got != view.nbytes:
                raise OSError(f"short read of {key!r}: {got} of {view.nbytes}")
            out.append(got)
        return out

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        return [k in self._sizes for k in keys]

    def delete_many(self, keys: Sequence[bytes]) -> None:
        for k in keys:
            self._sizes.pop(k, None)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)


class ClientBackend:
    """The SDK client as a `KVBackend`, with its arena as the pipeline's staging.

    ``staging``/``release_tensor`` hand the pipeline slices of the shared arena, so the daemon
    reads and writes straight into the buffers the model computes on (zero copies in the client);
    the arena is sized by the worker to hold both staging pools.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        if callable(getattr(client, "read_ranges_into", None)):  # the SDK's layer objects
            self.reserve = client.reserve
            self.append_many = client.append_many
            self.read_ranges_into = client.read_ranges_into

    def put_many(self, items: Sequence[tuple[bytes, Any]], *, persistent: bool = False) -> None:
        self.client.put_many(items, persistent=persistent)

    def get_many_into(self, items: Sequence[tuple[bytes, Any]]) -> None:
        self.client.get_many_into(items)

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        return self.client.contains_many(keys)

    def delete_many(self, keys: Sequence[bytes]) -> None:
        self.client.delete_many(keys)

    def staging(self, nbytes: int) -> Any:
        return self.client.staging(nbytes)

    def release_tensor(self, tensor: Any) -> None:
        self.client.release_tensor(tensor)

    def close(self) -> None:
        self.client.close()


class TimedReads:
    """Wraps a `KVBackend`: counts the bytes ``get_many_into`` reads and the busy wall time.

    Busy time is the union of the calls' intervals (the pipeline reads from several threads),
    so ``bytes / busy_s`` is the rate the storage delivered KV while the model waited on it or
    overlapped it. Everything else passes through.
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self.bytes = 0
        self.busy_s = 0.0

    def reset(self) -> None:
        with self._lock:
            self.bytes = 0
            self.busy_s = 0.0
            if self._active:
                self._since = time.perf_counter()

    def get_many_into(self, items: Sequence[tuple[bytes, Any]]) -> None:
        self._timed(self._backend.get_many_into, items, [dst for _, dst in items])

    def read_ranges_into(self, items: Sequence[tuple[bytes, int, Any]]) -> list[int]:
        return self._timed(self._backend.read_ranges_into, items, [d for _, _, d in items])

    def _timed(self, call: Any, items: Any, dsts: list[Any]) -> Any:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            return call(items)
        finally:
            now = time.perf_counter()
            with self._lock:
                self.bytes += sum(int(d.numel()) * d.element_size() for d in dsts)
                self._active -= 1
                if self._active == 0:
                    self.busy_s += now - self._since

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _uint8() -> Any:
    import torch

    return torch.uint8
