"""Crash-safe metadata: the committed extent table, tenants and the namespace binding.

The store is one SQLite database (``state_dir/meta.sqlite3``) in WAL mode, opened through the
standard library's :mod:`sqlite3`. SQLite gives us atomic, ordered commits and survives torn
writes of its own pages, so this module only has to decide *what* is committed and *when* it is
made durable.

Schema (version :data:`SCHEMA_VERSION`)::

    meta(k TEXT PRIMARY KEY, v TEXT)            -- "schema_version", "namespace_uuid"
    tenants(name TEXT PRIMARY KEY,              -- "uid/label"
            uid INTEGER, label TEXT, created REAL)
    objects(tenant TEXT, key BLOB,
            path TEXT,                          -- residency path name ("direct", "pagecache")
            offset INTEGER, length INTEGER,     -- the extent on that path (length is rounded up)
            size INTEGER,                       -- payload bytes (<= length)
            checksum INTEGER,                   -- xxh3-64 of the payload, as a *signed* int64
            generation INTEGER,                 -- store-wide, strictly increasing per commit
            persistent INTEGER, last_access REAL,
            capacity INTEGER,                   -- v2: a layer object's reserved bytes; 0 = ordinary
            chunk_crcs BLOB,                    -- v2: layer objects: crc32c of each 1 MiB chunk
                                                --     of [0, size), little-endian u32s; else x''
            PRIMARY KEY (tenant, key))

Versions: 1 had no ``capacity``/``chunk_crcs``; opening a v1 database adds both columns with
their defaults (0, x'') in one transaction and records version 2, so every v1 row reads back
as the ordinary object it was. A version this code does not know is refused.

A layer object's row is rewritten by every acknowledged append (new ``size`` and
``chunk_crcs`` together, after the data write), so a crash exposes the size and crcs of some
acknowledged append, never bytes that were not acknowledged.

Only committed objects are rows here; the free map of every path is derived from this table at
start-up (``reserve`` each row), so space that was allocated but never committed is free again
after a crash, and the two can never disagree.

Crash ordering (the object store follows it; this module provides the commits):

1. data is written to a fresh extent (never over a live one);
2. for a durable put the path is flushed (fdatasync) *before* the commit;
3. the row is committed -- ``synchronous=FULL`` for a durable transaction (the WAL is fsynced
   before ``COMMIT`` returns), ``NORMAL`` otherwise (WAL keeps every commit atomic and ordered;
   a power loss may drop the most recent non-durable commits, never reorder or tear them);
4. only then is the replaced extent freed, in memory.

Because commits are ordered, every state that survives a crash is the state after some prefix of
the committed transactions. A lost non-durable delete can resurrect a row whose extent was since
reused; the payload checksum catches that on read and the row is dropped, never served.

The namespace binding: ``meta.namespace_uuid`` must equal the superblock UUID of the namespace
being opened, otherwise the state directory belongs to another device and opening is refused
with :class:`~dualbladed.errors.SuperblockError`.

Locking: one connection (``check_same_thread=False``) guarded by one re-entrant lock,
``MetaStore._lock``. A :meth:`MetaStore.txn` holds it from ``BEGIN`` to ``COMMIT``/``ROLLBACK``.
Lock order: ``ObjectStore._lock`` -> ``MetaStore._lock``; nothing here calls back out, so the
reverse order never happens.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat

from dualbladed.errors import FailedPrecondition, SuperblockError
from dualbladed.oserrors import from_sqlite_error

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    uid INTEGER NOT NULL,
    label TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    tenant TEXT NOT NULL,
    key BLOB NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    persistent INTEGER NOT NULL,
    last_access REAL NOT NULL,
    capacity INTEGER NOT NULL DEFAULT 0,
    chunk_crcs BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (tenant, key)
);
"""

#: ``from version -> statements`` bringing a database to the next version.
_MIGRATIONS = {
    1: (
        "ALTER TABLE objects ADD COLUMN capacity INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE objects ADD COLUMN chunk_crcs BLOB NOT NULL DEFAULT x''",
    ),
}

_COLUMNS = (
    "tenant, key, path, offset, length, size, checksum, generation, persistent, last_access, "
    "capacity, chunk_crcs"
)

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def to_signed64(value: int) -> int:
    """Map an unsigned 64-bit checksum onto SQLite's signed INTEGER range."""
    return value - _U64 if value > _I64_MAX else value


def to_unsigned64(value: int) -> int:
    return value + _U64 if value < 0 else value


def pack_crcs(crcs: tuple[int, ...]) -> bytes:
    """Chunk crc32c values as the ``chunk_crcs`` BLOB (little-endian u32s)."""
    return struct.pack(f"<{len(crcs)}I", *crcs)


