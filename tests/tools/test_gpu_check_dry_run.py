"""tools/gpu_check --cpu-dry-run runs end to end here, as it must on a GPU machine first time.

It runs as a subprocess with pyudev and structlog made unimportable (a module that raises
ImportError shadows each), as on the GPU machine, and with the project taken from this checkout.
CUDA-only checks must report "needs CUDA", GPU-direct "not implemented", the rest "ok".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path) -> None:
    blockers = tmp_path / "blockers"
    blockers.mkdir()
    for mod in ("pyudev", "structlog"):
        (blockers / f"{mod}.py").write_text('raise ImportError("not on the GPU machine")\n')
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(blockers), "OUT": str(out)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check"), "--cpu-dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["cpu_dry_run"] is True
    status = {r["check"]: r["status"] for r in data["rows"]}
    assert "absent: pyudev, structlog" in data["rows"][0]["detail"]
    assert status["h2d"] == "needs CUDA"
    assert status["gpu_direct"] == "not implemented"
    vllm_row = next(r for r in data["rows"] if r["check"] == "vllm_tier")
    assert vllm_row["status"] == "skipped" and "--cpu-dry-run" in vllm_row["detail"]
    assert status["overlap"] == "measured"  # judged against its target on a GPU only
    for check in ("daemon", "pipeline", "cache_equality[llama]",
                  "cache_equality[qwen2]", "daemon_stop"):  # fmt: skip
        assert status[check] == "ok", (check, proc.stdout)
    overlap = next(r for r in data["rows"] if r["check"] == "overlap")
    assert overlap["value"] > 0
    assert "overlap" in proc.stdout and "needs CUDA" in proc.stdout
