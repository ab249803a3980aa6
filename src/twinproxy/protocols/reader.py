"""The reader base every protocol's readers build on.

A request reader frames a client's byte stream into requests; a reply reader frames a server's
into replies and pairs each with the request it answers. The rules every reader keeps are in
:mod:`twinproxy.protocols.base`. Six readers (two per protocol) used to write out the same
contract each; what they share is here:

* :class:`Reader` keeps the error contract. A :class:`RemoteProtocolError` that the framing
  raises breaks the reader: every later call raises the same error again. ``receive()`` puts the
  messages it framed in that call before the error on the exception (``messages``), so that the
  relay answers them before it closes; every other call puts an empty list there. It also gives
  ``receive(data)`` as ``feed(data)`` then every complete message, and holds the end-of-stream
  flag. A reader writes only ``feed()``, ``buffered``, and ``_next()``, which frames one message
  and raises without remembering anything; where framing many messages at once is faster than
  one at a time, it overrides ``_drain()`` too.
* :class:`RequestReader` and :class:`ReplyReader` add what the relay calls on each kind:
  ``next_request()``, SINGLE mode's ``count()`` and the engine's ``count_run()`` (None by
  default: not countable); ``next_reply()``, ``expect()`` and ``pending``.
* :class:`FramedAhead` keeps what a reader that frames in ``feed()`` has framed, and the error
  it met, until they are taken (the memcached readers).
* :class:`HeldChunks` is one way of buffering, for a reader that parses from a position in a
  buffer: chunks that cannot complete a message yet are held as they came and joined once they
  can, so a message that arrives in many reads is copied a few times, not once per read. The
  Redis readers use it; the memcached readers hold chunks in a list of their own, which they
  join when a line end or the bytes a block announced are there, and the FTP readers append to
  a bytearray, since their lines are short.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

from twinproxy.protocols.messages import RemoteProtocolError, Reply, Request

M = TypeVar("M")

READY = 0
"""What a :class:`HeldChunks` reader waits for when it waits for nothing: it can parse on. Each
reader numbers the other things it can wait for from 1."""


class Reader(Generic[M]):
    """The error contract, ``receive()`` and the end-of-stream flag of one reader.

    ``_error`` is the error this reader raised (it is broken); ``_eof`` is set by ``feed(b"")``.
    """

    __slots__ = ("_eof", "_error")

    def __init__(self) -> None:
        self._error: RemoteProtocolError | None = None
        self._eof = False

    # ---- what each reader writes ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held (0 at a message boundary)."""
        raise NotImplementedError

    def _next(self) -> M | None:
        """Frame the next complete message from what is held, or None when more bytes are
        needed. Raises :class:`RemoteProtocolError`; the base remembers it."""
        raise NotImplementedError

    def _drain(self, out: list[M]) -> None:
        """Append every complete message to ``out``; raise at an error, after appending those
        before it. Calls :meth:`_next` until None; a reader that frames faster many at a time
        overrides it."""
        next_message = self._next
        message = next_message()
        while message is not None:
            out.append(message)
            message = next_message()

    # ---- what the base gives ------------------------------------------------------------------

    def receive(self, data: bytes) -> list[M]:
        """``feed(data)`` then every complete message: the relay's one call per read.

        Raises:
            RemoteProtocolError: the input is malformed or past a limit (again on every call
                after the first); ``exc.messages`` holds the messages completed before the
                error in this call.
        """
        self.feed(data)
        if self._error is not None:
            raise self._again()
        out: list[M] = []
        try:
            self._drain(out)
        except RemoteProtocolError as exc:
            self._broken_by(exc, out)
            raise
        return out

    def _next_message(self) -> M | None:
        """The next complete message, or None: ``next_request()``/``next_reply()``."""
        if self._error is not None:
            raise self._again()
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._broken_by(exc, [])
            raise

    def _broken_by(self, exc: RemoteProtocolError, messages: list) -> None:
        """``exc`` breaks this reader; ``messages`` are what the failing call framed before it."""
        self._error = exc
        exc.messages = messages

    def _again(self) -> RemoteProtocolError:
        """The error that broke this reader, to raise again: the call framed nothing."""
        error = self._error
        assert error is not None
        error.messages = []
        return error


