"""dualbladed configuration: one table of settings, a TOML file, and command-line overrides.

The package, bottom-up: :mod:`.parsers` (value parsers and sizes), :mod:`.table` (how a setting
is declared, and the settings table derived from the declarations), :mod:`.sections` (the
settings: one frozen dataclass per TOML table) and :mod:`.load` (defaults, the TOML file, the
command line, cross-section checks). Every failure raises
:class:`~dualbladed.errors.InvalidArgument` naming the key.

Callers import from here (``from dualbladed.config import DaemonConfig``).
"""

from dualbladed.config.load import (
    _DEFINITIONS,
    DEFAULT_CONFIG_PATH,
    LOCK_FILE_NAME,
    build_arg_parser,
    config_from_values,
    default_dirs,
    load_config,
    load_config_file,
)
from dualbladed.config.parsers import (
    GiB,
    KiB,
    MiB,
    Parser,
    TiB,
    parse_listen_address,
    parse_size,
)
from dualbladed.config.sections import (
    DEFAULT_NAMESPACE_BYTES,
    IO_ALIGNMENT,
    LOG_FORMATS,
    LOG_LEVELS,
    NAMESPACE_FILE_NAME,
    AdmissionConfig,
    DaemonConfig,
    IOConfig,
    LimitsConfig,
    MetricsConfig,
    NamespaceConfig,
    QuotaConfig,
    ResidencyConfig,
    ResidencyMode,
)
from dualbladed.config.table import derived, setting

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_NAMESPACE_BYTES",
    "IO_ALIGNMENT",
    "LOCK_FILE_NAME",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "NAMESPACE_FILE_NAME",
    "_DEFINITIONS",
    "AdmissionConfig",
    "DaemonConfig",
    "GiB",
    "IOConfig",
    "KiB",
    "LimitsConfig",
    "MetricsConfig",
    "MiB",
    "NamespaceConfig",
    "Parser",
    "QuotaConfig",
    "ResidencyConfig",
    "ResidencyMode",
    "TiB",
    "build_arg_parser",
    "config_from_values",
    "default_dirs",
    "derived",
    "load_config",
    "load_config_file",
    "parse_listen_address",
    "parse_size",
    "setting",
]
