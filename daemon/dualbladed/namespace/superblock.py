"""The superblock: the namespace's root of trust, kept in two copies (A and B).

On-disk format (version 1), little-endian, one 4096-byte block per copy::

    offset size field
         0    8 magic         b"DUALBLD1"
         8    4 version       u32, format version (1)
        12   16 uuid          namespace UUID (RFC 4122 bytes); the metadata store is bound to it
        28    4 block_size    u32, logical block size the namespace was formatted with
        32    8 capacity      u64, bytes of the whole namespace
        40    8 data_start    u64, first byte the allocator may use (layout)
        48    8 seq           u64, incremented by every superblock write
        56    8 created_ns    u64, creation time, ns since the Unix epoch
        64    4 crc           u32, CRC32C (Castagnoli) of bytes [0, 64)
        68 4028 zero padding

Copy A lives at offset 0, copy B at 512 KiB; both are inside the reserved
:data:`~dualbladed.namespace.abstract.METADATA_AREA` (1 MiB), which the allocator never hands out.
A block is 4096 bytes on every namespace, so a copy is written with a single O_DIRECT write on
both 512-byte and 4Kn devices.

The checksum is CRC32C from the ``crc32c`` package (hardware SSE4.2/ARMv8 instructions, software
fallback otherwise): the same polynomial NVMe, ext4 and iSCSI use, so external tools can verify a
copy. It guards a 64-byte record, so speed is not the reason; the reason is that it is the storage
world's standard and detects every burst error up to 32 bits. zlib.crc32 was not an option even as
a fallback: the on-disk format must not depend on which packages happen to be installed. Where the
package is missing, a bit-identical table-driven CRC32C (:func:`_crc32c_py`) is used instead.

Crash ordering (why two copies):

* ``format_namespace`` zeroes the last MiB of the device (end-of-device signatures such as a
  backup GPT header or md/ddf RAID metadata), then the whole metadata area, flushes, writes A,
  flushes, writes B, flushes. A crash leaves either a zeroed metadata area (``load_or_format``
  formats again), A alone (loads A with a warning), or both.
* ``write_superblock`` writes ``seq + 1`` into the copy holding the older (or an invalid)
  superblock first, flushes, then the other copy, flushes. At every instant at least one copy
  holds a complete, checksummed superblock, and loading takes the valid copy with the highest seq.
  A torn copy fails its CRC and is ignored.

Both copies valid but with different UUIDs is not a crash state this code can produce; it is
refused rather than guessed at.
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

try:
    from crc32c import crc32c as _crc32c_lib
except ImportError:  # pragma: no cover - the package is a declared dependency
    _crc32c_lib = None

from dualbladed.errors import DeviceIOError, SuperblockError
from dualbladed.namespace.abstract import METADATA_AREA, Namespace

logger = logging.getLogger(__name__)

MAGIC = b"DUALBLD1"
FORMAT_VERSION = 1
#: Bytes of one superblock copy on disk (the struct plus zero padding).
SB_BLOCK = 4096
#: Where the two copies live.
COPY_OFFSETS: dict[str, int] = {"A": 0, "B": 512 << 10}
#: Bytes at the end of the device zeroed by ``format_namespace``.
TAIL_WIPE = 1 << 20


def _crc32c_py(data: bytes) -> int:
    """CRC32C (Castagnoli, reflected 0x82F63B78), bit-identical to ``crc32c.crc32c``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()

_crc32c: Callable[[bytes], int] = _crc32c_lib if _crc32c_lib is not None else _crc32c_py

_BODY = struct.Struct("<8sI16sIQQQQ")
_CRC = struct.Struct("<I")
_RECORD = _BODY.size + _CRC.size


@dataclass(frozen=True)
class Superblock:
    uuid: uuid.UUID
    block_size: int
    capacity: int
    data_start: int
    seq: int
    created_ns: int
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        """The full 4096-byte on-disk block."""
        body = _BODY.pack(
            MAGIC,
            self.version,
            self.uuid.bytes,
            self.block_size,
            self.capacity,
            self.data_start,
            self.seq,
            self.created_ns,
        )
        record = body + _CRC.pack(_crc32c(body))
        return record + bytes(SB_BLOCK - len(record))


@dataclass(frozen=True)
class SuperblockLoad:
    superblock: Superblock
    used_copy: str  # "A" | "B"
    warnings: tuple[str, ...] = ()


class InvalidCopy(ValueError):
    """One copy does not hold a valid superblock; ``str()`` says why."""


