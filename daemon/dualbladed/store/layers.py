"""Layer objects: one contiguous extent with reserved capacity, appended to and read by ranges.

A layer object holds one (sequence or prefix, layer, K|V) stream. A decode step then costs a few
ops per layer (one ranged read of each of K and V), not one op per 256-token block.

The store. This module sees :class:`~dualbladed.store.objects.ObjectStore` only through
:class:`LayerSite`, a handful of documented operations (install, pin, follow a move, publish an
append, drop) that the store implements in :mod:`dualbladed.store.layersite`, as
:mod:`.relocate` does through ``MoveSite``. Each takes the store's lock itself; this module never
touches the lock, the index or the metadata, and it does not import the store. What stays here
is what a layer object is: its first row, the chunk crcs, the append's crash ordering and kill
points, and the ranged read with its verification.

Shape. ``reserve`` allocates ONE extent of ``capacity`` bytes (rounded up to the path's
alignment) on the chosen path and indexes an object of size 0: ``ObjectInfo.capacity > 0`` marks
the kind. Tenant quota and usage count the whole extent (a tenant cannot reserve the disk for
free); the arbiter's per-path byte counts (``StoreStats``) count ``size``, the bytes written.

Integrity. The object's bytes ``[0, size)`` are cut into chunks of :data:`LAYER_CHUNK_BYTES`
(1 MiB, part of the wire contract); ``ObjectInfo.chunk_crcs[i]`` is the crc32c of chunk ``i``.
An append extends the tail chunk's crc incrementally (``crc32c(new, prev)``) and starts new ones.
A ranged read verifies every chunk it covers *in the I/O worker that read it*: ``crc32c``
releases the GIL (``gil_release_mode=1``), so checksumming overlaps the other chunks' I/O. A
chunk only partly inside the range is read whole into a per-thread aligned buffer, verified
there and the wanted part copied out. A mismatch zeroes the whole destination range, drops the
object and raises :class:`~dualbladed.errors.ChecksumMismatch` naming the chunk (same rule as
``get``: torn or stale bytes are never returned).

I/O. Direct path: a read of ``k`` chunks is ``k`` pieces of :meth:`DirectEngine.run_pieces`
(1 MiB requests at the engine's queue depth, 8 by default), each read straight into the destination
(the session arena) when its address is block aligned. An append's write fans out the same way,
also inside a Batch (:func:`~dualbladed.paths.engine.fanned_transfers`). Appends at a
block-aligned end write whole blocks straight from the arena and bounce only the ragged last
block (zero-padded, inside the extent). At an unaligned end the object's partial tail block (<
one block; cached in :class:`LayerState`, read back once after a restart or a failed write) is
written together with the head of the new bytes from a small aligned buffer; the rest follows at
the next block boundary (bounced too, since its source address is then off the block grid --
appends of whole blocks keep the end aligned and never take this path). The rewritten tail block
carries the same committed bytes, so a concurrent reader of ``[0, size)`` sees the same values.
Page-cache path: a plain ``pwrite`` at the offset inside the slab range (contiguous, with the
same reserved capacity).

Crash ordering of an append (ordered by the object's :attr:`LayerState.lock`; one append at a
time per object, reads never wait for it)::

    check expect_size and capacity -> crc32c of the new bytes
      -> [append.before_data_write] -> write at the current end -> [append.after_data_write]
      -> durable: path.flush() -> [append.before_commit] -> commit: persistent rows get
         UPDATE size, chunk_crcs WHERE generation (group commit, see :class:`~.layersite.GroupCommit`;
         synchronous=FULL when durable) -> [append.after_commit]
      -> (lock) size visible to readers, acknowledged

Before the commit the new bytes lie past the committed size, where no reader looks and the
crcs do not cover them; after a crash the row still says the old size, so an unacknowledged range
is never exposed. Ephemeral layer objects never touch SQLite (like ephemeral objects).
"""

from __future__ import annotations

import logging
import mmap
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol, TypeVar

from crc32c import crc32c

