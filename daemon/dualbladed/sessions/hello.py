"""The handshake's messages: the hello a client sends before it has a session, and the reply.

Protocol v1 (every message is one UTF-8 JSON datagram on the handshake socket,
:mod:`dualbladed.sessions.handshake`; the version, size caps, alignment and socket names are
constants of the wire contract shared with the SDK, :mod:`dualblade.v1.wire`)::

    client -> daemon   {"v": 1, "tenant": "<label>", "arena_bytes": N}     (arena_bytes optional)
    daemon -> client   {"v": 1, "session_id": "...", "token": "...", "tenant": "<uid>/<label>",
                        "arena_bytes": N, "alignment": 4096, "limits": {...},
                        "grpc_socket": "<runtime>/uid/<uid>/grpc.sock"}   (grpc_socket optional)
                       + SCM_RIGHTS: the arena memfd (sealed, see dualbladed.sessions.arena)
                   or  {"v": 1, "error": {"code": "INVALID_ARGUMENT", "message": "..."}}, then close

The hello is the only input the daemon parses from a process it has not yet identified beyond
SO_PEERCRED, so it is validated strictly: unknown fields are refused (a typo must not silently
select a default, and a newer client learns at once that it talks to an older daemon), the label
is 1..64 characters of ``[A-Za-z0-9._-]`` (it scopes objects and appears in logs and metrics),
and ``arena_bytes`` is a multiple of ``wire.ALIGNMENT`` (4096) within
``[ALIGNMENT, max_arena_bytes]``. Every refusal names the rule.

In the reply, ``limits`` is the daemon's ``[limits]`` section, plus
``wire.LEASE_FRAME_MAX_BYTES`` when the lease carries frames. ``grpc_socket`` is the gRPC socket
the session's token is valid on: one per uid, in a directory only that uid (and root) can enter
(:mod:`dualbladed.service.uidsockets`), so a token handed to another uid is useless. Clients
that find no ``grpc_socket`` use the gRPC socket next to the handshake socket.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from dualblade.v1.wire import ALIGNMENT, HELLO_MAX_BYTES, PROTOCOL_VERSION
from dualbladed.errors import InvalidArgument, Misaligned, OutOfRange

_TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HELLO_FIELDS = frozenset({"v", "tenant", "arena_bytes"})


@dataclass(frozen=True)
class Hello:
    """A validated client hello."""

    tenant: str
    arena_bytes: int


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_hello(data: bytes, *, default_arena_bytes: int, max_arena_bytes: int) -> Hello:
    """Parse and validate one hello datagram; InvalidArgument (or a subclass) names the rule."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise InvalidArgument(f"hello is not a valid UTF-8 JSON document: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"hello must be a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _HELLO_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"unknown hello field(s) {_clip(unknown)}; v1 knows v, tenant, arena_bytes"
        )
    version = doc.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise InvalidArgument(
            f"unsupported handshake version {_clip(version)}; this daemon speaks {PROTOCOL_VERSION}"
        )
    tenant = doc.get("tenant")
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidArgument(
            f"tenant label must be 1..64 characters of [A-Za-z0-9._-], got {_clip(tenant)}"
        )
    arena_bytes = doc.get("arena_bytes")
    if arena_bytes is None:
        arena_bytes = default_arena_bytes
    if isinstance(arena_bytes, bool) or not isinstance(arena_bytes, int):
        raise InvalidArgument(f"arena_bytes must be an integer, got {_clip(arena_bytes)}")
    if arena_bytes % ALIGNMENT:
        raise Misaligned("arena_bytes", arena_bytes, ALIGNMENT)
    if not ALIGNMENT <= arena_bytes <= max_arena_bytes:
        raise OutOfRange(
            f"arena_bytes {arena_bytes} is outside [{ALIGNMENT}, {max_arena_bytes}] "
            "(the daemon's max_arena_bytes)"
        )
    return Hello(tenant=tenant, arena_bytes=arena_bytes)


def receive_hello(
    sock: socket.socket, *, default_arena_bytes: int, max_arena_bytes: int
) -> Hello | None:
    """Read and parse the one hello datagram waiting on ``sock`` (non-blocking).

    None when the peer closed before sending one. Raises BlockingIOError when nothing is there
    yet, OSError when the peer vanished, and the :func:`parse_hello` errors, plus
    InvalidArgument for a datagram above ``wire.HELLO_MAX_BYTES`` or one carrying file
    descriptors (the kernel discards fds we did not ask for, so none leak).
    """
    data, _anc, flags, _addr = sock.recvmsg(HELLO_MAX_BYTES)
    if not data and not flags:
        return None
    if flags & socket.MSG_TRUNC:
        raise InvalidArgument(f"hello exceeds {HELLO_MAX_BYTES} bytes")
    if flags & socket.MSG_CTRUNC:
        raise InvalidArgument("hello must not carry file descriptors or other ancillary data")
    return parse_hello(
        data, default_arena_bytes=default_arena_bytes, max_arena_bytes=max_arena_bytes
    )


def grant_reply(
    *,
    session_id: str,
    token: str,
    tenant: str,
    arena_bytes: int,
    limits: Mapping[str, int],
    grpc_socket: str | None = None,
) -> bytes:
    """The reply that opens a session (sent with the arena memfd as SCM_RIGHTS)."""
    reply: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "session_id": session_id,
        "token": token,
        "tenant": tenant,
        "arena_bytes": arena_bytes,
        "alignment": ALIGNMENT,
        "limits": limits,
    }
    if grpc_socket is not None:
        reply["grpc_socket"] = grpc_socket
    return json.dumps(reply).encode()


def error_reply(code: str, message: str) -> bytes:
    """The reply that refuses a hello; the daemon closes the connection after it."""
    return json.dumps({"v": PROTOCOL_VERSION, "error": {"code": code, "message": message}}).encode()
