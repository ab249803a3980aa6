"""The memcached codec: text and meta protocols, sans-IO.

The readers live in :mod:`.requests` (client side) and :mod:`.replies` (server
side, with the pairing of quiet meta requests described there); the command table they share is
:mod:`.commands`. This module is the codec the proxy uses: the parsed view for the MVE
engine, the canonical form replies are compared in, and builders for requests and replies.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from twinproxy.protocols.base import SKIP, Codec, Plan
from twinproxy.protocols.memcache.commands import (
    BY_NAME,
    ERRORS,
    MG_WRITE_FLAGS,
    decode_key,
    meta_flags,
    reply_count,
)
from twinproxy.protocols.memcache.expiry import absolute_expiry
from twinproxy.protocols.memcache.replies import MemcacheReplyReader
from twinproxy.protocols.memcache.requests import MemcacheRequestReader, c_absolute
from twinproxy.protocols.memcache.shared import SHARED_NAMES, SMALL_REPLY_NAMES, SharedReplies
from twinproxy.protocols.memcache.tokens import (
    OldTokens,
    follower_tokens,
    token_pairs,
    token_plan,
)
from twinproxy.protocols.memcache.values import Meta, Stats, Values
from twinproxy.protocols.messages import (
    DEFAULT_LIMITS,
    Limits,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    Request,
)
from twinproxy.protocols.reader import ReplyReader


class MemcacheCodec(Codec):
    """memcached's text and meta protocols (memcached 1.6); stateless, one instance: ``CODEC``."""

    name: ClassVar[str] = "memcache"
    server_names: ClassVar[bool] = True  # CAS tokens: see :mod:`.tokens`
    shared_connection: ClassVar[bool] = True  # see :mod:`.shared` and ``route``

    def request_reader(self, limits: Limits = DEFAULT_LIMITS) -> MemcacheRequestReader:
        """A reader for one client connection."""
        return MemcacheRequestReader(limits)

    def reply_reader(self, limits: Limits = DEFAULT_LIMITS) -> MemcacheReplyReader:
        """A reader for one server connection."""
        return MemcacheReplyReader(limits)

    def error_reply(self, message: str) -> bytes:
        """``SERVER_ERROR <message>``: memcached's own shape for a failure on the server's side,
        which every client library reports with its text. Line ends in the message become spaces.
        """
        text = " ".join(message.splitlines()).encode("utf-8", "replace")
        return b"SERVER_ERROR " + text + b"\r\n"

    def canonical(self, reply: Reply) -> Any:
        """The reply as plain hashable tuples, tagged by shape, so replies compare field by field.

        * ``("line", b"STORED")``; ``("number", 42)`` for incr/decr;
          ``("error", b"CLIENT_ERROR", b"bad data chunk")``;
        * ``("values", (Item(key, flags, data, cas), ...), end)``: ``cas`` is its own field (None
          for get/gat) because CAS ids differ between servers; ``end`` is ``("line", b"END")`` or
          the error that cut the block short;
        * ``("meta", code, flags, data)`` with the flags as sorted ``(letter, token)`` pairs, so a
          rule can drop ``c`` (CAS) or ``t`` (TTL left); a quiet request's hidden outcome is
          ``("meta", b"EN" or b"HD", (), None)``;
        * ``("debug", key, ((name, value), ...))`` for ``me``;
        * ``("stats", lines, end)`` with STAT lines as ``(name, value)`` pairs.
        """
        return canonical_value(reply.value)

    def describe(self, request: Request, table: Any = None) -> Request:
        """Fill in ``keys``, ``write``, ``is_global`` and ``replies`` (memcached never blocks) and
        return it.

        Writes: storage, delete, incr/decr, touch, gat/gats, ms/md/ma, and mg with a flag that
        changes the item (T, N, R, E). ``flush_all`` writes everything; so do ``cache_memlimit``,
        ``slabs`` and ``shutdown`` (memory moved or lost), and the other administrative commands
        read everything (the LRU settings, the crawler's dump). stats, version, verbosity, watch,
        mn and quit touch no data; ``me`` reads its key's metadata. ``table`` is unused:
        memcached's commands are fixed.
        """
        cmd = BY_NAME.get(request.name)
        if cmd is None:
            raise LocalProtocolError(f"not a memcached command this codec knows: {request.name!r}")
        args = request.args
        request.blocking = False
        request.write = cmd.write
        request.is_global = cmd.is_global
        request.replies = reply_count(cmd, args)
        if cmd.meta:
            if cmd.key_args is None or not args:
                request.keys = ()
                return request
            flags = meta_flags(cmd, args)
            request.keys = (decode_key(args[0], flags),)
            if cmd.name == "mg":
                request.write = any(f[:1] and f[0] in MG_WRITE_FLAGS for f in flags)
        elif cmd.key_args is not None:
            request.keys = tuple(args[cmd.key_args])
        else:
            request.keys = ()
        return request

    def make_request(self, words: list[bytes]) -> Request:
        """A request from its words; for a command with a data block (storage commands,
        ``ms``), the block is the last word. The words are a request the proxy read already,
        rewritten (a CAS token, an expiry): its value, which the reader took under the
        config's ``max_value``, is not held to the default's 1 MiB again."""
        if not words:
            raise LocalProtocolError("no words for a memcached request")
        name = words[0].decode("latin-1")
        cmd = BY_NAME.get(name)
        if cmd is not None and cmd.size_at is not None:
            data = words[-1]
            limits = DEFAULT_LIMITS if len(data) <= DEFAULT_LIMITS.max_value else \
                replace(DEFAULT_LIMITS, max_value=len(data))
            return make_request(name, *words[1:-1], data=data, limits=limits)
        return make_request(name, *words[1:])

    def follower_plan(self, request: Request, leader_value: Any, in_multi: bool,
                      at: float = 0.0) -> Plan | None:
        """A reply that shows CAS tokens is compared without them (:func:`.tokens.token_plan`);
        an expiry in seconds from now reaches the follower as the unix time it was on the
        leader (:func:`.expiry.absolute_expiry`). ``quit`` is not sent: the proxy closes the
        client's follower connection itself once the client is gone and that connection
        answered what came before (as for Redis's QUIT), and a client that connected during
        the update may have none (memcslap ends every connection with quit)."""
        if request.name == "quit":
            return SKIP
        plan = token_plan(request)
        words = absolute_expiry(request, at) if request.write else None
        if words is None:
            return plan
        if plan is None:
            return Plan(words)
        return Plan(words, plan.check, plan.rule, plan.same)

    def follower_run(self, raw: bytes, at: float) -> bytes:
        """A run whose stores set expiries in seconds from now reaches the follower with them
        as the unix time they were on the leader, as :meth:`follower_plan` sends such a store
        alone (``_scan.c``'s ``absolute``). Without it, sets with a time to live (the common
        cache write) went request by request during an update. ``at`` 0 (unknown): as they
        came."""
        if not at or c_absolute is None:
            return raw
        return c_absolute(raw, int(at))

    def server_ids(self, request: Request, leader_value: Any, follower_value: Any
                   ) -> Sequence[tuple[Any, Any]]:
        """The two servers' CAS tokens of each item version a reply shows."""
        return token_pairs(request, leader_value, follower_value)

    def follower_ids(self, request: Request, ids: Mapping[Any, Any], leader_value: Any = None
                     ) -> list[bytes] | None:
        """A ``cas`` (or meta ``C``) with the follower's token for the same item version."""
        return follower_tokens(request, ids, leader_value)

    def after_cutover(self, ids: Mapping[Any, Any]) -> OldTokens | None:
        """The CAS tokens clients took from the old version, translated for a while after the
        cutover (:class:`.tokens.OldTokens`)."""
        return OldTokens(ids, self) if ids else None

    def route(self, request: Request) -> str:
        """During an update: ``"shared"`` for the requests whose replies frame without them
        (:data:`.shared.SHARED_NAMES`), with ``noreply`` too (pymemcache's stores say it by
        default: those get no reply at all); ``"session"`` for the other requests that may get
        no reply (``touch``, ``flush_all`` ... with ``noreply``, a quiet meta request, which
        shows some outcomes) and for
        ``watch`` (the connection becomes a log stream); ``"own"`` for the rest (cas, the other
        meta requests, quit, the administrative commands). memcached keeps no session state on
        a connection, so which connection a request takes changes only the framing, but a
        request with no reply is settled when the reply after it on its connection comes: a
        later request of the client on another connection could reach the server first, so the
        client stays on that connection from then on (the shared one's next reply settles a
        ``noreply`` request there, or the engine's own ``mn``: see Dispatch._shared_replies;
        such stores travel in runs too, ``MemcacheRequestReader.count_run``)."""
        name = request.name
        args = request.args
        if name in SHARED_NAMES:  # (noreply or not)
            return "shared"
        if b"noreply" in args or name == "watch":
            return "session"
        if name in _META and b"q" in args[1:]:
            return "session"
        return "own"

    def small_reply(self, request: Request) -> bool:
        """The storage commands, delete, incr, decr and version: a status or a number."""
        return request.name in SMALL_REPLY_NAMES

    def shared_parser(self, limits: Limits = DEFAULT_LIMITS) -> SharedReplies:
        """The reply framer of an update's shared connection (:class:`.shared.SharedReplies`)."""
        return SharedReplies(limits)

    def reply(self, value: Any, raw: bytes, request: Request | None = None) -> Reply:
        """A :class:`Reply` for a value and its bytes, as the reply reader would make it."""
        error = isinstance(value, bytes) and value.split(b" ", 1)[0] in ERRORS
        return Reply(raw, value, request=request, error=error)

    def sentinel(self) -> tuple[bytes, bytes]:
        """A request, and the exact reply it gets: ``mg`` of a random key with a random opaque
        token, which memcached echoes in its miss, ``EN O<token>`` (1.6.18, Debian's, does).

        With it SINGLE mode forwards replies unframed, as for Redis (``relay/single.py``), and
        sends it when it must know that every earlier reply is out: memcached answers in order,
        quiet requests' hidden outcomes and ``noreply`` included, and no reply of a client's
        can end the same way, since the token is unguessable. A memcached that answers it
        otherwise (an older one, without the echo) is found out when it comes up
        (``backends.sentinel_works``) and has its replies framed. Each one counts as a
        ``get_misses`` in memcached's stats, as Redis counts its ECHO; it goes only where the
        proxy must wait for the replies owed (a drain, a bad request, an update's start, a
        request the proxy answers itself)."""
        token = secrets.token_hex(15).encode()  # memcached takes opaque tokens of 31 bytes
        key = b"twinproxy-settle-" + secrets.token_hex(16).encode()
        return b"mg %s O%s\r\n" % (key, token), b"EN O%s\r\n" % token

    def plain(self, request: Request) -> bool:
        """Whether a connection whose replies go unframed may stay so after ``request``: every
        request but ``watch`` (after which the server streams its log and reads nothing: the
        relay must know it) and ``shutdown`` (answered by the close, which the relay answers
        for each request owed a reply: it must count them)."""
        return request.name not in _FRAMING

    def plain_state(self, replies: ReplyReader, transaction: bool = False) -> bool:
        """Whether the connection may go back to unframed replies: anything but a log stream.
        (memcached has no session state that changes how replies are framed.)"""
        return not replies.streaming

    def settle_request(self) -> Request:
        """``mn``: memcached answers it after every request before it, quiet ones settled, and
        its ``MN`` goes to no client (``answer`` is empty)."""
        return Request(b"mn\r\n", "mn", [], answer=b"")

    def probe(self) -> bytes:
        """``version``: answered by every memcached that serves, without touching data."""
        return b"version\r\n"

    def probe_ok(self, reply: Reply) -> bool:
        """Whether the reply is a VERSION line."""
        value = reply.value
        return isinstance(value, bytes) and value.startswith(b"VERSION ")


