"""Issue 15, dbctl: permission problems are one clear line on stderr and exit code 2, never a
traceback. dbctl runs as uid 65534 through ``privdrop_utils.run_as`` (imports first, then drops
privileges), against a real root daemon and its real (root-owned) state directory.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from dualblade_tools.daemonproc import DaemonProcess
from privdrop_utils import SDK_MODULES, run_as, shared_tmpdir

#: what dbctl loads lazily, preloaded before the drop (fsck pulls in the daemon's modules)
DBCTL_MODULES = (
    *SDK_MODULES,
    "dualblade_tools.dbctl",
    "dualbladed.errors",
    "dualbladed.store.fsck",
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run dbctl as uid 65534")


def _dbctl_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    code = f"""
        import sys
        from dualblade_tools import dbctl
        sys.exit(dbctl.main({list(args)!r}))
        """
    return run_as(code, preload=DBCTL_MODULES)


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert res.stdout == ""
    return lines[0]


@pytest.fixture
def stopped_state() -> Iterator[DaemonProcess]:
    """A root daemon's state left behind after a clean stop, in a directory others can enter."""
    with shared_tmpdir("dbfsck-") as root:
        daemon = DaemonProcess(root, namespace_size="64MiB")
        with daemon:
            pass
        yield daemon


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


def test_status_on_a_socket_it_may_not_open() -> None:
    # The root is reachable, the run directory the daemon made stays 0750 root: no way in.
    with shared_tmpdir("dbsock-") as root, DaemonProcess(root, namespace_size="64MiB") as d:
        res = _dbctl_as_nobody("--socket", str(d.socket), "status")
        assert res.returncode == 2
        line = _one_line(res)
        assert line.startswith("dbctl: PERMISSION_DENIED: not allowed to connect to "), line


def test_status_without_a_daemon_is_one_line() -> None:
    res = _dbctl_as_nobody("--socket", "/nonexistent/grpc.sock", "status")
    assert res.returncode == 2
    assert _one_line(res).startswith("dbctl: UNAVAILABLE: no dualbladed listening on")