class Learner(Protocol):
    """What the proxy learns from its clients' requests of a server's state that the state
    sync cannot copy (Redis: the scripts in its cache, protocols/redis/scripts.py): one per
    proxy, kept across updates, given to each update's state sync (``SyncJob.learned``)."""

    def note(self, requests: Iterable[Request]) -> None:
        """Learn from requests on their way to the server."""


class RequestReader(Reader[Request]):
    """Frames a client's byte stream into requests."""

    __slots__ = ()

    learner: Learner | None = None
    """Set by the relay on a client's reader when the codec has one (``Codec.learner``): the
    reader shows it every request it frames, and the reads SINGLE mode's :meth:`count` takes
    without framing them where the learner must see them (or leaves those to
    :meth:`receive`)."""

    holds = False
    """Set by :meth:`count` when what it took includes a request that may make the server
    refuse others while it runs (see ``Codec.may_hold``); the caller resets it."""

    small_replies = False
    """Set by :meth:`count_run` for the run it counted: whether every one of its requests gets
    a small reply whatever the data (a status, an integer), so that the run may go on the
    connection plain clients share before the client has had small replies on its own (see
    ``[update] shared_after``). False: not known."""

    reads_only = False
    """Set by :meth:`count_run` for the run it counted: whether none of its requests changes
    data, so that the run may go while requests that only read are out on clients' own
    connections (see ``Engine.runs_allowed``). False: not known."""

    silent = 0
    """Set by :meth:`count_run` for the run it counted: how many of its requests get no reply
    (memcached's ``noreply``). 0 for a protocol whose every request is answered."""

    silent_last = False
    """Set by :meth:`count_run` for the run it counted: whether its last request gets no reply,
    so that the run has run only once the bytes of a later reply come (see
    ``Dispatch._shared_replies``)."""

    expiring = False
    """Set by :meth:`count_run` for the run it counted: whether the follower must get it with
    some of its bytes changed (``Codec.follower_run``: expiries in seconds from now, Redis's
    SET ... EX, memcached's stores)."""

    def receive(self, data: bytes, answers: bool = False) -> list[Request]:
        """``feed(data)`` then every complete request: the relay's one call per read.

        ``answers``: the caller answers the requests the proxy answers itself (those with
        ``Request.answer`` set: it sends ``raw`` on and puts ``answer`` where the server's reply
        goes). Without it, the first such request is refused instead, as a protocol error whose
        reply is its answer (with the answers of those right after it, made for the same client
        request): the caller answers what came before, then closes.

        Raises:
            RemoteProtocolError: the input is malformed or past a limit (again on every call
                after the first); ``exc.messages`` holds the requests completed before the
                error in this call.
        """
        try:
            out = Reader.receive(self, data)
        except RemoteProtocolError as exc:
            if not answers:
                self._refuse_answers(exc.messages)
            raise
        if not answers:
            self._refuse_answers(out)
        return out

    def _refuse_answers(self, requests: list[Request]) -> None:
        """Raise, and break the reader with, the error that stands for the first request of
        ``requests`` that the proxy would answer itself; nothing when there is none."""
        for i, request in enumerate(requests):
            if request.answer is not None:
                j = i
                while j < len(requests) and requests[j].answer is not None:
                    j += 1
                exc = RemoteProtocolError(
                    "a request the proxy answers itself (a value or a key over the limit)"
                    " where the caller cannot answer it",
                    reply=b"".join(r.answer for r in requests[i:j]))
                self._broken_by(exc, requests[:i])
                raise exc

    def next_request(self) -> Request | None:
        """The next complete request, or ``None`` when more bytes are needed.

        Raises:
            RemoteProtocolError: the input is malformed or past a limit (again on every call
                after the first).
        """
        return self._next_message()

    def count(self, data: bytes) -> int | None:
        """Frame ``data`` without building requests, for SINGLE mode's relay of ordinary
        requests: how many bytes at its start are complete requests that need no look, the
        rest staying buffered. None, having consumed nothing, when the reader cannot say: the
        relay then frames with :meth:`receive`. The default is None: not countable."""
        return None

    def forward(self, src: int, dst: int, buffer: bytearray) -> tuple[int, int] | None:
        """:meth:`count` and the forwarding in one call to C, for SINGLE mode's relay: read
        ``src`` once into ``buffer`` and, when the read is nothing but complete requests that
        need no look, send it on to ``dst``. Returns ``(received, sent)`` with the codes of
        ``relay/_io.h`` (``sent`` is ``IO_HELD`` when the read must be framed: then
        ``buffer[:received]`` holds it, counted by nothing yet), or None, having read nothing,
        when the reader cannot (the relay then reads and counts in Python). The default is
        None."""
        return None

    c_forward: object = None
    """:meth:`forward` as a C function, for the relay's batch of ready sockets
    (``relay/_pump.c``'s ``serve``): a capsule holding it (see ``relay/_io.h``), or None, where
    the batch calls :meth:`forward` itself."""

    def count_run(self, data: bytes) -> tuple[int, int] | None:
        """Like :meth:`count`, for the MVE engine's runs: ``(bytes, requests)`` of the complete
        requests at the start of ``data`` when they may all travel as one run of bytes, else
        None having consumed nothing. The default is None: no runs, every request framed."""
        return None

    def continue_run(self, data: bytes) -> tuple[bytes, bytes] | None:
        """After :meth:`count_run` left the start of a request buffered: ``(request, rest)``
        once ``data`` completes it (a run of one, and what follows it in ``data``),
        ``(b"", b"")`` while it does not, or None having consumed nothing (then frame
        ``data`` with :meth:`receive`). The default is None."""
        return None

    # -- passing large values through (SINGLE mode) ---------------------------------------------
    #
    # A reader that can (the default cannot) lets a large value (see :meth:`pass_values`) pass
    # through as it comes instead of holding it whole: :meth:`receive` then stops at that value,
    # :meth:`passing` gives the bytes of its request read so far, and :meth:`pass_through`
    # counts the rest of the value as the caller forwards it. The request is completed as usual
    # afterwards, with ``raw`` holding only what follows the value, and with an empty value.

    value_left = 0
    """Bytes of the value passing through that are still to come."""
    value_at = -1
    """Where that value is among its request's ``args`` (it is empty there)."""
    value_size = 0
    """That value's size, without the protocol's end of it."""

    def pass_values(self, size: int) -> None:
        """From now on let values of ``size`` bytes or more pass through (0: none). The
        default reader holds every request whole."""

    def passing(self) -> bytes:
        """The bytes of the request in progress to forward now, once (after :meth:`receive`)."""
        return b""

    def pass_through(self, data: bytes) -> tuple[int, Request | None]:
        """How many bytes at the start of ``data`` belong to the value passing through, and the
        request when the value was its end (None: more of it follows, for :meth:`receive`)."""
        raise NotImplementedError

    def mid_request(self) -> bool:
        """Whether part of a request was passed on and its end is still to come: nothing of the
        caller's own may go to the server before it."""
        return False


