"""Soak: real client processes against the real daemon; no errors, no RSS growth, no fd leak.

The short run here (4 client processes, 12 s) is the documented long soak scaled down; the RSS
verdict itself is checked on synthetic series so that a regression in the judge cannot hide.
"""

from __future__ import annotations

import json
from pathlib import Path

from dualblade_tools.soak import main, rss_verdict

MiB = 1 << 20


def test_rss_verdict_passes_a_plateau_and_fails_steady_growth() -> None:
    plateau = [80 * MiB] * 10 + [120 * MiB + (i % 3) * MiB for i in range(20)]
    assert rss_verdict(plateau)[2]
    growing = [100 * MiB + i * 4 * MiB for i in range(30)]
    middle, last, ok = rss_verdict(growing)
    assert last > middle and not ok
    assert rss_verdict([MiB] * 4)[2] is False  # too few samples is no pass


def test_short_soak_four_clients_passes_every_criterion(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    rc = main(
        ["--clients", "4", "--minutes", "0.2", "--seed", "3", "--root", str(tmp_path / "run")]
        + ["--json", str(out)]
    )
    report = json.loads(out.read_text())
    assert rc == 0, report
    assert report["ok"] is True
    assert report["errors"] == 0 and report["mismatches"] == 0
    assert report["worker_exit_codes"] == [0, 0, 0, 0]
    assert report["ops"] > 100 and report["bytes"] > 0 and report["sessions"] >= 4
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert report["rss_ok"] and report["rss_samples"] >= 6
    assert report["fd_ok"] and report["fd_after"] <= report["fd_baseline"]


def test_soak_with_resident_objects_reads_every_one_back(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    rc = main(
        ["--clients", "2", "--minutes", "0.1", "--objects", "2500", "--root", str(tmp_path / "r")]
        + ["--json", str(out)]
    )
    report = json.loads(out.read_text())
    assert rc == 0, report
    assert report["objects"] == report["objects_checked"] == 2500
    assert report["durable_lost"] == 0 and report["corrupt"] == 0


def test_resident_check_counts_a_lost_and_a_corrupt_object(tmp_path: Path) -> None:
    """The judge itself: delete one resident and overwrite another; both must be counted."""
    from dualblade import Client
    from dualblade_tools.daemonproc import DaemonProcess
    from dualblade_tools.soak import SoakReport, _check_residents, _store_residents

    with DaemonProcess(tmp_path / "d", namespace_size="256MiB") as daemon:
        _store_residents(str(daemon.socket), 1500)
        with Client.connect(daemon.socket, tenant="resident", arena_bytes=1 << 20) as c:
            c.delete(b"r/5")
            c.put(b"r/1234", b"\xee" * 4096, persistent=True)
        report = SoakReport(clients=0, seconds=0.0, objects=1500)
        _check_residents(str(daemon.socket), 1500, report)
    assert report.objects_checked == 1500
    assert report.durable_lost == 1 and report.corrupt == 1
