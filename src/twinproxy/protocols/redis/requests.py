"""Frames a Redis client's byte stream into requests, exactly as redis-server 6.2/7.0 do.

How redis-server reads a request (``networking.c``), which this reader repeats byte for byte,
because the proxy must see the same request boundaries as the server behind it:

* A request starting with ``*`` is a multibulk: ``*<n>`` then ``n`` times ``$<len>`` and ``len``
  bytes. Each header line ends at its first ``\\r``; the byte after it is skipped unseen (it is
  meant to be ``\\n``), and so are the two bytes after each bulk. ``*0`` and negative counts are
  an empty command: consumed, never executed.
* Anything else is an inline command: a line up to ``\\n`` (a ``\\r`` before it is dropped),
  split like ``sdssplitargs`` (``"..."`` with ``\\n \\r \\t \\b \\a \\xHH`` escapes, ``'...'``
  with ``\\'``); a line with no arguments is skipped.
* Header and inline lines are found with ``strchr``, which stops at a NUL byte: a NUL before the
  line's end makes the server wait for more, until more than ``max_line`` bytes are buffered.
* Numbers are strict (``string2ll``: no sign but ``-``, no leading zero, no spaces).

Memory: bytes that do not yet complete a request are held as the chunks they came in and joined
once the request can complete, so a 100 MB value costs a few copies, not one per chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, RemoteProtocolError, Request
from twinproxy.protocols.reader import READY, HeldChunks, RequestReader
from twinproxy.protocols.redis import fast
from twinproxy.protocols.redis.fast import (
    FAST_CHUNK,
    fast_count,
    fast_requests,
    new_reader,
    one_request,
)
from twinproxy.protocols.redis.names import (
    EXPIRY_OPTION,
    SEEN_NOT_HOLDING,
    SEEN_ORDINARY,
    SEEN_RUNNABLE,
    SESSION_CLIENT,
    SESSION_COMMANDS,
    expiring,
    gives_script,
    holds,
    ordinary,
    reads_only,
    runnable,
    runnable_as_sent,
    small_replies,
    taken,
)
from twinproxy.protocols.redis.scripts import Scripts
from twinproxy.protocols.redis.textparse import INTS, split_inline, string2ll


def _digits_so_far(text: bytes, limit: int) -> bool:
    """Whether ``text`` can begin the number of a header line whose value stays within
    ``limit``: no digits yet, or digits with no leading zero."""
    if not text:
        return True
    return text.isdigit() and text[0] != 48 and int(text) <= limit




def _ordinary_noting(reader: RespRequestReader) -> Callable[[set[bytes]], bool]:
    """count()'s test of a pipeline's command names, which also notes a script among them
    (without the C scan; a read that gives its script is left to receive(), which learns it)."""
    def noting(names: set[bytes]) -> bool:
        if not ordinary(names) or reader.shows_learner(names):
            return False
        if holds(names):
            reader.holds = True
        return True
    return noting



_NAME_CACHE: dict[bytes, tuple[str, int]] = {}
_NAME_CACHE_MAX = 4096

# What the reader waits for when a request is incomplete.
_WAIT_BYTES, _WAIT_CR, _WAIT_LF, _WAIT_LIMIT = range(1, 5)
_SKIP = object()  # an empty command: consumed, nothing to return
# A request with this many elements left has them framed in C (fast.c_elements), where built.
_MANY = 16
# A chunk past this size whose complete requests take at least _LARGE_REQUEST bytes each on
# average is framed request by request in C, not by the hiredis proof (see _took_large).
_LARGE_CHUNK = 16 * 1024
_LARGE_REQUEST = 4 * 1024


def make_request(raw: bytes, argv: list[bytes]) -> Request:
    """A :class:`Request` for ``argv`` (the command name first), its name and session flag set."""
    cmd = argv[0]
    known = _NAME_CACHE.get(cmd)
    if known is None:
        name = cmd.upper().decode("latin-1")  # ASCII-only upper-casing, like strcasecmp
        kind = 1 if name in SESSION_COMMANDS else 2 if name == "CLIENT" else 0
        known = (name, kind)
        if len(_NAME_CACHE) < _NAME_CACHE_MAX:
            _NAME_CACHE[cmd] = known
    req = Request(raw, known[0], argv[1:])
    if known[1] and (known[1] == 1 or (len(argv) > 1 and argv[1].upper() in SESSION_CLIENT)):
        req.session = True
    return req


def _error(what: str, reply: str, where: int) -> RemoteProtocolError:
    reply_bytes = reply.encode("latin-1").replace(b"\r", b" ").replace(b"\n", b" ")
    return RemoteProtocolError(
        f"{what} in the request at byte {where} of the client's stream",
        reply=b"-ERR Protocol error: " + reply_bytes + b"\r\n",
    )


class RespRequestReader(HeldChunks, RequestReader):
    """Frames requests from one client connection; see the module docstring for the rules.

    Keeps the :class:`~twinproxy.protocols.reader.RequestReader` contract, buffering with
    :class:`~twinproxy.protocols.reader.HeldChunks`. :meth:`receive` is its own, not the base's
    ``feed`` then ``_next`` until None: a read that starts at a request boundary goes to the
    hiredis fast path first, whole, and that choice is made before the read is buffered.
    """

    learner: Scripts | None = None  # (the Redis codec's learner: see RequestReader.learner)

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._max_line = limits.max_line
        self._max_bulk = limits.max_bulk
        self._max_elements = limits.max_elements
        # The fast path checks no limit: use it only where no chunk it takes can reach one.
        smallest = min(limits.max_bulk, limits.max_elements)
        self._fast = smallest >= FAST_CHUNK and limits.max_line >= 16
        self._hiredis = new_reader()
        self._start_buffering()
        # A multibulk request in progress: its bytes so far (in _parts), its arguments, what is
        # left.
        self._args: list[bytes] | None = None
        self._left = 0
        self._bulklen = -1
        self._offset = 0  # stream offset of the current request, for error messages
        self._error: RemoteProtocolError | None = None
        self._eof = False
        self.pass_from = 0
        self.value_left = 0
        self.value_at = -1
        self.value_size = 0
        self._passing: list[bytes] = []
        self._streamed = False  # the request in progress passed a value through
        # The size of the request whose start count_run left buffered, when its headers tell
        # it (0: not known, or nothing left): what continue_run completes.
        self._run_size = 0

    # -- input ------------------------------------------------------------------------------

    def _satisfied(self, data: bytes) -> bool:
        """Whether the chunk just held can let the parser progress (checked once per chunk)."""
        wait = self._wait
        held = len(self._buf) - self._pos + self._held_len
        if wait == READY:
            return True
        if wait == _WAIT_BYTES:
            return held >= self._need
        if held > self._max_line:
            return True  # the line is too long: let the parser say so
        if wait == _WAIT_LF:
            return b"\n" in data
        if wait == _WAIT_CR:
            found = self._last_cr or data.find(b"\r", 0, len(data) - 1) >= 0
            self._last_cr = data[-1] == 13
            return found
        return False  # _WAIT_LIMIT: only the line limit ends the wait

    # -- output -----------------------------------------------------------------------------

    def receive(self, data: bytes, answers: bool = False) -> list[Request]:
        """``feed(data)`` then every complete request: the proxy's one call per read.
        (``answers`` is the base's; this reader makes no request that the proxy answers.)

        Raises:
            RemoteProtocolError: as :meth:`next_request`; ``exc.messages`` holds the requests
                completed before the error in this call.
        """
        if self._error is not None:
            raise self._again()
        self._run_size = 0
        out: list[Request] = []
        if self._args is None and not self._held and self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
            self._ready = bool(data)
            self._eof = self._eof or not data
            self._try_fast(out)
            fast_tried = True
        else:
            self.feed(data)
            fast_tried = False
        try:
            req = self._next()
            while req is not None:
                out.append(req)
                if not fast_tried and self._args is None:
                    fast_tried = True
                    self._try_fast(out)
                req = self._next()
        except RemoteProtocolError as exc:
            self._broken_by(exc, out)
            raise
        finally:
            if self.learner is not None:  # (what came before an error goes to the server too)
                self.learner.note(out)
        return out

    def shows_learner(self, names: set[bytes]) -> bool:
        """Whether a read with these command names (as sent) gives the server a script that
        the learner must see (EVAL): count() reads it for the learner with the C scan, and
        leaves it to receive() without."""
        return self.learner is not None and gives_script(names)

    def count(self, data: bytes) -> int | None:
        """Frame ``data`` without building requests: SINGLE mode's framing, at C speed.

        When the reader holds nothing and ``data`` starts with canonical complete requests that
        are all ordinary (no session change, nothing that may block: see ``names.NOT_ORDINARY``),
        or whole transactions of them (``names.taken``), returns how many bytes
        of ``data`` they take; the rest, the start of a request, stays buffered. Otherwise
        returns None having consumed nothing: call :meth:`receive`. The rest must be only the
        start of one request, checked here: anything else (a whole request that is not
        ordinary, or bytes redis-server refuses) must be framed now, not when the client sends
        more, since the client may be waiting for its reply.
        """
        if (self._args is not None or self._held or self._pos < len(self._buf)
                or self._error is not None or not self._fast or len(data) > FAST_CHUNK
                or data[:1] != b"*"):
            return None
        scan = fast.c_scan
        if scan is not None:  # the C count: about 1 us for a 16-request read
            used, _, names = scan(data)
            if not used:
                return None
            if not names <= SEEN_ORDINARY:  # (the common case asks no more)
                names = taken(names, SEEN_ORDINARY, ordinary, data, used)  # (but MULTI, EXEC)
            if names is None or (used < len(data) and not self._cut_short(data, used)):
                return None
            if not names <= SEEN_NOT_HOLDING and holds(names):  # (EVAL is one: HOLDING)
                self.holds = True
                if self.shows_learner(names):
                    self.learner.note_read(data, used)  # type: ignore[union-attr]
            self._took(data, used)
            return used
        if len(data) < 1024 and data.find(b"\r\n*") < 0:  # no second request starts here
            name = one_request(data)
            if name is not None:
                if (name in SEEN_ORDINARY or ordinary({name})) and \
                        not self.shows_learner({name}):
                    if name not in SEEN_NOT_HOLDING and holds({name}):
                        self.holds = True
                    self._offset += len(data)
                    return len(data)
                return None
        used, _, self._hiredis = fast_count(data, self._hiredis, _ordinary_noting(self))
        if not used or (used < len(data) and not self._cut_short(data, used)):
            return None
        self._took(data, used)
        return used

    # forward as a C function, for the relay's batch (relay/_io.h), where it was built
    c_forward = fast.c_forward_capsule

    def forward(self, src: int, dst: int, buffer: bytearray) -> tuple[int, int] | None:
        """See ``RequestReader.forward``: ``_scan.c``'s ``forward``, in the state where
        :meth:`count` could take a whole read (nothing held: no request in progress, nothing
        buffered, no error, the fast path allowed; checked there). It sends only reads of
        requests whose names :meth:`count` has seen to be ordinary and no script
        (``names.SEEN_ORDINARY``, ``SEEN_NOT_HOLDING``); a read with another name is left to
        :meth:`count`,
        which learns it. A read it sent moves the stream's offset (``_offset``) past it."""
        forward = fast.c_forward
        if forward is None:
            return None
        return forward(self, src, dst, buffer)

    def count_run(self, data: bytes) -> tuple[int, int] | None:
        """Like :meth:`count`, for an MVE run: ``(bytes, requests)`` of the complete requests
        at the start of ``data`` when they are all runnable (see ``names.RUNNABLE``), or whole
        transactions of them (``names.taken``), else None having consumed
        nothing; ``(0, 0)`` when ``data`` is only the start of a request whose size its headers
        tell (held for :meth:`continue_run`). Notes whether their replies are all small
        (``small_replies``), whether they only read (``reads_only``), and whether one has an EX
        or PX argument (``expiring``: the follower gets the leader's moment)."""
        if (self._args is not None or self._held or self._pos < len(self._buf)
                or self._error is not None or not self._fast or len(data) > FAST_CHUNK
                or data[:1] != b"*"):
            return None
        scan = fast.c_scan
        if scan is not None:
            used, count, names = scan(data)
            size = self._start_size(data, used) if used < len(data) else 0
            if not used:  # the start of one large request, which continue_run may complete
                size = self._holdable(size)
                if not size:
                    return None
                self._took(data, 0)
                self._run_size = size
                return 0, 0
            if size < 0:
                return None
            if not names <= SEEN_RUNNABLE:
                names = taken(names, SEEN_RUNNABLE, runnable, data, used)
            if names is None:
                return None
            self._took(data, used)
            self._run_size = self._holdable(size)
            self.small_replies = small_replies(names, data, used, count)
            self.reads_only = reads_only(names)
            self.expiring = expiring(names, data, used, count)
            return used, count
        if EXPIRY_OPTION.search(data) is not None:  # (without C: no run is rewritten)
            return None
        if len(data) < 1024 and data.find(b"\r\n*") < 0:
            name = one_request(data)
            if name is None or not runnable_as_sent({name}):
                return None
            self._offset += len(data)
            self.small_replies = small_replies({name}, data, len(data), 1)
            self.reads_only = reads_only({name})
            self.expiring = False
            return len(data), 1
        used, count, self._hiredis = fast_count(data, self._hiredis, runnable_as_sent)
        if not used or (used < len(data) and not self._cut_short(data, used)):
            return None
        self._took(data, used)
        self.small_replies = self.reads_only = self.expiring = False  # (names not known)
        return used, count

    def _cut_short(self, data: bytes, pos: int) -> bool:
        """Whether ``data[pos:]`` is the start of one canonical request and nothing else: its
        header lines well formed and within the limits, each bulk followed by CRLF, and its end
        not there yet. False for anything else, which the exact parser then frames (a complete
        request, a request redis-server refuses, a spelling only the exact parser follows)."""
        return self._start_size(data, pos) >= 0

    def _start_size(self, data: bytes, pos: int) -> int:
        """For :meth:`_cut_short`: -1 when ``data[pos:]`` is not the start of one canonical
        request; else its whole size when its headers there tell it (all of them up to its
        last argument's), else 0."""
        n = len(data)
        if data[pos] != 42:  # *: an inline command, or garbage
            return -1
        nl = data.find(b"\r", pos + 1, pos + 24)
        if nl < 0:
            return 0 if n - pos < 22 and _digits_so_far(data[pos + 1 :], self._max_elements) \
                else -1
        count = string2ll(data[pos + 1 : nl])
        if count is None or not 0 < count <= self._max_elements or data[nl + 1 : nl + 2] not in (
                b"", b"\n"):
            return -1
        at = nl + 2
        for i in range(count):
            if at >= n:
                return 0
            if data[at] != 36:  # $
                return -1
            nl = data.find(b"\r", at + 1, at + 24)
            if nl < 0:
                return 0 if n - at < 22 and _digits_so_far(data[at + 1 :], self._max_bulk) \
                    else -1
            length = string2ll(data[at + 1 : nl])
            if length is None or not 0 <= length <= self._max_bulk or data[nl + 1 : nl + 2] not in (
                    b"", b"\n"):
                return -1
            end = nl + 2 + length
            if end + 2 > n:
                if not b"\r\n".startswith(data[end:]):
                    return -1
                return end + 2 - pos if i == count - 1 else 0
            if data[end : end + 2] != b"\r\n":
                return -1
            at = end + 2
        return -1  # the whole request is there

    def _holdable(self, size: int) -> int:
        """``size`` if a request of that size (0 or less: not known) may be held whole for
        :meth:`continue_run` (not past the fast path's chunk, nor a value that passes through a
        file), else 0."""
        if size <= 0 or size > FAST_CHUNK or (self.pass_from and size >= self.pass_from):
            return 0
        return size

    def continue_run(self, data: bytes) -> tuple[bytes, bytes] | None:
        """For an MVE run of large requests (SETs of 100 KB values, which no read holds whole):
        ``data`` continues the request whose start :meth:`count_run` left buffered. Returns
        ``(request, rest)``: the request's bytes, joined once, when ``data`` completes it (a run
        of one, its ``small_replies`` and ``reads_only`` noted), and the bytes of ``data`` after
        it, for the caller to take as a read of their own; ``(b"", b"")`` when it is still
        incomplete (``data`` is held, uncopied). None, having consumed nothing, when this cannot
        say (the request's size was not in the headers read, it is not runnable, it has a
        relative expiry): then :meth:`receive`, which frames it as before, one copy and one
        slice more, and each request alone in the engine."""
        size = self._run_size
        if not size or self._args is not None or self._error is not None:
            return None
        have = len(self._buf) - self._pos + self._held_len
        if have + len(data) < size:
            self._held.append(data)
            self._held_len += len(data)
            return b"", b""
        cut = size - have
        with memoryview(self._buf) as buf, memoryview(data) as view:
            request = b"".join([buf[self._pos:], *self._held, view[:cut]])
        used, count, names = fast.c_scan(request)
        if used != size or count != 1 or not (names <= SEEN_RUNNABLE or runnable(names)) or \
                expiring(names, request, size, 1):
            return None
        self._start_buffering()  # (at a request boundary, with nothing buffered)
        self._run_size = 0
        self._offset += size
        self.small_replies = small_replies(names, request, size, 1)
        self.reads_only = reads_only(names)
        self.expiring = False
        return request, data[cut:] if cut < len(data) else b""

    def _took(self, data: bytes, used: int) -> None:
        """The fast count framed ``used`` bytes of ``data``; the rest (the start of a request)
        becomes the buffer, for :meth:`receive`."""
        self._offset += used
        if used < len(data):
            self._buf = data
            self._pos = used
            self._ready = True

    def _try_fast(self, out: list[Request]) -> None:
        """Frame what the buffer holds from its position with the hiredis fast path."""
        buf, pos = self._buf, self._pos
        left = len(buf) - pos
        if not self._fast or left < 4 or left > FAST_CHUNK or buf[pos] != 42 or self._held:
            return
        if left > _LARGE_CHUNK and fast.c_scan is not None and self._took_large(out):
            return
        chunk = buf[pos:] if pos else buf
        reqs, used, self._hiredis = fast_requests(chunk, self._hiredis, make_request, _NAME_CACHE)
        if used:
            out += reqs
            self._pos = pos + used
            self._offset += used

    def _took_large(self, out: list[Request]) -> bool:
        """The fast path for a chunk of large requests (SETs of 100 KB values), where built:
        the C scan finds the complete canonical requests by their headers, skipping the values'
        bytes, and each is cut out by its elements in C. The proof (fast.py) reads every byte
        several times over (hiredis, a join, finds, a count, a split): two thirds of the
        proxy's time under SETs of 100 KB values at -P 16, at 0.46 of HAProxy's requests/s.
        False, having taken nothing, for a chunk of small requests: hiredis frames many at a
        time for less than this loop's call per request."""
        buf, pos = self._buf, self._pos
        with memoryview(buf) as view:
            end, count, _ = fast.c_scan(view[pos:])
        if end < count * _LARGE_REQUEST:
            return False
        stop = pos + end
        at = pos
        elements = fast.c_elements
        while at < stop:  # (each is complete and canonical: the scan said so)
            nl = buf.index(b"\r", at)
            after, argv = elements(buf, nl + 2, int(buf[at + 1 : nl]), self._max_bulk)
            out.append(make_request(buf[at:after], argv))
            at = after
        self._pos = stop
        self._offset += end
        return True

    def _next(self) -> Request | None:
        while self._ready:
            if self._held:
                self._refill()
            if self._args is None and self._pos >= len(self._buf):
                self._ready = False
                return None
            req = self._parse()
            if req is None:
                return None
            if req is not _SKIP:
                return req  # type: ignore[return-value]
        return None

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self) -> Request | object | None:
        if self._args is not None or self._buf[self._pos] == 42:
            return self._multibulk()
        return self._inline()

    def _suspend(self, start: int, pos: int, wait: int, need: int = 0) -> None:
        """Keep what the current request has so far and wait for more bytes."""
        buf = self._buf
        if pos > start:
            self._parts.append(buf[start:pos])
            self._parts_len += pos - start
        self._pos = pos
        self._wait = wait
        self._need = need
        self._last_cr = pos < len(buf) and buf[-1] == 13
        self._ready = False

    def _line_blocked(self, start: int, pos: int, header: str) -> None:
        """A header line with a NUL before its ``\\r``: the server waits, as strchr stops there.

        Raises past the line limit, else suspends until it.
        """
        if len(self._buf) - pos > self._max_line:
            raise _error(f"no end to a {header} line", f"too big {header} string", self._offset)
        self._suspend(start, pos, _WAIT_LIMIT)

    def _multibulk(self) -> Request | object | None:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        max_line = self._max_line
        args = self._args
        start = pos
        if args is None:
            nl = buf.find(b"\r", pos + 1, pos + max_line + 1)
            if nl < 0 or nl + 1 >= n:
                if nl < 0 and n - pos > max_line:
                    raise _error("no end to the multibulk count line",
                                 "too big mbulk count string", self._offset)  # fmt: skip
                self._suspend(start, pos, _WAIT_CR)
                return None
            text = buf[pos + 1 : nl]
            count = INTS.get(text)
            if count is None:
                count = string2ll(text)
                if count is None:
                    if b"\0" in buf[pos:nl]:
                        self._line_blocked(start, pos, "mbulk count")
                        return None
                    raise _error(f"invalid multibulk length {text[:40]!r}",
                                 "invalid multibulk length", self._offset)  # fmt: skip
            if count > self._max_elements:
                raise _error(f"multibulk length {count} over the limit {self._max_elements}",
                             "invalid multibulk length", self._offset)  # fmt: skip
            pos = nl + 2
            if count <= 0:
                self._pos = pos
                self._offset += pos - start
                return _SKIP
            args = []
            left = count
            bulklen = -1
        else:
            left = self._left
            bulklen = self._bulklen
        while left:
            if bulklen < 0:
                if left >= _MANY and fast.c_elements is not None:
                    # Many elements (RPUSH of a million values): the complete canonical ones
                    # in C; this loop takes the one it stops at, if any.
                    pos, got = fast.c_elements(buf, pos, left, self._max_bulk)
                    args += got
                    left -= len(got)
                    if not left:
                        break
                nl = buf.find(b"\r", pos, pos + max_line + 1)
                if nl < 0 or nl + 1 >= n:
                    if nl < 0 and n - pos > max_line:
                        raise _error("no end to a bulk length line",
                                     "too big bulk count string", self._offset)  # fmt: skip
                    self._args, self._left, self._bulklen = args, left, -1
                    self._suspend(start, pos, _WAIT_CR)
                    return None
                if buf[pos] != 36:
                    if b"\0" in buf[pos:nl]:
                        self._args, self._left, self._bulklen = args, left, -1
                        self._line_blocked(start, pos, "bulk count")
                        return None
                    got = chr(buf[pos])
                    raise _error(f"expected '$', got {got!r} in argument {len(args) + 1}",
                                 f"expected '$', got '{got}'", self._offset)  # fmt: skip
                text = buf[pos + 1 : nl]
                bulklen = INTS.get(text)
                if bulklen is None:
                    bulklen = string2ll(text)
                    if bulklen is None and b"\0" in text:
                        self._args, self._left, self._bulklen = args, left, -1
                        self._line_blocked(start, pos, "bulk count")
                        return None
                    if bulklen is None or bulklen < 0:
                        raise _error(f"invalid bulk length {text[:40]!r}",
                                     "invalid bulk length", self._offset)  # fmt: skip
                if bulklen > self._max_bulk:
                    raise _error(f"bulk length {bulklen} over the limit {self._max_bulk}",
                                 "invalid bulk length", self._offset)  # fmt: skip
                pos = nl + 2
            end = pos + bulklen
            if end + 2 > n:
                if self.pass_from and bulklen >= self.pass_from and args and \
                        ordinary({args[0]}):
                    self.value_size = bulklen
                    self._start_stream(start, args, left - 1, end + 2 - n)
                    return None
                self._args, self._left, self._bulklen = args, left, bulklen
                self._suspend(start, pos, _WAIT_BYTES, bulklen + 2)
                return None
            args.append(buf[pos:end])
            pos = end + 2
            bulklen = -1
            left -= 1
        if self._parts:
            self._parts.append(buf[start:pos])
            raw = b"".join(self._parts)
            self._parts = []
            self._parts_len = 0
        else:
            raw = buf[start:pos]
        self._args = None
        self._streamed = False
        self._pos = pos
        self._offset += len(raw)
        return make_request(raw, args)

    # -- passing large values through (see RequestReader) -------------------------------------

    def _start_stream(self, start: int, args: list[bytes], left: int, remaining: int) -> None:
        """The value being read is large: what the request has so far goes out now, and the
        ``remaining`` bytes of the value (with its CRLF) pass through as they come. Only for an
        ordinary command (no session change, nothing that may block), whose value nobody reads.
        redis-server does not check the two bytes after a value, so neither does the proxy."""
        buf = self._buf
        self._parts.append(buf[start:] if start else buf)
        self._passing, self._parts, self._parts_len = self._parts, [], 0
        self.value_at = len(args) - 1  # (args[0] is the command's name)
        args.append(b"")  # the value itself is not kept
        self._args, self._left, self._bulklen = args, left, -1
        self._pos = len(buf)
        self._wait = READY
        self._ready = False
        self._streamed = True
        self.value_left = remaining

    def pass_values(self, size: int) -> None:
        self.pass_from = size

    def passing(self) -> bytes:
        """The bytes of the request in progress to forward now, once."""
        out = b"".join(self._passing)
        self._passing = []
        self._offset += len(out)
        return out

    def pass_through(self, data: bytes) -> tuple[int, Request | None]:
        """Count the bytes of the value passing through; the request if the value ended it."""
        took = min(self.value_left, len(data))
        self.value_left -= took
        self._offset += took
        if self.value_left or self._left:
            return took, None
        args, self._args = self._args, None
        self._streamed = False
        return took, make_request(b"", args)

    def mid_request(self) -> bool:
        return self._streamed

    def _inline(self) -> Request | object | None:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        nl = buf.find(b"\n", pos, pos + self._max_line + 1)
        if nl >= 0 and b"\0" in buf[pos:nl]:
            nl = -1  # strchr stops at the NUL: the server does not see this line's end
            if n - pos <= self._max_line:
                self._suspend(pos, pos, _WAIT_LIMIT)
                return None
        if nl < 0:
            if n - pos > self._max_line:
                raise _error("no end to an inline command line", "too big inline request",
                             self._offset)  # fmt: skip
            self._suspend(pos, pos, _WAIT_LF)
            return None
        end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        argv = split_inline(buf[pos:end])
        if argv is None:
            raise _error("unbalanced quotes", "unbalanced quotes in request", self._offset)
        self._pos = nl + 1
        self._offset += nl + 1 - pos
        if not argv:
            return _SKIP
        raw = buf[pos : nl + 1]
        return make_request(raw, argv)
