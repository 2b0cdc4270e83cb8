"""dualbladed.lockfile: a second daemon (a real second process) is refused with a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualbladed.config import DaemonConfig, load_config
from dualbladed.errors import FailedPrecondition
from dualbladed.lockfile import InstanceLock, acquire_instance_locks, namespace_lock_path

HOLDER = textwrap.dedent(
    """
    import sys
    from dualbladed.config import load_config
    from dualbladed.lockfile import acquire_instance_locks
    cfg = load_config(sys.argv[1:])
    with acquire_instance_locks(cfg):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def config(tmp_path: Path, sock_dir: str, namespace: str = "ns.img") -> DaemonConfig:
    return load_config(
        ["--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / sock_dir / "g.sock")]
        + ["--namespace", str(tmp_path / namespace)]
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the locks of the 'a' daemon until its stdin closes."""
    args = ["--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "a" / "g.sock")]
    args += ["--namespace", str(tmp_path / "ns.img")]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_second_daemon_on_same_socket_is_refused(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    cfg = config(tmp_path, "a")
    with pytest.raises(FailedPrecondition) as err:
        acquire_instance_locks(cfg)
    assert str(err.value) == (
        f"dualbladed is already running (pid {holder.pid}) for socket {cfg.socket} / "
        f"namespace {tmp_path / 'ns.img'}; lock file {cfg.lock_path}"
    )


def test_second_daemon_on_other_socket_same_namespace_is_refused(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    os.symlink(tmp_path / "ns.img", tmp_path / "alias.img")
    cfg = config(tmp_path, "b", namespace="alias.img")
    with pytest.raises(FailedPrecondition) as err:
        acquire_instance_locks(cfg)
    msg = str(err.value)
    assert f"(pid {holder.pid}) for socket {tmp_path / 'a' / 'g.sock'}" in msg
    assert msg.endswith(f"lock file {tmp_path / 'ns.img'}.lock")
    # The failed attempt left nothing held: its own instance lock was released.
    with InstanceLock(cfg.lock_path):
        pass


def test_lock_dies_with_its_process(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    with acquire_instance_locks(config(tmp_path, "a")) as stack:
        assert stack is not None
        record = Path(config(tmp_path, "a").lock_path).read_text()
        assert record.startswith(f"{os.getpid()}\n")


def test_release_and_reacquire_in_process(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "x.lock")
    lock = InstanceLock(path, socket="/s", namespace="/n")
    with lock:
        assert lock.held
        with pytest.raises(FailedPrecondition, match=rf"\(pid {os.getpid()}\) for socket /s"):
            InstanceLock(path).acquire()
    assert not lock.held and Path(path).read_text() == ""
    with InstanceLock(path):
        pass


def test_unusable_lock_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(FailedPrecondition, match="cannot open lock file"):
        InstanceLock(str(tmp_path / "file" / "x.lock")).acquire()


def test_namespace_lock_path_for_block_device(tmp_path: Path) -> None:
    devices = [
        f"/dev/{n}" for n in ("loop0", "sda", "vda", "nvme0n1") if os.path.exists(f"/dev/{n}")
    ]
    if not devices:
        pytest.skip("no block device node in /dev to key a lock by")
    st = os.stat(devices[0])
    expected = tmp_path / f"blockdev-{os.major(st.st_rdev)}-{os.minor(st.st_rdev)}.lock"
    assert namespace_lock_path(devices[0], str(tmp_path)) == str(expected)


def test_namespace_lock_path_for_file(tmp_path: Path) -> None:
    os.symlink(tmp_path / "real.img", tmp_path / "link.img")
    assert namespace_lock_path(str(tmp_path / "link.img")) == str(tmp_path / "real.img.lock")