def unpack_crcs(blob: bytes) -> tuple[int, ...]:
    if len(blob) % 4:
        raise FailedPrecondition(f"chunk_crcs blob of {len(blob)} bytes is not a u32 array")
    return struct.unpack(f"<{len(blob) // 4}I", blob)


@dataclass(frozen=True)
class ObjectRecord:
    """One committed object row. ``checksum`` is the unsigned xxh3-64 value.

    Layer objects: ``capacity > 0`` and ``chunk_crcs`` one crc32c per chunk of ``[0, size)``.
    """

    tenant: str
    key: bytes
    path: str
    offset: int
    length: int
    size: int
    checksum: int
    generation: int
    persistent: bool
    last_access: float
    capacity: int = 0
    chunk_crcs: tuple[int, ...] = ()


@dataclass(frozen=True)
class TenantRecord:
    name: str
    uid: int
    label: str
    created: float


def tenant_name(uid: int, label: str) -> str:
    """The canonical tenant name ``"uid/label"``."""
    return f"{uid}/{label}"


def parse_tenant(name: str) -> tuple[int, str]:
    """Split ``"uid/label"``; a name without a numeric uid gets uid -1."""
    head, sep, label = name.partition("/")
    if sep and head.isdigit():
        return int(head), label
    return -1, name


_UPSERT = f"INSERT OR REPLACE INTO objects ({_COLUMNS}) VALUES ({', '.join('?' * len(_COLUMNS.split(',')))})"

# An ordinary object's row binds the ten columns before ``capacity`` and leaves those two to
# their declared defaults (0, x''): the same row, and ~0.5 us less per row at 10^6 rows (the
# packed put's whole metadata cost is ~4.5 us per object; measured with this schema in WAL).
_ORDINARY_COLUMNS = _COLUMNS.rsplit(", capacity", 1)[0]
_UPSERT_ORDINARY = (
    f"INSERT OR REPLACE INTO objects ({_ORDINARY_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(_ORDINARY_COLUMNS.split(',')))})"
)


def _row(rec: ObjectRecord) -> tuple:
    """``rec`` as the row :data:`_UPSERT` binds, in ``_COLUMNS`` order (the inverse of
    :func:`_row_to_record`)."""
    return (
        rec.tenant,
        rec.key,
        rec.path,
        rec.offset,
        rec.length,
        rec.size,
        to_signed64(rec.checksum),
        rec.generation,
        int(rec.persistent),
        rec.last_access,
        rec.capacity,
        pack_crcs(rec.chunk_crcs),
    )


def object_rows(
    tenant: str,
    keys: Sequence[bytes],
    paths: Sequence[str],
    offsets: Sequence[int],
    lengths: Sequence[int],
    sizes: Sequence[int],
    checksums: Sequence[int],
    generations: Iterable[int],
    last_access: float | Sequence[float],
) -> list[tuple]:
    """The rows of many ordinary persistent objects of one tenant, as :func:`_row` builds each
    from an :class:`ObjectRecord` (same values: ``checksum`` unsigned in, signed out;
    ``persistent`` 1), in one pass and with no record per object: a packed put's group commit
    (:mod:`dualbladed.store.packed`). The rows stop before ``capacity``: :meth:`Txn.put_rows`
    leaves it and ``chunk_crcs`` to their defaults (0, x''), an ordinary object's values.
    ``last_access``: one stamp for all, or one per object."""
    stamps = repeat(last_access) if isinstance(last_access, float) else last_access
    return [
        (tenant, k, p, o, n, s, c - _U64 if c > _I64_MAX else c, g, 1, a)
        for (k, p, o, n, s, c, g), a in zip(
            zip(keys, paths, offsets, lengths, sizes, checksums, generations, strict=True),
            stamps,
        )
    ]


def _row_to_record(row: tuple) -> ObjectRecord:
    (
        tenant,
        key,
        path,
        offset,
        length,
        size,
        checksum,
        generation,
        persistent,
        last_access,
        capacity,
        chunk_crcs,
    ) = row
    return ObjectRecord(
        tenant=tenant,
        key=bytes(key),
        path=path,
        offset=offset,
        length=length,
        size=size,
        checksum=to_unsigned64(checksum),
        generation=generation,
        persistent=bool(persistent),
        last_access=last_access,
        capacity=capacity,
        chunk_crcs=unpack_crcs(bytes(chunk_crcs)),
    )


