"""``dbctl`` as a user runs it: a real dbctl process against a real daemon.

Covers the CLI warts of issue 11: a closed pipe ends dbctl quietly (SIGPIPE, no traceback),
``--json`` prints 64-bit integers as numbers, and ``dbctl tenants`` does not list dbctl's own
admin session as a tenant (an admin session of a tenant that holds objects is marked instead).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from dualblade import Client
from dualblade_tools.daemonproc import DaemonProcess

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="dbctl's admin calls need root (the daemon has no admin group here)"
)

DIGITS = re.compile(r"-?\d+")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("dbctl") / "d", namespace_size="64MiB") as d:
        yield d


def dbctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dualblade_tools.dbctl", "--socket", str(daemon.socket), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def dbctl_json(daemon: DaemonProcess, *args: str) -> Any:
    out = dbctl(daemon, "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def strings(data: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string value in a JSON document, with its path."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from strings(v, f"{where}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from strings(v, f"{where}[{i}]")
    elif isinstance(data, str):
        yield where, data


def test_a_closed_pipe_ends_dbctl_by_sigpipe_without_a_traceback(daemon: DaemonProcess) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before dbctl writes a byte: its first write gets EPIPE
    try:
        cmd = [sys.executable, "-m", "dualblade_tools.dbctl", "--socket", str(daemon.socket)]
        proc = subprocess.run(
            [*cmd, "--json", "status"], stdout=write, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write)
    assert proc.returncode == -signal.SIGPIPE, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr and b"BrokenPipeError" not in proc.stderr


def test_head_on_a_pipe_sees_no_error(daemon: DaemonProcess) -> None:
    cmd = f"{sys.executable} -m dualblade_tools.dbctl --socket {daemon.socket} --json status"
    out = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -c 1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout == "{"
    assert out.stderr == ""
    assert out.returncode in (0, 128 + signal.SIGPIPE)  # 0 when dbctl wrote all before head left


def test_json_prints_64_bit_integers_as_numbers(daemon: DaemonProcess) -> None:
    with Client.connect(daemon.socket, tenant="numbers", arena_bytes=1 << 20) as c:
        c.put(b"k", b"\x01" * 5000)
        status = dbctl_json(daemon, "status")
        tenants = dbctl_json(daemon, "tenants")
        residency = dbctl_json(daemon, "residency")
    assert isinstance(status["capacity_bytes"], int) and status["capacity_bytes"] == 64 << 20
    assert isinstance(status["free_bytes"], int) and isinstance(status["block_size"], int)
    assert all(isinstance(p["bytes"], int) for p in status["paths"])
    (mine,) = [t for t in tenants if t["label"] == "numbers"]
    assert mine["bytes"] == 5000 and mine["objects"] == 1 and mine["quota_bytes"] == 0
    assert (
        residency["tenants"][mine["tenant"]]["pagecache"]
        + residency["tenants"][mine["tenant"]]["direct"]
        == 5000
    )
    assert isinstance(residency["budget"]["total"], int)
    assert isinstance(residency["totals"]["placed_pagecache"], int)
    for doc in (status, tenants, residency):
        numeric = [(where, s) for where, s in strings(doc) if DIGITS.fullmatch(s)]
        assert numeric == [], f"integers printed as strings: {numeric}"


def test_status_json_carries_the_typed_residency(daemon: DaemonProcess) -> None:
    status = dbctl_json(daemon, "status")
    assert "residency_json" not in status
    residency = status["residency"]
    assert residency["mode"] == "adaptive" and residency["ticks"] >= 1
    assert set(residency) >= {"budget", "signals", "psi", "tenants", "migrations", "totals"}
    # the arbiter observed at start: what it learned is on the wire, typed
    fb = residency["feedback"]
    assert fb["cap"] >= 0 and fb["write_path"] in ("pagecache", "direct")


def test_tenants_leaves_out_dbctls_own_session_and_marks_admin_ones(
    daemon: DaemonProcess,
) -> None:
    from dualblade.v1 import dualblade_pb2 as pb

    with (
        Client.connect(daemon.socket, tenant="worker", arena_bytes=1 << 20),
        Client.connect(daemon.socket, tenant="mixed", arena_bytes=1 << 20) as mixed,
    ):
        mixed.put(b"k", b"\x02" * 4096)
        mixed.admin_call("Status", pb.StatusRequest())  # this session is now an admin one
        rows = {t["label"]: t for t in dbctl_json(daemon, "tenants")}
        table = dbctl(daemon, "tenants")
    assert "dbctl" not in rows
    assert rows["worker"]["sessions"] == 1 and rows["worker"]["admin_sessions"] == 0
    assert rows["mixed"]["sessions"] == 1 and rows["mixed"]["admin_sessions"] == 1
    assert table.returncode == 0, table.stderr
    assert "0/dbctl" not in table.stdout
    (line,) = [ln for ln in table.stdout.splitlines() if ln.startswith("0/mixed")]
    assert "1 (1 admin)" in line
