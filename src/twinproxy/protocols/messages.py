"""The messages every protocol frames: requests, replies, the errors readers raise, limits.

Rules every reader keeps (:mod:`twinproxy.protocols.reader` holds their common base):

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

from dataclasses import dataclass
from typing import Any


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
    inline limit). ``max_bulk``: one Redis bulk string (512 MiB, ``proto-max-bulk-len``); also a
    memcached multi-get line, which memcached reads whole however long it is, and the bytes of one
    FTP reply. ``max_elements``: one Redis array or map (2**31 - 1, redis-server 7.0's multibulk
    limit; 6.2 refuses more than 1M itself). ``max_depth``: nesting of Redis replies.
    ``max_key``: a memcached key (250 bytes). ``max_value``: one memcached data block (1 MiB, the
    default ``-I`` item size); a larger one is answered as memcached answers an item over its own
    item size.
    """

    max_line: int = 64 * 1024
    max_bulk: int = 512 * 1024 * 1024
    max_elements: int = (1 << 31) - 1
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

    ``answer`` is set on a request that a reader makes in place of one the proxy answers itself
    (memcached: a value over ``max_value``, a key over ``max_key``): ``raw`` is then what the
    server gets instead (possibly a request with an effect of the one it replaces), and the client
    gets ``answer`` (possibly empty) where the server's reply to it would go. A caller that cannot
    put it there asks the reader to refuse such requests instead (``RequestReader.receive``).

    ``sent`` is when a blocking request first went to a server (the relay's monotonic clock;
    0 until then), so that one the proxy sends again waits only for what is left of its
    timeout (``Codec.time_left``).
    """

    __slots__ = (
        "answer",
        "args",
        "blocking",
        "data",
        "is_global",
        "keys",
        "name",
        "preliminary",
        "raw",
        "replies",
        "sent",
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
        answer: bytes | None = None,
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
        self.answer = answer
        self.sent = 0.0

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
