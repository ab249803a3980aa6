"""twinproxy's configuration: one TOML file turned into validated, frozen dataclasses.

The package's face: every name the rest of twinproxy imports from ``twinproxy.config``.
"""

from twinproxy.config.loader import ConfigError, check_programs, load_config
from twinproxy.config.model import (
    ALL_ARGS,
    DEFAULT_SYNC,
    PLACEHOLDERS,
    PROTOCOLS,
    RULE_ACTIONS,
    SYNC_METHODS,
    Address,
    Config,
    ErrorMapping,
    ProxyConfig,
    RuleConfig,
    Substitution,
    UpdateConfig,
    VersionConfig,
    format_address,
)

__all__ = [
    "ALL_ARGS",
    "DEFAULT_SYNC",
    "PLACEHOLDERS",
    "PROTOCOLS",
    "RULE_ACTIONS",
    "SYNC_METHODS",
    "Address",
    "Config",
    "ConfigError",
    "ErrorMapping",
    "ProxyConfig",
    "RuleConfig",
    "Substitution",
    "UpdateConfig",
    "VersionConfig",
    "check_programs",
    "format_address",
    "load_config",
]
