"""Just enough RESP for the example: commands in (arrays of bulk strings, or inline), replies
out. A real service would use a library; this keeps the example free of dependencies."""

from __future__ import annotations

__all__ = ["Error", "Map", "ProtocolError", "Status", "encode", "parse_commands"]


class ProtocolError(Exception):
    """The client sent something that is not RESP; the connection is closed."""


class Error(str):
    """An error reply's text (``-ERR ...``)."""


class Status(str):
    """A status reply's text (``+OK``)."""


class Map(dict):
    """A map reply: RESP3's map, a flat array of keys and values in RESP2."""


def parse_commands(buffer: bytearray) -> list[list[bytes]]:
    """Take every complete command off the front of ``buffer``; the rest stays."""
    commands = []
    while buffer:
        command, used = _one(buffer)
        if command is None:
            break
        del buffer[:used]
        if command:
            commands.append(command)
    return commands


def _one(buffer: bytearray) -> tuple[list[bytes] | None, int]:
    end = buffer.find(b"\r\n")
    if end < 0:
        if len(buffer) > 65536:
            raise ProtocolError("line too long")
        return None, 0
    if buffer[0:1] != b"*":
        return bytes(buffer[:end]).split(), end + 2
    try:
        count = int(buffer[1:end])
    except ValueError:
        raise ProtocolError("bad array length") from None
    pos, words = end + 2, []
    for _ in range(count):
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None, 0
        if buffer[pos:pos + 1] != b"$":
            raise ProtocolError("expected a bulk string")
        try:
            size = int(buffer[pos + 1:line_end])
        except ValueError:
            raise ProtocolError("bad bulk length") from None
        start = line_end + 2
        if len(buffer) < start + size + 2:
            return None, 0
        words.append(bytes(buffer[start:start + size]))
        pos = start + size + 2
    return words, pos


def encode(value: object, proto: int = 2) -> bytes:
    """A reply in RESP ``proto`` (2 or 3): Status, Error, int, bytes, None (nil), a Map or a
    list of those."""
    if isinstance(value, Status):
        return b"+" + value.encode() + b"\r\n"
    if isinstance(value, Error):
        return b"-" + value.encode() + b"\r\n"
    if value is None:
        return b"_\r\n" if proto == 3 else b"$-1\r\n"
    if isinstance(value, bool):
        return b":%d\r\n" % value
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, str):
        return encode(value.encode(), proto)
    if isinstance(value, Map):
        items = b"".join(encode(k, proto) + encode(v, proto) for k, v in value.items())
        return (b"%%%d\r\n" % len(value) if proto == 3 else b"*%d\r\n" % (2 * len(value))) + items
    if isinstance(value, (list, tuple)):
        return b"*%d\r\n" % len(value) + b"".join(encode(v, proto) for v in value)
    raise TypeError(f"cannot encode {value!r}")
