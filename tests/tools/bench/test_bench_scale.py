"""``dualblade-bench scale`` end to end at tiny counts: every JSON key the issue names, real values."""

from __future__ import annotations

import json

from dualblade_tools.bench import cli
from dualblade_tools.bench.scale import _count

KEYS = {
    "objects",
    "put_objs_per_s",
    "rss_bytes_per_object",
    "idle_cpu_frac",
    "status_s",
    "restart_s",
    "sigkill_recovery_s",
    "fsck_s",
}


def test_counts_parse_like_the_issue_writes_them() -> None:
    assert [_count(t) for t in ("1e4", "100000", "20k", "1m")] == [10_000, 100_000, 20_000, 10**6]


def test_scale_run_reports_every_key(tmp_path, capsys) -> None:
    out = tmp_path / "scale.json"
    rc = cli.main(
        [
            "scale",
            "--objects",
            "300,900",
            "--batch",
            "200",
            "--idle-s",
            "0.5",
            "--dir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "scale"
    rows = doc["records"]
    assert [r["objects"] for r in rows] == [300, 900]
    for row in rows:
        assert row.keys() >= KEYS
        assert row["put_objs_per_s"] > 0 and row["restart_s"] > 0 and row["fsck_s"] > 0
        assert 0 <= row["idle_cpu_frac"] < 2.0  # a fraction of one core; 2 cores at most here
        assert abs(row["rss_bytes_per_object"]) < (1 << 20)  # per object, not per batch
    assert "put_objs_per_s" in capsys.readouterr().out


def test_scale_refuses_a_zero_batch(tmp_path, capsys) -> None:
    assert cli.main(["scale", "--batch", "0", "--dir", str(tmp_path)]) == 2
    assert "--batch" in capsys.readouterr().err


def test_two_batches_in_flight_store_every_object_once(tmp_path) -> None:
    """``--inflight 2`` (two put_many calls at a time from two threads) on a real daemon: every
    key of an uneven last batch arrives, none twice, and the record says how it was put."""
    from dualblade import Client
    from dualblade_tools.bench.scale import _put_all
    from dualblade_tools.daemonproc import DaemonProcess

    with (
        DaemonProcess(tmp_path / "d") as d,
        Client.connect(str(d.socket), tenant="scale", arena_bytes=4 << 20) as kv,
    ):
        _put_all(kv, 901, b"x" * 4096, 200, 2)
        keys = [o.key for o in kv.list()]
    assert sorted(keys) == [f"o/{i:09d}".encode() for i in range(901)]


def test_scale_refuses_zero_in_flight(tmp_path, capsys) -> None:
    assert cli.main(["scale", "--inflight", "0", "--dir", str(tmp_path)]) == 2
    assert "--inflight" in capsys.readouterr().err
