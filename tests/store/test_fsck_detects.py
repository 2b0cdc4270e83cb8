"""fsck catches real damage: every check is shown failing on a store that was really broken.

Each test builds a real namespace (64 MiB file, O_DIRECT) and state dir with the real
:class:`~dualbladed.store.objects.ObjectStore` over both residency paths -- the page-cache slabs in
``<state>/pagecache`` with 1 MiB slabs, so objects span two slab files and the virtual-offset
mapping is exercised -- closes it, damages one thing (payload bytes in the namespace or a slab,
a metadata row edited with plain SQLite, a slab file removed or cut short) and asserts that
:func:`dualbladed.store.fsck.fsck` reports exactly the expected errors and that ``dbctl --json fsck``
says ``ok: false`` and exits 1. A clean store must come back ``ok`` with every object read.
The last test does the same against the real ``dualbladed`` process and its own layout.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash
from objectstore_utils import NS_BYTES, new_namespace, open_store, payload

from dualblade import Client
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.paths.abstract import DIRECT, PAGECACHE
from dualbladed.paths.pagecache import PageCachePath, slab_name
from dualbladed.store import fsck as fsck_module
from dualbladed.store.fsck import FsckReport, fsck
from dualbladed.store.meta import to_unsigned64

T = "1000/llama"
MiB = 1 << 20
SLAB = 1 * MiB
#: key -> (path, size). p1 and p2 fill the start of slab 0; p3 does not fit there, so it opens
#: slab 1 (virtual offset SLAB). Sizes are ragged so the checksum covers a partial last block.
OBJECTS: dict[bytes, tuple[str, int]] = {
    b"d1": (DIRECT, 10_001),
    b"d2": (DIRECT, 8192),
    b"p1": (PAGECACHE, 10_001),
    b"p2": (PAGECACHE, 300_000),
    b"p3": (PAGECACHE, 900_000),
}


@dataclass(frozen=True)
class Row:
    path: str
    offset: int
    length: int
    size: int


@dataclass(frozen=True)
class Built:
    ns: Path
    state: Path
    rows: dict[bytes, Row]

    @property
    def slabs(self) -> Path:
        return self.state / "pagecache"

    def slab_file(self, key: bytes) -> tuple[Path, int]:
        """The slab file holding ``key`` and the object's offset inside it."""
        index, inner = divmod(self.rows[key].offset, SLAB)
        return self.slabs / slab_name(index), inner

    def edit(self, key: bytes, **cols: int) -> None:
        """Rewrite a committed row behind the store's back (the daemon is not running)."""
        sets = ", ".join(f"{c} = ?" for c in cols)
        with sqlite3.connect(self.state / "meta.sqlite3") as db:
            cur = db.execute(
                f"UPDATE objects SET {sets} WHERE tenant = ? AND key = ?", (*cols.values(), T, key)
            )
            assert cur.rowcount == 1
        db.close()


@pytest.fixture
def built(tmp_path: Path) -> Built:
    ns = new_namespace(tmp_path)
    state = tmp_path / "state"
    pagecache = PageCachePath(state / "pagecache", slab_bytes=SLAB, max_bytes=8 * SLAB)
    store = open_store(ns, state, extra={PAGECACHE: pagecache})
    try:
        for seed, (key, (path, size)) in enumerate(OBJECTS.items()):
            store.put(T, key, memoryview(payload(seed, size)), persistent=True, path=path)
    finally:
        store.close()
        ns.close()
    with sqlite3.connect(state / "meta.sqlite3") as db:
        found = db.execute("SELECT key, path, offset, length, size FROM objects").fetchall()
    db.close()
    rows = {bytes(k): Row(p, o, ln, s) for k, p, o, ln, s in found}
    assert {k: (r.path, r.size) for k, r in rows.items()} == OBJECTS
    # The layout the tests rely on: p3 alone at the start of slab 1, both slabs full-size.
    assert rows[b"p3"].offset == SLAB and rows[b"p1"].offset // SLAB == 0
    assert sorted(p.name for p in (state / "pagecache").iterdir()) == [slab_name(0), slab_name(1)]
    assert all(p.stat().st_size == SLAB for p in (state / "pagecache").iterdir())
    return Built(tmp_path / "ns.img", state, rows)


