"""Declaring settings, and the settings table derived from the declarations.

Every setting is declared exactly once, as a field of the frozen dataclass it lands in
(:func:`setting`): its name, type, default, parser/validator, help text and, where it has one,
its command-line flag. The dotted TOML key is the field's path from
:class:`~dualbladed.config.sections.DaemonConfig` (``residency.mode`` is
``DaemonConfig.residency.mode``). The settings table (:func:`settings_of`, the LMCache
``_CONFIG_DEFINITIONS`` pattern) is derived from those fields, and loading, unknown-key
detection, error messages and ``--help`` text are derived from the table
(:mod:`dualbladed.config.load`), so a setting cannot be documented in one place, defaulted in
another and parsed in a third.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from dualbladed.config.parsers import Parser

_SETTING = "dualbladed.setting"
_SECTION = "dualbladed.section"


@dataclass(frozen=True)
class Spec:
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
    metadata = {_SETTING: Spec(parse, help, flag, is_path)}
    if isinstance(default, Mapping):  # immutable (a MappingProxyType) but unhashable
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def derived(parse: Parser, help: str, flag: str | None = None, *, is_path: bool = False) -> Any:
    """Declare a setting whose default is computed at load time (the paths): the dataclass
    requires it, the table's default is None."""
    return field(metadata={_SETTING: Spec(parse, help, flag, is_path)})


def section(cls: type, *, required: bool = False) -> Any:
    """A ``[table]`` of settings: the field's name is the table's name."""
    if required:
        return field(metadata={_SECTION: cls})
    return field(default_factory=cls, metadata={_SECTION: cls})


@dataclass(frozen=True)
class Setting:
    key: str
    parse: Parser
    # The default; None for settings derived at load time (paths) or truly optional ones.
    default: Any
    help: str
    flag: str | None = None
    is_path: bool = False


def settings_of(cls: type, prefix: str = "") -> Iterator[Setting]:
    for f in fields(cls):
        if _SECTION in f.metadata:
            yield from settings_of(f.metadata[_SECTION], f"{prefix}{f.name}.")
            continue
        spec: Spec = f.metadata[_SETTING]
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        yield Setting(prefix + f.name, spec.parse, default, spec.help, spec.flag, spec.is_path)


def build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of ``cls`` (and its sections) from values keyed by dotted key."""
    kwargs = {
        f.name: build(f.metadata[_SECTION], values, f"{prefix}{f.name}.")
        if _SECTION in f.metadata
        else values[prefix + f.name]
        for f in fields(cls)
    }
    return cls(**kwargs)
