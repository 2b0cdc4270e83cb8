"""`DualBladeTier` against the real vLLM 0.33.0 tiering classes and a live ``dualbladed``.

The tier is made the way vLLM makes it -- ``SecondaryTierFactory.create_secondary_tier`` from the
JSON tier config, with a real ``OffloadingSpec`` built from vLLM's ``OffloadingConfig`` dataclasses
-- over a page-aligned (mmap-backed) pool like vLLM's CPU pool, and driven with real
``TransferJob`` s. Lookups are driven step by step as the scheduler does: look up, then
``on_schedule_end`` (which sends the batch), then look up again.

Nothing is mocked: there is no GPU here, and none is needed, since the tier only moves bytes
between the CPU pool and the daemon. "The daemon is busy" is made certain with SIGSTOP: a tier that
blocked on the daemon would then hang, not merely be slow.

vLLM is installed without its CUDA dependencies (``pip install --no-deps vllm==0.33.0``, see
requirements-vllm.txt); without it these tests skip, except the ones that need no vLLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import itertools
import mmap
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from dualblade import Client
from dualblade._leaseplane import LeasePlane
from dualblade.integrations.vllm import VLLM_VERSION
from dualblade.integrations.vllm._namespace import default_tenant, key_prefix, namespace_fields
from dualblade.v1 import dualblade_pb2 as pb
from dualblade_tools.daemonproc import DaemonProcess
from dualblade_tools.vllmspec import offloading_config, standalone_spec

try:
    from vllm.v1.kv_offload.base import (
        LookupResult,
        Medium,
        OffloadingSpec,
        ReqContext,
        ScheduleEndContext,
        make_offload_key,
    )
    from vllm.v1.kv_offload.config import OffloadingConfig
    from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob
    from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory

    from dualblade.integrations.vllm import DualBladeTier

    VLLM_MISSING = ""
except ImportError as exc:
    VLLM_MISSING = (
        f"vLLM {VLLM_VERSION} tiering API not importable ({exc}); see requirements-vllm.txt"
    )

needs_vllm = pytest.mark.skipif(bool(VLLM_MISSING), reason=VLLM_MISSING or "-")

ROOT = Path(__file__).resolve().parents[2]
TENANT = "vllm-test"
BLOCK_BYTES = 16 << 10  # worker KV bytes per block
BLOCKS_PER_CHUNK = 4
CHUNK = BLOCK_BYTES * BLOCKS_PER_CHUNK  # one pool row = one stored object: 64 KiB
POOL_CHUNKS = 64
STEP = None if VLLM_MISSING else ScheduleEndContext(new_req_ids=(), preempted_req_ids=())
_job_ids = itertools.count(1)


# -- vLLM objects -----------------------------------------------------------------------------


def make_config(
    *,
    model: str = "org/tiny-model",
    dtype: str = "float16",
    blocks_per_chunk: int = BLOCKS_PER_CHUNK,
    tp_size: int = 1,
    rank: int = 0,
    agnostic: bool = False,
    events: bool = False,
    extra: dict[str, Any] | None = None,
) -> OffloadingConfig:
    return offloading_config(
        layer_names=("l0", "l1"),
        kv_bytes_per_block=BLOCK_BYTES,
        blocks_per_chunk=blocks_per_chunk,
        engine_id=f"dualblade-test-{uuid.uuid4().hex[:8]}",
        model=model,
        dtype=dtype,
        tp_size=tp_size,
        rank=rank,
        agnostic=agnostic,
        events=events,
        extra=extra,
    )


def make_spec(**kw: Any) -> OffloadingSpec:
    return standalone_spec(make_config(**kw))


def make_pool(chunks: int = POOL_CHUNKS) -> np.ndarray:
    """A page-aligned pool like vLLM's CPU pool (an mmapped region), one row per chunk."""
    pool = np.frombuffer(mmap.mmap(-1, chunks * CHUNK), dtype=np.uint8).reshape(chunks, CHUNK)
    assert pool.ctypes.data % mmap.PAGESIZE == 0
    return pool


