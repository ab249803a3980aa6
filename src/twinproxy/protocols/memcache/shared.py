"""The replies on an update's shared connection to one memcached: framed without their requests.

During an update, the clients in the plain state send the requests :func:`route` calls shared
over one connection per version, and their reads of such requests travel as runs (see
``MemcacheRequestReader.count_run``): the MVE engine forwards a run's replies to the client as
bytes and compares the follower's with the leader's as bytes. It must know where each reply ends
without knowing which request it answers. The requests routed there are chosen so that it can:
each gets exactly one reply (no quiet meta request) or, with ``noreply``, none at all (a run
counts its replies without those; the engine settles such a request, alone or last in a run,
when the bytes of a later reply come: :attr:`waiting`), and a reply is one line (STORED,
NOT_FOUND, DELETED, a number, VERSION ..., an error) or VALUE blocks then END (a get; a miss is
END alone, and an error after some blocks ends them). memcached writes no other reply to them,
so a line that starts ``VALUE`` begins a get's reply and any other line is a reply of its own.

:meth:`SharedReplies.next` builds the same values the request-by-request reader
(:mod:`.replies`) builds for those requests, so the comparison is the same whichever path a
request took.
"""

from __future__ import annotations

from typing import Any

from twinproxy.protocols import compiled
from twinproxy.protocols.memcache.commands import ERRORS, number
from twinproxy.protocols.memcache.values import Item, Values
from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, RemoteProtocolError

__all__ = ["SHARED_NAMES", "SMALL_REPLY_NAMES", "SharedReplies"]

SHARED_NAMES = frozenset(("get", "gat", "set", "add", "replace", "append", "prepend",
                          "delete", "incr", "decr", "touch", "version"))
"""The requests that may go on the shared connection (those but get, gat and version with
``noreply`` too): see the module."""
SMALL_REPLY_NAMES = SHARED_NAMES - {"get", "gat"}
"""Those of them whose reply is small whatever the data (``Codec.small_reply``)."""

# The walk over replies in their common forms, in C (_scan.c's ``replies``); None where it was
# built without a compiler: take() then frames every reply in Python.
_compiled = compiled.load("memcache")
_c_replies = _compiled.replies if _compiled is not None else None


def _code(line: bytes) -> bytes:
    sp = line.find(b" ")
    return line if sp < 0 else line[:sp]


class SharedReplies:
    """Frames one shared connection's replies: :meth:`next` gives ``(value, raw)``, :meth:`take`
    the bytes of several, :meth:`match` compares with bytes expected (the ``shared_parser``
    contract of :class:`~twinproxy.protocols.base.Codec`)."""

    __slots__ = ("_buf", "_max_line", "_max_value", "_offset", "_pos")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buf = b""
        self._pos = 0
        self._offset = 0  # stream offset of _buf[0], for error messages
        self._max_line = limits.max_line
        self._max_value = limits.max_value

    def feed(self, data: bytes) -> None:
        """Add bytes from the server (``b""``, its close, adds nothing)."""
        if not data:
            return
        pos = self._pos
        if pos >= len(self._buf):
            self._offset += len(self._buf)
            self._buf = data
        else:
            self._offset += pos
            self._buf = self._buf[pos:] + data
        self._pos = 0

    def _fail(self, what: str, pos: int) -> RemoteProtocolError:
        return RemoteProtocolError(f"{what} at byte {self._offset + pos} of the shared connection")

    def _line(self, buf: bytes, pos: int) -> tuple[int, bytes] | None:
        """The line at ``pos``: (the offset after it, the line without its end); None when its
        end has not come."""
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > self._max_line + 2:
                raise self._fail(f"a reply line longer than {self._max_line} bytes", pos)
            return None
        stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        if stop - pos > self._max_line:
            raise self._fail(f"a reply line longer than {self._max_line} bytes", pos)
        return nl + 1, buf[pos:stop]

    def _reply(self, values: bool) -> tuple[int, Any, bool] | None:
        """The reply at the position: (the offset after it, its value or None when ``values`` is
        false, whether it is an error); None when it is not all here."""
        buf = self._buf
        start = self._pos
        got = self._line(buf, start)
        if got is None:
            return None
        after, line = got
        if not line.startswith(b"VALUE "):
            if line == b"END":
                return after, Values(()) if values else None, False
            return after, line, _code(line) in ERRORS
        items: list[Item] = []
        pos = start
        while True:
            got = self._line(buf, pos)
            if got is None:
                return None
            after, line = got
            if line == b"END" or _code(line) in ERRORS:
                end = Values(tuple(items), line) if values else None
                return after, end, line != b"END"
            tokens = line.split(b" ")
            if tokens[0] != b"VALUE" or len(tokens) not in (4, 5):
                raise self._fail(f"reply {line[:60]!r} in a get's VALUE blocks", pos)
            flags = number(tokens[2])
            size = number(tokens[3])
            cas = number(tokens[4]) if len(tokens) == 5 else None
            if flags is None or size is None or size < 0 or (len(tokens) == 5 and cas is None):
                raise self._fail(f"VALUE line {line[:60]!r} is malformed", pos)
            if size > self._max_value:
                raise self._fail(f"a value of {size} bytes, over the {self._max_value}-byte limit",
                                 pos)
            stop = after + size + 2
            if stop > len(buf):
                return None
            if buf[stop - 2:stop] != b"\r\n":
                raise self._fail("a data block that does not end with CRLF", after)
            if values:
                items.append(Item(tokens[1], flags, buf[after:stop - 2], cas))
            pos = stop

    @property
    def waiting(self) -> bool:
        """Whether bytes of a reply not framed yet are held: memcached has run every request
        before the one it answers (a ``noreply`` one is settled by them)."""
        return self._pos < len(self._buf)

    def next(self) -> tuple[Any, bytes] | None:
        """The next complete reply as ``(value, raw)``, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: the server's output is malformed or past a limit.
        """
        got = self._reply(True)
        if got is None:
            return None
        end, value, _ = got
        raw = self._buf[self._pos:end]
        self._pos = end
        return value, raw

    def take(self, limit: int) -> tuple[int, bytes, bool]:
        """Up to ``limit`` complete replies as raw bytes, building no values: ``(how many, their
        bytes, whether one was an error)``. The common forms are walked over in C where it was
        built (``_scan.c``, ``replies``), anything else framed by :meth:`next`'s Python.

        Raises:
            RemoteProtocolError: as :meth:`next`.
        """
        start = self._pos
        buf = self._buf
        count = 0
        error = False
        walk = _c_replies
        while count < limit and self._pos < len(buf):
            if walk is not None:  # the common forms, in C; it stops before anything else
                n, self._pos, failed = walk(buf, self._pos, limit - count, self._max_line,
                                            self._max_value)
                count += n
                error = error or failed
                if count >= limit or self._pos >= len(buf):
                    break
            got = self._reply(False)
            if got is None:
                break
            self._pos, _, failed = got
            error = error or failed
            count += 1
        return count, buf if start == 0 and self._pos == len(buf) else buf[start:self._pos], error

    def match(self, expected: bytes) -> bool | None:
        """Whether the next replies are exactly ``expected`` (consumed when they are); None when
        the bytes so far agree but do not reach its end yet. ``expected`` is whole replies, and
        the stream is framed from a reply boundary, so equal bytes are the same replies."""
        buf, pos = self._buf, self._pos
        end = pos + len(expected)
        if end <= len(buf):
            if buf.startswith(expected, pos):
                self._pos = end
                return True
            return False
        return None if expected.startswith(buf[pos:]) else False
