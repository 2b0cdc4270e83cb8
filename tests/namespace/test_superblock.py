"""Superblock A/B copies on a real O_DIRECT file namespace: format, load, fallback, refusal."""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import uuid

import crc32c
import pytest

from dualbladed.errors import SuperblockError
from dualbladed.namespace import FileNamespace
from dualbladed.namespace.abstract import METADATA_AREA
from dualbladed.namespace.superblock import (
    COPY_OFFSETS,
    MAGIC,
    SB_BLOCK,
    Superblock,
    _crc32c_py,
    decode_superblock,
    format_namespace,
    load_or_format,
    load_superblock,
    write_superblock,
)

MiB = 1 << 20


@pytest.fixture
def ns(tmp_path):
    with FileNamespace(tmp_path / "ns.img", 4 * MiB) as namespace:
        yield namespace


def poke(path: str, offset: int, data: bytes) -> None:
    """Damage the medium behind the namespace's back (buffered write + fsync, as a stray
    writer would)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_copy(path: str, name: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(COPY_OFFSETS[name])
        return f.read(SB_BLOCK)


def test_on_disk_layout_matches_the_documented_format(ns):
    sb = format_namespace(ns)
    raw = raw_copy(ns.path, "A")
    assert raw[:8] == MAGIC
    version, uuid_bytes, bs, cap, start, seq, created = struct.unpack_from("<I16sIQQQQ", raw, 8)
    assert (version, bs, cap, start, seq) == (1, 4096, 4 * MiB, METADATA_AREA, 1)
    assert uuid.UUID(bytes=uuid_bytes) == sb.uuid
    assert created == sb.created_ns
    assert struct.unpack_from("<I", raw, 64)[0] == crc32c.crc32c(raw[:64])
    assert raw[68:] == bytes(SB_BLOCK - 68)
    assert raw_copy(ns.path, "B") == raw


def test_format_then_load_round_trips(ns):
    sb = format_namespace(ns)
    load = load_superblock(ns)
    assert load.superblock == sb
    assert load.used_copy == "A"
    assert load.warnings == ()


def test_fresh_zeroed_namespace_is_formatted(ns):
    load = load_or_format(ns)
    assert load.superblock.seq == 1
    assert load_or_format(ns).superblock == load.superblock  # second open: loads, same UUID


def test_copy_a_corrupted_loads_b_with_warning(ns, caplog):
    sb = format_namespace(ns)
    poke(ns.path, COPY_OFFSETS["A"] + 20, b"\xff")
    with caplog.at_level(logging.WARNING):
        load = load_superblock(ns)
    assert load.used_copy == "B"
    assert load.superblock == sb
    assert len(load.warnings) == 1 and "copy A" in load.warnings[0] and "CRC32C" in load.warnings[0]
    assert any("copy A" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_copy_b_corrupted_loads_a(ns):
    sb = format_namespace(ns)
    poke(ns.path, COPY_OFFSETS["B"], b"NOTMAGIC")
    load = load_superblock(ns)
    assert (load.used_copy, load.superblock) == ("A", sb)
    assert "copy B" in load.warnings[0] and "bad magic" in load.warnings[0]


def test_both_copies_corrupted_names_each_problem(ns):
    format_namespace(ns)
    poke(ns.path, COPY_OFFSETS["A"] + 30, b"\x00\x01")
    poke(ns.path, COPY_OFFSETS["B"], bytes(SB_BLOCK))
    with pytest.raises(SuperblockError) as info:
        load_superblock(ns)
    msg = str(info.value)
    assert "copy A" in msg and "CRC32C mismatch" in msg
    assert "copy B" in msg and "all zeros" in msg


def test_foreign_data_without_format_is_refused_and_untouched(ns):
    poke(ns.path, 1024, b"\x53\xef" + b"something that is not ours" * 10)
    with pytest.raises(SuperblockError, match="format=True"):
        load_or_format(ns)
    with open(ns.path, "rb") as f:
        f.seek(1024)
        assert f.read(2) == b"\x53\xef", "the refused namespace must not have been written"


def test_foreign_data_in_copy_b_area_is_also_data(ns):
    poke(ns.path, COPY_OFFSETS["B"] + 4096 * 3, b"x")
    with pytest.raises(SuperblockError, match="holds data"):
        load_or_format(ns)


def test_format_true_formats_foreign_data(ns):
    poke(ns.path, 1024, b"\x53\xef" * 100)
    load = load_or_format(ns, format=True)
    assert load.superblock.seq == 1
    assert load_superblock(ns).superblock == load.superblock
    with open(ns.path, "rb") as f:
        f.seek(1024)
        assert f.read(200) == bytes(200), "format wipes the whole metadata area"


def test_format_true_never_reformats_a_valid_superblock(ns):
    first = load_or_format(ns)
    assert load_or_format(ns, format=True).superblock.uuid == first.superblock.uuid


def test_write_increments_seq_and_both_copies_agree(ns):
    sb = format_namespace(ns)
    sb2 = write_superblock(ns, sb)
    sb3 = write_superblock(ns, sb2)
    assert (sb2.seq, sb3.seq) == (2, 3)
    assert decode_superblock(raw_copy(ns.path, "A")) == sb3
    assert decode_superblock(raw_copy(ns.path, "B")) == sb3
    assert load_superblock(ns).superblock == sb3


class RecordingNamespace(FileNamespace):
    """Logs which offsets are written and where flushes fall (a real file underneath)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[str] = []

    def pwritev(self, bufs, offset):
        self.events.append(f"write@{offset}")
        return super().pwritev(bufs, offset)

    def flush(self):
        self.events.append("flush")
        super().flush()


