"""The Namespace contract, run against every namespace kind (as containerd tests every snapshotter).

A new kind gets the whole suite by adding one :class:`NamespaceKind` to ``KINDS``. Kinds: a
preallocated file (no privileges needed), the fault-injecting wrapper with no fault armed (it must
be indistinguishable from what it wraps), and block namespaces on loop devices with 512-byte and
4096-byte logical blocks (the stand-ins for NVMe namespaces; they need root and skip otherwise).

The contract, from :mod:`dualbladed.namespace.abstract`: consistent geometry; O_DIRECT vectored
round trips at block-aligned offsets up to the last block; ``flush`` makes writes survive a
close and reopen; the namespace is claimed exclusively while open (a second opener gets the typed
``DeviceBusy``) and ``close`` is idempotent and releases the claim. I/O errors are raw
``OSError`` at this layer; the one errno map (:func:`dualbladed.oserrors.from_oserror`) types them
and the paths above apply it, which the ResidencyPath suite checks.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dualbladed.errors import DeviceBusy, InvalidArgument
from dualbladed.namespace import BlockNamespace, FileNamespace
from dualbladed.namespace.abstract import METADATA_AREA, Namespace
from dualbladed.namespace.faulty import FaultyNamespace
from dualbladed.oserrors import from_oserror
from loopdev_utils import LoopDevices, loop_skip_reason

MiB = 1 << 20
FILE_BYTES = 8 * MiB
_loop_skip = loop_skip_reason()


@dataclass(frozen=True)
class NamespaceKind:
    name: str
    #: Make the medium (a file path or a device node) under ``tmp_path``; returns what to open.
    medium: Callable[[Path, LoopDevices], str]
    #: Open (or reopen) the namespace on the medium.
    open: Callable[[str], Namespace]
    skip: str | None = None


def _file_medium(tmp_path: Path, loops: LoopDevices) -> str:
    path = tmp_path / "ns.img"
    FileNamespace(path, FILE_BYTES).close()
    return str(path)


def _loop_medium(sector_size: int | None) -> Callable[[Path, LoopDevices], str]:
    def make(tmp_path: Path, loops: LoopDevices) -> str:
        return loops.attach(sector_size=sector_size)

    return make


KINDS = [
    NamespaceKind("file", _file_medium, FileNamespace),
    NamespaceKind("faulty-file", _file_medium, lambda m: FaultyNamespace(FileNamespace(m))),
    NamespaceKind("loop-512", _loop_medium(None), BlockNamespace, skip=_loop_skip),
    NamespaceKind("loop-4k", _loop_medium(4096), BlockNamespace, skip=_loop_skip),
]


@pytest.fixture(params=KINDS, ids=lambda k: k.name)
def kind(request: pytest.FixtureRequest) -> NamespaceKind:
    k: NamespaceKind = request.param
    if k.skip is not None:
        pytest.skip(k.skip)
    return k


@pytest.fixture
def medium(kind: NamespaceKind, tmp_path: Path) -> Iterator[str]:
    loops = LoopDevices(tmp_path)
    try:
        yield kind.medium(tmp_path, loops)
    finally:
        loops.cleanup()


@pytest.fixture
def ns(kind: NamespaceKind, medium: str) -> Iterator[Namespace]:
    opened = kind.open(medium)
    yield opened
    opened.close()


def _buffer(nbytes: int, fill: bytes | None = None) -> tuple[mmap.mmap, memoryview]:
    buf = mmap.mmap(-1, nbytes)  # page-aligned: a valid O_DIRECT target at any block size
    if fill is not None:
        buf[:] = fill
    return buf, memoryview(buf)


def _write(ns: Namespace, offset: int, data: bytes) -> None:
    """Write ``data`` as two vectors (one block, then the rest)."""
    buf, view = _buffer(len(data), data)
    with buf:
        bs = ns.block_size
        assert ns.pwritev([view[:bs], view[bs:]], offset) == len(data)
        view.release()


def _read(ns: Namespace, offset: int, nbytes: int) -> bytes:
    buf, view = _buffer(nbytes)
    with buf:
        assert ns.preadv([view], offset) == nbytes
        view.release()
        return buf[:]


def test_geometry_is_consistent(ns: Namespace, kind: NamespaceKind) -> None:
    bs = ns.block_size
    assert ns.kind in ("file", "loop", "nvme")
    assert isinstance(ns.path, str) and ns.path
    assert bs >= 512 and bs & (bs - 1) == 0
    assert ns.capacity % bs == 0
    assert ns.data_start == METADATA_AREA and ns.data_start % bs == 0
    assert ns.capacity >= ns.data_start + 1 * MiB


def test_vectored_round_trip_at_aligned_offsets(ns: Namespace) -> None:
    bs = ns.block_size
    last = ns.capacity - 2 * bs
    data = {offset: os.urandom(2 * bs) for offset in (ns.data_start, ns.data_start + 7 * bs, last)}
    for offset, payload in data.items():
        _write(ns, offset, payload)
    for offset, payload in data.items():
        assert _read(ns, offset, len(payload)) == payload
    ns.discard(ns.data_start + 64 * bs, bs)  # a hint: accepted (or skipped) without error


def test_flush_makes_writes_survive_a_reopen(kind: NamespaceKind, medium: str) -> None:
    first = kind.open(medium)
    offset = first.data_start + 3 * first.block_size
    payload = os.urandom(4 * first.block_size)
    _write(first, offset, payload)
    first.flush()
    first.close()
    with kind.open(medium) as again:
        assert _read(again, offset, len(payload)) == payload


def test_claim_is_exclusive_and_close_releases_it(kind: NamespaceKind, medium: str) -> None:
    first = kind.open(medium)
    with pytest.raises(DeviceBusy):
        kind.open(medium)
    first.close()
    first.close()  # idempotent
    kind.open(medium).close()  # the claim went away with the first open


def test_io_errors_are_raw_oserror_that_the_one_map_types(ns: Namespace) -> None:
    bs = ns.block_size
    buf, view = _buffer(bs)
    with buf:
        try:
            # An offset off the logical block: O_DIRECT refuses it on every device. (A misaligned
            # buffer address is not a contract: devices accept down to their dma_alignment.)
            with pytest.raises(OSError) as info:
                ns.pwritev([view], ns.data_start + 1)
        finally:
            view.release()
    assert info.value.errno == errno.EINVAL
    assert isinstance(from_oserror(info.value, context="write"), InvalidArgument)
