"""dualbladed configuration: one table of settings, a TOML file, and command-line overrides.

Every setting is declared exactly once, in ``_DEFINITIONS`` (the LMCache ``_CONFIG_DEFINITIONS``
pattern): its dotted TOML key, its parser/validator, its default and, where it has one, its
command-line flag. Loading, unknown-key detection, error messages and ``--help`` text are all
derived from that table, so a setting cannot be documented in one place and parsed in another.

Precedence, lowest first: built-in defaults < the ``--config`` TOML file < command-line flags.
No file is read implicitly; the systemd unit passes ``--config /etc/dualblade/dualbladed.toml``.

Defaults depend on who runs the daemon:

* root: state in ``/var/lib/dualblade``, sockets and locks in ``/run/dualblade`` (the unit's
  ``StateDirectory=``/``RuntimeDirectory=``);
* anyone else: state in ``$XDG_STATE_HOME/dualblade`` (else ``~/.local/state/dualblade``), sockets
  in ``$XDG_RUNTIME_DIR/dualblade`` (else ``/tmp/dualblade-<uid>``).

The gRPC socket is ``<runtime>/grpc.sock``; the handshake socket and the instance lock default to
``handshake.sock`` and ``dualbladed.lock`` *in the directory of the gRPC socket*, so moving the
socket with ``--socket`` moves its companions and two daemons on two sockets never share a lock.
When no namespace is configured, the daemon uses the embedded file namespace
``<state_dir>/namespace.img`` of ``DEFAULT_NAMESPACE_BYTES``, so it runs anywhere without a disk.

Sizes are integers (bytes) or strings with a binary unit: ``"4GiB"``, ``"512M"``, ``"1.5 GiB"``.
``K/M/G/T`` and ``Ki/Mi/Gi/Ti`` (optionally followed by ``B``) are powers of 1024. ``KB/MB/GB/TB``
are rejected as ambiguous rather than guessed. Relative paths in the file are relative to the
file's directory; relative paths on the command line are relative to the working directory.
TOML has no null: leave a key out to get its default; ``admin_group = ""`` means no admin group.

Every failure raises :class:`~dualbladed.errors.InvalidArgument` naming the key, e.g.
``residency.mode: expected one of adaptive, pagecache, direct, got 'fast'``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from dualbladed.errors import InvalidArgument

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

DEFAULT_CONFIG_PATH = "/etc/dualblade/dualbladed.toml"
DEFAULT_NAMESPACE_BYTES = 4 * GiB
NAMESPACE_FILE_NAME = "namespace.img"
GRPC_SOCKET_NAME = "grpc.sock"
HANDSHAKE_SOCKET_NAME = "handshake.sock"
LOCK_FILE_NAME = "dualbladed.lock"
RESIDENCY_MODES = ("adaptive", "pagecache", "direct")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# O_DIRECT requests and slabs must be whole logical blocks; 4 KiB covers 512e and 4Kn devices.
IO_ALIGNMENT = 4096


# --------------------------------------------------------------------------- the result types


@dataclass(frozen=True)
class NamespaceConfig:
    """The one namespace the daemon owns: a block device or a file (created if absent)."""

    path: str
    # Bytes for a file namespace that must be created or grown; None for block devices.
    size: int | None = None
    # Take a device even if it looks in use (mounted, foreign signature...).
    force: bool = False
    # Write a fresh superblock, destroying what the namespace held.
    format: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    max_batch_ops: int = 1024
    max_object_bytes: int = 256 * MiB
    max_arena_bytes: int = 4 * GiB
    default_arena_bytes: int = 256 * MiB
    max_sessions: int = 256


@dataclass(frozen=True)
class QuotaConfig:
    """Capacity quotas in bytes; 0 means unlimited."""

    default_bytes: int = 0
    # Keys are a tenant label ("llama") or "uid/label" ("1000/llama"); the latter wins.
    per_tenant: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def quota_for(self, uid: int, label: str) -> int:
        """The quota of tenant ``label`` run by ``uid``: exact uid/label, then label, then default."""
        exact = self.per_tenant.get(f"{uid}/{label}")
        if exact is not None:
            return exact
        return self.per_tenant.get(label, self.default_bytes)


@dataclass(frozen=True)
class IOConfig:
    request_bytes: int = 1 * MiB
    queue_depth: int = 8


@dataclass(frozen=True)
class ResidencyConfig:
    mode: str = "adaptive"
    # Memory the arbiter always leaves free for everyone else.
    reserve_bytes: int = 2 * GiB
    # The budget moves only when memory changes by more than this, to avoid demote/promote flaps.
    hysteresis_bytes: int = 256 * MiB
    # Share of the page-cache budget per tenant label (missing labels weigh 1.0).
    weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    migration_bytes_per_s: int = 256 * MiB
    # Hard cap on the page-cache path's footprint; None: only memory availability limits it.
    pagecache_max_bytes: int | None = None
    slab_bytes: int = 64 * MiB


@dataclass(frozen=True)
class MetricsConfig:
    # "host:port" for the Prometheus endpoint; None disables it. Loopback only, or "0.0.0.0".
    prometheus_address: str | None = None


@dataclass(frozen=True)
class DaemonConfig:
    namespace: NamespaceConfig
    state_dir: str
    socket: str
    handshake_socket: str
    lock_path: str
    log_format: str = "json"
    log_level: str = "INFO"
    # Group whose members get the admin role (and group ownership of the sockets); None: none.
    admin_group: str | None = "dualblade-admin"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    io: IOConfig = field(default_factory=IOConfig)
    residency: ResidencyConfig = field(default_factory=ResidencyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


# --------------------------------------------------------------------------- value parsers

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


def _size(minimum: int = 0, align: int = 1) -> Parser:
    def parse(key: str, raw: Any) -> int:
        value = parse_size(raw, key)
        if value < minimum:
            raise InvalidArgument(f"{key}: expected at least {minimum} bytes, got {value}")
        if value % align:
            raise InvalidArgument(f"{key}: {value} is not a multiple of {align} bytes")
        return value

    return parse


def _optional(inner: Parser) -> Parser:
    return lambda key, raw: None if raw is None else inner(key, raw)


def _int(minimum: int, maximum: int | None = None) -> Parser:
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


def _bool(key: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise InvalidArgument(f"{key}: expected true or false, got {raw!r}")
    return raw


def _choice(*options: str, upper: bool = False) -> Parser:
    def parse(key: str, raw: Any) -> str:
        value = raw.upper() if upper and isinstance(raw, str) else raw
        if value not in options:
            raise InvalidArgument(f"{key}: expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _text(key: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise InvalidArgument(f"{key}: expected a non-empty string, got {raw!r}")
    return raw


def _group(key: str, raw: Any) -> str | None:
    if not isinstance(raw, str):
        raise InvalidArgument(f"{key}: expected a group name ('' for none), got {raw!r}")
    return raw or None


def _address(key: str, raw: Any) -> str:
    parse_listen_address(_text(key, raw), key)
    return raw


def _quota_map(key: str, raw: Any) -> Mapping[str, int]:
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{key}: expected a table of tenant = size, got {raw!r}")
    out: dict[str, int] = {}
    for tenant, value in raw.items():
        if not re.fullmatch(r"(\d+/)?[^/\s]+", tenant):
            raise InvalidArgument(f"{key}: tenant key {tenant!r} is not 'label' or 'uid/label'")
        out[tenant] = parse_size(value, f"{key}.{tenant}")
    return MappingProxyType(out)


def _weight_map(key: str, raw: Any) -> Mapping[str, float]:
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{key}: expected a table of tenant = weight, got {raw!r}")
    out: dict[str, float] = {}
    for tenant, value in raw.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{key}.{tenant}: expected a finite weight >= 0, got {value!r}")
        out[tenant] = float(value)
    return MappingProxyType(out)


# --------------------------------------------------------------------------- the definitions


@dataclass(frozen=True)
class _Setting:
    key: str
    parse: Parser
    # The default; None for settings derived at load time (paths) or truly optional ones.
    default: Any
    help: str
    flag: str | None = None
    is_path: bool = False


_DEFINITIONS: tuple[_Setting, ...] = (
    _Setting(
        "namespace.path",
        _text,
        None,
        f"namespace: block device or file; default <state_dir>/{NAMESPACE_FILE_NAME}",
        "--namespace",
        is_path=True,
    ),
    _Setting(
        "namespace.size",
        _optional(_size(IO_ALIGNMENT, IO_ALIGNMENT)),
        None,
        "size of a file namespace, e.g. 4GiB",
        "--namespace-size",
    ),
    _Setting("namespace.force", _bool, False, "take a device that looks in use", "--force"),
    _Setting("namespace.format", _bool, False, "format the namespace (destroys data)", "--format"),
    _Setting("state_dir", _text, None, "metadata and page-cache files", "--state-dir", True),
    _Setting("socket", _text, None, "gRPC Unix socket path", "--socket", is_path=True),
    _Setting("handshake_socket", _text, None, "handshake socket path", is_path=True),
    _Setting("lock_path", _text, None, "instance lock file", is_path=True),
    _Setting("log_format", _choice(*LOG_FORMATS), "json", "json | console", "--log-format"),
    _Setting(
        "log_level",
        _choice(*LOG_LEVELS, upper=True),
        "INFO",
        "DEBUG | INFO | WARNING | ERROR",
        "--log-level",
    ),
    _Setting("admin_group", _group, "dualblade-admin", "admin role group ('' for none)"),
    _Setting("limits.max_batch_ops", _int(1), 1024, "operations per Batch call"),
    _Setting("limits.max_object_bytes", _size(1), 256 * MiB, "largest object"),
    _Setting("limits.max_arena_bytes", _size(IO_ALIGNMENT, IO_ALIGNMENT), 4 * GiB, "largest arena"),
    _Setting(
        "limits.default_arena_bytes",
        _size(IO_ALIGNMENT, IO_ALIGNMENT),
        256 * MiB,
        "arena size when the client asks for none",
    ),
    _Setting("limits.max_sessions", _int(1), 256, "concurrent sessions"),
    _Setting("quotas.default_bytes", _size(), 0, "per-tenant quota, 0 = unlimited"),
    _Setting("quotas.per_tenant", _quota_map, MappingProxyType({}), "label|uid/label = size"),
    _Setting("io.request_bytes", _size(IO_ALIGNMENT, IO_ALIGNMENT), 1 * MiB, "I/O request size"),
    _Setting("io.queue_depth", _int(1, 1024), 8, "I/O requests in flight"),
    _Setting("residency.mode", _choice(*RESIDENCY_MODES), "adaptive", "residency policy"),
    _Setting("residency.reserve_bytes", _size(), 2 * GiB, "memory left to others"),
    _Setting("residency.hysteresis_bytes", _size(), 256 * MiB, "budget change dead band"),
    _Setting("residency.weights", _weight_map, MappingProxyType({}), "label = weight"),
    _Setting("residency.migration_bytes_per_s", _size(1), 256 * MiB, "migration rate cap"),
    _Setting("residency.pagecache_max_bytes", _optional(_size()), None, "page-cache cap"),
    _Setting("residency.slab_bytes", _size(IO_ALIGNMENT, IO_ALIGNMENT), 64 * MiB, "slab size"),
    _Setting("metrics.prometheus_address", _optional(_address), None, "Prometheus host:port"),
)
_BY_KEY = {s.key: s for s in _DEFINITIONS}
_TABLES = {k.split(".")[0] for k in _BY_KEY if "." in k}


# --------------------------------------------------------------------------- defaults


def default_dirs() -> tuple[str, str]:
    """``(state_dir, runtime_dir)`` for the effective user (see the module docstring)."""
    if os.geteuid() == 0:
        return "/var/lib/dualblade", "/run/dualblade"
    home = os.path.expanduser("~")
    state_base = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    runtime_base = os.environ.get("XDG_RUNTIME_DIR")
    runtime = (
        os.path.join(runtime_base, "dualblade") if runtime_base else f"/tmp/dualblade-{os.getuid()}"
    )
    return os.path.join(state_base, "dualblade"), runtime


# --------------------------------------------------------------------------- loading


def build_arg_parser() -> argparse.ArgumentParser:
    """The ``dualbladed`` command line; a flag left out does not override the file."""
    p = argparse.ArgumentParser(
        prog="dualbladed",
        description="dualblade KV-cache tier daemon (page cache / NVMe-direct).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE", help=f"TOML config file, e.g. {DEFAULT_CONFIG_PATH}")
    for s in _DEFINITIONS:
        if s.flag is None:
            continue
        if s.parse is _bool:
            p.add_argument(s.flag, dest=s.key, action="store_true", help=s.help)
        else:
            p.add_argument(s.flag, dest=s.key, metavar=s.key.split(".")[-1].upper(), help=s.help)
    return p


def load_config(argv: Sequence[str] | None = None) -> DaemonConfig:
    """Parse ``argv`` (default ``sys.argv[1:]``), read ``--config`` and build the config."""
    args = vars(build_arg_parser().parse_args(argv))
    config_file = args.pop("config", None)
    raw: dict[str, Any] = {}
    if config_file is not None:
        raw.update(_read_file(config_file))
    cwd = os.getcwd()
    for key, value in args.items():
        setting = _BY_KEY[key]
        flag_value = setting.parse(f"{key} ({setting.flag})", value)
        raw[key] = os.path.join(cwd, flag_value) if setting.is_path else flag_value
    return config_from_values(raw)


def load_config_file(path: str) -> DaemonConfig:
    """The config described by one TOML file, without command-line overrides."""
    return config_from_values(_read_file(path))


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as err:
        raise InvalidArgument(f"config file {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument(f"config file {path}: {err}") from err
    base = os.path.dirname(os.path.abspath(path))
    values: dict[str, Any] = {}
    for name, value in doc.items():
        if name in _TABLES:
            if not isinstance(value, dict):
                raise InvalidArgument(f"{name}: expected a table ([{name}]), got {value!r}")
            items = [(f"{name}.{k}", v) for k, v in value.items()]
        else:
            items = [(name, value)]
        for key, v in items:
            setting = _BY_KEY.get(key)
            if setting is None:
                raise InvalidArgument(f"{key}: unknown setting in {path}")
            parsed = setting.parse(key, v)
            values[key] = os.path.join(base, parsed) if setting.is_path else parsed
    return values


def config_from_values(values: Mapping[str, Any]) -> DaemonConfig:
    """Build and cross-check a config from parsed values keyed by dotted key; fill defaults."""
    unknown = set(values) - set(_BY_KEY)
    if unknown:
        raise InvalidArgument(f"{sorted(unknown)[0]}: unknown setting")
    v = {s.key: values.get(s.key, s.default) for s in _DEFINITIONS}
    state_default, runtime_default = default_dirs()
    state_dir = os.path.abspath(v["state_dir"] or state_default)
    sock = os.path.abspath(v["socket"] or os.path.join(runtime_default, GRPC_SOCKET_NAME))
    sock_dir = os.path.dirname(sock)
    ns_path, ns_size = v["namespace.path"], v["namespace.size"]
    if ns_path is None:
        ns_path = os.path.join(state_dir, NAMESPACE_FILE_NAME)
        ns_size = DEFAULT_NAMESPACE_BYTES if ns_size is None else ns_size

    def section(cls: type, prefix: str) -> Any:
        return cls(**{k[len(prefix) + 1 :]: val for k, val in v.items() if k.startswith(prefix)})

    cfg = DaemonConfig(
        namespace=NamespaceConfig(
            path=os.path.abspath(ns_path),
            size=ns_size,
            force=v["namespace.force"],
            format=v["namespace.format"],
        ),
        state_dir=state_dir,
        socket=sock,
        handshake_socket=os.path.abspath(
            v["handshake_socket"] or os.path.join(sock_dir, HANDSHAKE_SOCKET_NAME)
        ),
        lock_path=os.path.abspath(v["lock_path"] or os.path.join(sock_dir, LOCK_FILE_NAME)),
        log_format=v["log_format"],
        log_level=v["log_level"],
        admin_group=v["admin_group"],
        limits=section(LimitsConfig, "limits"),
        quotas=section(QuotaConfig, "quotas"),
        io=section(IOConfig, "io"),
        residency=section(ResidencyConfig, "residency"),
        metrics=section(MetricsConfig, "metrics"),
    )
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: DaemonConfig) -> None:
    lim = cfg.limits
    if lim.default_arena_bytes > lim.max_arena_bytes:
        raise InvalidArgument(
            f"limits.default_arena_bytes: {lim.default_arena_bytes} exceeds "
            f"limits.max_arena_bytes {lim.max_arena_bytes}"
        )
    paths = {"socket": cfg.socket, "handshake_socket": cfg.handshake_socket}
    paths["lock_path"] = cfg.lock_path
    if len(set(paths.values())) != len(paths):
        raise InvalidArgument(f"socket, handshake_socket and lock_path must differ: {paths}")
    if cfg.namespace.path in paths.values():
        raise InvalidArgument(f"namespace.path: {cfg.namespace.path} is also a socket/lock path")