def test_write_updates_older_copy_first_with_flush_between(tmp_path):
    with RecordingNamespace(tmp_path / "ns.img", 4 * MiB) as ns:
        sb = format_namespace(ns)
        # Leave copy B one update behind: what a crash between the two writes produces.
        newer = dataclasses.replace(sb, seq=2)
        poke(ns.path, COPY_OFFSETS["A"], newer.encode())
        load = load_superblock(ns)
        assert (load.used_copy, load.superblock.seq) == ("A", 2)
        assert "copy B" in load.warnings[0] and "older" in load.warnings[0]

        ns.events.clear()
        assert write_superblock(ns, load.superblock).seq == 3
        b, a = COPY_OFFSETS["B"], COPY_OFFSETS["A"]
        assert ns.events == [f"write@{b}", "flush", f"write@{a}", "flush"]

        # Now copy A is damaged: it is the one rewritten first.
        poke(ns.path, a + 40, b"\xee")
        ns.events.clear()
        assert write_superblock(ns, load_superblock(ns).superblock).seq == 4
        assert ns.events == [f"write@{a}", "flush", f"write@{b}", "flush"]


def test_stale_or_foreign_superblock_is_not_written(ns):
    sb = format_namespace(ns)
    write_superblock(ns, sb)
    with pytest.raises(SuperblockError, match="newer"):
        write_superblock(ns, sb)  # seq 1 in memory, seq 2 on disk
    other = Superblock(uuid.uuid4(), 4096, 4 * MiB, METADATA_AREA, 5, 0)
    with pytest.raises(SuperblockError, match="belongs to namespace"):
        write_superblock(ns, other)
    assert load_superblock(ns).superblock.seq == 2


def test_superblock_that_disagrees_with_device_is_refused(ns):
    sb = format_namespace(ns)
    wrong = Superblock(sb.uuid, 512, 8 * MiB, METADATA_AREA, 7, sb.created_ns)
    for offset in COPY_OFFSETS.values():
        poke(ns.path, offset, wrong.encode())
    with pytest.raises(SuperblockError) as info:
        load_superblock(ns)
    assert "block size 512 != device block size 4096" in str(info.value)
    assert f"capacity {8 * MiB} != device capacity {4 * MiB}" in str(info.value)
    with pytest.raises(SuperblockError, match="does not match the device"):
        load_or_format(ns, format=True)


def test_grown_file_namespace_records_new_capacity(tmp_path):
    path = tmp_path / "ns.img"
    with FileNamespace(path, 4 * MiB) as ns:
        first = load_or_format(ns).superblock
    with FileNamespace(path, 8 * MiB) as ns:
        with pytest.raises(SuperblockError, match="capacity"):
            load_superblock(ns)  # the strict loader sees the mismatch...
        load = load_or_format(ns)  # ...load_or_format records the growth
        assert (load.superblock.uuid, load.superblock.capacity) == (first.uuid, 8 * MiB)
        assert load.superblock.seq == 2
        assert load_superblock(ns).superblock == load.superblock


def test_copies_of_different_namespaces_are_refused(ns):
    format_namespace(ns)
    other = Superblock(uuid.uuid4(), 4096, 4 * MiB, METADATA_AREA, 9, 0)
    poke(ns.path, COPY_OFFSETS["B"], other.encode())
    with pytest.raises(SuperblockError, match="different namespaces"):
        load_superblock(ns)


def test_unknown_version_is_an_invalid_copy(ns):
    sb = format_namespace(ns)
    newer = Superblock(sb.uuid, 4096, 4 * MiB, METADATA_AREA, 2, 0, version=2)
    poke(ns.path, COPY_OFFSETS["A"], newer.encode())
    load = load_superblock(ns)
    assert load.used_copy == "B" and "format version 2" in load.warnings[0]


def test_fallback_crc32c_is_bit_identical_to_the_package():
    assert _crc32c_py(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    data = os.urandom(64)
    assert _crc32c_py(data) == crc32c.crc32c(data)
