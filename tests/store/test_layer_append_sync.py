"""What a page-cache layer append asks of the disk: no fdatasync for ephemeral or non-durable
appends, an fdatasync before the commit for durable ones, and early write-back for large ones.

Real store, real slab files and SQLite under tmp_path. The page-cache path is the real one with
its ``flush`` counted (a subclass that calls through), so the count is what the store asked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from objectstore_utils import new_namespace, open_store, payload

from dualbladed.namespace.file import FileNamespace
from dualbladed.paths.pagecache import PageCachePath
from dualbladed.store import ObjectStore

T = "1000/llama"
KiB = 1 << 10
MiB = 1 << 20


class _CountingPageCache(PageCachePath):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


@pytest.fixture
def setup(tmp_path: Path):
    ns: FileNamespace = new_namespace(tmp_path)
    pc = _CountingPageCache(
        tmp_path / "slabs", slab_bytes=16 * MiB, max_bytes=32 * MiB, writeback_bytes=1 * MiB
    )
    store = open_store(ns, tmp_path / "state", extra={"pagecache": pc}, max_object_bytes=16 * MiB)
    yield store, pc
    store.close()
    ns.close()


def test_ephemeral_and_non_durable_appends_never_fdatasync(
    setup: tuple[ObjectStore, _CountingPageCache],
) -> None:
    store, pc = setup
    store.reserve(T, b"eph", 8 * MiB, path="pagecache", session=None)
    store.reserve(T, b"per", 8 * MiB, path="pagecache", persistent=True)
    for key in (b"eph", b"per"):
        for i in range(4):
            store.append(T, key, memoryview(payload(i, 1 * MiB + 4 * KiB)))
    assert pc.flushes == 0
    # the large appends started their write-back; nothing else asked for the disk
    assert pc.writeback.starter is not None and pc.writeback.starter.calls == 8
    assert store.stat(T, b"per").size == 4 * (1 * MiB + 4 * KiB)


def test_a_durable_append_fdatasyncs_before_it_is_acknowledged(
    setup: tuple[ObjectStore, _CountingPageCache],
) -> None:
    store, pc = setup
    store.reserve(T, b"per", 8 * MiB, path="pagecache", persistent=True)
    store.append(T, b"per", memoryview(payload(1, 2 * MiB)), durable=True)
    assert pc.flushes >= 1
    assert store.stat(T, b"per").size == 2 * MiB
