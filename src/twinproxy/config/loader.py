"""Loading a config file: TOML in, a validated :class:`~twinproxy.config.model.Config` out.

Operators write this file by hand and run twinproxy with it in front of production servers, so the
loader is strict the way ``haproxy -c`` is: an unknown key, a wrong type, a value out of range or a
name that refers to nothing is an error, and every error says in one line where (the file and the
dotted key, e.g. ``rules[2].normalize[0].pattern``) and why. Nothing is guessed, nothing is
silently ignored. Array indexes in keys count from 0, as in the TOML arrays they point into.

How this module reads, top to bottom: the small schema helper (a table's schema maps each key to
a *check*, a function that turns a TOML value into a Python value or raises); one function per
section; :func:`load_config`. The loader looks at nothing but the file (no environment variables,
no processes); :func:`check_programs` is the separate look at the machine that
``twinproxy check`` adds.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import shutil
import string
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any
from urllib.parse import urlsplit

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
from twinproxy.protocols.base import Limits
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
# The schema helper: a table's schema maps each key to a Key(check, default); a check takes the
# TOML value and the dotted key it sits at, and returns the Python value or raises _Invalid.


class _Invalid(Exception):
    """A problem at one key; :func:`load_config` adds the file name."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason


Check = Callable[[Any, str], Any]
_REQUIRED = object()


@dataclass(frozen=True)
class Key:
    check: Check
    default: Any = _REQUIRED


def _join(prefix: str, name: str) -> str:
    """The dotted path of ``name`` inside ``prefix``, quoting names that are not bare TOML keys."""
    part = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


