"""``dualblade-bench readcost`` end to end at a tiny size: real O_DIRECT reads, real slab files.

The figures themselves are the benchmark's business (docs/residency.md reads them); checked
here: the four rows and their JSON keys, that every row read bytes and spent CPU, that the CPU
splits into user and system time. The benchmark itself checks that the store's reads returned
the bytes written (a read that skipped the disk would be fast and wrong): rc 0 says they did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualblade_tools.bench import cli

MiB = 1 << 20
KEYS = {"path", "gbps", "cpu_ms_per_gib", "user_ms_per_gib", "sys_ms_per_gib"}


def test_readcost_reports_each_path_beside_its_raw_reference(tmp_path: Path, capsys) -> None:
    out = tmp_path / "readcost.json"
    work = tmp_path / "work"
    rc = cli.main(
        [
            "readcost",
            "--objects",
            "3",
            "--object-bytes",
            str(2 * MiB + 12345),
            "--repeat",
            "2",
            "--dir",
            str(work),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = doc["records"] if isinstance(doc, dict) else doc
    assert [r["path"] for r in rows] == ["direct", "pagecache", "raw_direct", "raw_pagecache"]
    for r in rows:
        assert set(r) == KEYS
        assert r["gbps"] > 0
        assert r["cpu_ms_per_gib"] == pytest.approx(
            r["user_ms_per_gib"] + r["sys_ms_per_gib"], abs=0.2
        )
    assert "raw_pagecache" in capsys.readouterr().out  # the table went to stdout
