"""How a config's TOML values are checked: a table's schema, and the checks its keys go through.

A schema maps each key of a table to a :class:`Key`: a *check*, and the default for a key left
out (or none: the key is required). A check takes the TOML value and the dotted key it sits at,
and returns the Python value or raises :class:`Invalid` with that key and the reason. The loader
adds the file name (:class:`~twinproxy.config.loader.ConfigError`), so that every message reads
``<file>: <key>: <reason>``.

How this module reads, top to bottom: :class:`Invalid` and :class:`Key`; the small helpers that
word a reason (a value as TOML shows it, a "did you mean"); :func:`table`; the checks of plain
TOML values (text, numbers, arrays, tables); the checks of twinproxy's own kinds of values
(addresses, commands and their placeholders, regexes, URLs).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twinproxy.config.model import PLACEHOLDERS, Address

__all__ = [
    "Check",
    "Invalid",
    "Key",
    "address",
    "any_string",
    "array",
    "boolean",
    "command",
    "control_address",
    "either",
    "http_url",
    "join_key",
    "number",
    "one_of",
    "placeholders",
    "regex",
    "show_regex",
    "show_value",
    "string_table",
    "subtable",
    "suggest",
    "table",
    "text",
    "text_or_texts",
    "unknown_version",
]


class Invalid(Exception):
    """A problem at one key; :func:`~twinproxy.config.loader.load_config` adds the file name."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason


Check = Callable[[Any, str], Any]
_REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One key of a schema: its check, and its default when the table leaves it out."""

    check: Check
    default: Any = _REQUIRED


def join_key(prefix: str, name: str) -> str:
    """The dotted path of ``name`` inside ``prefix``, quoting names that are not bare TOML keys."""
    part = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


def show_value(value: Any) -> str:
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


def show_regex(pattern: str) -> str:
    """A regex as it is best written in TOML: a literal string, where backslashes stay single."""
    if "'" in pattern or any(ord(c) < 32 for c in pattern):
        return json.dumps(pattern, ensure_ascii=False)
    return f"'{pattern}'"


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean "x"?)`` when ``word`` is close to one of ``choices``, else nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def either(words: Sequence[str], conjunction: str) -> str:
    """``"a"``, ``"a" or "b"``, ``"a", "b" or "c"``: quoted, for a reason."""
    quoted = [f'"{word}"' for word in words]
    if len(quoted) < 2:
        return "".join(quoted)
    return f"{', '.join(quoted[:-1])} {conjunction} {quoted[-1]}"


def unknown_version(name: str, versions: Mapping[str, Any]) -> str:
    """The reason for a version name that [versions] does not define (``proxy.start``, a
    rule's ``from`` or ``to``)."""
    known = ", ".join(versions)
    return f'no version "{name}" in [versions] (defined: {known})' + suggest(name, list(versions))


# --------------------------------------------------------------------------------------------
# A table, and the checks of plain TOML values


def table(raw: Any, key: str, schema: Mapping[str, Key]) -> dict[str, Any]:
    """Check one TOML table against ``schema``: no unknown keys, required keys present, every
    value through its check. Keys left out get their defaults."""
    if not isinstance(raw, dict):
        raise Invalid(key, f"expected a table, got {show_value(raw)}")
    for name in raw:
        if name not in schema:
            raise Invalid(join_key(key, name), "unknown key" + suggest(name, list(schema)))
    values = {}
    for name, spec in schema.items():
        where = join_key(key, name)
        if name in raw:
            values[name] = spec.check(raw[name], where)
        elif spec.default is _REQUIRED:
            raise Invalid(where, "missing: this key is required")
        else:
            values[name] = spec.default
    return values


def text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise Invalid(key, f"expected a string, got {show_value(value)}")
    if not value:
        raise Invalid(key, "must not be empty")
    return value


def any_string(value: Any, key: str) -> str:
    """A string that may be empty (a replacement, a command word), unlike :func:`text`."""
    if not isinstance(value, str):
        raise Invalid(key, f"expected a string, got {show_value(value)}")
    return value


def text_or_texts(value: Any, key: str) -> tuple[str, ...]:
    """One string, or a non-empty array of them."""
    if isinstance(value, list):
        return array(text, min_len=1)(value, key)
    return (text(value, key),)


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(key, f"expected true or false, got {show_value(value)}")
    return value


def one_of(*choices: str) -> Check:
    def check(value: Any, key: str) -> str:
        if value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            hint = suggest(value, choices) if isinstance(value, str) else ""
            raise Invalid(key, f"expected one of {allowed}, got {show_value(value)}{hint}")
        return value

    return check


def number(*, above: float | None = None, at_least: float | None = None,
           at_most: float | None = None, integer: bool = False) -> Check:
    """A number in range: ``above`` is a strict bound, ``at_least`` and ``at_most`` inclusive
    ones. Seconds are floats (an integer is fine); counts are integers."""

    def check(value: Any, key: str) -> int | float:
        ok = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok):
            kind = "an integer" if integer else "a number"
            raise Invalid(key, f"expected {kind}, got {show_value(value)}")
        if not math.isfinite(value):
            raise Invalid(key, f"must be a finite number, got {value}")
        if above is not None and not value > above:
            raise Invalid(key, f"must be > {above:g}, got {value}")
        if at_least is not None and not value >= at_least:
            raise Invalid(key, f"must be >= {at_least:g}, got {value}")
        if at_most is not None and not value <= at_most:
            raise Invalid(key, f"must be <= {at_most:g}, got {value}")
        return value if integer else float(value)

    return check


