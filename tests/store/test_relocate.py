"""Migration through the MoveSite protocol: its boundary, and every way a move can end.

Real store on a real file namespace (direct) and real page-cache slabs. The race "the key was
overwritten during the copy" is made deterministic by handing :func:`relocate` a site that
overwrites the key right after the source was read, which the protocol allows.
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest
from objectstore_utils import new_namespace, open_store, payload

from dualbladed.errors import ChecksumMismatch, FailedPrecondition, NotFound, OutOfSpace
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.store import ObjectStore
from dualbladed.store import relocate as relocate_module
from dualbladed.store.relocate import BOUNCE_STEP, Bounce, Move, MoveSite, relocate

T = "1000/llama"
MOVE_METHODS = ("begin_move", "read_source", "abandon_move", "commit_move")


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    ns = new_namespace(tmp_path)
    pc = PageCachePath(tmp_path / "slabs", slab_bytes=1 << 20, max_bytes=2 << 20)
    s = open_store(ns, tmp_path / "state", extra={"pagecache": pc})
    yield s
    s.close()
    ns.close()


def _used(store: ObjectStore) -> dict[str, int]:
    return {name: usage.alloc.used for name, usage in store.stats().paths.items()}


def test_migration_touches_no_private_member_and_does_not_import_the_store() -> None:
    tree = ast.parse(Path(inspect.getfile(relocate_module)).read_text())
    private = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        }
    )
    assert private == []
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "dualbladed.store.objects" not in imported
    for name in MOVE_METHODS:  # ObjectStore implements the protocol, signature for signature
        ours = inspect.signature(getattr(ObjectStore, name))
        theirs = inspect.signature(getattr(MoveSite, name))
        assert list(ours.parameters) == list(theirs.parameters), name


def test_move_to_the_current_path_is_a_no_op(store: ObjectStore) -> None:
    info = store.put(T, b"k", memoryview(payload(1, 5000)), persistent=True)
    before = _used(store)
    assert store.relocate(T, b"k", "direct") == store.stat(T, b"k")
    assert (_used(store), store.stat(T, b"k").offset) == (before, info.offset)


def test_destination_out_of_space_changes_nothing(store: ObjectStore) -> None:
    data = payload(2, 3 << 20)  # larger than the whole page-cache path
    store.put(T, b"big", memoryview(data), persistent=True)
    before = _used(store)
    with pytest.raises(OutOfSpace):
        store.relocate(T, b"big", "pagecache")
    assert _used(store) == before
    assert store.stats().pinned == 0, "the source stays pinned after a refused move"
    store.delete(T, b"big")
    assert _used(store)["direct"] == 0, "an unpinned source is freed at once"


def test_corrupt_source_is_dropped_and_the_destination_freed(
    store: ObjectStore, tmp_path: Path
) -> None:
    info = store.put(T, b"rot", memoryview(payload(3, 8192)), persistent=True)
    fd = os.open(tmp_path / "ns.img", os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff" * 16, info.offset + 100)  # bit rot on the medium
        os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(ChecksumMismatch):
        store.relocate(T, b"rot", "pagecache")
    with pytest.raises(NotFound):
        store.stat(T, b"rot")
    assert _used(store) == {"direct": 0, "pagecache": 0}
    assert store.stats().pinned == 0


class _OverwritingSite:
    """The real store as the site, except that the key is overwritten during the copy."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def begin_move(self, tenant: str, key: bytes, new_path: str) -> object:
        return self.store.begin_move(tenant, key, new_path)

    def read_source(self, move: Move, view: memoryview) -> int | None:
        actual = self.store.read_source(move, view)
        self.store.put(T, b"hot", memoryview(payload(5, 4096)), persistent=True)
        return actual

    def abandon_move(self, move: Move, *, corrupt: int | None = None) -> None:
        self.store.abandon_move(move, corrupt=corrupt)

    def commit_move(self, move: Move, after_commit: object) -> object:
        return self.store.commit_move(move, after_commit)  # type: ignore[arg-type]


def test_key_overwritten_during_the_copy_keeps_the_newer_version(store: ObjectStore) -> None:
    store.put(T, b"hot", memoryview(payload(4, 4096)), persistent=True)
    with pytest.raises(FailedPrecondition, match="changed while relocating"):
        relocate(_OverwritingSite(store), T, b"hot", "pagecache")  # type: ignore[arg-type]
    newer = store.stat(T, b"hot")
    assert newer.path == "direct"
    buf = bytearray(4096)
    store.get_into(T, b"hot", memoryview(buf))
    assert bytes(buf) == payload(5, 4096)
    assert _used(store) == {"direct": newer.length, "pagecache": 0}
    assert store.stats().pinned == 0


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "ephemeral"])
def test_only_a_persistent_objects_copy_is_flushed_before_its_commit(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, persistent: bool
) -> None:
    """A persistent object's new row must follow durable bytes; an ephemeral object has no row
    and is gone after a restart, so flushing its copy (fdatasync of a page-cache slab) would
    only push its bytes to the disk while decode reads need it."""
    pc = store.paths["pagecache"]
    flushes: list[int] = []
    real = type(pc).flush
    monkeypatch.setattr(type(pc), "flush", lambda self: (flushes.append(1), real(self))[1])
    data = payload(7, 8192)
    store.put(T, b"k", memoryview(data), persistent=persistent, session=None if persistent else "s")
    moved = store.relocate(T, b"k", "pagecache")
    assert moved.path == "pagecache" and moved.persistent is persistent
    assert len(flushes) == (1 if persistent else 0)
    buf = bytearray(8192)
    store.get_into(T, b"k", memoryview(buf))
    assert bytes(buf) == data


def test_moves_through_one_bounce_copy_each_objects_own_bytes(store: ObjectStore) -> None:
    """A reused bounce holds the last object's bytes: a smaller object moved after a larger one
    must carry only its own (read back exactly, checksum verified), both ways."""
    data = {b"a": payload(11, 900_000), b"b": payload(12, 300_000), b"c": payload(13, 5000)}
    for key, value in data.items():
        store.put(T, key, memoryview(value), persistent=True)
    bounce = Bounce()
    for path in ("pagecache", "direct"):
        for key in data:
            assert store.relocate(T, key, path, bounce=bounce).path == path
        assert bounce.capacity == BOUNCE_STEP, "one mapping served every move"
        for key, value in data.items():
            buf = bytearray(len(value))
            store.get_into(T, key, memoryview(buf))
            assert bytes(buf) == value
    bounce.close()
    assert bounce.capacity == 0
    assert store.stats().pinned == 0


def test_a_bounce_grows_in_steps_and_unmaps_even_while_viewed() -> None:
    bounce = Bounce()
    assert bounce.view(10).nbytes == 10 and bounce.capacity == BOUNCE_STEP
    held = bounce.view(BOUNCE_STEP + 1)  # grows: the old mapping is unmapped
    assert bounce.capacity == 2 * BOUNCE_STEP and held.nbytes == BOUNCE_STEP + 1
    held[:3] = b"xyz"
    bounce.close()  # a view still points in: the unmap waits for it, nothing breaks
    assert bounce.capacity == 0 and bytes(held[:3]) == b"xyz"
    held.release()
    bounce.close()  # idempotent
