"""What every protocol shares: the :class:`Codec` interface, requests, replies, errors, limits.

A codec is sans-IO, like h11: it never sees a socket. The proxy core owns two readers per server
connection it relays (their base classes are in :mod:`twinproxy.protocols.reader`):

* a request reader on the client's byte stream, which frames requests;
* a reply reader on the server's byte stream, which frames replies and matches each one to
  the request it answers. The proxy tells it, with ``expect()``, every request it sends on that
  server connection, in order, because reply framing and pairing depend on them (a memcached
  ``get`` ends with ``END``; an FTP transfer command gets a 1xx reply and a final one; a Redis
  connection in RESP2 subscribe mode answers ``SUBSCRIBE a b`` with two replies).

Rules every reader keeps:

* Any split of the input gives the same messages with the same raw bytes: one byte at a time or
  megabytes at once. Bytes after the last complete message stay buffered, untouched.
* ``raw`` is the exact bytes of the message as received, so the proxy can forward or compare it.
* Past a configured limit, or on a syntax error, the reader raises :class:`RemoteProtocolError`
  (never anything else) whose ``reply`` is the error to send the peer in the protocol's own format.
  After that error the reader is broken: the connection is to be closed once what was complete
  before the error has been answered.
* Memory stays bounded by the limits: a reader never buffers more than one message's worth.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from twinproxy.protocols.reader import ReplyReader, RequestReader


class ProtocolError(Exception):
    """Bytes that break the protocol.

    Attributes:
        reply: the bytes to send the peer before closing, in the protocol's own error format
            (``-ERR Protocol error: ...`` for Redis, ``CLIENT_ERROR ...`` for memcached, a 5xx line
            for FTP), or ``b""`` when the protocol has no way to say it.
        messages: the complete messages that the same ``receive()`` call framed before the error,
            which it could not return; the caller handles them as if returned, then sends
            ``reply`` and closes. Empty when raised by ``next_request()``/``next_reply()``.
    """

    def __init__(self, message: str, *, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply
        self.messages: list[Any] = []


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid or too large."""


class LocalProtocolError(ProtocolError):
    """We were asked to encode something the protocol cannot carry."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits on input, with defaults like the servers' own.

    ``max_line``: an inline command, a simple reply line, a memcached or FTP line (64 KiB, Redis's
    inline limit). ``max_bulk``: one Redis bulk string (512 MiB, ``proto-max-bulk-len``).
    ``max_elements``: one Redis array or map (1M). ``max_depth``: nesting of Redis replies.
    ``max_key``: a memcached key (250 bytes). ``max_value``: one memcached data block (1 MiB, the
    default ``-I`` item size).
    """

    max_line: int = 64 * 1024
    max_bulk: int = 512 * 1024 * 1024
    max_elements: int = 1024 * 1024
    max_depth: int = 32
    max_key: int = 250
    max_value: int = 1024 * 1024


DEFAULT_LIMITS = Limits()


