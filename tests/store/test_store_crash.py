"""Crash consistency of the object store on real files.

- Dirty shutdown (SPDK ``blob_dirty_shutdown``): the store is abandoned without ``close()``
  (only the namespace fd is closed, as process death would) and a fresh store opens the same
  files.
- Power-failure sweep (SPDK ``bs_dev_common.c``): a fixed, seeded sequence of persistent puts,
  overwrites and deletes runs on a :class:`FaultyNamespace` that fails every write after the
  N-th, for every N from 0 to the total write count; then a fresh store opens the real file.

The metadata lives on the real filesystem and the process does not really die, so SQLite keeps
every commit; what the sweep proves is that a failed data write never reaches the metadata,
never damages the previous version and never leaks its extent.
"""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest
from objectstore_utils import check_consistent, open_store, payload

from dualbladed.errors import DeviceIOError, NotFound
from dualbladed.namespace.faulty import FaultyNamespace
from dualbladed.namespace.file import FileNamespace

T = "1000/llama"
SWEEP_NS_BYTES = 8 << 20
Model = dict[tuple[str, bytes], bytes]


def test_dirty_shutdown_keeps_committed_and_frees_the_rest(tmp_path: Path) -> None:
    ns = FileNamespace(tmp_path / "ns.img", 64 << 20)
    store = open_store(ns, tmp_path / "state")
    model: Model = {}
    for i in range(20):
        key = b"obj%02d" % (i % 12)  # some keys are overwritten
        data = payload(i, 3000 + 4096 * (i % 5))
        store.put(T, key, memoryview(data), persistent=True, durable=i % 3 == 0)
        model[(T, key)] = data
    for key in (b"obj01", b"obj05"):
        store.delete(T, key)
        del model[(T, key)]
    persistent_used = store.stats().paths["direct"].alloc.used
    last_generation = max(i.generation for i in store.list(None))
    store.put(T, b"eph", memoryview(payload(99, 50_000)), session="s1")
    store.put("2/x", b"eph2", memoryview(payload(98, 5000)))
    # space allocated but never committed (a put in flight when the process died)
    store.paths["direct"].allocate(1 << 20)
    capacity = store.stats().paths["direct"].alloc.capacity

    ns.close()  # the kernel drops the fd (and its flock) when the process dies
    del store  # abandoned: no close(), no flush, no checkpoint
    gc.collect()

    ns2 = FileNamespace(tmp_path / "ns.img")
    fresh = open_store(ns2, tmp_path / "state")
    assert check_consistent(fresh) == model
    alloc = fresh.stats().paths["direct"].alloc
    assert alloc.used == persistent_used
    assert alloc.free == capacity - persistent_used
    assert fresh.stats().ephemeral_objects == 0
    info = fresh.put(T, b"after", memoryview(b"x"), persistent=True)
    assert info.generation > last_generation
    fresh.close()
    ns2.close()


def _ops(seed: int = 1234) -> list[tuple[str, bytes, int, bool]]:
    """(op, key, payload seed, durable): puts, overwrites and deletes over 5 keys."""
    rng = random.Random(seed)
    ops: list[tuple[str, bytes, int, bool]] = []
    live: set[bytes] = set()
    for i in range(24):
        key = b"k%d" % rng.randrange(5)
        if key in live and rng.random() < 0.3:
            ops.append(("delete", key, 0, False))
            live.discard(key)
        else:
            ops.append(("put", key, i, rng.random() < 0.5))
            live.add(key)
    return ops


def _size(seed: int) -> int:
    return 1000 + (seed * 7919) % (60 << 10)


def _run(
    tmp: Path, fail_after: int | None, *, torn: bool, stop_at_failure: bool
) -> tuple[Model, int]:
    """Run the scenario; return the model of acknowledged ops and the writes it attempted."""
    tmp.mkdir(parents=True)
    inner = FileNamespace(tmp / "ns.img", SWEEP_NS_BYTES)
    open_store(inner, tmp / "state").close()  # format outside the fault window
    faulty = FaultyNamespace(inner, fail_after_writes=fail_after, torn=torn)
    store = open_store(faulty, tmp / "state")
    model: Model = {}
    for op, key, seed, durable in _ops():
        try:
            if op == "put":
                data = payload(seed, _size(seed))
                store.put(T, key, memoryview(data), persistent=True, durable=durable)
                model[(T, key)] = data
            else:
                store.delete(T, key)
                del model[(T, key)]
        except DeviceIOError:
            if stop_at_failure:
                break
        except NotFound:  # deleting a key whose put failed: the model agrees it is absent
            assert (T, key) not in model
    writes = faulty.stats.writes
    inner.close()  # crash: the store is abandoned
    del store
    return model, writes


def _total_writes(tmp_path: Path) -> int:
    model, writes = _run(tmp_path / "count", None, torn=False, stop_at_failure=True)
    assert len(model) >= 3
    return writes


@pytest.mark.parametrize(
    ("torn", "stop_at_failure"),
    [(False, True), (True, True), (False, False), (True, False)],
    ids=["eio-crash", "torn-crash", "eio-continue", "torn-continue"],
)
def test_power_failure_sweep(tmp_path: Path, torn: bool, stop_at_failure: bool) -> None:
    total = _total_writes(tmp_path)
    assert total >= 15
    for n in range(total + 1):
        tmp = tmp_path / f"n{n}"
        model, _ = _run(tmp, n, torn=torn, stop_at_failure=stop_at_failure)
        ns = FileNamespace(tmp / "ns.img")
        store = open_store(ns, tmp / "state")
        try:
            assert store._meta.integrity_check() == "ok"
            # every acknowledged op is visible, nothing unacknowledged is
            assert check_consistent(store) == model, f"state differs after failing write {n}"
        finally:
            store.close()
            ns.close()
