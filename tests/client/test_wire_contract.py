"""dualblade.v1.wire is the one wire contract: both sides import it, and nothing else restates it.

The import-boundary and no-restatement checks read the source tree (AST and text); the default
socket path is checked against the daemon's real config loader, and the SDK's import without
the daemon package runs in a real subprocess.
"""

from __future__ import annotations

import ast
import mmap
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from dualblade.v1 import wire
from dualbladed.config import load_config

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "client" / "dualblade"
DAEMON = REPO / "daemon" / "dualbladed"
WIRE = SDK / "v1" / "wire.py"


def _imports(root: Path) -> list[tuple[Path, str]]:
    """Every module name imported (absolute imports) by the .py files under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path, node.module))
                found += [(path, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_status_codes_are_grpcs() -> None:
    assert {c.name: c.value for c in wire.Code} == {c.name: c.value[0] for c in grpc.StatusCode}
    assert wire.code_name(5) == "NOT_FOUND"
    assert wire.code_name(999) == "UNKNOWN"


def test_the_contract_values_are_pinned() -> None:
    """Changing any of these breaks every deployed client: it must be a deliberate, versioned
    change (bump PROTOCOL_VERSION), not a side effect."""
    assert wire.PROTOCOL_VERSION == 1
    assert (wire.REQUEST_HEADER.format, wire.REPLY_HEADER.format) == ("<Q", "<QI")
    assert (wire.ALIGNMENT, wire.HELLO_MAX_BYTES, wire.REPLY_MAX_BYTES) == (4096, 4096, 65536)
    assert (wire.GRPC_SOCKET_NAME, wire.HANDSHAKE_SOCKET_NAME) == ("grpc.sock", "handshake.sock")
    assert wire.LEASE_FRAME_MAX_BYTES == "lease_frame_max_bytes"
    assert wire.LAYER_CHUNK_BYTES == 1 << 20


@pytest.mark.parametrize("euid", [0, 1000])
@pytest.mark.parametrize("xdg", [True, False])
def test_sdk_default_socket_is_the_daemons(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, euid: int, xdg: bool
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(os, "getuid", lambda: euid)
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    else:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    cfg = load_config([])
    assert wire.default_socket_path() == cfg.socket
    assert wire.handshake_socket_path(cfg.socket) == cfg.handshake_socket


def test_sdk_imports_without_the_daemon_package() -> None:
    """Only client/ on the path: the SDK (and its default socket) must not need dualbladed."""
    code = (
        "import sys, dualblade, dualblade.client as c\n"
        "assert not any(m.split('.')[0] == 'dualbladed' for m in sys.modules), 'daemon imported'\n"
        "print(c.default_socket())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DUALBLADE_SOCKET"}
    env["PYTHONPATH"] = str(REPO / "client")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("/grpc.sock")


def test_neither_side_imports_the_others_private_modules() -> None:
    sdk_to_daemon = [
        (p.relative_to(REPO), m) for p, m in _imports(SDK) if m.split(".")[0] == "dualbladed"
    ]
    assert sdk_to_daemon == []
    daemon_to_sdk = [
        (p.relative_to(REPO), m)
        for p, m in _imports(DAEMON)
        if m.split(".")[0] == "dualblade" and not m.startswith("dualblade.v1")
    ]
    assert daemon_to_sdk == []


@pytest.mark.parametrize(
    "literal",
    [
        'Struct("<Q',
        '"grpc.sock"',
        '"handshake.sock"',
        '"lease_frame_max_bytes"',
        "PROTOCOL_VERSION =",
        "code.value[0]: code.name",
    ],
)
def test_no_wire_constant_is_restated(literal: str) -> None:
    """Outside wire.py (and generated code), the daemon and the SDK name these constants.

    (4096 is left out: it also counts bytes that are no wire constant; the pinned test above and
    the import checks cover the alignment.)"""
    hits = [
        str(p.relative_to(REPO))
        for root in (SDK, DAEMON)
        for p in root.rglob("*.py")
        if p != WIRE and not p.name.startswith("dualblade_pb2") and literal in p.read_text()
    ]
    assert hits == []


def test_close_mapping_defers_while_a_view_is_alive() -> None:
    mapping = mmap.mmap(-1, mmap.PAGESIZE)
    view = memoryview(mapping)
    assert wire.close_mapping(mapping) is False  # exported: left to the last view
    assert not mapping.closed
    view.release()
    assert wire.close_mapping(mapping) is True
    assert mapping.closed
