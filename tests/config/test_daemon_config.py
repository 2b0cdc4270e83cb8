"""dualbladed.config: precedence, validation messages, sizes, per-user defaults."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from dualbladed.config import (
    DEFAULT_NAMESPACE_BYTES,
    DaemonConfig,
    GiB,
    MiB,
    QuotaConfig,
    build_arg_parser,
    load_config,
    load_config_file,
    parse_listen_address,
    parse_size,
)
from dualbladed.errors import InvalidArgument

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dualbladed.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path


def test_root_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = load_config([])
    assert cfg.state_dir == "/var/lib/dualblade"
    assert cfg.socket == "/run/dualblade/grpc.sock"
    assert cfg.handshake_socket == "/run/dualblade/handshake.sock"
    assert cfg.lock_path == "/run/dualblade/dualbladed.lock"
    assert cfg.namespace.path == "/var/lib/dualblade/namespace.img"
    assert cfg.namespace.size == DEFAULT_NAMESPACE_BYTES
    assert (cfg.log_format, cfg.log_level, cfg.admin_group) == ("json", "INFO", "dualblade-admin")


def test_user_defaults_follow_xdg(as_user: Path) -> None:
    cfg = load_config([])
    assert cfg.state_dir == str(as_user / "state" / "dualblade")
    assert cfg.socket == str(as_user / "run" / "dualblade" / "grpc.sock")
    assert cfg.namespace.path == str(as_user / "state" / "dualblade" / "namespace.img")


def test_user_defaults_without_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(os, "getuid", lambda: 4242)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config([])
    assert cfg.state_dir == str(tmp_path / ".local" / "state" / "dualblade")
    assert cfg.socket == "/tmp/dualblade-4242/grpc.sock"


def test_file_then_flags_precedence(as_user: Path) -> None:
    path = write(
        as_user,
        """
        state_dir = "/srv/db-state"
        socket = "/srv/db-run/grpc.sock"
        log_format = "console"
        [namespace]
        path = "/srv/ns.img"
        size = "8GiB"
        [io]
        queue_depth = 32
        """,
    )
    from_file = load_config(["--config", path])
    assert from_file.state_dir == "/srv/db-state"
    assert from_file.namespace.size == 8 * GiB
    assert from_file.io.queue_depth == 32
    assert from_file.log_format == "console"
    # Companions follow the socket's directory.
    assert from_file.handshake_socket == "/srv/db-run/handshake.sock"
    assert from_file.lock_path == "/srv/db-run/dualbladed.lock"

    cfg = load_config(
        ["--config", path, "--namespace-size", "512M", "--socket", "/x/y.sock"]
        + ["--log-format", "json", "--force", "--format", "--namespace", "/dev/nvme0n1"]
    )
    assert cfg.namespace.size == 512 * MiB
    assert cfg.namespace.path == "/dev/nvme0n1"
    assert cfg.namespace.force and cfg.namespace.format
    assert cfg.socket == "/x/y.sock" and cfg.lock_path == "/x/dualbladed.lock"
    assert cfg.log_format == "json"
    # Untouched file values survive flags for other keys.
    assert cfg.state_dir == "/srv/db-state" and cfg.io.queue_depth == 32


def test_relative_paths(as_user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(as_user, 'state_dir = "st"\n')
    assert load_config(["--config", path]).state_dir == str(as_user / "st")
    monkeypatch.chdir(as_user / "..")
    cfg = load_config(["--state-dir", "rel"])
    assert cfg.state_dir == str(as_user.parent / "rel")


def test_example_config_works_as_installed(as_user: Path) -> None:
    """Installed unchanged, the example only restates defaults: nothing machine-specific is on."""
    cfg = load_config_file(str(REPO / "systemd" / "dualbladed.toml"))
    assert cfg.namespace.path == "/var/lib/dualblade/namespace.img"  # under state_dir
    assert cfg.metrics.prometheus_address is None
    assert cfg.residency.pagecache_max_bytes is None
    assert cfg.quotas.quota_for(1000, "scratch") == 0 and not cfg.residency.weights


def test_example_config_examples_load(as_user: Path, tmp_path: Path) -> None:
    """Every commented-out "#key = value" line is valid once enabled."""
    text = (REPO / "systemd" / "dualbladed.toml").read_text()
    enabled = re.sub(r"(?m)^#(?=\S+ = )", "", text)
    path = tmp_path / "enabled.toml"
    path.write_text(enabled)
    cfg = load_config_file(str(path))
    assert cfg.namespace.path.startswith("/dev/disk/by-id/")
    assert cfg.quotas.quota_for(1000, "scratch") == 16 * GiB
    assert cfg.residency.weights["llama-70b"] == 2.0
    assert cfg.metrics.prometheus_address == "127.0.0.1:9464"
    assert cfg.residency.pagecache_max_bytes == 64 * GiB


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[residency]\nmode = "fast"',
            "residency.mode: expected one of adaptive, pagecache, direct, got 'fast'",
        ),
        ("bogus = 1", "bogus: unknown setting"),
        ("[io]\nqueue_dpth = 4", "io.queue_dpth: unknown setting"),
        ('[io]\nqueue_depth = "many"', "io.queue_depth: expected an integer"),
        ("[io]\nqueue_depth = 0", "io.queue_depth: expected an integer >= 1"),
        ("[io]\nrequest_bytes = 1000", "io.request_bytes: expected at least 4096"),
        ("[io]\nrequest_bytes = 6000", "io.request_bytes: 6000 is not a multiple of 4096"),
        (
            "[io]\nbulk_write_nice = 20",
            "io.bulk_write_nice: expected an integer >= 0 and <= 19, got 20",
        ),
        ("[namespace]\nforce = 1", "namespace.force: expected true or false"),
        ('[limits]\nmax_object_bytes = "2GB"', "limits.max_object_bytes: unit 'GB' is ambiguous"),
        ("io = 3", "io: expected a table"),
        ('[quotas.per_tenant]\n"a/b" = 1', "quotas.per_tenant: tenant key 'a/b'"),
        ("[residency.weights]\nx = -1.0", "residency.weights.x: expected a finite weight"),
        ('[metrics]\nprometheus_address = "10.0.0.5:9464"', "is not a loopback address"),
        ('log_level = "LOUD"', "log_level: expected one of"),
        ('[limits]\ndefault_arena_bytes = "8GiB"', "exceeds limits.max_arena_bytes"),
        ('lock_path = "/run/x/grpc.sock"\nsocket = "/run/x/grpc.sock"', "must differ"),
        ("state_dir = [", "config file"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_config(["--config", write(tmp_path, text)])
    assert message in str(err.value)


def test_bad_flag_value_names_key_and_flag() -> None:
    with pytest.raises(InvalidArgument, match=r"namespace.size \(--namespace-size\)"):
        load_config(["--namespace-size", "lots"])
    with pytest.raises(InvalidArgument, match="log_format"):
        load_config(["--log-format", "xml"])


def test_missing_file() -> None:
    with pytest.raises(InvalidArgument, match="/nonexistent.toml"):
        load_config(["--config", "/nonexistent.toml"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("4GiB", 4 * GiB),
        ("4G", 4 * GiB),
        ("4gi", 4 * GiB),
        ("512M", 512 * MiB),
        ("1.5 GiB", 3 * GiB // 2),
        ("7B", 7),
        ("2TiB", 2 << 40),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["4GB", "4 mb", "1.0001K", "-1", "x", "4Q", True, 2.5, -3])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text)  # type: ignore[arg-type]


def test_listen_address() -> None:
    assert parse_listen_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen_address("[::1]:9") == ("::1", 9)
    assert parse_listen_address("localhost:80") == ("127.0.0.1", 80)
    assert parse_listen_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    for bad in ("192.168.1.2:1", "127.0.0.1:70000", "127.0.0.1", "example.com:1"):
        with pytest.raises(InvalidArgument):
            parse_listen_address(bad)


def test_quota_for_precedence() -> None:
    q = QuotaConfig(default_bytes=5, per_tenant={"llama": 10, "1000/llama": 20})
    assert q.quota_for(1000, "llama") == 20
    assert q.quota_for(1001, "llama") == 10
    assert q.quota_for(1000, "other") == 5


def test_config_is_frozen(as_user: Path) -> None:
    cfg = load_config([])
    assert isinstance(cfg, DaemonConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.socket = "/elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.quotas.per_tenant["x"] = 1  # type: ignore[index]


def test_help_lists_every_flag() -> None:
    text = build_arg_parser().format_help()
    for flag in ("--config", "--namespace", "--namespace-size", "--state-dir", "--socket"):
        assert flag in text
    assert "--log-format" in text and "--force" in text and "--format" in text


def test_each_setting_is_declared_once_and_the_keys_stay() -> None:
    """The settings table is derived from the dataclass fields: its keys (TOML) and flags are the
    published ones, and each default is the dataclass's own (the loader adds nothing)."""
    from dualbladed.config import _DEFINITIONS, ResidencyMode

    keys = {s.key: s.flag for s in _DEFINITIONS}
    assert keys == {
        "namespace.path": "--namespace",
        "namespace.size": "--namespace-size",
        "namespace.force": "--force",
        "namespace.format": "--format",
        "state_dir": "--state-dir",
        "socket": "--socket",
        "handshake_socket": None,
        "lock_path": None,
        "log_format": "--log-format",
        "log_level": "--log-level",
        "admin_group": None,
        "limits.max_batch_ops": None,
        "limits.max_object_bytes": None,
        "limits.max_arena_bytes": None,
        "limits.default_arena_bytes": None,
        "limits.max_sessions": None,
        "limits.evict_persistent": None,
        "limits.max_pins_per_session": None,
        "limits.max_pin_ms": None,
        "admission.per_uid_sessions": None,
        "admission.reserved_sessions": None,
        "admission.arena_bytes": None,
        "admission.per_uid_arena_bytes": None,
        "admission.reserved_arena_bytes": None,
        "quotas.default_bytes": None,
        "quotas.per_tenant": None,
        "quotas.uid_default_bytes": None,
        "quotas.uid_default_fraction": None,
        "quotas.per_uid": None,
        "io.request_bytes": None,
        "io.queue_depth": None,
        "io.bulk_write_nice": None,
        "io.bulk_write_bytes": None,
        "residency.mode": None,
        "residency.reserve_bytes": None,
        "residency.hysteresis_bytes": None,
        "residency.weights": None,
        "residency.migration_bytes_per_s": None,
        "residency.pagecache_max_bytes": None,
        "residency.slab_bytes": None,
        "residency.pagecache_min_free_bytes": None,
        "residency.pagecache_min_free_fraction": None,
        "residency.pagecache_writeback_bytes": None,
        "metrics.prometheus_address": None,
    }
    assert len(keys) == 44
    cfg = load_config(["--socket", "/x/grpc.sock", "--state-dir", "/x/state"])
    for s in _DEFINITIONS:
        if s.default is None:  # derived at load time, or optional
            continue
        section, _, name = s.key.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        assert getattr(owner, name) == s.default, s.key
    assert cfg.residency.mode is ResidencyMode.ADAPTIVE
    # reserve 0: an optional floor, the arbiter learns its budget (issue 12)
    assert (cfg.residency.reserve_bytes, cfg.residency.hysteresis_bytes) == (0, 256 * MiB)


