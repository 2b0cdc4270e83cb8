"""dualbladed configuration: one table of settings, a TOML file, and command-line overrides.

Every setting is declared exactly once, as a field of the frozen dataclass it lands in
(:func:`setting`): its name, type, default, parser/validator, help text and, where it has one,
its command-line flag. The dotted TOML key is the field's path from :class:`DaemonConfig`
(``residency.mode`` is ``DaemonConfig.residency.mode``). The settings table ``_DEFINITIONS``
(the LMCache ``_CONFIG_DEFINITIONS`` pattern) is derived from those fields, and loading,
unknown-key detection, error messages and ``--help`` text are derived from the table, so a
setting cannot be documented in one place, defaulted in another and parsed in a third.
Components receive the frozen sections (:class:`LimitsConfig`, :class:`ResidencyConfig`, ...)
rather than loose keyword arguments.

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
import enum
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from dualblade.v1.wire import (
    ALIGNMENT,
    GRPC_SOCKET_NAME,
    HANDSHAKE_SOCKET_NAME,
    default_runtime_dir,
)
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
LOCK_FILE_NAME = "dualbladed.lock"
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# O_DIRECT requests and slabs must be whole logical blocks; 4 KiB covers 512e and 4Kn devices.
# Arena slices are O_DIRECT buffers, so this is the arena alignment of the wire contract.
IO_ALIGNMENT = ALIGNMENT


class ResidencyMode(str, enum.Enum):
    """``residency.mode``: who picks an object's path. The forced modes are named after the path
    they force (``dualbladed.paths.abstract.PAGECACHE`` / ``DIRECT``)."""

    #: the residency arbiter places and migrates by live memory availability
    ADAPTIVE = "adaptive"
    #: every object on the page-cache path
    PAGECACHE = "pagecache"
    #: every object on the NVMe-direct path
    DIRECT = "direct"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, raw: object) -> ResidencyMode:
        """The mode from its name (or itself); InvalidArgument names the choices."""
        return _residency_mode("residency.mode", raw)  # type: ignore[no-any-return]

    @property
    def forced_path(self) -> str | None:
        """The path this mode pins every object to; None for adaptive."""
        return None if self is ResidencyMode.ADAPTIVE else self.value


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


def _enum(kind: type[enum.Enum]) -> Parser:
    """A member of ``kind`` from its value (or the member itself)."""
    values = [m.value for m in kind]

    def parse(key: str, raw: Any) -> Any:
        if isinstance(raw, kind):
            return raw
        if not isinstance(raw, str) or raw not in values:
            raise InvalidArgument(f"{key}: expected one of {', '.join(values)}, got {raw!r}")
        return kind(raw)

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


def _fraction(key: str, raw: Any) -> float:
    ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
    if not ok or not math.isfinite(raw) or not 0 <= raw <= 1:
        raise InvalidArgument(f"{key}: expected a fraction between 0 and 1, got {raw!r}")
    return float(raw)


def _uid_quota_map(key: str, raw: Any) -> Mapping[int, int]:
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{key}: expected a table of uid = size, got {raw!r}")
    out: dict[int, int] = {}
    for uid, value in raw.items():
        if not re.fullmatch(r"\d+", str(uid)):
            raise InvalidArgument(f"{key}: key {uid!r} is not a numeric uid")
        out[int(uid)] = parse_size(value, f"{key}.{uid}")
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


# --------------------------------------------------------------------------- declaring settings

_SETTING = "dualbladed.setting"
_SECTION = "dualbladed.section"


@dataclass(frozen=True)
class _Spec:
    parse: Parser
    help: str
    flag: str | None = None
    # Relative values are resolved against the config file's directory (or the working
    # directory, for a flag).
    is_path: bool = False


def setting(
    default: Any, parse: Parser, help: str, flag: str | None = None, *, is_path: bool = False
) -> Any:
    """Declare a setting as a dataclass field: its default, parser, help and optional flag."""
    metadata = {_SETTING: _Spec(parse, help, flag, is_path)}
    if isinstance(default, Mapping):  # immutable (a MappingProxyType) but unhashable
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def derived(parse: Parser, help: str, flag: str | None = None, *, is_path: bool = False) -> Any:
    """Declare a setting whose default is computed at load time (the paths): the dataclass
    requires it, the table's default is None."""
    return field(metadata={_SETTING: _Spec(parse, help, flag, is_path)})