def decode_superblock(raw: bytes) -> Superblock:
    """Decode one on-disk copy.

    Raises:
        InvalidCopy: bad magic, bad CRC, unknown version or impossible fields.
    """
    if len(raw) < _RECORD:
        raise InvalidCopy(f"only {len(raw)} bytes, need {_RECORD}")
    body = raw[: _BODY.size]
    magic, version, uuid_bytes, block_size, capacity, data_start, seq, created_ns = _BODY.unpack(
        body
    )
    if magic != MAGIC:
        if not any(raw[:SB_BLOCK]):
            raise InvalidCopy("all zeros (never written)")
        raise InvalidCopy(f"bad magic {magic!r} (expected {MAGIC!r})")
    (stored,) = _CRC.unpack_from(raw, _BODY.size)
    actual = _crc32c(body)
    if stored != actual:
        raise InvalidCopy(f"CRC32C mismatch (stored {stored:#010x}, computed {actual:#010x})")
    if version != FORMAT_VERSION:
        raise InvalidCopy(
            f"format version {version}; this build reads version {FORMAT_VERSION} only"
        )
    if block_size == 0 or block_size & (block_size - 1) or data_start >= capacity:
        raise InvalidCopy(
            f"impossible layout (block_size {block_size}, data_start {data_start}, "
            f"capacity {capacity})"
        )
    return Superblock(
        uuid=uuid.UUID(bytes=uuid_bytes),
        block_size=block_size,
        capacity=capacity,
        data_start=data_start,
        seq=seq,
        created_ns=created_ns,
        version=version,
    )


# -- aligned I/O helpers (O_DIRECT needs page-aligned buffers: an anonymous mmap is one) ------


def _read(ns: Namespace, offset: int, length: int) -> bytes:
    with mmap.mmap(-1, length) as buf:
        with memoryview(buf) as view:
            try:
                got = ns.preadv([view], offset)
            except OSError as err:
                raise DeviceIOError(
                    f"reading {length} bytes at offset {offset} of {ns.path}: {err}"
                ) from err
        if got != length:
            raise DeviceIOError(
                f"short read at offset {offset} of {ns.path}: {got} of {length} bytes"
            )
        return buf[:]


def _write(ns: Namespace, offset: int, data: bytes, what: str) -> None:
    with mmap.mmap(-1, len(data)) as buf:
        buf[:] = data
        with memoryview(buf) as view:
            try:
                done = ns.pwritev([view], offset)
            except OSError as err:
                raise DeviceIOError(
                    f"writing {what} at offset {offset} of {ns.path}: {err}"
                ) from err
    if done != len(data):
        raise DeviceIOError(
            f"short write of {what} at offset {offset} of {ns.path}: {done} of {len(data)} bytes"
        )


def _flush(ns: Namespace, what: str) -> None:
    try:
        ns.flush()
    except OSError as err:
        raise DeviceIOError(f"flushing {ns.path} after {what}: {err}") from err


def _read_copies(ns: Namespace) -> dict[str, Superblock | InvalidCopy]:
    found: dict[str, Superblock | InvalidCopy] = {}
    for name, offset in COPY_OFFSETS.items():
        try:
            found[name] = decode_superblock(_read(ns, offset, SB_BLOCK))
        except InvalidCopy as bad:
            found[name] = bad
    return found


def _pick(ns: Namespace, found: dict[str, Superblock | InvalidCopy]) -> SuperblockLoad:
    valid = {name: sb for name, sb in found.items() if isinstance(sb, Superblock)}
    if not valid:
        raise SuperblockError(
            f"no valid superblock on {ns.path}: "
            + "; ".join(
                f"copy {name} at offset {COPY_OFFSETS[name]}: {found[name]}" for name in found
            )
        )
    uuids = {sb.uuid for sb in valid.values()}
    if len(uuids) > 1:
        raise SuperblockError(
            f"superblock copies on {ns.path} name different namespaces ("
            + ", ".join(f"{n}: {sb.uuid} seq {sb.seq}" for n, sb in valid.items())
            + "); refusing to guess, reformat explicitly if this namespace holds nothing of value"
        )
    # Highest seq wins; on a tie (the normal state after a completed write) copy A.
    used = max(valid, key=lambda n: (valid[n].seq, n == "A"))
    warnings = []
    for name, sb in found.items():
        if isinstance(sb, InvalidCopy):
            warnings.append(
                f"superblock copy {name} on {ns.path} is invalid ({sb}); "
                f"using copy {used} (seq {valid[used].seq})"
            )
        elif sb != valid[used]:
            warnings.append(
                f"superblock copy {name} on {ns.path} is older (seq {sb.seq}) than copy {used} "
                f"(seq {valid[used].seq}): an update was interrupted"
            )
    for text in warnings:
        logger.warning("%s", text)
    return SuperblockLoad(superblock=valid[used], used_copy=used, warnings=tuple(warnings))


def _check_device(ns: Namespace, sb: Superblock, *, allow_grown: bool = False) -> None:
    problems = []
    if sb.block_size != ns.block_size:
        problems.append(f"block size {sb.block_size} != device block size {ns.block_size}")
    if sb.capacity != ns.capacity and not (allow_grown and sb.capacity < ns.capacity):
        problems.append(f"capacity {sb.capacity} != device capacity {ns.capacity}")
    if sb.data_start != ns.data_start:
        problems.append(f"data_start {sb.data_start} != this build's {ns.data_start}")
    if problems:
        raise SuperblockError(
            f"superblock of namespace {sb.uuid} on {ns.path} does not match the device: "
            + "; ".join(problems)
        )


