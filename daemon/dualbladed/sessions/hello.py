"""The handshake's hello: the one message a client sends before it has a session.

One JSON datagram, ``{"v": 1, "tenant": "<label>", "arena_bytes": N}``. It is the only input
the daemon parses from a process it has not yet identified beyond SO_PEERCRED, so it is
validated strictly: unknown fields are refused (a typo must not silently select a default),
the label is a short safe token (it scopes objects and appears in logs and metrics), and the
arena size is an aligned value within the daemon's limit. Every refusal names the rule.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from dualblade.v1.wire import ALIGNMENT, PROTOCOL_VERSION
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
