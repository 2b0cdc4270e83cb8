"""systemd/: the unit verifies with NO output, its exposure is <= 2.5, sysusers/tmpfiles apply.

`systemd-analyze verify` exits 0 on parse problems and only prints them (unknown keys or values
such as `Type=notifyy` are reported as "..., ignoring"; it exits 1 only for hard errors such as a
missing ExecStart binary), so the test requires empty output rather than a zero exit code. systemd need not be PID 1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "dualbladed.service"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at a binary that exists here (verify checks it)."""
    binary = Path(sys.executable).parent / "dualbladed"
    if not binary.exists():
        binary = Path("/bin/true")
    text = UNIT.read_text().replace("/usr/local/bin/dualbladed", str(binary), 1)
    path = tmp_path / "dualbladed.service"
    path.write_text(text)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_unit_verifies_with_no_output(tmp_path: Path) -> None:
    result = run("systemd-analyze", "verify", str(unit_copy(tmp_path)))
    assert result.returncode == 0
    assert (result.stdout + result.stderr).strip() == ""


@needs_analyze
def test_unit_exposure(tmp_path: Path) -> None:
    result = run("systemd-analyze", "security", "--offline=yes", str(unit_copy(tmp_path)))
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert m is not None, result.stdout + result.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE


@needs_analyze
def test_verify_catches_a_broken_copy(tmp_path: Path) -> None:
    """The empty-output rule has teeth: a typo that verify only warns about is caught."""
    path = unit_copy(tmp_path)
    path.write_text(path.read_text().replace("Type=notify", "Type=notifyy"))
    result = run("systemd-analyze", "verify", str(path))
    assert "notifyy" in result.stdout + result.stderr


def test_unit_contract() -> None:
    text = UNIT.read_text()
    settings = [line for line in text.splitlines() if line and line[0] not in "#;["]
    for line in settings:
        assert "#" not in line, f"inline comment (systemd would parse it as value): {line}"
    keys = dict(line.split("=", 1) for line in settings if not line.startswith("DeviceAllow"))
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main"
    assert keys["ExecStart"] == "/usr/local/bin/dualbladed --config /etc/dualblade/dualbladed.toml"
    assert keys["RuntimeDirectory"] == keys["StateDirectory"] == "dualblade"
    assert keys["UMask"] == "0007" and keys["DevicePolicy"] == "closed"
    devices = [line.split("=", 1)[1] for line in settings if line.startswith("DeviceAllow=")]
    assert devices == [
        "block-blkext rw",
        "block-sd rw",
        "block-virtblk rw",
        "block-loop rw",
    ]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers absent")
def test_sysusers_creates_user_and_groups(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\ndisk:x:6:\n")
    result = run("systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "dualblade.sysusers.conf"))
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    groups = {line.split(":")[0]: line for line in (tmp_path / "etc" / "group").read_text().split()}
    assert re.search(r"^dualblade:x:\d+:\d+:", passwd, re.M)
    assert "dualblade" in groups and "dualblade-admin" in groups
    assert groups["disk"].endswith(":dualblade")


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="systemd-tmpfiles absent")
def test_tmpfiles_creates_config_dir(tmp_path: Path) -> None:
    conf = str(SYSTEMD / "dualblade.tmpfiles.conf")
    result = run("systemd-tmpfiles", f"--root={tmp_path}", "--create", conf)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc" / "dualblade").is_dir()
