"""Loading the config: built-in defaults, the ``--config`` TOML file, command-line flags.

Precedence, lowest first: built-in defaults < the ``--config`` TOML file < command-line flags.
No file is read implicitly; the systemd unit passes ``--config /etc/dualblade/dualbladed.toml``.
Keys, flags, parsers and ``--help`` come from the settings table (:mod:`dualbladed.config.table`).

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

Relative paths in the file are relative to the file's directory; relative paths on the command
line are relative to the working directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from dualblade.v1.wire import GRPC_SOCKET_NAME, HANDSHAKE_SOCKET_NAME, default_runtime_dir
from dualbladed.config.parsers import boolean
from dualbladed.config.sections import DEFAULT_NAMESPACE_BYTES, NAMESPACE_FILE_NAME, DaemonConfig
from dualbladed.config.table import Setting, build, settings_of
from dualbladed.errors import InvalidArgument

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

DEFAULT_CONFIG_PATH = "/etc/dualblade/dualbladed.toml"
LOCK_FILE_NAME = "dualbladed.lock"

_DEFINITIONS: tuple[Setting, ...] = tuple(settings_of(DaemonConfig))
_BY_KEY = {s.key: s for s in _DEFINITIONS}
_TABLES = {k.split(".")[0] for k in _BY_KEY if "." in k}


def default_dirs() -> tuple[str, str]:
    """``(state_dir, runtime_dir)`` for the effective user (see the module docstring)."""
    runtime = default_runtime_dir()  # the SDK looks for the sockets there too: wire contract
    if os.geteuid() == 0:
        return "/var/lib/dualblade", runtime
    home = os.path.expanduser("~")
    state_base = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return os.path.join(state_base, "dualblade"), runtime


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
        if s.parse is boolean:
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
    cfg: DaemonConfig = build(DaemonConfig, v)
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
