"""dualblade-bench daemon, run tiny: a real dualbladed and the in-process store, JSON keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dualblade_tools.bench import cli

pytest.importorskip("torch", reason="the daemon benchmark stages data in arena tensors")


def test_daemon_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "daemon.json"
    rc = cli.main(
        [
            "daemon",
            "--namespace-size",
            "32M",
            "--seconds",
            "0.1",
            "--repeat",
            "1",
            "--sizes",
            "1M,4M",
            "--inflight",
            "1,2",
            "--empty-calls",
            "20",
            "--dir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    records = doc["records"]
    assert [(r["op"], r["call_bytes"], r["inflight"], r["transport"]) for r in records] == [
        (op, size, depth, transport)
        for transport in ("lease", "grpc")  # the default: the lease path first, gRPC beside it
        for size in (1 << 20, 4 << 20)
        for depth in (1, 2)
        for op in ("put", "get")
    ]
    for r in records:
        assert {"op", "call_bytes", "daemon_gbps", "inprocess_gbps", "ratio"} <= set(r)
        assert r["daemon_gbps"] > 0 and r["inprocess_gbps"] > 0
        assert math.isclose(r["ratio"], r["daemon_gbps"] / r["inprocess_gbps"])
    assert 0 < doc["empty_call_p50_us"] <= doc["empty_call_p99_us"]
    assert 0 < doc["grpc_empty_call_p50_us"] <= doc["grpc_empty_call_p99_us"]
    assert doc["transport"] == "lease"
    captured = capsys.readouterr()
    assert "daemon_gbps" in captured.out and "empty Batch call" in captured.out
    assert "[bench]" in captured.err
    assert list(tmp_path.iterdir()) == [out]  # the temp dir with both namespaces is gone


def test_daemon_benchmark_rejects_bad_sizes(tmp_path: Path) -> None:
    assert cli.main(["daemon", "--sizes", "1000", "--dir", str(tmp_path)]) == 2
    assert cli.main(["daemon", "--inflight", "0", "--dir", str(tmp_path)]) == 2
    assert cli.main(["daemon", "--transports", "pigeon", "--dir", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []
