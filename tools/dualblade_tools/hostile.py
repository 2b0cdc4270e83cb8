"""A hostile local user, for tests and figures: the session attacks of issue 15, as another uid.

``python -m dualblade_tools.hostile --uid 65534 --socket S ATTACK [ATTACK ...]`` imports
everything it will need, *then* drops to ``--uid`` (setgroups, setresgid, setresuid: it must be
started as root), so it works from a checkout that uid cannot read. It runs the attacks at once,
one thread each, prints one line ``READY <json>`` with what each achieved, keeps every session
it opened until its stdin closes, then prints ``DONE <json>`` and exits. The attacks:

* ``arenas``: open sessions asking ``--arena-bytes`` each until the daemon refuses, then write
  one byte to every page of every arena (committing them);
* ``sessions``: open small sessions until the daemon refuses;
* ``hangup``: for ``--seconds``, send hellos for the largest arena and hang up at once;
* ``token``: with a stolen token (``$DUALBLADE_STOLEN_TOKEN``) and key
  (``$DUALBLADE_STOLEN_KEY``), Stat the key and call Admin.Status on the shared gRPC socket, on
  this uid's own gRPC socket, and try to connect to the victim's socket
  (``$DUALBLADE_VICTIM_SOCKET``); reports the status code of each;
* ``adminlane``: open a session on the admin lane's handshake socket.

:func:`spawn` starts it from Python and waits for ``READY``. Nothing here is mocked: real
sockets, a real daemon, a real other uid.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import mmap
import os
import pkgutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from dualblade import errors
from dualblade._handshake import HandshakeResult, open_session
from dualblade.v1 import dualblade_pb2 as pb
from dualblade.v1 import dualblade_pb2_grpc as pb_grpc
from dualblade.v1.wire import HANDSHAKE_SOCKET_NAME, PROTOCOL_VERSION, admin_handshake_socket_path

ATTACKS = ("arenas", "sessions", "hangup", "token", "adminlane")
PAGE = mmap.PAGESIZE


def _handshake_path(grpc_socket: str) -> str:
    return os.path.join(os.path.dirname(grpc_socket), HANDSHAKE_SOCKET_NAME)


def _open_until_refused(
    where: str, label: str, arena_bytes: int, limit: int, held: list[HandshakeResult]
) -> dict[str, Any]:
    began = time.monotonic()
    refusal = ""
    retries = 0
    while len(held) < limit:
        try:
            held.append(open_session(where, label, arena_bytes, timeout=10))
        except errors.Unavailable as err:  # dropped (e.g. evicted by our own flood): again
            retries += 1
            if retries > 10_000:
                refusal = f"{err.code}: {err}"
                break
            time.sleep(0.001)
        except errors.DualbladeError as err:
            refusal = f"{err.code}: {err}"
            break
    seconds = time.monotonic() - began
    return {"opened": len(held), "refusal": refusal, "seconds": seconds, "retries": retries}


def attack_arenas(args: argparse.Namespace, held: list[HandshakeResult]) -> dict[str, Any]:
    mine: list[HandshakeResult] = []
    out = _open_until_refused(
        _handshake_path(args.socket), "arenas", args.arena_bytes, 10_000, mine
    )
    touched = 0
    for hs in mine:
        with mmap.mmap(hs.arena_fd, hs.arena_bytes) as m:
            for off in range(0, hs.arena_bytes, PAGE):
                m[off] = 1
            touched += hs.arena_bytes
    held.extend(mine)
    return {**out, "arena_bytes": args.arena_bytes, "touched_bytes": touched}


def attack_sessions(args: argparse.Namespace, held: list[HandshakeResult]) -> dict[str, Any]:
    mine: list[HandshakeResult] = []
    out = _open_until_refused(_handshake_path(args.socket), "flood", PAGE, 100_000, mine)
    held.extend(mine)
    return out


def attack_hangup(args: argparse.Namespace, _held: list[HandshakeResult]) -> dict[str, Any]:
    hello = json.dumps(
        {"v": PROTOCOL_VERSION, "tenant": "hangup", "arena_bytes": args.hangup_arena_bytes}
    ).encode()
    where = _handshake_path(args.socket)
    sent = failed = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(where)
            sock.send(hello)
            sent += 1
        except OSError:
            failed += 1
            time.sleep(0.001)
        finally:
            sock.close()
    return {"hellos_sent": sent, "connect_failures": failed}


def _code(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as err:
        return f"{err.code().name}: {err.details()}"
    return "OK"


def attack_token(args: argparse.Namespace, held: list[HandshakeResult]) -> dict[str, Any]:
    token = os.environ["DUALBLADE_STOLEN_TOKEN"]
    key = os.environ["DUALBLADE_STOLEN_KEY"].encode()
    metadata = (("authorization", f"Bearer {token}"),)
    out: dict[str, Any] = {}
    own = open_session(_handshake_path(args.socket), "thief", PAGE, timeout=10)
    held.append(own)
    targets = {"shared": args.socket, "own": own.grpc_socket or args.socket}
    victim = os.environ.get("DUALBLADE_VICTIM_SOCKET")
    if victim:
        targets["victim"] = victim
    for name, path in targets.items():
        with grpc.insecure_channel(f"unix://{path}") as channel:
            store, admin = pb_grpc.StoreStub(channel), pb_grpc.AdminStub(channel)
            out[f"{name}_stat"] = _code(
                functools.partial(store.Stat, pb.StatRequest(key=key), metadata=metadata, timeout=5)
            )
            out[f"{name}_admin"] = _code(
                functools.partial(admin.Status, pb.StatusRequest(), metadata=metadata, timeout=5)
            )
    # Sanity: the attacker's own token works on its own socket (so the refusals above mean
    # "wrong uid", not "broken socket").
    with grpc.insecure_channel(f"unix://{targets['own']}") as channel:
        own_md = (("authorization", f"Bearer {own.token}"),)
        out["own_token_on_own_socket"] = _code(
            lambda: pb_grpc.StoreStub(channel).Stat(
                pb.StatRequest(key=key), metadata=own_md, timeout=5
            )
        )
    return out


def attack_adminlane(args: argparse.Namespace, held: list[HandshakeResult]) -> dict[str, Any]:
    """Try the admin lane's handshake socket (only root and the admin group may use it)."""
    try:
        held.append(open_session(admin_handshake_socket_path(args.socket), "sneak", PAGE))
    except errors.DualbladeError as err:
        return {"result": f"{err.code}: {err}"}
    return {"result": "OK"}