def tier_config(socket: Path, **extra: Any) -> dict[str, Any]:
    return {
        "type": "DualBladeTier",
        "module_path": "dualblade.integrations.vllm",
        "socket": str(socket),
        "tenant": TENANT,
        "locality": "LOCAL",
        **extra,
    }


def offload_keys(n: int, tag: str | None = None) -> list[bytes]:
    tag = tag or uuid.uuid4().hex
    return [make_offload_key(hashlib.sha256(f"{tag}/{i}".encode()).digest(), 0) for i in range(n)]


def job(keys: list[bytes], chunk_ids: list[int], *, load: bool = False, req: str = "r") -> Any:
    return TransferJob(
        job_id=next(_job_ids),
        keys=list(keys),
        chunk_ids=np.asarray(chunk_ids, dtype=np.int64),
        is_promotion=load,
        req_context=ReqContext(req_id=req),
    )


def finish(tier: Any, jobs: list[Any], timeout: float = 30.0) -> dict[int, JobResult]:
    """Poll get_finished_jobs (as the scheduler does once a step) until every job reported."""
    want = {j.job_id for j in jobs}
    got: dict[int, JobResult] = {}
    deadline = time.monotonic() + timeout
    while not want <= got.keys():
        for r in tier.get_finished_jobs():
            assert r.job_id not in got, f"job {r.job_id} reported twice"
            got[r.job_id] = r
        assert time.monotonic() < deadline, f"jobs {want - got.keys()} not finished in {timeout}s"
        time.sleep(0.005)
    return got


def run(tier: Any, transfer: Any, timeout: float = 30.0) -> JobResult:
    """Submit one job as the tiering manager does, and wait for its result."""
    (tier.submit_load if transfer.is_promotion else tier.submit_store)(transfer)
    return finish(tier, [transfer], timeout)[transfer.job_id]


def resolve(tier: Any, keys: list[bytes], req: Any, timeout: float = 30.0) -> list[Any]:
    """Look the keys up step by step until none is RETRY; returns the final verdicts."""
    deadline = time.monotonic() + timeout
    while True:
        verdicts = [tier.lookup(k, req) for k in keys]
        if LookupResult.RETRY not in verdicts:
            return verdicts
        assert time.monotonic() < deadline, "lookups still RETRY"
        tier.on_schedule_end(STEP)
        time.sleep(0.005)


def fill(pool: np.ndarray, rows: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for r in rows:
        pool[r] = rng.integers(0, 256, CHUNK, dtype=np.uint8)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("vllm") / "d") as d:
        yield d


@pytest.fixture
def make_tier(daemon: DaemonProcess) -> Iterator[Callable[..., tuple[Any, np.ndarray]]]:
    made: list[Any] = []

    def make(
        spec: Any = None,
        *,
        socket: Path | None = None,
        pool: np.ndarray | None = None,
        **extra: Any,
    ) -> tuple[Any, np.ndarray]:
        pool = make_pool() if pool is None else pool
        cfg = tier_config(socket or daemon.socket, **extra)
        tier = SecondaryTierFactory.create_secondary_tier(
            cfg, memoryview(pool), spec or make_spec()
        )
        made.append(tier)
        return tier, pool

    yield make
    for tier in made:
        tier.shutdown()


class Stopped:
    """SIGSTOP the daemon for the block: every call to it hangs until SIGCONT."""

    def __init__(self, d: DaemonProcess) -> None:
        assert d.proc is not None
        self.pid = d.proc.pid

    def __enter__(self) -> Stopped:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # killed while stopped
            os.kill(self.pid, signal.SIGCONT)


# -- tests without vLLM ------------------------------------------------------------------------


def test_module_imports_without_vllm_and_says_why_on_use() -> None:
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "import dualblade.integrations.vllm as m\n"
        "try:\n    m.DualBladeTier(None, None, 'x')\n"
        "except ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ImportError: DualBladeTier needs vLLM 0.33.0" in out.stdout
    assert "vllm.v1.kv_offload.tiering" in out.stdout


