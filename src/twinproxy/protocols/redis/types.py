"""RESP values as the reply reader builds them, their canonical form, and encoders.

A reply's ``value`` keeps the wire type, so that a RESP3 reply can be encoded back as it came and
tests can round-trip every type. The types are plain Python where the wire type is unambiguous and
thin subclasses where RESP has two spellings of the same data:

==================  =====================================  ===================================
wire                value                                  canonical
==================  =====================================  ===================================
``$`` bulk          ``bytes``                              ``bytes``
``+`` simple        :class:`SimpleString` (bytes)          ``bytes``
``=`` verbatim      :class:`Verbatim` (bytes, ``.format``)  ``bytes`` (no ``txt:`` prefix)
``:`` integer       ``int``                                ``int``
``(`` big number    :class:`BigNumber` (int)               ``int``
``#`` boolean       ``bool``                               ``int`` (1/0, as RESP2 sends it)
``,`` double        :class:`Double` (bytes: the text)      ``bytes`` (the text, as RESP2 sends it)
``_`` ``$-1`` ``*-1``  ``None``                            ``None``
``-`` ``!`` error   :class:`RespError`                     :class:`RespError` (message only)
``*`` array         ``list``                               ``tuple``
``~`` set           :class:`RespSet` (list)                ``tuple``
``%`` map           :class:`Map` (flat list k1 v1 k2 v2)   ``tuple`` (flat, as RESP2 sends it)
``>`` push          :class:`Push` (list)                   ``tuple``
``|`` attribute     :class:`Attributed` wrapping the value  the value's (attributes dropped)
==================  =====================================  ===================================

Doubles stay text because Redis formats them the same way (``%.17g`` in 6.2 and 7.0) in RESP2
bulk strings and RESP3 doubles, so comparing the text is exact, and NaN compares equal to itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from twinproxy.protocols.messages import LocalProtocolError


class _NoReply:
    """The value of the synthetic reply that pairs a request the server answers with nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REPLY"

    def __reduce__(self) -> str:
        return "NO_REPLY"


NO_REPLY = _NoReply()


class SimpleString(bytes):
    """A ``+`` status reply (``+OK``); equal to the same bytes."""

    __slots__ = ()


class Double(bytes):
    """A RESP3 ``,`` double, kept as the text the server sent (``b"1.5"``, ``b"inf"``)."""

    __slots__ = ()

    def __float__(self) -> float:
        return float(bytes(self))


class Verbatim(bytes):
    """A RESP3 ``=`` verbatim string: the text without its ``fmt:`` prefix, and ``format``."""

    def __new__(cls, text: bytes, fmt: bytes = b"txt") -> Verbatim:
        self = super().__new__(cls, text)
        self.format = fmt
        return self


class BigNumber(int):
    """A RESP3 ``(`` big number."""

    __slots__ = ()


class RespSet(list):
    """A RESP3 ``~`` set, in the order the server sent it."""

    __slots__ = ()


class Push(list):
    """A RESP3 ``>`` push (out-of-band data, or a subscribe confirmation)."""

    __slots__ = ()


class Map(list):
    """A RESP3 ``%`` map, flat (key1, value1, key2, value2 ...) like its RESP2 array form.

    Flat because keys may be unhashable (arrays) and because that is the canonical form.
    """

    __slots__ = ()

    def items(self) -> list[tuple[Any, Any]]:
        return list(zip(self[0::2], self[1::2], strict=False))

    def to_dict(self) -> dict:
        """A dict view; raises ``TypeError`` if a key is unhashable."""
        return dict(self.items())


@dataclass(frozen=True, slots=True)
class RespError:
    """An error reply: ``message`` is what follows ``-`` (``b"ERR unknown command ..."``).

    ``blob`` marks a RESP3 ``!`` blob error; it does not take part in equality.
    """

    message: bytes
    blob: bool = field(default=False, compare=False)

    @property
    def code(self) -> bytes:
        """The error code, the first word by convention (``ERR``, ``WRONGTYPE``, ``NOAUTH``)."""
        return self.message.split(b" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Attributed:
    """A value preceded by a RESP3 ``|`` attribute map (dropped from the canonical form)."""

    attributes: Map
    value: Any


def canonical(value: Any) -> Any:
    """The hashable form in which RESP2 and RESP3 spellings of the same data are equal."""
    t = type(value)
    if t is bytes or t is int or value is None or t is RespError or value is NO_REPLY:
        return value
    if t is list or t is Push or t is RespSet or t is Map:
        return tuple([canonical(v) for v in value])
    if t is SimpleString or t is Double or t is Verbatim:
        return bytes(value)
    if t is bool or t is BigNumber:
        return int(value)
    if t is Attributed:
        return canonical(value.value)
    if t is tuple:
        return tuple([canonical(v) for v in value])
    # Values built by callers (str, float) get the same treatment as what the wire would give.
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, list | tuple):
        return tuple([canonical(v) for v in value])
    return value