CODEC = MemcacheCodec()

_META = frozenset(("mg", "ms", "md", "ma", "me"))

# The requests after which the relay frames a connection's replies (see MemcacheCodec.plain).
_FRAMING = frozenset(("watch", "shutdown"))


# -- canonical form ------------------------------------------------------------------------------


def _line(line: bytes) -> tuple:
    code, _, rest = line.partition(b" ")
    if code in ERRORS:
        return ("error", code, rest)
    if line.isdigit() and len(line) <= 20:
        return ("number", int(line))
    return ("line", line)


def _pairs(tokens: tuple[bytes, ...]) -> tuple[tuple[str, bytes], ...]:
    return tuple(sorted((chr(t[0]), t[1:]) for t in tokens if t))


def canonical_value(value: Any) -> Any:
    """:meth:`MemcacheCodec.canonical` of a reply's value."""
    if isinstance(value, bytes):
        return _line(value)
    if isinstance(value, Values):
        end = ("line", value.end) if value.end == b"END" else _line(value.end)
        return ("values", value.items, end)
    if isinstance(value, Meta):
        if value.code == b"ME" and value.flags:
            pairs = tuple(tuple(t.partition(b"=")[::2]) for t in value.flags[1:])
            return ("debug", value.flags[0], pairs)
        return ("meta", value.code, _pairs(value.flags), value.data)
    if isinstance(value, Stats):
        lines = tuple((parts[1], parts[2]) if len(parts) == 3 and parts[0] == b"STAT" else line
                      for line in value.lines for parts in (line.split(b" ", 2),))
        return ("stats", lines, _line(value.end))
    return None


