"""tools/demo.py end to end on a small model: real daemon, round trip, restore, generation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from dualblade_tools import demo  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_and_reports(capsys) -> None:
    assert demo.main(["--layers", "3", "--hidden", "128", "--prompt", "40", "--new-tokens", "4",
                      "--block", "16"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "restored after restart" in out and "identical" in out
    assert "tokens identical to DynamicCache: yes" in out
    assert "tokens/s" in out
    assert "exited with status 0" in out
    assert "demo OK" in out


def test_demo_refuses_a_window_as_large_as_the_model(capsys) -> None:
    with pytest.raises(SystemExit):
        demo.main(["--layers", "2"])


def test_demo_sh_is_valid_bash() -> None:
    script = REPO / "tools" / "demo.sh"
    assert script.stat().st_mode & 0o111, "demo.sh must be executable"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
