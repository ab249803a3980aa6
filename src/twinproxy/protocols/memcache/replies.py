"""Frames a memcached server's byte stream into replies and pairs each with its request.

Pairing. memcached answers in request order, so the reply at the front of the stream answers the
oldest request still open, with two exceptions that :meth:`MemcacheReplyReader.expect` handles:

* A text request with ``noreply`` (and ``quit``) gets nothing back, errors included (memcached
  1.6). It gets an implied reply (``raw`` empty, value ``None``) as soon as every request before
  it is settled, so that whoever pairs request by request (the MVE engine orders a ``get`` after
  a ``set ... noreply`` of its key) sees it answered, in order, without waiting for more bytes.
* A quiet meta request (flag ``q``) gets a reply only for some outcomes: ``mg`` shows hits (HD,
  VA) and hides misses (EN); ``ms``/``md``/``ma`` hide success (HD, and VA for ``ma``) and show
  failures (NS, EX, NF). Errors always show.

When a reply line arrives and the oldest open request is quiet, the line is that request's if it is
an outcome the request shows and its echo tokens match the request's: memcached echoes ``O``
(opaque) and ``k`` (key) exactly when the request has them, so a reply with ``O7`` belongs to no
request without ``O7``, and a reply without ``k`` to none with ``k``. An error line carries no
echo, so it goes to the oldest open request that can get it (a bare ``ERROR`` never answers a meta
request the request reader let through). Otherwise the quiet request's outcome was hidden: it
gets an *implied* reply (``raw`` empty, value ``Meta(b"EN")`` for ``mg``, ``Meta(b"HD")`` for the
others) and the line is tried against the next request.

The administrative commands answer one line whatever its words; ``lru_crawler metadump`` answers
``key=...`` lines (ended by a bare LF) then ``END``, or one line when it cannot dump. After a
``watch`` answered ``OK`` the connection is memcached's log stream: memcached reads nothing more
from it, so the requests after it are never answered, and what the server sends is not framed
(``streaming``). ``shutdown`` is answered by the connection's close when memcached allows it,
and so is every request still unanswered then.

So every queued request gets exactly one final reply, in order, and once the reply to a non-quiet
request has arrived every quiet request before it is settled: ``pending`` is exact there. A run of
quiet requests stays pending until a later reply settles it, which is why clients end such runs
with ``mn``. Where quiet requests carry no O or k, which of them a shown outcome belongs to is not
on the wire (``ms a 1 q`` twice, one NS back: the client cannot tell either); the line goes to the
oldest request that can have produced it, so the count is right and both servers of an MVE pair
are paired the same way. A quiet request followed, without ``mn``, by a non-quiet one that can get
the same reply (``mg a v q`` then ``mg b v``, no O or k; or any request that fails with
CLIENT_ERROR right after a quiet request whose outcome was hidden) is the one case where this rule
can pair a reply early and leave the later request waiting for a reply that was already paired;
a later reply that the waiting request cannot take then raises ``RemoteProtocolError``. Clients
that end quiet runs with ``mn`` (as memcached's documentation asks) never meet it.
"""

from __future__ import annotations

import binascii
from collections import deque

from twinproxy.protocols.memcache.commands import (
    BY_NAME,
    DUMP,
    ERRORS,
    LINE,
    META,
    TEXT,
    VALUES,
    WATCH,
    Command,
    meta_flags,
    number,
    reply_count,
    reply_kind,
)
from twinproxy.protocols.memcache.values import Item, Meta, Stats, Values
from twinproxy.protocols.messages import (
    DEFAULT_LIMITS,
    Limits,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    Request,
)
from twinproxy.protocols.reader import FramedAhead, ReplyReader

new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__

_IMPLIED = {"mg": Meta(b"EN"), "ms": Meta(b"HD"), "md": Meta(b"HD"), "ma": Meta(b"HD")}
_NUMERIC = frozenset(("incr", "decr"))  # their reply is a number
_STATS_SINGLE = frozenset((b"OK", b"RESET")) | ERRORS
_QUIET_ERRORS = frozenset((b"CLIENT_ERROR", b"SERVER_ERROR"))


