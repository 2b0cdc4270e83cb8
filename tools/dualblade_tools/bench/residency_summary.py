"""The residency benchmark's pure half: medians over repeats, the floor column, the verdicts.

No I/O except writing the plot; the tests drive it with made-up records.

Repeats. Every (budget, mode) cell runs ``--repeat`` times (the mode order keeps rotating); the
summary row of a cell holds the median of each metric over its successful runs, and the min and
max of decode p50 and prefill so the spread shows next to the median. Verdicts use medians.

Floor. The best decode step any placement could reach at a budget: the KV bytes that cannot
fit in the page-cache room (``kv_bytes - kv_bytes / ratio``; the limit is built so that room is
``kv_bytes / ratio``) must come from the disk at fio's bandwidth, plus the step's compute::

    floor_ms = max(0, kv_bytes * (1 - 1 / ratio)) / fio_gbps + compute_ms

with the median fio of the cell's runs at that budget and the smallest compute time measured
at that budget (compute slowed by page faults is not compute). Every result can then also be
read against the physical limit of this machine.

Prefill floor. Prefill's matmuls run on the model thread and fault the (cold) weights in from
the same disk; the KV write-back overlaps them. No KV placement can take that time off the
prefill, so the prefill floor at a budget is the smallest ``prefill_compute_s`` any run there
measured (the worker times its matmuls, faults included). It is a lower bound: a prefill whose
write-back outlasts its compute cannot reach it.

SSD-utilisation ceiling. Utilisation is storage bytes per decode second over fio's bandwidth, so
a mode's utilisation can grow only as far as the disk goes faster than fio measured it. The
tightest budget's verdict is read against the highest utilisation any cell at that budget
measured: its median ``ssd_util``, or its KV read rate over its fio (``kv_read_gbps /
fio_gbps``: the direct path streaming alone), whichever is higher. Over baseline_file's
utilisation that is the largest ratio this disk showed in the run.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FORCED = ("pagecache", "direct")

# The targets.
TARGET_DECODE_CUT = 0.424  # tightest budget, adaptive vs baseline_file
TARGET_PREFILL_CUT = 0.331
TARGET_SSD_UTIL_X = 2.2
TARGET_SPLIT_PAYS = 0.9  # adaptive <= 0.9 x the better forced mode at ratios 1..4
TARGET_DIRECT_READ = 0.9  # direct mode kv_read_gbps >= 0.9 x fio_gbps
TARGET_PAGECACHE_FITS = 1.1  # pagecache decode <= 1.1 x baseline_file at the roomiest budget

#: per-run metrics whose median the summary keeps
METRICS = (
    "prefill_s",
    "decode_p50_ms",
    "decode_p99_ms",
    "kv_read_gbps",
    "compute_ms",
    "daemon_cpu_ms_per_step",
    "client_cpu_ms_per_step",
    "pagecache_fraction",
    "ssd_util",
    "ssd_gbps",
    "fio_gbps",
    "cgroup_cache_mib",
    "cgroup_peak_mib",
)


@dataclass(frozen=True)
class Summary:
    budget_ratio: float
    mode: str
    runs: int  # successful runs
    failed: int
    limit_mib: int
    decode_p50_ms: float | None
    decode_p50_min: float | None
    decode_p50_max: float | None
    prefill_s: float | None
    prefill_min: float | None
    prefill_max: float | None
    decode_p99_ms: float | None
    floor_ms: float | None
    prefill_floor_s: float | None
    kv_read_gbps: float | None
    fio_gbps: float | None
    ssd_util: float | None
    ssd_gbps: float | None
    compute_ms: float | None
    daemon_cpu_ms_per_step: float | None
    client_cpu_ms_per_step: float | None
    pagecache_fraction: float | None
    cgroup_cache_mib: float | None
    cgroup_peak_mib: float | None


@dataclass(frozen=True)
class Verdict:
    target: str
    budget_ratio: float
    measured: float | None
    required: str
    met: bool
    unit: str = "x"  # "x": a ratio, "%": a cut
    note: str = ""  # e.g. what the floor allows


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def floor_ms(
    kv_bytes: int, ratio: float, fio_gbps: float | None, compute_ms: float | None
) -> float | None:
    """The best decode step any placement could reach (module docstring)."""
    if not fio_gbps or compute_ms is None:
        return None
    unfit = max(0.0, kv_bytes * (1.0 - 1.0 / ratio))
    return unfit / (fio_gbps * 1e9) * 1e3 + compute_ms


def summarize(records: Sequence[Any], kv_bytes: int) -> list[Summary]:
    """One row per (budget, mode), in the order the cells first appear."""
    cells: dict[tuple[float, str], list[Any]] = {}
    for r in records:
        cells.setdefault((r.budget_ratio, r.mode), []).append(r)
    compute_by_ratio: dict[float, float] = {}
    for r in records:
        if r.error is None and r.compute_ms is not None:
            old = compute_by_ratio.get(r.budget_ratio)
            compute_by_ratio[r.budget_ratio] = (
                r.compute_ms if old is None else min(old, r.compute_ms)
            )
    prefill_floor_by_ratio: dict[float, float] = {}
    for r in records:
        pc = getattr(r, "prefill_compute_s", None)
        if r.error is None and pc:
            old = prefill_floor_by_ratio.get(r.budget_ratio)
            prefill_floor_by_ratio[r.budget_ratio] = pc if old is None else min(old, pc)
    fio_by_ratio = {
        ratio: median([r.fio_gbps for r in records if r.budget_ratio == ratio])
        for ratio in {r.budget_ratio for r in records}
    }
    out = []
    for (ratio, mode), rows in cells.items():
        ok = [r for r in rows if r.error is None]
        med = {m: median([getattr(r, m) for r in ok]) for m in METRICS}
        p50 = [r.decode_p50_ms for r in ok if r.decode_p50_ms is not None]
        pre = [r.prefill_s for r in ok if r.prefill_s is not None]
        out.append(
            Summary(
                budget_ratio=ratio,
                mode=mode,
                runs=len(ok),
                failed=len(rows) - len(ok),
                limit_mib=rows[0].limit_mib,
                decode_p50_ms=med["decode_p50_ms"],
                decode_p50_min=min(p50, default=None),
                decode_p50_max=max(p50, default=None),
                prefill_s=med["prefill_s"],
                prefill_min=min(pre, default=None),
                prefill_max=max(pre, default=None),
                decode_p99_ms=med["decode_p99_ms"],
                floor_ms=floor_ms(
                    kv_bytes, ratio, fio_by_ratio.get(ratio), compute_by_ratio.get(ratio)
                ),
                prefill_floor_s=prefill_floor_by_ratio.get(ratio),
                kv_read_gbps=med["kv_read_gbps"],
                fio_gbps=med["fio_gbps"],
                ssd_util=med["ssd_util"],
                ssd_gbps=med["ssd_gbps"],
                compute_ms=med["compute_ms"],
                daemon_cpu_ms_per_step=med["daemon_cpu_ms_per_step"],
                client_cpu_ms_per_step=med["client_cpu_ms_per_step"],
                pagecache_fraction=med["pagecache_fraction"],
                cgroup_cache_mib=med["cgroup_cache_mib"],
                cgroup_peak_mib=med["cgroup_peak_mib"],
            )
        )
    return out


# --------------------------------------------------------------------------- verdicts


def verdicts(summary: Sequence[Summary]) -> list[Verdict]:
    """The issue's targets on the medians (a missing cell fails its target)."""
    by = {(s.budget_ratio, s.mode): s for s in summary if s.runs}
    ratios = sorted({s.budget_ratio for s in summary})
    out: list[Verdict] = []
    if not ratios:
        return out

    def get(ratio: float, mode: str, field: str) -> float | None:
        s = by.get((ratio, mode))
        return None if s is None else getattr(s, field)

    def over(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    for ratio in ratios:
        ada = get(ratio, "adaptive", "decode_p50_ms")
        forced = [v for m in FORCED if (v := get(ratio, m, "decode_p50_ms")) is not None]
        x = over(ada, min(forced)) if forced else None
        limit = TARGET_SPLIT_PAYS if 1.0 <= ratio <= 4.0 else 1.0
        fl = get(ratio, "adaptive", "floor_ms")
        best = over(fl, min(forced)) if forced else None
        out.append(
            Verdict(
                "adaptive decode p50 / better forced mode",
                ratio,
                x,
                f"<= {limit:.2f}x",
                x is not None and x <= limit,
                note="" if best is None else f"the floor ({fl:.0f} ms) allows at best {best:.2f}x",
            )
        )
        for field, name in (("decode_p50_ms", "decode p50"), ("prefill_s", "prefill")):
            x = over(get(ratio, "adaptive", field), get(ratio, "baseline_file", field))
            out.append(
                Verdict(
                    f"adaptive {name} / baseline_file",
                    ratio,
                    x,
                    "<= 1.00x",
                    x is not None and x <= 1.0,
                )
            )
        x = over(get(ratio, "direct", "kv_read_gbps"), get(ratio, "direct", "fio_gbps"))
        out.append(
            Verdict(
                "direct kv_read_gbps / fio_gbps",
                ratio,
                x,
                f">= {TARGET_DIRECT_READ:.2f}x",
                x is not None and x >= TARGET_DIRECT_READ,
            )
        )
    roomy, tight = ratios[0], ratios[-1]
    x = over(get(roomy, "pagecache", "decode_p50_ms"), get(roomy, "baseline_file", "decode_p50_ms"))
    out.append(
        Verdict(
            "pagecache decode p50 / baseline_file",
            roomy,
            x,
            f"<= {TARGET_PAGECACHE_FITS:.2f}x",
            x is not None and x <= TARGET_PAGECACHE_FITS,
        )
    )
    base = by.get((tight, "baseline_file"))
    ada_s = by.get((tight, "adaptive"))
    for field, target, name in (
        ("decode_p50_ms", TARGET_DECODE_CUT, "decode p50 cut vs baseline_file"),
        ("prefill_s", TARGET_PREFILL_CUT, "prefill cut vs baseline_file"),
    ):
        a, b = get(tight, "adaptive", field), get(tight, "baseline_file", field)
        cut = None if a is None or not b else 1.0 - a / b
        note = ""
        fl = None if base is None else base.floor_ms if field == "decode_p50_ms" else None
        if base is not None and field == "prefill_s":
            fl = None if base.prefill_floor_s is None else base.prefill_floor_s * 1e3
        if fl is not None and b:
            b_ms = b if field == "decode_p50_ms" else b * 1e3
            note = f"the floor ({fl:.0f} ms) allows at most a {1.0 - fl / b_ms:.1%} cut"
        out.append(
            Verdict(
                name, tight, cut, f">= {target:.1%}", cut is not None and cut >= target, "%", note
            )
        )
    x = None
    note = ""
    if ada_s is not None and base is not None and ada_s.ssd_util is not None and base.ssd_util:
        x = ada_s.ssd_util / base.ssd_util
        utils = [
            u
            for c in summary
            if c.budget_ratio == tight and c.runs
            for u in (
                c.ssd_util,
                c.kv_read_gbps / c.fio_gbps if c.kv_read_gbps and c.fio_gbps else None,
            )
            if u is not None
        ]
        if utils:
            most = max(utils)
            note = (
                f"the highest utilisation measured at this budget ({most:.2f}) allows at most "
                f"{most / base.ssd_util:.2f}x"
            )
    out.append(
        Verdict(
            "SSD utilisation x baseline_file",
            tight,
            x,
            f">= {TARGET_SSD_UTIL_X}x",
            x is not None and x >= TARGET_SSD_UTIL_X,
            note=note,
        )
    )
    return out


def fmt_measured(v: Verdict) -> str:
    if v.measured is None:
        return "not measured"
    return f"{v.measured:+.1%}" if v.unit == "%" else f"{v.measured:.2f}x"


def format_verdicts(checks: Sequence[Verdict]) -> str:
    rows = [
        f"  {'MET   ' if v.met else 'MISSED'}  ratio {v.budget_ratio:<4g} {v.target}: "
        f"{fmt_measured(v)} (target {v.required}){'; ' + v.note if v.note else ''}"
        for v in checks
    ]
    return "targets (medians):\n" + "\n".join(rows)


# --------------------------------------------------------------------------- tables


def _opt(fmt: str) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else format(v, fmt)


def _spread(med: float | None, lo: float | None, hi: float | None, fmt: str) -> str:
    if med is None:
        return "-"
    if lo is None or hi is None or lo == hi:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(lo, fmt)}-{format(hi, fmt)})"