_ATTACKS: dict[str, Callable[[argparse.Namespace, list[HandshakeResult]], dict[str, Any]]] = {
    "arenas": attack_arenas,
    "sessions": attack_sessions,
    "hangup": attack_hangup,
    "token": attack_token,
    "adminlane": attack_adminlane,
}


def _preload_grpc() -> None:
    """Import the grpc modules grpc itself imports lazily (``grpc._channel`` on the first
    channel): after the drop the venv may be unreadable (a checkout in a 0700 directory)."""
    for info in pkgutil.iter_modules(grpc.__path__, "grpc."):
        if not info.ispkg or info.name == "grpc.experimental":
            importlib.import_module(info.name)


def drop_privileges(uid: int) -> None:
    """Become ``uid`` for good (real, effective and saved ids; no supplementary groups)."""
    _preload_grpc()
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise SystemExit("privileges were not dropped: setuid(0) succeeded")
    os.chdir("/")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dualblade_tools.hostile", description=__doc__)
    p.add_argument("--uid", type=int, default=65534)
    p.add_argument("--socket", required=True, help="the daemon's shared gRPC socket")
    p.add_argument("--arena-bytes", type=int, default=64 << 20)
    p.add_argument("--hangup-arena-bytes", type=int, default=4 << 30)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("attacks", nargs="+", choices=ATTACKS)
    args = p.parse_args(argv)
    drop_privileges(args.uid)
    held: list[HandshakeResult] = []
    results: dict[str, Any] = {}
    lock = threading.Lock()

    def run(name: str) -> None:
        try:
            result = _ATTACKS[name](args, held)
        except Exception as err:  # noqa: BLE001 - reported to the caller, who asserts on it
            result = {"error": f"{type(err).__name__}: {err}"}
        with lock:
            results[name] = result

    threads = [threading.Thread(target=run, args=(name,)) for name in args.attacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results["uid"] = os.getuid()
    results["held_sessions"] = len(held)
    print("READY " + json.dumps(results), flush=True)
    sys.stdin.read()  # hold every session until the caller closes our stdin
    for hs in held:
        hs.close()
    print("DONE " + json.dumps({"closed": len(held)}), flush=True)
    return 0


@dataclass
class Attacker:
    """A running attacker process (see :func:`spawn`)."""

    proc: subprocess.Popen[str]
    ready: dict[str, Any]

    def finish(self, timeout: float = 30.0) -> str:
        """Close its stdin (it drops every session) and return the rest of its output."""
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.proc.wait(timeout)
        out, err = self.proc.stdout.read(), self.proc.stderr.read()
        if self.proc.returncode != 0:
            raise RuntimeError(f"attacker exited {self.proc.returncode}: {err[-2000:]}")
        return out


def start(
    socket_path: str | os.PathLike[str],
    attacks: Sequence[str],
    *,
    uid: int = 65534,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """Start the attacker as ``uid`` (see the module docstring); :func:`wait_ready` follows."""
    cmd = [sys.executable, "-m", "dualblade_tools.hostile", "--uid", str(uid)]
    cmd += ["--socket", os.fspath(socket_path), *extra, *attacks]
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR", **(env or {})},
    )


def wait_ready(proc: subprocess.Popen[str]) -> Attacker:
    """Wait for the attacker's ``READY`` line (its attacks are done; it holds its sessions)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        _out, err = proc.communicate()
        raise RuntimeError(f"attacker never got ready: {line!r} {err[-2000:]}")
    return Attacker(proc, json.loads(line[len("READY ") :]))


def spawn(
    socket_path: str | os.PathLike[str],
    attacks: Sequence[str],
    *,
    uid: int = 65534,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Attacker:
    """Start the attacker as ``uid`` and wait for its ``READY`` line."""
    return wait_ready(start(socket_path, attacks, uid=uid, env=env, extra=extra))


if __name__ == "__main__":
    raise SystemExit(main())
