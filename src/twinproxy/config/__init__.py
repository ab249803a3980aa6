"""twinproxy's configuration: one TOML file turned into validated, frozen dataclasses.

This face hands on every name the rest of twinproxy imports from ``twinproxy.config``. Inside,
each module imports only those listed after it:

- :mod:`~twinproxy.config.loader`: :func:`load_config` (the file to a :class:`Config`, every
  problem a :class:`ConfigError` naming the file, the key and the reason), each section's schema
  and checks, and :func:`check_programs`, the look at the machine that ``twinproxy check`` adds.
- :mod:`~twinproxy.config.rules`: ``[[rules]]``, a rule's small language and its checks.
- :mod:`~twinproxy.config.schema`: how a table is checked against its schema, and the checks of
  single values (numbers, addresses, commands, regexes ...), each raising at its dotted key.
- :mod:`~twinproxy.config.model`: what a loaded config holds, the dataclasses the rest of
  twinproxy reads.
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
