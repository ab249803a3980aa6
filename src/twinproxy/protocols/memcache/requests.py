"""Frames a memcached client's byte stream (text and meta protocols) into requests.

How this works: input that does not make a whole request yet is held as a list of chunks with
either the count of bytes that must arrive before it can (a data block of known size), or the fact
that it waits for a line end; so a request split into many reads is joined once, and a read that
cannot complete it costs a length check or one ``in`` test. A complete request's ``raw`` is a slice
of the joined input, or the read itself when the read is exactly one request.

The reader refuses (``RemoteProtocolError``, ``reply`` as memcached words it, or nothing where
memcached says nothing: after ``noreply``, or where it closes the connection) what breaks the
framing or a limit: an unknown command, a wrong token count, a storage size it cannot read, a data
block that does not end in CRLF, a NUL byte in a command line (memcached would cut the line there),
a line past the limits, a storage request's key past them, and the binary protocol. Everything else
goes to the server, whose own error reply is paired with the request like any other.

A storage request whose value is over ``max_value`` is not refused: memcached answers one over its
own item size ``SERVER_ERROR object too large for cache`` (nothing after ``noreply``), skips the
data block unread, and goes on, and so does the proxy. The reader skips the block as it comes,
without holding it, and gives in the request's place the requests that do on the server what
memcached does there, each carrying the ``answer`` the client gets instead of the server's reply
(see :class:`~twinproxy.protocols.messages.Request`): for ``set`` and ``ms``, whose failure also
deletes the key's old value, a quiet delete of the key (answered with nothing); then, unless the
request said ``noreply``, an ``mn`` answered with the error, which puts the error in its place
among the server's replies. A key over ``max_key`` in a request without a data block is answered
the same way (an ``mn`` answered ``CLIENT_ERROR bad command line format``), as memcached answers a
key over its own limit and reads on.
"""

from __future__ import annotations

import struct

from twinproxy.protocols import compiled
from twinproxy.protocols.memcache.commands import (
    COMMANDS,
    NONE,
    Command,
    c_int32,
    c_unsigned,
    meta_flags,
    noreply,
)
from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, RemoteProtocolError, Request
from twinproxy.protocols.reader import FramedAhead, RequestReader

ERROR = b"ERROR\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
# memcached closes, without a word, a connection whose command line it cannot hold.
LINE_TOO_LONG = b""
FLAGS_TOO_LONG = b"CLIENT_ERROR options flags too long\r\n"

BINARY_MAGIC = 0x80
BINARY_HEADER = 24
BINARY_NOT_SUPPORTED = 0x0083
BINARY_MESSAGE = b"twinproxy speaks the memcached text and meta protocols, not the binary one"


def binary_error(header: bytes) -> bytes:
    """A binary-protocol response packet that refuses the request whose header is given.

    A binary client reads a 24-byte header first; a text line would look to it like a packet with
    a bad magic byte, and it would report a corrupt stream. This packet is a well-formed response
    with status 0x0083 ("not supported"), the request's opcode and opaque echoed so the client
    matches it to its request, and a message body that says why.
    """
    opcode = header[1] if len(header) > 1 else 0
    opaque = header[12:16] if len(header) >= 16 else b"\0\0\0\0"
    return struct.pack(">BBHBBHI4sQ", 0x81, opcode, 0, 0, 0, BINARY_NOT_SUPPORTED,
                       len(BINARY_MESSAGE), opaque, 0) + BINARY_MESSAGE


_PLAIN, _STORE, _CAS, _MS, _QUIT = range(5)

# SINGLE mode's count in C (_scan.c), built by setup.py where a compiler is; None where it was
# built without one: count() then says "cannot", and every request is framed by the exact parser
# below, as before the count existed.
_compiled = compiled.load("memcache")
c_scan = _compiled.scan if _compiled is not None else None
c_forward = _compiled.forward if _compiled is not None else None
c_forward_capsule = _compiled.FORWARD if _compiled is not None else None
c_absolute = _compiled.absolute if _compiled is not None else None  # (runs exist only with C)
# count() takes reads up to this size (a larger one is mostly a large value, which the exact
# parser holds or passes through) and values up to this size.
COUNT_CHUNK = 256 * 1024

