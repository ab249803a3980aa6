"""The Redis codec: what the proxy and the MVE engine ask of Redis, exposed as :data:`CODEC`.

The framing, pairing and knowledge of commands it answers from live in the other modules of
this package (see its ``__init__``); this module only puts them behind the codec's interface.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from twinproxy.protocols.base import Codec, Plan, TransactionPlan
from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, Reply, Request
from twinproxy.protocols.reader import ReplyReader
from twinproxy.protocols.redis import fast
from twinproxy.protocols.redis.commands import CommandTable, builtin_table
from twinproxy.protocols.redis.commands import describe as _describe
from twinproxy.protocols.redis.effects import (
    absolute_expiry,
    follower_ids,
    follower_plan,
    kills_script,
    renamed_plan,
    server_ids,
    transaction_plan,
)
from twinproxy.protocols.redis.names import ALWAYS_BLOCKING, HOLDING, LOOSE
from twinproxy.protocols.redis.names import SESSION_CLIENT as CONNECTION_CLIENT
from twinproxy.protocols.redis.names import small_reply as names_small_reply
from twinproxy.protocols.redis.order import RedisOrderState
from twinproxy.protocols.redis.ownstats import (
    PROBE,
    counts_requests,
    resets_counts,
    tally,
    without_probes,
)
from twinproxy.protocols.redis.replay import compact, replay, select
from twinproxy.protocols.redis.replies import RespReplyParser
from twinproxy.protocols.redis.reply_reader import RespReplyReader
from twinproxy.protocols.redis.requests import RespRequestReader, make_request
from twinproxy.protocols.redis.scripts import Scripts
from twinproxy.protocols.redis.session import (
    ConnectionState,
    auth_user,
    hello_login,
    selected_database,
)
from twinproxy.protocols.redis.timeouts import time_left
from twinproxy.protocols.redis.types import RespError, SimpleString, canonical, encode_command

_SETTLE = b"twinproxy-settle-"  # how every sentinel's token begins
_SETTLE_SHOWN = b'"ECHO" "' + _SETTLE  # a MONITOR line's end for the sentinel's ECHO
_HELLO_2 = encode_command(b"HELLO", b"2")  # what puts the shared connection in each dialect
_HELLO_3 = encode_command(b"HELLO", b"3")

# Requests after which SINGLE mode must frame a connection's replies: they change how replies
# are framed (RESP3 pushes, subscribe mode, replies switched off, MONITOR's stream), or would
# turn the sentinel's ECHO into something else (queued in MULTI, refused before AUTH). And
# SELECT: an update that starts must know which database a client is in (its reply says whether
# it was chosen), to share it a connection in that one.
FRAMING = frozenset({"HELLO", "AUTH", "SELECT", "MULTI", "SUBSCRIBE", "UNSUBSCRIBE",
                     "PSUBSCRIBE", "PUNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE", "MONITOR",
                     "RESET"})
# A blocking command too: an update that starts while a client waits must know what it waits for.

# During an update, requests that change a connection's session in a way later requests depend on
# (database, subscriptions, reply mode ...): the client keeps its own server connections from
# then on (a login, the protocol and the database are the exceptions: see route). And requests
# whose reply is about the connection itself: they go on the client's own connections, the
# client's other requests may still be shared.
SESSION_ROUTE = (FRAMING - {"MULTI", "AUTH", "HELLO", "SELECT"}) | {"READONLY", "READWRITE",
                                                                    "QUIT"}
# A transaction (and what it WATCHes) lives on one connection only until it ends.
TRANSACTION_START = {"MULTI", "WATCH"}
TRANSACTION_END = {"EXEC", "DISCARD", "UNWATCH"}
NAMING_CLIENT = frozenset({b"SETNAME", b"SETINFO"})
# CLIENT subcommands that set what the server does for the connection's later requests (every
# one that changes the connection but its names): those must run on the connection that has it
# (NO-EVICT: the one the server may not close for memory; NO-TOUCH: the one whose reads leave the
# keys' access times), so the client leaves the shared one.
SESSION_CLIENT = CONNECTION_CLIENT - NAMING_CLIENT
OWN_ROUTE = {"CLIENT", "INFO", "WAIT", "WAITAOF", "ROLE", "XREAD", "DEBUG", "SHUTDOWN",
             "FAILOVER", "REPLICAOF", "SLAVEOF", "PSYNC", "SYNC"}
FRAMING_CLIENT = frozenset({b"REPLY", b"TRACKING", b"CACHING"})
RELOADS = frozenset({b"RELOAD", b"LOADAOF"})  # DEBUG subcommands that load the dataset again


class RespCodec(Codec):
    """The Redis codec: stateless, one instance (:data:`CODEC`)."""

    name: ClassVar[str] = "redis"
    # During an update, plain clients share one connection per server (see route()).
    server_names: ClassVar[bool] = True  # connection ids (CLIENT ID, TRACKING's REDIRECT)
    shared_connection: ClassVar[bool] = True
    counting_names: ClassVar[frozenset[str]] = frozenset(("INFO", "CONFIG"))  # (ownstats)

    def request_reader(self, limits: Limits = DEFAULT_LIMITS) -> RespRequestReader:
        """A reader for one client connection."""
        return RespRequestReader(limits)

    def reply_reader(self, limits: Limits = DEFAULT_LIMITS) -> RespReplyReader:
        """A reader for one server connection."""
        return RespReplyReader(limits)

    def learner(self) -> Scripts:
        """The scripts clients give the server, which its snapshot does not carry."""
        return Scripts()

    def error_reply(self, message: str) -> bytes:
        """``-ERR message`` (CR and LF become spaces, as redis-server does with its own)."""
        text = message.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        return b"-ERR " + text + b"\r\n"

    def canonical(self, reply: Reply) -> Any:
        """The reply's value with RESP2/RESP3 differences gone (see :mod:`.types`)."""
        return canonical(reply.value)

    def describe(self, request: Request, table: CommandTable | None = None) -> Request:
        """Fill ``request``'s keys, write, is_global and blocking; return it.

        ``table`` is built from the server's ``COMMAND`` reply with
        :meth:`CommandTable.from_command_reply`; None uses the built-in (7.0) table.
        """
        return _describe(request, table if table is not None else builtin_table())

    def probe(self) -> bytes:
        """A PING."""
        return PROBE

    def sentinel(self) -> tuple[bytes, bytes]:
        """A request, and the exact reply it gets on a connection in the plain state.

        An ``ECHO`` of a random token: the proxy sends it after a client's requests and knows
        that every earlier reply is out when the stream ends with its reply. The token is
        unguessable, so no reply of the client's can end the same way by chance or on purpose.
        """
        token = _SETTLE + secrets.token_hex(16).encode()
        return encode_command(b"ECHO", token), b"$%d\r\n%s\r\n" % (len(token), token)

    def refused_sentinel(self) -> tuple[bytes, bytes]:
        """A command no server has, named by a random token: redis-server answers ``-ERR
        unknown command '<token>' ...`` before it looks whether it is busy, loading or waiting
        for a password, so this answer comes in every state (6.2 and 7.0 word it differently;
        the relay learns the wording). It is counted in ``INFO errorstats``: only for while a
        script may be running."""
        token = _SETTLE + secrets.token_hex(16).encode()
        return encode_command(token), token

    def may_hold(self, request: Request) -> bool:
        """A script or function call, or EXEC (which may run one): past ``busy-reply-threshold``
        (``lua-time-limit``) redis-server answers ``-BUSY`` to nearly every other request."""
        return request.name in HOLDING

    # ---- what the MVE engine asks (see twinproxy.engine) --------------------------------------

    def refused_for_now(self, raw: bytes) -> bool:
        """``-LOADING ...`` (the server loads its dataset) or ``-BUSY ...`` (a script runs past
        its time limit)."""
        return raw.startswith((b"-LOADING ", b"-BUSY "))

    def quiesces(self, request: Request) -> bool:
        """``DEBUG RELOAD`` and ``DEBUG LOADAOF``: the server loads its dataset again and
        answers ``-LOADING`` to everything else until it is done."""
        return request.name == "DEBUG" and bool(request.args) and \
            request.args[0].upper() in RELOADS

    def make_request(self, words: list[bytes]) -> Request:
        """A request built from its words, as a client would have sent it."""
        return make_request(encode_command(*words), list(words))

    def order_state(self, replies: ReplyReader | None, table: CommandTable | None = None
                    ) -> RedisOrderState:
        """A client's transaction and watched keys, resumed from its connection's state; see
        :mod:`.order`."""
        state = replies.state if isinstance(replies, RespReplyReader) else None
        return RedisOrderState(self, table, state)

    def follower_plan(self, request: Request, leader: Any, in_multi: bool, at: float = 0.0
                      ) -> Plan | None:
        """What the follower gets for ``request``; see :mod:`.effects`."""
        return follower_plan(request, leader, in_multi, at)

    def follower_run(self, raw: bytes, at: float) -> bytes:
        """A run with an EX or PX argument (a cache's ``SET k v EX 300``): each request that
        sets an expiry relative to when it runs gets the leader's moment instead, as it would
        alone (:func:`.effects.absolute_expiry`); the rest as it came. In C where built
        (``_scan.c``'s ``absolute``; framing the run again in Python cost 13 us a SET, more than
        the request-by-request path it replaces), else framed again. ``at`` 0 (unknown): as
        it came."""
        if not at:
            return raw
        if fast.c_absolute is not None:
            return fast.c_absolute(raw, int(at * 1000))
        out = []
        for request in self.request_reader().receive(raw):
            words = absolute_expiry(request, at)
            out.append(request.raw if words is None else encode_command(*words))
        return b"".join(out)

    def server_ids(self, request: Request, leader_value: Any, follower_value: Any
                   ) -> Sequence[tuple[Any, Any]]:
        """The two servers' ids of one connection, from CLIENT ID or CLIENT INFO."""
        return server_ids(request, leader_value, follower_value)

    def follower_ids(self, request: Request, ids: Mapping[Any, Any], leader_value: Any = None
                     ) -> list[bytes] | None:
        """CLIENT TRACKING's REDIRECT and CLIENT LIST ID's ids, as the follower's; see
        :func:`.effects.follower_ids`."""
        return follower_ids(request, ids)

    def same_push(self, leader: Any, follower: Any, ids: Mapping[Any, Any]) -> bool:
        """``tracking-redir-broken`` pushes that name the same connection, each by its own
        server's id (learned from the CLIENT ID both answered)."""
        return (type(leader) is tuple and type(follower) is tuple and len(leader) == 2
                and len(follower) == 2 and leader[0] == follower[0] == b"tracking-redir-broken"
                and leader[1] in ids and ids[leader[1]] == follower[1])

    def renamed_plan(self, request: Request, plan: Plan | None) -> Plan | None:
        """CLIENT LIST ID with the follower's ids: compared field by field; see
        :func:`.effects.renamed_plan`."""
        return renamed_plan(request, plan)

    def own_request_shown(self, reply: Reply) -> bool:
        """A MONITOR line for a sentinel's ``ECHO`` (an unknown command, the other sentinel,
        never reaches MONITOR: Redis refuses it before it runs)."""
        value = reply.value
        return type(value) is SimpleString and _SETTLE_SHOWN in value

    def time_left(self, request: Request, elapsed: float) -> None:
        """What is left of a blocking command's timeout; see :mod:`.timeouts`."""
        time_left(request, elapsed)

    def counts_requests(self, request: Request) -> bool:
        """INFO and CONFIG RESETSTAT; see :mod:`.ownstats`."""
        return counts_requests(request)

    def resets_counts(self, request: Request) -> bool:
        """CONFIG RESETSTAT."""
        return resets_counts(request)

    def without_probes(self, raw: bytes, probes: int, sentinels: int = 0,
                       own: Mapping[bytes, tuple[int, int, int]] | None = None) -> bytes:
        """INFO's reply without the proxy's PINGs, sentinels and the update's own requests;
        see :mod:`.ownstats`."""
        return without_probes(raw, probes, sentinels, *_SENTINEL_SIZES, own=own)

    def transaction_plan(self, queue: Sequence[Request], leader: Any) -> TransactionPlan | None:
        """What the follower gets for an EXEC that ran ``queue`` on the leader (None: EXEC as
        it is); see :func:`.effects.transaction_plan`."""
        return transaction_plan(queue, leader)

    def route(self, request: Request) -> str:
        """During an update: ``"shared"`` (it may go on the connection every plain client
        shares), ``"own"`` (on the client's own connection), ``"session"`` (on its own, and
        the client's later requests too: its session is no longer the shared one), or
        ``"begin"``/``"end"`` (on its own, as the client's requests are until the transaction
        that ``begin`` starts ends with ``end``), ``"dialect"`` (HELLO and SELECT: a client
        whose session has them shares in its protocol and database; HELLO's SETNAME names the
        client's own connection), or
        ``"login"`` (AUTH, or HELLO with AUTH: a client logged in as the user the shared
        connection is shares it)."""
        name = request.name
        if name == "AUTH" or (name == "HELLO" and hello_login(request.args) is not None):
            return "login"
        if name == "HELLO" or name == "SELECT":
            return "dialect"
        if name in SESSION_ROUTE:
            return "session"
        if name in TRANSACTION_START:
            return "begin"
        if name in TRANSACTION_END:
            return "end"
        if name == "CLIENT":
            return "session" if request.args and request.args[0].upper() in SESSION_CLIENT \
                else "own"
        if name in OWN_ROUTE or kills_script(name, request.args):
            return "own"
        return "shared"

    def names_connection(self, request: Request) -> bool:
        """CLIENT SETNAME and CLIENT SETINFO: only CLIENT LIST and CLIENT INFO show them."""
        return request.name == "CLIENT" and bool(request.args) and \
            request.args[0].upper() in NAMING_CLIENT

    def small_reply(self, request: Request) -> bool:
        """SET (without a GET argument), INCR, DEL, HSET ...: see ``names.SMALL_REPLY``."""
        return names_small_reply(request.name, request.args)

    def loose_run(self, raw: bytes) -> bool:
        """A run with SMEMBERS, HGETALL ... (``names.LOOSE``: each server gives their members
        in its own order). Asked only of a run whose replies grew large: it is framed again."""
        return any(r.name in LOOSE for r in self.request_reader().receive(raw))

    def shared_parser(self, limits: Limits = DEFAULT_LIMITS) -> RespReplyParser:
        """The reply framer of an update's shared connection (plain state: one reply per
        request, in order; ``take`` frames runs as bytes)."""
        return RespReplyParser(limits)

    def reply(self, value: Any, raw: bytes, request: Request | None = None) -> Reply:
        """A :class:`Reply` for a value and its bytes, as the reply reader would make it."""
        return Reply(raw, value, request=request, error=type(value) is RespError)

    def replay(self, session: list[Request], replies: RespReplyReader | None) -> list[bytes]:
        """The requests that give a new connection this session; see :mod:`.replay`."""
        return replay(session, replies.state if replies is not None else None)

    def compact_session(self, session: list[Request]) -> list[Request]:
        """The session requests that still matter (keeps a client's record bounded)."""
        return compact(session)

    def plain_state(self, replies: RespReplyReader, transaction: bool = False) -> bool:
        """Whether a connection whose replies this reader frames is in the plain state
        (not subscribed, replies on, not MONITOR, and no transaction unless ``transaction``),
        in RESP2 or RESP3. Unframed, the relay passes bytes, RESP3's pushes among them, and
        the sentinel's reply is the same bulk string in both protocols; during an update the
        shared connection speaks the client's protocol in its database (:meth:`dialect`). A
        connection whose database is not known (a SELECT that got no reply) is not plain."""
        state = replies.state
        return state.db is not None and _in_order(state, transaction)

    def dialect(self, replies: RespReplyReader) -> object:
        """The protocol and the database: 3 for RESP3 (redis-py 8 asks it on every connection),
        None for RESP2, and in a database other than 0 the pair ``(protocol, database)``."""
        state = replies.state
        return _dialect(3 if state.resp3 else None, state.db or 0)

    def dialect_after(self, request: Request, reply: Reply, before: object) -> object:
        """HELLO 3 or HELLO 2 answered (a map or an array), or SELECT answered; an error, or
        AUTH, changes nothing."""
        if reply.error or not request.args:
            return before
        protocol, db = _parts(before)
        if request.name == "SELECT":
            chosen = selected_database(request.args)
            return before if chosen is None else _dialect(protocol, chosen)
        if request.name != "HELLO" or not request.args[0].strip().isdigit():
            return before
        version = int(request.args[0])  # (as redis-server reads it: HELLO 03 is HELLO 3)
        return _dialect(3, db) if version == 3 else _dialect(None, db) if version == 2 \
            else before

    def switch_dialect(self, dialect: object, current: object) -> bytes:
        """HELLO 3 or HELLO 2 where the protocol differs, SELECT where the database does."""
        protocol, db = _parts(dialect)
        was_protocol, was_db = _parts(current)
        raw = b""
        if protocol != was_protocol:
            raw = _HELLO_3 if protocol == 3 else _HELLO_2
        if db != was_db:
            raw += select(db)
        return raw

    def count_own(self, own: dict[Any, tuple[int, int, int]], request: Request,
                  reply: bytes) -> None:
        """Under the name redis-server's INFO gives it (see :mod:`.ownstats`)."""
        tally(own, [request.name.encode(), *request.args[:1]], len(request.raw), len(reply))

    def framing_kept(self, replies: RespReplyReader) -> object:
        """RESP3: a reader that did not see HELLO 3 would take a RESP3 connection's array
        reply for a message while it is subscribed, and the engine would let its client
        share the shared connection in RESP2. The user it logged in as: its replies may go
        unframed again after the next stretch framed (see :meth:`login_request`). Its
        database, which the engine shares it a connection in."""
        state = replies.state
        return (state.resp3, state.user, state.db) \
            if state.resp3 or state.user is not None or state.db != 0 else None

    def resume_framing(self, replies: RespReplyReader, kept: object) -> None:
        if kept:
            state = replies.state
            state.resp3, state.user, state.db = kept  # type: ignore[misc]

    def login_request(self, login: tuple[str, ...]) -> tuple[bytes, bytes, object]:
        """``AUTH`` with the proxy's own login: ``+OK``, as the user it names (``default``
        for a password alone, as redis-server has it)."""
        words = [word.encode() for word in login]
        return encode_command(b"AUTH", *words), b"+OK\r\n", auth_user(words)

    def logged_in_user(self, replies: RespReplyReader) -> object:
        """The user the last ``AUTH`` (or ``HELLO ... AUTH``) answered logged in as."""
        return replies.state.user

    def plain(self, request: Request) -> bool:
        """Whether the connection stays in the plain state after ``request`` (see FRAMING)."""
        name = request.name
        if name == "CLIENT":
            return not (request.args and request.args[0].upper() in FRAMING_CLIENT)
        if name in ALWAYS_BLOCKING or name in ("XREAD", "XREADGROUP"):
            return False
        return name not in FRAMING

    def probe_ok(self, reply: Reply) -> bool:
        """``+PONG``, or ``-NOAUTH`` (it serves, it wants a password); not ``-LOADING``."""
        value = reply.value
        if type(value) is RespError:
            return value.message.startswith(b"NOAUTH")
        return value == b"PONG" and type(value) is not list


CODEC = RespCodec()
_SENTINEL_SIZES = tuple(map(len, CODEC.sentinel()))  # (every token has the same length)


def _dialect(protocol: int | None, db: int) -> object:
    """A connection's :meth:`RespCodec.dialect`: its protocol alone in database 0, where nearly
    every client is, so that comparing two costs no more than comparing protocols."""
    return protocol if db == 0 else (protocol, db)


def _parts(dialect: object) -> tuple[int | None, int]:
    """The protocol and the database of a :meth:`RespCodec.dialect`."""
    return dialect if type(dialect) is tuple else (dialect, 0)  # type: ignore[return-value]


def _in_order(state: ConnectionState, transaction: bool = False) -> bool:
    """Whether the server sends the connection only replies to its requests, one each, in
    order: not subscribed, not in MONITOR, replies on, and no transaction unless
    ``transaction``."""
    return not (state.subscribed or state.monitor or state.reply != 0
                or (state.in_multi and not transaction))
