"""dualblade-bench residency: the memory cgroup, the verdicts, and a tiny end-to-end run.

The end-to-end run is real: a real memory cgroup, the real daemon (started inside it), the real
worker subprocess, real files and fio. It is only small (4 layers, 2k tokens).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualblade_tools.bench.cgroup import CgroupUnavailable, MemoryCgroup, find_memory_root
from dualblade_tools.bench.residency import ResidencyRecord, main_args, verdicts


def _cgroups_or_skip() -> None:
    try:
        find_memory_root()
    except CgroupUnavailable as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")


def _rec(ratio: float, mode: str, p50: float, prefill: float, util: float) -> ResidencyRecord:
    return ResidencyRecord(
        budget_ratio=ratio,
        mode=mode,
        limit_mib=1024,
        prefill_s=prefill,
        decode_p50_ms=p50,
        decode_p99_ms=p50 * 1.2,
        ssd_util=util,
        ssd_gbps=util,
        fio_gbps=1.0,
        client_rss_mib=100.0,
        cgroup_cache_mib=10.0,
        cgroup_shmem_mib=0.0,
        cgroup_peak_mib=500.0,
        depth=2,
    )


def test_verdicts_check_each_target() -> None:
    records = [
        _rec(4.0, "baseline_file", 1000.0, 10.0, 0.1),
        _rec(4.0, "pagecache", 800.0, 8.0, 0.2),
        _rec(4.0, "direct", 500.0, 6.0, 0.3),
        _rec(4.0, "adaptive", 520.0, 6.0, 0.3),  # 48% cut, 40% cut, 3x, +4% over direct
        _rec(1.0, "pagecache", 100.0, 5.0, 0.0),
        _rec(1.0, "direct", 200.0, 5.0, 0.1),
        _rec(1.0, "adaptive", 120.0, 5.0, 0.0),  # +20% over pagecache: missed
    ]
    by_name = {(v.budget_ratio, v.target): v for v in verdicts(records)}
    assert by_name[(4.0, "decode p50 cut vs baseline_file")].met
    assert by_name[(4.0, "decode p50 cut vs baseline_file")].measured == pytest.approx(0.48)
    assert by_name[(4.0, "prefill cut vs baseline_file")].met
    assert by_name[(4.0, "SSD utilisation x baseline_file")].measured == pytest.approx(3.0)
    assert by_name[(4.0, "adaptive decode p50 over best of pagecache/direct")].met
    missed = by_name[(1.0, "adaptive decode p50 over best of pagecache/direct")]
    assert not missed.met and missed.measured == pytest.approx(0.2)


def test_verdicts_missing_run_is_a_miss() -> None:
    records = [_rec(4.0, "baseline_file", 1000.0, 10.0, 0.1)]
    assert all(not v.met and v.measured is None for v in verdicts(records))


def test_cgroup_limit_and_join(tmp_path: Path) -> None:
    _cgroups_or_skip()
    with MemoryCgroup(f"dualblade-test-{os.getpid()}", 256 << 20) as cg:
        assert cg.stat().limit == 256 << 20
        out = subprocess.run(
            cg.join_command(["cat", "/proc/self/cgroup"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert cg.path.name in out  # the child ran inside
        path = cg.path
    assert not path.exists()  # removed on exit


@pytest.mark.timeout(120)
def test_tiny_residency_run(tmp_path: Path) -> None:
    _cgroups_or_skip()
    out_json, out_png, out_md = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.md"
    argv = main_args(
        layers=4,
        context=1024,
        block_tokens=256,
        steps=2,
        hidden=128,
        ffn=256,
        ratios="2",
        modes="baseline_file,adaptive",
        overhead="1G",  # roomy and fixed: the smoke run checks plumbing, not performance
        fio_seconds=0.5,
        dir=tmp_path / "work",
        json=out_json,
        plot=out_png,
        markdown=out_md,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dualblade_tools.bench.cli", *argv],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    modes = {r["mode"] for r in doc["records"]}
    assert modes == {"baseline_file", "adaptive"}
    for rec in doc["records"]:
        for key in ("budget_ratio", "mode", "prefill_s", "decode_p50_ms", "decode_p99_ms"):
            assert key in rec
        assert rec["error"] is None
        assert rec["prefill_s"] > 0 and rec["decode_p99_ms"] >= rec["decode_p50_ms"] > 0
        assert rec["limit_mib"] == 1024 + 8  # 1 GiB overhead + 16 MiB KV / ratio 2
    assert doc["verdicts"], "the verdicts are part of the JSON"
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| budget_ratio |" in out_md.read_text()
    assert "[bench]" in proc.stderr  # progress is shown
    leftovers = list((tmp_path / "work").glob("run*"))
    assert leftovers == []  # per-run files are removed


def test_run_order_varies_each_modes_predecessor():
    from dualblade_tools.bench.residency import MODES, run_order

    orders = [run_order(MODES, i) for i in range(4)]
    assert all(sorted(o) == sorted(MODES) for o in orders)
    for mode in MODES:
        before = {o[o.index(mode) - 1] if o.index(mode) else None for o in orders}
        assert len(before) > 1, f"{mode} always runs after {before}"