def _section(cls: type, *, required: bool = False) -> Any:
    """A ``[table]`` of settings: the field's name is the table's name."""
    if required:
        return field(metadata={_SECTION: cls})
    return field(default_factory=cls, metadata={_SECTION: cls})


# --------------------------------------------------------------------------- the settings

_SIZE = _size(IO_ALIGNMENT, IO_ALIGNMENT)  # a positive multiple of the I/O alignment


@dataclass(frozen=True)
class NamespaceConfig:
    """The one namespace the daemon owns: a block device or a file (created if absent)."""

    path: str = derived(
        _text,
        f"namespace: block device or file; default <state_dir>/{NAMESPACE_FILE_NAME}",
        "--namespace",
        is_path=True,
    )
    # Bytes for a file namespace that must be created or grown; None for block devices.
    size: int | None = setting(
        None, _optional(_SIZE), "size of a file namespace, e.g. 4GiB", "--namespace-size"
    )
    # Take a device even if it looks in use (mounted, foreign signature...).
    force: bool = setting(False, _bool, "take a device that looks in use", "--force")
    # Write a fresh superblock, destroying what the namespace held.
    format: bool = setting(False, _bool, "format the namespace (destroys data)", "--format")


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: what one session may ask for; the handshake announces them to clients."""

    max_batch_ops: int = setting(1024, _int(1), "operations per Batch call")
    max_object_bytes: int = setting(256 * MiB, _size(1), "largest object")
    max_arena_bytes: int = setting(4 * GiB, _SIZE, "largest arena")
    default_arena_bytes: int = setting(256 * MiB, _SIZE, "arena size when the client asks for none")
    max_sessions: int = setting(256, _int(1), "concurrent sessions")
    # Capacity (issue 13): evict persistent objects LRU when a path or a tenant quota is full.
    evict_persistent: bool = setting(True, _bool, "evict persistent objects LRU when full")
    max_pins_per_session: int = setting(
        16384, _int(0, (1 << 32) - 1), "live stat hit pins per session"
    )
    max_pin_ms: int = setting(
        600_000, _int(1, (1 << 32) - 1), "longest hit pin a stat may ask for (ms)"
    )

    def __post_init__(self) -> None:
        if self.default_arena_bytes > self.max_arena_bytes:
            raise InvalidArgument(
                f"limits.default_arena_bytes: {self.default_arena_bytes} exceeds "
                f"limits.max_arena_bytes {self.max_arena_bytes}"
            )


@dataclass(frozen=True)
class AdmissionConfig:
    """``[admission]``: what one uid may hold, and what is kept back for root and the admin group.

    Checked at the handshake *before* anything is allocated (``dualbladed.sessions.admission``).
    Root and members of ``admin_group`` are exempt from the per-uid limits and may use the
    reserves; everyone else together stops short of them, so one uid filling the table cannot
    lock out root or dbctl. None (the default) sizes a limit from the machine when the daemon
    starts; the rules are in :meth:`dualbladed.sessions.admission.AdmissionLimits.resolve`.
    """

    per_uid_sessions: int | None = setting(
        None, _optional(_int(1)), "sessions one non-admin uid may hold; default max_sessions/4"
    )
    reserved_sessions: int | None = setting(
        None, _optional(_int(0)), "sessions only root/admins may take; default max_sessions/16"
    )
    arena_bytes: int | None = setting(
        None, _optional(_SIZE), "arena bytes of all sessions together; default RAM/2"
    )
    per_uid_arena_bytes: int | None = setting(
        None, _optional(_SIZE), "arena bytes one non-admin uid may hold; default RAM/4"
    )
    reserved_arena_bytes: int | None = setting(
        None,
        _optional(_size(0, IO_ALIGNMENT)),
        "arena bytes only root/admins may take; default arena_bytes/8",
    )


@dataclass(frozen=True)
class QuotaConfig:
    """Capacity quotas in bytes; 0 means unlimited."""

    default_bytes: int = setting(0, _size(), "per-tenant quota, 0 = unlimited")
    # Keys are a tenant label ("llama") or "uid/label" ("1000/llama"); the latter wins.
    per_tenant: Mapping[str, int] = setting(
        MappingProxyType({}), _quota_map, "label|uid/label = size"
    )
    # Per-uid caps over all of a uid's labels (see ``uid_quota``): hostile-user protection.
    uid_default_bytes: int | None = setting(
        None, _optional(_size()), "per-uid cap of non-admin uids; default a namespace fraction"
    )
    uid_default_fraction: float = setting(
        0.25, _fraction, "per-uid cap of non-admin uids, as a fraction of the namespace"
    )
    per_uid: Mapping[int, int] = setting(
        MappingProxyType({}), _uid_quota_map, "uid = size (0 = unlimited), for anyone"
    )

    def quota_for(self, uid: int, label: str) -> int:
        """The quota of tenant ``label`` run by ``uid``: exact uid/label, then label, then default."""
        exact = self.per_tenant.get(f"{uid}/{label}")
        if exact is not None:
            return exact
        return self.per_tenant.get(label, self.default_bytes)

    def uid_quota(self, uid: int, *, privileged: bool, namespace_bytes: int) -> int:
        """Bytes ``uid`` may hold over all its labels together; 0 means unlimited.

        An explicit ``per_uid`` entry wins for anyone. Otherwise root, the daemon's own uid and
        the admin group (``privileged``) are unlimited, and everyone else gets
        ``uid_default_bytes``, else ``uid_default_fraction`` of the namespace. Per uid, not per
        tenant, because labels are the client's choice: a per-label quota alone is no bound.
        """
        explicit = self.per_uid.get(uid)
        if explicit is not None:
            return explicit
        if privileged:
            return 0
        if self.uid_default_bytes is not None:
            return self.uid_default_bytes
        return max(1, int(namespace_bytes * self.uid_default_fraction))


@dataclass(frozen=True)
class IOConfig:
    request_bytes: int = setting(1 * MiB, _SIZE, "I/O request size")
    queue_depth: int = setting(8, _int(1, 1024), "I/O requests in flight")


_residency_mode = _enum(ResidencyMode)


@dataclass(frozen=True)
class ResidencyConfig:
    mode: ResidencyMode = setting(ResidencyMode.ADAPTIVE, _residency_mode, "residency policy")
    # Optional floor: memory the arbiter always leaves alone. 0: the budget is learned from
    # refaults, PSI, the page-cache hit ratio and measured read speeds (arbiter/feedback.py).
    reserve_bytes: int = setting(0, _size(), "optional floor left to others")
    # The budget moves only when memory changes by more than this, to avoid demote/promote flaps.
    hysteresis_bytes: int = setting(256 * MiB, _size(), "budget change dead band")
    # Share of the page-cache budget per tenant label (missing labels weigh 1.0).
    weights: Mapping[str, float] = setting(MappingProxyType({}), _weight_map, "label = weight")
    migration_bytes_per_s: int = setting(256 * MiB, _size(1), "migration rate cap")
    # Cap on the page-cache slabs' size on disk; None: the namespace's size (never "free disk").
    pagecache_max_bytes: int | None = setting(
        None, _optional(_size()), "page-cache cap; default the namespace size"
    )
    # Free-space floor on the state directory's filesystem: the smaller of the two (0 = off).
    # Below it page-cache puts and promotions stop (puts are placed on direct instead).
    pagecache_min_free_bytes: int = setting(2 * GiB, _size(), "disk floor for the page cache")
    pagecache_min_free_fraction: float = setting(
        0.10, _fraction, "disk floor for the page cache, as a fraction of the filesystem"
    )
    slab_bytes: int = setting(64 * MiB, _SIZE, "slab size")

    def __post_init__(self) -> None:
        # A mode given as its string (a test, a tool) becomes the enum, so ``is`` compares work.
        object.__setattr__(self, "mode", ResidencyMode.parse(self.mode))


@dataclass(frozen=True)
class MetricsConfig:
    # "host:port" for the Prometheus endpoint; None disables it. Loopback only, or "0.0.0.0".
    prometheus_address: str | None = setting(None, _optional(_address), "Prometheus host:port")


@dataclass(frozen=True)
class DaemonConfig:
    namespace: NamespaceConfig = _section(NamespaceConfig, required=True)
    state_dir: str = derived(_text, "metadata and page-cache files", "--state-dir", is_path=True)
    socket: str = derived(_text, "gRPC Unix socket path", "--socket", is_path=True)
    handshake_socket: str = derived(_text, "handshake socket path", is_path=True)
    lock_path: str = derived(_text, "instance lock file", is_path=True)
    log_format: str = setting("json", _choice(*LOG_FORMATS), "json | console", "--log-format")
    log_level: str = setting(
        "INFO", _choice(*LOG_LEVELS, upper=True), "DEBUG | INFO | WARNING | ERROR", "--log-level"
    )
    # Group whose members get the admin role (and group ownership of the sockets); None: none.
    admin_group: str | None = setting("dualblade-admin", _group, "admin role group ('' for none)")
    limits: LimitsConfig = _section(LimitsConfig)
    admission: AdmissionConfig = _section(AdmissionConfig)
    quotas: QuotaConfig = _section(QuotaConfig)
    io: IOConfig = _section(IOConfig)
    residency: ResidencyConfig = _section(ResidencyConfig)
    metrics: MetricsConfig = _section(MetricsConfig)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Setting:
    key: str
    parse: Parser
    # The default; None for settings derived at load time (paths) or truly optional ones.
    default: Any
    help: str
    flag: str | None = None
    is_path: bool = False


def _settings_of(cls: type, prefix: str = "") -> Iterator[_Setting]:
    for f in fields(cls):
        if _SECTION in f.metadata:
            yield from _settings_of(f.metadata[_SECTION], f"{prefix}{f.name}.")
            continue
        spec: _Spec = f.metadata[_SETTING]
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        yield _Setting(prefix + f.name, spec.parse, default, spec.help, spec.flag, spec.is_path)


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of ``cls`` (and its sections) from values keyed by dotted key."""
    kwargs = {
        f.name: _build(f.metadata[_SECTION], values, f"{prefix}{f.name}.")
        if _SECTION in f.metadata
        else values[prefix + f.name]
        for f in fields(cls)
    }
    return cls(**kwargs)


