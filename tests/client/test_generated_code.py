"""client/dualblade/v1 is exactly what the pinned grpcio-tools generates from protos/, and installable.

Regenerates with tools/gen_protos.sh into a temp dir (the venv's bin first on PATH, so
``python -m grpc_tools.protoc`` is the pinned dev dependency) and compares byte for byte. Then
checks the runtime floors in pyproject.toml admit the committed code: the generated
``_pb2_grpc.py`` refuses to import when ``grpcio < GRPC_GENERATED_VERSION``, and the ``_pb2.py``
refuses a protobuf runtime older than its gencode version (``ValidateProtobufRuntimeVersion``:
protobuf allows old gencode on a newer runtime of the same major, never new gencode on an old
runtime).
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the package depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "client" / "dualblade" / "v1"
FILES = ("dualblade_pb2.py", "dualblade_pb2.pyi", "dualblade_pb2_grpc.py")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def floor(requirement_name: str) -> tuple[int, ...]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.match(rf"{requirement_name}\s*>=\s*([\d.]+)", dep)
        if m:
            return version_tuple(m.group(1))
    raise AssertionError(f"pyproject.toml declares no {requirement_name}>= floor")


def test_regenerated_code_matches_committed(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev dependency) is not installed")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(REPO / "tools" / "gen_protos.sh"), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    _, mismatch, errors = filecmp.cmpfiles(GENERATED, tmp_path, FILES, shallow=False)
    assert not errors, f"missing generated files: {errors}"
    assert not mismatch, f"{mismatch} differ from protos/: run tools/gen_protos.sh and commit"


def test_grpcio_floor_admits_generated_code() -> None:
    text = (GENERATED / "dualblade_pb2_grpc.py").read_text()
    m = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", text)
    assert m is not None, "GRPC_GENERATED_VERSION not found in dualblade_pb2_grpc.py"
    assert version_tuple(m.group(1)) <= floor("grpcio")


def test_protobuf_floor_admits_generated_code() -> None:
    text = (GENERATED / "dualblade_pb2.py").read_text()
    m = re.search(r"ValidateProtobufRuntimeVersion\(\s*[\w.]+,\s*(\d+),\s*(\d+),\s*(\d+)", text)
    assert m is not None, "ValidateProtobufRuntimeVersion not found in dualblade_pb2.py"
    gencode = tuple(int(g) for g in m.groups())
    assert gencode <= floor("protobuf")
