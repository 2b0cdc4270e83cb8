"""Admin role, Prometheus metrics, JSON logs and clean shutdown, on the real daemon.

Admin: the Admin service answers uid 0 and members of the configured admin group only. The test
creates a throw-away group with ``groupadd`` (root only; removed afterwards) and runs clients as
uid 65534 in child processes through ``privdrop_utils.run_as``, which imports first and then
drops privileges (the checkout and its venv may lie where 'nobody' cannot read). The daemon runs
in a ``shared_tmpdir`` with its sockets opened to others, so those children can reach it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dualblade import Client, errors
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade_tools.daemonproc import DaemonProcess
from dualbladed.server import GRACE_S
from privdrop_utils import NOBODY, open_to_others, run_as, shared_tmpdir
from wait_utils import SchedulerLag

# -- admin role --------------------------------------------------------------------------------


@pytest.fixture
def admin_group() -> Iterator[tuple[str, int]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a group and run clients as another uid")
    if shutil.which("groupadd") is None:
        pytest.skip("needs groupadd to create the admin group")
    name = f"dbadm{secrets.token_hex(4)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        import grp

        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def shared_daemon(admin_group: tuple[str, int]) -> Iterator[DaemonProcess]:
    """A daemon whose sockets uid 65534 can reach, with ``admin_group`` as its admin group."""
    with shared_tmpdir("dbadmin-") as root:
        cfg = root / "d.toml"
        cfg.write_text(f'admin_group = "{admin_group[0]}"\n')
        daemon = DaemonProcess(root, namespace_size="64MiB", config=cfg).start()
        try:
            open_to_others(daemon.socket, daemon.socket.parent / "handshake.sock")
            yield daemon
        finally:
            daemon.terminate()


def _admin_as(daemon: DaemonProcess, gid: int, groups: list[int]) -> dict[str, str]:
    """Call every Admin RPC from a child running as uid 65534 with ``gid``/``groups``."""
    code = f"""
        import json
        import grpc
        from dualblade import Client, errors
        from dualblade.v1 import dualblade_pb2 as pb
        out = {{}}
        with Client.connect({str(daemon.socket)!r}, tenant="t", arena_bytes=1 << 20) as c:
            md = c._metadata
            calls = {{
                "Status": (c.admin.Status, pb.StatusRequest()),
                "Tenants": (c.admin.Tenants, pb.TenantsRequest()),
                "Extents": (c.admin.Extents, pb.ExtentsRequest()),
                "Health": (c.admin.Health, pb.HealthRequest()),
                "Residency": (c.admin.Residency, pb.ResidencyRequest()),
            }}
            for name, (fn, req) in calls.items():
                try:
                    fn(req, metadata=md)
                    out[name] = "OK"
                except grpc.RpcError as err:
                    out[name] = err.code().name + " " + err.details()
            c.put(b"mine", b"m" * 100)  # the data service stays open to everyone
            out["put"] = "OK"
        print(json.dumps(out))
        """
    res = run_as(code, uid=NOBODY, gid=gid, groups=groups)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_admin_is_root_or_admin_group_only(
    shared_daemon: DaemonProcess, admin_group: tuple[str, int]
) -> None:
    name, gid = admin_group
    # Not in the group: every Admin call is refused, naming the group; data calls still work.
    out = _admin_as(shared_daemon, NOBODY, [])
    assert out.pop("put") == "OK"
    assert set(out) == {"Status", "Tenants", "Extents", "Health", "Residency"}
    for rpc, result in out.items():
        assert result.startswith("PERMISSION_DENIED "), (rpc, result)
        assert repr(name) in result and f"uid {NOBODY}" in result
    # A supplementary member, and a primary-gid member, get through.
    assert set(_admin_as(shared_daemon, NOBODY, [gid]).values()) == {"OK"}
    assert set(_admin_as(shared_daemon, gid, []).values()) == {"OK"}
    # Root always does.
    with Client.connect(shared_daemon.socket, tenant="root", arena_bytes=1 << 20) as c:
        status = c.admin.Status(pb.StatusRequest(), metadata=c._metadata)
        assert status.namespace_kind == "file"
        reply = c.admin.Tenants(pb.TenantsRequest(), metadata=c._metadata)
        # An admin session that holds nothing is dbctl-like, not a tenant: left out ...
        assert "0/root" not in {t.tenant for t in reply.tenants}
        c.put(b"k", b"\x01" * 4096)
        reply = c.admin.Tenants(pb.TenantsRequest(), metadata=c._metadata)
        # ... and once it holds objects it is listed, its session marked as an admin one.
        (root,) = [t for t in reply.tenants if t.tenant == "0/root"]
        assert (root.objects, root.sessions, root.admin_sessions) == (1, 1, 1)


def test_admin_without_a_token_is_unauthenticated_not_denied(tmp_path: Path) -> None:
    with (
        DaemonProcess(tmp_path / "d", namespace_size="64MiB") as d,
        grpc.insecure_channel(f"unix://{d.socket}") as channel,
    ):
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.AdminStub(channel).Status(pb.StatusRequest())
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "missing session token" in err.value.details()


# -- metrics, logs, shutdown -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, str, str, str], float]:
    """``{(sample name, tenant, path, op): value}`` for the per-tenant series."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if {"tenant", "path", "op"} <= set(s.labels) and "le" not in s.labels:
                out[(s.name, s.labels["tenant"], s.labels["path"], s.labels["op"])] = s.value
    return out


