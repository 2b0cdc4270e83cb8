"""Packed puts: many objects of one tenant laid back to back in one buffer, stored as one group.

A mixin of :class:`~dualbladed.store.objects.ObjectStore` (the store's side of ``PutPackedOp``,
issue 14), on the store's lock, index, paths and metadata under the rules stated there.

It is :meth:`~dualbladed.store.writes.StoreWrites.stage_many` followed by
:meth:`~dualbladed.store.writes.StoreWrites.commit_puts`, all or nothing, with the same crash
ordering and the same kill points, in the same order (see :mod:`dualbladed.store.writes`)::

    validate -> xxh3-64 of each payload -> allocate fresh extents (lock) -> [put.after_alloc]
    -> write (no lock) -> [put.after_data_write] -> durable: flush each written path
    -> [put.after_flush] -> [put.group_before_commit] -> commit every row in one transaction
    (lock; synchronous=FULL when durable) -> [put.after_commit] -> free the replaced extents
    -> install -> acknowledge

What differs is only how much Python runs per object, which is what a batch of 1000 small puts
is made of (the ``dualblade-bench scale`` target is 50,000 puts/s): no ``PutSpec``,
``StagedPut``, ``ObjectRecord`` or ``Extent`` per object, rows built as tuples in one pass
(:func:`dualbladed.store.meta.object_rows`), and, when the whole group goes to one path and
every payload fills its extent exactly (sizes a multiple of the path's alignment, as 4 KiB KV
chunks are), one write of the caller's whole buffer to one extent instead of one iovec each.
The bytes on the device are the same either way: each object's extent holds its payload, and
the alignment padding of a smaller object is written as zeros by the path, as before.

Overlapped (a non-durable group of at most :data:`OVERLAP_MAX_BYTES`): the write goes to a
writer thread right after the allocation, and meanwhile the request's thread checksums the
payloads and, under the lock, inserts the rows into an open transaction; ``COMMIT`` waits for
the write (a failed write rolls the transaction back). The kill points and the crash states
are the same (uncommitted rows are no state), and so is the order the paths see: data, then
the commit. What changes is the time: a 4 MiB group's write (~4 ms on a 1 GB/s disk) and its
1000 row inserts (~4 ms) no longer add up. The price: the store lock is held while the write
finishes, so the bound keeps that to about what the inserts hold it anyway; a durable group
keeps the plain order (its flush must not run under the lock).

All or nothing: a put refused before the commit (bad key, no room, a failed write) frees every
extent of the group and raises that error; nothing changed. Objects that the placement sends to
different paths are grouped by path, as ``stage_many`` does.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import DualbladeError, FailedPrecondition, InvalidArgument
from dualbladed.store.group import (
    committed,
    flush_staged,
    note_installed,
    write_all,
    write_staged,
)
from dualbladed.store.index import IndexEntry, entry_from_values, shared_int
from dualbladed.store.input import MAX_KEY_BYTES, as_bytes_view, check_key
from dualbladed.store.meta import object_rows

if TYPE_CHECKING:
    from dualbladed.paths.abstract import ResidencyPath
    from dualbladed.store.index import ObjectIndex

__all__ = ["OVERLAP_MAX_BYTES", "PUT_WRITERS", "PackedDone", "StorePacked"]

_xxh3 = xxhash.xxh3_64_intdigest

#: A non-durable packed group of at most this many bytes is written while its rows go in.
OVERLAP_MAX_BYTES = 4 << 20

#: Threads that write overlapped groups (store-wide; a put waits for its own write).
PUT_WRITERS = 2


@dataclass(frozen=True, slots=True)
class _Staged:
    """A packed put's allocations: object ``i`` starts at byte ``starts[i]`` of its path and
    its extent is ``ext_lens[i]`` long (the size rounded up to the path's alignment);
    ``allocs`` are the extents allocated (one per path, or one per object), which is what a
    failure before the commit releases (the same space)."""

    starts: list[int]
    ext_lens: list[int]
    allocs: list[tuple[str, Extent]]


@dataclass(frozen=True, slots=True)
class PackedDone:
    """A committed packed put: object ``i`` has generation ``first_generation + i`` (one
    group commit numbers its objects consecutively) and lies on ``paths[i]``."""

    first_generation: int
    paths: tuple[str, ...]


def _packed_offsets(lengths: Sequence[int], align: int) -> tuple[list[int], int]:
    """Where each object starts in the packed buffer (each rounded up to ``align``) and the
    span of all of them."""
    offsets = []
    span = 0
    for n in lengths:
        offsets.append(span)
        span += -(-n // align) * align
    return offsets, span


class StorePacked:
    """The packed-put half of ``ObjectStore`` (a mixin; see the module docstring)."""

    _index: ObjectIndex
    _lock: threading.Lock
    _packed_writer: ThreadPoolExecutor | None
    _next_generation: int
    _paths: dict[str, ResidencyPath]
    max_object_bytes: int

    if TYPE_CHECKING:

        def _allocate(
            self, target: ResidencyPath, path_name: str, size: int, *, durable: bool
        ) -> Extent: ...
        def _check_open(self) -> None: ...
        def _choose_paths(
            self, tenant: str, sizes: Sequence[int], hint: str | None
        ) -> list[str]: ...
        def _commit_rows(
            self,
            tenant: str,
            rows: list[tuple],
            gone: list[tuple[str, bytes]],
            *,
            durable: bool,
            before_commit: Callable[[], None] | None = None,
        ) -> None: ...
        def _retire(self, entry: IndexEntry) -> None: ...

    def put_packed(
        self,
        tenant: str,
        keys: Sequence[bytes],
        region: memoryview,
        lengths: Sequence[int],
        *,
        align: int,
        persistent: bool = False,
        durable: bool = False,
        session: str | None = None,
        path: str | None = None,
    ) -> PackedDone:
        """Store object ``i`` = ``region[offset_i : offset_i + lengths[i]]`` under ``keys[i]``,
        where each object starts at the previous one's end rounded up to ``align``; all of them
        or none (see the module docstring). Acknowledged only after the one metadata commit.

        Raises:
            InvalidArgument: bad tenant, key, size, path name, repeated key, or a region too
                short for the lengths.
            OutOfSpace, DeviceIOError: as :meth:`put`. In every error case nothing changed.
        """
        n = len(keys)
        if n == 0 or len(lengths) != n:
            raise InvalidArgument(
                f"a packed put needs one length per key: {n} keys, {len(lengths)}"
            )
        keys = self._packed_keys(tenant, keys)
        if min(lengths) < 1 or max(lengths) > self.max_object_bytes:
            bad = next(x for x in lengths if not 1 <= x <= self.max_object_bytes)
            raise InvalidArgument(f"object size {bad} is outside 1..{self.max_object_bytes} bytes")
        offsets, span = _packed_offsets(lengths, align)
        region = as_bytes_view(region, writable=False, what="source")
        views: list[memoryview] = []
        pending: Future[None] | None = None
        try:
            if span > region.nbytes:
                raise InvalidArgument(
                    f"packed objects span {span} bytes, the buffer {region.nbytes}"
                )
            names = self._choose_paths(tenant, lengths, path)
            views = [region[o : o + size] for o, size in zip(offsets, lengths)]
            overlap = not durable and span <= OVERLAP_MAX_BYTES
            checksums = [] if overlap else list(map(_xxh3, views))
            staged = self._stage_packed(names, lengths, durable)

            def write() -> None:
                write_staged(
                    lambda: self._write_packed(names, staged, views, lengths, region, span)
                )

            try:
                if overlap:
                    try:
                        pending = self._put_writer().submit(write)
                    except RuntimeError as exc:  # close() shut the writer down since
                        raise FailedPrecondition("object store is closed") from exc
                    checksums = list(map(_xxh3, views))
                else:
                    write()
                    flush_staged([self._paths[name] for name in set(names)], durable=durable)
            except BaseException:
                if pending is not None:
                    futures_wait([pending])
                self._release_packed(staged)
                raise
            if pending is not None:
                return self._commit_packed(
                    tenant, keys, lengths, names, staged, checksums, persistent, durable,
                    session, pending,
                )  # fmt: skip
        finally:
            if pending is not None:  # never give the source back while a write reads it
                futures_wait([pending])
            for v in views:
                v.release()
            region.release()
        return self._commit_packed(
            tenant, keys, lengths, names, staged, checksums, persistent, durable, session
        )

    def _put_writer(self) -> ThreadPoolExecutor:
        """The threads that write overlapped packed groups (module docstring), made once."""
        with self._lock:
            self._check_open()
            if self._packed_writer is None:
                self._packed_writer = ThreadPoolExecutor(
                    PUT_WRITERS, thread_name_prefix="dualblade-put-write"
                )
            return self._packed_writer

    @staticmethod
    def _packed_keys(tenant: str, keys: Sequence[bytes]) -> list[bytes]:
        """The keys as ``bytes``, checked as :func:`check_key` checks one (which it is, for any
        key that is not plain ``bytes`` of a valid length), and distinct."""
        check_key(tenant, keys[0])  # the tenant
        out = [
            k if type(k) is bytes and 0 < len(k) <= MAX_KEY_BYTES else check_key(tenant, k)
            for k in keys
        ]
        if len(set(out)) != len(out):
            raise InvalidArgument("a packed put needs distinct keys")
        return out

    def _stage_packed(self, names: list[str], lengths: Sequence[int], durable: bool) -> _Staged:
        """Allocate every object's extent under the lock: per path, one extent of the group's
        aligned total when a free range holds it (neighbours: one write), else one per object
        (evicting, as a single put would). On failure every allocation made is released."""
        n = len(lengths)
        starts = [0] * n
        ext_lens = [0] * n
        allocs: list[tuple[str, Extent]] = []
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        with self._lock:
            self._check_open()
            try:
                for name, members in groups.items():
                    target = self._paths[name]
                    a = target.alignment
                    for i in members:
                        ext_lens[i] = shared_int(-(-lengths[i] // a) * a)
                    whole = None
                    if len(members) > 1:  # fragmented or full: one at a time below
                        with suppress(DualbladeError):
                            whole = target.allocate(sum(ext_lens[i] for i in members))
                    if whole is not None:
                        allocs.append((name, whole))
                        offset = whole.offset
                        for i in members:
                            starts[i] = offset
                            offset += ext_lens[i]
                        continue
                    for i in members:
                        one = self._allocate(target, name, lengths[i], durable=durable)
                        allocs.append((name, one))
                        starts[i] = one.offset
                        ext_lens[i] = shared_int(one.length)  # as the allocator rounded it
            except BaseException:
                for name, extent in allocs:
                    self._paths[name].release(extent)
                raise
        return _Staged(starts, ext_lens, allocs)

    def _write_packed(
        self,
        names: list[str],
        staged: _Staged,
        views: list[memoryview],
        lengths: Sequence[int],
        region: memoryview,
        span: int,
    ) -> None:
        """Write every payload to its extent. One path, one extent, and payloads that fill
        their extents (so the packed layout *is* the extent's): one write of the region.
        Otherwise per path through :func:`write_all` (runs of neighbours coalesced there);
        the first failure is raised (the caller frees everything)."""
        if len(staged.allocs) == 1 and span == staged.allocs[0][1].length == sum(lengths):
            name, whole = staged.allocs[0]
            with region[:span] as view:
                self._paths[name].write(whole, view)
            return
        by_path: dict[str, list[tuple[Extent, memoryview]]] = {}
        for name, start, length, view in zip(names, staged.starts, staged.ext_lens, views):
            by_path.setdefault(name, []).append((Extent(start, length), view))
        for name, items in by_path.items():
            for err in write_all(self._paths[name], items):
                if err is not None:
                    raise err

    def _release_packed(self, staged: _Staged) -> None:
        with self._lock:
            for name, extent in staged.allocs:
                self._paths[name].release(extent)

    def _commit_packed(
        self,
        tenant: str,
        keys: list[bytes],
        lengths: Sequence[int],
        names: list[str],
        staged: _Staged,
        checksums: list[int],
        persistent: bool,
        durable: bool,
        session: str | None,
        pending: Future[None] | None = None,
    ) -> PackedDone:
        """Commit every row in one transaction, then retire the replaced versions and install
        the new ones (all under the lock, as :meth:`commit_puts`); on a failed commit every
        staged extent is freed and nothing changed. ``pending``: the group's write, still in
        flight (overlapped): the rows go in first, the commit waits for it and fails with its
        error."""

        def before_commit() -> None:
            if pending is not None:
                pending.result()  # the data is written before its rows commit
                flush_staged((), durable=False)  # [put.group_before_commit]

        n = len(keys)
        owner = None if persistent else session
        with self._lock:
            try:
                self._check_open()
                now = time.time()
                tick = math.ulp(now)  # distinct stamps, as StoreWrites.commit_puts explains
                stamps = [now + i * tick for i in range(n)]
                first = self._next_generation
                lookup = self._index.lookup
                olds = [lookup(tenant, k) for k in keys]
                sizes = list(map(shared_int, lengths))
                gens = range(first, first + n)
                rows: list[tuple] = []
                gone: list[tuple[str, bytes]] = []
                if persistent:
                    rows = object_rows(
                        tenant, keys, names, staged.starts, staged.ext_lens, sizes, checksums,
                        gens, stamps,
                    )  # fmt: skip
                else:  # ephemeral: only a replaced persistent row changes in SQLite
                    gone = [(tenant, old.key) for old in olds if old and old.persistent]
                self._commit_rows(tenant, rows, gone, durable=durable, before_commit=before_commit)
            except BaseException:
                if pending is not None:
                    futures_wait([pending])  # the extents are free again only once unwritten to
                for name, extent in staged.allocs:  # (the lock is held: not _release_packed)
                    self._paths[name].release(extent)
                raise
            committed()
            self._next_generation += n
            for old in olds:
                if old is not None:
                    self._retire(old)
            self._index.install_many(
                [
                    entry_from_values(
                        (tenant, k, size, name, start, length, c, g, persistent, when, owner)
                    )
                    for k, size, name, start, length, c, g, when in zip(
                        keys, sizes, names, staged.starts, staged.ext_lens, checksums, gens, stamps
                    )
                ]
            )
        note_installed(n)  # outside the lock: may collect and freeze the heap
        return PackedDone(first, tuple(names))