def _show(value: Any) -> str:
    """A value as it would look in TOML, for ``got ...`` in a reason."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"


def _show_regex(pattern: str) -> str:
    """A regex as it is best written in TOML: a literal string, where backslashes stay single."""
    if "'" in pattern or any(ord(c) < 32 for c in pattern):
        return json.dumps(pattern, ensure_ascii=False)
    return f"'{pattern}'"


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _either(words: Sequence[str], conjunction: str) -> str:
    """``"a"``, ``"a" or "b"``, ``"a", "b" or "c"``: quoted, for a reason."""
    quoted = [f'"{word}"' for word in words]
    if len(quoted) < 2:
        return "".join(quoted)
    return f"{', '.join(quoted[:-1])} {conjunction} {quoted[-1]}"


def table(raw: Any, key: str, schema: Mapping[str, Key]) -> dict[str, Any]:
    """Check one TOML table against ``schema``: no unknown keys, required keys present, every
    value through its check. Keys left out get their defaults."""
    if not isinstance(raw, dict):
        raise _Invalid(key, f"expected a table, got {_show(raw)}")
    for name in raw:
        if name not in schema:
            raise _Invalid(_join(key, name), "unknown key" + _suggest(name, list(schema)))
    values = {}
    for name, spec in schema.items():
        where = _join(key, name)
        if name in raw:
            values[name] = spec.check(raw[name], where)
        elif spec.default is _REQUIRED:
            raise _Invalid(where, "missing: this key is required")
        else:
            values[name] = spec.default
    return values


def text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(key, f"expected a string, got {_show(value)}")
    if not value:
        raise _Invalid(key, "must not be empty")
    return value


def text_or_texts(value: Any, key: str) -> tuple[str, ...]:
    """One string, or a non-empty array of them."""
    if isinstance(value, list):
        return array(text, min_len=1)(value, key)
    return (text(value, key),)


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(key, f"expected true or false, got {_show(value)}")
    return value


def one_of(*choices: str) -> Check:
    def check(value: Any, key: str) -> str:
        if value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            raise _Invalid(key, f"expected one of {allowed}, got {_show(value)}{hint}")
        return value

    return check


def number(*, above: float | None = None, at_least: float | None = None,
           integer: bool = False) -> Check:
    """A number in range: ``above`` is a strict bound, ``at_least`` an inclusive one. Seconds are
    floats (an integer is fine); counts are integers."""

    def check(value: Any, key: str) -> int | float:
        ok = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok):
            kind = "an integer" if integer else "a number"
            raise _Invalid(key, f"expected {kind}, got {_show(value)}")
        if not math.isfinite(value):
            raise _Invalid(key, f"must be a finite number, got {value}")
        if above is not None and not value > above:
            raise _Invalid(key, f"must be > {above:g}, got {value}")
        if at_least is not None and not value >= at_least:
            raise _Invalid(key, f"must be >= {at_least:g}, got {value}")
        return value if integer else float(value)

    return check


def array(item: Check, *, min_len: int = 0) -> Check:
    """An array whose elements pass ``item`` (each checked at ``key[i]``), as a tuple."""

    def check(value: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(key, f"expected an array, got {_show(value)}")
        if len(value) < min_len:
            raise _Invalid(key, f"needs at least {min_len} element{'s' if min_len > 1 else ''}")
        return tuple(item(v, f"{key}[{i}]") for i, v in enumerate(value))

    return check


def string_table(value: Any, key: str) -> dict[str, str]:
    """A table of strings (environment variables), values may be empty."""
    if not isinstance(value, dict):
        raise _Invalid(key, f"expected a table of strings, got {_show(value)}")
    for name, v in value.items():
        if not isinstance(v, str):
            raise _Invalid(_join(key, name), f"expected a string, got {_show(v)}")
    return dict(value)


def subtable(schema: Mapping[str, Key]) -> Check:
    return lambda value, key: table(value, key, schema)


# --------------------------------------------------------------------------------------------
# Value checks specific to twinproxy


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def address(value: Any, key: str) -> Address:
    """``host:port`` with port 1-65535; an IPv6 host in brackets (``[::1]:6380``)."""
    if not isinstance(value, str):
        raise _Invalid(key, f'expected a "host:port" string, got {_show(value)}')
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise _Invalid(key, f'expected "[IPv6 address]:port", got {_show(value)}')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(key, f'"{host}" in brackets is not an IPv6 address') from None
    elif value.count(":") > 1:
        raise _Invalid(key, f'an IPv6 host goes in brackets, as in "[::1]:6380"; '
                            f"got {_show(value)}")
    else:
        host, sep, port_text = value.partition(":")
        if not sep or not host:
            raise _Invalid(key, f'expected "host:port", got {_show(value)}')
        if not _HOSTNAME.fullmatch(host):
            raise _Invalid(key, f'"{host}" is not a host name or IPv4 address '
                                f"(in {_show(value)})")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise _Invalid(key, f'the port must be a number from 1 to 65535, got "{port_text}"')
    return host, int(port_text)


_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL


def control_address(value: Any, key: str) -> str | Address:
    """A unix socket path (any value with a ``/``) or ``host:port``."""
    if isinstance(value, str) and "/" in value:
        if len(os.fsencode(value)) > _UNIX_PATH_MAX:
            raise _Invalid(key, f"a unix socket path is at most {_UNIX_PATH_MAX} bytes long, "
                                f"this one is {len(os.fsencode(value))}")
        return value
    if isinstance(value, str) and ":" not in value:
        raise _Invalid(key, 'expected a unix socket path (with a "/", such as "./twinproxy.sock") '
                            f'or "host:port", got {_show(value)}')
    return address(value, key)


def placeholders(value: Any, key: str) -> str:
    """A command word whose ``{placeholders}`` are all known and plain."""
    word = _any_string(value, key)
    try:
        parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(word)
                  if name is not None]
    except ValueError as exc:
        raise _Invalid(key, f"{exc} in {_show(word)}; write {{{{ and }}}} for literal braces"
                       ) from None
    for name, spec, conv in parsed:
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise _Invalid(key, f'unknown placeholder "{{{name}}}" (known: {known})'
                           + _suggest(name, PLACEHOLDERS))
        if spec or conv:
            raise _Invalid(key, f"placeholder {{{name}}} takes no format spec or conversion")
    return word


def _any_string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(key, f"expected a string, got {_show(value)}")
    return value


def command(value: Any, key: str) -> tuple[str, ...]:
    """A managed server's argv: a program, and ``{port}`` somewhere in it."""
    words = array(placeholders, min_len=1)(value, key)
    if not words[0]:
        raise _Invalid(f"{key}[0]", "the program to run is empty")
    used = {name for word in words for _, name, _, _ in string.Formatter().parse(word)}
    if "port" not in used:
        raise _Invalid(key, "no {port} placeholder: twinproxy picks a free port for each "
                            "instance and must pass it to the server")
    return words


def regex(value: Any, key: str) -> re.Pattern[bytes]:
    text_ = _any_string(value, key)
    try:
        return re.compile(text_.encode())
    except re.error as exc:
        raise _Invalid(key, f"invalid regular expression {_show_regex(text_)}: {exc}") from None


def http_url(value: Any, key: str) -> str:
    url = text(value, key)
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme != "http" or not parts.hostname or not port_ok:
        raise _Invalid(key, f'expected an "http://host:port/path" URL, got {_show(url)}')
    return url


def true_only(value: Any, key: str) -> bool:
    if boolean(value, key) is not True:
        raise _Invalid(key, "ignore = false is not an action: set it to true or remove it")
    return True


