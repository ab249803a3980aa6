"""Frames a Redis server's byte stream into replies: RESP2 and every RESP3 type, nested.

The parser is a loop over one element at a time with an explicit stack of open aggregates, so a
reply that arrives in many chunks is parsed once, never again from its start: when the bytes run
out, the stack, the bulk being read and the reply's bytes so far are kept, and parsing resumes
where it stopped. Bytes that cannot complete anything yet are held as the chunks they came in and
joined once enough are there (a bulk of known length, or a line whose CRLF has arrived), so a
100 MB value is copied a few times, not once per chunk.

Replies are strict: every line ends in CRLF, numbers are spelled as Redis spells them, a bulk
ends in CRLF, and limits hold (line length, bulk length, elements per aggregate, nesting depth).
Anything else is a :class:`RemoteProtocolError`. Streamed RESP3 types (``$?``, ``*?``) are not
accepted: no Redis version sends them.

Values are those of :mod:`twinproxy.protocols.redis.types`.
"""

from __future__ import annotations

import re
from typing import Any

from twinproxy.protocols import compiled
from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, RemoteProtocolError
from twinproxy.protocols.reader import HeldChunks
from twinproxy.protocols.redis.textparse import string2ll
from twinproxy.protocols.redis.types import (
    Attributed,
    BigNumber,
    Double,
    Map,
    Push,
    RespError,
    RespSet,
    SimpleString,
    Verbatim,
)

_DOUBLE = re.compile(rb"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?(?i:inf|nan)")
_BIGNUM = re.compile(rb"-?[0-9]+")
_INTS = {b"%d" % i: i for i in range(-1, 10000)}
_OKS = re.compile(rb"(?:\+OK\r\n)+")
# Status replies seen on nearly every connection: one object each instead of one per reply.
_COMMON = {s: SimpleString(s) for s in (b"OK", b"PONG", b"QUEUED", b"RESET")}
_AGGREGATES = {42: list, 37: Map, 126: RespSet, 62: Push, 124: Map}  # * % ~ > |
_ATTRIBUTE = 124
_WRAP = -1  # a frame waiting for the value its attributes belong to

_WAIT_BYTES, _WAIT_CRLF = range(1, 3)

# The walk over plain replies in C (_scan.c), where it was built: the same framing as the
# parser's for the replies it takes, at a fraction of the cost (see take()).
_compiled = compiled.load("redis")
_c_replies = _compiled.replies if _compiled is not None else None


def _error(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what, reply=b"")


class _Frame:
    """An aggregate being filled: its items, how many are still to come, what it becomes."""

    __slots__ = ("items", "kind", "left")

    def __init__(self, kind: int, items: Any, left: int) -> None:
        self.kind = kind
        self.items = items
        self.left = left


