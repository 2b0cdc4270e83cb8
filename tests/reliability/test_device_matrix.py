"""The device safety matrix on real loop devices: the daemon and ``dbctl devices`` agree.

For each kind of device content the real ``dualbladed --namespace /dev/loopN`` either refuses to
start (exit 1, the message names the reason) or starts and reaches READY=1, and
``dbctl devices --json`` gives the same verdict with the same reason. ``--force`` overrides a
foreign signature and nothing else: a mounted device stays refused.

Needs root, losetup and mkfs.ext4 (each test skips naming what is missing). Every loop device,
mount and dm table is undone in a finalizer, even when a test fails. A partition table is written
by hand (a DOS MBR with one entry) since sfdisk may be missing; whether the kernel then parses the
partition depends on the kernel, so the test accepts either verdict that names it ("has
partitions" or the "dos partition-table signature" blkid reports) and prints which one it got.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualblade_tools.daemonproc import DaemonProcess

IMAGE_BYTES = 64 << 20
START_TIMEOUT_S = 60


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for losetup"
    for tool in ("losetup", "blkid", "mkfs.ext4", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control (loop driver not available)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


class Loops:
    """Attach/mount/dm helpers that undo everything, last first."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.undo: list[list[str]] = []

    def attach(self, image: Path, *, partscan: bool = False) -> str:
        argv = ["losetup", "-f", "--show", "--direct-io=on", *(["-P"] if partscan else [])]
        try:
            dev = _run(*argv, str(image))
        except RuntimeError as err:
            pytest.skip(f"cannot attach a loop device here: {err}")
        self.undo.append(["losetup", "-d", dev])
        return dev

    def mount(self, dev: str) -> Path:
        point = self.tmp / "mnt"
        point.mkdir(exist_ok=True)
        _run("mount", dev, str(point))
        self.undo.append(["umount", str(point)])
        return point

    def cleanup(self) -> None:
        while self.undo:
            subprocess.run(self.undo.pop(), capture_output=True, check=False, timeout=60)


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    lo = Loops(tmp_path)
    try:
        yield lo
    finally:
        lo.cleanup()


def _image(tmp: Path, name: str = "dev.img") -> Path:
    path = tmp / name
    with open(path, "wb") as f:
        f.truncate(IMAGE_BYTES)
    return path


