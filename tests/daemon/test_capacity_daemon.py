"""Issue 13's daemon features on the real ``dualbladed``: batched stat with hit pins, LRU
eviction under a tenant quota and on a full namespace, evictions in dbctl and /metrics, the pin
cap, bad stat/unpin input, and durable deletes across a SIGKILL.

One daemon (file namespace, residency forced to ``direct`` so every object's path is known)
serves the module; each test uses its own tenant label. The namespace-full test runs its own
small daemon, because path eviction crosses tenants and would eat the other tests' objects.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dualblade import Client, errors
from dualblade.client import DATAPLANE_ENV
from dualblade.v1 import dualblade_pb2 as pb
from dualblade_tools.daemonproc import DaemonProcess

KB256 = 256 << 10
QUOTA = 4 * KB256  # 1 MiB: four 256 KiB objects
MAX_PINS = 4
MAX_PIN_MS = 120_000
UID = os.getuid()
C = grpc.StatusCode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, int]]:
    root = tmp_path_factory.mktemp("capacity")
    port = _free_port()
    cfg = root / "d.toml"
    cfg.write_text(
        f"""
[limits]
max_pins_per_session = {MAX_PINS}
max_pin_ms = {MAX_PIN_MS}

[residency]
mode = "direct"

[metrics]
prometheus_address = "127.0.0.1:{port}"

[quotas.per_tenant]
q = "{QUOTA}"
qt = "{QUOTA}"
touch-lease = "{QUOTA}"
touch-grpc = "{QUOTA}"
"""
    )
    with DaemonProcess(root / "d", namespace_size="64MiB", config=cfg) as d:
        yield d, port


def connect(d: DaemonProcess, tenant: str) -> Client:
    return Client.connect(d.socket, tenant=tenant, arena_bytes=8 << 20)


def blob(i: int, n: int = KB256) -> bytes:
    return bytes([i % 251]) * n


def present(c: Client, keys: list[bytes]) -> set[bytes]:
    return {k for k, ok in zip(keys, c.contains_many(keys)) if ok}


def wait_for_pins(c: Client, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (pins := c.admin_call("Status", pb.StatusRequest()).pins) != n:
        assert time.monotonic() < deadline, f"{pins} pins held, expected {n}"
        time.sleep(0.05)


def dbctl_json(d: DaemonProcess, *args: str) -> Any:
    cmd = [sys.executable, "-m", "dualblade_tools.dbctl", "--socket", str(d.socket), "--json"]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    """``{(sample, tenant, path): value}`` of the eviction counters."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("dualblade_evict"):
                out[(s.name, s.labels["tenant"], s.labels["path"])] = s.value
    return out