from dualblade.v1.wire import LAYER_CHUNK_BYTES
from dualbladed.alloc.abstract import Extent
from dualbladed.errors import (
    CapacityExceeded,
    FailedPrecondition,
    InvalidArgument,
    LayerChecksumMismatch,
    OutOfRange,
)
from dualbladed.killpoints import killpoint
from dualbladed.paths.abstract import DIRECT, ResidencyPath
from dualbladed.paths.engine import DirectEngine, fanned_transfers
from dualbladed.store.index import IndexEntry, LayerEntry, ObjectInfo
from dualbladed.store.input import as_bytes_view, check_key, zero

logger = logging.getLogger(__name__)

__all__ = [
    "LAYER_CHUNK_BYTES",
    "LayerSite",
    "LayerState",
    "append",
    "chunk_count",
    "extend_crcs",
    "new_entry",
    "read_range_into",
    "read_verified",
    "reserve",
]


#: Always release the GIL while checksumming (the default only does so above 32 KiB).
_GIL_RELEASE = 1

T = TypeVar("T")


class LayerState:
    """Per-object append state: the append lock and the cached partial tail block.

    ``tail`` is ``bytes(size % block)`` -- the committed bytes of the last, partial block on the
    direct path -- or None when unknown (after a restart or a failed write: read back once).
    Guarded by ``lock``; lock order ``LayerState.lock`` -> ``ObjectStore._lock``.
    """

    __slots__ = ("lock", "tail")

    def __init__(self, tail: bytes | None = None) -> None:
        self.lock = threading.Lock()
        self.tail = tail


def new_entry(info: ObjectInfo) -> IndexEntry:
    """An index entry for ``info``: a :class:`LayerEntry` with append state when it is a layer
    object, else a plain one."""
    if not info.is_layer:
        return IndexEntry(info)
    entry = LayerEntry(info)
    entry.layer = LayerState(b"" if info.size == 0 else None)
    return entry


