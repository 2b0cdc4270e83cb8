"""``dbctl health`` against a real daemon: serving, then a nearly full namespace, then serving again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dualblade import Client, errors
from dualblade_tools.daemonproc import DaemonProcess

CHUNK = 4 << 20


def _health(socket: Path) -> tuple[int, dict[str, object]]:
    cmd = [sys.executable, "-m", "dualblade_tools.dbctl", "--socket", str(socket), "--json"]
    out = subprocess.run([*cmd, "health"], capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout)


def test_health_reports_a_nearly_full_namespace(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "d", namespace_size="64MiB") as daemon:
        assert _health(daemon.socket) == (0, {"serving": True, "problems": []})
        with Client.connect(daemon.socket, tenant="filler", arena_bytes=16 << 20) as kv:
            keys = []
            block = b"\x5a" * CHUNK
            while True:  # fill the direct path until the daemon refuses
                key = f"fill/{len(keys)}".encode()
                try:
                    kv.put(key, block, path="direct")
                except errors.DualbladeError as err:
                    assert "space" in str(err).lower() or isinstance(err, errors.ResourceExhausted)
                    break
                keys.append(key)
                assert len(keys) < 64, "a 64 MiB namespace took more than 64 x 4 MiB"
            # Top it up below the 2% threshold with small objects.
            small = 0
            while True:
                try:
                    kv.put(f"fill/small/{small}".encode(), b"\x01" * 4096, path="direct")
                except errors.DualbladeError:
                    break
                small += 1
            code, report = _health(daemon.socket)
            assert code == 1 and report["serving"] is False
            (problem,) = report["problems"]
            assert "namespace nearly full" in str(problem)
            text = subprocess.run(
                [sys.executable, "-m", "dualblade_tools.dbctl", "--socket", str(daemon.socket)]
                + ["health"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert text.returncode == 1 and "NOT serving" in text.stdout
            for key in keys[:4]:
                kv.delete(key)
        assert _health(daemon.socket) == (0, {"serving": True, "problems": []})