class OpaqueReader(RequestReader):
    """A client's stream the proxy no longer reads: a session that turned into bytes it cannot
    frame (an FTP session that switched to TLS, with passthrough allowed; see
    ``DataChannels.opaque_after``). Everything is counted as it comes and passed on as it came,
    by SINGLE mode's path for ordinary requests; nothing is ever framed."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        pass

    @property
    def buffered(self) -> int:
        return 0

    def _next(self) -> Request | None:
        return None

    def count(self, data: bytes) -> int:
        return len(data)


class ReplyReader(Reader[Reply]):
    """Frames a server's byte stream into replies and pairs them with requests.

    ``streaming`` says the server has turned the connection into a stream of its own (memcached
    after ``watch``): it reads no more requests, and what it sends is no reply to frame.
    ``closing`` says the server announced that it closes the connection (FTP's 421, or its reply
    to QUIT), so its close is no failure to report to the client. ``watching`` says the
    connection shows the requests of every other connection (Redis's MONITOR): what it shows of
    the proxy's own is left out (``Codec.own_request_shown``).
    """

    __slots__ = ()

    streaming = False
    closing = False
    watching = False

    def expect(self, request: Request) -> None:
        """The relay has sent ``request`` on this server connection (in this order)."""
        raise NotImplementedError

    def next_reply(self) -> Reply | None:
        """The next complete reply, or ``None`` when more bytes are needed.

        Raises:
            RemoteProtocolError: the server's output is malformed or past a limit (again on
                every call after the first).
        """
        return self._next_message()

    @property
    def pending(self) -> int:
        """Requests expected whose final reply has not arrived yet."""
        raise NotImplementedError


class FramedAhead:
    """For a reader that frames as the bytes come, in ``feed()``: what it framed waits in
    ``_ready``, and the error it met in ``_failure`` until the messages before it are taken, so
    that a read that brings messages and bad bytes together gives what two reads would. The
    memcached readers work so (a ``noreply`` request's implied reply is settled as bytes come)."""

    __slots__ = ()

    _ready: list
    _failure: RemoteProtocolError | None

    def _next(self) -> Any:
        if self._ready:
            return self._ready.pop(0)
        if self._failure is not None:
            raise self._failure
        return None

    def _drain(self, out: list) -> None:
        ready = self._ready
        if ready:
            out += ready
            ready.clear()
        if self._failure is not None:
            raise self._failure


class HeldChunks:
    """Buffering for a reader that parses from a position in a buffer.

    ``_buf`` is parsed from ``_pos``; chunks that cannot let the parser progress are held back
    (``_held``, ``_held_len`` bytes) until :meth:`_satisfied` says one can, then joined onto
    the buffer's unparsed tail once; the parts of a message already framed are kept by the
    parser (``_parts_len`` bytes). A chunk fed at a message boundary with nothing held becomes
    the buffer itself, uncopied. ``_wait`` is what the parser waits for (:data:`READY`: nothing)
    and ``_ready`` whether it can go on.
    """

    _buf: bytes
    _pos: int
    _held: list[bytes]
    _held_len: int
    _parts: list[bytes]
    _parts_len: int
    _wait: int
    _need: int
    _last_cr: bool
    _ready: bool
    _eof: bool

    def _start_buffering(self) -> None:
        """Nothing fed yet: an empty buffer, nothing held, nothing waited for. ``_need`` is how
        many more bytes the parser waits for, ``_last_cr`` whether the last chunk held ended in
        CR (a CRLF split across reads), ``_parts`` the pieces of the message in progress."""
        self._buf = b""
        self._pos = 0
        self._held = []
        self._held_len = 0
        self._wait = READY
        self._need = 0
        self._last_cr = False
        self._ready = False
        self._parts = []
        self._parts_len = 0

    def feed(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means it closed its side."""
        if not data:
            self._eof = True
            return
        if not self._held and self._pos >= len(self._buf):
            self._buf = data  # all parsed: the chunk becomes the buffer, nothing is copied
            self._pos = 0
            self._ready = True
            return
        self._held.append(data)
        self._held_len += len(data)
        if not self._ready:
            self._ready = self._satisfied(data)

    def _satisfied(self, data: bytes) -> bool:
        """Whether the chunk just held can let the parser progress (checked once per chunk)."""
        raise NotImplementedError

    def _refill(self) -> None:
        """Join the held chunks onto the buffer's unparsed tail."""
        tail = self._buf[self._pos :]
        self._buf = b"".join([tail, *self._held]) if tail else b"".join(self._held)
        self._pos = 0
        self._held = []
        self._held_len = 0
        self._wait = READY

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned message (0 at a message boundary)."""
        return self._parts_len + len(self._buf) - self._pos + self._held_len
