"""`dualblade-bench pipeline` runs end to end on a small stack and writes the documented JSON.

The default backend is a real dualbladed started by the benchmark (file namespace under a temp
dir) with the SDK client; ``--backend memory`` is the in-memory double.
"""

from __future__ import annotations

import argparse
import json

import pytest

from dualblade_tools.bench import pipeline as bench


@pytest.mark.parametrize("backend", ["daemon", "memory"])
def test_bench_writes_json_with_documented_keys(tmp_path, capsys, backend) -> None:
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    out = tmp_path / "p.json"
    args = parser.parse_args(
        ["--backend", backend, "--layers", "4", "--seq", "64", "--block", "16", "--hidden", "64",
         "--rows", "4", "--steps", "2", "--call-ms", "0.2", "--json", str(out)]
    )  # fmt: skip
    assert bench.run(args) == 0
    data = json.loads(out.read_text())
    assert data["backend"] == backend
    for key in ("pipelined_step_ms", "serial_step_ms", "io_ms", "serial_io_ms", "compute_ms"):
        assert data[key] > 0
    assert 0 < data["compute_in_pipelined_ms"] < data["pipelined_step_ms"]
    assert 0 <= data["read_wait_ms"] < data["pipelined_step_ms"]
    assert data["overlap_efficiency"] == pytest.approx(
        max(data["io_ms"], data["compute_ms"]) / data["pipelined_step_ms"]
    )
    text = capsys.readouterr().out
    assert "overlap efficiency" in text
    assert ("dualbladed" in text) == (backend == "daemon")