TABLE_COLUMNS: tuple[tuple[str, Callable[[Summary], str]], ...] = (
    ("budget_ratio", lambda s: format(s.budget_ratio, "g")),
    ("mode", lambda s: s.mode),
    ("runs", lambda s: f"{s.runs}" + (f" ({s.failed} failed)" if s.failed else "")),
    ("limit_mib", lambda s: str(s.limit_mib)),
    (
        "decode_p50_ms",
        lambda s: _spread(s.decode_p50_ms, s.decode_p50_min, s.decode_p50_max, ".0f"),
    ),
    ("floor_ms", lambda s: _opt(".0f")(s.floor_ms)),
    ("prefill_s", lambda s: _spread(s.prefill_s, s.prefill_min, s.prefill_max, ".2f")),
    ("prefill_floor_s", lambda s: _opt(".2f")(s.prefill_floor_s)),
    ("decode_p99_ms", lambda s: _opt(".0f")(s.decode_p99_ms)),
    ("kv_read_gbps", lambda s: _opt(".2f")(s.kv_read_gbps)),
    ("fio_gbps", lambda s: _opt(".2f")(s.fio_gbps)),
    ("ssd_util", lambda s: _opt(".3f")(s.ssd_util)),
    ("compute_ms", lambda s: _opt(".0f")(s.compute_ms)),
    ("daemon_cpu_ms", lambda s: _opt(".0f")(s.daemon_cpu_ms_per_step)),
    ("client_cpu_ms", lambda s: _opt(".0f")(s.client_cpu_ms_per_step)),
    ("on_pagecache", lambda s: _opt(".2f")(s.pagecache_fraction)),
    ("cache_mib", lambda s: _opt(".0f")(s.cgroup_cache_mib)),
    ("peak_mib", lambda s: _opt(".0f")(s.cgroup_peak_mib)),
)


