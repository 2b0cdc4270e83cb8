"""Helpers every ``dualblade-bench`` subcommand shares: tables, JSON, progress, fio, sizes.

Benchmarks describe a result as a list of frozen dataclass records. The same records are printed
as an aligned table for people and written as JSON for scripts and plots, so the two can never
disagree. Progress goes to stderr, keeping stdout for the table.

``run_fio`` gives the disk floor every benchmark compares against: fio on the same file, same
request size and queue depth, in the same invocation (the virtio disk here drifts by +-50% over
minutes, so numbers from another run are not a baseline). Bandwidth is decimal GB/s (1e9 bytes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "format_bytes",
    "format_table",
    "parse_bytes",
    "print_table",
    "progress",
    "run_fio",
    "write_json",
]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"4096"``, ``"128K"``, ``"1MiB"``, ``"2G"`` -> bytes (binary units). For argparse ``type``."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a byte size: {text!r} (use e.g. 4096, 128K, 1M, 2G)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def format_bytes(n: int) -> str:
    """Exact binary size when possible (``1 MiB``), else bytes."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit[0]]
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(
    records: Sequence[Any],
    *,
    columns: Sequence[str] | None = None,
    formats: Mapping[str, Callable[[Any], str]] | None = None,
) -> str:
    """An aligned text table of dataclass ``records`` (one row each, one column per field).

    ``columns`` picks and orders fields; ``formats`` maps a field to its cell formatter (default:
    floats with 3 decimals, None as ``-``). Numbers are right-aligned, text left-aligned.
    """
    if not records:
        return "(no results)"
    names = list(columns) if columns else [f.name for f in dataclasses.fields(records[0])]
    formats = formats or {}
    rows = [[formats.get(n, _cell)(getattr(r, n)) for n in names] for r in records]
    numeric = [
        all(isinstance(getattr(r, n), int | float) or getattr(r, n) is None for r in records)
        for n in names
    ]
    widths = [max(len(n), *(len(row[i]) for row in rows)) for i, n in enumerate(names)]

    def line(cells: Iterable[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def print_table(
    records: Sequence[Any],
    *,
    columns: Sequence[str] | None = None,
    formats: Mapping[str, Callable[[Any], str]] | None = None,
) -> None:
    print(format_table(records, columns=columns, formats=formats))


def write_json(path: str | Path, records: Sequence[Any], **extra: Any) -> None:
    """Write ``records`` as a JSON list, or ``{"records": [...], **extra}`` when extras are given."""
    rows = [dataclasses.asdict(r) for r in records]
    doc: Any = {"records": rows, **extra} if extra else rows
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def progress(message: str) -> None:
    """One progress line on stderr (stdout stays clean for the table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_fio(
    *,
    filename: str,
    rw: str,
    block_size: int,
    size: int,
    seconds: float,
    offset: int = 0,
    numjobs: int = 1,
    iodepth: int = 1,
    ioengine: str = "psync",
    offset_increment: int | None = None,
    direct: bool = True,
) -> float | None:
    """Run one fio job on ``filename`` and return its aggregate bandwidth in GB/s.

    ``size`` is per job (fio's meaning); jobs start at ``offset + k * offset_increment``. The run
    is time based for ``seconds``. Returns None, with a progress note, when fio is not installed
    or the run fails (a benchmark then reports the floor as missing rather than crashing).
    """
    fio = shutil.which("fio")
    if fio is None:
        progress("fio not found: the fio baseline is skipped (apt-get install fio)")
        return None
    cmd = [
        fio,
        "--name=dualblade-floor",
        f"--filename={filename}",
        f"--rw={rw}",
        f"--bs={block_size}",
        f"--size={size}",
        f"--offset={offset}",
        f"--numjobs={numjobs}",
        f"--iodepth={iodepth}",
        f"--ioengine={ioengine}",
        f"--direct={int(direct)}",
        f"--runtime={seconds}",
        "--time_based",
        "--group_reporting",
        "--output-format=json",
    ]
    if offset_increment is not None:
        cmd.append(f"--offset_increment={offset_increment}")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        progress(f"fio failed (rc {result.returncode}): {result.stderr.strip()[-300:]}")
        return None
    # fio may print notes before the JSON document; start at the first brace.
    text = result.stdout[result.stdout.find("{") :]
    try:
        jobs = json.loads(text)["jobs"]
    except (ValueError, KeyError) as exc:
        progress(f"fio output could not be parsed: {exc}")
        return None
    direction = "read" if "read" in rw else "write"
    return sum(job[direction]["bw_bytes"] for job in jobs) / 1e9


def comma_list(convert: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse ``type`` for comma-separated values, e.g. ``comma_list(parse_bytes)``."""

    def parse(text: str) -> list[T]:
        return [convert(part.strip()) for part in text.split(",") if part.strip()]

    return parse