def test_limits_check_themselves_wherever_built() -> None:
    from dualbladed.config import LimitsConfig

    with pytest.raises(InvalidArgument, match="exceeds limits.max_arena_bytes"):
        LimitsConfig(default_arena_bytes=8 * GiB, max_arena_bytes=4 * GiB)


def test_per_uid_quota_table_and_fractions_parse(tmp_path: Path) -> None:
    cfg_file = tmp_path / "q.toml"
    cfg_file.write_text(
        '[quotas]\nuid_default_fraction = 0.5\n[quotas.per_uid]\n1000 = "1GiB"\n'
        "[residency]\npagecache_min_free_fraction = 0.05\n"
        'pagecache_min_free_bytes = "1GiB"\n'
        'pagecache_writeback_bytes = "1MiB"\n'
    )
    cfg = load_config(["--config", str(cfg_file)])
    assert dict(cfg.quotas.per_uid) == {1000: GiB} and cfg.quotas.uid_default_fraction == 0.5
    assert cfg.residency.pagecache_min_free_fraction == 0.05
    assert cfg.residency.pagecache_min_free_bytes == GiB
    assert cfg.residency.pagecache_writeback_bytes == MiB  # early write-back: off by default
    assert load_config([]).residency.pagecache_writeback_bytes == 0
    for bad, message in (
        ('[quotas.per_uid]\nbob = "1GiB"\n', "is not a numeric uid"),
        ("[quotas]\nuid_default_fraction = 1.5\n", "expected a fraction between 0 and 1"),
    ):
        cfg_file.write_text(bad)
        with pytest.raises(InvalidArgument, match=message):
            load_config(["--config", str(cfg_file)])