def table_rows(summary: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    head = [name for name, _ in TABLE_COLUMNS]
    rows = [[cell(s) for _, cell in TABLE_COLUMNS] for s in summary]
    return head, rows


def format_table(summary: Sequence[Summary]) -> str:
    head, rows = table_rows(summary)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def markdown(summary: Sequence[Summary], checks: Sequence[Verdict], header: str) -> str:
    head, rows = table_rows(summary)
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "| ratio | target | measured (medians) | required | verdict | note |"]
    lines.append("|---|---|---|---|---|---|")
    for v in checks:
        lines.append(
            f"| {v.budget_ratio:g} | {v.target} | {fmt_measured(v)} | {v.required} | "
            f"{'met' if v.met else '**missed**'} | {v.note} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: Sequence[Summary], modes: Sequence[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in modes:
        rows = sorted(
            (s for s in summary if s.mode == mode and s.runs), key=lambda s: s.budget_ratio
        )
        if not rows:
            continue
        xs = [s.budget_ratio for s in rows]
        for ax, med, lo, hi in (
            (ax1, "decode_p50_ms", "decode_p50_min", "decode_p50_max"),
            (ax2, "prefill_s", "prefill_min", "prefill_max"),
        ):
            ys = [getattr(s, med) for s in rows]
            err = [
                [y - (getattr(s, lo) or y) for s, y in zip(rows, ys)],
                [(getattr(s, hi) or y) - y for s, y in zip(rows, ys)],
            ]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=mode)
    floors = sorted({s.budget_ratio: s.floor_ms for s in summary if s.floor_ms is not None}.items())
    if floors:
        ax1.plot([r for r, _ in floors], [f for _, f in floors], "k--", label="floor")
    pfloors = sorted(
        {s.budget_ratio: s.prefill_floor_s for s in summary if s.prefill_floor_s}.items()
    )
    if pfloors:
        ax2.plot([r for r, _ in pfloors], [f for _, f in pfloors], "k--", label="floor")
    for ax, title, unit in ((ax1, "decode step p50", "ms"), (ax2, "prefill", "s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("KV working set / page-cache room (tighter ->)")
        ax.set_ylabel(unit)
        ax.set_title(title + " (median, min-max)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def as_dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in rows]
