"""End to end: the real dualbladed process on real Unix sockets, real SDK clients.

Nothing is mocked: each test starts ``python -m dualbladed`` on a file namespace under
tmp_path (waiting for its READY=1 on a private NOTIFY_SOCKET) and talks to it with
``dualblade.Client`` from this process and from child processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from dualblade import Client, errors
from dualblade.v1 import wire
from dualblade_tools.daemonproc import DaemonProcess
from privdrop_utils import NOBODY, open_to_others, run_as, shared_tmpdir
from wait_utils import SchedulerLag


@pytest.fixture
def daemon(tmp_path):
    with DaemonProcess(tmp_path / "d") as d:
        yield d


def connect(d: DaemonProcess, tenant: str = "default", arena: int = 8 << 20) -> Client:
    return Client.connect(d.socket, tenant=tenant, arena_bytes=arena)


@pytest.mark.parametrize("which", ["uid", "main"])
def test_grpc_socket_paths_grpc_refuses_are_still_served(which: str) -> None:
    """gRPC refuses ``unix://`` paths of 106 and 107 bytes that ``sockaddr_un`` holds
    (``wire.GRPC_UNIX_PATH_MAX``): a daemon whose per-uid socket (or main socket) lands at 106
    bytes must still serve, through ``/proc/self/fd`` (the vllm-tier bench once failed every job
    when pytest's tmp path put the per-uid socket there)."""
    want = wire.GRPC_UNIX_PATH_MAX + 1
    tail = f"run/uid/{os.geteuid()}/grpc.sock" if which == "uid" else "run/grpc.sock"
    with tempfile.TemporaryDirectory(prefix="dbpath-", dir="/tmp") as base:
        pad = want - len(base) - 2 - len(tail)  # base/ + pad + / + tail
        root = Path(base) / ("p" * pad)
        assert len(str(root / tail)) == want
        with DaemonProcess(root) as d, connect(d) as c:
            payload = os.urandom(10_000)
            c.put(b"k", payload)
            assert c.get(b"k") == payload
            assert (root / tail).is_socket()


def test_put_get_roundtrip_and_stat(daemon):
    payload = os.urandom(3 * 4096 + 123)
    with connect(daemon) as c:
        info = c.put(b"seq/0/k", payload)
        assert info.size == len(payload)
        assert c.get(b"seq/0/k") == payload
        st = c.stat(b"seq/0/k")
        assert (st.size, st.persistent) == (len(payload), False)
        buf = bytearray(len(payload))
        assert c.get_into(b"seq/0/k", buf) == len(payload)
        assert bytes(buf) == payload
        c.delete(b"seq/0/k")
        with pytest.raises(errors.NotFound):
            c.get(b"seq/0/k")


def test_batched_put_many_get_many(daemon):
    items = [(f"L{i}".encode(), os.urandom(64 * 1024 + i)) for i in range(40)]
    with connect(daemon) as c:
        c.put_many(items)
        got = c.get_many([k for k, _ in items])
        assert got == [v for _, v in items]


def test_two_tenants_are_isolated(daemon):
    with connect(daemon, "alpha") as a, connect(daemon, "beta") as b:
        a.put(b"shared-name", b"A" * 5000, persistent=True)
        b.put(b"shared-name", b"B" * 6000, persistent=True)
        assert a.get(b"shared-name") == b"A" * 5000
        assert b.get(b"shared-name") == b"B" * 6000
        a.put(b"only-alpha", b"x" * 100)
        with pytest.raises(errors.NotFound) as err:
            b.get(b"only-alpha")
        assert "only-alpha" in str(err.value)
        assert [o.key for o in b.list()] == [b"shared-name"]
        b.delete(b"shared-name")
        assert a.get(b"shared-name") == b"A" * 5000
        with pytest.raises(errors.NotFound):
            b.delete(b"only-alpha")
        assert a.get(b"only-alpha") == b"x" * 100


def test_tenant_of_another_uid_cannot_see_objects():
    """A child process running as 'nobody' (uid 65534) is a different tenant, whatever label."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    # pytest's tmp dirs are private to root: use a traversable directory for the sockets.
    with shared_tmpdir("dbtest-") as root:
        daemon = DaemonProcess(root).start()
        try:
            _check_other_uid(daemon)
        finally:
            daemon.terminate()


def _check_other_uid(daemon: DaemonProcess) -> None:
    with connect(daemon, "default") as c:
        c.put(b"secret", b"s" * 4096, persistent=True)
    open_to_others(daemon.socket, daemon.socket.parent / "handshake.sock")
    code = f"""
        import sys
        from dualblade import Client, errors
        with Client.connect({str(daemon.socket)!r}, tenant="default", arena_bytes=1 << 20) as c:
            assert c.tenant == "65534/default", c.tenant
            try:
                c.get(b"secret")
            except errors.NotFound:
                pass
            else:
                sys.exit("read another uid's object")
            assert c.list() == [], c.list()
            c.put(b"secret", b"mine")
            assert c.get(b"secret") == b"mine"
        print("ISOLATED")
        """
    out = run_as(code, uid=NOBODY, gid=NOBODY)
    assert out.returncode == 0, out.stderr
    assert "ISOLATED" in out.stdout
    with connect(daemon, "default") as c:
        assert c.get(b"secret") == b"s" * 4096


def test_quota_exhaustion_is_typed_and_loses_nothing(tmp_path):
    cfg = tmp_path / "d.toml"
    # Without capacity eviction (on by default, tests/daemon/test_capacity_daemon.py), a full
    # quota refuses the put instead of evicting "a".
    cfg.write_text('[limits]\nevict_persistent = false\n\n[quotas]\ndefault_bytes = "64KiB"\n')
    with DaemonProcess(tmp_path / "d", config=cfg) as d, connect(d, "small") as c:
        c.put(b"a", b"1" * 40_000, persistent=True)
        with pytest.raises(errors.ResourceExhausted) as err:
            c.put(b"b", b"2" * 40_000)
        assert "quota" in str(err.value)
        assert c.get(b"a") == b"1" * 40_000
        # Overwriting within the quota is fine: the replaced object's bytes are not counted twice.
        c.put(b"a", b"3" * 60_000, persistent=True)
        assert c.get(b"a") == b"3" * 60_000


CHILD = textwrap.dedent(
    """
    import sys, time
    from dualblade import Client
    c = Client.connect(sys.argv[1], tenant="crashy", arena_bytes=1 << 20)
    c.put(b"eph", b"e" * 8192)
    c.put(b"keep", b"k" * 8192, persistent=True)
    print("PUT", flush=True)
    time.sleep(600)
    """
)


#: the spec's bound on freeing a dead client's ephemeral objects.
LEASE_RECLAIM_S = 1.0


def test_lease_reclaims_ephemeral_objects_after_client_sigkill(daemon):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(daemon.socket)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "PUT"
        with connect(daemon, "crashy") as c:
            assert c.stat(b"eph").size == 8192
            # The spec: a dead client's ephemeral objects are freed within one second of its
            # death, measured from the SIGKILL (the earliest moment it can be dead), plus the
            # worst wake-up delay a loaded machine adds meanwhile (a millisecond when quiet).
            with SchedulerLag() as lag:
                killed_at = time.monotonic()
                child.send_signal(signal.SIGKILL)
                while True:
                    asked_at = time.monotonic()
                    try:
                        c.stat(b"eph")
                    except errors.NotFound:
                        break
                    # still there when asked after the deadline
                    if asked_at >= killed_at + LEASE_RECLAIM_S + lag.worst:
                        pytest.fail(
                            f"ephemeral object survived its session's lease by more than "
                            f"{LEASE_RECLAIM_S} s (+{lag.worst:.3f} s of scheduler lag)"
                        )
                    time.sleep(0.01)
            child.wait(10)
            assert c.get(b"keep") == b"k" * 8192
    finally:
        child.kill()


def test_daemon_sigkill_and_restart_keeps_persistent_objects(daemon):
    blobs = {f"p{i}".encode(): os.urandom(10_000 + i * 4096) for i in range(12)}
    with connect(daemon) as c:
        for k, v in blobs.items():
            c.put(k, v, persistent=True, durable=True)
        c.put(b"ephemeral", b"gone")
    daemon.kill()
    daemon.start()
    with connect(daemon) as c:
        for k, v in blobs.items():
            assert c.get(k) == v
        with pytest.raises(errors.NotFound):
            c.get(b"ephemeral")
    daemon.terminate()
    out = run_dbctl(
        "--json",
        "fsck",
        "--state-dir",
        str(daemon.state_dir),
        "--namespace",
        str(daemon.namespace_path),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["objects"] == len(blobs)


def test_second_instance_refuses_instead_of_stealing_the_socket(daemon, tmp_path):
    second = DaemonProcess(daemon.root)
    with pytest.raises(RuntimeError) as err:
        second.start(timeout=20)
    assert "already running" in str(err.value)
    with connect(daemon) as c:  # the first daemon still serves
        c.put(b"k", b"v")


def run_dbctl(*args: str, socket: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dualblade_tools.dbctl"]
    if socket:
        cmd += ["--socket", socket]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60)


def test_dbctl_status_tenants_extents(daemon):
    with connect(daemon, "alpha") as a:
        a.put(b"obj1", b"1" * 10_000, persistent=True)
        a.put(b"obj2", b"2" * 20_000)
        out = run_dbctl("--json", "status", socket=str(daemon.socket))
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["namespace_kind"] == "file"
        assert int(status["sessions"]) >= 1
        assert {m["op"] for m in status["metrics"]} >= {"put"}

        out = run_dbctl("--json", "tenants", socket=str(daemon.socket))
        tenants = {t["tenant"]: t for t in json.loads(out.stdout)}
        alpha = tenants[f"{os.getuid()}/alpha"]
        assert int(alpha["objects"]) == 2 and int(alpha["bytes"]) == 30_000

        out = run_dbctl(
            "--json", "extents", "--tenant", f"{os.getuid()}/alpha", socket=str(daemon.socket)
        )
        extents = json.loads(out.stdout)
        assert sorted(e["key"] for e in extents) == ["obj1", "obj2"]
        spans = sorted(
            (int(e["offset"]), int(e["length"])) for e in extents if e["path"] == "direct"
        )
        for (o1, l1), (o2, _) in zip(spans, spans[1:]):
            assert o1 + l1 <= o2

        out = run_dbctl("status", socket=str(daemon.socket))
        assert "namespace" in out.stdout and "fragmentation" in out.stdout
