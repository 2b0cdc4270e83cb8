"""The dualblade SDK client.

A :class:`Client` is one session with ``dualbladed``:

- ``connect`` opens the handshake socket, which gives the session token, the shared arena
  (a sealed memfd) and the gRPC socket the token is good on (the daemon serves one per uid, so
  a token handed to another user is useless; see :mod:`dualblade._handshake`). The handshake connection stays open for the client's lifetime: it is the
  lease, and when this process exits or crashes the daemon frees the session's ephemeral objects.
- Every data call is one ``Store.Batch`` naming arena ranges; the daemon moves the bytes
  between the arena and storage. Batches travel as frames on the lease socket when the daemon
  offers it (~0.05 ms per round trip against ~0.5 ms for gRPC-Python; see
  :mod:`dualblade._leaseplane`), else -- and for requests too large for one frame -- as gRPC
  calls. ``DUALBLADE_DATAPLANE=grpc`` in the environment forces gRPC for every call (to compare
  the two, or to rule the lease path out). Stat, List, Session and Admin calls always use gRPC;
  :meth:`Client.stat_many` (and ``contains_many``) rides Batch, so it takes the lease too.
  Bytes are copied once, between the caller's buffer and the arena -- or not at all for tensors
  that already live in the arena (:meth:`Client.arena_tensor`).
- With a CUDA build of torch the arena is page-locked with ``cudaHostRegister`` so host-to-device
  copies from it run at pinned-memory speed.

Thread safety: a Client may be shared by threads; arena slots are allocated under the arena's
lock, gRPC stubs are thread-safe and the lease plane multiplexes concurrent calls.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, fields
from itertools import repeat
from typing import Any

import grpc

from dualblade import _buffers, errors
from dualblade._layers import LayerMethods
from dualblade._leaseplane import LeasePlane, TooLarge
from dualblade._session import default_socket, handshake, open_channel, wait_ready
from dualblade._staging import StagingMethods, _pin_for_cuda, _unpin_for_cuda
from dualblade.arena import ClientArena
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade.v1 import wire

DEFAULT_ARENA_BYTES = 256 << 20
_NOT_FOUND = wire.Code.NOT_FOUND
#: ``DUALBLADE_DATAPLANE=grpc`` forces Store.Batch onto gRPC; anything else (or unset): the lease.
DATAPLANE_ENV = "DUALBLADE_DATAPLANE"

_PATHS = {
    None: pb.RESIDENCY_PATH_UNSPECIFIED,
    "direct": pb.RESIDENCY_PATH_DIRECT,
    "pagecache": pb.RESIDENCY_PATH_PAGECACHE,
}
_PATH_NAMES = {v: (k or "") for k, v in _PATHS.items()}
#: ``(key, data, nbytes, arena offset)``: one put/get item, sized and located once.
_Item = tuple[bytes, Any, int, "int | None"]


@dataclass(frozen=True)
class ObjectInfo:
    key: bytes
    size: int
    path: str
    generation: int
    persistent: bool = False
    last_access: float = 0.0
    checksum: int = 0
    capacity: int = 0  # a layer object's reserved bytes; 0 for ordinary objects
    #: stat_many(pin_ms=...) pinned this hit for the session (see Client.stat_many)
    pinned: bool = False


#: ``ObjectInfo``'s fields with their defaults (see :func:`_put_info`).
_INFO_DEFAULTS = {f.name: f.default for f in fields(ObjectInfo)}
if [k for k, v in _INFO_DEFAULTS.items() if v is MISSING] != ["key", "size", "path", "generation"]:
    raise ImportError("_put_info is out of date with ObjectInfo's fields")
_ALIGN_MASK = wire.ALIGNMENT - 1
if wire.ALIGNMENT & _ALIGN_MASK:
    raise ImportError(f"wire.ALIGNMENT {wire.ALIGNMENT} is not a power of two")


def _put_info(key: bytes, size: int, path: str, generation: int, persistent: bool) -> ObjectInfo:
    """``ObjectInfo(key, size, path, generation, persistent)`` for a put's result, at about a
    third of the cost: the frozen dataclass's ``__init__`` sets each of nine fields through
    ``object.__setattr__``; this fills the instance's ``__dict__`` in one update (the same
    object: equal, same type, still immutable). A packed put builds one per object."""
    info = object.__new__(ObjectInfo)
    d = info.__dict__
    d.update(_INFO_DEFAULTS)
    d["key"], d["size"], d["path"], d["generation"], d["persistent"] = (
        key,
        size,
        path,
        generation,
        persistent,
    )
    return info


def _key(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class Client(LayerMethods, StagingMethods):
    """One session with dualbladed. Use :meth:`connect`; close it (or use ``with``).

    The ranged API for layer objects (reserve, append, read_range...) comes from
    :class:`~dualblade._layers.LayerMethods`; zero-copy arena tensors and staging from
    :class:`~dualblade._staging.StagingMethods`."""

    def __init__(self, socket_path: str, handshake: Any, channel: grpc.Channel) -> None:
        self.socket_path = socket_path
        self._hs = handshake
        self._channel = channel
        self._store = pb_grpc.StoreStub(channel)
        self.admin = pb_grpc.AdminStub(channel)
        self._metadata = (("authorization", f"Bearer {handshake.token}"),)
        self.arena = ClientArena(handshake.arena_fd, handshake.arena_bytes)
        self.session_id: str = handshake.session_id
        self.tenant: str = handshake.tenant
        self._sizes: dict[bytes, int] = {}
        self._sizes_lock = threading.Lock()
        self._max_ops_cached = 0
        self._closed = False
        self._pinned = _pin_for_cuda(self.arena)
        self._lease = _lease_plane(handshake)
        #: the directory fd a gRPC socket path too long for sockaddr_un is reached through
        self._dir_fd: int | None = None

    @property
    def dataplane(self) -> str:
        """``"lease"`` or ``"grpc"``: how this client sends Store.Batch."""
        return "lease" if self._lease is not None else "grpc"

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        socket: str | os.PathLike[str] | None = None,
        tenant: str = "default",
        arena_bytes: int = DEFAULT_ARENA_BYTES,
        *,
        timeout: float = 5.0,
    ) -> Client:
        socket_path = os.fspath(socket) if socket is not None else default_socket()
        hs = handshake(socket_path, tenant, arena_bytes, timeout)
        grpc_path = hs.grpc_socket or socket_path
        channel, dir_fd = open_channel(grpc_path)
        client = cls(socket_path, hs, channel)
        client._dir_fd = dir_fd
        try:
            info = wait_ready(client._store, client._metadata, grpc_path, timeout)
        except BaseException:
            client.close()
            raise
        client._max_ops_cached = int(info.max_batch_ops)
        return client

    def close(self) -> None:
        """End the session. Idempotent.

        Returns once the daemon has ended the session and freed its ephemeral objects (it
        closes the lease after that; a daemon that does not answer within
        ``_handshake.CLOSE_WAIT_S`` delays this that long), so a session count read after it
        no longer includes this one, and a process at its session limit may reconnect at once.
        """
        if self._closed:
            return
        self._closed = True
        _unpin_for_cuda(self.arena, self._pinned)
        if self._lease is not None:
            self._lease.close()
        self._channel.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        self.arena.close()
        self._hs.close()  # ends the lease: the daemon frees this session's ephemeral objects

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- single-object API ----------------------------------------------------------------

    def put(
        self,
        key: bytes | str,
        data: Any,
        persistent: bool = False,
        durable: bool = False,
        *,
        path: str | None = None,
    ) -> ObjectInfo:
        return self.put_many([(key, data)], persistent=persistent, durable=durable, path=path)[0]

    def get(self, key: bytes | str) -> bytes:
        return self.get_many([key])[0]

    def get_into(self, key: bytes | str, buffer_or_tensor: Any) -> int:
        return self.get_many_into([(key, buffer_or_tensor)])[0]

    def delete(self, key: bytes | str, *, durable: bool = False) -> None:
        """Delete one object; ``durable=True``: the removal survives a power loss once this
        returns (committed with synchronous=FULL), as a durable put does."""
        self.delete_many([key], durable=durable)

    def stat(self, key: bytes | str) -> ObjectInfo:
        return _info(self._call(self._store.Stat, pb.StatRequest(key=_key(key))))

    def list(self, prefix: bytes | str = b"", limit: int = 0) -> list[ObjectInfo]:
        reply = self._call(self._store.List, pb.ListRequest(prefix=_key(prefix), limit=limit))
        return [_info(o) for o in reply.objects]

    def admin_call(self, rpc: str, request: Any) -> Any:
        """Call ``dualblade.v1.Admin/<rpc>`` with this session's identity (root or admin group).

        Used by dbctl and tools; errors come back as :mod:`dualblade.errors` types.
        """
        return self._call(getattr(self.admin, rpc), request)

    def session_info(self) -> pb.SessionInfo:
        return self._call(self._store.Session, pb.SessionInfoRequest())

    # -- batched API ----------------------------------------------------------------------

    def put_many(
        self,
        items: Iterable[tuple[bytes | str, Any]],
        *,
        persistent: bool = False,
        durable: bool = False,
        path: str | None = None,
    ) -> list[ObjectInfo]:
        """Store many objects; one RPC per arena-full of data.

        Bytes-like payloads go as packed puts when the daemon offers them
        (``wire.PUT_PACKED``): each chunk is copied back to back into one arena slot and sent
        as one ``PutPackedOp`` (no sub-message per object), all or nothing per chunk. Tensors
        (which may already live in the arena) go as one ``PutOp`` each."""
        if path not in _PATHS:
            raise errors.InvalidArgument(f"unknown residency path {path!r}")
        pairs = [(_key(k), v) for k, v in items]
        if self._hs.limits.get(wire.PUT_PACKED) and not _any_tensor(pairs):
            return self._put_packed(pairs, persistent, durable, path)
        out: list[ObjectInfo] = []
        for chunk in self._chunks(pairs):
            ops, slots = [], []
            try:
                for key, data, n, offset in chunk:
                    slot, owned = self._stage_out(data, n, offset)
                    if owned:
                        slots.append(slot)
                    ops.append(
                        pb.Op(
                            put=pb.PutOp(
                                key=key,
                                arena_offset=slot.offset,
                                length=n,
                                persistent=persistent,
                                durable=durable,
                                path=_PATHS[path],
                            )
                        )
                    )
                results = self._batch(ops)
            finally:
                for slot in slots:
                    self.arena.free(slot)
            self._remember_sizes(chunk, results)
            out.extend(
                ObjectInfo(key, r.size, _PATH_NAMES[r.path], r.generation, persistent)
                for (key, *_), r in zip(chunk, results)
            )
        return out

    def _put_packed(
        self, pairs: list[tuple[bytes, Any]], persistent: bool, durable: bool, path: str | None
    ) -> list[ObjectInfo]:
        """:meth:`put_many` of bytes-likes as packed puts (see there); chunks fit the op limit
        and half the arena, as :meth:`_chunks` makes them."""
        out: list[ObjectInfo] = []
        budget = self.arena.size // 2
        max_ops = self._max_ops
        path_pb = _PATHS[path]
        path_name = _PATH_NAMES[path_pb]
        i = 0
        while i < len(pairs):
            views: list[memoryview] = []
            sizes: list[int] = []
            steps: list[int] = []
            span = 0
            j = i
            while j < len(pairs) and j - i < max_ops:
                mv = memoryview(pairs[j][1]).cast("B")
                n = mv.nbytes
                step = (n + _ALIGN_MASK) & ~_ALIGN_MASK
                if j > i and span + step > budget:
                    break
                views.append(mv)
                sizes.append(n)
                steps.append(step)
                span += step
                j += 1
            keys = [k for k, _ in pairs[i:j]]
            slot = self.arena.alloc(max(span, 1))
            try:
                region = self.arena.view(slot)
                try:
                    pos = 0
                    for mv, n, step in zip(views, sizes, steps):
                        region[pos : pos + n] = mv
                        if step > n:  # no stale arena bytes in the extent's tail
                            region[pos + n : pos + step] = bytes(step - n)
                        pos += step
                finally:
                    region.release()
                op = pb.Op(
                    put_packed=pb.PutPackedOp(
                        keys=keys,
                        lengths=sizes,
                        arena_offset=slot.offset,
                        persistent=persistent,
                        durable=durable,
                        path=path_pb,
                    )
                )
                (result,) = self._batch([op])
            finally:
                self.arena.free(slot)
            with self._sizes_lock:
                self._sizes.update(zip(keys, sizes))
            names = [_PATH_NAMES.get(p, path_name) for p in result.paths]
            out.extend(map(_put_info, keys, sizes, names, result.generations, repeat(persistent)))
            i = j
        return out

    def get_many(self, keys: Sequence[bytes | str]) -> list[bytes]:
        """The objects' bytes. Buffers are sized from this client's size cache (filled by its own
        puts and stats); another session of the tenant may have replaced an object since, so a
        shorter object is cut to the size the daemon reports, and a longer one (the daemon refuses
        the small buffer) sends the sizes to be asked again, once."""
        bkeys = [_key(k) for k in keys]
        try:
            return self._get_sized(bkeys)
        except errors.InvalidArgument:
            self._forget_sizes(bkeys)
            return self._get_sized(bkeys)

    def _get_sized(self, keys: list[bytes]) -> list[bytes]:
        bufs = [bytearray(self._size_of(k)) for k in keys]
        got = self.get_many_into(list(zip(keys, bufs)))
        return [bytes(memoryview(b)[:n]) for b, n in zip(bufs, got)]

    def get_many_into(self, items: Sequence[tuple[bytes | str, Any]]) -> list[int]:
        """Read many objects into caller buffers or tensors; returns the sizes read. The first
        op that failed raises its error (see :meth:`try_get_many_into` for per-op outcomes)."""
        out = self._get_many_into(items, per_op=False)
        return out  # type: ignore[return-value]  # per_op=False: every entry is a size

    def try_get_many_into(
        self, items: Sequence[tuple[bytes | str, Any]]
    ) -> list[int | errors.DualbladeError]:
        """:meth:`get_many_into` with per-op outcomes: for each item, the size read or the typed
        error of its op (:class:`~dualblade.errors.NotFound`, ``InvalidArgument`` when the buffer
        is smaller than the object, ``DataLoss`` for a checksum mismatch, ...). The daemon runs
        every op of a Batch and reports each one's status, so one round trip per batch gets
        every object that can be had; a failed item's buffer is left as it was. Errors of the
        call itself (daemon gone, batch refused as a whole) still raise."""
        return self._get_many_into(items, per_op=True)

    def _get_many_into(
        self, items: Sequence[tuple[bytes | str, Any]], *, per_op: bool
    ) -> list[int | errors.DualbladeError]:
        sizes: list[int | errors.DualbladeError] = []
        for chunk in self._chunks([(_key(k), v) for k, v in items]):
            ops, staged, pending = [], [], []
            try:
                for key, dst, n, offset in chunk:
                    slot, owned = self._stage_in(n, offset)
                    staged.append((slot, owned, dst))
                    ops.append(pb.Op(get=pb.GetOp(key=key, arena_offset=slot.offset, length=n)))
                results = self._batch(ops, per_op=per_op)
                self._remember_sizes(chunk, results)
                for (slot, owned, dst), r in zip(staged, results):
                    if r.code != wire.Code.OK:
                        sizes.append(errors.from_code(wire.code_name(r.code), r.message))
                        continue
                    if owned:
                        view = self.arena.view(slot)
                        try:
                            copying = _buffers.copy_out(dst, view[: r.size])
                        finally:
                            view.release()
                        if copying is not None:
                            pending.append(copying)
                    sizes.append(r.size)
            finally:
                for copying in pending:  # a GPU copy may still read the slot: let it finish
                    copying.synchronize()
                for slot, owned, _ in staged:
                    if owned:
                        self.arena.free(slot)
        return sizes

    def delete_many(self, keys: Sequence[bytes | str], *, durable: bool = False) -> None:
        bkeys = [_key(k) for k in keys]
        for i in range(0, len(bkeys), self._max_ops):
            part = bkeys[i : i + self._max_ops]
            self._batch([pb.Op(delete=pb.DeleteOp(key=k, durable=durable)) for k in part])
            self._forget_sizes(part)

    def stat_many(self, keys: Sequence[bytes | str], *, pin_ms: int = 0) -> list[ObjectInfo | None]:
        """Exact-key stat of many keys in one Batch per ``max_batch_ops`` keys; None for a miss.

        ``pin_ms > 0`` pins every hit for this session: capacity eviction skips it until this
        session reads it (a get), unpins it (:meth:`unpin_many`), ``pin_ms`` pass or the session
        ends. Deletes still delete. A session may hold ``max_pins_per_session`` pins (daemon
        setting): beyond that the call raises :class:`~dualblade.errors.ResourceExhausted`,
        and the pins it did take stay (every op of the batch ran; unpin or let them expire).
        """
        bkeys = [_key(k) for k in keys]
        out: list[ObjectInfo | None] = []
        for i in range(0, len(bkeys), self._max_ops):
            part = bkeys[i : i + self._max_ops]
            ops = [pb.Op(stat=pb.StatOp(key=k, pin_ms=pin_ms)) for k in part]
            results = self._batch(ops, misses_ok=True)
            missed = []
            for key, r in zip(part, results):
                if r.code == _NOT_FOUND:
                    out.append(None)
                    missed.append(key)
                    continue
                out.append(
                    ObjectInfo(
                        key,
                        r.size,
                        _PATH_NAMES.get(r.path, ""),
                        r.generation,
                        r.persistent,
                        pinned=r.pinned,
                    )
                )
            with self._sizes_lock:
                for info in out[i:]:
                    if info is not None:
                        self._sizes[info.key] = info.size
            self._forget_sizes(missed)
        return out

    def unpin_many(self, keys: Sequence[bytes | str]) -> list[bool]:
        """Drop this session's hit pins on ``keys``; True where a pin was held."""
        bkeys = [_key(k) for k in keys]
        out: list[bool] = []
        for i in range(0, len(bkeys), self._max_ops):
            ops = [pb.Op(unpin=pb.UnpinOp(key=k)) for k in bkeys[i : i + self._max_ops]]
            out.extend(r.pinned for r in self._batch(ops))
        return out

    def touch_many(self, keys: Sequence[bytes | str]) -> list[bool]:
        """Mark objects as used now without reading them: each moves to the young end of the
        daemon's capacity-eviction LRU, as a get would move it. True where the key exists (a
        miss is no error); one Batch per ``max_batch_ops`` keys."""
        bkeys = [_key(k) for k in keys]
        out: list[bool] = []
        for i in range(0, len(bkeys), self._max_ops):
            ops = [pb.Op(touch=pb.TouchOp(key=k)) for k in bkeys[i : i + self._max_ops]]
            out.extend(r.code != _NOT_FOUND for r in self._batch(ops, misses_ok=True))
        return out

    def contains_many(self, keys: Sequence[bytes | str]) -> list[bool]:
        """Which keys exist: :meth:`stat_many` without pins, one round trip per batch of keys."""
        return [info is not None for info in self.stat_many(keys)]

    # -- internals ------------------------------------------------------------------------

    @property
    def _max_ops(self) -> int:
        """The daemon's op limit per Batch: from the handshake, else asked once (Session RPC)."""
        limit = self._hs.limits.get("max_batch_ops") or self._max_ops_cached
        if not limit:
            limit = self._max_ops_cached = int(self.session_info().max_batch_ops) or 1024
        return int(limit)

    def _chunks(self, items: list[tuple[bytes, Any]]) -> Iterable[list[_Item]]:
        """Split so each batch fits the op limit and (for staged data) half the arena.

        Each item comes back as ``(key, data, nbytes, arena offset or None)``, worked out once.
        """
        budget = self.arena.size // 2
        max_ops = self._max_ops
        chunk: list[_Item] = []
        used = 0
        for key, data in items:
            size = _buffers.nbytes_of(data)
            offset = self._arena_offset_of(data, size)
            n = 0 if offset is not None else _round_up(size)
            if chunk and (len(chunk) >= max_ops or used + n > budget):
                yield chunk
                chunk, used = [], 0
            chunk.append((key, data, size, offset))
            used += n
        if chunk:
            yield chunk

    def _remember_sizes(self, chunk: list[_Item], results: list[pb.OpResult]) -> None:
        with self._sizes_lock:
            for (key, *_), r in zip(chunk, results):
                if r.code == wire.Code.OK:
                    self._sizes[key] = r.size
                else:
                    self._sizes.pop(key, None)

    def _forget_sizes(self, keys: Iterable[bytes]) -> None:
        with self._sizes_lock:
            for key in keys:
                self._sizes.pop(key, None)

    def _size_of(self, key: bytes) -> int:
        with self._sizes_lock:
            size = self._sizes.get(key)
        return size if size is not None else self.stat(key).size

    def _batch(
        self, ops: list[pb.Op], *, misses_ok: bool = False, per_op: bool = False
    ) -> list[pb.OpResult]:
        """Run one Batch; raise the first failed op's error (NOT_FOUND too, unless
        ``misses_ok``: stat ops report a miss as that op's NOT_FOUND), or with ``per_op`` none:
        the caller reads each result's code. A failure of the whole call always raises."""
        request = pb.BatchRequest(ops=ops)
        reply = None
        if self._lease is not None:
            with contextlib.suppress(TooLarge):  # one frame cannot carry it: gRPC can
                reply = pb.BatchResponse.FromString(self._lease.call(request.SerializeToString()))
        if reply is None:
            reply = self._call(self._store.Batch, request)
        if len(reply.results) != len(ops):
            raise errors.from_code(
                "INTERNAL", f"dualbladed answered {len(reply.results)} results for {len(ops)} ops"
            )
        for r in reply.results:
            if per_op:
                break
            if r.code != wire.Code.OK and not (misses_ok and r.code == _NOT_FOUND):
                raise errors.from_code(wire.code_name(r.code), r.message)
        return list(reply.results)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise errors.from_code(err.code().name, err.details() or "") from None


def _lease_plane(handshake: Any) -> LeasePlane | None:
    """The lease data plane, if the daemon offers it and the environment does not refuse it."""
    max_frame = handshake.limits.get(wire.LEASE_FRAME_MAX_BYTES)
    if not max_frame or os.environ.get(DATAPLANE_ENV, "").strip().lower() == "grpc":
        return None
    return LeasePlane(handshake.lease, int(max_frame))


def _any_tensor(pairs: list[tuple[bytes, Any]]) -> bool:
    """Whether any payload is a torch tensor (torch is never imported for the check)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and any(isinstance(v, torch.Tensor) for _, v in pairs)


def _round_up(n: int, a: int = wire.ALIGNMENT) -> int:
    return (n + a - 1) // a * a


def _info(o: pb.ObjectInfo) -> ObjectInfo:
    return ObjectInfo(
        o.key,
        o.size,
        _PATH_NAMES.get(o.path, ""),
        o.generation,
        o.persistent,
        o.last_access,
        o.checksum,
        o.capacity,
    )
