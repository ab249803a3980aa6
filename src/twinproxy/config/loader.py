"""Loading a config file: TOML in, a validated :class:`~twinproxy.config.model.Config` out.

Operators write this file by hand and run twinproxy with it in front of production servers, so the
loader is strict the way ``haproxy -c`` is: an unknown key, a wrong type, a value out of range or a
name that refers to nothing is an error, and every error says in one line where (the file and the
dotted key, e.g. ``rules[2].normalize[0].pattern``) and why. Nothing is guessed, nothing is
silently ignored. Array indexes in keys count from 0, as in the TOML arrays they point into.

How this module reads, top to bottom: :class:`ConfigError`; each section's schema (the schema
helper and the checks it uses are in :mod:`twinproxy.config.schema`); one function per section
(``[[rules]]`` has its own module, :mod:`twinproxy.config.rules`); :func:`load_config`. The loader
looks at nothing but the file (no environment variables, no processes); :func:`check_programs` is
the separate look at the machine that ``twinproxy check`` adds.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from twinproxy.config.model import (
    DEFAULT_SYNC,
    PROTOCOLS,
    SYNC_METHODS,
    Config,
    ProxyConfig,
    UpdateConfig,
    VersionConfig,
    format_address,
)
from twinproxy.config.rules import parse_rules
from twinproxy.config.schema import (
    Invalid,
    Key,
    address,
    boolean,
    command,
    control_address,
    either,
    http_url,
    ipv4_address,
    join_key,
    number,
    one_of,
    show_value,
    string_table,
    table,
    text,
    unknown_version,
)
from twinproxy.protocols import get_codec
from twinproxy.protocols.messages import Limits
from twinproxy.statesync import METHODS as STATE_SYNC

__all__ = ["ConfigError", "check_programs", "load_config"]


class ConfigError(Exception):
    """A config file that twinproxy refuses, with where and why.

    ``str(error)`` is the one line to show: ``<file>: <key>: <reason>``, or
    ``<file>:<line>:<column>: invalid TOML: <reason>`` for a syntax error.

    Attributes:
        path: the file, as it was given.
        key: the dotted key (``versions.v7.command``), or ``None`` when the problem is the file
            itself (unreadable, not TOML).
        reason: what is wrong, and when it helps, what would be right.
        line, column: where a TOML syntax error is, else ``None``.
    """

    def __init__(self, path: str | os.PathLike[str], key: str | None, reason: str,
                 line: int | None = None, column: int | None = None) -> None:
        self.path = os.fspath(path)
        self.key = key
        self.reason = reason
        self.line = line
        self.column = column
        if line is not None:
            where = f"{self.path}:{line}:{column}" if column is not None else f"{self.path}:{line}"
        else:
            where = self.path
        super().__init__(f"{where}: {key}: {reason}" if key is not None else f"{where}: {reason}")


# --------------------------------------------------------------------------------------------
# Sections


PROXY = {
    "listen": Key(address),
    "protocol": Key(one_of(*PROTOCOLS)),
    "control": Key(control_address),
    "control_token": Key(text, None),
    "start": Key(text),
    "max_connections": Key(number(above=0, integer=True), 10000),
    "connect_timeout": Key(number(above=0), 3.0),
    "idle_timeout": Key(number(at_least=0), 0.0),
    "shutdown_timeout": Key(number(at_least=0), 10.0),
    "log_format": Key(one_of("text", "json"), "text"),
    "client_output_pause": Key(number(above=0, integer=True), 4 * 1024 * 1024),
    "client_output_limit": Key(number(at_least=0, integer=True), 0),
    "output_budget": Key(number(at_least=0, integer=True), 256 * 1024 * 1024),
    "data_address": Key(ipv4_address, None),
    "data_port_min": Key(number(at_least=1024, at_most=65535, integer=True), None),
    "data_port_max": Key(number(at_least=1024, at_most=65535, integer=True), None),
    "tls": Key(one_of("refuse", "passthrough"), "refuse"),
}
DATA_KEYS = ("data_address", "data_port_min", "data_port_max")

LIMITS = {f.name: Key(number(above=0, integer=True), f.default)
          for f in dataclasses.fields(Limits)}

# Keys that only make sense for a server twinproxy starts, with their defaults.
MANAGED_ONLY = {
    "env": Key(string_table, {}),
    "ready_timeout": Key(number(above=0), 30.0),
    "stop_timeout": Key(number(at_least=0), 5.0),
    "restart": Key(boolean, True),
    "restart_backoff": Key(number(above=0), 0.2),
    "restart_backoff_max": Key(number(above=0), 10.0),
}
# How the proxy's own connections log in to a Redis version that wants a password.
LOGIN = {"username": Key(text, None), "password": Key(text, None),
         "password_env": Key(text, None)}
VERSION = {"command": Key(command, None), "address": Key(address, None),
           "forked": Key(boolean, False), **MANAGED_ONLY, **LOGIN}
# What a version the running service forks (sync = "cooperative") may say besides forked.
FORKED_ALSO = ("ready_timeout", "stop_timeout")

UPDATE = {
    "warmup_seconds": Key(number(at_least=0), 30.0),
    "warmup_requests": Key(number(at_least=0, integer=True), 1000),
    "on_divergence": Key(one_of("rollback", "log"), "rollback"),
    "after_cutover": Key(one_of("stop-old", "keep-old"), "stop-old"),
    "sync": Key(one_of(*SYNC_METHODS), None),
    "follower_timeout": Key(number(above=0), 5.0),
    "max_backlog_requests": Key(number(above=0, integer=True), 100000),
    "max_backlog_bytes": Key(number(above=0, integer=True), 256 * 1024 * 1024),
    "spill_bytes": Key(number(at_least=0, integer=True), 64 * 1024 * 1024),
    "max_spool_bytes": Key(number(above=0, integer=True), 1024 * 1024 * 1024),
    "shared_after": Key(number(at_least=0, integer=True), 1),
    "barrier_timeout": Key(number(above=0), 5.0),
    "session_join_timeout": Key(number(above=0), 5.0),
    "catch_up_timeout": Key(number(above=0), 60.0),
    "divergence_log": Key(text, None),
    "cooperative_endpoint": Key(http_url, None),
    "tls_sessions": Key(one_of("wait", "close"), "wait"),
}



def _later(value: Any, key: str) -> Any:
    """A section checked by its own function below, once the sections it depends on are read."""
    return value


TOP = {
    "proxy": Key(_later),
    "limits": Key(_later, {}),
    "versions": Key(_later, {}),
    "update": Key(_later, {}),
    "rules": Key(_later, []),
}

_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _proxy(raw: Any) -> ProxyConfig:
    proxy = ProxyConfig(**table(raw, "proxy", PROXY))
    if isinstance(proxy.control, tuple) and proxy.control == proxy.listen:
        raise Invalid("proxy.control", "is the same address as proxy.listen")
    _data_endpoints(proxy)
    return proxy


def _data_endpoints(proxy: ProxyConfig) -> None:
    """The passive data endpoints' address and port range, and TLS passthrough: only for a
    protocol with data channels, and a range given whole, lowest first."""
    given = [key for key in DATA_KEYS if getattr(proxy, key) is not None]
    if proxy.tls != "refuse":
        given.append("tls")
    if given and get_codec(proxy.protocol).data_channels() is None:
        raise Invalid(f"proxy.{given[0]}", f"only for a protocol with data channels (ftp); "
                                           f"this one is {proxy.protocol}")
    low, high = proxy.data_port_min, proxy.data_port_max
    if (low is None) != (high is None):
        missing, there = ("data_port_max", "data_port_min") if high is None else \
            ("data_port_min", "data_port_max")
        raise Invalid(f"proxy.{there}", f"given without {missing}: the passive ports are a "
                                        f"range, give both ends")
    if low is not None and high < low:
        raise Invalid("proxy.data_port_max", f"must be >= data_port_min ({low}), got {high}")


def _version(raw: Any, key: str, name: str, protocol: str) -> VersionConfig:
    if not _VERSION_NAME.fullmatch(name):
        raise Invalid(key, "a version name is letters, digits, '.', '_' and '-', starting with "
                           "a letter or digit (it is typed on the command line)")
    values = table(raw, key, VERSION)
    _login(values, key, protocol)
    if values["forked"]:
        for other in ("command", "address", *(k for k in MANAGED_ONLY if k not in FORKED_ALSO)):
            if other in raw:
                raise Invalid(join_key(key, other), "not for a forked version (forked = true: "
                                                    "the running service starts it itself)")
        return VersionConfig(name=name, **values)
    if (values["command"] is None) == (values["address"] is None):
        has = "both command and" if values["command"] is not None else "neither command nor"
        raise Invalid(key, f"has {has} address: give exactly one (command: "
                           "twinproxy starts the server; address: it is already running; "
                           "or forked = true with sync = \"cooperative\")")
    if values["address"] is not None:
        for extra in MANAGED_ONLY:
            if extra in raw:
                raise Invalid(join_key(key, extra), "only for a managed server (one with command); "
                                                    "this version has an address")
    if values["restart_backoff_max"] < values["restart_backoff"]:
        raise Invalid(join_key(key, "restart_backoff_max"),
                      f"must be >= restart_backoff ({values['restart_backoff']:g}), "
                      f"got {values['restart_backoff_max']:g}")
    return VersionConfig(name=name, **values)


def _login(values: dict[str, Any], key: str, protocol: str) -> None:
    """``username``, ``password``, ``password_env``: Redis only, one password at most, and no
    user name without one."""
    given = [k for k in LOGIN if values[k] is not None]
    if not given:
        return
    if protocol != "redis":
        raise Invalid(join_key(key, given[0]), f"only for protocol redis (the proxy's own "
                                               f"login to the server); this one is {protocol}")
    if values["password"] is not None and values["password_env"] is not None:
        raise Invalid(join_key(key, "password_env"), "give password or password_env, not both")
    if values["password"] is None and values["password_env"] is None:
        raise Invalid(join_key(key, "username"), "given without password or password_env: "
                                                 "the proxy logs in with both")


def _versions(raw: Any, proxy: ProxyConfig) -> dict[str, VersionConfig]:
    if not isinstance(raw, dict):
        raise Invalid("versions", f"expected a table, got {show_value(raw)}")
    if not raw:
        raise Invalid("versions", "no versions: define at least one, such as [versions.v1] "
                                  "with command or address")
    versions = {name: _version(v, join_key("versions", name), name, proxy.protocol)
                for name, v in raw.items()}
    for name, version in versions.items():
        if version.address is not None and version.address == proxy.listen:
            raise Invalid(join_key(join_key("versions", name), "address"),
                          "is the proxy's own listen address: it would connect to itself")
    if proxy.start not in versions:
        raise Invalid("proxy.start", unknown_version(proxy.start, versions))
    return versions


def _update(raw: Any, protocol: str) -> UpdateConfig:
    values = table(raw, "update", UPDATE)
    default = DEFAULT_SYNC.get(protocol, "none")
    sync = values["sync"] = values["sync"] or default
    method = STATE_SYNC[sync]
    if not method.works_with(protocol):
        owners = method.protocols or ()
        usable = [default, *(m.name for m in STATE_SYNC.values()
                             if m.works_with(protocol) and m.name != default)]
        raise Invalid("update.sync", f'"{sync}" works only with protocol '
                                     f'{either(owners, "or")}, not "{protocol}" '
                                     f'(for {protocol}: {either(usable, "or")})')
    if sync == "cooperative" and values["cooperative_endpoint"] is None:
        raise Invalid("update.cooperative_endpoint",
                      'missing: sync = "cooperative" needs the service\'s update endpoint')
    if sync != "cooperative" and values["cooperative_endpoint"] is not None:
        raise Invalid("update.cooperative_endpoint",
                      f'only used with sync = "cooperative", and sync is "{sync}"')
    return UpdateConfig(**values)


def _forked(versions: dict[str, VersionConfig], proxy: ProxyConfig,
            update: UpdateConfig) -> None:
    """A forked version exists only through a cooperative update of a running one."""
    for name, version in versions.items():
        if not version.forked:
            continue
        if update.sync != "cooperative":
            raise Invalid(join_key(join_key("versions", name), "forked"),
                          f'only with sync = "cooperative" (the service forks it at an '
                          f'update), and sync is "{update.sync}"')
        if name == proxy.start:
            raise Invalid("proxy.start", f"{name} is forked by the service at an update: start "
                                         "with a version that has command or address")


def _warnings(proxy: ProxyConfig) -> tuple[str, ...]:
    warnings = []
    if proxy.control_token is not None and isinstance(proxy.control, str):
        warnings.append("proxy.control_token: unused: the control address is a unix socket, "
                        "which its file permissions protect")
    if isinstance(proxy.control, tuple) and proxy.control_token is None:
        host = proxy.control[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            warnings.append(f"proxy.control: {format_address(proxy.control)} is not a loopback "
                            "address and there is no control_token: anyone who can reach it can "
                            "update or roll back (unless TWINPROXY_TOKEN is set)")
    return tuple(warnings)


# --------------------------------------------------------------------------------------------
# Entry points


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file.

    Looks at nothing but the file: the programs that managed versions run are not checked here
    (see :func:`check_programs`), and ``TWINPROXY_TOKEN`` is not read.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or is not a valid config; the message
            names the file, the key and the reason. The first problem found is reported.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(path, None, "invalid TOML: the file is not UTF-8", line=line) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        if where:
            raise ConfigError(path, None, f"invalid TOML: {message[: where.start()]}",
                              line=int(where[1]), column=int(where[2])) from None
        raise ConfigError(path, None, f"invalid TOML: {message}") from None
    try:
        # Sections in the order the file usually has them, so the first problem reported is
        # the first one an operator reading the file would meet.
        top = table(raw, "", TOP)
        proxy = _proxy(top["proxy"])
        limits = Limits(**table(top["limits"], "limits", LIMITS))
        versions = _versions(top["versions"], proxy)
        update = _update(top["update"], proxy.protocol)
        _forked(versions, proxy, update)
        rules = parse_rules(top["rules"], proxy.protocol, versions)
        return Config(Path(path), proxy, versions, update, rules, limits, _warnings(proxy))
    except Invalid as exc:
        raise ConfigError(path, exc.key, exc.reason) from None


def check_programs(config: Config) -> None:
    """Check that every managed version's program exists and is executable on this machine,
    and that every ``password_env`` is set.

    Separate from :func:`load_config` because it depends on the machine, not the file: a config
    may be checked on one host and run on another. A program whose path uses ``{dir}`` is not
    checked (the directory exists only once an instance starts).

    Raises:
        ConfigError: at ``versions.<name>.command[0]``, saying what is missing.
    """
    for name, version in config.versions.items():
        try:
            version.login()
        except LookupError as exc:
            raise ConfigError(config.path, f"{join_key('versions', name)}.password_env",
                              str(exc)) from None
        if version.command is None or "{dir}" in version.command[0]:
            continue
        key = f"{join_key('versions', name)}.command[0]"
        try:
            program = version.command_for(port=1, dir="/nonexistent")[0]
        except FileNotFoundError as exc:
            raise ConfigError(config.path, key, str(exc)) from None
        if "/" in program:
            if not os.path.isfile(program):
                raise ConfigError(config.path, key, f"{program}: no such file")
            if not os.access(program, os.X_OK):
                raise ConfigError(config.path, key, f"{program}: not executable")
        elif shutil.which(program) is None:
            raise ConfigError(config.path, key, f'"{program}" is not found on PATH')
