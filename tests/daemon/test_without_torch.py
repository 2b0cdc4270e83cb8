"""The SDK's bytes API in a process where torch cannot be imported, against the real daemon.

torch is optional for the SDK (``pip install dualblade`` without the ``torch`` extra). This venv
has torch, so the child interpreter installs an import blocker first: a ``sys.meta_path`` finder
that answers every ``torch``/``torch.*`` import with ``ModuleNotFoundError``, exactly what an
environment without torch raises, and counts the attempts. The child then runs the whole bytes
API (put, get, get_into a bytearray, put_many, get_many, stat, delete) on a real
``DaemonProcess`` and prints a JSON report; the tensor-only API must fail with a clear ImportError
and leave the session usable. The parent checks the report and reads back the persistent
object the child stored (bytes the parent chose), so they are checked on both sides of the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dualblade import Client
from dualblade_tools.daemonproc import DaemonProcess

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, os, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                NoTorch.attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
    # The blocker works (torch *is* installed in this venv, so this would otherwise succeed).
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        sys.exit("the torch blocker did not block")
    blocked_probe = len(NoTorch.attempts)

    from dualblade import Client, errors

    socket_path, keep_path = sys.argv[1], sys.argv[2]
    one = os.urandom(3 * 4096 + 17)
    many = [(f"nt/many/{i}".encode(), os.urandom(20_000 + 4097 * i)) for i in range(8)]
    with open(keep_path, "rb") as f:
        keep = f.read()
    report = {"steps": []}

    with Client.connect(socket_path, tenant="notorch", arena_bytes=8 << 20) as c:
        info = c.put(b"nt/one", one)
        assert info.size == len(one), info
        assert c.get(b"nt/one") == one
        buf = bytearray(len(one) + 100)
        assert c.get_into(b"nt/one", buf) == len(one)
        assert bytes(buf[: len(one)]) == one and bytes(buf[len(one):]) == bytes(100)
        report["steps"].append("put/get/get_into")

        infos = c.put_many(many)
        assert [(o.key, o.size) for o in infos] == [(k, len(v)) for k, v in many], infos
        assert c.get_many([k for k, _ in many]) == [v for _, v in many]
        report["steps"].append("put_many/get_many")

        st = c.stat(b"nt/one")
        assert (st.key, st.size, st.persistent) == (b"nt/one", len(one), False), st
        c.put(b"nt/keep", keep, persistent=True)
        assert c.stat(b"nt/keep").persistent is True
        report["steps"].append("stat")

        c.delete(b"nt/one")
        try:
            c.get(b"nt/one")
        except errors.NotFound:
            pass
        else:
            sys.exit("deleted object still readable")
        c.delete_many([k for k, _ in many])
        assert c.contains_many([k for k, _ in many]) == [False] * len(many)
        report["steps"].append("delete")
        bytes_api_attempts = NoTorch.attempts[blocked_probe:]

        tensor_errors = {}
        for name, call in (
            ("arena_tensor", lambda: c.arena_tensor((4, 4), "float32")),
            ("staging", lambda: c.staging(4096)),
        ):
            try:
                call()
            except ImportError as err:
                tensor_errors[name] = f"{type(err).__name__}: {err}"
            else:
                sys.exit(f"{name} worked without torch")
        # The failed tensor calls cost nothing: the session still works.
        c.put(b"nt/after", b"still fine")
        assert c.get(b"nt/after") == b"still fine"
        report["steps"].append("tensor API refused")

    report["bytes_api_torch_imports"] = bytes_api_attempts
    report["tensor_errors"] = tensor_errors
    report["torch_in_sys_modules"] = "torch" in sys.modules
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture
def daemon(tmp_path: Path):
    with DaemonProcess(tmp_path / "d") as d:
        yield d


def test_bytes_api_works_without_torch(daemon: DaemonProcess, tmp_path: Path) -> None:
    script = tmp_path / "no_torch_child.py"
    script.write_text(CHILD)
    keep = os.urandom(50_000)
    keep_path = tmp_path / "keep.bin"
    keep_path.write_bytes(keep)
    out = subprocess.run(
        [sys.executable, str(script), str(daemon.socket), str(keep_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"child failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert len(lines) == 1, out.stdout + out.stderr
    report = json.loads(lines[0].removeprefix("REPORT "))

    assert report["steps"] == [
        "put/get/get_into",
        "put_many/get_many",
        "stat",
        "delete",
        "tensor API refused",
    ]
    assert report["torch_in_sys_modules"] is False
    assert report["bytes_api_torch_imports"] == [], "the bytes API tried to import torch"
    assert set(report["tensor_errors"]) == {"arena_tensor", "staging"}
    for name, message in report["tensor_errors"].items():
        assert "torch" in message, f"{name} failed without saying torch is missing: {message}"

    # The child's persistent object, read by a client in this (torch-enabled) process.
    with Client.connect(daemon.socket, tenant="notorch", arena_bytes=1 << 20) as c:
        assert c.get(b"nt/keep") == keep
