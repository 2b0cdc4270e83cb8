"""The daemon-side arena: a real sealed memfd, real MAP_SHARED mappings, real O_DIRECT."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

import pytest

from dualbladed.errors import FailedPrecondition, InvalidArgument, Misaligned, OutOfRange
from dualbladed.sessions import arena as arena_mod
from dualbladed.sessions.arena import ALIGNMENT, SEALS, Arena


def test_arena_is_sealed_memfd_of_requested_size() -> None:
    with Arena.create(64 * 1024) as arena:
        assert os.fstat(arena.fd).st_size == 64 * 1024
        assert fcntl.fcntl(arena.fd, fcntl.F_GET_SEALS) == SEALS
        with pytest.raises(PermissionError) as info:
            os.ftruncate(arena.fd, 4096)
        assert info.value.errno == errno.EPERM
        assert fcntl.fcntl(arena.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_writes_are_visible_through_a_second_mapping() -> None:
    with Arena.create(2 * ALIGNMENT) as arena:
        other = mmap.mmap(arena.fd, arena.size, mmap.MAP_SHARED)
        view = arena.view(ALIGNMENT, 5)
        view[:] = b"hello"
        assert other[ALIGNMENT : ALIGNMENT + 5] == b"hello"
        other[0:3] = b"abc"
        assert bytes(arena.view(0, 3)) == b"abc"
        other.close()


@pytest.mark.parametrize("size", [0, -4096, 1000, 4097])
def test_bad_sizes_are_refused(size: int) -> None:
    with pytest.raises(InvalidArgument):
        Arena.create(size)


def test_view_checks_alignment_and_bounds_with_clear_messages() -> None:
    with Arena.create(4 * ALIGNMENT) as arena:
        with pytest.raises(Misaligned) as mis:
            arena.view(100, 4096)
        assert "100" in str(mis.value) and "4096" in str(mis.value) and "16384" in str(mis.value)
        with pytest.raises(OutOfRange) as oor:
            arena.view(3 * ALIGNMENT, 2 * ALIGNMENT)
        text = str(oor.value)
        assert "offset=12288" in text and "length=8192" in text and "16384 bytes" in text
        with pytest.raises(OutOfRange):
            arena.view(-ALIGNMENT, 10)
        assert len(arena.view(3 * ALIGNMENT, ALIGNMENT)) == ALIGNMENT


def _mapped(name: str) -> bool:
    with open("/proc/self/maps") as maps:
        return f"/memfd:{name}" in maps.read()


def test_close_without_views_unmaps_and_closes_the_memfd() -> None:
    arena = Arena.create(ALIGNMENT, name="dbtest-close-now")
    fd = arena.fd
    assert _mapped("dbtest-close-now")
    arena.close()
    assert not _mapped("dbtest-close-now")
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(FailedPrecondition):
        arena.view(0, 16)
    arena.close()  # idempotent


def test_close_with_a_live_view_unmaps_when_the_view_dies() -> None:
    """A view in use (an in-flight preadv, a tensor) must never point at unmapped memory."""
    arena = Arena.create(ALIGNMENT, name="dbtest-close-lazy")
    view = arena.view(0, ALIGNMENT)
    view[0] = 9
    arena.close()  # must not raise
    assert _mapped("dbtest-close-lazy")
    assert view[0] == 9  # still mapped, still valid
    view[1] = 8
    del view
    assert not _mapped("dbtest-close-lazy")


def test_close_with_a_torch_tensor_on_a_view_is_safe() -> None:
    """torch.frombuffer holds the view object but no buffer export: closing must not unmap."""
    torch = pytest.importorskip("torch")
    arena = Arena.create(ALIGNMENT, name="dbtest-close-torch")
    tensor = torch.frombuffer(arena.view(0, ALIGNMENT), dtype=torch.uint8)
    tensor[0] = 7
    arena.close()
    assert int(tensor[0]) == 7 and _mapped("dbtest-close-torch")
    del tensor
    assert not _mapped("dbtest-close-torch")


def test_o_direct_read_into_an_arena_view(tmp_path) -> None:
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * 32)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        with Arena.create(4 * ALIGNMENT) as arena:
            view = arena.view(ALIGNMENT, 2 * ALIGNMENT)
            assert os.preadv(fd, [view], 0) == 8192
            assert bytes(view[:256]) == bytes(range(256))
    finally:
        os.close(fd)


def test_prefault_falls_back_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arena_mod, "MADV_POPULATE_WRITE", 0x7FFF)  # an advice the kernel rejects
    with Arena.create(ALIGNMENT, prefault=True) as arena:
        arena.view(0, 1)[0] = 42
        assert arena.view(0, 1)[0] == 42


def test_an_arena_commits_no_page_before_it_is_touched() -> None:
    """Issue 15: a hello must not cost its arena size up front. The memfd's allocated blocks
    (shmem pages) stay 0 after create and grow by exactly the pages written."""
    with Arena.create(64 << 20) as arena:
        assert os.fstat(arena.fd).st_blocks == 0
        arena.view(0, 1)[0] = 1
        arena.view(8 * ALIGNMENT, 1)[0] = 1
        assert os.fstat(arena.fd).st_blocks * 512 == 2 * ALIGNMENT
