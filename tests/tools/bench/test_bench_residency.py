"""dualblade-bench residency: the memory cgroup, the verdicts, and a tiny end-to-end run.

The end-to-end run is real: a real memory cgroup, the real daemon (started inside it), the real
worker subprocess, real files and fio. It is only small (4 layers, 2k tokens).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualblade_tools.bench.cgroup import CgroupUnavailable, MemoryCgroup, find_memory_root
from dualblade_tools.bench.residency import ResidencyRecord, fixed_overhead, main_args
from dualblade_tools.bench.residency_summary import (
    Verdict,
    floor_ms,
    format_verdicts,
    summarize,
    table_rows,
    verdicts,
)

GiB = 1 << 30


def _cgroups_or_skip() -> None:
    try:
        find_memory_root()
    except CgroupUnavailable as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")


def _rec(
    ratio: float,
    mode: str,
    p50: float,
    prefill: float,
    util: float,
    *,
    kv_gbps: float | None = None,
    compute: float = 100.0,
    fio: float = 1.0,
    repeat: int = 0,
    error: str | None = None,
    prefill_compute: float | None = None,
) -> ResidencyRecord:
    return ResidencyRecord(
        budget_ratio=ratio,
        mode=mode,
        limit_mib=1024,
        prefill_s=prefill,
        decode_p50_ms=p50,
        decode_p99_ms=p50 * 1.2,
        kv_read_gbps=kv_gbps,
        compute_ms=compute,
        daemon_cpu_ms_per_step=5.0,
        client_cpu_ms_per_step=7.0,
        pagecache_fraction=None,
        ssd_util=util,
        ssd_gbps=util,
        fio_gbps=fio,
        client_rss_mib=100.0,
        cgroup_cache_mib=10.0,
        cgroup_shmem_mib=0.0,
        cgroup_peak_mib=500.0,
        depth=2,
        error=error,
        repeat=repeat,
        prefill_compute_s=prefill_compute,
    )


def _bench(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``dualblade-bench ARGV`` in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "dualblade_tools.bench.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _by(checks: list[Verdict]) -> dict[tuple[float, str], Verdict]:
    return {(v.budget_ratio, v.target): v for v in checks}


def test_summary_keeps_medians_and_the_spread_and_skips_failed_runs() -> None:
    records = [
        _rec(2.0, "direct", 500.0, 6.0, 0.3, repeat=0),
        _rec(2.0, "direct", 700.0, 5.0, 0.5, repeat=1),
        _rec(2.0, "direct", 550.0, 9.0, 0.4, repeat=2),
        _rec(2.0, "direct", 1.0, 1.0, 9.9, repeat=3, error="worker exited -9"),
    ]
    (row,) = summarize(records, kv_bytes=GiB)
    assert (row.runs, row.failed) == (3, 1)
    assert (row.decode_p50_ms, row.decode_p50_min, row.decode_p50_max) == (550.0, 500.0, 700.0)
    assert (row.prefill_s, row.prefill_min, row.prefill_max) == (6.0, 5.0, 9.0)
    assert row.ssd_util == pytest.approx(0.4)
    head, rows = table_rows([row])
    cells = dict(zip(head, rows[0]))
    assert cells["decode_p50_ms"] == "550 (500-700)" and cells["runs"] == "3 (1 failed)"


def test_a_failed_run_keeps_its_cell_and_the_disk_and_measures_nothing_else() -> None:
    rec = ResidencyRecord.failed(4.0, "adaptive", 1860, 0.7, "worker exited -9")
    assert (rec.budget_ratio, rec.mode, rec.limit_mib, rec.fio_gbps) == (4.0, "adaptive", 1860, 0.7)
    assert rec.error == "worker exited -9" and rec.repeat == 0
    kept = {"budget_ratio", "mode", "limit_mib", "fio_gbps", "error", "repeat"}
    rest = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name not in kept}
    assert rest and all(value is None for value in rest.values()), rest
    (row,) = summarize([rec], kv_bytes=GiB)
    assert (row.runs, row.failed) == (0, 1)


def test_fixed_overhead_counts_every_file_page_the_run_touched() -> None:
    """The libraries both processes fault in are page cache too: counted as the weights alone,
    a direct run outgrew the limit at ratio 8 (seventeenth session)."""
    MiB = 1 << 20
    # the direct run on the residency bench's VM: anon 254, shmem 344, file pages 1207 MiB
    got = fixed_overhead(254 * MiB, 344 * MiB, (1207 + 344) * MiB, 1024 * MiB)
    assert got == int(598 * MiB * 1.1) + 1207 * MiB
    # the weights are the least: a run that has not touched all of them still leaves them room
    assert fixed_overhead(100 * MiB, 0, 300 * MiB, 1024 * MiB) == int(110 * MiB) + 1024 * MiB


def test_floor_is_the_unfit_kv_at_fio_speed_plus_the_least_compute() -> None:
    # ratio 4: three quarters of 1 GiB do not fit; at 1.0737 GB/s that is 750 ms
    assert floor_ms(GiB, 4.0, GiB / 1e9, 100.0) == pytest.approx(750.0 + 100.0)
    assert floor_ms(GiB, 0.5, 2.0, 80.0) == 80.0  # everything fits: compute only
    assert floor_ms(GiB, 4.0, None, 80.0) is None
    records = [
        _rec(4.0, "baseline_file", 900.0, 5.0, 1.0, compute=120.0, fio=GiB / 1e9),
        _rec(4.0, "direct", 880.0, 5.0, 1.0, compute=90.0, fio=GiB / 1e9),
    ]
    rows = summarize(records, kv_bytes=GiB)
    assert [r.floor_ms for r in rows] == pytest.approx([750.0 + 90.0] * 2)


def test_prefill_floor_is_the_least_prefill_compute_and_bounds_the_cut() -> None:
    records = [
        _rec(8.0, "baseline_file", 1000.0, 2.0, 1.0, prefill_compute=1.6),
        _rec(8.0, "direct", 600.0, 1.5, 1.5, kv_gbps=1.8, prefill_compute=1.5),
        _rec(8.0, "adaptive", 550.0, 1.6, 1.6, prefill_compute=1.7),
        _rec(8.0, "adaptive", 560.0, 1.4, 1.6, prefill_compute=None, repeat=1),  # old worker
        _rec(8.0, "direct", 1.0, 0.1, 1.0, prefill_compute=0.1, repeat=1, error="killed"),
    ]
    rows = summarize(records, kv_bytes=GiB)
    # the failed run's 0.1 s is not a floor; the run without the field is skipped
    assert [r.prefill_floor_s for r in rows] == pytest.approx([1.5] * 3)
    by = _by(verdicts(rows))
    prefill = by[(8.0, "prefill cut vs baseline_file")]
    assert not prefill.met  # 1.5 s median against 2.0 s: a 25% cut
    assert "the floor (1500 ms) allows at most a 25.0% cut" in prefill.note
    ssd = by[(8.0, "SSD utilisation x baseline_file")]
    assert ssd.measured == pytest.approx(1.6) and not ssd.met
    # the highest utilisation at the budget is direct's KV read: 1.8 GB/s over 1.0 GB/s fio,
    # 1.8x baseline_file's 1.0
    assert "at this budget (1.80) allows at most 1.80x" in ssd.note


def test_verdicts_check_each_target_on_medians() -> None:
    records = [
        _rec(4.0, "baseline_file", 1000.0, 10.0, 0.1),
        _rec(4.0, "pagecache", 800.0, 8.0, 0.2),
        _rec(4.0, "direct", 500.0, 6.0, 0.3, kv_gbps=0.95),
        _rec(4.0, "adaptive", 440.0, 6.0, 0.3),  # 56% cut, 40% cut, 3x, 0.88x direct
        _rec(0.5, "baseline_file", 100.0, 5.0, 0.0),
        _rec(0.5, "pagecache", 105.0, 5.0, 0.0),
        _rec(0.5, "direct", 200.0, 5.0, 0.1, kv_gbps=0.5),
        _rec(0.5, "adaptive", 120.0, 4.0, 0.0),  # +14% over pagecache: missed
    ]
    # a second repeat that moves no median past its target
    records += [dataclasses.replace(r, repeat=1) for r in records]
    by = _by(verdicts(summarize(records, kv_bytes=GiB)))
    assert by[(4.0, "decode p50 cut vs baseline_file")].met
    assert by[(4.0, "decode p50 cut vs baseline_file")].measured == pytest.approx(0.56)
    assert "floor" in by[(4.0, "decode p50 cut vs baseline_file")].note
    assert by[(4.0, "prefill cut vs baseline_file")].met
    assert by[(4.0, "SSD utilisation x baseline_file")].measured == pytest.approx(3.0)
    assert by[(4.0, "adaptive decode p50 / better forced mode")].met  # 0.88 <= 0.9 at ratio 4
    assert by[(4.0, "direct kv_read_gbps / fio_gbps")].met
    missed = by[(0.5, "adaptive decode p50 / better forced mode")]
    assert not missed.met and missed.measured == pytest.approx(120 / 105)
    assert not by[(0.5, "adaptive decode p50 / baseline_file")].met
    assert by[(0.5, "adaptive prefill / baseline_file")].met
    assert not by[(0.5, "direct kv_read_gbps / fio_gbps")].met
    assert by[(0.5, "pagecache decode p50 / baseline_file")].met  # 1.05 <= 1.1
    text = format_verdicts(verdicts(summarize(records, kv_bytes=GiB)))
    assert "MISSED" in text and "MET" in text


def test_split_verdict_is_read_against_the_floor() -> None:
    """Where everything fits the floor is the compute, and a forced page cache already reads
    at it: a 0.9x split is then impossible, and the note says how close any split could come."""
    records = [
        _rec(1.0, "pagecache", 700.0, 2.0, 0.0, compute=650.0),
        _rec(1.0, "direct", 1000.0, 2.0, 0.5, compute=660.0, kv_gbps=1.0),
        _rec(1.0, "adaptive", 710.0, 2.0, 0.1, compute=680.0),
    ]
    split = _by(verdicts(summarize(records, kv_bytes=GiB)))[
        (1.0, "adaptive decode p50 / better forced mode")
    ]
    assert not split.met and split.measured == pytest.approx(710 / 700)
    assert "the floor (650 ms) allows at best 0.93x" in split.note


def test_verdicts_missing_run_is_a_miss() -> None:
    records = [_rec(4.0, "baseline_file", 1000.0, 10.0, 0.1)]
    assert all(not v.met and v.measured is None for v in verdicts(summarize(records, GiB)))


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
        repeat=1,
        overhead="1G",  # roomy and fixed: the smoke run checks plumbing, not performance
        fio_seconds=0.5,
        dir=tmp_path / "work",
        json=out_json,
        plot=out_png,
        markdown=out_md,
    )
    proc = _bench(argv, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    modes = {r["mode"] for r in doc["records"]}
    assert modes == {"baseline_file", "adaptive"}
    for rec in doc["records"]:
        for key in ("budget_ratio", "mode", "prefill_s", "decode_p50_ms", "decode_p99_ms"):
            assert key in rec
        # The client's CPU comes from process_time() and always advances; the daemon's from
        # /proc's 10 ms ticks, which a two-step run may not cross.
        assert rec["kv_read_gbps"] > 0 and rec["client_cpu_ms_per_step"] > 0
        daemon_cpu = rec["daemon_cpu_ms_per_step"]
        assert (daemon_cpu is None) == (rec["mode"] == "baseline_file"), daemon_cpu
        assert daemon_cpu is None or daemon_cpu >= 0
        assert "fio_gbps" in rec
        assert rec["error"] is None
        assert rec["prefill_s"] > 0 and rec["decode_p99_ms"] >= rec["decode_p50_ms"] > 0
        assert 0 < rec["prefill_compute_s"] <= rec["prefill_s"]  # the floor's input
        assert rec["prefill_client_cpu_s"] > 0 and rec["prefill_major_faults"] >= 0
        assert rec["client_disk_read_mib_per_step"] >= 0
        # the model thread's wait for reads: part of a step, never more than the whole decode
        assert 0 <= rec["read_wait_ms_per_step"] <= rec["decode_p99_ms"] * 2
        for key in ("steal_pct", "prefill_steal_pct"):  # None only on a host without /proc/stat
            assert rec[key] is None or 0 <= rec[key] <= 100, (key, rec[key])
        assert (rec["prefill_daemon_cpu_s"] is None) == (rec["mode"] == "baseline_file")
        assert rec["limit_mib"] == 1024 + 8  # 1 GiB overhead + 16 MiB KV / ratio 2
    assert doc["verdicts"], "the verdicts are part of the JSON"
    assert {s["mode"] for s in doc["summary"]} == {"baseline_file", "adaptive"}
    assert all(s["floor_ms"] is not None for s in doc["summary"])
    assert all(s["prefill_floor_s"] > 0 for s in doc["summary"])
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


def test_a_disk_near_the_page_cache_floor_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the daemon's free-space floor the page cache refuses every object, and pagecache
    and adaptive would measure the direct path: the benchmark must not start there."""
    from dualblade_tools.bench import residency
    from dualblade_tools.bench.kvtrace import TraceSpec

    spec = dataclasses.replace(TraceSpec(), layers=4, context=1024, hidden=128, ffn=256)
    bench = residency._Bench(spec, tmp_path, fio_seconds=0.5)
    st = os.statvfs(tmp_path)
    available = st.f_bavail * st.f_frsize
    monkeypatch.setattr(residency, "free_floor_bytes", lambda *a: available)  # any write crosses
    with pytest.raises(SystemExit, match="free-space floor") as err:
        bench.prepare()
    assert str(tmp_path) in str(err.value)
    assert list(tmp_path.iterdir()) == []  # refused before the weights and fio file
    monkeypatch.setattr(residency, "free_floor_bytes", lambda *a: 0)
    bench.check_disk()  # a tiny spec fits wherever the suite runs


