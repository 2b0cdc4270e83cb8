"""What a short ``dbctl status`` process does, and does not do (issue 14: status <= 0.2 s).

A ``dbctl status`` is mostly process cost: Python, grpc and protobuf imports, then the
interpreter's teardown. These tests pin down the parts dbctl controls, by behaviour, never by
time: which modules the command imports (a real dbctl process under ``-X importtime``), which
calls it makes (a real daemon; the channel wrapped in a counting interceptor), and that exiting
without the teardown loses no output (stdout a pipe, Python's own buffering on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from dualblade_tools.daemonproc import DaemonProcess

#: Never needed by ``status``: the SDK client (torch hooks, arenas), array libraries, the
#: daemon package, the benchmarks.
HEAVY = (
    "torch",
    "numpy",
    "dualblade.client",
    "dualblade.arenas",
    "dualbladed",
    "dualblade_tools.bench",
)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="dbctl's admin calls need root (the daemon has no admin group here)"
)


def imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output (``import time: self | cumulative | name``)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    names.discard("imported package")  # the header line
    return names


def heavy_in(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY))


def test_importing_dbctl_loads_neither_grpc_nor_heavy_modules() -> None:
    code = "import sys, dualblade_tools.dbctl; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(out.stdout.split())
    assert "dualblade_tools.dbctl" in loaded  # the listing is real
    assert heavy_in(loaded) == []
    assert "grpc" not in loaded  # the channel module comes with the first online command


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("dbctlcost") / "d", namespace_size="64MiB") as d:
        yield d


def run_dbctl(daemon: DaemonProcess, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *kw.pop("py_args", ()), "-m", "dualblade_tools.dbctl"]
    cmd += ["--socket", str(daemon.socket), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


@needs_root
def test_status_imports_no_heavy_module(daemon: DaemonProcess) -> None:
    out = run_dbctl(daemon, "--json", "status", py_args=("-X", "importtime"))
    assert out.returncode == 0, out.stderr[-2000:]
    names = imported(out.stderr)
    assert {"grpc", "dualblade._session", "dualblade.v1.dualblade_pb2"} <= names  # real list
    assert heavy_in(names) == []
    # argparse sizes its formatter with shutil, which imports the compression modules: dbctl's
    # own formatter does without (6 ms of a short run)
    assert "shutil" not in names
    assert json.loads(out.stdout)["block_size"] > 0


class _Recorder(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(details.method)
        return continuation(details, request)


@needs_root
def test_status_is_one_handshake_and_one_rpc(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No readiness round trip (``Store/Session``) before ``Admin/Status``: the first Admin
    call waits for the channel itself."""
    from dualblade import _session
    from dualblade_tools import dbctl

    recorder = _Recorder()
    handshakes: list[str] = []
    real_open, real_handshake = _session.open_channel, _session.handshake

    def counting_open(path: str) -> Any:
        channel, dir_fd = real_open(path)
        return grpc.intercept_channel(channel, recorder), dir_fd

    def counting_handshake(*args: Any, **kw: Any) -> Any:
        handshakes.append(args[1])
        return real_handshake(*args, **kw)

    monkeypatch.setattr(_session, "open_channel", counting_open)
    monkeypatch.setattr(_session, "handshake", counting_handshake)
    assert dbctl.main(["--socket", str(daemon.socket), "--json", "status"]) == 0
    assert handshakes == ["dbctl"]
    assert recorder.methods == ["/dualblade.v1.Admin/Status"]


@needs_root
def test_no_daemon_on_the_grpc_socket_is_unavailable_not_a_hang(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call's wait for the channel is bounded by the session's timeout."""
    from dualblade import _session, errors

    real_open = _session.open_channel
    monkeypatch.setattr(
        _session, "open_channel", lambda path: real_open(str(daemon.root / "no-such.sock"))
    )
    from dualblade.v1 import dualblade_pb2 as pb

    with (
        pytest.raises(errors.Unavailable, match="within 0.5 s"),
        _session.AdminSession(daemon.socket, timeout=0.5) as s,
    ):
        s.admin_call("Status", pb.StatusRequest())


@needs_root
def test_exiting_without_teardown_loses_no_output(daemon: DaemonProcess) -> None:
    """dbctl run as a program leaves by ``os._exit``; its buffered output must be out first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block buffering
    as_json = run_dbctl(daemon, "--json", "status", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout.endswith("}\n") and json.loads(as_json.stdout)["block_size"] > 0
    table = run_dbctl(daemon, "status", env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["field", "value"]
    assert "pinned hits" in table.stdout  # the last row of the first table
