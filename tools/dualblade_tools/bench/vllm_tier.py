"""``dualblade-bench vllm-tier``: DualBladeTier beside vLLM's own ``fs`` tier, same chunk workload.

Both tiers are made the way vLLM makes them (``SecondaryTierFactory.create_secondary_tier`` with a
real ``OffloadingSpec``) over one page-aligned, mmapped pool like vLLM's CPU pool, and driven with
real ``TransferJob`` s through the scheduler-side API (submit, then poll ``get_finished_jobs``).
The dualblade side talks to a fresh ``dualbladed`` on a file namespace; the fs tier's ``root_dir``
is a directory beside that namespace file, so both write to the same filesystem.

One round, per tier (the order of the two tiers alternates between rounds, and each round uses
fresh keys: the fs tier skips a chunk whose file exists, so reused keys would time nothing):

* ``store_gbps``: every chunk of the pool in jobs of ``--job-chunks``, all submitted at once (as
  the offloading manager does when it evicts a batch), timed from the first submit until the last
  job reported; every job must succeed.
* ``load_gbps``: the same keys back into the pool, chunk i into slot ``n-1-i`` (so a load that
  did nothing cannot pass as correct), timed the same way; the pool is zeroed first and every
  chunk is checked against its xxh3 digest afterwards, outside the timing.
* ``lookup_p50_us``: ``--lookup-keys`` keys (the stored ones, then unknown ones) each looked up
  alone as a request does: ``lookup`` (RETRY), ``on_schedule_end`` (sends the batch), then
  ``lookup`` until the verdict; the median of those latencies. Each verdict is checked.

Numbers are decimal GB/s; the table and JSON report the median over ``--repeat`` rounds (this
2-core VM is shared and noisy) and each tier's ratio to the fs tier of the same run. The dualblade
tier writes with ``--path`` (default ``direct``: O_DIRECT, the same as the fs tier, which probes
O_DIRECT and uses it when the filesystem allows), and its daemon runs with ``residency.mode`` set
to that path, so no arbiter migration (in adaptive mode it promotes freshly written objects to the
page cache, reading them back from disk) competes with the timed I/O; ``--path auto`` keeps the
daemon's adaptive default and measures that instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import mmap
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualblade_tools.bench import report
from dualblade_tools.vllmspec import offloading_config, standalone_spec

__all__ = ["TierRecord", "configure", "run"]

TENANT = "bench-vllm"
BLOCKS_PER_CHUNK = 4
TIERS = ("dualblade", "fs")
_job_ids = itertools.count(1)


@dataclass(frozen=True)
class TierRecord:
    """Medians over the rounds; GB/s = 1e9 bytes per second."""

    tier: str
    chunk_bytes: int
    store_gbps: float
    load_gbps: float
    lookup_p50_us: float
    store_vs_fs: float
    load_vs_fs: float
    rounds: int


@dataclass(frozen=True)
class RoundResult:
    tier: str
    round: int
    store_gbps: float
    load_gbps: float
    lookup_p50_us: float


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="write the records to this JSON file")
    parser.add_argument("--chunk-bytes", type=report.parse_bytes, default=2 << 20)
    parser.add_argument("--pool-bytes", type=report.parse_bytes, default=512 << 20)
    parser.add_argument("--job-chunks", type=int, default=32, help="chunks per transfer job")
    parser.add_argument("--lookup-keys", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians (default 3)")
    parser.add_argument(
        "--tiers",
        type=report.comma_list(str),
        default=list(TIERS),
        help="comma-separated tiers to run (default dualblade,fs)",
    )
    parser.add_argument(
        "--path",
        default="direct",
        choices=("direct", "pagecache", "auto"),
        help="the dualblade tier's residency path (auto: the daemon's arbiter decides)",
    )
    parser.add_argument("--io-threads", type=int, default=8, help="DualBladeTier io_threads")
    parser.add_argument(
        "--dir", default=None, help="where the namespace and the fs root go (default $TMPDIR)"
    )


def _vllm_missing() -> str:
    try:
        import vllm.v1.kv_offload.tiering.factory  # noqa: F401
        import vllm.v1.kv_offload.tiering.fs.manager  # noqa: F401

        from dualblade.integrations.vllm import _IMPORT_ERROR
    except ImportError as exc:
        return f"vLLM's tiering API (and its fs tier) cannot be imported: {exc}"
    return str(_IMPORT_ERROR) if _IMPORT_ERROR is not None else ""


def _spec(chunk_bytes: int) -> Any:
    return standalone_spec(
        offloading_config(
            layer_names=("l0",),
            kv_bytes_per_block=chunk_bytes // BLOCKS_PER_CHUNK,
            blocks_per_chunk=BLOCKS_PER_CHUNK,
            engine_id="dualblade-bench",
            model="bench/vllm-tier",
            dtype="bfloat16",
        )
    )


def _keys(tag: str, n: int) -> list[bytes]:
    from vllm.v1.kv_offload.base import make_offload_key

    return [make_offload_key(hashlib.sha256(f"{tag}/{i}".encode()).digest(), 0) for i in range(n)]


def _jobs(keys: list[bytes], slots: list[int], per_job: int, *, load: bool) -> list[Any]:
    import numpy as np
    from vllm.v1.kv_offload.base import ReqContext
    from vllm.v1.kv_offload.tiering.base import TransferJob

    return [
        TransferJob(
            job_id=next(_job_ids),
            keys=keys[i : i + per_job],
            chunk_ids=np.asarray(slots[i : i + per_job], dtype=np.int64),
            is_promotion=load,
            req_context=ReqContext(req_id="bench"),
        )
        for i in range(0, len(keys), per_job)
    ]


def _transfer(tier: Any, jobs: list[Any], nbytes: int, timeout: float = 600.0) -> float:
    """Submit every job, poll until all reported; GB/s. A failed job is an error, not a number."""
    want = {j.job_id for j in jobs}
    start = time.perf_counter()
    for j in jobs:
        (tier.submit_load if j.is_promotion else tier.submit_store)(j)
    failed = []
    deadline = time.monotonic() + timeout
    while want:
        for r in tier.get_finished_jobs():
            want.discard(r.job_id)
            if not r.success:
                failed.append(r.job_id)
        if want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tier.tier_type}: {len(want)} jobs unfinished in {timeout}s")
            time.sleep(0.002)  # a scheduler polls once a step; a tight loop would take the GIL
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{tier.tier_type}: {len(failed)} of {len(jobs)} jobs failed")
    return nbytes / elapsed / 1e9


def _lookup_p50_us(tier: Any, hits: list[bytes], misses: list[bytes], tag: str) -> float:
    from vllm.v1.kv_offload.base import LookupResult, ReqContext, ScheduleEndContext

    step = ScheduleEndContext(new_req_ids=(), preempted_req_ids=())
    latencies = []
    for i, (key, want) in enumerate(
        itertools.chain(
            ((k, LookupResult.HIT) for k in hits), ((k, LookupResult.MISS) for k in misses)
        )
    ):
        req = ReqContext(req_id=f"{tag}-{i}")
        tier.on_new_request(req)
        start = time.perf_counter()
        deadline = start + 30
        # vLLM applies results only on the first lookup after a step end (and at step ends), so
        # every RETRY is followed by a step end, as the scheduler's next step would do.
        while (verdict := tier.lookup(key, req)) is LookupResult.RETRY:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{tier.tier_type}: lookup still RETRY after 30 s")
            tier.on_schedule_end(step)
            time.sleep(0)
        latencies.append(time.perf_counter() - start)
        tier.on_request_finished(req)
        if verdict is not want:
            raise RuntimeError(f"{tier.tier_type}: lookup {i} answered {verdict}, not {want}")
    return statistics.median(latencies) * 1e6


def _digests(pool: Any) -> list[int]:
    import xxhash

    return [xxhash.xxh3_64_intdigest(row) for row in pool]


@contextmanager
def _tiers(args: argparse.Namespace, root: Path, pool: Any) -> Iterator[dict[str, Any]]:
    from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory

    from dualblade_tools.daemonproc import DaemonProcess

    spec = _spec(args.chunk_bytes)
    daemon = None
    made: dict[str, Any] = {}
    try:
        if "dualblade" in args.tiers:
            ns = 2 * args.pool_bytes + (256 << 20)
            config = None
            if args.path != "auto":  # no arbiter migrations beside the timed I/O (see docstring)
                config = root / "dualbladed.toml"
                config.write_text(f'[residency]\nmode = "{args.path}"\n')
            daemon = DaemonProcess(root / "dualblade", namespace_size=str(ns), config=config)
            daemon.start(timeout=120)
            cfg: dict[str, Any] = {
                "type": "DualBladeTier",
                "module_path": "dualblade.integrations.vllm",
                "socket": str(daemon.socket),
                "tenant": TENANT,
                "io_threads": args.io_threads,
            }
            if args.path != "auto":
                cfg["path"] = args.path
            made["dualblade"] = SecondaryTierFactory.create_secondary_tier(
                cfg, memoryview(pool), spec
            )
        if "fs" in args.tiers:
            cfg = {"type": "fs", "root_dir": str(root / "fs")}
            made["fs"] = SecondaryTierFactory.create_secondary_tier(cfg, memoryview(pool), spec)
        yield made
    finally:
        for tier in made.values():
            tier.shutdown()
        if daemon is not None:
            daemon.terminate(timeout=60)


def _forget(name: str, tier: Any, keys: list[bytes], root: Path) -> None:
    """Free what a round stored, so every round writes into the same amount of free space."""
    if name == "dualblade":
        client = tier._conn.get()
        client.delete_many([tier.key_prefix + k for k in keys])
    else:
        for child in (root / "fs").iterdir():
            if child.is_dir():
                shutil.rmtree(child)


def measure(args: argparse.Namespace, root: Path) -> list[RoundResult]:
    import numpy as np

    chunks = args.pool_bytes // args.chunk_bytes
    buf = mmap.mmap(-1, chunks * args.chunk_bytes)
    pool = np.frombuffer(buf, dtype=np.uint8).reshape(chunks, args.chunk_bytes)
    results: list[RoundResult] = []
    try:
        rng = np.random.default_rng(13)
        for row in pool:
            row[:] = rng.integers(0, 256, args.chunk_bytes, dtype=np.uint8)
        with _tiers(args, root, pool) as tiers:
            order = [t for t in TIERS if t in tiers]
            for rnd in range(args.repeat):
                for name in order if rnd % 2 == 0 else order[::-1]:
                    tier = tiers[name]
                    tag = f"r{rnd}-{name}"
                    keys = _keys(tag, chunks)
                    want = _digests(pool)
                    store = _transfer(
                        tier,
                        _jobs(keys, list(range(chunks)), args.job_chunks, load=False),
                        chunks * args.chunk_bytes,
                    )
                    pool[:] = 0
                    back = list(range(chunks))[::-1]
                    load = _transfer(
                        tier,
                        _jobs(keys, back, args.job_chunks, load=True),
                        chunks * args.chunk_bytes,
                    )
                    got = _digests(pool)
                    bad = sum(got[back[i]] != want[i] for i in range(chunks))
                    if bad:
                        raise RuntimeError(f"{name}: {bad} of {chunks} chunks loaded wrong bytes")
                    n_hit = min(chunks, args.lookup_keys)
                    misses = _keys(f"{tag}-miss", args.lookup_keys - n_hit)
                    p50 = _lookup_p50_us(tier, keys[:n_hit], misses, tag)
                    _forget(name, tier, keys, root)
                    results.append(RoundResult(name, rnd, store, load, p50))
                    report.progress(
                        f"round {rnd} {name}: store {store:.2f} GB/s, load {load:.2f} GB/s, "
                        f"lookup p50 {p50:.0f} us"
                    )
    finally:
        del pool
        with contextlib.suppress(BufferError):  # a tier's shutdown may not drop its view at once
            buf.close()
    return results


def summarize(results: list[RoundResult], chunk_bytes: int) -> list[TierRecord]:
    by_tier: dict[str, list[RoundResult]] = {}
    for r in results:
        by_tier.setdefault(r.tier, []).append(r)
    med = {
        t: (
            statistics.median(r.store_gbps for r in rs),
            statistics.median(r.load_gbps for r in rs),
            statistics.median(r.lookup_p50_us for r in rs),
        )
        for t, rs in by_tier.items()
    }
    fs = med.get("fs")
    return [
        TierRecord(
            tier,
            chunk_bytes,
            store,
            load,
            p50,
            store / fs[0] if fs else float("nan"),
            load / fs[1] if fs else float("nan"),
            len(by_tier[tier]),
        )
        for tier, (store, load, p50) in med.items()
    ]


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.job_chunks < 1 or args.lookup_keys < 1:
        report.progress("--repeat, --job-chunks and --lookup-keys must be >= 1")
        return 2
    if args.chunk_bytes <= 0 or args.chunk_bytes % mmap.PAGESIZE:
        report.progress("--chunk-bytes must be a positive multiple of the page size")
        return 2
    if args.pool_bytes < args.chunk_bytes:
        report.progress("--pool-bytes must hold at least one chunk")
        return 2
    if not args.tiers or not set(args.tiers) <= set(TIERS):
        report.progress(f"--tiers must list some of {', '.join(TIERS)}")
        return 2
    missing = _vllm_missing()
    if missing:
        report.progress(f"vllm-tier needs vLLM (see requirements-vllm.txt): {missing}")
        return 2
    with tempfile.TemporaryDirectory(prefix="dbvllm-", dir=args.dir) as tmp:
        results = measure(args, Path(tmp))
    records = summarize(results, args.chunk_bytes)
    report.print_table(records)
    if args.json:
        report.write_json(
            args.json,
            records,
            benchmark="vllm-tier",
            pool_bytes=args.pool_bytes,
            job_chunks=args.job_chunks,
            lookup_keys=args.lookup_keys,
            dualblade_path=args.path,
            per_round=[dataclasses.asdict(r) for r in results],
        )
    return 0