# -- stat_many ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["lease", "grpc"])
def test_stat_many_hits_and_misses_in_one_batch(
    daemon: tuple[DaemonProcess, int], transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _ = daemon
    if transport == "grpc":
        monkeypatch.setenv(DATAPLANE_ENV, "grpc")
    else:
        monkeypatch.delenv(DATAPLANE_ENV, raising=False)
    label = f"stat-{transport}"
    with connect(d, label) as c, connect(d, "stat-elsewhere") as other:
        assert c.dataplane == transport
        hashed = [os.urandom(32) for _ in range(40)]
        c.put_many([(k, blob(i, 1000 + i)) for i, k in enumerate(hashed[::2])], persistent=True)
        c.put(hashed[1], b"e" * 77)  # ephemeral
        other.put(hashed[3], b"x" * 10, persistent=True)  # another tenant's: a miss for c
        batches: list[int] = []
        real = c._batch
        c._batch = lambda ops, **kw: batches.append(len(ops)) or real(ops, **kw)  # type: ignore[method-assign]
        try:
            infos = c.stat_many(hashed)
            assert c.contains_many(hashed) == [i is not None for i in infos]
        finally:
            del c._batch
        assert batches == [40, 40]  # one round trip each, not one per key
        for i, (key, info) in enumerate(zip(hashed, infos)):
            if i % 2 == 0:
                assert info is not None and info.key == key
                assert (info.size, info.path, info.persistent) == (1000 + i // 2, "direct", True)
                assert info.generation > 0 and not info.pinned
            elif i == 1:
                assert info is not None and (info.size, info.persistent) == (77, False)
            else:
                assert info is None, i
        assert c.stat_many([]) == [] and c.contains_many([]) == []
        assert other.contains_many([hashed[0], hashed[3]]) == [False, True]


# -- quota eviction, LRU order, pins ------------------------------------------------------------


def test_quota_evicts_lru_and_pins_hold_until_read(daemon: tuple[DaemonProcess, int]) -> None:
    d, port = daemon
    keys = [b"q%d" % i for i in range(10)]
    with connect(d, "q") as c:
        for i in range(4):
            c.put(keys[i], blob(i), persistent=True)
            time.sleep(0.002)
        assert c.get(keys[0]) == blob(0)  # order now q1, q2, q3, q0
        c.put(keys[4], blob(4), persistent=True)  # quota full: q1 goes
        assert present(c, keys[:5]) == {keys[0], keys[2], keys[3], keys[4]}

        (hit,) = c.stat_many([keys[2]], pin_ms=60_000)  # the oldest now, pinned
        assert hit is not None and hit.pinned
        c.put(keys[5], blob(5), persistent=True)
        assert present(c, keys[:6]) == {keys[0], keys[2], keys[4], keys[5]}  # q3 went, not q2
        assert c.get(keys[2]) == blob(2)  # the load: the pin ends (and q2 is the youngest)
        for i in (6, 7, 8):  # evicts q0, q4, q5
            c.put(keys[i], blob(i), persistent=True)
        assert present(c, keys) == {keys[2], keys[6], keys[7], keys[8]}
        c.put(keys[9], blob(9), persistent=True)  # q2 is the oldest and unpinned: it goes
        assert keys[2] not in present(c, keys)

        with pytest.raises(errors.ResourceExhausted, match="quota"):  # cannot fit at all
            c.put(b"huge", blob(1, QUOTA + 4096), persistent=True)
        assert present(c, keys) == {keys[6], keys[7], keys[8], keys[9]}  # nothing evicted

    tenant = f"{UID}/q"
    (row,) = [t for t in dbctl_json(d, "tenants") if t["tenant"] == tenant]
    assert row["evictions"] == 6 and row["evicted_bytes"] == 6 * KB256
    status = dbctl_json(d, "status")
    assert status["evictions"] >= 6 and status["evicted_bytes"] >= 6 * KB256
    scraped = scrape(port)
    assert scraped[("dualblade_evictions_total", tenant, "direct")] == 6
    assert scraped[("dualblade_evicted_bytes_total", tenant, "direct")] == 6 * KB256


def test_pin_times_out_and_ends_with_the_session(daemon: tuple[DaemonProcess, int]) -> None:
    d, _ = daemon
    keys = [b"t%d" % i for i in range(8)]
    with connect(d, "qt") as c:
        for i in range(4):
            c.put(keys[i], blob(i), persistent=True)
            time.sleep(0.002)
        with connect(d, "qt") as pinner:  # another session of the tenant pins t0 and t1
            assert [i.pinned for i in pinner.stat_many(keys[:2], pin_ms=60_000)] == [True] * 2
            (short,) = c.stat_many([keys[2]], pin_ms=200)
            assert short is not None and short.pinned
            c.put(keys[4], blob(4), persistent=True)
            assert present(c, keys[:5]) == set(keys[:5]) - {keys[3]}  # t0..t2 pinned
            time.sleep(0.3)  # t2's pin times out
            c.put(keys[5], blob(5), persistent=True)
            assert keys[2] not in present(c, keys)
            assert {keys[0], keys[1]} <= present(c, keys)
            assert dbctl_json(d, "status")["pins"] >= 2
        # the pinner's session ended (the daemon sees its lease close): its pins with it, so
        # t0 and t1 are the oldest evictable objects again
        wait_for_pins(c, 0)
        c.put(keys[6], blob(6), persistent=True)
        c.put(keys[7], blob(7), persistent=True)
        assert present(c, keys) == {keys[4], keys[5], keys[6], keys[7]}


def test_pin_cap_is_a_typed_error_and_unpin_frees_room(
    daemon: tuple[DaemonProcess, int],
) -> None:
    d, _ = daemon
    keys = [b"cap%d" % i for i in range(MAX_PINS + 1)]
    with connect(d, "cap") as c:
        info = c.session_info()
        assert (info.max_pins_per_session, info.max_pin_ms) == (MAX_PINS, MAX_PIN_MS)
        assert info.evict_persistent
        c.put_many([(k, b"v") for k in keys], persistent=True)
        assert all(i.pinned for i in c.stat_many(keys[:MAX_PINS], pin_ms=10_000))
        assert c.stat_many(keys[:1], pin_ms=10_000)[0].pinned  # re-pin: extends, no new pin
        with pytest.raises(errors.ResourceExhausted, match="max_pins_per_session"):
            c.stat_many(keys[MAX_PINS:], pin_ms=10_000)
        assert c.stat_many(keys[MAX_PINS:])[0] is not None  # a plain stat is fine
        with connect(d, "cap") as other:  # the cap is per session
            assert other.stat_many(keys[MAX_PINS:], pin_ms=10_000)[0].pinned
        assert c.unpin_many([keys[0], keys[0], b"never"]) == [True, False, False]
        assert c.stat_many(keys[MAX_PINS:], pin_ms=10_000)[0].pinned


def test_bad_stat_and_unpin_ops_get_precise_per_op_statuses(
    daemon: tuple[DaemonProcess, int],
) -> None:
    d, _ = daemon
    with connect(d, "badstat") as c:
        c.put(b"k", b"v", persistent=True)
        request = pb.BatchRequest(
            ops=[
                pb.Op(stat=pb.StatOp(key=b"k", pin_ms=MAX_PIN_MS + 1)),
                pb.Op(stat=pb.StatOp(key=b"")),
                pb.Op(unpin=pb.UnpinOp(key=b"")),
                pb.Op(stat=pb.StatOp(key=b"x" * 5000)),
                pb.Op(stat=pb.StatOp(key=b"missing", pin_ms=1000)),
                pb.Op(stat=pb.StatOp(key=b"k", pin_ms=1000)),
                pb.Op(unpin=pb.UnpinOp(key=b"k")),
            ]
        )
        results = c._store.Batch(request, metadata=c._metadata).results
        names = {s.value[0]: s.name for s in C}
        got = [(names[r.code], r.message) for r in results]
        assert got[0][0] == "INVALID_ARGUMENT" and "pin_ms" in got[0][1]
        assert str(MAX_PIN_MS) in got[0][1]
        assert got[1][0] == "INVALID_ARGUMENT" and "key length 0" in got[1][1]
        assert got[2][0] == "INVALID_ARGUMENT" and "key length 0" in got[2][1]
        assert got[3][0] == "INVALID_ARGUMENT" and "key length 5000" in got[3][1]
        assert got[4][0] == "NOT_FOUND" and not results[4].pinned
        assert got[5][0] == "OK" and results[5].pinned and results[5].size == 1
        assert got[6][0] == "OK" and results[6].pinned
        # an Op with nothing set fails the whole call, naming the choices
        with pytest.raises(grpc.RpcError) as err:
            c._store.Batch(pb.BatchRequest(ops=[pb.Op()]), metadata=c._metadata)
        assert err.value.code() is C.INVALID_ARGUMENT
        assert "stat, unpin, touch" in (err.value.details() or "")
        assert c.get(b"k") == b"v"  # the daemon is fine


@pytest.mark.parametrize("transport", ["lease", "grpc"])
def test_touch_keeps_keys_from_quota_eviction_and_reports_each_op(
    daemon: tuple[DaemonProcess, int], transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TouchOp (vLLM's ``touch``): a touched key goes to the young end of the tenant's LRU
    without being read, so the quota evicts an untouched one; a miss is the op's NOT_FOUND,
    a bad key the op's INVALID_ARGUMENT naming it, and nothing gets pinned."""
    d, _ = daemon
    if transport == "grpc":
        monkeypatch.setenv(DATAPLANE_ENV, "grpc")
    else:
        monkeypatch.delenv(DATAPLANE_ENV, raising=False)
    keys = [b"t%d" % i for i in range(6)]
    with connect(d, f"touch-{transport}") as c:
        assert c.dataplane == transport
        for i in range(4):  # the quota holds four
            c.put(keys[i], blob(i), persistent=True)
            time.sleep(0.002)
        assert c.touch_many([keys[0], keys[1], b"absent"]) == [True, True, False]
        assert c.admin_call("Status", pb.StatusRequest()).pins == 0
        c.put(keys[4], blob(4), persistent=True)
        c.put(keys[5], blob(5), persistent=True)
        assert present(c, keys) == {keys[0], keys[1], keys[4], keys[5]}
        assert c.get(keys[0]) == blob(0)
        results = c._batch(
            [
                pb.Op(touch=pb.TouchOp(key=keys[1])),
                pb.Op(touch=pb.TouchOp(key=b"")),
                pb.Op(touch=pb.TouchOp(key=b"x" * 5000)),
                pb.Op(touch=pb.TouchOp(key=b"absent")),
            ],
            per_op=True,
        )
        names = {s.value[0]: s.name for s in C}
        got = [(names[r.code], r.message) for r in results]
        assert got[0][0] == "OK" and results[0].size == KB256 and results[0].persistent
        assert got[1][0] == "INVALID_ARGUMENT" and "key length 0" in got[1][1]
        assert got[2][0] == "INVALID_ARGUMENT" and "key length 5000" in got[2][1]
        assert got[3][0] == "NOT_FOUND" and "absent" in got[3][1]
        assert c.touch_many([]) == []


def test_uid_quota_evicts_lru_over_the_uids_labels(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[residency]\nmode = "direct"\n\n[quotas.per_uid]\n{UID} = "{QUOTA}"\n')
    d = DaemonProcess(tmp_path / "d", namespace_size="32MiB", config=cfg)
    with d, connect(d, "ua") as a, connect(d, "ub") as b:
        a.put(b"a0", blob(0), persistent=True)
        time.sleep(0.002)
        b.put(b"b0", blob(1), persistent=True)
        time.sleep(0.002)
        a.put(b"a1", blob(2), persistent=True)
        b.put(b"b1", blob(3), persistent=True)  # the uid's 1 MiB is full
        b.put(b"b2", blob(4), persistent=True)  # evicts a0: the uid's oldest, another label
        assert a.contains_many([b"a0", b"a1"]) == [False, True]
        assert b.contains_many([b"b0", b"b1", b"b2"]) == [True, True, True]
        rows = {t["tenant"]: t for t in dbctl_json(d, "tenants")}
        assert rows[f"{UID}/ua"]["evictions"] == 1 and rows[f"{UID}/ub"]["evictions"] == 0


# -- durable delete -----------------------------------------------------------------------------


def test_durable_delete_stays_deleted_after_sigkill(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "d", namespace_size="32MiB") as d:
        with connect(d, "dd") as c:
            c.put_many([(b"a", b"1" * 5000), (b"b", b"2" * 5000)], persistent=True, durable=True)
            c.delete(b"a", durable=True)
            c.delete_many([b"b"], durable=True)
            assert c.contains_many([b"a", b"b"]) == [False, False]
        d.restart()  # SIGKILL: no checkpoint, no clean close
        with connect(d, "dd") as c:
            assert c.contains_many([b"a", b"b"]) == [False, False]


# -- namespace full -----------------------------------------------------------------------------


def test_full_namespace_evicts_lru_across_tenants(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('[residency]\nmode = "direct"\n')
    mb4 = 4 << 20
    d = DaemonProcess(tmp_path / "d", namespace_size="32MiB", config=cfg)
    with d, connect(d, "nsa") as a, connect(d, "nsb") as b:
        a.put(b"old", blob(1, mb4), persistent=True)
        assert a.stat_many([b"old"], pin_ms=60_000)[0].pinned
        time.sleep(0.002)
        b.put(b"b-old", blob(2, mb4), persistent=True)
        for i in range(12):  # three times what is left: must evict to succeed
            b.put(b"n%d" % i, blob(i, mb4), persistent=True)
        assert a.contains_many([b"old"]) == [True]  # pinned: survived
        assert b.contains_many([b"b-old", b"n11"]) == [False, True]
        assert a.get(b"old") == blob(1, mb4)
        eph = [(b"e%d" % i, blob(i, mb4)) for i in range(8)]
        with pytest.raises(errors.ResourceExhausted, match="out of space"):
            b.put_many(eph)  # ephemeral puts evict persistent ones, but never each other
        rows = {t["tenant"]: t for t in dbctl_json(d, "tenants")}
        assert rows[f"{UID}/nsb"]["evictions"] >= 5
        assert rows[f"{UID}/nsa"]["evictions"] == 1  # "old", once its pin ended