def flip_byte(file: Path, offset: int) -> None:
    with open(file, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def dbctl_fsck(ns: Path, state: Path) -> tuple[int, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "dualblade_tools.dbctl", "--json", "fsck"]
        + ["--state-dir", str(state), "--namespace", str(ns)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, json.loads(out.stdout)


def assert_detects(b: Built, expected: list[str], *, verify_data: bool = True) -> FsckReport:
    """Each expected fragment is in exactly one error, and there is no other error.

    The CLI is run too (with data verification): same errors, ``ok: false``, exit status 1.
    """
    report = fsck(str(b.ns), str(b.state), verify_data=verify_data)
    assert not report.ok
    for fragment in expected:
        assert sum(fragment in e for e in report.errors) == 1, (fragment, report.errors)
    assert len(report.errors) == len(expected), report.errors
    if verify_data:
        rc, data = dbctl_fsck(b.ns, b.state)
        assert (rc, data["ok"], data["errors"]) == (1, False, report.errors)
    return report


def name(key: bytes) -> str:
    return f"{T}:{key!r}"


# -- (f) clean -------------------------------------------------------------------------------------


def test_clean_store_is_ok_and_every_object_on_both_paths_is_read_back(built: Built) -> None:
    report = fsck(str(built.ns), str(built.state))
    assert report.ok and report.errors == [] and report.warnings == [], report.render()
    assert report.objects == len(OBJECTS) and report.verified == len(OBJECTS)
    assert report.bytes == sum(size for _, size in OBJECTS.values())
    assert fsck(str(built.ns), str(built.state), verify_data=False).verified == 0
    # Bytes past an object's size (the padding of its last block) are not part of the payload.
    file, inner = built.slab_file(b"p1")
    flip_byte(file, inner + built.rows[b"p1"].size)
    rc, data = dbctl_fsck(built.ns, built.state)
    assert (rc, data["ok"], data["errors"], data["verified"]) == (0, True, [], len(OBJECTS))


def test_fsck_uses_the_daemons_pagecache_directory(tmp_path) -> None:
    """The daemon puts its slabs where fsck looks: one declaration, checked on a real daemon."""
    from dualblade_tools.daemonproc import DaemonProcess

    with DaemonProcess(tmp_path / "d") as daemon:
        assert (daemon.state_dir / fsck_module.PAGECACHE_DIR).is_dir()


# -- (a), (b) payload corruption ----------------------------------------------------------------


def test_corrupt_direct_bytes_are_a_checksum_error(built: Built) -> None:
    row = built.rows[b"d1"]
    flip_byte(built.ns, row.offset + row.size - 1)  # the last payload byte, in a partial block
    assert_detects(built, [f"{name(b'd1')}: checksum mismatch on path direct"])
    assert fsck(str(built.ns), str(built.state), verify_data=False).ok  # only data reads see it


@pytest.mark.parametrize("key", [b"p1", b"p3"], ids=["slab0", "slab1"])
def test_corrupt_pagecache_bytes_in_a_slab_are_a_checksum_error(built: Built, key: bytes) -> None:
    file, inner = built.slab_file(key)
    flip_byte(file, inner + built.rows[key].size - 1)
    report = assert_detects(built, [f"{name(key)}: checksum mismatch on path pagecache"])
    assert report.verified == len(OBJECTS) - 1


# -- (c) overlap ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "low", "moved"), [(DIRECT, b"d1", b"d2"), (PAGECACHE, b"p1", b"p2")]
)
def test_overlapping_records_on_one_path(built: Built, path: str, low: bytes, moved: bytes) -> None:
    start = built.rows[low].offset + 4096  # inside ``low``'s extent, still block aligned
    built.edit(moved, offset=start)
    overlap = f"overlap on path {path}: {name(low)} [{built.rows[low].offset}, "
    assert_detects(built, [overlap], verify_data=False)
    # Reading the moved record finds ``low``'s bytes: its checksum fails as well.
    assert_detects(built, [overlap, f"{name(moved)}: checksum mismatch on path {path}"])


# -- (d) alignment ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "column", "delta"),
    [(b"d2", "offset", 512), (b"p2", "offset", 512), (b"p2", "length", -100)],
    ids=["direct-offset", "pagecache-offset", "pagecache-length"],
)
def test_misaligned_extent_is_an_alignment_error(
    built: Built, key: bytes, column: str, delta: int
) -> None:
    row = built.rows[key]
    built.edit(key, **{column: getattr(row, column) + delta})
    # Only the alignment error: a misaligned record is not read, so no checksum error follows.
    assert_detects(built, [f"{name(key)}: extent ["])
    report = fsck(str(built.ns), str(built.state))
    assert f"on path {row.path} not aligned to 4096 bytes" in report.errors[0]