class BlockDaemon(DaemonProcess):
    """DaemonProcess for a block device: its size is the device's, so no --namespace-size."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--namespace-size")
        return cmd[:i] + cmd[i + 2 :]


def _start(tmp: Path, dev: str, *extra: str) -> subprocess.CompletedProcess[str] | DaemonProcess:
    """Start the real daemon on ``dev``: the DaemonProcess when it got READY, else its exit."""
    d = BlockDaemon(tmp / f"d{len(list(tmp.glob('d*')))}", namespace=Path(dev))
    d.extra_args = list(extra)
    try:
        return d.start(timeout=START_TIMEOUT_S)
    except RuntimeError:
        assert d.proc is not None
        return subprocess.CompletedProcess(d.command(), d.proc.returncode, "", d.log_tail(200))


def _refused(tmp: Path, dev: str, *extra: str) -> str:
    """Start must fail with exit 1; returns its output (which names the reason)."""
    result = _start(tmp, dev, *extra)
    if isinstance(result, DaemonProcess):
        result.terminate()
        pytest.fail(f"dualbladed took {dev} with {extra or 'no flags'}")
    assert result.returncode == 1, result.stderr
    return result.stderr


def _accepted(tmp: Path, dev: str, *extra: str) -> None:
    result = _start(tmp, dev, *extra)
    assert isinstance(result, DaemonProcess), f"refused {dev}:\n{result.stderr}"
    from dualblade import Client

    with Client.connect(result.socket, tenant="matrix", arena_bytes=1 << 16) as c:
        c.put(b"k", b"m" * 4096, path="direct")
        assert c.get(b"k") == b"m" * 4096
    assert result.terminate() == 0


def _dbctl(dev: str) -> dict:
    out = _run(sys.executable, "-m", "dualblade_tools.dbctl", "devices", "--json")
    for entry in json.loads(out):
        if entry["path"] == dev:
            return entry["verdict"]
    raise AssertionError(f"dbctl devices does not list {dev}: {out}")


def _record(case: str, verdict: dict) -> None:
    """One line per case for docs/reliability.md (visible with pytest -s)."""
    reasons = "; ".join(verdict["reasons"]) or "-"
    print(f"\nMATRIX {case}: ok={verdict['ok']} signature={verdict['signature']} reasons={reasons}")


def test_zeroed_device_is_accepted(tmp_path: Path, loops: Loops) -> None:
    dev = loops.attach(_image(tmp_path))
    verdict = _dbctl(dev)
    _record("zeroed", verdict)
    assert verdict["ok"] and verdict["reasons"] == [] and verdict["signature"] is None
    _accepted(tmp_path, dev)


def test_own_superblock_is_accepted(tmp_path: Path, loops: Loops) -> None:
    dev = loops.attach(_image(tmp_path))
    _accepted(tmp_path, dev)  # formats the zeroed device
    verdict = _dbctl(dev)
    _record("own superblock", verdict)
    assert verdict["ok"] and verdict["ours"] and verdict["signature"] == "dualblade"
    _accepted(tmp_path, dev)


def test_unmounted_ext4_is_refused_unless_forced(tmp_path: Path, loops: Loops) -> None:
    image = _image(tmp_path)
    _run("mkfs.ext4", "-q", "-F", str(image))
    dev = loops.attach(image)
    verdict = _dbctl(dev)
    _record("unmounted ext4", verdict)
    assert not verdict["ok"] and verdict["signature"] == "ext4"
    assert any("ext4" in r and "force" in r for r in verdict["reasons"])
    out = _refused(tmp_path, dev)
    assert "ext4" in out
    _accepted(tmp_path, dev, "--force", "--format")


def test_mounted_ext4_is_refused_even_with_force(tmp_path: Path, loops: Loops) -> None:
    image = _image(tmp_path)
    _run("mkfs.ext4", "-q", "-F", str(image))
    dev = loops.attach(image)
    point = loops.mount(dev)
    verdict = _dbctl(dev)
    _record("mounted ext4", verdict)
    assert not verdict["ok"]
    assert any(f"mounted at {point}" in r for r in verdict["reasons"])
    before = _head_and_tail(image)
    assert "mounted" in _refused(tmp_path, dev)
    assert "mounted" in _refused(tmp_path, dev, "--force")
    assert "mounted" in _refused(tmp_path, dev, "--force", "--format")
    assert _head_and_tail(image) == before, "a refused start wrote to the device"


def _head_and_tail(image: Path) -> bytes:
    with open(image, "rb") as f:
        head = f.read(1 << 20)
        f.seek(-(1 << 20), os.SEEK_END)
        return head + f.read()


def _write_mbr(image: Path) -> None:
    """A DOS partition table with one Linux partition at sector 2048 covering 16 MiB."""
    entry = struct.pack("<B3sB3sII", 0x00, b"\x00\x02\x00", 0x83, b"\x00\x00\x00", 2048, 32768)
    with open(image, "r+b") as f:
        f.seek(440)
        f.write(struct.pack("<I", 0x12345678) + b"\x00\x00")  # disk signature
        f.write(entry + b"\x00" * 48 + b"\x55\xaa")


def test_partition_table_is_refused(tmp_path: Path, loops: Loops) -> None:
    image = _image(tmp_path)
    _write_mbr(image)
    assert "PTTYPE=dos" in _run("blkid", "-p", "-o", "export", str(image))
    dev = loops.attach(image, partscan=True)
    verdict = _dbctl(dev)
    _record("dos partition table", verdict)
    assert not verdict["ok"]
    parsed = any(r.startswith("has partitions") for r in verdict["reasons"])
    assert parsed or any("dos partition-table signature" in r for r in verdict["reasons"])
    out = _refused(tmp_path, dev)
    assert "partition" in out
    if parsed:
        # A partitioned device is never taken, force or not.
        assert "has partitions" in _refused(tmp_path, dev, "--force")
    else:
        # Only the PTTYPE signature stands in the way: that is what force is for.
        _accepted(tmp_path, dev, "--force", "--format")


def _dm_skip_reason() -> str | None:
    if shutil.which("dmsetup") is None:
        return "needs dmsetup"
    proc = subprocess.run(["dmsetup", "targets"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not os.path.exists("/dev/mapper/control"):
        return "no device-mapper in this kernel"
    return None


@pytest.mark.skipif(_dm_skip_reason() is not None, reason=_dm_skip_reason() or "")
def test_device_mapper_holder_is_refused_even_with_force(tmp_path: Path, loops: Loops) -> None:
    dev = loops.attach(_image(tmp_path))
    name = f"dbtest{os.getpid()}"
    sectors = IMAGE_BYTES // 512
    _run("dmsetup", "create", name, "--table", f"0 {sectors} linear {dev} 0")
    loops.undo.append(["dmsetup", "remove", name])
    verdict = _dbctl(dev)
    _record("device-mapper holder", verdict)
    assert not verdict["ok"]
    assert any("held by" in r for r in verdict["reasons"])
    out = _refused(tmp_path, dev, "--force").lower()
    assert "held by" in out or "busy" in out