def rewrite_word(value: Any, key: str) -> bytes | int | EllipsisType:
    """``$N`` (``$0`` the command, ``$1``... the arguments), ``$*``, ``$$...`` (a literal
    ``$...``) or literal text."""
    word = _any_string(value, key)
    if not word.startswith("$"):
        return word.encode()
    if word == "$*":
        return ALL_ARGS
    if word.startswith("$$"):
        return word[1:].encode()
    if word[1:].isdigit() and word[1:].isascii():
        return int(word[1:])
    raise _Invalid(key, f"{_show(word)} is not a reference: use $0 (the command), $1, $2 ... "
                        '(the arguments), $* (all arguments), or $$ for a literal "$"')


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
}

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
VERSION = {"command": Key(command, None), "address": Key(address, None), **MANAGED_ONLY}

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
    "barrier_timeout": Key(number(above=0), 5.0),
    "session_join_timeout": Key(number(above=0), 5.0),
    "divergence_log": Key(text, None),
    "cooperative_endpoint": Key(http_url, None),
}

SUBSTITUTION = {"pattern": Key(regex), "replace": Key(_any_string, "")}
ERROR_MAPPING = {"leader": Key(regex), "follower": Key(regex)}
RULE = {
    "name": Key(text),
    "command": Key(text_or_texts),
    "args": Key(regex, None),
    "from": Key(text, None),
    "to": Key(text, None),
    "ignore": Key(true_only, None),
    "normalize": Key(array(subtable(SUBSTITUTION), min_len=1), None),
    "tolerance": Key(number(at_least=0), None),
    "rewrite": Key(array(rewrite_word, min_len=1), None),
    "map_error": Key(array(subtable(ERROR_MAPPING), min_len=1), None),
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
        raise _Invalid("proxy.control", "is the same address as proxy.listen")
    return proxy


def _version(raw: Any, key: str, name: str) -> VersionConfig:
    if not _VERSION_NAME.fullmatch(name):
        raise _Invalid(key, "a version name is letters, digits, '.', '_' and '-', starting with "
                            "a letter or digit (it is typed on the command line)")
    values = table(raw, key, VERSION)
    if (values["command"] is None) == (values["address"] is None):
        has = "both command and" if values["command"] is not None else "neither command nor"
        raise _Invalid(key, f"has {has} address: give exactly one (command: "
                            "twinproxy starts the server; address: it is already running)")
    if values["address"] is not None:
        for extra in MANAGED_ONLY:
            if extra in raw:
                raise _Invalid(_join(key, extra), "only for a managed server (one with command); "
                                                  "this version has an address")
    if values["restart_backoff_max"] < values["restart_backoff"]:
        raise _Invalid(_join(key, "restart_backoff_max"),
                       f"must be >= restart_backoff ({values['restart_backoff']:g}), "
                       f"got {values['restart_backoff_max']:g}")
    return VersionConfig(name=name, **values)


def _versions(raw: Any, proxy: ProxyConfig) -> dict[str, VersionConfig]:
    if not isinstance(raw, dict):
        raise _Invalid("versions", f"expected a table, got {_show(raw)}")
    if not raw:
        raise _Invalid("versions", "no versions: define at least one, such as [versions.v1] "
                                   "with command or address")
    versions = {name: _version(v, _join("versions", name), name) for name, v in raw.items()}
    for name, version in versions.items():
        if version.address is not None and version.address == proxy.listen:
            raise _Invalid(_join(_join("versions", name), "address"),
                           "is the proxy's own listen address: it would connect to itself")
    if proxy.start not in versions:
        raise _Invalid("proxy.start", _unknown_version(proxy.start, versions))
    return versions


def _unknown_version(name: str, versions: Mapping[str, Any]) -> str:
    known = ", ".join(versions)
    return f'no version "{name}" in [versions] (defined: {known})' + _suggest(name, list(versions))


def _update(raw: Any, protocol: str) -> UpdateConfig:
    values = table(raw, "update", UPDATE)
    sync = values["sync"] = values["sync"] or DEFAULT_SYNC[protocol]
    method = STATE_SYNC[sync]
    if not method.works_with(protocol):
        owners = method.protocols or ()
        usable = [DEFAULT_SYNC[protocol], *(m.name for m in STATE_SYNC.values()
                                            if m.works_with(protocol)
                                            and m.name != DEFAULT_SYNC[protocol])]
        raise _Invalid("update.sync", f'"{sync}" works only with protocol '
                                      f'{_either(owners, "or")}, not "{protocol}" '
                                      f'(for {protocol}: {_either(usable, "or")})')
    if sync == "cooperative" and values["cooperative_endpoint"] is None:
        raise _Invalid("update.cooperative_endpoint",
                       'missing: sync = "cooperative" needs the service\'s update endpoint')
    if sync != "cooperative" and values["cooperative_endpoint"] is not None:
        raise _Invalid("update.cooperative_endpoint",
                       f'only used with sync = "cooperative", and sync is "{sync}"')
    return UpdateConfig(**values)


@contextmanager
def _in_rule(name: str | None) -> Iterator[None]:
    """Say which rule a problem is in: an index is easy to miscount in a long file."""
    try:
        yield
    except _Invalid as exc:
        if name is None:
            raise
        raise _Invalid(exc.key, f'rule "{name}": {exc.reason}') from None


def _rule(raw: Any, key: str, protocol: str, versions: Mapping[str, VersionConfig]) -> RuleConfig:
    name = raw.get("name") if isinstance(raw, dict) else None
    with _in_rule(name if isinstance(name, str) and name else None):
        values = table(raw, key, RULE)
        commands = []
        many = isinstance(raw["command"], list)
        for i, cmd in enumerate(values["command"]):
            where = _join(key, "command") + (f"[{i}]" if many else "")
            if len(cmd.split()) > 1:
                first, rest = cmd.split(None, 1)
                raise _Invalid(where, f"{_show(cmd)} is more than a command name; match what "
                               f'follows the command with args: command = "{first}", '
                               f'args = "^{rest}"')
            if cmd != cmd.strip():
                raise _Invalid(where, f"{_show(cmd)} has spaces around the name")
            commands.append(cmd.lower() if protocol == "memcache" else cmd.upper())
        for end in ("from", "to"):
            if values[end] is not None and values[end] not in versions:
                raise _Invalid(_join(key, end), _unknown_version(values[end], versions))
        actions = [a for a in RULE_ACTIONS if values[a] is not None]
        if len(actions) != 1:
            listed = ", ".join(RULE_ACTIONS)
            reason = (f"no action: give exactly one of {listed}" if not actions else
                      f"{len(actions)} actions ({' and '.join(actions)}): a rule takes exactly "
                      "one; write one rule per action")
            raise _Invalid(key, reason)
        rewrite = values["rewrite"] or ()
        return RuleConfig(
            name=values["name"],
            commands=tuple(commands),
            action=actions[0],
            args=values["args"],
            from_version=values["from"],
            to_version=values["to"],
            ignore=bool(values["ignore"]),
            normalize=tuple(Substitution(s["pattern"], _replacement(s, f"{key}.normalize[{i}]"))
                            for i, s in enumerate(values["normalize"] or ())),
            tolerance=values["tolerance"],
            rewrite=tuple(raw["rewrite"]) if rewrite else (),
            map_error=tuple(ErrorMapping(m["leader"], m["follower"])
                            for m in values["map_error"] or ()),
            rewrite_parts=rewrite,
        )


def _replacement(sub: Mapping[str, Any], key: str) -> bytes:
    """The ``replace`` text, checked against its pattern's groups now rather than at the first
    reply that matches."""
    replace = sub["replace"].encode()
    try:
        sub["pattern"].sub(replace, b"")
    except (re.error, IndexError) as exc:
        raise _Invalid(f"{key}.replace", f"invalid replacement {_show_regex(sub['replace'])}: {exc}"
                       ) from None
    return replace


def _rules(raw: Any, protocol: str, versions: Mapping[str, VersionConfig]
           ) -> tuple[RuleConfig, ...]:
    if not isinstance(raw, list):
        raise _Invalid("rules", f"expected an array of tables ([[rules]]), got {_show(raw)}")
    rules: list[RuleConfig] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        rule = _rule(entry, f"rules[{i}]", protocol, versions)
        if rule.name in seen:
            raise _Invalid(f"rules[{i}].name",
                           f'rule "{rule.name}": duplicate name, rules[{seen[rule.name]}] has it')
        seen[rule.name] = i
        rules.append(rule)
    return tuple(rules)


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
        rules = _rules(top["rules"], proxy.protocol, versions)
        return Config(Path(path), proxy, versions, update, rules, limits, _warnings(proxy))
    except _Invalid as exc:
        raise ConfigError(path, exc.key, exc.reason) from None


def check_programs(config: Config) -> None:
    """Check that every managed version's program exists and is executable on this machine.

    Separate from :func:`load_config` because it depends on the machine, not the file: a config
    may be checked on one host and run on another. A program whose path uses ``{dir}`` is not
    checked (the directory exists only once an instance starts).

    Raises:
        ConfigError: at ``versions.<name>.command[0]``, saying what is missing.
    """
    for name, version in config.versions.items():
        if version.command is None or "{dir}" in version.command[0]:
            continue
        key = f"{_join('versions', name)}.command[0]"
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
