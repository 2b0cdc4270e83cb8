"""``dualblade-bench vllm-tier`` end to end at tiny sizes: both real tiers (DualBladeTier against a
live daemon, vLLM's own fs tier), every JSON key the issue names, real values."""

from __future__ import annotations

import json
import math

import pytest

from dualblade_tools.bench import cli
from dualblade_tools.bench.vllm_tier import _vllm_missing

KEYS = {"tier", "chunk_bytes", "store_gbps", "load_gbps", "lookup_p50_us"}
MISSING = _vllm_missing()


@pytest.mark.skipif(bool(MISSING), reason=MISSING or "-")
def test_vllm_tier_bench_reports_both_tiers(tmp_path, capsys) -> None:
    out = tmp_path / "vllm.json"
    rc = cli.main(
        [
            "vllm-tier",
            "--chunk-bytes",
            "64K",
            "--pool-bytes",
            "2M",
            "--job-chunks",
            "8",
            "--lookup-keys",
            "40",
            "--repeat",
            "2",
            "--dir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "vllm-tier" and doc["job_chunks"] == 8
    rows = {r["tier"]: r for r in doc["records"]}
    assert set(rows) == {"dualblade", "fs"}
    for row in rows.values():
        assert row.keys() >= KEYS
        assert row["chunk_bytes"] == 64 << 10 and row["rounds"] == 2
        assert row["store_gbps"] > 0 and row["load_gbps"] > 0 and row["lookup_p50_us"] > 0
    assert rows["fs"]["store_vs_fs"] == 1.0 and rows["fs"]["load_vs_fs"] == 1.0
    db = rows["dualblade"]
    assert math.isclose(db["store_vs_fs"], db["store_gbps"] / rows["fs"]["store_gbps"])
    assert len(doc["per_round"]) == 4  # 2 rounds x 2 tiers, each timed on its own
    table = capsys.readouterr().out
    assert "store_gbps" in table and "dualblade" in table and "fs" in table


def test_vllm_tier_bench_refuses_bad_sizes(tmp_path, capsys) -> None:
    assert cli.main(["vllm-tier", "--chunk-bytes", "1000", "--dir", str(tmp_path)]) == 2
    assert "--chunk-bytes" in capsys.readouterr().err
    assert cli.main(["vllm-tier", "--tiers", "nfs", "--dir", str(tmp_path)]) == 2
    assert "--tiers" in capsys.readouterr().err