def load_superblock(ns: Namespace) -> SuperblockLoad:
    """Load the newest valid copy.

    One bad copy is tolerated (reported in ``warnings`` and logged); the superblock must match
    the device's block size and capacity.

    Raises:
        SuperblockError: both copies invalid (each reason named), copies of different
            namespaces, or a superblock that disagrees with the device.
        DeviceIOError: the device failed the read.
    """
    load = _pick(ns, _read_copies(ns))
    _check_device(ns, load.superblock)
    return load


def format_namespace(ns: Namespace) -> Superblock:
    """Write a fresh superblock (new UUID, seq 1) to both copies. Destroys what the device held.

    Raises:
        DeviceIOError: a write or flush failed (the namespace may then hold no valid copy).
    """
    if ns.capacity < ns.data_start + TAIL_WIPE:
        raise SuperblockError(
            f"{ns.path} has {ns.capacity} bytes; a namespace needs at least "
            f"{ns.data_start + TAIL_WIPE}"
        )
    sb = Superblock(
        uuid=uuid.uuid4(),
        block_size=ns.block_size,
        capacity=ns.capacity,
        data_start=ns.data_start,
        seq=1,
        created_ns=time.time_ns(),
    )
    zeros = bytes(TAIL_WIPE)
    _write(ns, ns.capacity - TAIL_WIPE, zeros, "tail wipe")
    _write(ns, 0, bytes(METADATA_AREA), "metadata area wipe")
    _flush(ns, "wiping old signatures")
    for name, offset in COPY_OFFSETS.items():
        _write(ns, offset, sb.encode(), f"superblock copy {name}")
        _flush(ns, f"superblock copy {name}")
    logger.info(
        "formatted namespace %s on %s (capacity %d, block size %d)",
        sb.uuid,
        ns.path,
        sb.capacity,
        sb.block_size,
    )
    return sb


def write_superblock(ns: Namespace, sb: Superblock) -> Superblock:
    """Persist ``sb`` with ``seq + 1``; returns what was written.

    The copy holding the older (or an invalid) superblock is overwritten first, then the other,
    with a flush between them, so a crash at any point leaves one valid copy.

    Raises:
        SuperblockError: the device holds another namespace, or a newer seq than ``sb``
            (a stale in-memory superblock would roll the namespace back).
        DeviceIOError: a read, write or flush failed.
    """
    found = _read_copies(ns)
    valid = {name: s for name, s in found.items() if isinstance(s, Superblock)}
    for name, ondisk in valid.items():
        if ondisk.uuid != sb.uuid:
            raise SuperblockError(
                f"copy {name} on {ns.path} belongs to namespace {ondisk.uuid}, not {sb.uuid}"
            )
        if ondisk.seq > sb.seq:
            raise SuperblockError(
                f"copy {name} on {ns.path} has seq {ondisk.seq}, newer than the superblock "
                f"being written (seq {sb.seq}); reload before updating"
            )
    new = replace(sb, seq=sb.seq + 1)

    def age(name: str) -> int:
        s = found[name]
        return s.seq if isinstance(s, Superblock) else -1

    order = sorted(COPY_OFFSETS, key=lambda n: (age(n), n))
    encoded = new.encode()
    for name in order:
        _write(ns, COPY_OFFSETS[name], encoded, f"superblock copy {name}")
        _flush(ns, f"superblock copy {name}")
    logger.info("superblock of %s on %s now at seq %d", new.uuid, ns.path, new.seq)
    return new


def load_or_format(ns: Namespace, *, format: bool = False) -> SuperblockLoad:
    """Open the namespace's superblock, formatting only what is provably empty.

    - a valid superblock: loaded (a device that grew since is accepted and the superblock
      rewritten with the new capacity; a shrunk one is refused);
    - no valid superblock and a metadata area of zeros (fresh file, zeroed device): formatted;
    - no valid superblock and anything else: refused, unless ``format=True``.
    - ``format=True`` with a valid superblock present: still loaded, never reformatted here.

    Raises:
        SuperblockError: data present without a valid superblock, or a superblock that does not
            match the device.
        DeviceIOError: the device failed.
    """
    found = _read_copies(ns)
    if any(isinstance(s, Superblock) for s in found.values()):
        load = _pick(ns, found)
        sb = load.superblock
        _check_device(ns, sb, allow_grown=True)
        if sb.capacity < ns.capacity:
            logger.warning(
                "namespace %s on %s grew from %d to %d bytes; recording the new capacity",
                sb.uuid,
                ns.path,
                sb.capacity,
                ns.capacity,
            )
            grown = write_superblock(ns, replace(sb, capacity=ns.capacity))
            load = replace(load, superblock=grown)
        return load
    if not format:
        if _read(ns, 0, METADATA_AREA) != bytes(METADATA_AREA):
            reasons = "; ".join(f"copy {n}: {found[n]}" for n in found)
            raise SuperblockError(
                f"{ns.path} holds data but no valid dualblade superblock ({reasons}); refusing to "
                "format it (never formatting anything that holds data unless explicitly asked: "
                "pass format=True to erase it)"
            )
        logger.info("metadata area of %s is all zeros: formatting a new namespace", ns.path)
    else:
        logger.warning("formatting %s as explicitly requested (format=True)", ns.path)
    return SuperblockLoad(superblock=format_namespace(ns), used_copy="A")