# -- (e) bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "offset", "fragment"),
    [
        (b"d2", NS_BYTES, "outside the data area"),  # past the end of the namespace
        (b"d1", 0, "outside the data area"),  # over the superblock
        (b"p2", 1000 * SLAB, "outside the page-cache slab space"),  # far past any slab
        (b"p3", 2 * SLAB - 4096, "crosses the end of slab-0001.dat"),  # runs off its slab
    ],
    ids=["direct-past-end", "direct-superblock", "pagecache-far", "pagecache-crossing"],
)
def test_out_of_bounds_extent_is_a_bounds_error(
    built: Built, key: bytes, offset: int, fragment: str
) -> None:
    built.edit(key, offset=offset)
    report = assert_detects(built, [f"{name(key)}: extent ["])
    assert fragment in report.errors[0]
    assert report.verified == len(OBJECTS) - 1  # the others were still read and verified


def test_missing_last_slab_file_is_an_error(built: Built) -> None:
    (built.slabs / slab_name(1)).unlink()
    report = assert_detects(built, [f"{name(b'p3')}: extent ["])
    assert "outside the page-cache slab space [0, 1048576)" in report.errors[0]
    assert "no slab-0001.dat" in report.errors[0]


def test_missing_slab_file_before_another_is_an_error_per_object(built: Built) -> None:
    (built.slabs / slab_name(0)).unlink()
    missing = "is in slab 0 but slab-0000.dat is missing"
    report = assert_detects(built, [f"{name(b'p1')}: extent", f"{name(b'p2')}: extent"])
    assert all(missing in e for e in report.errors)
    assert any("slab-0000.dat" in w for w in report.warnings)
    assert report.verified == len(OBJECTS) - 2  # p3 in slab 1 still verifies


def test_short_slab_file_is_an_error(built: Built) -> None:
    os.truncate(built.slabs / slab_name(1), 4096)
    report = assert_detects(built, [f"{name(b'p3')}: extent ["])
    assert "crosses the end of slab-0001.dat (4096 bytes)" in report.errors[0]


def test_slab_file_the_daemon_would_refuse_is_an_error(built: Built) -> None:
    os.truncate(built.slabs / slab_name(1), SLAB - 100)  # not a multiple of the alignment
    # p3 ([0, 901120) of slab 1) still fits and verifies: the error is the file itself, which
    # would stop the daemon from starting.
    report = assert_detects(built, ["slab-0001.dat is 1048476 bytes: not a non-zero multiple"])
    assert report.verified == len(OBJECTS)


# -- the real daemon's own layout --------------------------------------------------------------


def test_real_daemon_pagecache_corruption_fails_dbctl_fsck(tmp_path: Path) -> None:
    """The daemon decides where slabs live and how big they are; fsck must find them unaided."""
    cfg = tmp_path / "d.toml"
    cfg.write_text('[residency]\nmode = "pagecache"\nslab_bytes = "1MiB"\n')
    big = payload(9, 900_000)  # does not fit after ``small`` in slab 0: goes to slab 1
    with DaemonProcess(tmp_path / "d", namespace_size="64MiB", config=cfg) as d:
        with Client.connect(d.socket, tenant="fsck", arena_bytes=4 << 20) as c:
            c.put(b"small", payload(8, 300_000), persistent=True, path="pagecache")
            c.put(b"big", big, persistent=True, path="pagecache")
        assert d.terminate() == 0
    rc, data = dbctl_fsck(d.namespace_path, d.state_dir)
    assert (rc, data["ok"], data["verified"], data["errors"]) == (0, True, 2, []), data
    with sqlite3.connect(d.state_dir / "meta.sqlite3") as db:
        path, offset, checksum = db.execute(
            "SELECT path, offset, checksum FROM objects WHERE key = ?", (b"big",)
        ).fetchone()
    db.close()
    assert (path, offset) == (PAGECACHE, SLAB)
    assert to_unsigned64(checksum) == xxhash.xxh3_64_intdigest(big)  # the store's format
    flip_byte(d.state_dir / "pagecache" / slab_name(1), 123_456)
    rc, data = dbctl_fsck(d.namespace_path, d.state_dir)
    assert (rc, data["ok"], data["verified"]) == (1, False, 1), data
    assert len(data["errors"]) == 1 and "checksum mismatch on path pagecache" in data["errors"][0]