class _Silent:
    """The place in the queue of a request memcached does not answer: nothing answers it."""

    __slots__ = ()
    implied = None

    def answers(self, code: bytes, line: bytes) -> bool:
        return False


_SILENT = _Silent()


class _Quiet:
    """What a quiet meta request can be answered with, so a hidden outcome can be told apart."""

    __slots__ = ("b64", "implied", "key", "opaque", "shown")

    def __init__(self, cmd: Command, args: list[bytes], flags: list[bytes]) -> None:
        self.shown = cmd.codes - cmd.hidden
        self.implied = _IMPLIED[cmd.name]
        self.opaque: bytes | None = None
        self.key: bytes | None = None
        self.b64 = b"b" in flags
        for flag in flags:
            if flag[:1] == b"O":
                self.opaque = flag
            elif flag == b"k":
                self.key = args[0]

    def answers(self, code: bytes, line: bytes) -> bool:
        """Whether ``line`` (its first token ``code``) can be this request's reply.

        memcached echoes ``O`` and ``k`` exactly when the request has them, so a reply's echo
        tokens must match the request's, present or absent. Errors carry no echo; a meta request
        that passed the request reader can get CLIENT_ERROR or SERVER_ERROR, never a bare ERROR.
        """
        if code in _QUIET_ERRORS:
            return True
        if code not in self.shown:
            return False
        tokens = line.split(b" ")[1:]
        opaque = None
        keys = []
        for token in tokens:
            if token[:1] == b"O":
                opaque = token
            elif token[:1] == b"k":
                keys.append(token[1:])
        if opaque != self.opaque:
            return False
        if self.key is None:
            return not keys
        return any(self._same_key(k) for k in keys)

    def _same_key(self, echoed: bytes) -> bool:
        if echoed == self.key:
            return True
        if not self.b64 or self.key is None:
            return False
        try:  # memcached echoes a base64 key re-encoded: compare what the two spell
            return binascii.a2b_base64(echoed) == binascii.a2b_base64(self.key)
        except (binascii.Error, ValueError):
            return False


def _quiet(cmd: Command, args: list[bytes]) -> _Quiet | None:
    if cmd.name not in _IMPLIED:
        return None
    flags = meta_flags(cmd, args)
    if b"q" not in flags:
        return None
    return _Quiet(cmd, args, flags)


