"""Issue 15, dbctl: permission problems are one clear line on stderr and exit code 2, never a
traceback. dbctl runs as uid 65534 in a child that imports everything first and then drops
privileges, against a real root daemon and its real (root-owned) state directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualblade_tools.daemonproc import DaemonProcess

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run dbctl as uid 65534")


def _dbctl_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import os, sys
        import dualblade, dualblade.v1.dualblade_pb2, dualbladed.store.fsck
        from dualblade_tools import dbctl
        os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
        sys.exit(dbctl.main({list(args)!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert res.stdout == ""
    return lines[0]


@pytest.fixture
def stopped_state() -> Iterator[DaemonProcess]:
    """A root daemon's state left behind after a clean stop, in a directory others can enter."""
    root = Path(tempfile.mkdtemp(prefix="dbfsck-"))
    os.chmod(root, 0o755)
    daemon = DaemonProcess(root, namespace_size="64MiB")
    with daemon:
        pass
    try:
        yield daemon
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_fsck_as_non_root_is_one_line_not_a_traceback(stopped_state: DaemonProcess) -> None:
    state = stopped_state.state_dir
    assert os.stat(state).st_uid == 0 and not os.stat(state).st_mode & 0o007
    res = _dbctl_as_nobody(
        "fsck", "--state-dir", str(state), "--namespace", str(stopped_state.namespace_path)
    )
    assert res.returncode == 2
    line = _one_line(res)
    assert line.startswith("dbctl: fsck: Permission denied: "), line
    assert str(state) in line and "run dbctl as root" in line


def test_fsck_as_root_still_works(stopped_state: DaemonProcess) -> None:
    """The same state is fine for root: the refusal above was about permissions only."""
    from dualblade_tools import dbctl

    args = ["fsck", "--state-dir", str(stopped_state.state_dir)]
    assert dbctl.main(args + ["--namespace", str(stopped_state.namespace_path)]) == 0


def test_status_on_a_socket_it_may_not_open(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="dbsock-"))
    os.chmod(root, 0o755)  # the run directory stays 0750 root: nobody cannot reach the sockets
    try:
        with DaemonProcess(root, namespace_size="64MiB") as d:
            res = _dbctl_as_nobody("--socket", str(d.socket), "status")
            assert res.returncode == 2
            line = _one_line(res)
            assert line.startswith("dbctl: PERMISSION_DENIED: not allowed to connect to "), line
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_status_without_a_daemon_is_one_line(tmp_path: Path) -> None:
    res = _dbctl_as_nobody("--socket", "/nonexistent/grpc.sock", "status")
    assert res.returncode == 2
    assert _one_line(res).startswith("dbctl: UNAVAILABLE: no dualbladed listening on")