class Request:
    """One complete request from a client.

    ``name`` is the command in the protocol's canonical spelling (Redis and FTP upper-case,
    memcached lower-case), ``args`` the arguments after it, ``data`` a memcached data block.
    ``session`` (the request changes the connection's session: SELECT, AUTH, HELLO, CWD ...) is
    set by the reader, because SINGLE mode records sessions for a later update.

    The rest of the parsed view tells the MVE engine how to order the request, and is filled by
    :meth:`Codec.describe` only when asked, since SINGLE mode never needs it:
    ``keys`` (what it touches), ``write`` (it changes them), ``is_global`` (it touches the whole
    data set, reading or, with ``write``, writing: FLUSHALL, KEYS, a script without declared keys),
    ``blocking`` (it may wait for another client's write: BLPOP, XREAD BLOCK). A request with no
    keys that is not global (PING, CLIENT SETNAME) needs no ordering at all.

    ``replies`` is how many final replies the server sends for it on a connection in its
    default state: 0 for a memcached ``noreply`` or quiet meta request (a quiet one still shows
    an error, or a hit for ``mg``), one per channel for a Redis SUBSCRIBE, ``None`` where it
    depends on the connection (UNSUBSCRIBE with no channel: one per subscription). The reply
    readers track that state and pair replies themselves; this tells a caller what to expect of
    one request alone. ``preliminary`` says 1xx replies may come before the final one (the FTP
    commands that open a data transfer).
    """

    __slots__ = (
        "args",
        "blocking",
        "data",
        "is_global",
        "keys",
        "name",
        "preliminary",
        "raw",
        "replies",
        "session",
        "write",
    )

    def __init__(
        self,
        raw: bytes,
        name: str,
        args: list[bytes],
        *,
        keys: tuple[bytes, ...] = (),
        write: bool = False,
        is_global: bool = False,
        session: bool = False,
        blocking: bool = False,
        data: bytes | None = None,
        replies: int | None = 1,
        preliminary: bool = False,
    ) -> None:
        self.raw = raw
        self.name = name
        self.args = args
        self.keys = keys
        self.write = write
        self.is_global = is_global
        self.session = session
        self.blocking = blocking
        self.data = data
        self.replies = replies
        self.preliminary = preliminary

    def __repr__(self) -> str:
        return f"<Request {self.name} {self.args[:4]!r}{'...' if len(self.args) > 4 else ''}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and self.raw == other.raw

    __hash__ = object.__hash__


class Reply:
    """One complete reply from a server.

    ``request`` is the request it answers, or ``None`` for what the server sends on its own
    (a RESP3 push, a RESP2 pub/sub message, an FTP greeting). ``final`` is false for a reply after
    which the same request gets more (an FTP 1xx). ``error`` marks an error reply. ``value`` is the
    parsed reply, in the codec's own representation; :meth:`Codec.canonical` gives the form that
    replies are compared in.
    """

    __slots__ = ("error", "final", "push", "raw", "request", "value")

    def __init__(
        self,
        raw: bytes,
        value: Any,
        *,
        request: Request | None = None,
        final: bool = True,
        error: bool = False,
        push: bool = False,
    ) -> None:
        self.raw = raw
        self.value = value
        self.request = request
        self.final = final
        self.error = error
        self.push = push

    def __repr__(self) -> str:
        return f"<Reply {self.raw[:40]!r}{'...' if len(self.raw) > 40 else ''}>"


# How many session requests a client's record keeps when its protocol cannot tell which of them
# still matter (see Codec.compact_session).
SESSION_KEPT = 64

Check = Callable[[Any, Any, float], bool]
"""Compares the canonical leader and follower replies, given the seconds between the two
executions: True when they agree (a TTL that ran down, a set in another order)."""


class Plan:
    """What the follower gets for one request, once the leader's reply is known (see
    :meth:`Codec.follower_plan`).

    ``words``: the command sent instead of the request (None: the request as it is).
    ``check``: how the two replies are compared (None: the ordinary comparison). Both None: the
    follower gets nothing. ``rule`` names the check in divergence records.
    """

    __slots__ = ("check", "rule", "words")

    effects: dict[int, Plan] = {}

    def __init__(self, words: list[bytes] | None = None, check: Check | None = None,
                 rule: str = ""):
        self.words = words
        self.check = check
        self.rule = rule


class TransactionPlan(Plan):
    """What the follower gets for the end of a transaction whose commands the leader's reply
    decides (see :meth:`Codec.transaction_plan`).

    ``before``: the requests sent ahead of it on the client's follower connection, in order;
    each is a list of words, or the index of a queued command that goes as it is (the engine
    sends the client's own request, so the config's rewrite rules apply to it as they did to
    its first sending). ``effects``: index in the transaction -> the plan whose words replaced
    that command; its check compares the two reply elements. ``words`` and ``check`` are None:
    the end of the transaction goes as it is, and its reply is compared element by element.
    """

    __slots__ = ("before", "effects")

    def __init__(self, before: list[list[bytes] | int], effects: dict[int, Plan],
                 rule: str = "builtin:random-effect"):
        super().__init__(rule=rule)
        self.before = before
        self.effects = effects


