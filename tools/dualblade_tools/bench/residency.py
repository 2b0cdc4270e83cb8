"""``dualblade-bench residency``: the four storage paths under four memory budgets, side by side.

An edge box in a memory cgroup (see `dualblade_tools.bench.cgroup`): the daemon and one client
(the `dualblade_tools.bench.kvtrace` worker: prefill + decode of a Llama-shaped KV trace with
mmapped weights and real per-layer compute) run inside ONE memory cgroup; this harness stays
outside it, starts both with a shell that joins the cgroup before ``exec`` (so every byte they
ever touch is charged there), and removes the cgroup and the run's files in ``finally`` blocks.

Budgets. ``ratio`` is the KV working set over the memory left for the page cache::

    limit(ratio) = fixed_overhead + working_set / ratio
    fixed_overhead = 1.1 * (anon + shmem) + max(weights, file pages)   (calibration run's cgroup)

The calibration run is the ``direct`` daemon mode with no limit (the largest resident set: daemon
+ client + arena, with no KV in the page cache); ``anon``, ``shmem`` and the file pages (page
cache less shmem: the weights, and the libraries and state files both processes touched) come
from the cgroup's ``memory.stat`` read by the worker at the end of decode; 10% is added to the
resident part for transient buffers. So at ratio 0.5 the page cache can hold the KV twice over;
at 4 it holds a quarter of it (plus what the baseline saves by running no daemon: the baseline
gets the same limit, never a smaller one). Until the seventeenth session the file pages were
counted as the weights alone: the ~180 MiB of torch's and Python's libraries the processes fault
in were missing, and a direct run peaked at 1,805 MiB beside a 1,604 MiB overhead, so ratio 4
left ~55 MiB for the KV instead of 256 and ratio 8 left none (docs/residency.md).

Every (budget, mode) cell runs ``--repeat`` times (default 3); the mode order rotates from
budget to budget and from repeat to repeat. The table shows medians with the min-max spread and
a floor column (`dualblade_tools.bench.residency_summary`); the verdicts use medians.

The daemon gets no reserve and no other hint about the weights: its adaptive mode has to learn
from refaults, PSI, its hit ratio and its measured read speeds what it may keep in the page cache.

Modes at every budget, one after another, each started cold (``sync`` + ``drop_caches``):

* ``baseline_file``: no daemon; `kvtrace.FileBackend` (buffered per-layer files, FlexGen-style);
* ``pagecache`` / ``direct`` / ``adaptive``: dualbladed with ``[residency] mode = ...``, the
  worker using the SDK client.

The caches are dropped after the daemon is up, right before the worker starts, in every mode.
Why not before the daemon: on this VM (Firecracker, virtio-balloon free page reporting,
``page_reporting_order=11``) memory freed for more than ~2 s goes back to the host, and the guest
pays a host fault on the next touch of each page: 1 GiB of buffered writes took 0.25-0.32 s of
system time right after 2 GiB of page cache was dropped and 0.41-1.16 s ten seconds later. With
the drop before the daemon's start-up (seconds), ``baseline_file`` (no daemon) could write its
prefill into the weights' just-freed pages while the daemon modes met returned ones -- a likely
part of why baseline_file's prefill measured 1.36 s against pagecache's 4.33 s in one run, for
the same kernel work (docs/residency.md, "Follow-up 3").

SSD utilisation = (storage-layer bytes read + written by the worker and the daemon during the
measured decode steps, from ``/proc/<pid>/io``) / decode seconds / fio's O_DIRECT sequential read
bandwidth (1 MiB requests, ``FIO_JOBS`` = 8 psync jobs: the direct path's queue depth) on the
benchmark's fio file, measured right after each run. The fio file is written once at start-up
in the same directory (same filesystem and disk) as the KV files and namespaces; it cannot be
the daemon's namespace itself, whose unwritten extents would read as zeros without touching the
disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualblade_tools.bench import report
from dualblade_tools.bench import residency_summary as summary_mod
from dualblade_tools.bench.cgroup import MemoryCgroup, drop_caches
from dualblade_tools.bench.kvtrace import TraceSpec, create_weights
from dualblade_tools.bench.residency_summary import Summary, Verdict, format_verdicts, verdicts
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.config import ResidencyConfig
from dualbladed.paths.pagecache import free_floor_bytes

__all__ = [
    "ResidencyRecord",
    "Summary",
    "Verdict",
    "configure",
    "main_args",
    "run",
    "run_order",
    "verdicts",
]

MODES = ("baseline_file", "pagecache", "direct", "adaptive")
DAEMON_MODES = ("pagecache", "direct", "adaptive")
RATIOS = (0.5, 1.0, 2.0, 4.0, 8.0)
REPEAT = 3
MiB = 1 << 20
#: fio's queue depth: one psync job per request in flight. The direct path reads a layer
#: object's 1 MiB chunks at depth >= 8 (issue 12's rule, ``DirectEngine.run_pieces``), and this
#: disk reads 1 MiB at 0.97 GB/s at depth 4 against 1.06 at 8: a reference at depth 4 made the
#: floor column slower than what forced direct reached (its kv_read / fio was 1.2-1.5x)
FIO_JOBS = 8


@dataclass(frozen=True)
class ResidencyRecord:
    budget_ratio: float
    mode: str
    limit_mib: int
    prefill_s: float | None
    decode_p50_ms: float | None
    decode_p99_ms: float | None
    #: KV bytes read during the measured decode steps / the time spent reading them
    kv_read_gbps: float | None
    #: per-step compute (matmul + KV pass), median; the floor column uses it
    compute_ms: float | None
    #: CPU (utime + stime) per measured decode step
    daemon_cpu_ms_per_step: float | None
    client_cpu_ms_per_step: float | None
    #: the daemon's placement at the end: KV bytes on the page-cache path / all KV bytes
    pagecache_fraction: float | None
    ssd_util: float | None
    ssd_gbps: float | None
    fio_gbps: float | None
    client_rss_mib: float | None
    cgroup_cache_mib: float | None
    cgroup_shmem_mib: float | None
    cgroup_peak_mib: float | None
    depth: int | None
    error: str | None = None
    repeat: int = 0
    #: every measured decode step, in order (a promotion window shows as the first steps)
    decode_steps_ms: tuple[float, ...] | None = None
    #: staging requests the client's arena could not serve (kvtrace's diagnostic)
    staging_fallbacks: int | None = None
    #: why the first of them happened (the arena's error message)
    staging_error: str | None = None
    #: prefill's matmuls on the model thread (weights' faults included); the prefill floor
    prefill_compute_s: float | None = None
    #: where prefill's time went: CPU of the worker and the daemon, the worker's major faults
    prefill_client_cpu_s: float | None = None
    prefill_daemon_cpu_s: float | None = None
    prefill_major_faults: int | None = None
    #: the worker's own storage reads per measured decode step (/proc/self/io): the weights
    #: read back from the disk in the daemon modes, plus the KV's reads in baseline_file
    client_disk_read_mib_per_step: float | None = None
    #: CPU time the hypervisor stole from this VM during the measured steps / the prefill,
    #: percent (/proc/stat): read a cell's spread against it
    steal_pct: float | None = None
    prefill_steal_pct: float | None = None
    #: the model thread's wait for KV reads per measured step (mean): decode p50 is compute,
    #: this wait and the rest
    read_wait_ms_per_step: float | None = None

    @classmethod
    def failed(
        cls, ratio: float, mode: str, limit_mib: int, fio: float | None, error: str
    ) -> ResidencyRecord:
        """A run that measured nothing but the disk: every measurement None, `error` set."""
        unset = {f.name: None for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        given = {"budget_ratio": ratio, "mode": mode, "limit_mib": limit_mib, "fio_gbps": fio}
        return cls(**{**unset, **given}, error=error)


def configure(parser: argparse.ArgumentParser) -> None:
    d = TraceSpec()
    g = parser.add_argument_group("trace (defaults: 8B-shaped KV at an 8k context)")
    for name, help_text in (
        ("layers", "decoder layers"),
        ("kv_heads", "KV heads"),
        ("head_dim", "head dimension"),
        ("context", "prompt tokens (the KV working set)"),
        ("block_tokens", "tokens per stored object"),
        ("steps", "measured decode steps"),
        ("warmup_steps", "decode steps before measuring"),
        ("hidden", "weights matrix rows per layer (fp32)"),
        ("ffn", "weights matrix columns per layer (fp32)"),
        ("rows", "decode matmul rows per layer"),
        ("prefill_rows", "prefill matmul rows per layer"),
        ("max_depth", "pipeline prefetch depth bound"),
    ):
        g.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(d, name),
            help=f"{help_text} (default {getattr(d, name)})",
        )
    parser.add_argument(
        "--ratios",
        type=report.comma_list(float),
        default=RATIOS,
        help="working set / page-cache room, comma-separated (default 0.5,1,2,4,8)",
    )
    parser.add_argument(
        "--blocks",
        dest="ranged",
        action="store_false",
        help="store KV as block objects even where layer objects (reserve/append/read_range) exist",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=REPEAT,
        help=f"runs per (budget, mode); the table shows medians (default {REPEAT})",
    )
    parser.add_argument(
        "--modes",
        type=report.comma_list(str),
        default=MODES,
        help=f"comma-separated subset of {','.join(MODES)}",
    )
    parser.add_argument(
        "--overhead",
        type=report.parse_bytes,
        default=None,
        help="fixed overhead (RSS + weights) instead of a calibration run, e.g. 2G",
    )
    parser.add_argument("--fio-seconds", type=float, default=3.0, help="fio time per run")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="copy each run's daemon log into --dir (the arbiter's budget and pressure lines)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="RUN.json",
        help="run nothing: summarize the records of earlier runs' --json together (same trace "
        "and overhead), e.g. two sweeps of one commit as one with more repeats",
    )
    parser.add_argument("--json", metavar="FILE", help="write records + verdicts as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="decode p50 and prefill vs ratio")
    parser.add_argument("--markdown", metavar="FILE", help="write the table and verdicts (md)")


def main_args(**options: object) -> list[str]:
    """``dualblade-bench`` argv for ``residency`` with ``options`` (``fio_seconds=1`` etc.)."""
    argv = ["residency"]
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    if args.merge:
        try:
            spec, overhead, records, elapsed = merged(args.merge)
        except ValueError as err:
            print(f"cannot merge: {err}", file=sys.stderr)
            return 2
        return _publish(args, spec, overhead, records, elapsed)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        print(f"unknown modes: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    spec = TraceSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TraceSpec)})
    own_dir = args.dir is None
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="dualblade-residency-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C: the finally blocks stop the daemon and
    # remove the cgroup and the run's files instead of leaving them behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        bench = _Bench(
            spec, workdir, fio_seconds=args.fio_seconds, keep_logs=args.keep_logs and not own_dir
        )
        bench.prepare()
        overhead = args.overhead if args.overhead is not None else bench.calibrate()
        records: list[ResidencyRecord] = []
        repeat = max(1, args.repeat)
        total = repeat * len(args.ratios) * len(args.modes)
        for rep in range(repeat):
            for i, ratio in enumerate(args.ratios):
                limit = overhead + int(spec.kv_bytes / ratio)
                # keeps rotating: a cell's predecessor changes between repeats as well
                for mode in run_order(args.modes, rep * (len(args.ratios) + 1) + i):
                    report.progress(
                        f"[{len(records) + 1}/{total}] repeat {rep + 1} ratio {ratio:g} "
                        f"({limit / MiB:.0f} MiB) mode {mode}"
                    )
                    rec = dataclasses.replace(bench.run_one(ratio, mode, limit), repeat=rep)
                    records.append(rec)
                    report.progress(f"    -> {_summary(rec)}")
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return _publish(args, spec, overhead, records, time.monotonic() - started)


def merged(paths: Sequence[str]) -> tuple[TraceSpec, int, list[ResidencyRecord], float]:
    """The records of several ``--json`` outputs as one run: ``(spec, overhead, records,
    elapsed_s)``. Each file's repeats are renumbered after the previous file's, so a cell's
    runs stay distinct. Raises ValueError when the files disagree on the trace or the overhead
    (their limits, and so their cells, would differ)."""
    spec: TraceSpec | None = None
    overhead: int | None = None
    records: list[ResidencyRecord] = []
    elapsed = 0.0
    names = {f.name for f in dataclasses.fields(ResidencyRecord)}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        this = TraceSpec(**doc["spec"])
        if spec is None:
            spec, overhead = this, int(doc["fixed_overhead_bytes"])
        elif this != spec or int(doc["fixed_overhead_bytes"]) != overhead:
            raise ValueError(f"{path} ran another trace or overhead than {paths[0]}")
        base = 1 + max((r.repeat for r in records), default=-1)
        for row in doc["records"]:
            rec = ResidencyRecord(**{k: v for k, v in row.items() if k in names})
            records.append(dataclasses.replace(rec, repeat=base + rec.repeat))
        elapsed += float(doc.get("elapsed_s", 0.0))
    assert spec is not None and overhead is not None  # argparse: at least one path
    return spec, overhead, records, elapsed


def _publish(
    args: argparse.Namespace,
    spec: TraceSpec,
    overhead: int,
    records: list[ResidencyRecord],
    elapsed: float,
) -> int:
    """Print the table and the verdicts of ``records``; write --json, --markdown, --plot."""
    repeat = 1 + max((r.repeat for r in records), default=0)
    summary = summary_mod.summarize(records, spec.kv_bytes)
    checks = verdicts(summary)
    meta = {
        "spec": dataclasses.asdict(spec),
        "kv_bytes": spec.kv_bytes,
        "weight_bytes": spec.weight_bytes,
        "fixed_overhead_bytes": overhead,
        "limit_formula": "fixed_overhead + kv_bytes / budget_ratio",
        "elapsed_s": round(elapsed, 1),
        "repeat": repeat,
        "floor_formula": "max(0, kv_bytes * (1 - 1/ratio)) / fio_gbps + compute_ms",
        "prefill_floor_formula": "min over the budget's runs of prefill_compute_s",
        "summary": summary_mod.as_dicts(summary),
        "verdicts": summary_mod.as_dicts(checks),
    }
    if args.merge:
        meta["merged_from"] = [str(p) for p in args.merge]
    print(_header(spec, overhead))
    print(summary_mod.format_table(summary))
    print()
    print(format_verdicts(checks))
    if args.json:
        report.write_json(args.json, records, **meta)
    if args.markdown:
        Path(args.markdown).write_text(
            summary_mod.markdown(summary, checks, _header(spec, overhead))
        )
    if args.plot:
        summary_mod.plot(summary, MODES, args.plot)
    return 0 if all(r.error is None for r in records) else 1


# --------------------------------------------------------------------------- one run


class _DaemonInCgroup(DaemonProcess):
    """`DaemonProcess` whose command joins the benchmark cgroup before exec."""

    cgroup: MemoryCgroup | None = None

    def command(self) -> list[str]:
        base = super().command()
        return self.cgroup.join_command(base) if self.cgroup is not None else base


class _Bench:
    def __init__(
        self, spec: TraceSpec, workdir: Path, *, fio_seconds: float, keep_logs: bool = False
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.weights = workdir / "weights.bin"
        self.fio_file = workdir / "fio.bin"
        self.fio_size = max(
            64 * MiB, -(-min(spec.kv_bytes, 1 << 30) // (FIO_JOBS * MiB)) * (FIO_JOBS * MiB)
        )
        self.fio_seconds = fio_seconds
        #: copy each daemon's log next to the work directory (what the arbiter decided, and why)
        self.keep_logs = keep_logs
        self.namespace_bytes = -(-(spec.kv_bytes * 3 // 2 + 256 * MiB) // MiB) * MiB
        self._seq = 0

    def check_disk(self) -> None:
        """Refuse to start where a run would take the work directory's filesystem below the
        daemon's page-cache free-space floor (``residency.pagecache_min_free_*``, defaults):
        below it the page cache refuses every object, so pagecache and adaptive would measure
        the direct path under their names. An eleventh-session A/B lost two invocations that way
        (the kept weights and fio files of earlier ``--dir`` invocations had filled the disk)."""
        cfg = ResidencyConfig()
        floor = free_floor_bytes(
            self.workdir, cfg.pagecache_min_free_bytes, cfg.pagecache_min_free_fraction
        )
        written = sum(f.stat().st_size if f.exists() else 0 for f in (self.weights, self.fio_file))
        # weights and fio file, then one run's namespace and page-cache slabs (each <= the KV)
        need = (
            self.spec.weight_bytes
            + self.fio_size
            - written
            + self.namespace_bytes
            + self.spec.kv_bytes
        )
        st = os.statvfs(self.workdir)
        available = st.f_bavail * st.f_frsize
        if available - need < floor:
            raise SystemExit(
                f"residency: {self.workdir} has {available / MiB:.0f} MiB free; a run writes up "
                f"to {need / MiB:.0f} MiB there and the daemon's page cache stops at a free-space "
                f"floor of {floor / MiB:.0f} MiB, below which pagecache and adaptive would "
                "measure the direct path. Free space there or pass --dir on a larger filesystem."
            )

    def prepare(self) -> None:
        self.check_disk()
        report.progress(f"writing weights ({self.spec.weight_bytes / MiB:.0f} MiB) and fio file")
        create_weights(self.weights, self.spec)
        if not (self.fio_file.exists() and self.fio_file.stat().st_size == self.fio_size):
            chunk = os.urandom(MiB)
            with open(self.fio_file, "wb") as fh:
                for _ in range(self.fio_size // MiB):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())

    def calibrate(self) -> int:
        """Fixed overhead of an unlimited direct run (module docstring, :func:`fixed_overhead`)."""
        report.progress("calibrating the fixed overhead (direct mode, no limit, 2 steps)")
        spec = dataclasses.replace(self.spec, steps=2, warmup_steps=0)
        result = self._trace("calibrate", "direct", None, spec)
        if "error" in result:
            raise RuntimeError(f"calibration run failed: {result['error']}")
        anon, shmem = result["cgroup_anon_bytes"], result["cgroup_shmem_bytes"]
        cache = result["cgroup_cache_bytes"]
        overhead = fixed_overhead(anon, shmem, cache, self.spec.weight_bytes)
        report.progress(
            f"anon {anon / MiB:.0f} MiB, shmem {shmem / MiB:.0f}, file pages "
            f"{(cache - shmem) / MiB:.0f} (weights {self.spec.weight_bytes / MiB:.0f}) -> "
            f"fixed overhead {overhead / MiB:.0f} MiB"
        )
        return overhead

    def run_one(self, ratio: float, mode: str, limit: int) -> ResidencyRecord:
        result = self._trace(f"r{ratio:g}", mode, limit, self.spec)
        fio = report.run_fio(
            filename=str(self.fio_file),
            rw="read",
            block_size=MiB,
            size=self.fio_size // FIO_JOBS,
            offset_increment=self.fio_size // FIO_JOBS,
            numjobs=FIO_JOBS,
            seconds=self.fio_seconds,
        )
        if "error" in result:
            return ResidencyRecord.failed(ratio, mode, limit // MiB, fio, str(result.get("error")))
        ssd = (result["io_read_bytes"] + result["io_write_bytes"]) / result["decode_s"] / 1e9
        steps = max(1, self.spec.steps)
        daemon_cpu = result.get("daemon_cpu_s")
        return ResidencyRecord(
            budget_ratio=ratio,
            mode=mode,
            limit_mib=limit // MiB,
            prefill_s=result["prefill_s"],
            prefill_compute_s=result.get("prefill_compute_s"),
            prefill_client_cpu_s=result.get("prefill_client_cpu_s"),
            prefill_daemon_cpu_s=result.get("prefill_daemon_cpu_s"),
            prefill_major_faults=result.get("prefill_major_faults"),
            client_disk_read_mib_per_step=result.get("client_io_read_bytes", 0) / MiB / steps,
            steal_pct=result.get("steal_pct"),
            prefill_steal_pct=result.get("prefill_steal_pct"),
            read_wait_ms_per_step=result.get("read_wait_ms_per_step"),
            decode_p50_ms=result["decode_p50_ms"],
            decode_p99_ms=result["decode_p99_ms"],
            kv_read_gbps=result["kv_read_bytes"] / result["kv_read_s"] / 1e9
            if result["kv_read_s"] > 0
            else None,
            compute_ms=result["compute_p50_ms"],
            daemon_cpu_ms_per_step=None if daemon_cpu is None else daemon_cpu * 1e3 / steps,
            client_cpu_ms_per_step=result["client_cpu_s"] * 1e3 / steps,
            pagecache_fraction=result.get("pagecache_fraction"),
            ssd_util=ssd / fio if fio else None,
            ssd_gbps=ssd,
            fio_gbps=fio,
            client_rss_mib=result["client_rss_bytes"] / MiB,
            cgroup_cache_mib=(result["cgroup_cache_bytes"] or 0) / MiB,
            cgroup_shmem_mib=(result["cgroup_shmem_bytes"] or 0) / MiB,
            cgroup_peak_mib=result["cgroup_peak_bytes"] / MiB,
            depth=result["depth"],
            decode_steps_ms=tuple(round(ms, 1) for ms in result.get("decode_ms", ())),
            staging_fallbacks=result.get("staging_fallbacks"),
            staging_error=result.get("staging_error"),
        )

    def _trace(self, tag: str, mode: str, limit: int | None, spec: TraceSpec) -> dict[str, Any]:
        """One cold run of the worker (and the daemon) inside a fresh cgroup."""
        self._seq += 1
        rundir = self.workdir / f"run{self._seq}-{tag}-{mode}"
        name = f"dualblade-bench-{os.getpid()}-{self._seq}"
        daemon: _DaemonInCgroup | None = None
        cgroup = MemoryCgroup(name, limit)
        try:
            rundir.mkdir(parents=True)
            cmd = [
                sys.executable,
                "-m",
                "dualblade_tools.bench.kvtrace",
                "--spec",
                json.dumps(dataclasses.asdict(spec)),
                "--weights",
                str(self.weights),
                "--cgroup-stat",
                str(cgroup.path / "memory.stat"),
                "--label",
                f"{tag} {mode}:",
            ]
            if mode == "baseline_file":
                cmd += ["--files", str(rundir / "kv")]
            else:
                daemon = self._start_daemon(rundir, mode, cgroup)
                pid = daemon.proc.pid if daemon.proc is not None else 0
                cmd += ["--socket", str(daemon.socket), "--daemon-pid", str(pid)]
            # after the daemon's start-up, so every mode's prefill meets the same free memory
            # (module docstring: freed memory goes back to the host within seconds here)
            if not drop_caches():
                report.progress("could not drop caches (not root?): this run does not start cold")
            proc = subprocess.run(
                cgroup.join_command(cmd), stdout=subprocess.PIPE, text=True, timeout=900
            )
            peak = cgroup.stat().peak
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                why = f"worker exited {proc.returncode}"
                if proc.returncode in (-9, 137):
                    why += " (SIGKILL: OOM in the cgroup?)"
                return {"error": why}
            result = json.loads(lines[-1])
            result["cgroup_peak_bytes"] = peak
            return result
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
            return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            if daemon is not None:
                try:
                    daemon.terminate()
                except subprocess.TimeoutExpired:
                    daemon.kill()
                if self.keep_logs and daemon.log_path is not None and daemon.log_path.exists():
                    shutil.copy(daemon.log_path, self.workdir / f"daemon-{rundir.name}.log")
            cgroup.remove()
            shutil.rmtree(rundir, ignore_errors=True)

    def _start_daemon(self, rundir: Path, mode: str, cgroup: MemoryCgroup) -> _DaemonInCgroup:
        config = rundir / "dualbladed.toml"
        # No reserve and no hint about the weights: adaptive learns what it may cache.
        config.write_text(
            'admin_group = ""\n'
            "[residency]\n"
            f'mode = "{mode}"\n'
            "[limits]\n"
            f"max_arena_bytes = {1 << 30}\n"
        )
        daemon = _DaemonInCgroup(
            root=rundir / "daemon", namespace_size=f"{self.namespace_bytes}", config=config
        )
        daemon.cgroup = cgroup
        return daemon.start(timeout=60)


# --------------------------------------------------------------------------- output


def fixed_overhead(anon: int, shmem: int, cache: int, weight_bytes: int) -> int:
    """The memory a run needs besides the KV's page cache: its resident set (anon + shmem) with
    10% for transient buffers, and its file pages (``cache`` counts shmem too: v1 ``cache``, v2
    ``file``), at least the whole weights file."""
    return int((anon + shmem) * 1.1) + max(weight_bytes, cache - shmem)


def run_order(modes: Sequence[str], budget_index: int) -> list[str]:
    """The order of the modes at one budget: rotated, and reversed on odd budgets.

    Runs leave the host busy for a while (the virtio disk is cached by the host, which writes
    back what a run wrote after it ended), so the run after a write-heavy one pays for it. A
    fixed order would charge that to the same mode at every budget (in a first version
    ``adaptive`` always followed ``direct`` and its prefill was 30-50% slower than in isolation);
    varying the predecessor spreads the cost over the modes.
    """
    k = budget_index % max(len(modes), 1)
    order = list(modes[k:]) + list(modes[:k])
    return order[::-1] if budget_index % 2 else order


def _summary(r: ResidencyRecord) -> str:
    if r.error is not None:
        return f"FAILED: {r.error}"
    return (
        f"prefill {r.prefill_s:.2f} s, decode p50 {r.decode_p50_ms:.0f} ms "
        f"p99 {r.decode_p99_ms:.0f} ms, ssd {r.ssd_gbps:.2f} GB/s "
        f"(util {'-' if r.ssd_util is None else format(r.ssd_util, '.3f')}), kv read "
        f"{'-' if r.kv_read_gbps is None else format(r.kv_read_gbps, '.2f')} GB/s, cache {r.cgroup_cache_mib:.0f} MiB"
        + ("" if r.steal_pct is None else f", steal {r.steal_pct:.0f}%")
    )


def _header(spec: TraceSpec, overhead: int) -> str:
    return (
        f"residency bench: {spec.layers} layers x {spec.kv_heads} KV heads x {spec.head_dim} "
        f"head dim, {spec.context} tokens -> KV {spec.kv_bytes / MiB:.0f} MiB; weights "
        f"{spec.weight_bytes / MiB:.0f} MiB mmapped; limit = {overhead / MiB:.0f} MiB + KV / ratio"
    )
