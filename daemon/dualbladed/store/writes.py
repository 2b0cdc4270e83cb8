"""The store's write side: put (one, or a group in one transaction), delete, session release.

A mixin of :class:`~dualbladed.store.objects.ObjectStore`: it runs on the store's lock, index,
paths and metadata commit, under the rules (and the lock order) stated there.

Put (crash ordering; see also the MetaStore docstring)::

    validate -> xxh3-64 of the payload -> allocate a *fresh* extent (lock)
             -> [put.after_alloc] -> write it (no lock) -> [put.after_data_write]
             -> durable: path.flush() (no lock) -> [put.after_flush]
             -> [put.group_before_commit]
             -> commit the row (lock; synchronous=FULL when durable) -> [put.after_commit]
             -> free the replaced object's extent (lock; deferred while readers pin it)
             -> acknowledge

The first line and a half is :meth:`~StoreWrites.stage_put`, the rest :meth:`commit_puts`, which
commits a whole group of staged puts (a Batch's) in one transaction, flushing each written path
once first when any of them is durable (group commit, :mod:`dualbladed.store.group`).

Delete: find (lock) -> [delete.before_commit] -> commit the row's removal
-> [delete.after_commit] -> free the extent. The bracketed names are kill points
(:mod:`dualbladed.killpoints`): the crash loop SIGKILLs the daemon there and checks that every
acknowledged state survives.

A crash before the commit leaves the old row and the old extent untouched, and the new extent is
free after restart because free maps are rebuilt from committed rows only. Any failure frees the
new extent and leaves the old object intact. Ephemeral objects never touch SQLite: they live in
the in-memory index, die with their session, and after a crash their space is simply free.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import xxhash

from dualbladed.alloc.abstract import Extent
from dualbladed.errors import DualbladeError, InvalidArgument
from dualbladed.killpoints import killpoint
from dualbladed.store.group import (
    PutSpec,
    StagedPut,
    committed,
    flush_staged,
    note_installed,
    write_all,
    write_staged,
)
from dualbladed.store.index import IndexEntry, ObjectInfo, entry_from_values, shared_int
from dualbladed.store.input import as_bytes_view, check_key

if TYPE_CHECKING:
    from dualbladed.paths.abstract import ResidencyPath
    from dualbladed.store.index import ObjectIndex
    from dualbladed.store.pins import HitPins

logger = logging.getLogger(__name__)

_Todo = tuple[int, bytes, memoryview, str, int]


def _by_path(todo: list[_Todo]) -> dict[str, list[_Todo]]:
    groups: dict[str, list[_Todo]] = {}
    for item in todo:
        groups.setdefault(item[3], []).append(item)
    return groups


class StoreWrites:
    """The write half of ``ObjectStore`` (a mixin; see the module docstring)."""

    _index: ObjectIndex
    _lock: threading.Lock
    _next_generation: int
    _paths: dict[str, ResidencyPath]
    _pins: HitPins
    max_object_bytes: int

    if TYPE_CHECKING:

        def _allocate(
            self, target: ResidencyPath, path_name: str, size: int, *, durable: bool
        ) -> Extent: ...
        def _check_open(self) -> None: ...
        def _choose_path(self, tenant: str, size: int, hint: str | None) -> str: ...
        def _commit(
            self, entry: IndexEntry | None, old: IndexEntry | None, *, durable: bool
        ) -> None: ...
        def _commit_group(
            self, pairs: list[tuple[IndexEntry, IndexEntry | None]], *, durable: bool
        ) -> None: ...
        def _require(self, tenant: str, key: bytes) -> IndexEntry: ...
        def _retire(self, entry: IndexEntry) -> None: ...

    def put(
        self,
        tenant: str,
        key: bytes,
        src: memoryview,
        *,
        persistent: bool = False,
        durable: bool = False,
        session: str | None = None,
        path: str | None = None,
    ) -> ObjectInfo:
        """Store ``src`` under ``(tenant, key)``, replacing any previous version.

        Acknowledged (returns) only after the metadata commit. Ephemeral objects
        (``persistent=False``) belong to ``session`` when one is given and are freed by
        :meth:`release_session`; persistent objects outlive sessions (``session`` is ignored).

        Raises:
            InvalidArgument: bad tenant, key, size or path name.
            OutOfSpace: no free extent on the chosen path is large enough.
            DeviceIOError: the write or flush failed. In every error case nothing changed.
        """
        staged = self.stage_put(
            tenant, key, src, persistent=persistent, durable=durable, session=session, path=path
        )
        return self.commit_puts([staged])[0]

    def stage_put(
        self,
        tenant: str,
        key: bytes,
        src: memoryview,
        *,
        persistent: bool = False,
        durable: bool = False,
        session: str | None = None,
        path: str | None = None,
    ) -> StagedPut:
        """The first half of :meth:`put`: validate, checksum, allocate and write (no lock held
        for the I/O) -- but neither flush nor commit. Hand the result to :meth:`commit_puts`
        (with others: one transaction for all), or to :meth:`abandon_puts`.

        Raises what :meth:`put` raises before its commit; nothing changed then.
        """
        (got,) = self.stage_many(tenant, [PutSpec(key, src, persistent, durable, session, path)])
        if isinstance(got, BaseException):
            raise got
        return got

    def stage_many(self, tenant: str, puts: Sequence[PutSpec]) -> list[StagedPut | DualbladeError]:
        """:meth:`stage_put` for many puts of one tenant; one result (or error) per put.

        The extents are allocated under one lock acquisition, and a path that supports it
        (:meth:`DirectPath.write_many`) writes neighbouring extents with one ``pwritev``: a
        batch of small puts on a fresh namespace becomes a few large writes. A put that fails
        owns nothing afterwards; the others are unaffected.
        """
        out: list[StagedPut | DualbladeError | None] = [None] * len(puts)
        todo: list[tuple[int, bytes, memoryview, str, int]] = []
        for i, spec in enumerate(puts):
            try:
                key = check_key(tenant, spec.key)
                data = as_bytes_view(spec.src, writable=False, what="source")
                size = data.nbytes
                if not 1 <= size <= self.max_object_bytes:
                    raise InvalidArgument(
                        f"object size {size} is outside 1..{self.max_object_bytes} bytes "
                        f"(key {key!r})"
                    )
                path_name = self._choose_path(tenant, size, spec.path)
            except DualbladeError as err:
                out[i] = err
                continue
            todo.append((i, key, data, path_name, xxhash.xxh3_64_intdigest(data)))
        extents: dict[int, Extent] = {}
        with self._lock:
            self._check_open()
            for path_name, group in _by_path(todo).items():
                self._allocate_group(path_name, group, puts, extents, out)
        writes: dict[str, list[tuple[int, Extent, memoryview]]] = {}
        for i, _, data, path_name, _ in todo:
            if i in extents:
                writes.setdefault(path_name, []).append((i, extents[i], data))

        def write() -> None:
            for path_name, items in writes.items():
                target = self._paths[path_name]
                errors = write_all(target, [(e, d) for _, e, d in items])
                for (i, _, _), err in zip(items, errors, strict=True):
                    if err is not None:
                        out[i] = err

        try:
            write_staged(write)
        except BaseException:
            self._release_all({i: e for i, e in extents.items()}, todo)
            raise
        failed = {i: e for i, e in extents.items() if out[i] is not None}
        if failed:
            self._release_all(failed, todo)
        for i, key, data, path_name, checksum in todo:
            if out[i] is None:
                spec = puts[i]
                out[i] = StagedPut(
                    tenant,
                    key,
                    data.nbytes,
                    path_name,
                    extents[i],
                    checksum,
                    spec.persistent,
                    spec.durable,
                    spec.session,
                )
        return out  # type: ignore[return-value]  # every slot is filled above

    def _allocate_group(
        self,
        path_name: str,
        group: list[tuple[int, bytes, memoryview, str, int]],
        puts: Sequence[PutSpec],
        extents: dict[int, Extent],
        out: list[StagedPut | DualbladeError | None],
    ) -> None:
        """Extents for the puts of one path, under the lock. Many puts first try one
        allocation of their aligned total, cut into one extent each (neighbours: written with
        one ``pwritev``, and each freed on its own later, since free maps track free space
        only); if no free range is that large, each put is allocated alone (best fit, evicting
        as a single put would)."""
        target = self._paths[path_name]
        if len(group) > 1:
            align = target.alignment
            lengths = [-(-data.nbytes // align) * align for _, _, data, _, _ in group]
            try:
                whole = target.allocate(sum(lengths))
            except DualbladeError:
                pass  # fragmented or full: one at a time below
            else:
                offset = whole.offset
                for (i, *_), length in zip(group, lengths):
                    extents[i] = Extent(offset, length)
                    offset += length
                return
        for i, _, data, _, _ in group:
            try:
                extents[i] = self._allocate(target, path_name, data.nbytes, durable=puts[i].durable)
            except DualbladeError as err:
                out[i] = err

    def _release_all(
        self, extents: Mapping[int, Extent], todo: list[tuple[int, bytes, memoryview, str, int]]
    ) -> None:
        where = {i: path_name for i, _, _, path_name, _ in todo}
        with self._lock:
            for i, extent in extents.items():
                self._paths[where[i]].release(extent)

    def abandon_puts(self, staged: Sequence[StagedPut]) -> None:
        """Free the extents of staged puts that will not be committed."""
        with self._lock:
            for st in staged:
                self._paths[st.path].release(st.extent)

    def commit_puts(self, staged: Sequence[StagedPut]) -> list[ObjectInfo]:
        """Commit staged puts of distinct keys in one metadata transaction; acknowledge all.

        Crash ordering as for :meth:`put`, per group: when any put is durable, every path the
        group wrote is flushed first and the transaction commits with ``synchronous=FULL``, so
        no put is acknowledged before its data and its row are durable. A crash before the
        commit leaves every old version and frees every new extent (rows are the only truth);
        after it, all of the group's rows are committed (a transaction is atomic). If the
        commit fails, every staged extent is freed and nothing changed.

        The group's puts get distinct ``last_access`` stamps, ``now`` plus one float ulp
        (~0.24 us today) per put in group order, not one shared ``now``: the recency and LRU
        orders (``SortedKeyList`` s keyed by ``last_access``, :mod:`.lru`) find an entry by
        bisecting to its stamp and then scan the entries with the same stamp one by one in
        Python, so 1000 equal stamps made every later touch or retire of such an entry walk
        ~500 of them per order. The stamps are persisted, so a restart keeps them distinct.
        """
        if not staged:
            return []
        if len({(st.tenant, st.key) for st in staged}) != len(staged):
            self.abandon_puts(staged)
            raise InvalidArgument("a group commit needs distinct keys")
        try:
            flush_staged(
                [self._paths[name] for name in {st.path for st in staged}],
                durable=any(st.durable for st in staged),
            )
        except BaseException:
            self.abandon_puts(staged)
            raise
        with self._lock:
            try:
                self._check_open()
                now = time.time()
                tick = math.ulp(now)  # distinct stamps per put: see the note below
                first = self._next_generation
                lookup = self._index.lookup
                pairs = []
                for i, st in enumerate(staged):
                    extent = st.extent
                    entry = entry_from_values(  # the entry at slot-setter speed
                        (
                            st.tenant,
                            st.key,
                            shared_int(st.size),
                            st.path,
                            extent.offset,
                            shared_int(extent.length),
                            st.checksum,
                            first + i,
                            st.persistent,
                            now + i * tick,
                            None if st.persistent else st.session,
                        )
                    )
                    pairs.append((entry, lookup(st.tenant, st.key)))
                self._commit_group(pairs, durable=any(st.durable for st in staged))
            except BaseException:
                for st in staged:
                    self._paths[st.path].release(st.extent)
                raise
            committed()
            self._next_generation += len(staged)
            for _, old in pairs:
                if old is not None:
                    self._retire(old)
            self._index.install_many([entry for entry, _ in pairs])
        note_installed(len(pairs))  # outside the lock: may collect and freeze the heap
        return [entry.info for entry, _ in pairs]

    def delete(self, tenant: str, key: bytes, *, durable: bool = False) -> ObjectInfo:
        """Remove one object and free its space (once no reader pins it).

        ``durable=True`` commits the removal with ``synchronous=FULL``: after the return a power
        loss cannot bring the object back (a plain delete may come back, never torn).
        """
        key = check_key(tenant, key)
        with self._lock:
            self._check_open()
            entry = self._require(tenant, key)
            killpoint("delete.before_commit")
            self._commit(None, entry, durable=durable)
            killpoint("delete.after_commit")
            self._retire(entry)
            return entry.snapshot()

    def release_session(self, session: str) -> int:
        """Free every ephemeral object of ``session``; return how many there were."""
        with self._lock:
            self._check_open()
            self._pins.release_session(session)
            members = self._index.session_members(session)
            for i, entry in enumerate(members):
                if i == len(members) // 2:
                    killpoint("release_session.mid")
                self._retire(entry)
        if members:
            logger.info("session %s released: %d ephemeral objects freed", session, len(members))
        return len(members)