class OrderState:
    """How one client's requests are ordered during an update: what each touches.

    The engine orders a request after every earlier conflicting one (same key, one writing; a
    global one conflicts with all). :meth:`view` says what a request touches; a protocol whose
    connections carry state that changes that (a transaction, whose commands run at its end)
    keeps it here, one object per client (:meth:`Codec.order_state`). This default orders each
    request on its own, by what :meth:`Codec.describe` finds.

    ``solo``: the connection became a stream of the server's own (Redis MONITOR): served by the
    leader only, never compared. ``in_transaction``: the client is inside a transaction.
    """

    solo = False
    in_transaction = False

    def __init__(self, codec: Codec, table: Any = None):
        self.describe = codec.describe
        self.table = table

    def view(self, request: Request) -> tuple[tuple[bytes, ...], bool, bool, bool,
                                                tuple[Request, ...]]:
        """``(keys, write, is_global, queued, queue)`` for the client's next request:
        ``queued`` when it runs only later, with the end of its transaction, and ``queue`` the
        requests a transaction's end runs (then it touches what they touch)."""
        request = self.describe(request, self.table)
        return request.keys, request.write, request.is_global, False, ()


class Codec(abc.ABC):
    """Everything the relay and the MVE engine know about one protocol: the one interface they
    call, so that neither names a protocol or looks a hook up by name.

    A codec is stateless (what belongs to one connection lives in its readers); each protocol's
    package exposes one instance of its subclass as ``CODEC``. The hooks come in groups. The
    first group is required of every protocol. The others belong to features a protocol may
    lack; their defaults say "this protocol does not have it", and are exactly what the relay
    and the engine do for such a protocol, so a new protocol overrides only the features it
    has.

    ``name`` is the protocol's name in a config file (``[proxy] protocol``).
    """

    name: ClassVar[str]

    shared_connection: ClassVar[bool] = False
    """Whether, during an update, the clients whose session is the plain one share one
    connection per server instead of each having their own: the engine then opens those
    connections, asks :meth:`route` where each request goes and frames the shared replies with
    :meth:`shared_parser`. Left false, the engine never calls those two."""

    # ---- required: framing, errors, comparison, ordering, readiness ---------------------------

    @abc.abstractmethod
    def request_reader(self, limits: Limits = DEFAULT_LIMITS) -> RequestReader:
        """A reader for one client connection: the relay frames every client stream with one."""

    @abc.abstractmethod
    def reply_reader(self, limits: Limits = DEFAULT_LIMITS) -> ReplyReader:
        """A reader for one server connection: pairs each reply with the request it answers."""

    @abc.abstractmethod
    def error_reply(self, message: str) -> bytes:
        """A protocol-correct error carrying ``message`` (``-ERR``, ``SERVER_ERROR``, ``421``):
        what the relay answers a client with when no server can."""

    @abc.abstractmethod
    def canonical(self, reply: Reply) -> Any:
        """The reply's value in the form replies are compared in (encoding differences gone),
        so that two versions that say the same thing differently compare equal."""

    @abc.abstractmethod
    def describe(self, request: Request, table: Any = None) -> Request:
        """Fill in ``request``'s parsed view (keys, write, is_global, blocking, replies,
        preliminary) and return it: what the engine orders conflicting requests by. Readers
        leave it out because SINGLE mode never needs it.

        ``table`` is protocol-specific knowledge of the server's commands (for Redis, a table
        built from the server's own ``COMMAND`` reply); ``None`` uses the built-in one.
        """

    @abc.abstractmethod
    def probe(self) -> bytes:
        """What to send a fresh server connection to check it serves (``b""``: only listen,
        for a protocol whose server speaks first). The relay also reads an empty probe as
        "the server speaks first" on every connection."""

    @abc.abstractmethod
    def probe_ok(self, reply: Reply) -> bool:
        """Whether the reply to :meth:`probe` (or the greeting) says the server is ready."""

    # ---- SINGLE mode's unframed fast path -----------------------------------------------------

    def sentinel(self) -> tuple[bytes, bytes] | None:
        """A request and the exact reply it gets on a connection in the plain state, or None.

        With a sentinel, SINGLE mode forwards replies without framing them and, when it needs a
        reply boundary, sends the sentinel after the client's requests and waits for its reply.
        None (the default): this protocol's replies are always framed.
        """
        return None

    def plain(self, request: Request) -> bool:
        """Whether a connection whose replies go unframed stays in the plain state after
        ``request`` (else the relay frames its replies from then on). Only asked where
        :meth:`sentinel` is not None; the default, False, frames at once."""
        return False

    def plain_state(self, replies: ReplyReader, transaction: bool = False) -> bool:
        """Whether the connection whose replies ``replies`` frames is in the plain state, so
        that the relay may stop framing it (after an update) and the engine may let its client
        share connections (``transaction``: a transaction in progress does not count). The
        default, False, keeps every connection framed and on its own connections."""
        return False

    # ---- sessions -----------------------------------------------------------------------------

    def compact_session(self, session: list[Request]) -> list[Request]:
        """The session requests that still matter, keeping a long-lived client's record
        bounded. The default keeps the last :data:`SESSION_KEPT`; a protocol that knows which
        requests a later one overrides should say so."""
        return session[-SESSION_KEPT:]

    def replay(self, session: list[Request], replies: ReplyReader | None) -> list[bytes]:
        """The requests that give a new version's connection the session of the connection
        ``session`` was recorded on (``replies`` frames that connection's replies, None when
        they went unframed). The default, [], replays nothing: a protocol without sessions."""
        return []

    # ---- what the MVE engine asks -------------------------------------------------------------

    def make_request(self, words: list[bytes]) -> Request:
        """A request built from its words, as a client would have sent it: how the engine sends
        the follower a rewritten request or an effect, and polls for a blocking one.

        Raises:
            LocalProtocolError: by default: this protocol cannot build requests from words (the
                engine then sends the follower the client's request as it came).
        """
        raise LocalProtocolError(f"the {self.name} codec cannot build a request from words")

    def order_state(self, replies: ReplyReader | None, table: Any = None) -> OrderState:
        """A new :class:`OrderState` for a client joining an update, whose connection's replies
        ``replies`` framed so far (a client in the middle of a transaction resumes it). The
        default orders each request on its own."""
        return OrderState(self, table)

    def follower_plan(self, request: Request, leader_value: Any, in_multi: bool
                      ) -> Plan | None:
        """What the follower gets for ``request`` once the leader's reply value is known, when
        not the request as it is compared as it is (a :class:`Plan`: the leader's effect, a
        looser check, or nothing). The default, None: a protocol without non-deterministic
        requests."""
        return None

    def transaction_plan(self, queue: Sequence[Request], leader_value: Any
                         ) -> TransactionPlan | None:
        """What the follower gets for the end of a transaction that ran ``queue`` on the
        leader, when its queued requests cannot go as they went (a :class:`TransactionPlan`).
        The default, None: as it is (a protocol without transactions)."""
        return None

    def route(self, request: Request) -> str | None:
        """During an update, for a client whose session is the plain one: ``"shared"`` (it may
        go on the connection every plain client shares), ``"own"`` (on the client's own
        connection), ``"session"`` (on its own, and the client's later requests too),
        ``"begin"``/``"end"`` (on its own until the transaction it begins ends). Asked only
        where :attr:`shared_connection` is true; the default, None: this protocol has no shared
        connection."""
        return None

    def shared_parser(self, limits: Limits = DEFAULT_LIMITS) -> Any:
        """The reply framer of an update's shared connection (see :attr:`shared_connection`).

        Raises:
            LocalProtocolError: by default: this protocol has no shared connection.
        """
        raise LocalProtocolError(f"the {self.name} codec has no shared connection")

    def reply(self, value: Any, raw: bytes, request: Request | None = None) -> Reply:
        """A :class:`Reply` for a value and its bytes as the reply reader would make it: how the
        engine turns what :meth:`shared_parser` framed into replies it can compare."""
        return Reply(raw, value, request=request)

    def blocking(self, request: Request, table: Any = None) -> Any:
        """How the proxy waits itself for a request that may block (an object with ``poll``,
        the words of a non-blocking attempt, and ``timeout``), so that both versions serve
        waiting clients in the same order. The default, None: the request goes as it is (a
        protocol without blocking requests)."""
        return None