# -- builders ------------------------------------------------------------------------------------


def _token(arg: bytes | str | int) -> bytes:
    token = arg if isinstance(arg, bytes) else str(arg).encode()
    if not token or any(c in token for c in b" \r\n\0"):
        raise LocalProtocolError(f"not a memcached token: {token[:60]!r}")
    return token


def encode_request(name: str, *args: bytes | str | int, data: bytes | None = None) -> bytes:
    """A request's bytes: ``name args...\\r\\n``, then ``data`` and CRLF when given.

    The size token of a storage command (or ``ms``) is the caller's to write; :func:`make_request`
    checks the whole request.

    Raises:
        LocalProtocolError: an argument is empty or holds a space, CR, LF or NUL.
    """
    line = b" ".join([_token(name), *map(_token, args)]) + b"\r\n"
    return line if data is None else line + data + b"\r\n"


def make_request(name: str, *args: bytes | str | int, data: bytes | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> Request:
    """A :class:`Request` as the request reader would frame it (for tests and for the proxy's own
    requests, such as rewritten ones for the follower).

    Raises:
        LocalProtocolError: the bytes would not frame as exactly this one request.
    """
    raw = encode_request(name, *args, data=data)
    reader = MemcacheRequestReader(limits)
    try:
        got = reader.receive(raw)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"not a valid memcached request: {exc}") from exc
    if len(got) != 1 or got[0].raw != raw or reader.buffered:
        raise LocalProtocolError(f"not exactly one memcached request: {raw[:60]!r}")
    return got[0]


def encode_reply(value: Any) -> bytes:
    """The bytes a server sends for a reply value of this codec (inverse of the reply reader).

    Raises:
        LocalProtocolError: a value this codec does not produce.
    """
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value + b"\r\n"
    if isinstance(value, Values):
        out = []
        for item in value.items:
            head = b"VALUE %s %d %d" % (item.key, item.flags, len(item.data))
            if item.cas is not None:
                head += b" %d" % item.cas
            out.append(head + b"\r\n" + item.data + b"\r\n")
        out.append(value.end + b"\r\n")
        return b"".join(out)
    if isinstance(value, Meta):
        head = [value.code]
        if value.code == b"VA":
            if value.data is None:
                raise LocalProtocolError("a VA reply needs its data")
            head.append(b"%d" % len(value.data))
        line = b" ".join(head + list(value.flags)) + b"\r\n"
        return line if value.code != b"VA" else line + value.data + b"\r\n"  # type: ignore[operator]
    if isinstance(value, Stats):
        return b"".join(line + b"\r\n" for line in value.lines) + value.end + b"\r\n"
    raise LocalProtocolError(f"not a memcached reply value: {value!r}")
