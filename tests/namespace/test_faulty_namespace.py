"""FaultyNamespace: SPDK-style power failure, torn and silently torn writes, over a real file."""

from __future__ import annotations

import dataclasses
import errno
import mmap

import pytest

from dualbladed.errors import DeviceIOError, SuperblockError
from dualbladed.namespace import FileNamespace
from dualbladed.namespace.abstract import METADATA_AREA
from dualbladed.namespace.faulty import FaultStats, FaultyNamespace
from dualbladed.namespace.superblock import (
    format_namespace,
    load_or_format,
    load_superblock,
    write_superblock,
)

MiB = 1 << 20
OFF = METADATA_AREA


@pytest.fixture
def inner(tmp_path):
    with FileNamespace(tmp_path / "ns.img", 4 * MiB) as ns:
        yield ns


def write(ns, offset: int, byte: int, blocks: int) -> int:
    with mmap.mmap(-1, blocks * 4096) as buf:
        buf[:] = bytes([byte]) * len(buf)
        view = memoryview(buf)
        try:
            return ns.pwritev([view], offset)
        finally:
            view.release()


def read(ns, offset: int, length: int) -> bytes:
    with mmap.mmap(-1, length) as buf:
        view = memoryview(buf)
        try:
            assert ns.preadv([view], offset) == length
        finally:
            view.release()
        return buf[:]


def test_no_threshold_passes_everything_through_and_counts(inner):
    ns = FaultyNamespace(inner)
    assert (ns.kind, ns.path, ns.block_size, ns.capacity, ns.data_start) == (
        inner.kind,
        inner.path,
        inner.block_size,
        inner.capacity,
        inner.data_start,
    )
    for i in range(5):
        assert write(ns, OFF + i * 4096, i + 1, 1) == 4096
    ns.flush()
    assert read(ns, OFF + 4 * 4096, 4096) == b"\x05" * 4096
    ns.discard(OFF, 4096)
    assert ns.stats == FaultStats(reads=1, writes=5, flushes=1, discards=1, bytes_written=5 * 4096)
    assert not ns.power_failed


def test_writes_after_threshold_fail_with_eio_and_reach_nothing(inner):
    ns = FaultyNamespace(inner, fail_after_writes=2)
    write(ns, OFF, 0xA1, 1)
    write(ns, OFF + 4096, 0xA2, 1)
    for i in range(3):
        with pytest.raises(OSError) as info:
            write(ns, OFF + (2 + i) * 4096, 0xA3, 1)
        assert info.value.errno == errno.EIO
    assert ns.power_failed
    assert read(inner, OFF, 5 * 4096) == b"\xa1" * 4096 + b"\xa2" * 4096 + bytes(3 * 4096)
    s = ns.stats
    assert (s.writes, s.failed_writes, s.torn_writes, s.bytes_written) == (5, 3, 0, 8192)


def test_zero_threshold_fails_the_very_first_write(inner):
    ns = FaultyNamespace(inner, fail_after_writes=0)
    with pytest.raises(OSError):
        write(ns, OFF, 1, 1)
    assert read(inner, OFF, 4096) == bytes(4096)


def test_torn_write_puts_first_half_then_raises(inner):
    ns = FaultyNamespace(inner, fail_after_writes=0, torn=True)
    with pytest.raises(OSError) as info:
        write(ns, OFF, 0x7E, 4)
    assert info.value.errno == errno.EIO
    assert read(inner, OFF, 4 * 4096) == b"\x7e" * 8192 + bytes(8192)
    with pytest.raises(OSError):  # power stays off: the next write reaches nothing
        write(ns, OFF + 8192, 0x11, 2)
    assert read(inner, OFF + 8192, 8192) == bytes(8192)
    assert (ns.stats.torn_writes, ns.stats.failed_writes) == (1, 2)


def test_torn_half_is_rounded_down_to_whole_blocks(inner):
    ns = FaultyNamespace(inner, fail_after_writes=0, torn=True)
    with pytest.raises(OSError):
        write(ns, OFF, 0x55, 3)  # half of 3 blocks = 1.5 -> 1 block
    assert read(inner, OFF, 3 * 4096) == b"\x55" * 4096 + bytes(8192)
    ns2 = FaultyNamespace(inner, fail_after_writes=0, torn=True)
    with pytest.raises(OSError):
        write(ns2, OFF + 3 * 4096, 0x66, 1)  # one block is atomic: nothing lands
    assert read(inner, OFF + 3 * 4096, 4096) == bytes(4096)


def test_silent_torn_lies_then_power_stays_off(inner):
    ns = FaultyNamespace(inner, fail_after_writes=1, silent_torn=True)
    assert write(ns, OFF, 0x01, 2) == 8192
    assert write(ns, OFF + 8192, 0x02, 2) == 8192, "the lying device reports success"
    assert read(inner, OFF + 8192, 8192) == b"\x02" * 4096 + bytes(4096)
    with pytest.raises(OSError):
        write(ns, OFF + 16384, 0x03, 1)
    s = ns.stats
    assert (s.writes, s.torn_writes, s.failed_writes, s.bytes_written) == (3, 1, 1, 8192 + 4096)


def test_torn_and_silent_torn_are_exclusive(inner):
    with pytest.raises(ValueError, match="exclusive"):
        FaultyNamespace(inner, torn=True, silent_torn=True)
    with pytest.raises(ValueError, match=">= 0"):
        FaultyNamespace(inner, fail_after_writes=-1)


def test_stats_is_a_frozen_snapshot(inner):
    ns = FaultyNamespace(inner)
    before = ns.stats
    write(ns, OFF, 1, 1)
    assert before.writes == 0 and ns.stats.writes == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.writes = 3  # type: ignore[misc]


def test_superblock_update_survives_power_failure_at_every_write(tmp_path):
    """Row 8 of the reliability plan, for the superblock alone: cut the power after each of the
    writes an update makes; the medium must always load, at the old or the new seq."""
    for torn in (False, True):
        for n in range(2):
            path = tmp_path / f"sweep-{torn}-{n}.img"
            with FileNamespace(path, 4 * MiB) as raw:
                sb = write_superblock(raw, format_namespace(raw))  # seq 2
                faulty = FaultyNamespace(raw, fail_after_writes=n, torn=torn)
                with pytest.raises(DeviceIOError):
                    write_superblock(faulty, sb)
                assert load_superblock(raw).superblock.seq in (2, 3)


def test_format_cut_short_either_reformats_loads_or_refuses_cleanly(tmp_path):
    """A format interrupted at any write leaves zeros (format again), copy A (load), or, when a
    torn wipe left old bytes behind, a typed refusal."""
    for torn in (False, True):
        for n in range(4):
            path = tmp_path / f"fmt-{torn}-{n}.img"
            with FileNamespace(path, 4 * MiB) as raw:
                write(raw, 8192, 0x99, 1)  # old data in the metadata area
                faulty = FaultyNamespace(raw, fail_after_writes=n, torn=torn)
                with pytest.raises(DeviceIOError):
                    load_or_format(faulty, format=True)
                try:
                    load = load_or_format(raw)
                except SuperblockError as err:
                    assert "holds data" in str(err)
                else:
                    assert load.superblock.capacity == 4 * MiB
