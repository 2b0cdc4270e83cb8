"""Issue 15, paths: the daemon refuses socket and state directories others could tamper with
(sshd StrictModes), and creates missing ones itself with mode 0750.

Directories are real, under tmp_path (pytest makes it root-owned 0700 below the sticky /tmp,
which the rule accepts as a parent); "someone else" is uid 65534 via chown, so those cases need
root. The daemon cases run the real ``python -m dualbladed`` and read its stderr.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dualbladed.errors import UnsafeDirectory
from dualbladed.safedirs import DIR_MODE, check_dir

NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_tmp_path_is_accepted_and_missing_dirs_are_created_0750(tmp_path: Path) -> None:
    assert check_dir(tmp_path) == tmp_path.resolve()
    old = os.umask(0o077)  # the created mode must not depend on the umask
    try:
        made = check_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    for p in (tmp_path / "a", tmp_path / "a" / "b"):
        assert p.is_dir() and _mode(p) == DIR_MODE
        assert os.stat(p).st_uid == os.geteuid()
    assert made == (tmp_path / "a" / "b").resolve()


@pytest.mark.parametrize(
    ("mode", "problem"),
    [(0o777, "writable by others (mode 0777)"), (0o770, "writable by its group (mode 0770)")],
)
def test_writable_by_others_is_refused(tmp_path: Path, mode: int, problem: str) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(UnsafeDirectory) as err:
        check_dir(d)
    assert str(err.value) == f"unsafe directory {d}: {problem}; chmod go-w it"
    assert err.value.grpc_code == "FAILED_PRECONDITION"


def test_sticky_dir_is_fine_as_a_parent_but_not_as_the_directory(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert check_dir(sticky / "mine") == (sticky / "mine").resolve()  # like /tmp/dualblade-0
    with pytest.raises(UnsafeDirectory, match="writable by others"):
        check_dir(sticky)  # others may create names in it: no place for our sockets


def test_nothing_is_created_below_an_unsafe_parent(tmp_path: Path) -> None:
    bad = tmp_path / "open"
    bad.mkdir()
    os.chmod(bad, 0o777)
    with pytest.raises(UnsafeDirectory) as err:
        check_dir(bad / "run")
    assert f"unsafe directory {bad} (a parent of {bad / 'run'})" in str(err.value)
    assert not (bad / "run").exists()


@needs_root
def test_owned_by_someone_else_is_refused_even_when_closed(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectory) as err:
        check_dir(d / "run")
    assert str(err.value).startswith(f"unsafe directory {d} (a parent of {d / 'run'}): ")
    assert f"owned by uid {NOBODY}" in str(err.value)


@needs_root
def test_a_symlink_is_judged_by_what_it_points_to(tmp_path: Path) -> None:
    target = tmp_path / "theirs"
    target.mkdir(mode=0o755)
    os.chown(target, NOBODY, NOBODY)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UnsafeDirectory, match=f"unsafe directory {target}: owned by uid"):
        check_dir(link)


def _start(tmp_path: Path, sock_dir: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dualbladed", "--namespace-size", "64MiB"]
    cmd += ["--socket", str(sock_dir / "grpc.sock"), "--state-dir", str(state_dir)]
    cmd += ["--namespace", str(tmp_path / "ns.img"), "--log-format", "json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)


@needs_root
def test_daemon_refuses_a_hijackable_socket_dir_with_one_line(tmp_path: Path) -> None:
    """The issue's attack: --socket inside a 0777 directory owned by another user."""
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)
    os.chmod(run, 0o777)
    res = _start(tmp_path, run, tmp_path / "state")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [
        f"dualbladed: cannot start: unsafe directory {run}: owned by uid {NOBODY}; "
        f"it and every parent must be owned by uid 0"
    ], res.stderr
    assert not (run / "grpc.sock").exists() and not (run / "handshake.sock").exists()


def test_daemon_refuses_a_world_writable_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    res = _start(tmp_path, tmp_path / "run", state)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"dualbladed: cannot start: unsafe directory {state}: writable by others (mode 0777); "
        "chmod go-w it"
    ]
    assert list(state.iterdir()) == []  # refused before anything was written there


def test_daemon_creates_its_directories_0750(tmp_path: Path) -> None:
    from dualblade_tools.daemonproc import DaemonProcess

    with DaemonProcess(tmp_path / "d", namespace_size="64MiB") as d:
        assert _mode(d.state_dir) == DIR_MODE
        assert _mode(d.socket.parent) == DIR_MODE
