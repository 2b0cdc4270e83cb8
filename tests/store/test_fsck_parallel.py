"""fsck at scale (issue 14): neighbouring extents are read together by a thread pool, and every
damaged object is still named; progress is reported as verification goes.

Real file namespace and SQLite state; the damage is real (bytes flipped in the namespace file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from objectstore_utils import new_namespace, open_store, payload

from dualbladed.store.fsck import fsck
from dualbladed.store.fsck import verify as fsck_verify

T = "1000/llama"
N = 300


@pytest.mark.parametrize("workers", [1, 4])
def test_spans_find_every_flipped_object(tmp_path: Path, monkeypatch, workers: int) -> None:
    monkeypatch.setattr(fsck_verify, "SPAN_BYTES", 64 << 10)  # many spans, several per worker
    ns = new_namespace(tmp_path)
    store = open_store(ns, tmp_path / "state")
    try:
        for i in range(N):
            size = 4096 if i % 7 else 5000  # some objects span two blocks, some end mid-block
            store.put(T, b"o%04d" % i, memoryview(payload(i, size)), persistent=True)
        infos = {i.key: i for i in store.list(T)}
    finally:
        store.close()
        ns.close()
    bad = [b"o0000", b"o0150", b"o0151", b"o0299"]
    with open(tmp_path / "ns.img", "r+b") as f:
        for key in bad:
            f.seek(infos[key].offset + infos[key].size - 1)  # the last payload byte
            old = f.read(1)
            f.seek(infos[key].offset + infos[key].size - 1)
            f.write(bytes([old[0] ^ 0x5A]))
    seen: list[tuple[int, int]] = []
    report = fsck(
        str(tmp_path / "ns.img"),
        str(tmp_path / "state"),
        workers=workers,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert not report.ok
    named = sorted(k for k in bad if any(repr(k) in e for e in report.errors))
    assert named == sorted(bad)
    assert len(report.errors) == len(bad)
    assert all("checksum mismatch" in e for e in report.errors)
    assert report.verified == N - len(bad)
    assert len(seen) > 1  # more than one span: progress came in steps
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (N, N)