def format_double(value: float) -> bytes:
    """``value`` as Redis 6.2/7.0 print a double (``%.17g``; ``inf``/``-inf`` spelled out)."""
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    if math.isnan(value):
        return b"nan"
    return b"%.17g" % value


def _as_bytes(arg: bytes | str | int | float) -> bytes:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise LocalProtocolError(f"cannot send a bool as a command argument: {arg!r}")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return format_double(arg)
    raise LocalProtocolError(f"cannot send {type(arg).__name__} as a command argument")


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings, the form every Redis client sends.

    ``str`` is encoded as UTF-8, ``int`` in decimal.

    Raises:
        LocalProtocolError: no arguments, or one that has no bytes form.
    """
    if not args:
        raise LocalProtocolError("a command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        b = _as_bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def _line(text: bytes, what: str) -> bytes:
    if b"\r" in text or b"\n" in text:
        raise LocalProtocolError(f"a {what} cannot contain CR or LF: {text[:40]!r}")
    return text


def encode_reply(value: Any, resp3: bool = False) -> bytes:
    """``value`` (in the reader's representation, or plain Python) as a reply on the wire.

    With ``resp3`` false, RESP3-only types are sent the way Redis sends them to a RESP2 client:
    maps and sets as arrays, booleans as 1/0, doubles, big numbers and verbatim strings as bulk
    strings, attributes dropped, nulls as ``$-1``.

    Raises:
        LocalProtocolError: the value has no RESP form (a simple string or error with CR/LF in
            RESP2, an unknown type).
    """
    out: list[bytes] = []
    _encode(value, resp3, out, 0)
    return b"".join(out)


def _encode(value: Any, resp3: bool, out: list[bytes], depth: int) -> None:
    if depth > 1000:
        raise LocalProtocolError("value nested too deeply to encode")
    t = type(value)
    if value is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif t is SimpleString:
        out.append(b"+%s\r\n" % _line(value, "simple string"))
    elif t is Double:
        if resp3:
            out.append(b",%s\r\n" % _line(value, "double"))
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif t is Verbatim:
        if resp3:
            body = value.format + b":" + bytes(value)
            out.append(b"=%d\r\n%s\r\n" % (len(body), body))
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value)
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    elif isinstance(value, str):
        b = value.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    elif t is bool:
        if resp3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(b":1\r\n" if value else b":0\r\n")
    elif t is BigNumber:
        out.append(b"(%d\r\n" % value if resp3 else b"$%d\r\n%d\r\n" % (len(b"%d" % value), value))
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, float):
        _encode(Double(format_double(value)), resp3, out, depth)
    elif t is RespError:
        if resp3 and (value.blob or b"\r" in value.message or b"\n" in value.message):
            out.append(b"!%d\r\n%s\r\n" % (len(value.message), value.message))
        else:
            out.append(b"-%s\r\n" % _line(value.message, "error"))
    elif t is Attributed:
        if resp3:
            out.append(b"|%d\r\n" % (len(value.attributes) // 2))
            for v in value.attributes:
                _encode(v, resp3, out, depth + 1)
        _encode(value.value, resp3, out, depth)
    elif isinstance(value, list | tuple):
        if t is Map:
            if len(value) % 2:
                raise LocalProtocolError("a map needs an even number of items")
            head = b"%%%d\r\n" % (len(value) // 2) if resp3 else b"*%d\r\n" % len(value)
        elif t is RespSet:
            head = b"~%d\r\n" % len(value) if resp3 else b"*%d\r\n" % len(value)
        elif t is Push:
            head = b">%d\r\n" % len(value) if resp3 else b"*%d\r\n" % len(value)
        else:
            head = b"*%d\r\n" % len(value)
        out.append(head)
        for v in value:
            _encode(v, resp3, out, depth + 1)
    elif isinstance(value, dict):
        _encode(Map(x for kv in value.items() for x in kv), resp3, out, depth)
    else:
        raise LocalProtocolError(f"no RESP form for {type(value).__name__}")