@pytest.fixture
def metrics_daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, int]]:
    port = _free_port()
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[metrics]\nprometheus_address = "127.0.0.1:{port}"\n')
    with DaemonProcess(tmp_path / "d", namespace_size="64MiB", config=cfg) as d:
        yield d, port


def test_prometheus_counters_grow_per_tenant_path_op(
    metrics_daemon: tuple[DaemonProcess, int],
) -> None:
    daemon, port = metrics_daemon
    tenant = f"{os.getuid()}/promtest"

    def series(sample: str, op: str, path: str) -> float:
        return scraped.get((sample, tenant, path, op), 0.0)

    with Client.connect(daemon.socket, tenant="promtest", arena_bytes=1 << 20) as c:
        # Explicit paths: the adaptive arbiter would otherwise pick one per object.
        c.put(b"a", b"x" * 10_000, path="direct")
        scraped = _scrape(port)
        assert series("dualblade_ops_total", "put", "direct") == 1
        assert series("dualblade_bytes_total", "put", "direct") == 10_000
        c.put_many([(b"b", b"y" * 5000), (b"c", b"z" * 3000)], path="direct")
        try:  # the page-cache path exists where the composition root wires it
            c.put(b"d", b"w" * 7000, path="pagecache")
            has_pagecache = True
        except errors.InvalidArgument:
            has_pagecache = False
        for _ in range(3):
            assert c.get(b"a") == b"x" * 10_000
        if has_pagecache:
            assert c.get(b"d") == b"w" * 7000
        with pytest.raises(Exception, match="not found"):
            c.get_into(b"absent", bytearray(4096))
    scraped = _scrape(port)
    assert series("dualblade_ops_total", "put", "direct") == 3
    assert series("dualblade_bytes_total", "put", "direct") == 18_000
    assert series("dualblade_ops_total", "get", "direct") == 3
    assert series("dualblade_bytes_total", "get", "direct") == 30_000
    assert series("dualblade_op_latency_seconds_count", "get", "direct") == 3
    assert series("dualblade_errors_total", "get", "none") == 1
    if has_pagecache:
        assert series("dualblade_ops_total", "put", "pagecache") == 1
        assert series("dualblade_bytes_total", "get", "pagecache") == 7000


def test_json_logs_bind_session_and_never_carry_payload(
    metrics_daemon: tuple[DaemonProcess, int],
) -> None:
    daemon, _port = metrics_daemon
    marker = b"PAYLOAD-MUST-NOT-BE-LOGGED-"
    payload = marker * 300
    with Client.connect(daemon.socket, tenant="logtest", arena_bytes=1 << 20) as c:
        c.put(b"logged-key", payload, persistent=True)
        assert c.get(b"logged-key") == payload
        with pytest.raises(Exception, match="not found"):
            c.stat(b"no-such-key")  # a rejected call: logged with its context
        # A Batch rejected on the lease data plane (too many ops) is logged the same way.
        too_many = pb.BatchRequest(ops=[pb.Op(delete=pb.DeleteOp(key=b"k"))] * 5000)
        assert c._lease is not None, "the lease data plane is the default transport"
        with pytest.raises(errors.InvalidArgument, match="5000 ops"):
            c._lease.call(too_many.SerializeToString())
        session_id = c.session_id
    text = daemon.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "empty daemon log"
    per_call = [e for e in lines if e.get("rpc") == "Stat"]
    assert per_call, "no per-call log line"
    assert all(e["session"] == session_id for e in per_call)
    assert all(e["tenant"] == f"{os.getuid()}/logtest" for e in per_call)
    assert all("no-such-key" in e["event"] for e in per_call)
    batch = [e for e in lines if e.get("rpc") == "Batch" and "5000 ops" in e["event"]]
    assert len(batch) == 1, "no log line for the rejected lease Batch"
    assert batch[0]["transport"] == "lease" and batch[0]["session"] == session_id
    assert batch[0]["tenant"] == f"{os.getuid()}/logtest"
    for needle in (marker, marker.hex().encode(), marker.decode().lower().encode()):
        assert needle not in text.encode(), "payload bytes reached the daemon log"


def test_sigterm_exits_cleanly_and_restart_keeps_persistent_objects(
    metrics_daemon: tuple[DaemonProcess, int],
) -> None:
    daemon, _port = metrics_daemon
    blobs = {f"p{i}".encode(): os.urandom(9000 + i) for i in range(5)}
    with Client.connect(daemon.socket, tenant="keep", arena_bytes=1 << 20) as c:
        c.put_many(list(blobs.items()), persistent=True)
        c.put(b"ephemeral", b"e" * 100)
    with SchedulerLag() as lag:
        began = time.monotonic()
        assert daemon.terminate(timeout=GRACE_S + 5) == 0, daemon.log_tail()
        took = time.monotonic() - began
    # Nothing in flight: no waiting out the drain grace (plus what a loaded scheduler adds).
    assert took < GRACE_S + lag.worst, (took, lag.worst)
    events = [json.loads(x)["event"] for x in daemon.log_path.read_text().splitlines() if x]
    assert "dualbladed stopped cleanly" in events
    assert events.index("dualbladed stopped cleanly") > events.index("signal SIGTERM received")

    daemon.start()
    with Client.connect(daemon.socket, tenant="keep", arena_bytes=1 << 20) as c:
        assert c.get_many(list(blobs)) == list(blobs.values())
        assert sorted(o.key for o in c.list()) == sorted(blobs)