_DEFINITIONS: tuple[_Setting, ...] = tuple(_settings_of(DaemonConfig))
_BY_KEY = {s.key: s for s in _DEFINITIONS}
_TABLES = {k.split(".")[0] for k in _BY_KEY if "." in k}


# --------------------------------------------------------------------------- defaults


def default_dirs() -> tuple[str, str]:
    """``(state_dir, runtime_dir)`` for the effective user (see the module docstring)."""
    runtime = default_runtime_dir()  # the SDK looks for the sockets there too: wire contract
    if os.geteuid() == 0:
        return "/var/lib/dualblade", runtime
    home = os.path.expanduser("~")
    state_base = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
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
    v["state_dir"] = os.path.abspath(v["state_dir"] or state_default)
    sock = v["socket"] = os.path.abspath(
        v["socket"] or os.path.join(runtime_default, GRPC_SOCKET_NAME)
    )
    sock_dir = os.path.dirname(sock)
    v["handshake_socket"] = os.path.abspath(
        v["handshake_socket"] or os.path.join(sock_dir, HANDSHAKE_SOCKET_NAME)
    )
    v["lock_path"] = os.path.abspath(v["lock_path"] or os.path.join(sock_dir, LOCK_FILE_NAME))
    if v["namespace.path"] is None:
        v["namespace.path"] = os.path.join(v["state_dir"], NAMESPACE_FILE_NAME)
        if v["namespace.size"] is None:
            v["namespace.size"] = DEFAULT_NAMESPACE_BYTES
    v["namespace.path"] = os.path.abspath(v["namespace.path"])
    cfg: DaemonConfig = _build(DaemonConfig, v)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: DaemonConfig) -> None:
    """Checks across sections (one section checks itself in its ``__post_init__``)."""
    paths = {"socket": cfg.socket, "handshake_socket": cfg.handshake_socket}
    paths["lock_path"] = cfg.lock_path
    if len(set(paths.values())) != len(paths):
        raise InvalidArgument(f"socket, handshake_socket and lock_path must differ: {paths}")
    if cfg.namespace.path in paths.values():
        raise InvalidArgument(f"namespace.path: {cfg.namespace.path} is also a socket/lock path")