def _run_doc(path: Path, records: list[ResidencyRecord], overhead: int = GiB) -> None:
    from dualblade_tools.bench import report
    from dualblade_tools.bench.kvtrace import TraceSpec

    spec = TraceSpec()
    report.write_json(
        path,
        records,
        spec=dataclasses.asdict(spec),
        fixed_overhead_bytes=overhead,
        elapsed_s=10.0,
    )


def test_merge_pools_earlier_runs_as_more_repeats(tmp_path: Path) -> None:
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "out.json"
    # two invocations of one commit: a cell's median comes from all five runs
    _run_doc(a, [_rec(2, "adaptive", p, 1.0, 0.5, repeat=i) for i, p in enumerate((100, 900))])
    _run_doc(b, [_rec(2, "adaptive", p, 1.0, 0.5, repeat=i) for i, p in enumerate((200, 300, 400))])
    argv = ["residency", "--merge", str(a), str(b), "--json", str(out)]
    proc = _bench(argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert sorted(r["repeat"] for r in doc["records"]) == [0, 1, 2, 3, 4]
    assert doc["repeat"] == 5 and doc["merged_from"] == [str(a), str(b)]
    (cell,) = [s for s in doc["summary"] if s["mode"] == "adaptive"]
    assert cell["runs"] == 5 and cell["decode_p50_ms"] == 300  # median of all five
    assert "| budget_ratio |" not in proc.stdout and "budget_ratio" in proc.stdout


def test_merge_refuses_runs_of_another_overhead(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _run_doc(a, [_rec(2, "adaptive", 100, 1.0, 0.5)])
    _run_doc(b, [_rec(2, "adaptive", 100, 1.0, 0.5)], overhead=2 * GiB)
    proc = _bench(["residency", "--merge", str(a), str(b)])
    assert proc.returncode == 2
    assert "another trace or overhead" in proc.stderr and str(b) in proc.stderr


def test_the_worker_runs_at_the_path_issue_12_names() -> None:
    """``tools/bench/kvtrace.py`` (the issue's name) is the worker itself, not a copy."""
    script = Path(__file__).resolve().parents[3] / "tools" / "bench" / "kvtrace.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--spec" in proc.stdout and "--weights" in proc.stdout


def test_steal_is_the_stolen_share_of_all_cpu_ticks_between_two_readings() -> None:
    """The noise column: steal time over all CPU time (user .. steal), percent."""
    from dualblade_tools.bench.kvtrace import _host_cpu, _steal_pct

    assert _steal_pct((10, 1000), (40, 1300)) == pytest.approx(10.0)
    assert _steal_pct((10, 1000), (10, 1000)) is None  # no time passed: no share to give
    steal, total = _host_cpu()
    assert 0 <= steal <= total and total > 0  # this host's own counters, steal among them
