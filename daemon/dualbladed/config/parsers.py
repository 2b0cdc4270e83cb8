"""Value parsers: each turns a raw TOML or command-line value into a checked setting value.

A parser is ``parse(key, raw) -> value``; every failure raises
:class:`~dualbladed.errors.InvalidArgument` naming the key, e.g.
``residency.mode: expected one of adaptive, pagecache, direct, got 'fast'``.

Sizes are integers (bytes) or strings with a binary unit: ``"4GiB"``, ``"512M"``, ``"1.5 GiB"``.
``K/M/G/T`` and ``Ki/Mi/Gi/Ti`` (optionally followed by ``B``) are powers of 1024. ``KB/MB/GB/TB``
are rejected as ambiguous rather than guessed.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from dualbladed.errors import InvalidArgument

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

Parser = Callable[[str, Any], Any]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {"K": KiB, "M": MiB, "G": GiB, "T": TiB}


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes from an int or a string such as ``"4GiB"``, ``"512M"`` or ``"1.5G"``."""
    if isinstance(text, bool):
        raise InvalidArgument(f"{what}: expected a size, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgument(f"{what}: expected a size >= 0, got {text}")
        return text
    if not isinstance(text, str):
        raise InvalidArgument(f"{what}: expected a size (int or string like '4GiB'), got {text!r}")
    m = _SIZE_RE.match(text)
    if m is None:
        raise InvalidArgument(f"{what}: expected a size like '4GiB' or '512M', got {text!r}")
    number, unit = m.groups()
    u = unit.upper()
    if u in ("", "B"):
        multiplier = 1
    elif u[0] in _SIZE_UNITS and u[1:] in ("", "I", "IB"):
        multiplier = _SIZE_UNITS[u[0]]
    elif u[0] in _SIZE_UNITS and u[1:] == "B":
        raise InvalidArgument(
            f"{what}: unit {unit!r} is ambiguous; write {u[0]}iB (powers of 1024) "
            f"or a plain byte count, got {text!r}"
        )
    else:
        raise InvalidArgument(f"{what}: unknown unit {unit!r} in {text!r}")
    try:
        value = Decimal(number) * multiplier
    except InvalidOperation as err:  # pragma: no cover - the regex admits only decimals
        raise InvalidArgument(f"{what}: bad number in {text!r}") from err
    if value != value.to_integral_value():
        raise InvalidArgument(f"{what}: {text!r} is not a whole number of bytes")
    return int(value)


def parse_listen_address(text: str, what: str = "address") -> tuple[str, int]:
    """``(host, port)`` from ``"127.0.0.1:9464"``/``"[::1]:9464"``/``"localhost:9464"``.

    Port 0 binds a free port (the bound one is logged). Only loopback hosts are accepted, plus the explicit wildcards ``0.0.0.0`` and ``::``: metrics
    name tenants, so exposing them beyond the host must be a deliberate, visible choice.
    """
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if m is None:
        raise InvalidArgument(f"{what}: expected 'host:port' or '[v6]:port', got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise InvalidArgument(f"{what}: port {port} is out of range 0-65535")
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as err:
        raise InvalidArgument(
            f"{what}: host must be an IP literal or localhost, got {host!r}"
        ) from err
    if not (ip.is_loopback or ip.is_unspecified):
        raise InvalidArgument(
            f"{what}: {host} is not a loopback address; use 127.0.0.1, or 0.0.0.0 to expose "
            "metrics on every interface deliberately"
        )
    return str(ip), port


def byte_size(minimum: int = 0, align: int = 1) -> Parser:
    def parse(key: str, raw: Any) -> int:
        value = parse_size(raw, key)
        if value < minimum:
            raise InvalidArgument(f"{key}: expected at least {minimum} bytes, got {value}")
        if value % align:
            raise InvalidArgument(f"{key}: {value} is not a multiple of {align} bytes")
        return value

    return parse


def optional(inner: Parser) -> Parser:
    return lambda key, raw: None if raw is None else inner(key, raw)


def integer(minimum: int, maximum: int | None = None) -> Parser:
    def parse(key: str, raw: Any) -> int:
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidArgument(f"{key}: expected an integer, got {raw!r}")
        if raw < minimum or (maximum is not None and raw > maximum):
            upper = "" if maximum is None else f" and <= {maximum}"
            raise InvalidArgument(f"{key}: expected an integer >= {minimum}{upper}, got {raw}")
        return raw

    return parse


def boolean(key: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise InvalidArgument(f"{key}: expected true or false, got {raw!r}")
    return raw


def one_of(*options: str, upper: bool = False) -> Parser:
    def parse(key: str, raw: Any) -> str:
        value = raw.upper() if upper and isinstance(raw, str) else raw
        if value not in options:
            raise InvalidArgument(f"{key}: expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def enum_member(kind: type[enum.Enum]) -> Parser:
    """A member of ``kind`` from its value (or the member itself)."""
    values = [m.value for m in kind]

    def parse(key: str, raw: Any) -> Any:
        if isinstance(raw, kind):
            return raw
        if not isinstance(raw, str) or raw not in values:
            raise InvalidArgument(f"{key}: expected one of {', '.join(values)}, got {raw!r}")
        return kind(raw)

    return parse


def text(key: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise InvalidArgument(f"{key}: expected a non-empty string, got {raw!r}")
    return raw


def group_name(key: str, raw: Any) -> str | None:
    if not isinstance(raw, str):
        raise InvalidArgument(f"{key}: expected a group name ('' for none), got {raw!r}")
    return raw or None


def listen_address(key: str, raw: Any) -> str:
    parse_listen_address(text(key, raw), key)
    return raw


def quota_map(key: str, raw: Any) -> Mapping[str, int]:
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{key}: expected a table of tenant = size, got {raw!r}")
    out: dict[str, int] = {}
    for tenant, value in raw.items():
        if not re.fullmatch(r"(\d+/)?[^/\s]+", tenant):
            raise InvalidArgument(f"{key}: tenant key {tenant!r} is not 'label' or 'uid/label'")
        out[tenant] = parse_size(value, f"{key}.{tenant}")
    return MappingProxyType(out)


def fraction(key: str, raw: Any) -> float:
    ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
    if not ok or not math.isfinite(raw) or not 0 <= raw <= 1:
        raise InvalidArgument(f"{key}: expected a fraction between 0 and 1, got {raw!r}")
    return float(raw)


def uid_quota_map(key: str, raw: Any) -> Mapping[int, int]:
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{key}: expected a table of uid = size, got {raw!r}")
    out: dict[int, int] = {}
    for uid, value in raw.items():
        if not re.fullmatch(r"\d+", str(uid)):
            raise InvalidArgument(f"{key}: key {uid!r} is not a numeric uid")
        out[int(uid)] = parse_size(value, f"{key}.{uid}")
    return MappingProxyType(out)


def weight_map(key: str, raw: Any) -> Mapping[str, float]:
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{key}: expected a table of tenant = weight, got {raw!r}")
    out: dict[str, float] = {}
    for tenant, value in raw.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{key}.{tenant}: expected a finite weight >= 0, got {value!r}")
        out[tenant] = float(value)
    return MappingProxyType(out)
