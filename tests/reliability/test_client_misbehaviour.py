"""Clients that misbehave against a LIVE dualbladed: killed mid-I/O, attacking their arena, crowding
in, or hogging capacity. The daemon must survive, reclaim, and keep other tenants served.

- SIGKILL: a child process in a tight put/get loop is killed at seeded random times, repeatedly,
  while another session keeps doing I/O. Afterwards the victim tenant holds 0 bytes (its
  ephemeral objects were freed when the lease broke), the free space and the daemon's fd count are
  back to their baselines, and the bystander never saw an error or a wrong byte.
- Arena attacks: the arena memfd is sealed (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), so
  ftruncate (shrink or grow), fallocate beyond the end and F_ADD_SEALS all fail with EPERM while
  the daemon reads and writes that arena; the daemon never takes SIGBUS.
- 64 sessions doing I/O at once, each verifying its own bytes.
- A greedy tenant fills its quota (set in a config file) and keeps trying: it gets
  RESOURCE_EXHAUSTED, and a polite tenant keeps a reasonable share (>= 20 %) of its solo
  throughput.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualblade import Client, errors
from dualblade.v1 import dualblade_pb2 as pb
from dualblade_tools.daemonproc import DaemonProcess

SEED = 1206


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("mis") / "d") as d:
        with Client.connect(d.socket, tenant="warmup", arena_bytes=1 << 16) as c:
            c.put(b"w", b"w" * 4096)
        yield d


def _fds(d: DaemonProcess) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def _tenant_bytes(admin: Client, tenant: str) -> int:
    reply = admin.admin_call("Tenants", pb.TenantsRequest())
    return sum(t.bytes for t in reply.tenants if t.tenant == tenant)


def _free_bytes(admin: Client) -> int:
    return admin.admin_call("Status", pb.StatusRequest()).free_bytes


def _wait(pred, timeout: float = 10.0) -> bool:  # noqa: ANN001 - a zero-argument predicate
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


VICTIM = textwrap.dedent(
    """
    import sys
    from dualblade import Client
    c = Client.connect(sys.argv[1], tenant="victim", arena_bytes=4 << 20)
    buf = bytearray(1 << 20)
    i = 0
    while True:
        key = b"eph/%d" % (i % 24)
        payload = bytes([i % 251]) * ((i * 7919) % (1 << 20) + 1)
        c.put(key, payload)
        n = c.get_into(key, buf)
        if bytes(buf[:n]) != payload:
            sys.exit("corrupt read")
        if i == 3:
            print("LOOPING", flush=True)
        i += 1
    """
)


def test_sigkilled_clients_mid_io_are_reclaimed_and_bystanders_unaffected(
    daemon: DaemonProcess,
) -> None:
    rng = random.Random(SEED)
    with Client.connect(daemon.socket, tenant="admin", arena_bytes=4096) as admin:
        fds0, free0 = _fds(daemon), _free_bytes(admin)
        stop = threading.Event()
        bystander_errors: list[str] = []
        bystander_ops = [0]

        def bystander() -> None:
            with Client.connect(daemon.socket, tenant="bystander", arena_bytes=1 << 20) as c:
                i = 0
                while not stop.is_set():
                    data = bytes([i % 256]) * (20000 + i % 5000)
                    try:
                        c.put(b"b", data, persistent=True)
                        if c.get(b"b") != data:
                            bystander_errors.append("wrong bytes")
                    except errors.DualbladeError as err:
                        bystander_errors.append(repr(err))
                    bystander_ops[0] += 1
                    i += 1

        t = threading.Thread(target=bystander)
        t.start()
        kills = 0
        try:
            for _ in range(6):
                child = subprocess.Popen(
                    [sys.executable, "-c", VICTIM, str(daemon.socket)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                assert child.stdout is not None
                line = child.stdout.readline()
                assert line == b"LOOPING\n", child.stderr.read() if child.stderr else b""
                time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a put or a get
                child.send_signal(signal.SIGKILL)
                assert child.wait(10) == -signal.SIGKILL
                child.stdout.close()
                child.stderr.close()  # type: ignore[union-attr]
                kills += 1
                assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_tail()
        finally:
            stop.set()
            t.join(30)
        assert kills == 6
        assert bystander_errors == []
        assert bystander_ops[0] > 10
        # Ephemeral objects of every killed session are gone; space and fds are back.
        assert _wait(lambda: _tenant_bytes(admin, "0/victim") == 0)
        bystander_bytes = _tenant_bytes(admin, "0/bystander")
        assert _wait(lambda: _free_bytes(admin) >= free0 - _round(bystander_bytes))
        assert _wait(lambda: _fds(daemon) <= fds0 + 2)  # +2: the admin and bystander channels


def _round(n: int, unit: int = 1 << 20) -> int:
    """Upper bound of the extent space ``n`` object bytes take (allocation rounding)."""
    return (n + unit - 1) // unit * unit + unit


def test_arena_cannot_be_shrunk_grown_or_unsealed_during_daemon_io(
    daemon: DaemonProcess,
) -> None:
    arena = 2 << 20
    with Client.connect(daemon.socket, tenant="attacker", arena_bytes=arena) as c:
        fd = c._hs.arena_fd
        stop = threading.Event()
        io_errors: list[str] = []
        io_ops = [0]

        def io() -> None:
            payload = os.urandom(900_000)
            while not stop.is_set():
                try:
                    c.put(b"big", payload)
                    if c.get(b"big") != payload:
                        io_errors.append("wrong bytes")
                except errors.DualbladeError as err:
                    io_errors.append(repr(err))
                io_ops[0] += 1

        t = threading.Thread(target=io)
        t.start()
        refused: dict[str, int] = {}
        try:
            attacks = {
                "shrink": lambda: os.ftruncate(fd, 0),
                "shrink-half": lambda: os.ftruncate(fd, arena // 2),
                "grow": lambda: os.ftruncate(fd, arena * 2),
                "fallocate-grow": lambda: os.posix_fallocate(fd, arena, 4096),
                "add-seal": lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE),
            }
            # At least 200 rounds, and on until the daemon has done real I/O on the arena.
            rounds, deadline = 0, time.monotonic() + 30
            while rounds < 200 or (io_ops[0] < 20 and time.monotonic() < deadline):
                rounds += 1
                for name, attack in attacks.items():
                    try:
                        attack()
                    except OSError as err:
                        assert err.errno == errno.EPERM, (name, err)
                        refused[name] = refused.get(name, 0) + 1
        finally:
            stop.set()
            t.join(30)
        assert refused == dict.fromkeys(attacks, rounds)
        assert os.fstat(fd).st_size == arena
        assert io_errors == []
        assert io_ops[0] >= 20
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_tail()
    with Client.connect(daemon.socket, tenant="after", arena_bytes=1 << 16) as c:
        c.put(b"k", b"v" * 5000)
        assert c.get(b"k") == b"v" * 5000


def test_64_concurrent_sessions_each_read_their_own_bytes(daemon: DaemonProcess) -> None:
    n_sessions, rounds = 64, 6
    clients = [
        Client.connect(daemon.socket, tenant=f"many{i % 8}", arena_bytes=256 << 10)
        for i in range(n_sessions)
    ]
    problems: list[str] = []
    barrier = threading.Barrier(n_sessions)

    def work(i: int, c: Client) -> None:
        barrier.wait(30)
        for r in range(rounds):
            key = f"s{i}/r{r}".encode()
            data = bytes([(i * 31 + r) % 256]) * (8192 + 4096 * (i % 8) + r)
            try:
                c.put(key, data)
                if c.get(key) != data:
                    problems.append(f"session {i}: wrong bytes")
            except errors.DualbladeError as err:
                problems.append(f"session {i}: {err!r}")

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a session hung"
    finally:
        for c in clients:
            c.close()
    assert problems == []
    assert daemon.proc is not None and daemon.proc.poll() is None


GREEDY = textwrap.dedent(
    """
    import sys, time
    from dualblade import Client, errors
    c = Client.connect(sys.argv[1], tenant="greedy", arena_bytes=1 << 20)
    stop = time.monotonic() + float(sys.argv[2])
    payload = b"g" * (256 << 10)
    ok = exhausted = i = 0
    while time.monotonic() < stop:
        try:
            c.put(b"g/%d" % i, payload, persistent=True)
            ok += 1
        except errors.ResourceExhausted:
            exhausted += 1
        i += 1
    print(ok, exhausted, flush=True)
    """
)


def _polite_ops_per_s(d: DaemonProcess, seconds: float) -> float:
    with Client.connect(d.socket, tenant="polite", arena_bytes=1 << 20) as c:
        payload = b"p" * (64 << 10)
        c.put(b"p", payload, persistent=True)  # warm
        n, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            c.put(b"p", payload, persistent=True)
            assert c.get(b"p") == payload
            n += 1
        return n / (time.monotonic() - start)


def test_greedy_tenant_hits_its_quota_and_others_keep_throughput(tmp_path: Path) -> None:
    cfg = tmp_path / "quota.toml"
    # evict_persistent = false: the greedy tenant must hit its quota, not churn its own objects
    # through LRU eviction (which it would by default; tests/daemon/test_capacity_daemon.py)
    cfg.write_text(
        "[limits]\nevict_persistent = false\n\n"
        '[quotas]\ndefault_bytes = 0\n\n[quotas.per_tenant]\n"greedy" = "4MiB"\n'
    )
    with DaemonProcess(tmp_path / "d", config=cfg) as d:
        solo = _polite_ops_per_s(d, 1.5)
        greedy = subprocess.Popen(
            [sys.executable, "-c", GREEDY, str(d.socket), "4.0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)  # its imports; then it is filling and hammering
            contended = _polite_ops_per_s(d, 1.5)
            out, err = greedy.communicate(timeout=30)
        finally:
            if greedy.poll() is None:
                greedy.kill()
        assert greedy.returncode == 0, err
        ok, exhausted = map(int, out.split())
        # 4 MiB / 256 KiB = 16 puts fit; everything after is refused with RESOURCE_EXHAUSTED.
        assert ok == 16
        assert exhausted > 50
        # Solo again once the greedy one is gone: other work on the machine (CI neighbours, a
        # disk or CPU hog) changes throughput over the test, so the reference is the lower of
        # the two solo runs that bracket the contended one.
        solo_after = _polite_ops_per_s(d, 1.5)
        reference = min(solo, solo_after)
        # Two cores shared by the daemon, the greedy process (an unthrottled RPC loop) and this
        # one: measured here ~0.3 of solo (522 -> 166 ops/s). The floor leaves room for noise; a
        # greedy tenant that could starve others (quota checks serialised behind its I/O, say)
        # would drop far below it.
        print(f"polite ops/s: solo {solo:.0f}/{solo_after:.0f}, with greedy {contended:.0f}")
        assert contended >= 0.2 * reference, (solo, solo_after, contended)
        assert d.proc is not None and d.proc.poll() is None