class MemcacheReplyReader(FramedAhead, ReplyReader):
    """Frames one server connection's replies and pairs them; see the module docstring.

    It frames eagerly, as the request reader does: ``feed()`` frames what the bytes complete
    into ``_ready`` (where :meth:`expect` also puts the implied reply of a request nothing is
    before), and the error it meets waits in ``_failure`` until the replies before it are taken.
    """

    __slots__ = ("_base", "_chunks", "_failure", "_held", "_limits", "_need", "_partial",
                 "_queue", "_ready", "_resume", "_silent", "closing", "streaming")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self._limits = limits
        self._queue: deque[tuple[Request, Command, _Quiet | _Silent | None]] = deque()
        self._base = 0  # offset in the stream of the first byte held, for error messages
        self._chunks: list[bytes] = []  # an incomplete reply's bytes
        self._held = 0
        self._need = 0  # bytes the held reply must reach before it can complete; 0: a line end
        self._partial: list | None = None  # items or lines of a multi-line reply in progress
        self._resume = 0  # where in the held bytes that reply's parsing goes on
        self._ready: list[Reply] = []  # framed, not yet returned
        self._failure: RemoteProtocolError | None = None  # the error met after _ready
        self._silent = 0  # requests in the queue that nothing answers (noreply)
        # After a watch's OK: the server's log stream, never framed; no request is answered.
        self.streaming = False
        # After quit: memcached closes the connection, which is then no failure (during an
        # update, the other version may close its pair first).
        self.closing = False

    def expect(self, request: Request) -> None:
        """The proxy has sent ``request`` on this server connection (in this order).

        Raises:
            LocalProtocolError: the request is not a memcached command this codec frames.
        """
        cmd = BY_NAME.get(request.name)
        if cmd is None:
            raise LocalProtocolError(f"not a memcached command this codec knows: {request.name!r}")
        if self.streaming:
            return  # memcached no longer reads this connection
        if request.name == "quit":
            self.closing = True
        args = request.args
        if cmd.meta:
            self._queue.append((request, cmd, _quiet(cmd, args) if b"q" in args else None))
        elif reply_count(cmd, args):
            self._queue.append((request, cmd, None))
        elif self._queue:
            self._queue.append((request, cmd, _SILENT))
            self._silent += 1
        else:
            self._ready.append(Reply(b"", None, request=request))

    @property
    def pending(self) -> int:
        """Requests expected that the server still owes something: their final reply, or for a
        quiet meta request the outcome it may show. A ``noreply`` request is owed nothing: its
        implied reply comes as soon as the requests before it are answered."""
        return len(self._queue) - self._silent

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete reply held."""
        return self._held

    def feed(self, data: bytes) -> None:
        """Add bytes from the server; ``b""`` means the server closed its side."""
        if self._failure is not None or self.streaming:
            return
        if not data:
            self._eof = True
            self._ready += self._take(data)
            if not self._chunks and self._partial is None:
                self._ready += self._closed()
            return
        self._ready += self._take(data)

    def _closed(self) -> list[Reply]:
        """At the server's close: a ``shutdown`` it accepted is answered by the close, and so
        is every request still queued: memcached closes at once, without sending the replies
        it had not sent yet (those of requests read with it), and never reads what follows."""
        queue = self._queue
        if not any(cmd.name == "shutdown" for _, cmd, _ in queue):
            return []
        out = [Reply(b"", None if quiet is None else quiet.implied, request=request)
               for request, _, quiet in queue]
        queue.clear()
        self._silent = 0
        return out

    # -- framing ---------------------------------------------------------------------------------

    def _take(self, data: bytes) -> list[Reply]:
        """Hold ``data``; frame and return every reply it completes (stops at an error)."""
        if self._chunks:
            if data:
                self._chunks.append(data)
                self._held += len(data)
            if not self._eof:
                if self._need:
                    if self._held < self._need:
                        return []
                elif b"\n" not in data:
                    if self._held - self._resume > self._limits.max_line + 1:
                        self._fail(f"reply line at byte {self._base + self._resume} is longer"
                                   f" than {self._limits.max_line} bytes")
                    return []
            buf = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        elif not data:
            return []
        else:
            buf = data
        self._chunks = []
        self._held = 0
        self._need = 0
        out: list[Reply] = []
        try:
            pos = self._frame(buf, out)
        except RemoteProtocolError as exc:
            self._failure = exc
            self._partial = None
            self._settle(out)  # as if the bad bytes had come in a later read
            return out
        self._settle(out)
        self._base += pos
        if pos < len(buf):
            rest = buf[pos:] if pos else buf
            self._chunks = [rest]
            self._held = len(rest)
            if self._eof:
                self._fail(f"the server closed its side in the middle of a reply"
                           f" ({len(rest)} bytes)")
        return out

    def _settle(self, out: list[Reply]) -> None:
        """The requests after the last reply that get none are answered now."""
        queue = self._queue
        while queue and queue[0][2] is _SILENT:
            self._silent -= 1
            out.append(Reply(b"", None, request=queue.popleft()[0]))

    def _fail(self, message: str) -> None:
        self._failure = RemoteProtocolError(message)
        self._chunks = []
        self._held = 0

    def _line(self, buf: bytes, pos: int) -> tuple[int, bytes] | None:
        """The line at ``pos`` (without its line end) and the offset after it, if complete."""
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > self._limits.max_line + 1:
                raise RemoteProtocolError(f"reply line at byte {self._base + pos} is longer than"
                                          f" {self._limits.max_line} bytes")
            return None
        stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        if stop - pos > self._limits.max_line:
            raise RemoteProtocolError(f"reply line at byte {self._base + pos} is longer than"
                                      f" {self._limits.max_line} bytes")
        return nl + 1, buf[pos:stop]

    def _frame(self, buf: bytes, out: list[Reply]) -> int:
        """Append the complete replies in ``buf`` to ``out``; the offset of the first byte left."""
        queue = self._queue
        max_line = self._limits.max_line
        max_value = self._limits.max_value
        errors = ERRORS
        line_kind, meta_kind, values_kind = LINE, META, VALUES
        end = len(buf)
        pos = 0
        while pos < end:
            if self._partial is not None:
                request, cmd, _ = queue[0]
                done = self._multi(buf, pos, request, cmd, out)
                if done < 0:
                    return pos
                pos = done
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                self._line(buf, pos)  # raises past the line limit
                return pos
            stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
            if stop - pos > max_line:
                self._line(buf, pos)
            line = buf[pos:stop]
            after = nl + 1
            sp = line.find(b" ")
            code = line if sp < 0 else line[:sp]
            if not queue:
                raise RemoteProtocolError(
                    f"reply {line[:60]!r} at byte {self._base + pos} answers no request")
            request, cmd, quiet = queue[0]
            if quiet is not None and not quiet.answers(code, line):
                queue.popleft()
                if quiet is _SILENT:
                    self._silent -= 1
                out.append(Reply(b"", quiet.implied, request=request))
                continue
            kind = cmd.reply
            if code in errors:
                value = line
            elif kind >= TEXT:  # one line of any words; a dump; a watch
                if kind == TEXT and cmd.name == "lru_crawler":
                    kind = reply_kind(cmd, request.args)
                if kind == DUMP and (line == b"END" or line.startswith(b"key=")):
                    self._partial = []
                    self._resume = 0
                    done = self._multi(buf, pos, request, cmd, out)
                    if done < 0:
                        return pos
                    pos = done
                    continue
                if kind == WATCH and line == b"OK":
                    queue.clear()  # memcached reads nothing more: nothing after it is answered
                    self._silent = 0
                    self.streaming = True
                    out.append(Reply(buf if pos == 0 and after == end else buf[pos:after], line,
                                     request=request))
                    return end
                value = line
            elif kind == line_kind:
                if code not in cmd.codes and not (code.isdigit() and cmd.name in _NUMERIC):
                    self._unexpected(line, cmd, pos)
                value = line
            elif kind == meta_kind:
                if code not in cmd.codes:
                    self._unexpected(line, cmd, pos)
                if code == b"VA":
                    tokens = line.split(b" ")
                    size = number(tokens[1]) if len(tokens) > 1 else None
                    stop = self._block(buf, pos, after, size, line)
                    if stop < 0:
                        return pos
                    value = new_tuple(Meta, (code, tuple(t for t in tokens[2:] if t),
                                             buf[after:stop - 2]))
                    after = stop
                else:
                    value = new_tuple(Meta, (code, tuple(t for t in line.split(b" ")[1:] if t),
                                             None))
            else:
                if code == b"VALUE" and kind == values_kind:
                    # the common case: one item then END, all here
                    tokens = line.split(b" ")
                    if (len(tokens) == 4 and tokens[2].isdigit() and tokens[3].isdigit()
                            and len(tokens[2]) < 10 and len(tokens[3]) < 10):
                        stop = after + int(tokens[3]) + 7
                        if (stop <= end and buf[stop - 7] == 13 and buf[stop - 6] == 10
                                and buf[stop - 5:stop] == b"END\r\n"
                                and stop - after - 7 <= max_value):
                            item = new_tuple(Item, (tokens[1], int(tokens[2]),
                                                    buf[after:stop - 7], None))
                            queue.popleft()
                            out.append(Reply(buf if pos == 0 and stop == end else buf[pos:stop],
                                             new_tuple(Values, ((item,), b"END")),
                                             request=request))
                            pos = stop
                            continue
                self._partial = []
                self._resume = 0
                done = self._multi(buf, pos, request, cmd, out)
                if done < 0:
                    return pos
                pos = done
                continue
            queue.popleft()
            if code in errors:
                out.append(Reply(buf if pos == 0 and after == end else buf[pos:after], value,
                                 request=request, error=True))
            else:
                out.append(Reply(buf if pos == 0 and after == end else buf[pos:after], value,
                                 request=request))
            pos = after
        return pos

    def _unexpected(self, line: bytes, cmd: Command, pos: int) -> None:
        raise RemoteProtocolError(
            f"reply {line[:60]!r} at byte {self._base + pos} cannot answer {cmd.name}")

    def _block(self, buf: bytes, start: int, after: int, size: int | None, line: bytes) -> int:
        """The end of the data block that starts at ``after`` (-1: not all here yet)."""
        if size is None or size < 0:
            raise RemoteProtocolError(
                f"reply {line[:60]!r} at byte {self._base + start} has no readable size")
        if size > self._limits.max_value:
            raise RemoteProtocolError(
                f"reply at byte {self._base + start} announces {size} bytes, more than the"
                f" {self._limits.max_value}-byte value limit")
        stop = after + size + 2
        if stop > len(buf):
            self._need = stop - start
            return -1
        if buf[stop - 2:stop] != b"\r\n":
            raise RemoteProtocolError(
                f"data block at byte {self._base + after} does not end with CRLF after the"
                f" {size} bytes announced")
        return stop

    def _multi(self, buf: bytes, start: int, request: Request, cmd: Command,
               out: list[Reply]) -> int:
        """Go on with a VALUES or STATS reply that begins at ``start``: the offset after it, or -1
        when it is not all here (the items so far and where to go on are kept)."""
        parts = self._partial
        assert parts is not None
        pos = start + self._resume
        values = cmd.reply == VALUES
        if values and cmd.key_args is not None:
            # memcached sends at most one VALUE per key asked for (a key asked twice, twice)
            limit = len(request.args[cmd.key_args])
        else:
            limit = self._limits.max_elements
        while True:
            got = self._line(buf, pos)
            if got is None:
                break
            after, line = got
            sp = line.find(b" ")
            code = line if sp < 0 else line[:sp]
            if line == b"END" or code in ERRORS or (not parts and not values
                                                    and code in _STATS_SINGLE):
                self._partial = None
                self._resume = 0
                self._queue.popleft()
                raw = buf if start == 0 and after == len(buf) else buf[start:after]
                error = code in ERRORS
                if not parts and line != b"END":  # an error (or OK, RESET) is the whole reply
                    value: object = line
                elif values:
                    value = Values(tuple(parts), line)
                else:
                    value = Stats(tuple(parts), line)
                out.append(Reply(raw, value, request=request, error=error))
                return after
            if len(parts) >= limit:
                raise RemoteProtocolError(
                    f"{cmd.name} reply at byte {self._base + start} has more than {limit}"
                    f" {'VALUE blocks' if values else 'lines'}")
            if values:
                tokens = line.split(b" ")
                if code != b"VALUE" or len(tokens) not in (4, 5):
                    self._unexpected(line, cmd, pos)
                flags = number(tokens[2])
                cas = number(tokens[4]) if len(tokens) == 5 else None
                if flags is None or (len(tokens) == 5 and cas is None):
                    raise RemoteProtocolError(
                        f"VALUE line {line[:60]!r} at byte {self._base + pos} is malformed")
                stop = self._block(buf, start, after, number(tokens[3]), line)
                if stop < 0:
                    break
                parts.append(Item(tokens[1], flags, buf[after:stop - 2], cas))
                pos = stop
            else:
                parts.append(line)
                pos = after
        self._resume = pos - start
        return -1