# The largest size memcached reads a data block of (a larger one is a bad command line).
_MAX_SIZE = (1 << 31) - 1 - 2
# Lines that start so (after at most 100 spaces) memcached reads whole however long they are: a
# multi-get of many keys. Their limit is ``max_bulk``; every other line's is ``max_line``.
_LONG_LINES = (b"get ", b"gets ")


def _row(cmd: Command) -> tuple:
    """What the framing loop needs of a command, unpacked in one step."""
    if cmd.reply == NONE:
        form = _QUIT
    elif cmd.size_at is None:
        form = _PLAIN
    else:
        form = _MS if cmd.meta else _CAS if cmd.name == "cas" else _STORE
    keys = True if cmd.one_key else cmd.key_args
    return (cmd, cmd.name, cmd.min_args, cmd.max_args, keys, form)


_ROWS = {name: _row(cmd) for name, cmd in COMMANDS.items()}


class MemcacheRequestReader(FramedAhead, RequestReader):
    """Frames one client connection's requests; see the module docstring.

    It frames eagerly: ``feed()`` frames what the bytes complete into ``_ready``, and the error
    it meets waits in ``_failure`` until the requests before it are taken (the reader base
    raises it then, and from then on).
    """

    __slots__ = ("_base", "_chunks", "_failure", "_held", "_limits", "_need", "_quit", "_ready",
                 "_scan_limits", "_skip", "_started", "expiring", "reads_only", "silent",
                 "silent_last", "small_replies")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self._limits = limits
        self._base = 0  # offset in the stream of the first byte held, for error messages
        self._chunks: list[bytes] = []  # an incomplete request's bytes
        self._held = 0  # their total length
        self._need = 0  # bytes it must reach before it can complete; 0: it waits for a line end
        self._ready: list[Request] = []  # framed by feed(), not yet returned
        self._failure: RemoteProtocolError | None = None  # the error met after _ready
        self._started = False  # the first byte (binary or text) has been seen
        self._quit = False
        self.small_replies = False  # (see RequestReader; set by count_run)
        self.reads_only = False  # (the same)
        self.silent = 0  # (the same)
        self.silent_last = False  # (the same)
        self.expiring = False  # (the same)
        self._skip = 0  # bytes of an over-size data block still to skip
        # count()'s bounds: what the exact parser lets through as it is, and no larger a value
        # than one read holds.
        self._scan_limits = (limits.max_line, limits.max_key, min(limits.max_value, COUNT_CHUNK))

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete request held (0 at a request boundary, and while an over-size
        data block is skipped: none of it is held)."""
        return self._held

    def feed(self, data: bytes) -> None:
        """Add bytes from the client; ``b""`` means the client closed its side."""
        if self._failure is not None or self._quit:
            return
        if not data:
            self._eof = True
        self._ready += self._take(data)

    def count(self, data: bytes) -> int | None:
        """Frame ``data`` without building requests: SINGLE mode's framing, at C speed.

        When the reader holds nothing and ``data`` starts with complete ordinary requests (the
        commands and forms ``_scan.c`` lists: what the exact parser lets through as it is, no
        request the proxy answers itself), returns how many bytes they take; the rest, the start
        of one such request (a line whose end has not come, or a data block not all there),
        stays held as the exact parser would hold it. Otherwise returns None having consumed
        nothing: call :meth:`receive`, which frames the read, also when what follows the
        ordinary requests must be framed now (the client may wait for its reply). None too
        where the C scan was not built, and on a connection's first read (the binary protocol's
        check).
        """
        scan = c_scan
        if (scan is None or self._chunks or self._ready or self._failure is not None
                or self._error is not None or self._quit or self._skip or not self._started
                or len(data) > COUNT_CHUNK):
            return None
        end, _, need, _, _, _, _, _ = scan(data, *self._scan_limits)
        if not end or need < 0:
            return None
        if end < len(data):
            rest = data[end:]
            self._chunks = [rest]
            self._held = len(rest)
            self._need = need
        self._base += end
        return end

    # forward as a C function, for the relay's batch (relay/_io.h), where it was built
    c_forward = c_forward_capsule

    def forward(self, src: int, dst: int, buffer: bytearray) -> tuple[int, int] | None:
        """See ``RequestReader.forward``: ``_scan.c``'s ``forward``, in the state where
        :meth:`count` could take a whole read (nothing held, the first read seen; checked
        there). A read it sent moves the stream's offset (``_base``) past it."""
        forward = c_forward
        if forward is None:
            return None
        return forward(self, src, dst, buffer)

    def count_run(self, data: bytes) -> tuple[int, int] | None:
        """Like :meth:`count`, for an MVE run: ``(bytes, requests)`` when ``data`` is nothing
        but complete requests of the forms a run takes (``_scan.c`` with ``runs``: get, gat,
        the text storage commands, incr, decr, touch, delete of one key, those but get and gat
        with or without a last ``noreply``), else None having consumed nothing. Their replies
        frame without their requests (:class:`~.shared.SharedReplies`), and they reach the
        follower as they came but for their expiries (``expiring``: one is in seconds from now;
        see ``MemcacheCodec.follower_run``). ``small_replies``: no get or gat among them;
        ``reads_only``: only gets; ``silent``, ``silent_last``: how many say ``noreply``, and
        whether the last does.

        pymemcache says ``noreply`` on every store by default: before such stores could be in
        a run, each was framed alone in Python during an update, at 0.43 of SINGLE mode's rate
        (loadtests/reports/pymemcache_noreply.md)."""
        scan = c_scan
        if (scan is None or self._chunks or self._ready or self._failure is not None
                or self._error is not None or self._quit or self._skip or not self._started
                or len(data) > COUNT_CHUNK):
            return None
        end, count, _, values, silent, last, expiring, reads = scan(data, *self._scan_limits,
                                                                   True)
        if end != len(data) or not count:
            return None
        self._base += end
        self.small_replies = not values
        self.reads_only = reads == count
        self.silent = silent
        self.silent_last = last == 1
        self.expiring = expiring > 0
        return end, count

    # -- framing ---------------------------------------------------------------------------------

    def _take(self, data: bytes) -> list[Request]:
        """Hold ``data``; frame and return every request it completes (stops at an error)."""
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                self._base += len(data)
                return []
            data = data[self._skip:]
            self._base += self._skip
            self._skip = 0
        if self._chunks:
            self._chunks.append(data)
            self._held += len(data)
            if self._need:
                if self._held < self._need and not self._eof:
                    return []
            elif b"\n" not in data and not self._eof:
                if self._held > self._limits.max_line + 1 and (
                        self._held > self._line_limit(self._head(), 0) + 1):
                    try:
                        self._fail_line(self._base, self._head(), 0)
                    except RemoteProtocolError as exc:
                        self._failure = exc
                        self._chunks = []
                        self._held = 0
                return []
            buf = b"".join(self._chunks)
        elif not data:
            return []
        else:
            buf = data
        self._chunks = []
        self._held = 0
        self._need = 0
        out: list[Request] = []
        try:
            if not self._started:
                self._started = True
                if buf[0] == BINARY_MAGIC:
                    self._binary(buf)
                    return out
            pos = self._frame(buf, out)
        except RemoteProtocolError as exc:
            self._failure = exc
            self._chunks = []
            self._held = 0
            return out
        self._base += pos
        if pos < len(buf) and not self._quit:
            rest = buf[pos:] if pos else buf
            self._chunks = [rest]
            self._held = len(rest)
            if self._eof:
                self._failure = RemoteProtocolError(
                    f"the client closed its side in the middle of a request ({len(rest)} bytes)")
        return out

    def _binary(self, buf: bytes) -> None:
        if len(buf) < BINARY_HEADER and not self._eof:
            self._chunks = [buf]
            self._held = len(buf)
            self._need = BINARY_HEADER
            self._started = False
            return
        raise RemoteProtocolError("the client speaks the memcached binary protocol (magic 0x80)",
                                  reply=binary_error(buf[:BINARY_HEADER]))

    def _head(self) -> bytes:
        """The first bytes of the line held in chunks, enough for :meth:`_line_limit`."""
        head = b""
        for chunk in self._chunks:
            head += chunk[:106]
            if len(head) >= 106:
                break
        return head

    def _line_limit(self, buf: bytes, pos: int) -> int:
        """The longest the line at ``pos`` may be: ``max_bulk`` for a multi-get memcached reads
        whole however long, else ``max_line``."""
        start = buf[pos:pos + 106]
        head = start.lstrip(b" ")
        if head.startswith(_LONG_LINES) and len(start) - len(head) <= 100:
            return max(self._limits.max_bulk, self._limits.max_line)
        return self._limits.max_line

    def _fail_line(self, start: int, buf: bytes, pos: int) -> None:
        raise RemoteProtocolError(
            f"command line at byte {start} is longer than {self._line_limit(buf, pos)} bytes",
            reply=LINE_TOO_LONG)

    def _frame(self, buf: bytes, out: list[Request]) -> int:
        """Append the complete requests in ``buf`` to ``out``; the offset of the first byte left.

        The common case (single spaces, small decimal numbers, keys within the limit) is checked
        inline; anything else goes through the exact checks, which raise or let it through.
        """
        limits = self._limits
        max_line = limits.max_line
        max_key = limits.max_key
        max_value = limits.max_value
        rows = _ROWS
        plain, store, meta_set = _PLAIN, _STORE, _MS
        base = self._base
        end = len(buf)
        nul = b"\0" in buf  # then each line is checked for one
        pos = 0
        while pos < end:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if end - pos > max_line + 1 and end - pos > self._line_limit(buf, pos) + 1:
                    self._fail_line(base + pos, buf, pos)
                return pos
            stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
            if stop - pos > max_line and stop - pos > self._line_limit(buf, pos):
                self._fail_line(base + pos, buf, pos)
            line = buf[pos:stop]
            args = line.split(b" ")
            row = rows.get(args[0])
            if row is None or b"" in args or (nul and b"\0" in line):
                cmd, args = self._tokens(line, base + pos)
                row = rows[cmd.name.encode()]
            else:
                del args[0]
            cmd, name, lo, hi, keys, form = row
            n = len(args)
            if n < lo or n > hi or (stop - pos > max_key and keys is not None and (
                    len(args[0]) > max_key if keys is True
                    else max(map(len, args[keys]), default=0) > max_key)):
                instead = self._check(cmd, args, base + pos)
                if instead is not None:  # a key too long: answered, and the stream goes on
                    out += instead
                    pos = nl + 1
                    continue
            if form == plain:
                data = None
                stop = nl + 1
            else:
                if form == store:
                    token = args[3]
                    a1 = args[1]
                    a2 = args[2]
                    fast = (token.isdigit() and len(token) < 10 and a1.isdigit() and len(a1) < 10
                            and a2.isdigit() and len(a2) < 19)
                elif form == meta_set:
                    token = args[1]
                    fast = token.isdigit() and len(token) < 10
                elif form == _CAS:
                    fast = False
                else:  # quit: memcached closes the connection; the rest is never read
                    out.append(Request(buf[pos:nl + 1], name, args))
                    self._quit = True
                    return end
                size = int(token) if fast else self._size(cmd, args, base + pos)
                stop = nl + 3 + size
                if size > max_value:
                    out += self._too_large(cmd, args)
                    if stop > end:
                        self._skip = stop - end
                        return end
                    pos = stop
                    continue
                if stop > end:
                    self._need = stop - pos
                    return pos
                if buf[stop - 2] != 13 or buf[stop - 1] != 10:
                    # Data block checks go by meta set mode (errors always shown) or noreply.
                    raise RemoteProtocolError(
                        f"data block of {name} at byte {base + pos} does not end with CRLF"
                        f" after the {size} bytes announced",
                        reply=b"" if noreply(cmd, args) else BAD_CHUNK)
                data = buf[nl + 1:stop - 2]
            out.append(Request(buf if pos == 0 and stop == end else buf[pos:stop], name, args,
                               data=data))
            pos = stop
        return pos

    def _tokens(self, line: bytes, pos: int) -> tuple[Command, list[bytes]]:
        """The command and arguments of a line off the fast path, or the error memcached gives."""
        tokens = [t for t in line.split(b" ") if t]
        if not tokens:
            raise RemoteProtocolError(f"empty command line at byte {pos}", reply=ERROR)
        cmd = COMMANDS.get(tokens[0])
        if cmd is None:
            # memcached closes without a word on a line that ends like an HTTP request.
            http = tokens[min(len(tokens), 23) - 1].startswith(b"HTTP/")
            raise RemoteProtocolError(f"unknown command {tokens[0][:40]!r} at byte {pos}",
                                      reply=b"" if http else ERROR)
        if b"\0" in line:  # memcached cuts the line there, which mostly leaves too few tokens
            raise RemoteProtocolError(f"NUL byte in the command line at byte {pos}", reply=ERROR)
        return cmd, tokens[1:]

    def _check(self, cmd: Command, args: list[bytes], pos: int) -> list[Request] | None:
        """Token counts and key lengths, as memcached checks them before it runs a command.

        Returns None when both are fine, and the requests that go to the server in the place of
        a request without a data block that names a key over ``max_key``: memcached answers
        ``CLIENT_ERROR bad command line format`` for a key over its own limit (nothing after
        ``noreply``) and reads on, so the proxy answers so in the request's place (an ``mn``
        answered with the error) and reads on too. A storage request's key over the limit is
        refused: memcached runs its data block as a command then, which the proxy cannot follow.
        """
        n = len(args)
        if n < cmd.min_args:
            # memcached: ERROR for a short text line or a bare meta name; CLIENT_ERROR once a meta
            # key is there (and for a bare "me").
            short = BAD_FORMAT if cmd.meta and (n > 0 or cmd.name == "me") else ERROR
            raise RemoteProtocolError(
                f"{cmd.name} at byte {pos} needs at least {cmd.min_args} arguments, got {n}",
                reply=short)
        if n > cmd.max_args:
            reply = FLAGS_TOO_LONG if cmd.meta else ERROR
            raise RemoteProtocolError(
                f"{cmd.name} at byte {pos} takes at most {cmd.max_args} arguments, got {n}",
                reply=reply)
        if cmd.key_args is not None:
            max_key = self._limits.max_key
            for key in args[cmd.key_args]:
                if len(key) > max_key:
                    quiet = noreply(cmd, args)
                    if cmd.size_at is None:
                        return [] if quiet else [Request(b"mn\r\n", "mn", [], answer=BAD_FORMAT)]
                    raise RemoteProtocolError(
                        f"key of {len(key)} bytes in {cmd.name} at byte {pos} is longer than"
                        f" {max_key} bytes", reply=b"" if quiet else BAD_FORMAT)
        return None

    def _size(self, cmd: Command, args: list[bytes], pos: int) -> int:
        """The data block's size; for text storage commands also the fields memcached reads with
        it, since a bad one makes memcached run the data block as a command. Numbers are read as
        memcached reads them (see :func:`~.commands.c_int32`): a size of 4294967297 is 1."""
        size = c_int32(args[cmd.size_at])  # type: ignore[index]
        ok = size is not None and 0 <= size <= _MAX_SIZE
        if ok and not cmd.meta:
            ok = c_unsigned(args[1]) is not None and c_int32(args[2]) is not None
            if ok and cmd.name == "cas":
                ok = c_unsigned(args[4]) is not None
        if not ok:
            raise RemoteProtocolError(
                f"{cmd.name} at byte {pos}: unreadable number in {b' '.join(args)[:80]!r}",
                reply=b"" if noreply(cmd, args) else BAD_FORMAT)
        return size  # type: ignore[return-value]

    def _too_large(self, cmd: Command, args: list[bytes]) -> list[Request]:
        """What goes to the server in place of a storage request over ``max_value``, with the
        answers the client gets (see the module docstring)."""
        out = []
        if cmd.name == "set":
            words = [b"delete", args[0], b"noreply"]
        elif cmd.meta:  # ms: the key as it names it (base64 under b), deleted quietly
            words = [b"md", args[0], *([b"b"] if b"b" in meta_flags(cmd, args) else []), b"q"]
        else:
            words = []
        if words:
            out.append(Request(b" ".join(words) + b"\r\n", words[0].decode(), words[1:],
                               answer=b""))
        if cmd.meta or not noreply(cmd, args):
            out.append(Request(b"mn\r\n", "mn", [], answer=TOO_LARGE))
        return out