def array(item: Check, *, min_len: int = 0) -> Check:
    """An array whose elements pass ``item`` (each checked at ``key[i]``), as a tuple."""

    def check(value: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid(key, f"expected an array, got {show_value(value)}")
        if len(value) < min_len:
            raise Invalid(key, f"needs at least {min_len} element{'s' if min_len > 1 else ''}")
        return tuple(item(v, f"{key}[{i}]") for i, v in enumerate(value))

    return check


def string_table(value: Any, key: str) -> dict[str, str]:
    """A table of strings (environment variables), values may be empty."""
    if not isinstance(value, dict):
        raise Invalid(key, f"expected a table of strings, got {show_value(value)}")
    for name, v in value.items():
        if not isinstance(v, str):
            raise Invalid(join_key(key, name), f"expected a string, got {show_value(v)}")
    return dict(value)


def subtable(schema: Mapping[str, Key]) -> Check:
    """A table inside a table (an entry of an array of tables), checked against ``schema``."""
    return lambda value, key: table(value, key, schema)


# --------------------------------------------------------------------------------------------
# Checks of twinproxy's own kinds of values


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def address(value: Any, key: str) -> Address:
    """``host:port`` with port 1-65535; an IPv6 host in brackets (``[::1]:6380``)."""
    if not isinstance(value, str):
        raise Invalid(key, f'expected a "host:port" string, got {show_value(value)}')
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise Invalid(key, f'expected "[IPv6 address]:port", got {show_value(value)}')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(key, f'"{host}" in brackets is not an IPv6 address') from None
    elif value.count(":") > 1:
        raise Invalid(key, f'an IPv6 host goes in brackets, as in "[::1]:6380"; '
                           f"got {show_value(value)}")
    else:
        host, sep, port_text = value.partition(":")
        if not sep or not host:
            raise Invalid(key, f'expected "host:port", got {show_value(value)}')
        if not _HOSTNAME.fullmatch(host):
            raise Invalid(key, f'"{host}" is not a host name or IPv4 address '
                               f"(in {show_value(value)})")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise Invalid(key, f'the port must be a number from 1 to 65535, got "{port_text}"')
    return host, int(port_text)


def ipv4_address(value: Any, key: str) -> str:
    """An IPv4 address (what an FTP ``227`` reply can carry), in its canonical form."""
    if not isinstance(value, str):
        raise Invalid(key, f"expected an IPv4 address string, got {show_value(value)}")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise Invalid(key, f"must be an IPv4 address (a 227 reply to PASV carries IPv4 only), "
                           f"got {show_value(value)}") from None


_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL


def control_address(value: Any, key: str) -> str | Address:
    """A unix socket path (any value with a ``/``) or ``host:port``."""
    if isinstance(value, str) and "/" in value:
        if len(os.fsencode(value)) > _UNIX_PATH_MAX:
            raise Invalid(key, f"a unix socket path is at most {_UNIX_PATH_MAX} bytes long, "
                               f"this one is {len(os.fsencode(value))}")
        return value
    if isinstance(value, str) and ":" not in value:
        raise Invalid(key, 'expected a unix socket path (with a "/", such as "./twinproxy.sock") '
                           f'or "host:port", got {show_value(value)}')
    return address(value, key)


def placeholders(value: Any, key: str) -> str:
    """A command word whose ``{placeholders}`` are all known and plain."""
    word = any_string(value, key)
    try:
        parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(word)
                  if name is not None]
    except ValueError as exc:
        raise Invalid(key, f"{exc} in {show_value(word)}; write {{{{ and }}}} for literal braces"
                       ) from None
    for name, spec, conv in parsed:
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise Invalid(key, f'unknown placeholder "{{{name}}}" (known: {known})'
                          + suggest(name, PLACEHOLDERS))
        if spec or conv:
            raise Invalid(key, f"placeholder {{{name}}} takes no format spec or conversion")
    return word


def command(value: Any, key: str) -> tuple[str, ...]:
    """A managed server's argv: a program, and ``{port}`` somewhere in it."""
    words = array(placeholders, min_len=1)(value, key)
    if not words[0]:
        raise Invalid(f"{key}[0]", "the program to run is empty")
    used = {name for word in words for _, name, _, _ in string.Formatter().parse(word)}
    if "port" not in used:
        raise Invalid(key, "no {port} placeholder: twinproxy picks a free port for each "
                           "instance and must pass it to the server")
    return words


def regex(value: Any, key: str) -> re.Pattern[bytes]:
    text_ = any_string(value, key)
    try:
        return re.compile(text_.encode())
    except re.error as exc:
        raise Invalid(key, f"invalid regular expression {show_regex(text_)}: {exc}") from None


def http_url(value: Any, key: str) -> str:
    url = text(value, key)
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme != "http" or not parts.hostname or not port_ok:
        raise Invalid(key, f'expected an "http://host:port/path" URL, got {show_value(url)}')
    return url