def _prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Txn:
    """The mutations allowed inside :meth:`MetaStore.txn`. Valid only inside the ``with``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, tenant: str, key: bytes) -> ObjectRecord | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM objects WHERE tenant = ? AND key = ?", (tenant, key)
        ).fetchone()
        return _row_to_record(row) if row else None

    def put(self, rec: ObjectRecord) -> ObjectRecord | None:
        """Insert or replace ``rec``; return the row it replaced, if any."""
        old = self.get(rec.tenant, rec.key)
        self._conn.execute(_UPSERT, _row(rec))
        return old

    def set_layer_size(
        self, tenant: str, key: bytes, generation: int, size: int, chunk_crcs: tuple[int, ...]
    ) -> bool:
        """Advance a layer object's committed ``size`` and ``chunk_crcs`` (an acknowledged
        append); False when no row of that generation exists (replaced meanwhile)."""
        cur = self._conn.execute(
            "UPDATE objects SET size = ?, chunk_crcs = ? "
            "WHERE tenant = ? AND key = ? AND generation = ?",
            (size, pack_crcs(chunk_crcs), tenant, key, generation),
        )
        return cur.rowcount == 1

    def put_many(self, recs: Iterable[ObjectRecord]) -> None:
        """Insert or replace many rows in one statement (group commit; no old rows returned)."""
        self._conn.executemany(_UPSERT, (_row(rec) for rec in recs))

    def put_rows(self, rows: list[tuple]) -> None:
        """:meth:`put_many` of ordinary objects' rows from :func:`object_rows` (the columns
        before ``capacity``, in ``_COLUMNS`` order)."""
        self._conn.executemany(_UPSERT_ORDINARY, rows)

    def delete(self, tenant: str, key: bytes) -> ObjectRecord | None:
        """Delete one row; return it, or None when there was none."""
        old = self.get(tenant, key)
        if old is not None:
            self._conn.execute("DELETE FROM objects WHERE tenant = ? AND key = ?", (tenant, key))
        return old

    def touch_many(self, updates: Iterable[tuple[str, bytes, float]]) -> None:
        """Set ``last_access`` for many ``(tenant, key, when)``; missing rows are ignored."""
        self._conn.executemany(
            "UPDATE objects SET last_access = ? WHERE tenant = ? AND key = ?",
            ((when, tenant, key) for tenant, key, when in updates),
        )

    def upsert_tenant(self, name: str, uid: int, label: str) -> None:
        """Create the tenant if absent (``created`` is kept on later calls)."""
        self._conn.execute(
            "INSERT INTO tenants (name, uid, label, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET uid = excluded.uid, label = excluded.label",
            (name, uid, label, time.time()),
        )


class MetaStore:
    """The SQLite metadata store, bound to one namespace UUID.

    Args:
        path: the database file (created when absent).
        namespace_uuid: the superblock UUID of the namespace this state belongs to.

    Raises:
        SuperblockError: the database is bound to a different namespace.
        FailedPrecondition: the database has a schema version this code does not know.
    """

    def __init__(self, path: str | os.PathLike[str], *, namespace_uuid: uuid.UUID) -> None:
        self.path = os.fspath(path)
        self.namespace_uuid = namespace_uuid
        # Lock order: ObjectStore._lock -> MetaStore._lock (never the reverse).
        self._lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction spans exactly
        # the ``with txn()`` block and PRAGMA synchronous can be set between transactions.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._closed = False
        try:
            self._init()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    def _init(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise FailedPrecondition(f"{self.path}: cannot enable WAL mode (got {mode!r})")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        with self.txn(durable=True):
            rows = dict(self._conn.execute("SELECT k, v FROM meta").fetchall())
            if not rows:
                self._conn.executemany(
                    "INSERT INTO meta (k, v) VALUES (?, ?)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("namespace_uuid", str(self.namespace_uuid)),
                    ],
                )
                logger.info("metadata %s created for namespace %s", self.path, self.namespace_uuid)
                return
            version = rows.get("schema_version")
            while version is not None and version.isdigit() and int(version) in _MIGRATIONS:
                for statement in _MIGRATIONS[int(version)]:
                    self._conn.execute(statement)
                version = str(int(version) + 1)
                self._conn.execute("UPDATE meta SET v = ? WHERE k = 'schema_version'", (version,))
                logger.info("metadata %s migrated to schema version %s", self.path, version)
            if version != str(SCHEMA_VERSION):
                raise FailedPrecondition(
                    f"{self.path}: metadata schema version {version}, this daemon reads "
                    f"version {SCHEMA_VERSION}"
                )
            bound = rows.get("namespace_uuid")
            if bound != str(self.namespace_uuid):
                raise SuperblockError(
                    f"state dir belongs to namespace {bound}, device is {self.namespace_uuid} "
                    f"({self.path})"
                )

    @contextmanager
    def txn(self, *, durable: bool = False) -> Iterator[Txn]:
        """One write transaction: commits on exit, rolls back on any exception.

        ``durable=True`` commits with ``synchronous=FULL`` so the commit is on stable storage
        when the ``with`` block exits; otherwise ``NORMAL`` (atomic and ordered, but the last
        commits may be lost on power failure).
        """
        with self._lock:
            self._check_open()
            if durable:
                self._conn.execute("PRAGMA synchronous=FULL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield Txn(self._conn)
                except BaseException:
                    if self._conn.in_transaction:  # SQLite may have rolled back itself (FULL)
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                typed = from_sqlite_error(exc, context=f"metadata commit to {self.path}")
                if typed is None:
                    raise
                if self._conn.in_transaction:  # a failed COMMIT leaves the transaction open
                    self._conn.execute("ROLLBACK")
                raise typed from exc
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

    # -- single-statement conveniences (each its own transaction) --------------------------------

    def put(self, rec: ObjectRecord, *, durable: bool = False) -> ObjectRecord | None:
        with self.txn(durable=durable) as t:
            return t.put(rec)

    def delete(self, tenant: str, key: bytes, *, durable: bool = False) -> ObjectRecord | None:
        with self.txn(durable=durable) as t:
            return t.delete(tenant, key)

    def touch_many(self, updates: Iterable[tuple[str, bytes, float]]) -> None:
        batch = list(updates)
        if batch:
            with self.txn() as t:
                t.touch_many(batch)

    def upsert_tenant(self, name: str, uid: int, label: str) -> None:
        with self.txn() as t:
            t.upsert_tenant(name, uid, label)

    # -- reads -------------------------------------------------------------------------------------

    def get(self, tenant: str, key: bytes) -> ObjectRecord | None:
        with self._lock:
            self._check_open()
            return Txn(self._conn).get(tenant, key)

    def records(self) -> list[ObjectRecord]:
        """Every committed object, in generation order (start-up rebuild)."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM objects ORDER BY generation"
            ).fetchall()
        return [_row_to_record(r) for r in rows]

    def __iter__(self) -> Iterator[ObjectRecord]:
        return iter(self.records())

    def iter_records(self) -> Iterator[ObjectRecord]:
        """Every committed object in storage order, streamed (no sort in SQLite's temp store,
        no list of all rows: offline checks of millions of objects)."""
        return map(_row_to_record, self.scan_rows())

    def scan_rows(self, batch: int = 65536) -> Iterator[tuple]:
        """Every committed row as a raw tuple in ``_COLUMNS`` order, in storage (not generation)
        order, fetched ``batch`` at a time (start-up: one SELECT, no ``ObjectRecord`` per row;
        the checksum is still the *signed* SQLite value, see :func:`to_unsigned64`)."""
        with self._lock:
            self._check_open()
            cur = self._conn.execute(f"SELECT {_COLUMNS} FROM objects")
        try:
            while True:
                with self._lock:
                    rows = cur.fetchmany(batch)
                if not rows:
                    return
                yield from rows
        finally:
            cur.close()

    def list(self, tenant: str, *, prefix: bytes = b"", limit: int = 0) -> list[ObjectRecord]:
        """One tenant's objects whose key starts with ``prefix``, in key order.

        ``limit`` 0 means no limit. BLOBs compare with memcmp, so a key range is a prefix scan.
        """
        sql = f"SELECT {_COLUMNS} FROM objects WHERE tenant = ? AND key >= ?"
        args: list[object] = [tenant, prefix]
        upper = _prefix_upper_bound(prefix)
        if upper is not None:
            sql += " AND key < ?"
            args.append(upper)
        sql += " ORDER BY key"
        if limit > 0:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            self._check_open()
            rows = self._conn.execute(sql, args).fetchall()
        return [_row_to_record(r) for r in rows]

    def max_generation(self) -> int:
        """The highest committed generation, 0 for an empty store."""
        with self._lock:
            self._check_open()
            row = self._conn.execute("SELECT MAX(generation) FROM objects").fetchone()
        return int(row[0] or 0)

    def tenants(self) -> list[TenantRecord]:
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT name, uid, label, created FROM tenants ORDER BY name"
            ).fetchall()
        return [TenantRecord(*r) for r in rows]

    def integrity_check(self) -> str:
        """SQLite's own consistency check; ``"ok"`` when the file is sound."""
        with self._lock:
            self._check_open()
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def sync(self) -> None:
        """Make every commit so far durable (checkpoint the WAL; it is fsynced first)."""
        with self._lock:
            self._check_open()
            self._conn.execute("PRAGMA wal_checkpoint(FULL)")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                # Folding the WAL back only shortens the next open; every commit is already in
                # the WAL, so a checkpoint that fails (a full state filesystem) loses nothing.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                logger.warning("metadata %s: WAL not checkpointed at close: %s", self.path, exc)
            finally:
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"metadata store {self.path} is closed")

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
