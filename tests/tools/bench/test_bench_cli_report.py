"""dualblade-bench: the lazy subcommand registry, the shared report helpers, and a tiny io run."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from dualblade_tools.bench import cli, report


@dataclass(frozen=True)
class Row:
    name: str
    size: int
    gbps: float | None


def test_table_is_aligned_and_formats_cells() -> None:
    text = report.format_table(
        [Row("write", 1 << 20, 1.23456), Row("read-long-name", 128 << 10, None)],
        formats={"size": report.format_bytes},
    )
    lines = text.splitlines()
    assert lines[0].split() == ["name", "size", "gbps"]
    assert "1 MiB" in lines[2] and "1.235" in lines[2]
    assert "128 KiB" in lines[3] and lines[3].endswith("-")
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule have the same width
    assert report.format_table([]) == "(no results)"


def test_write_json_list_or_dict(tmp_path: Path) -> None:
    rows = [Row("a", 1, 0.5)]
    report.write_json(tmp_path / "list.json", rows)
    assert json.loads((tmp_path / "list.json").read_text()) == [
        {"name": "a", "size": 1, "gbps": 0.5}
    ]
    report.write_json(tmp_path / "dict.json", rows, seconds=2.0)
    doc = json.loads((tmp_path / "dict.json").read_text())
    assert doc["records"][0]["name"] == "a" and doc["seconds"] == 2.0


@pytest.mark.parametrize(
    ("text", "value"), [("4096", 4096), ("128K", 128 << 10), ("1MiB", 1 << 20), ("2g", 2 << 30)]
)
def test_parse_bytes(text: str, value: int) -> None:
    assert report.parse_bytes(text) == value


def test_parse_bytes_rejects_junk() -> None:
    with pytest.raises(ValueError, match="byte size"):
        report.parse_bytes("1.5G")


def test_missing_benchmark_module_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.SUBCOMMANDS, "nothing", "dualblade_tools.bench.no_such_module")
    assert cli.main(["nothing"]) == 2
    assert "not available" in capsys.readouterr().err


def test_run_fio_without_fio_returns_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(report.shutil, "which", lambda _name: None)
    got = report.run_fio(
        filename=str(tmp_path / "f"), rw="read", block_size=4096, size=1 << 20, seconds=0.1
    )
    assert got is None
    assert "fio not found" in capsys.readouterr().err


def test_io_benchmark_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny real run: FileNamespace on tmp_path, the engine, and fio when it is installed."""
    out = tmp_path / "io.json"
    rc = cli.main(
        [
            "io",
            "--namespace",
            str(tmp_path / "ns.img"),
            "--size",
            "8M",
            "--seconds",
            "0.1",
            "--requests",
            "1M",
            "--queue-depths",
            "1,4",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    records = json.loads(out.read_text())["records"]
    assert [(r["op"], r["queue_depth"]) for r in records] == [
        ("write", 1),
        ("write", 4),
        ("read", 1),
        ("read", 4),
    ]
    for r in records:
        assert set(r) == {"op", "request_bytes", "queue_depth", "engine_gbps", "fio_gbps", "ratio"}
        assert r["request_bytes"] == 1 << 20 and r["engine_gbps"] > 0
        if shutil.which("fio"):
            assert r["fio_gbps"] > 0 and r["ratio"] == pytest.approx(
                r["engine_gbps"] / r["fio_gbps"]
            )
        else:
            assert r["fio_gbps"] is None and r["ratio"] is None
    assert "engine_gbps" in capsys.readouterr().out