class RespReplyParser(HeldChunks):
    """Frames replies from one server connection: :meth:`next` gives ``(value, raw)`` pairs."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._max_line = limits.max_line
        self._max_bulk = limits.max_bulk
        self._max_elements = limits.max_elements
        self._max_depth = limits.max_depth
        self._window = min(24, limits.max_line + 3)  # the fast path's line: within the limit
        self._start_buffering()
        # The reply in progress (its pieces so far are in _parts).
        self._stack: list[_Frame] = []
        self._bulk_type = 0  # type byte of a bulk whose header is read but not its data
        self._bulk_len = -1
        self._offset = 0  # stream offset of the reply in progress, for error messages
        self._eof = False

    def _satisfied(self, data: bytes) -> bool:
        held = len(self._buf) - self._pos + self._held_len
        if self._wait == _WAIT_BYTES:
            return held >= self._need
        if self._wait == _WAIT_CRLF:
            found = (self._last_cr and data[0] == 10) or data.find(b"\r\n") >= 0
            self._last_cr = data[-1] == 13
            return found or held > self._max_line + 2
        return True

    def next(self) -> tuple[Any, bytes] | None:
        """The next complete reply as ``(value, raw)``, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: the server's output is malformed or past a limit.
        """
        if not self._ready:
            return None
        if self._held:
            self._refill()
        buf = self._buf
        pos = self._pos
        if self._stack or self._bulk_len >= 0:
            return self._parse()
        if pos >= len(buf):
            self._ready = False
            return None
        # Fast path: a complete status or bulk reply at a reply boundary.
        t = buf[pos]
        if t == 36 or t == 43:
            nl = buf.find(b"\r\n", pos, pos + self._window)
            if nl > 0:
                if t == 43:
                    line = buf[pos + 1 : nl]
                    end = nl + 2
                    self._pos = end
                    self._offset += end - pos
                    return _COMMON.get(line) or SimpleString(line), buf[pos:end]
                length = _INTS.get(buf[pos + 1 : nl])
                if length is not None and 0 <= length <= self._max_bulk:
                    end = nl + length + 4
                    if end <= len(buf) and buf[end - 2 : end] == b"\r\n":
                        self._pos = end
                        self._offset += end - pos
                        return buf[nl + 2 : end - 2], buf[pos:end]
        return self._parse()

    def flat_run(self, limit: int) -> list[tuple[Any, bytes]]:
        """Up to ``limit`` complete bulk, status and integer replies in a row, from a reply
        boundary: the reply reader's shortcut for plain replies (anything else stops it)."""
        if self._stack or self._bulk_len >= 0 or not self._ready:
            return []
        if self._held:
            self._refill()
        buf = self._buf
        pos = start = self._pos
        n = len(buf)
        window = self._window
        max_bulk = self._max_bulk
        out: list[tuple[Any, bytes]] = []
        append = out.append
        while limit and pos < n:
            t = buf[pos]
            nl = buf.find(b"\r\n", pos, pos + window)
            if nl < 0:
                break
            if t == 36:
                length = _INTS.get(buf[pos + 1 : nl])
                if length is None or length < 0 or length > max_bulk:
                    break
                end = nl + length + 4
                if end > n or buf[end - 2 : end] != b"\r\n":
                    break
                append((buf[nl + 2 : end - 2], buf[pos:end]))
            elif t == 43:
                end = nl + 2
                line = buf[pos + 1 : nl]
                append((_COMMON.get(line) or SimpleString(line), buf[pos:end]))
            elif t == 58:
                value = _INTS.get(buf[pos + 1 : nl])
                if value is None:
                    break
                end = nl + 2
                append((value, buf[pos:end]))
            else:
                break
            pos = end
            limit -= 1
        self._pos = pos
        self._offset += pos - start
        return out

    def take(self, limit: int) -> tuple[int, bytes, bool]:
        """Up to ``limit`` complete replies as raw bytes, building no values: the MVE engine's
        way through a run of replies it only forwards and compares as bytes.

        Returns ``(how many, their bytes, whether one was an error)``. Plain replies (bulk,
        status, error, integer, and arrays of those) are walked over in C where it was built
        (``_scan.c``, ``replies``), else bulk, status and integer replies in Python; anything
        else goes through the full parser.

        Raises:
            RemoteProtocolError: as :meth:`next`.
        """
        count = 0
        pieces: list[bytes] = []
        error = False
        while count < limit:
            run = self._skip(limit - count)
            if run:
                pieces.append(run[1])
                count += run[0]
                error = error or run[2]
                continue
            got = self.next()
            if got is None:
                break
            value, raw = got
            error = error or type(value) is RespError
            pieces.append(raw)
            count += 1
        return count, pieces[0] if len(pieces) == 1 else b"".join(pieces), error

    def match(self, expected: bytes) -> bool | None:
        """Whether the next replies are exactly ``expected`` (consumed when they are); None
        when the bytes so far agree but do not reach its end yet.

        RESP frames itself, so a stream that starts with the bytes of ``n`` complete replies
        holds those ``n`` replies: the MVE engine compares a follower's replies to a run with
        the leader's this way, without framing them.
        """
        if self._stack or self._bulk_len >= 0 or self._parts:
            return False
        if self._held:
            self._refill()
        buf, pos = self._buf, self._pos
        end = pos + len(expected)
        if end <= len(buf):
            if buf.startswith(expected, pos):
                self._pos = end
                self._offset += len(expected)
                return True
            return False
        return None if expected.startswith(buf[pos:]) else False

    def _skip(self, limit: int) -> tuple[int, bytes, bool] | None:
        """``flat_run`` without the values: the count and the bytes of plain replies, and
        whether one was an error (None: none at the start of what is held)."""
        if self._stack or self._bulk_len >= 0 or not self._ready:
            return None
        if self._held:
            self._refill()
        buf = self._buf
        pos = start = self._pos
        n = len(buf)
        if _c_replies is not None:
            count, pos, error = _c_replies(buf, start, limit, self._max_bulk, self._max_line,
                                           self._max_depth, self._max_elements)
            if not count:
                return None
            self._pos = pos
            self._offset += pos - start
            return count, buf[start:pos] if start or pos < n else buf, error
        window = self._window
        max_bulk = self._max_bulk
        find = buf.find
        count = 0
        while count < limit and pos < n:
            t = buf[pos]
            if t == 43 and buf.startswith(b"+OK\r\n", pos):  # a run of writes: count them at once
                ok = _OKS.match(buf, pos)
                k = min((ok.end() - pos) // 5, limit - count)
                pos += 5 * k
                count += k
                continue
            nl = find(b"\r\n", pos, pos + window)
            if nl < 0:
                break
            if t == 36:
                length = _INTS.get(buf[pos + 1 : nl])
                if length is None or length < 0 or length > max_bulk:
                    break
                end = nl + length + 4
                if end > n or buf[end - 2 : end] != b"\r\n":
                    break
            elif t == 43 or (t == 58 and buf[pos + 1 : nl] in _INTS):
                end = nl + 2
            else:
                break
            pos = end
            count += 1
        if not count:
            return None
        self._pos = pos
        self._offset += pos - start
        return count, buf[start:pos] if start or pos < n else buf, False

    def _suspend(self, start: int, pos: int, wait: int, need: int = 0) -> None:
        buf = self._buf
        if pos > start:
            self._parts.append(buf[start:pos])
            self._parts_len += pos - start
        self._pos = pos
        self._wait = wait
        self._need = need
        self._last_cr = pos < len(buf) and buf[-1] == 13
        self._ready = False

    def _fail(self, what: str, pos: int) -> RemoteProtocolError:
        where = self._offset + self._parts_len + pos
        return _error(f"{what} at byte {where} of the server's stream")

    def _parse(self) -> tuple[Any, bytes] | None:
        buf = self._buf
        pos = start = self._pos
        n = len(buf)
        stack = self._stack
        max_line = self._max_line
        value: Any
        while True:
            if self._bulk_len >= 0:  # resume a bulk whose header was read
                t, length = self._bulk_type, self._bulk_len
                if pos + length + 2 > n:
                    self._suspend(start, pos, _WAIT_BYTES, length + 2)
                    return None
                self._bulk_len = -1
                value = self._bulk(t, buf, pos, length)
                pos += length + 2
            else:
                nl = buf.find(b"\r\n", pos, pos + max_line + 3)
                if nl < 0:
                    if n - pos >= max_line + 3:
                        raise self._fail(f"a reply line longer than {max_line} bytes", pos)
                    self._suspend(start, pos, _WAIT_CRLF)
                    return None
                t = buf[pos]
                if t == 36 or t == 61 or t == 33:  # $ = !
                    length = _INTS.get(buf[pos + 1 : nl])
                    if length is None:
                        length = self._length(buf, pos, nl)
                    if length == -1 and t == 36:
                        value = None
                        pos = nl + 2
                    else:
                        if length < 0 or length > self._max_bulk:
                            raise self._fail(f"bulk length {length} out of range", pos)
                        end = nl + 2 + length
                        if end + 2 > n:
                            self._bulk_type, self._bulk_len = t, length
                            self._suspend(start, nl + 2, _WAIT_BYTES, length + 2)
                            return None
                        value = self._bulk(t, buf, nl + 2, length)
                        pos = end + 2
                elif t == 43:  # +
                    line = buf[pos + 1 : nl]
                    value = _COMMON.get(line) or SimpleString(line)
                    pos = nl + 2
                elif t == 58:  # :
                    line = buf[pos + 1 : nl]
                    value = _INTS.get(line)
                    if value is None:
                        value = string2ll(line)
                        if value is None:
                            raise self._fail(f"bad integer {line[:40]!r}", pos)
                    pos = nl + 2
                elif t == 45:  # -
                    value = RespError(buf[pos + 1 : nl])
                    pos = nl + 2
                elif t in _AGGREGATES:
                    count = _INTS.get(buf[pos + 1 : nl])
                    if count is None:
                        count = self._length(buf, pos, nl)
                    pos = nl + 2
                    if count == -1 and t != _ATTRIBUTE:
                        value = None
                    elif count < 0 or count > self._max_elements:
                        raise self._fail(f"aggregate length {count} out of range", pos)
                    elif count == 0 and t != _ATTRIBUTE:
                        value = _AGGREGATES[t]()
                    else:
                        if len(stack) >= self._max_depth:
                            raise self._fail(f"replies nested deeper than {self._max_depth}", pos)
                        left = count * 2 if t == 37 or t == _ATTRIBUTE else count
                        stack.append(_Frame(t, _AGGREGATES[t](), left))
                        if not left:  # an empty attribute: wait for the value it precedes
                            stack[-1] = _Frame(_WRAP, Map(), 1)
                        continue
                else:
                    value = self._scalar(t, buf[pos + 1 : nl], pos)
                    pos = nl + 2
            # Attach the value to the aggregates it completes.
            while stack:
                frame = stack[-1]
                if frame.kind == _WRAP:
                    stack.pop()
                    value = Attributed(frame.items, value)
                    continue
                frame.items.append(value)
                frame.left -= 1
                if frame.left:
                    break
                stack.pop()
                if frame.kind == _ATTRIBUTE:
                    stack.append(_Frame(_WRAP, frame.items, 1))
                    break
                value = frame.items
            else:
                if self._parts:
                    self._parts.append(buf[start:pos])
                    raw = b"".join(self._parts)
                    self._parts = []
                    self._parts_len = 0
                else:
                    raw = buf[start:pos]
                self._pos = pos
                self._offset += len(raw)
                return value, raw

    def _length(self, buf: bytes, pos: int, nl: int) -> int:
        text = buf[pos + 1 : nl]
        value = string2ll(text)
        if value is None:
            raise self._fail(f"bad length {text[:40]!r} after {chr(buf[pos])!r}", pos)
        return value

    def _bulk(self, t: int, buf: bytes, pos: int, length: int) -> Any:
        end = pos + length
        if buf[end : end + 2] != b"\r\n":
            raise self._fail("a bulk string not followed by CRLF", end)
        data = buf[pos:end]
        if t == 36:
            return data
        if t == 33:
            return RespError(data, blob=True)
        if length < 4 or data[3] != 58:
            raise self._fail("a verbatim string without its 3-byte format and ':'", pos)
        return Verbatim(data[4:], data[:3])

    def _scalar(self, t: int, line: bytes, pos: int) -> Any:
        if t == 44:  # ,
            if not _DOUBLE.fullmatch(line):
                raise self._fail(f"bad double {line[:40]!r}", pos)
            return Double(line)
        if t == 35:  # #
            if line == b"t":
                return True
            if line == b"f":
                return False
            raise self._fail(f"bad boolean {line[:40]!r}", pos)
        if t == 95:  # _
            if line:
                raise self._fail(f"a null with content {line[:40]!r}", pos)
            return None
        if t == 40:  # (
            if not _BIGNUM.fullmatch(line):
                raise self._fail(f"bad big number {line[:40]!r}", pos)
            return BigNumber(int(line))
        raise self._fail(f"unknown reply type byte {chr(t)!r}", pos)