def test_default_tenant_is_a_legal_daemon_tenant() -> None:
    assert default_tenant("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama_Llama-3.1-8B-Instruct"
    long_a, long_b = "org/" + "a" * 80, "org/" + "a" * 79 + "b"
    assert len(default_tenant(long_a)) == 64 and default_tenant(long_a) != default_tenant(long_b)
    assert default_tenant("///") == "vllm"


# -- the environment ---------------------------------------------------------------------------


@needs_vllm
def test_transformers_pin_fits_vllm_and_dualbladecache() -> None:
    """vLLM 0.33 needs transformers < 5.21; DualBladeCache's range (pyproject) must overlap, and
    the dev install's pin must lie in both (one venv carries both integrations)."""
    from packaging.requirements import Requirement

    vllm_req = next(
        r
        for r in map(Requirement, importlib.metadata.requires("vllm") or [])
        if r.name == "transformers" and r.marker is None
    )
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ours = next(
        Requirement(s)
        for s in pyproject["project"]["optional-dependencies"]["transformers"]
        if s.startswith("transformers")
    )
    pins = [
        Requirement(line.split("#")[0].strip())
        for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
        if line.startswith("transformers")
    ]
    assert len(pins) == 1 and len(pins[0].specifier) == 1
    pinned = next(iter(pins[0].specifier)).version
    installed = importlib.metadata.version("transformers")
    for version in (pinned, installed):
        assert vllm_req.specifier.contains(version), (version, str(vllm_req))
        assert ours.specifier.contains(version), (version, str(ours))
    assert importlib.metadata.version("vllm") == VLLM_VERSION


@needs_vllm
def test_vllm_api_shapes_this_tier_relies_on() -> None:
    """The tiering API moves fast (0.29 renamed JobMetadata, 0.33 block_ids -> chunk_ids)."""
    import dataclasses
    import inspect

    assert [f.name for f in dataclasses.fields(TransferJob)][:4] == [
        "job_id",
        "keys",
        "chunk_ids",
        "is_promotion",
    ]
    assert {"successful_keys", "transfer_time", "transfer_bytes"} <= {
        f.name for f in dataclasses.fields(JobResult)
    }
    params = inspect.signature(SecondaryTierManager.__init__).parameters
    assert list(params)[1:5] == [
        "offloading_spec",
        "primary_kv_view",
        "tier_type",
        "backpressure_detector",
    ]


# -- namespace ---------------------------------------------------------------------------------


@needs_vllm
def test_namespace_separates_models_dtypes_geometry_and_parallelism() -> None:
    def prefix(chunk_bytes: int = CHUNK, **kw: Any) -> bytes:
        return key_prefix(namespace_fields(make_spec(**kw), chunk_bytes))

    base = prefix()
    assert base == prefix()  # same config, another engine: shared
    assert base.startswith(b"vllm/") and len(base) == len(b"vllm/") + 33
    for other in (
        prefix(model="org/other-model"),
        prefix(dtype="bfloat16"),
        prefix(blocks_per_chunk=8),
        prefix(chunk_bytes=2 * CHUNK),
        prefix(tp_size=2),
        prefix(tp_size=2, rank=1),
    ):
        assert other != base
    assert prefix(tp_size=2, rank=0) != prefix(tp_size=2, rank=1)
    # parallelism-agnostic layout: rank and TP size do not split the namespace
    assert prefix(tp_size=2, rank=1, agnostic=True) == prefix(tp_size=4, agnostic=True)


# -- the tier against a live daemon ------------------------------------------------------------


@needs_vllm
def test_factory_makes_the_tier_from_its_json_config(make_tier: Callable[..., Any]) -> None:
    tier, _ = make_tier()
    assert type(tier) is DualBladeTier and isinstance(tier, SecondaryTierManager)
    assert tier.tier_type == "DualBladeTier" and tier.tenant == TENANT
    assert tier.medium is Medium.STORAGE and tier.locality is not None
    assert tier.block_size_bytes == CHUNK
    default, _ = make_tier(tenant=None)
    assert default.tenant == "org_tiny-model"  # from the model name


@needs_vllm
def test_tiering_spec_builds_the_tier_with_no_patch(daemon: DaemonProcess) -> None:
    """vLLM's own TieringOffloadingSpec (the spec_name in kv_connector_extra_config) makes the
    tier from the same JSON, over its real mmapped CPU pool, and a chunk round-trips through it."""
    from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

    extra = {"cpu_bytes_to_use": 16 * CHUNK, "secondary_tiers": [tier_config(daemon.socket)]}
    manager = TieringOffloadingSpec(make_config(extra=extra)).get_manager()
    try:
        (tier,) = manager.secondary_tiers
        assert isinstance(tier, DualBladeTier) and tier.block_size_bytes == CHUNK
        pool = np.frombuffer(manager.primary_tier.get_kv_memoryview(), dtype=np.uint8)
        pool = pool.reshape(-1, CHUNK)
        fill(pool, [3], seed=7)
        want = pool[3].copy()
        keys = offload_keys(1)
        store = job(keys, [3])
        assert run(tier, store).success
        pool[5] = 0
        load = job(keys, [5], load=True)
        assert run(tier, load).success
        assert np.array_equal(pool[5], want)
        del pool
    finally:
        manager.shutdown()


@needs_vllm
def test_round_trip_is_byte_exact_into_other_slots(make_tier: Callable[..., Any]) -> None:
    tier, pool = make_tier()
    fill(pool, list(range(8)), seed=1)
    original = pool[:8].copy()
    keys = offload_keys(8)
    store = job(keys, list(range(8)))
    res = run(tier, store)
    assert res.success and res.transfer_bytes == 8 * CHUNK and res.transfer_time > 0
    pool[16:24] = 0
    slots = [23, 16, 20, 17, 22, 18, 21, 19]  # scattered, out of order
    load = job(keys, slots, load=True)
    res = run(tier, load)
    assert res.success and res.successful_keys is None and res.transfer_bytes == 8 * CHUNK
    for i, slot in enumerate(slots):
        assert np.array_equal(pool[slot], original[i]), f"chunk {i} in slot {slot}"
    assert np.array_equal(pool[:8], original)  # the source slots were only read


@needs_vllm
def test_submits_and_lookups_return_at_once_while_the_daemon_is_stopped(
    daemon: DaemonProcess, make_tier: Callable[..., Any]
) -> None:
    tier, pool = make_tier()
    fill(pool, list(range(16)), seed=2)
    stored = offload_keys(16)
    first = job(stored[:8], list(range(8)))
    assert run(tier, first).success
    req = ReqContext(req_id="busy")
    calls: list[float] = []

    def timed(fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        calls.append(time.perf_counter() - t0)
        return out

    with Stopped(daemon):
        jobs = [job(stored[8:], list(range(8, 16)))]
        timed(tier.submit_store, jobs[0])
        for n in range(4):
            jobs.append(job(stored[2 * n : 2 * n + 2], [32 + 2 * n, 33 + 2 * n], load=True))
            timed(tier.submit_load, jobs[-1])
        assert timed(tier.lookup, stored[0], req) is LookupResult.RETRY
        timed(tier.on_schedule_end, STEP)
        assert timed(tier.lookup, stored[0], req) is LookupResult.RETRY  # the batch is stuck
        assert list(timed(tier.get_finished_jobs)) == []
        assert timed(tier.has_pending_work)
        time.sleep(0.3)
        assert list(timed(tier.get_finished_jobs)) == []  # nothing can finish while stopped
    # A blocking call would have hung until SIGCONT; these bounds only separate "returned" from
    # "waited for the daemon" on a busy 2-core machine.
    assert max(calls) < 0.05 and statistics.median(calls) < 0.005, calls
    results = finish(tier, jobs)
    assert all(r.success for r in results.values())
    assert resolve(tier, [stored[0]], req) == [LookupResult.HIT]


@needs_vllm
def test_retry_then_hit_and_miss_for_unknown_and_other_models(
    make_tier: Callable[..., Any],
) -> None:
    tier, pool = make_tier()
    other_model, _ = make_tier(make_spec(model="org/other-model"))
    fill(pool, [0, 1], seed=3)
    keys = offload_keys(2)
    unknown = offload_keys(2)
    store = job(keys, [0, 1])
    assert run(tier, store).success

    req = ReqContext(req_id="q1")
    tier.on_new_request(req)
    asked = keys + unknown
    assert [tier.lookup(k, req) for k in asked] == [LookupResult.RETRY] * 4
    # without a step end nothing is sent: still RETRY however long we wait
    time.sleep(0.2)
    assert [tier.lookup(k, req) for k in asked] == [LookupResult.RETRY] * 4
    assert resolve(tier, asked, req) == [LookupResult.HIT] * 2 + [LookupResult.MISS] * 2
    tier.on_request_finished(req)

    # same tenant, same keys, another model: its namespace holds none of them
    req2 = ReqContext(req_id="q2")
    assert resolve(other_model, keys, req2) == [LookupResult.MISS] * 2


@needs_vllm
def test_partial_load_reports_the_keys_that_loaded(
    daemon: DaemonProcess, make_tier: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tier, pool = make_tier()
    fill(pool, [0, 2], seed=4)
    want = {0: pool[0].copy(), 2: pool[2].copy()}
    keys = offload_keys(4)
    store = job([keys[0], keys[2]], [0, 2])
    assert run(tier, store).success
    # keys[3] exists but is not chunk-sized (written by someone else): it must not load
    with Client.connect(daemon.socket, tenant=TENANT, arena_bytes=1 << 20) as kv:
        kv.put(tier.key_prefix + keys[3], b"x" * (CHUNK // 2), persistent=True)

    req = ReqContext(req_id="partial")
    assert resolve(tier, keys, req) == [
        LookupResult.HIT,
        LookupResult.MISS,
        LookupResult.HIT,
        LookupResult.MISS,  # there, but not a chunk of this geometry
    ]
    pool[40:44] = 0  # a load of all four (as after a race with a delete): two of them load
    gets: list[int] = []  # get ops per data-plane call: the partial load is one Batch
    real_call = LeasePlane.call

    def spy(self: LeasePlane, request: bytes) -> bytes:
        ops = pb.BatchRequest.FromString(request).ops
        gets.extend([sum(op.WhichOneof("op") == "get" for op in ops)] if ops else [])
        return real_call(self, request)

    monkeypatch.setattr(LeasePlane, "call", spy)
    load = job(keys, [40, 41, 42, 43], load=True, req="partial")
    res = run(tier, load)
    monkeypatch.undo()
    assert [n for n in gets if n] == [4]
    assert not res.success
    assert set(res.successful_keys) == {keys[0], keys[2]}
    assert res.transfer_bytes == 2 * CHUNK
    assert np.array_equal(pool[40], want[0]) and np.array_equal(pool[42], want[2])
    assert not pool[41].any()  # the missing chunk's slot is untouched
    # the failed chunk's HIT is withdrawn so the scheduler does not retry the same load forever
    assert tier.lookup(keys[3], req) is LookupResult.MISS
    assert tier.lookup(keys[0], req) is LookupResult.HIT


@needs_vllm
def test_store_events_when_enabled(make_tier: Callable[..., Any]) -> None:
    tier, pool = make_tier(make_spec(events=True), enable_kv_events=True)
    keys = offload_keys(3)
    store = job(keys, [0, 1, 2])
    assert run(tier, store).success
    (event,) = list(tier.take_events())
    assert event.keys == keys and event.medium is Medium.STORAGE and not event.removed
    assert event.locality is not None and event.locality.value == "LOCAL"
    assert list(tier.take_events()) == []


@needs_vllm
def test_two_tiers_share_chunks(make_tier: Callable[..., Any]) -> None:
    """Two engines with the same model and tenant: one stores, the other hits and loads."""
    writer, pool_a = make_tier()
    reader, pool_b = make_tier()
    assert writer.key_prefix == reader.key_prefix
    fill(pool_a, [4, 5, 6], seed=5)
    keys = offload_keys(3)
    store = job(keys, [4, 5, 6])
    assert run(writer, store).success
    req = ReqContext(req_id="reader")
    assert resolve(reader, keys, req) == [LookupResult.HIT] * 3
    load = job(keys, [60, 61, 62], load=True, req="reader")
    assert run(reader, load).success
    assert np.array_equal(pool_b[60:63], pool_a[4:7])


@needs_vllm
def test_drain_jobs_waits_for_jobs_in_flight(
    daemon: DaemonProcess, make_tier: Callable[..., Any]
) -> None:
    tier, pool = make_tier()
    fill(pool, list(range(12)), seed=6)
    keys = offload_keys(12)
    with Stopped(daemon):
        jobs = [job(keys[i : i + 4], list(range(i, i + 4))) for i in (0, 4, 8)]
        for j in jobs:
            tier.submit_store(j)
        drained = threading.Event()
        drainer = threading.Thread(target=lambda: (tier.drain_jobs(), drained.set()))
        drainer.start()
        assert not drained.wait(0.5), "drain_jobs returned while jobs were stuck in the daemon"
    assert drained.wait(30)
    drainer.join()
    # drained means reported: one poll, no waiting, has every result
    results = {r.job_id: r for r in tier.get_finished_jobs()}
    assert set(results) == {j.job_id for j in jobs} and all(r.success for r in results.values())
    assert not tier.has_pending_work()


@needs_vllm
def test_shutdown_closes_the_session(daemon: DaemonProcess, make_tier: Callable[..., Any]) -> None:
    tenant = f"shut-{uuid.uuid4().hex[:8]}"
    tier, _ = make_tier(tenant=tenant)

    def sessions() -> int:
        with Client.connect(daemon.socket, tenant="admin-probe", arena_bytes=1 << 20) as kv:
            reply = kv.admin_call("Tenants", pb.TenantsRequest())
        return sum(t.sessions for t in reply.tenants if t.label == tenant)

    assert sessions() == 1
    tier.shutdown()
    deadline = time.monotonic() + 10
    while sessions() != 0:
        assert time.monotonic() < deadline, "the tier's session outlived shutdown()"
        time.sleep(0.05)


@needs_vllm
def test_daemon_sigkill_mid_job_fails_jobs_then_the_tier_reconnects(
    tmp_path: Path, make_tier: Callable[..., Any]
) -> None:
    with DaemonProcess(tmp_path / "d") as d:
        tier, pool = make_tier(socket=d.socket)
        fill(pool, list(range(12)), seed=8)
        want = pool[:12].copy()
        keys = offload_keys(12)
        kept = job(keys[:4], [0, 1, 2, 3])
        assert run(tier, kept).success

        with Stopped(d):  # the jobs below are in the daemon's hands when it dies
            mid = [job(keys[4:8], [4, 5, 6, 7]), job(keys[:4], [40, 41, 42, 43], load=True)]
            for j in mid:
                (tier.submit_load if j.is_promotion else tier.submit_store)(j)
            time.sleep(0.2)
            d.kill()
        results = finish(tier, mid, timeout=20)
        assert [results[j.job_id].success for j in mid] == [False, False], results
        assert not results[mid[1].job_id].successful_keys
        # the engine keeps running: lookups answer MISS, submits still return
        req = ReqContext(req_id="dead")
        assert resolve(tier, keys[:1], req) == [LookupResult.MISS]
        tier.on_request_finished(req)
        dead = job(keys[8:12], [8, 9, 10, 11])
        assert not run(tier, dead).success

        d.start()  # same namespace and state: what was acknowledged before the kill is there
        # The engine just goes on offloading; a job may still fail while the new daemon warms up
        # (connect time-out, back-off), and then the tier is back with no outside help.
        deadline = time.monotonic() + 30
        while not run(tier, job(keys[8:12], [8, 9, 10, 11])).success:
            assert time.monotonic() < deadline, f"the tier did not reconnect:\n{d.log_tail(20)}"
            time.sleep(0.2)
        pool[40:48] = 0
        load = job(keys[:4] + keys[8:12], list(range(40, 48)), load=True)
        assert run(tier, load).success, d.log_tail(20)
        assert np.array_equal(pool[40:44], want[:4]) and np.array_equal(pool[44:48], want[8:12])
        req = ReqContext(req_id="alive")
        assert resolve(tier, keys[:1], req) == [LookupResult.HIT]
        assert tier._conn.connects == 2
        _, values = tier.get_stats().metric_sections()
        assert values["vllm:dualblade_reconnects"] == {(): 1}
        assert values["vllm:dualblade_chunks"][("store", "failed")] >= 8  # mid + dead
        tier.shutdown()


@needs_vllm
def test_metrics_through_vllms_stats_and_definitions(
    daemon: DaemonProcess, make_tier: Callable[..., Any]
) -> None:
    """Hits, misses, chunks, bytes and latencies reach vLLM's stats payload, under names that
    TieringOffloadingSpec declares from the tier config (a name it did not declare would fail
    vLLM's Prometheus logger)."""
    from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

    extra = {"cpu_bytes_to_use": 16 * CHUNK, "secondary_tiers": [tier_config(daemon.socket)]}
    declared = TieringOffloadingSpec.build_metric_definitions(extra)
    tier, pool = make_tier()
    assert tier.get_stats() is None  # nothing observed yet
    fill(pool, [0, 1, 2], seed=10)
    keys = offload_keys(3)
    assert run(tier, job(keys[:2], [0, 1])).success
    req = ReqContext(req_id="metrics")
    assert resolve(tier, keys, req) == [LookupResult.HIT] * 2 + [LookupResult.MISS]
    res = run(tier, job(keys, [10, 11, 12], load=True, req="metrics"))
    assert not res.success and set(res.successful_keys) == set(keys[:2])

    stats = tier.get_stats()
    types, values = stats.metric_sections()
    assert set(types) <= set(declared)
    assert values["vllm:dualblade_lookup_keys"] == {("hit",): 2, ("miss",): 1}
    assert values["vllm:dualblade_chunks"] == {
        ("store", "ok"): 2,
        ("load", "ok"): 2,
        ("load", "failed"): 1,
    }
    assert values["vllm:dualblade_bytes"] == {("store",): 2 * CHUNK, ("load",): 2 * CHUNK}
    assert [len(v) for v in values["vllm:dualblade_job_seconds"].values()] == [1, 1]
    assert all(0 < s < 30 for s in values["vllm:dualblade_lookup_seconds"][()])
    assert "vllm:dualblade_reconnects" not in values  # one session so far
    assert tier.get_stats() is None  # taken means reset


# -- capacity: eviction and hit pins ------------------------------------------------------------


def tenant_row(d: DaemonProcess, label: str = TENANT) -> Any:
    """The daemon's Tenants row for ``label`` (objects, evictions, pins), as dbctl shows it."""
    with Client.connect(d.socket, tenant="admin-probe", arena_bytes=1 << 20) as kv:
        reply = kv.admin_call("Tenants", pb.TenantsRequest())
    return next(t for t in reply.tenants if t.label == label)


def quota_daemon(tmp_path: Path, chunks: int) -> DaemonProcess:
    cfg = tmp_path / "dualblade.toml"
    cfg.write_text(f'[quotas]\ndefault_bytes = "{chunks * CHUNK // 1024}KiB"\n')
    return DaemonProcess(tmp_path / "d", config=cfg)


@needs_vllm
def test_eviction_under_quota_keeps_pinned_hits(
    tmp_path: Path, make_tier: Callable[..., Any]
) -> None:
    """A 16-chunk quota, 8 chunks pinned by a HIT, 24 more stored: every store succeeds by
    evicting the least recently used unpinned chunks, and the pinned ones still load."""
    with quota_daemon(tmp_path, 16) as d:
        tier, pool = make_tier(socket=d.socket)
        fill(pool, list(range(8)), seed=9)
        want = pool[:8].copy()
        pinned = offload_keys(8)
        assert run(tier, job(pinned, list(range(8)))).success
        req = ReqContext(req_id="pinned")
        assert resolve(tier, pinned, req) == [LookupResult.HIT] * 8  # HIT pins them
        assert tenant_row(d).pins == 8
        others = [offload_keys(8) for _ in range(3)]
        for n, keys in enumerate(others):  # 24 more chunks through the 8 the quota has left
            store = job(keys, list(range(8 + 8 * n, 16 + 8 * n)))
            assert run(tier, store).success, "a store over quota must evict, not fail"
        row = tenant_row(d)
        # at least the 16 chunks that did not fit; concurrent puts at a full quota may evict a
        # few more (the daemon's reservations are conservative), never a pinned one
        assert row.evictions >= 16 and row.objects <= 16 and row.bytes <= 16 * CHUNK
        pool[40:48] = 0
        load = job(pinned, list(range(40, 48)), load=True, req="pinned")
        assert run(tier, load).success
        assert np.array_equal(pool[40:48], want)
        tier.on_request_finished(req)
        # LRU: the oldest unpinned batch went first
        later = ReqContext(req_id="later")
        assert resolve(tier, others[0], later) == [LookupResult.MISS] * 8
        tier.on_request_finished(later)
        tier.shutdown()


@needs_vllm
def test_a_request_that_finishes_without_loading_gives_its_pins_back(
    tmp_path: Path, make_tier: Callable[..., Any]
) -> None:
    with quota_daemon(tmp_path, 16) as d:
        tier, pool = make_tier(socket=d.socket)
        fill(pool, list(range(16)), seed=11)
        first = offload_keys(8)
        assert run(tier, job(first, list(range(8)))).success
        req = ReqContext(req_id="abandoned")
        assert resolve(tier, first, req) == [LookupResult.HIT] * 8
        shared = ReqContext(req_id="sharer")  # answered from the same verdicts: same pins
        assert [tier.lookup(k, shared) for k in first[:2]] == [LookupResult.HIT] * 2
        assert tenant_row(d).pins == 8
        tier.on_request_finished(req)  # the sharer still relies on two of them
        deadline = time.monotonic() + 10
        while tenant_row(d).pins != 2:
            assert time.monotonic() < deadline, f"pins: {tenant_row(d).pins}, want 2"
            time.sleep(0.05)
        tier.on_request_finished(shared)
        while tenant_row(d).pins != 0:
            assert time.monotonic() < deadline, f"pins: {tenant_row(d).pins}, want 0"
            time.sleep(0.05)
        # unpinned, the older chunks are evicted first when new ones need the room
        assert run(tier, job(offload_keys(16), list(range(16)))).success
        assert tenant_row(d).evictions >= 8
        assert resolve(tier, first, ReqContext(req_id="again")) == [LookupResult.MISS] * 8
        tier.shutdown()


@needs_vllm
def test_touch_keeps_chunks_young_in_the_daemons_lru(
    tmp_path: Path, make_tier: Callable[..., Any]
) -> None:
    """vLLM's ``touch`` returns at once and sends a TouchOp per chunk: the touched (older)
    chunks outlive the untouched (younger) ones when the quota must evict."""
    with quota_daemon(tmp_path, 16) as d:
        tier, pool = make_tier(socket=d.socket)
        fill(pool, list(range(20)), seed=12)
        old, young = offload_keys(8), offload_keys(8)
        assert run(tier, job(old, list(range(8)))).success
        time.sleep(0.01)
        assert run(tier, job(young, list(range(8, 16)))).success
        with Client.connect(d.socket, tenant=TENANT, arena_bytes=1 << 20) as kv:
            start = time.perf_counter()
            tier.touch(old, ReqContext(req_id="t"))  # a scheduler-side call: never waits
            assert time.perf_counter() - start < 0.05
            newest_young = max(kv.stat(tier.key_prefix + k).last_access for k in young)
            deadline = time.monotonic() + 10
            while min(kv.stat(tier.key_prefix + k).last_access for k in old) <= newest_young:
                assert time.monotonic() < deadline, "the touches never reached the daemon"
                time.sleep(0.02)
        assert run(tier, job(offload_keys(4), list(range(16, 20)))).success  # evicts 4+
        req = ReqContext(req_id="after")
        assert resolve(tier, old, req) == [LookupResult.HIT] * 8
        young_hits = resolve(tier, young, req).count(LookupResult.HIT)
        assert young_hits <= 4
        assert tenant_row(d).pins == 8 + young_hits  # the HITs' pins: a touch took none
        tier.on_request_finished(req)
        tier.touch(offload_keys(2), req)  # unknown chunks: misses in the daemon, no error
        tier.shutdown()
