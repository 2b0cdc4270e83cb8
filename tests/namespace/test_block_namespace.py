"""Block namespaces, the safety check and discovery on real loop devices (the stand-in for NVMe,
which this machine does not have). Needs root and losetup; every test detaches what it attached."""

from __future__ import annotations

import mmap
import os
import shutil

import pytest

from dualbladed.errors import DeviceBusy, DeviceRefused, InvalidArgument, SuperblockError
from dualbladed.namespace import BlockNamespace, open_namespace
from dualbladed.namespace.discovery import discover
from dualbladed.namespace.safety import check_device
from dualbladed.namespace.superblock import COPY_OFFSETS, load_or_format, load_superblock
from loopdev_utils import LoopDevices, loop_skip_reason, write_dos_partition_table, zero_fill

_skip = loop_skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_skip is not None, reason=_skip or "")]
needs_mkfs = pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")

MiB = 1 << 20


@pytest.fixture
def loops(tmp_path):
    devices = LoopDevices(tmp_path)
    yield devices
    devices.cleanup()


def mkfs_ext4(dev: str) -> None:
    from loopdev_utils import run

    run("mkfs.ext4", "-q", "-F", dev)


@needs_mkfs
def test_mounted_ext4_is_refused_even_with_force(loops, tmp_path):
    dev = loops.attach()
    mkfs_ext4(dev)
    mnt = tmp_path / "mnt"
    loops.mount(dev, mnt)
    verdict = check_device(dev, force=True)
    assert not verdict.ok
    assert f"mounted at {mnt}" in verdict.reasons
    with pytest.raises(DeviceRefused) as info:
        BlockNamespace(dev, force=True)
    assert f"mounted at {mnt}" in str(info.value)


@needs_mkfs
def test_unmounted_ext4_signature_refused_then_accepted_with_force(loops):
    dev = loops.attach()
    mkfs_ext4(dev)
    verdict = check_device(dev)
    assert (verdict.ok, verdict.signature, verdict.ours) == (False, "ext4", False)
    assert verdict.reasons == ("ext4 filesystem signature (use force to override)",)
    with pytest.raises(DeviceRefused, match="ext4 filesystem signature"):
        open_namespace(dev)

    assert check_device(dev, force=True).ok
    with open_namespace(dev, force=True) as ns:
        # Taking the device does not mean erasing it: that needs format=True.
        with pytest.raises(SuperblockError, match="holds data"):
            load_or_format(ns)
        sb = load_or_format(ns, format=True).superblock
    after = check_device(dev)
    assert (after.ok, after.ours, after.signature) == (True, True, "dualblade")
    with BlockNamespace(dev) as ns:
        assert load_superblock(ns).superblock.uuid == sb.uuid


def test_dos_partition_table_is_refused(loops):
    dev = loops.attach(partscan=True)
    write_dos_partition_table(dev)
    verdict = check_device(dev)
    assert not verdict.ok
    assert verdict.signature == "dos"
    assert "dos partition-table signature (use force to override)" in verdict.reasons
    with pytest.raises(DeviceRefused, match="partition-table"):
        BlockNamespace(dev)


def test_our_superblock_is_accepted_and_survives_a_bad_copy_a(loops):
    dev = loops.attach()
    with BlockNamespace(dev) as ns:
        sb = load_or_format(ns).superblock
    verdict = check_device(dev)
    assert (verdict.ok, verdict.ours, verdict.signature, verdict.reasons) == (
        True,
        True,
        "dualblade",
        (),
    )
    zero_fill(dev, 4096, COPY_OFFSETS["A"])
    assert check_device(dev).ours, "copy B alone still marks the device as ours"
    with BlockNamespace(dev) as ns:
        load = load_superblock(ns)
    assert (load.used_copy, load.superblock.uuid) == ("B", sb.uuid)


def test_zeroed_device_is_accepted(loops):
    dev = loops.attach()
    verdict = check_device(dev)
    assert (verdict.ok, verdict.reasons, verdict.signature, verdict.ours) == (True, (), None, False)


def test_second_exclusive_open_gets_device_busy(loops):
    dev = loops.attach()
    with BlockNamespace(dev), pytest.raises(DeviceBusy, match="busy"):
        BlockNamespace(dev)
    fd = os.open(dev, os.O_RDONLY | os.O_EXCL)  # another process-style holder
    try:
        with pytest.raises(DeviceBusy):
            BlockNamespace(dev)
    finally:
        os.close(fd)
    BlockNamespace(dev).close()  # free again once the holders are gone


def test_swap_device_is_refused_even_with_force(loops):
    if shutil.which("mkswap") is None or shutil.which("swapon") is None:
        pytest.skip("needs mkswap and swapon")
    dev = loops.attach()
    loops.swapon(dev)
    verdict = check_device(dev, force=True)
    assert not verdict.ok
    assert any(r.startswith("in use as swap") for r in verdict.reasons)


@pytest.mark.parametrize(("sector_size", "expected"), [(4096, 4096), (None, 512)])
def test_block_size_comes_from_the_device(loops, sector_size, expected):
    dev = loops.attach(sector_size=sector_size)
    with BlockNamespace(dev) as ns:
        assert (ns.kind, ns.block_size, ns.capacity) == ("loop", expected, 64 * MiB)
        with mmap.mmap(-1, 8192) as buf:
            pattern = os.urandom(8192)
            buf[:] = pattern
            view = memoryview(buf)
            assert ns.pwritev([view], ns.data_start) == 8192
            ns.flush()
            buf[:] = bytes(8192)
            assert ns.preadv([view], ns.data_start) == 8192
            assert buf[:] == pattern
            ns.discard(ns.data_start, 8192)  # TRIM passes through (or is skipped) without error
            view.release()


def test_4kn_device_rejects_512_byte_io(loops):
    dev = loops.attach(sector_size=4096)
    with BlockNamespace(dev) as ns, mmap.mmap(-1, 4096) as buf:
        view = memoryview(buf)
        with pytest.raises(OSError):
            ns.pwritev([view[:512]], ns.data_start)
        view.release()


def test_open_namespace_refuses_a_size_for_a_block_device(loops):
    dev = loops.attach()
    with pytest.raises(InvalidArgument, match="block device"):
        open_namespace(dev, size=64 * MiB)
    with open_namespace(dev) as ns:
        assert isinstance(ns, BlockNamespace)


def test_discover_lists_the_loop_device_with_its_verdict(loops):
    dev = loops.attach(sector_size=4096)
    found = {d.path: d for d in discover()}
    assert dev in found
    info = found[dev]
    assert (info.kind, info.size, info.logical_block_size) == ("loop", 64 * MiB, 4096)
    assert info.backing_file is not None and info.backing_file.endswith(".img")
    assert (info.model, info.serial, info.wwid, info.read_only) == (None, None, None, False)
    assert info.verdict.ok and info.verdict.path == dev
