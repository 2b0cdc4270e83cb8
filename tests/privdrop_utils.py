"""Run a snippet of Python as another uid, wherever the checkout and its venv live.

Why: tests that check per-uid behaviour (tenants, the admin group) run a client as uid 65534
in a child process. The interpreter's venv and the checkout may sit in a directory that uid
cannot read (a root user's clone under ``/root``, or any ``mktemp -d`` folder, mode 0700), so
the child imports everything it needs while still root and only then drops privileges. gRPC
imports some of its modules lazily (``grpc._channel`` on the first ``insecure_channel``), so
"everything" is loaded explicitly: every module of the ``grpc`` package plus ``preload``.

To make a forgotten import fail the same way in every checkout, and not only in unreadable
ones, the child refuses, after the drop, every import from outside the standard library and
exits non-zero naming the module, even when the snippet caught the ``ImportError``.

Every test that drops privileges goes through :func:`run_as`; sockets and directories that the
other uid must reach come from :func:`shared_tmpdir` and :func:`open_to_others`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534
"""The uid (and gid) of 'nobody' on Debian, the conventional unprivileged other user."""

# The SDK's client side: what a test's snippet needs to open a session and call both services.
SDK_MODULES = (
    "dualblade",
    "dualblade.client",
    "dualblade.errors",
    "dualblade.v1.dualblade_pb2",
    "dualblade.v1.dualblade_pb2_grpc",
)

_CHILD = """
import importlib, os, pkgutil, sys

def _preload(names):
    import grpc
    for info in pkgutil.iter_modules(grpc.__path__, "grpc."):
        # Plain modules hold the lazily imported internals; of the subpackages only
        # grpc.experimental is imported lazily by grpc itself (secure channel helpers).
        if not info.ispkg or info.name == "grpc.experimental":
            importlib.import_module(info.name)
    for name in names:
        importlib.import_module(name)

def _drop(uid, gid, groups):
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        sys.exit("privileges were not dropped: setuid(0) succeeded")

class _LateImportGuard:
    # After the drop only the standard library may still be imported: it is readable by all.
    refused = []

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in sys.stdlib_module_names:
            return None
        self.refused.append(name)
        raise ImportError(f"{{name}} imported after dropping privileges; preload it")

_preload({preload!r})
_drop({uid!r}, {gid!r}, {groups!r})
os.chdir("/")
sys.meta_path.insert(0, _LateImportGuard())
try:
    exec(compile({code!r}, "<unprivileged>", "exec"), {{"__name__": "__main__"}})
finally:
    if _LateImportGuard.refused:
        sys.stderr.write(
            "privdrop_utils: imported after dropping privileges (add to preload): "
            + ", ".join(_LateImportGuard.refused) + "\\n"
        )
        sys.stderr.flush()
        os._exit(70)
"""


def run_as(
    code: str,
    *,
    uid: int = NOBODY,
    gid: int = NOBODY,
    groups: Sequence[int] = (),
    preload: Iterable[str] = SDK_MODULES,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a child Python that drops to ``uid``/``gid``/``groups`` first.

    The child imports all of ``grpc`` and ``preload`` as root, then drops every id (real,
    effective, saved) and checks it cannot regain root. Returns the finished process with text
    stdout/stderr; exit status 70 means the snippet imported a module that was not preloaded.
    """
    if os.geteuid() != 0:
        raise PermissionError("run_as needs root to switch uid; skip the test first")
    script = _CHILD.format(
        preload=list(preload),
        uid=uid,
        gid=gid,
        groups=list(groups),
        code=textwrap.dedent(code),
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )


def _others_can_traverse(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


@contextmanager
def shared_tmpdir(prefix: str = "dbshared-") -> Iterator[Path]:
    """A fresh directory (mode 0755) that other uids can reach, removed afterwards.

    pytest's ``tmp_path`` is private to its user, and ``$TMPDIR`` may be too: the first of
    ``$TMPDIR``, /tmp and /var/tmp whose every ancestor others can traverse is used.
    """
    candidates = [tempfile.gettempdir(), "/tmp", "/var/tmp"]
    base = next((Path(c) for c in candidates if _others_can_traverse(Path(c))), None)
    if base is None:
        raise RuntimeError(f"none of {candidates} is reachable by other users")
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        os.chmod(root, 0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def open_to_others(*sockets: Path) -> None:
    """Let other uids connect to ``sockets`` (0666) through their directories (0755)."""
    for sock in sockets:
        os.chmod(sock.parent, 0o755)
        os.chmod(sock, 0o666)