def chunk_count(size: int) -> int:
    return -(-size // LAYER_CHUNK_BYTES)


def extend_crcs(crcs: tuple[int, ...], size: int, data: memoryview) -> tuple[int, ...]:
    """The chunk crcs of ``[0, size + len(data))`` given those of ``[0, size)``."""
    if len(crcs) != chunk_count(size):
        raise FailedPrecondition(f"{len(crcs)} chunk crcs do not describe {size} bytes")
    out = list(crcs)
    pos, done, n = size, 0, data.nbytes
    while done < n:
        chunk, within = divmod(pos, LAYER_CHUNK_BYTES)
        take = min(LAYER_CHUNK_BYTES - within, n - done)
        piece = data[done : done + take]
        if within == 0:
            out.append(crc32c(piece, 0, _GIL_RELEASE))
        else:
            out[chunk] = crc32c(piece, out[chunk], _GIL_RELEASE)
        pos += take
        done += take
    return tuple(out)


class LayerSite(Protocol):
    """What a store lends to layer objects (implemented by ``ObjectStore``).

    Every operation that says "under the store lock" takes it and returns without it; the
    caller holds at most the object's :attr:`LayerState.lock` (lock order ``LayerState.lock``
    -> store lock). A pinned entry's extent is never reallocated until it is unpinned.
    """

    max_object_bytes: int

    @property
    def paths(self) -> Mapping[str, ResidencyPath]:
        """The residency paths by name (data I/O on them runs without the store lock)."""
        ...

    def layer_install(
        self,
        tenant: str,
        key: bytes,
        size: int,
        path: str | None,
        build: Callable[[str, Extent, int], IndexEntry],
    ) -> ObjectInfo:
        """Choose the path (``path`` is a hint; placement runs before the lock), then under
        the store lock: allocate ``size`` bytes on it (evicting LRU objects while it is full),
        ``build(path name, extent, generation)`` the entry, commit it and install it in place
        of whatever was under ``key``.

        Nothing is held when ``build`` or the commit raises. Raises ``OutOfSpace``,
        ``InvalidArgument`` (unknown path), ``FailedPrecondition`` (store closed).
        """
        ...

    def layer_pin(
        self, tenant: str, key: bytes, check: Callable[[ObjectInfo], T], *, access: bool
    ) -> tuple[IndexEntry, T]:
        """Under the store lock: find the object, ``check(info)`` it (raising refuses, nothing
        pinned), pin it, and with ``access`` count it as read (heat, LRU, ``last_access``).

        Returns the pinned entry and what ``check`` returned. Raises ``NotFound``.
        """
        ...

    def layer_unpin(self, entry: IndexEntry) -> None:
        """Under the store lock: drop one pin; the last pin of a retired entry frees its extent."""
        ...

    def layer_follow_move(self, entry: IndexEntry, state: LayerState) -> IndexEntry:
        """Under the store lock: the live entry the pinned ``entry`` became if a relocation
        retired it (moving the pin over), else ``entry``. The caller holds ``state.lock``."""
        ...

    def layer_info(self, entry: IndexEntry) -> ObjectInfo | None:
        """Under the store lock: ``entry``'s info, or None once it was replaced or deleted.
        Raises ``FailedPrecondition`` when the store is closed."""
        ...

    def layer_commit_size(self, info: ObjectInfo, *, durable: bool) -> bool:
        """Without the store lock: commit a persistent layer row's size and chunk crcs
        (``layersite.GroupCommit``); False when no row of ``info.generation`` was there."""
        ...

    def layer_publish(
        self, entry: IndexEntry, info: ObjectInfo, then: Callable[[], None]
    ) -> ObjectInfo | None:
        """Under the store lock: make ``info`` (same object and extent, new size) what readers
        see, run ``then()`` still under the lock, and return the snapshot; None (nothing done)
        once ``entry`` was replaced or deleted. Raises ``FailedPrecondition`` when closed."""
        ...

    def layer_drop(self, entry: IndexEntry) -> None:
        """Under the store lock: delete the object (row and extent) if ``entry`` is still its
        live version; a corrupt object is never served again."""
        ...


# -- reserve ---------------------------------------------------------------------------------


def reserve(
    site: LayerSite,
    tenant: str,
    key: bytes,
    capacity: int,
    *,
    persistent: bool = False,
    session: str | None = None,
    path: str | None = None,
) -> ObjectInfo:
    """Create (or replace whatever is under ``key`` with) an empty layer object."""
    key = check_key(tenant, key)
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise InvalidArgument(f"capacity must be an integer, got {type(capacity).__name__}")
    if not 1 <= capacity <= site.max_object_bytes:
        raise InvalidArgument(
            f"layer object capacity {capacity} is outside 1..{site.max_object_bytes} bytes "
            f"(key {key!r})"
        )

    def build(path_name: str, extent: Extent, generation: int) -> IndexEntry:
        return new_entry(
            ObjectInfo(
                tenant=tenant,
                key=key,
                size=0,
                path=path_name,
                offset=extent.offset,
                length=extent.length,
                checksum=0,
                generation=generation,
                persistent=persistent,
                last_access=time.time(),
                session=None if persistent else session,
                capacity=capacity,
                chunk_crcs=(),
            )
        )

    return site.layer_install(tenant, key, capacity, path, build)


# -- append ----------------------------------------------------------------------------------


def append(
    site: LayerSite,
    tenant: str,
    key: bytes,
    src: memoryview,
    *,
    durable: bool = False,
    expect_size: int | None = None,
) -> ObjectInfo:
    """Append ``src`` at the end of the layer object; acknowledged after the commit."""
    key = check_key(tenant, key)
    data = as_bytes_view(src, writable=False, what="source")
    n = data.nbytes
    if n <= 0:
        raise InvalidArgument(f"append to key {key!r} needs at least one byte")
    entry, _ = site.layer_pin(tenant, key, _appendable, access=False)
    state: LayerState = entry.layer  # type: ignore[assignment]  # set for every layer object
    try:
        with state.lock:
            # A relocation hands its LayerState to the moved entry and completes under that
            # lock, so a waiting append continues on the moved object instead of failing or
            # retrying (a busy arbiter cannot starve appends).
            entry = site.layer_follow_move(entry, state)
            return _append_locked(site, entry, state, data, durable, expect_size)
    finally:
        site.layer_unpin(entry)


def _appendable(info: ObjectInfo) -> None:
    if not info.is_layer:
        raise FailedPrecondition(f"key {info.key!r} is not a layer object (reserve it first)")


def _append_locked(
    site: LayerSite,
    entry: IndexEntry,
    state: LayerState,
    data: memoryview,
    durable: bool,
    expect_size: int | None,
) -> ObjectInfo:
    info = site.layer_info(entry)
    if info is None:
        raise _replaced(entry)
    size, n = info.size, data.nbytes
    if expect_size is not None and size != expect_size:
        raise FailedPrecondition(
            f"append to key {info.key!r} expected size {expect_size}, the object has {size} "
            "bytes (an append was lost or repeated)"
        )
    if size + n > info.capacity:
        raise CapacityExceeded(
            f"append of {n} bytes to layer object {info.key!r} (size {size}) exceeds its "
            f"capacity {info.capacity} bytes; reserve a larger object"
        )
    crcs = extend_crcs(info.chunk_crcs, size, data)
    target = site.paths[info.path]
    try:
        killpoint("append.before_data_write")
        tail = _write_at(target, info, state, data)
        killpoint("append.after_data_write")
        if durable:
            target.flush()
    except BaseException:  # paths raise typed errors only (dualbladed.oserrors)
        state.tail = None  # the tail block may be half rewritten: read it back next time
        raise
    new_info = replace(info, size=size + n, chunk_crcs=crcs)
    killpoint("append.before_commit")
    committed = not info.persistent or site.layer_commit_size(new_info, durable=durable)
    killpoint("append.after_commit")
    if not committed:  # no row of its generation: never acknowledge
        if site.layer_info(entry) is None:
            raise _replaced(entry)
        raise FailedPrecondition(f"layer object {info.key!r} has no committed row")

    def set_tail() -> None:
        state.tail = tail

    snapshot = site.layer_publish(entry, new_info, set_tail)
    if snapshot is None:
        raise _replaced(entry)
    return snapshot


def _replaced(entry: IndexEntry) -> FailedPrecondition:
    return FailedPrecondition(
        f"layer object {entry.info.key!r} was replaced or deleted during the append"
    )


def _write_at(
    target: ResidencyPath, info: ObjectInfo, state: LayerState, data: memoryview
) -> bytes | None:
    """Write ``data`` at ``info.size``; return the new partial tail block (direct path)."""
    if target.name != DIRECT:
        target.write(Extent(info.offset + info.size, info.length - info.size), data)
        return None
    with fanned_transfers():  # its 1 MiB requests in flight together, also inside a Batch
        return _write_direct(target, info, state, data)


def _write_direct(
    target: ResidencyPath, info: ObjectInfo, state: LayerState, data: memoryview
) -> bytes:
    size, n = info.size, data.nbytes
    base, length = info.offset, info.length
    block = target.alignment
    head_len = size % block
    tail = b""
    if head_len:
        tail = state.tail
        if tail is None or len(tail) != head_len:  # unknown (restart, failed write): read it
            tail = _read_tail(target, info, head_len)
        start = size - head_len
        first = min(n, block - head_len)
        target.write(Extent(base + start, length - start), memoryview(tail + bytes(data[:first])))
        rest = data[first:]
        if rest.nbytes:
            target.write(Extent(base + start + block, length - start - block), rest)
    else:
        target.write(Extent(base + size, length - size), data)
    new_len = (size + n) % block
    if new_len == 0:
        return b""
    if new_len <= n:
        return bytes(data[n - new_len :])
    return tail + bytes(data)


def _read_tail(target: ResidencyPath, info: ObjectInfo, head_len: int) -> bytes:
    start = info.size - head_len
    buf = bytearray(head_len)
    target.read(Extent(info.offset + start, info.length - start), memoryview(buf))
    return bytes(buf)


# -- reads -----------------------------------------------------------------------------------


def read_range_into(
    site: LayerSite, tenant: str, key: bytes, offset: int, length: int, dst: memoryview
) -> tuple[int, ObjectInfo]:
    """Read bytes ``[offset, offset + length)`` (``length`` 0: to the end) into ``dst``.

    Returns the bytes read and the object's info as of the read."""
    key = check_key(tenant, key)
    out = as_bytes_view(dst, writable=True, what="destination")
    if offset < 0 or length < 0:
        raise OutOfRange(f"range offset {offset} and length {length} must be >= 0")

    def check(info: ObjectInfo) -> int:
        """The range's length, or raise (under the store lock, before the pin)."""
        if not info.is_layer:
            raise FailedPrecondition(f"key {key!r} is not a layer object; read it whole with get")
        size = info.size
        if offset > size:
            raise OutOfRange(f"range offset {offset} is past the end of key {key!r} ({size} bytes)")
        n = size - offset if length == 0 else length
        if offset + n > size:
            raise OutOfRange(
                f"range {offset}..{offset + n} is past the end of key {key!r} ({size} bytes)"
            )
        if out.nbytes < n:
            raise InvalidArgument(
                f"destination holds {out.nbytes} bytes, range of key {key!r} needs {n}"
            )
        return n

    entry, n = site.layer_pin(tenant, key, check, access=True)
    info = entry.info
    try:
        bad = _read_chunks(site.paths[info.path], info, offset, out[:n])
    finally:
        site.layer_unpin(entry)
    if bad is not None:
        _drop(site, entry, bad)
        chunk, expected, actual = bad
        raise LayerChecksumMismatch(key, chunk, LAYER_CHUNK_BYTES, expected, actual)
    return n, info


def read_verified(target: ResidencyPath, info: ObjectInfo, view: memoryview) -> int | None:
    """Read all of a layer object (``view`` is ``size`` bytes) and verify every chunk.

    The store's ``_read_verified`` for layer objects (get, relocation): None when it verifies,
    else the crc32c read for the first bad chunk (``view`` is then zeroed).
    """
    bad = _read_chunks(target, info, 0, view)
    return None if bad is None else bad[2]


def _drop(site: LayerSite, entry: IndexEntry, bad: tuple[int, int, int]) -> None:
    info = entry.info
    logger.error(
        "checksum mismatch: tenant %s layer object %r on %s at %d+%d generation %d, chunk %d "
        "(stored crc32c %#010x, read %#010x); dropping the object",
        info.tenant,
        info.key,
        info.path,
        info.offset,
        info.length,
        info.generation,
        *bad,
    )
    site.layer_drop(entry)


class _Bad(Exception):
    """Internal: a chunk failed its crc (stops the other pieces)."""


_local = threading.local()


def _chunk_buffer() -> memoryview:
    """This thread's page-aligned buffer of one chunk (for chunks only partly in a range)."""
    view = getattr(_local, "chunk", None)
    if view is None:
        view = memoryview(mmap.mmap(-1, LAYER_CHUNK_BYTES))
        _local.chunk = view
    return view


def _read_chunks(
    target: ResidencyPath, info: ObjectInfo, offset: int, out: memoryview
) -> tuple[int, int, int] | None:
    """Read ``[offset, offset + len(out))`` of ``info`` into ``out``, verifying every chunk.

    Returns None, or ``(chunk, stored crc, read crc)`` of a failed chunk after zeroing ``out``.
    """
    n = out.nbytes
    if n == 0:
        return None
    size, crcs = info.size, info.chunk_crcs
    first = offset // LAYER_CHUNK_BYTES
    last = (offset + n - 1) // LAYER_CHUNK_BYTES
    found: list[tuple[int, int, int]] = []

    def piece(index: int) -> None:
        chunk = first + index
        c0 = chunk * LAYER_CHUNK_BYTES
        c1 = min(c0 + LAYER_CHUNK_BYTES, size)
        lo, hi = max(c0, offset), min(c1, offset + n)
        extent = Extent(info.offset + c0, info.length - c0)
        if lo == c0 and hi == c1:
            view = out[c0 - offset : c1 - offset]
            target.read(extent, view)
            actual = crc32c(view, 0, _GIL_RELEASE)
        else:
            whole = _chunk_buffer()[: c1 - c0]
            target.read(extent, whole)
            actual = crc32c(whole, 0, _GIL_RELEASE)
            out[lo - offset : hi - offset] = whole[lo - c0 : hi - c0]
        if actual != crcs[chunk]:
            found.append((chunk, crcs[chunk], actual))
            raise _Bad

    engine = getattr(target, "engine", None)
    try:
        if isinstance(engine, DirectEngine):
            engine.run_pieces(last - first + 1, piece, fan_out=True)
        else:
            for index in range(last - first + 1):
                piece(index)
    except _Bad:
        pass
    if not found:
        return None
    zero(out)
    return min(found)
