"""FileNamespace and open_namespace on real files under tmp_path (ext4: real O_DIRECT).

What every namespace must do (round trips, exclusive claim, close) is in
test_namespace_conformance.py; this file checks what is particular to files.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from pathlib import Path

import grpc
import pytest

from dualbladed.errors import InvalidArgument, ResourceExhausted
from dualbladed.namespace import FileNamespace, open_namespace
from dualbladed.namespace.abstract import METADATA_AREA
from dualbladed.service.status import to_status
from loopdev_utils import LoopDevices, SmallExt4, small_fs_skip_reason

MiB = 1 << 20
_small_skip = small_fs_skip_reason()


def test_create_preallocates_and_reports_geometry(tmp_path):
    path = tmp_path / "ns.img"
    with FileNamespace(path, 4 * MiB) as ns:
        assert (ns.kind, ns.block_size, ns.capacity) == ("file", 4096, 4 * MiB)
        assert ns.data_start == METADATA_AREA
        assert ns.path == str(path)
    st = os.stat(path)
    assert st.st_size == 4 * MiB
    assert st.st_blocks * 512 >= 4 * MiB, "posix_fallocate must have allocated every block"


def test_file_is_opened_with_o_direct(tmp_path):
    with FileNamespace(tmp_path / "ns.img", 4 * MiB) as ns:
        fdinfo = Path(f"/proc/self/fdinfo/{ns.fileno()}").read_text()
        flags = int(fdinfo.split("flags:")[1].split()[0], 8)
        assert flags & os.O_DIRECT
        assert flags & os.O_ACCMODE == os.O_RDWR


def test_reopen_keeps_size_and_data(tmp_path):
    path = tmp_path / "ns.img"
    with FileNamespace(path, 4 * MiB) as ns, mmap.mmap(-1, 8192) as buf:
        buf[:] = b"\xab" * 8192
        assert ns.pwritev([memoryview(buf)], 2 * MiB) == 8192
        ns.flush()
    with FileNamespace(path) as ns, mmap.mmap(-1, 8192) as buf:
        assert ns.capacity == 4 * MiB
        assert ns.preadv([memoryview(buf)], 2 * MiB) == 8192
        assert buf[:] == b"\xab" * 8192


def test_reopen_larger_grows_and_logs(tmp_path, caplog):
    path = tmp_path / "ns.img"
    FileNamespace(path, 4 * MiB).close()
    with caplog.at_level(logging.WARNING), FileNamespace(path, 8 * MiB) as ns:
        assert ns.capacity == 8 * MiB
    assert os.stat(path).st_size == 8 * MiB
    assert any("grew" in r.getMessage() and str(8 * MiB) in r.getMessage() for r in caplog.records)


def test_reopen_smaller_is_refused_and_file_untouched(tmp_path):
    path = tmp_path / "ns.img"
    FileNamespace(path, 8 * MiB).close()
    with pytest.raises(InvalidArgument, match=rf"shrink.*{4 * MiB}"):
        FileNamespace(path, 4 * MiB)
    assert os.stat(path).st_size == 8 * MiB


@pytest.mark.parametrize(
    ("size", "needle"),
    [(4 * MiB + 512, str(4 * MiB + 512)), (METADATA_AREA, str(METADATA_AREA)), (0, "0 bytes")],
)
def test_bad_sizes_are_refused_with_the_numbers(tmp_path, size, needle):
    path = tmp_path / "ns.img"
    with pytest.raises(InvalidArgument, match=needle) as info:
        FileNamespace(path, size)
    assert "4096" in str(info.value)
    assert not path.exists()


def test_missing_file_without_size_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="give a size"):
        FileNamespace(tmp_path / "absent.img")
    with pytest.raises(InvalidArgument, match="create=False"):
        FileNamespace(tmp_path / "absent.img", 4 * MiB, create=False)
    assert not (tmp_path / "absent.img").exists()


def test_existing_file_with_bad_size_is_refused(tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(InvalidArgument, match="5000"):
        FileNamespace(path)


def test_o_direct_rejects_misaligned_buffers(tmp_path):
    with FileNamespace(tmp_path / "ns.img", 4 * MiB) as ns, mmap.mmap(-1, 8192) as buf:
        view = memoryview(buf)
        with pytest.raises(OSError):
            ns.pwritev([view[1:4097]], METADATA_AREA)  # a misaligned address must not pass
        del view


def test_open_namespace_picks_file_and_ignores_force(tmp_path):
    with open_namespace(tmp_path / "ns.img", size=4 * MiB, force=True) as ns:
        assert isinstance(ns, FileNamespace)
        assert ns.capacity == 4 * MiB


def test_directory_is_not_a_namespace(tmp_path):
    with pytest.raises(InvalidArgument, match="not a regular file"):
        FileNamespace(tmp_path)


@pytest.mark.root
@pytest.mark.skipif(_small_skip is not None, reason=_small_skip or "")
def test_full_filesystem_is_resource_exhausted_and_leaves_no_file(tmp_path):
    loops = LoopDevices(tmp_path)
    try:
        fs = SmallExt4(loops, tmp_path)
        path = fs.mount / "ns.img"
        with pytest.raises(ResourceExhausted, match="full") as info:
            FileNamespace(path, 64 * MiB)  # the filesystem has 24 MiB
        assert info.value.__cause__.errno == errno.ENOSPC
        assert to_status(info.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not path.exists()
    finally:
        loops.cleanup()
