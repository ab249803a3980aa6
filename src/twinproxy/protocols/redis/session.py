"""Which request each Redis reply answers: the connection state that decides it, and its rules.

Replies come in request order, but not one per request. The rules this file keeps, each checked
against redis-server 6.2 and 7.0 (``tests/golden/redis/``):

* Out of band (``request`` None, ``push`` True): a RESP3 ``>`` push, except subscribe
  confirmations that answer the (P|S)(UN)SUBSCRIBE at the head; in RESP2 while subscribed, a
  ``message``/``pmessage``/``smessage`` array (or a confirmation no request asked for); in
  MONITOR mode, a ``+<time> [<db> <client>] ...`` line.
* (P|S)SUBSCRIBE gets one confirmation per argument; (P|S)UNSUBSCRIBE one per argument, or
  without arguments one per channel the connection had (tracked from the confirmations), or one
  with a null channel when it had none. A first reply that is an error (or ``+QUEUED``) is the
  only one. Confirmations come even under CLIENT REPLY OFF or SKIP (redis-server sends them as
  pushes there), other replies do not.
* CLIENT REPLY OFF and SKIP get no reply; after OFF nothing does but CLIENT REPLY ON, RESET and
  subscribe confirmations; after SKIP the next request gets none (RESET included). A request that
  gets no reply is paired with a synthetic reply (``raw`` ``b""``, value ``NO_REPLY``).
  CLIENT REPLY can fail (NOAUTH, NOPERM, BUSY): known failures are predicted (RESP2 subscribe
  mode, inside MULTI, after a NOAUTH error, wrong arguments); for the others the requests after
  it are assumed silent until an error proves otherwise, and then get their real replies too.
* Inside MULTI every request gets ``+QUEUED`` or an error; EXEC's array holds the queued
  requests' replies in order, and the state changes they make (HELLO, SUBSCRIBE ...) apply. A
  queued SUBSCRIBE with N channels writes N replies into an array counted as one: the ones that
  do not fit follow the array as further replies to EXEC.
* HELLO switches RESP2/RESP3 when its reply is a map (RESP3) or an array (RESP2); SELECT's +OK
  selects its database; MONITOR's +OK starts monitor mode; RESET (+RESET) returns to RESP2,
  database 0, no subscriptions, replies on. Error replies change nothing (except that a NOAUTH
  error makes the next CLIENT REPLY expect one).

Not modelled (redis-server's own output is then inconsistent): CLIENT REPLY OFF or SKIP queued
inside MULTI (EXEC's array header then counts replies that never come), and CLIENT REPLY SKIP
followed by a blank line (redis-server lets the blank line take the skip; this reader never sees
blank lines, the request reader drops them).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.types import Attributed, Map, Push, RespError, SimpleString

_CONFIRM = {
    "SUBSCRIBE": b"subscribe", "PSUBSCRIBE": b"psubscribe", "SSUBSCRIBE": b"ssubscribe",
    "UNSUBSCRIBE": b"unsubscribe", "PUNSUBSCRIBE": b"punsubscribe",
    "SUNSUBSCRIBE": b"sunsubscribe",
}  # fmt: skip
_CONFIRM_KINDS = frozenset(_CONFIRM.values())
_SUBSCRIPTIONS = {
    b"subscribe": "channels", b"unsubscribe": "channels", b"psubscribe": "patterns",
    b"punsubscribe": "patterns", b"ssubscribe": "shards", b"sunsubscribe": "shards",
}  # fmt: skip
_MESSAGES = frozenset({b"message", b"pmessage", b"smessage"})
_MONITOR_LINE = re.compile(rb"[0-9]+\.[0-9]+ \[[0-9]+ ")
# What a RESP2 connection may run while subscribed (anything else gets an error).
_SUBSCRIBE_MODE = frozenset({*_CONFIRM, "PING", "QUIT", "RESET"})
# Run at once even inside MULTI (never queued).
_IMMEDIATE = frozenset({"EXEC", "DISCARD", "MULTI", "WATCH", "QUIT", "RESET"})
# Requests whose reply can change the state: everything else is paired without a look.
SPECIAL = frozenset(
    {"HELLO", "AUTH", "SELECT", "CLIENT", "MULTI", "EXEC", "DISCARD", "RESET", "MONITOR",
     *_CONFIRM}
)
_QUEUED = b"QUEUED"
_ON, _OFF, _SKIP = range(3)
_LOG_MAX = 4096  # requests remembered while a CLIENT REPLY OFF/SKIP may still prove to have failed


class ConnectionState:
    """What the server knows about the connection that decides how it replies."""

    __slots__ = ("channels", "db", "in_multi", "monitor", "noauth", "patterns", "queued",
                 "reply", "resp3", "shards", "user")  # fmt: skip

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """RESET's effect (which also deauthenticates: whether auth is needed is unknown)."""
        self.resp3 = False
        # The database SELECT chose; None: not known (a SELECT that got no reply, under CLIENT
        # REPLY OFF or in a transaction whose EXEC got none).
        self.db: int | None = 0
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.shards: set[bytes] = set()
        self.reply = _ON
        self.monitor = False
        self.in_multi = False
        self.queued: list[Request] = []
        self.noauth = False
        # The user an AUTH (or HELLO's AUTH) this reader saw answered logged the connection in
        # as: b"default" for AUTH with a password alone. None: none seen, or one whose outcome
        # is not known (no reply under CLIENT REPLY OFF, or queued in a transaction).
        self.user: bytes | None = None

    def copy(self) -> ConnectionState:
        other = ConnectionState.__new__(ConnectionState)
        for name in self.__slots__:
            value = getattr(self, name)
            setattr(other, name, value.copy() if isinstance(value, set | list) else value)
        return other

    @property
    def subscribed(self) -> bool:
        return bool(self.channels or self.patterns or self.shards)

    def subscriptions(self, kind: bytes) -> set[bytes]:
        """The channels, patterns or shard channels a confirmation kind is about."""
        return getattr(self, _SUBSCRIPTIONS[kind])


def hello_login(args: list[bytes]) -> bytes | None:
    """The user ``HELLO`` with these arguments logs in as (``HELLO protover [AUTH username
    password] [SETNAME clientname]``, read as redis-server reads it), or None: no AUTH."""
    at = 1
    while at < len(args):
        option = args[at].upper()
        if option == b"AUTH" and at + 2 < len(args):
            return args[at + 1]
        at += 2 if option == b"SETNAME" else 3 if option == b"AUTH" else 1
    return None


def auth_user(args: list[bytes]) -> bytes:
    """The user ``AUTH`` with these arguments logs in as: ``AUTH username password``, or
    ``default`` for ``AUTH password`` alone, as redis-server has it."""
    return args[0] if len(args) == 2 else b"default"


def selected_database(args: list[bytes]) -> int | None:
    """The database ``SELECT`` with these arguments chose, when the server said it did."""
    if len(args) != 1 or not args[0].isdigit():  # (a negative one is refused)
        return None
    return int(args[0])


def _unsubscribe(kind: bytes) -> bool:
    return kind.endswith(b"unsubscribe")


def _unwrap(value: Any) -> Any:
    return value.value if type(value) is Attributed else value


def _confirmation(value: Any) -> bytes | None:
    """The kind of a subscribe confirmation (``b"subscribe"`` ...), or None."""
    value = _unwrap(value)
    if type(value) in (list, Push) and len(value) == 3 and type(value[0]) is bytes:
        kind = value[0]
        if kind in _CONFIRM_KINDS:
            return kind
    return None


def _client_reply_mode(req: Request) -> int | None:
    """_ON, _OFF or _SKIP for a well-formed CLIENT REPLY, else None."""
    if req.name != "CLIENT" or len(req.args) != 2 or req.args[0].upper() != b"REPLY":
        return None
    return {b"ON": _ON, b"OFF": _OFF, b"SKIP": _SKIP}.get(req.args[1].upper())


def _looks_like_client_failure(value: Any) -> bool:
    """Whether an error can be CLIENT REPLY's own (failures that cannot be predicted)."""
    if type(value) is not RespError:
        return False
    msg = value.message
    low = msg.lower()
    return msg.startswith((b"NOAUTH", b"BUSY")) or (
        msg.startswith((b"NOPERM", b"ERR unknown command")) and b"client" in low
    )


class _Expect:
    """The request at the head and what its replies still have to be."""

    __slots__ = ("first", "inner", "kind", "left", "request", "under_off")

    def __init__(self, request: Request, kind: bytes | None = None, left: int = 1) -> None:
        self.request = request
        self.kind = kind  # a confirmation kind, b"exec" for EXEC, None for one plain reply
        self.left = left
        self.first = True
        self.inner: Pairing | None = None
        self.under_off = False


class Pairing:
    """Pairs replies with the requests expected on one server connection.

    ``inner`` pairings walk the replies inside an EXEC array: there requests run as if outside
    MULTI and nothing is out of band.
    """

    def __init__(self, state: ConnectionState | None = None, inner: bool = False) -> None:
        self.state = state if state is not None else ConnectionState()
        self.inner = inner
        self.queue: deque[Request] = deque()
        self.active: _Expect | None = None
        self.silent: list[Request] = []  # settled without a reply, not yet reported
        self.unpaired = 0  # replies that no request was waiting for
        # While a CLIENT REPLY OFF/SKIP may still prove to have failed: state before it, the
        # requests settled since (it first), and which mode it set.
        self.tentative: tuple[ConnectionState, list[Request], int] | None = None

    @property
    def pending(self) -> int:
        return len(self.queue) + (self.active is not None)

    def expect(self, request: Request) -> None:
        self.queue.append(request)
        st = self.state
        if self.active is None and (request.name in SPECIAL or st.reply or st.in_multi):
            self.settle()  # it may get no reply: settle it now (plain requests wait, cheaper)

    # -- the head ---------------------------------------------------------------------------

    def settle(self) -> _Expect | None:
        """Settle the requests at the head that get no reply; the head's expectation.

        Call it after each reply (pair does not), so that the requests that follow it and get
        no reply are reported after it.
        """
        while self.active is None and self.queue:
            req = self.queue.popleft()
            tentative = self.tentative
            if tentative is not None:
                tentative[1].append(req)
                if len(tentative[1]) > _LOG_MAX:
                    self.tentative = None
            exp = self._expectation(req)
            if exp is None:
                self.silent.append(req)
            else:
                self.active = exp
        return self.active

    def _expectation(self, req: Request) -> _Expect | None:
        """How ``req`` will be answered in the current state; None for no reply (applied)."""
        st = self.state
        name = req.name
        if name not in SPECIAL and not st.in_multi and st.reply == _ON:
            return _Expect(req)
        mode = st.reply if not self.inner else _ON
        confirm = _CONFIRM.get(name)
        queued = st.in_multi and not self.inner and name not in _IMMEDIATE
        refused = st.subscribed and not st.resp3 and name not in _SUBSCRIBE_MODE and not self.inner
        if mode != _ON:
            if mode == _SKIP:
                st.reply = _ON
            if refused:
                return None  # its error is not sent, and it does nothing
            if _client_reply_mode(req) == _ON or (name == "RESET" and mode == _OFF):
                return _Expect(req)
            if confirm is not None and not queued and (req.args or _unsubscribe(confirm)):
                exp = self._confirm_expect(req, confirm)
                exp.under_off = True
                return exp
            self._apply(req, None)
            return None
        client_mode = _client_reply_mode(req)
        fails = st.noauth or refused  # predictable CLIENT REPLY errors
        if client_mode is not None and client_mode != _ON and not queued and not fails:
            if self.tentative is None and not self.inner:
                self.tentative = (st.copy(), [req], client_mode)
            self._apply(req, None)
            return None
        if queued:
            return _Expect(req)
        if confirm is not None:
            return self._confirm_expect(req, confirm)
        if name == "EXEC":
            return _Expect(req, b"exec")
        return _Expect(req)

    def _confirm_expect(self, req: Request, kind: bytes) -> _Expect:
        n = len(req.args)
        if not n and _unsubscribe(kind):
            n = len(self.state.subscriptions(kind))
        return _Expect(req, kind, max(n, 1))

    # -- replies ----------------------------------------------------------------------------

    def wants(self, kind: bytes) -> bool:
        """Whether the request at the head waits for a confirmation of this kind."""
        exp = self.settle()
        if exp is None:
            return False
        if exp.kind == b"exec" and exp.inner is not None:
            return exp.inner.wants(kind)
        return exp.kind == kind

    def out_of_band(self, value: Any) -> bool:
        """Whether ``value`` answers no request (updating the state it changes)."""
        v = _unwrap(value)
        t = type(v)
        st = self.state
        if t is Push or (t is list and st.subscribed and not st.resp3 and v):
            if t is list and type(v[0]) is bytes and v[0] in _MESSAGES:
                return True
            kind = _confirmation(v)
            if kind is not None:
                if self.wants(kind):
                    return False
                self._confirmed(kind, v)  # one no request asked for (a cluster's sunsubscribe)
                return True
            return t is Push
        return t is SimpleString and st.monitor and _MONITOR_LINE.match(v) is not None

    def pair(self, value: Any) -> tuple[Request | None, bool]:
        """The request ``value`` answers (None: none is waiting) and whether it is its last."""
        if self.tentative is not None:
            if self._check_tentative(value):
                return self.tentative_failed(), True
            self.tentative = None  # a reply that is not CLIENT REPLY's error: it worked
        while True:
            exp = self.settle()
            if exp is None:
                self.unpaired += 1
                return None, True
            done = self._take(exp, value)
            if done is not None:
                break
            # A subscribe under CLIENT REPLY OFF that failed (its error was not sent): no reply.
            self.active = None
            self.silent.append(exp.request)
        if done:
            self.active = None
        return exp.request, done

    def _take(self, exp: _Expect, value: Any) -> bool | None:
        """Account ``value`` to ``exp``: True when it is the last, None if it is not exp's."""
        req = exp.request
        v = _unwrap(value)
        first, exp.first = exp.first, False
        if exp.kind is None:
            self._apply(req, v)
            return True
        if exp.kind == b"exec":
            return self._take_exec(exp, v, first)
        if first and (type(v) is RespError or v == _QUEUED):
            self._apply(req, v)
            return True
        kind = _confirmation(v)
        if kind != exp.kind:
            if first and exp.under_off:
                return None
            return True  # not a confirmation: take it as the request's only (or last) reply
        self._confirmed(kind, v)
        exp.left -= 1
        return exp.left == 0

    def _take_exec(self, exp: _Expect, v: Any, first: bool) -> bool:
        st = self.state
        if first:
            queued, st.queued = st.queued, []
            was_multi, st.in_multi = st.in_multi, False
            if type(v) is not list or not was_multi:
                return True  # EXECABORT, a WATCH abort (null), or EXEC without MULTI
            inner = Pairing(st, inner=True)
            for req in queued:
                inner.expect(req)
            for item in v:
                inner.pair(item)
                inner.settle()
            if not inner.pending:
                return True
            exp.inner = inner
            return False
        assert exp.inner is not None
        exp.inner.pair(v)
        exp.inner.settle()
        return not exp.inner.pending

    def _confirmed(self, kind: bytes, v: list) -> None:
        channel = v[1]
        if type(channel) is not bytes:
            return
        subs = self.state.subscriptions(kind)
        if _unsubscribe(kind):
            subs.discard(channel)
        else:
            subs.add(channel)

    def _apply(self, req: Request, v: Any) -> None:
        """The state change of ``req`` answered by ``v`` (None: no reply; assume it worked)."""
        st = self.state
        if type(v) is RespError:
            if v.message.startswith(b"NOAUTH"):
                st.noauth = True
            return
        name = req.name
        if st.in_multi and not self.inner and name not in _IMMEDIATE:
            if v is None or v == _QUEUED:
                st.queued.append(req)
            return
        if name == "HELLO":
            if v is None:
                if req.args and req.args[0] in (b"2", b"3"):
                    st.resp3 = req.args[0] == b"3"
            elif type(v) is Map or type(v) is list:
                st.resp3 = type(v) is Map
            user = hello_login(req.args)
            if user is not None:
                st.noauth = False
                st.user = user if v is not None else None
        elif name == "AUTH":
            st.noauth = False
            st.user = None if v is None or not req.args else auth_user(req.args)
        elif name == "SELECT":
            st.db = selected_database(req.args) if v is not None else None
        elif name == "MULTI":
            st.in_multi = True
            st.queued = []
        elif name == "DISCARD" or (name == "EXEC" and v is None):
            queued = st.queued if name == "EXEC" and st.in_multi else []
            st.in_multi = False
            st.queued = []
            inner = Pairing(st, inner=True)
            for q in queued:  # an EXEC that got no reply: what it ran still took effect
                inner._apply(q, None)
        elif name == "RESET":
            st.reset()
        elif name == "MONITOR":
            st.monitor = True
        elif name == "CLIENT":
            mode = _client_reply_mode(req)
            if mode is not None and (mode != _SKIP or st.reply != _OFF):
                st.reply = mode
        elif name in _CONFIRM and v is None:
            kind = _CONFIRM[name]
            subs = st.subscriptions(kind)
            if not _unsubscribe(kind):
                subs.update(req.args)
            elif req.args:
                subs.difference_update(req.args)
            else:
                subs.clear()

    # -- CLIENT REPLY OFF/SKIP that failed --------------------------------------------------

    def _check_tentative(self, value: Any) -> bool:
        assert self.tentative is not None
        mode = self.tentative[2]
        if mode == _OFF:
            return type(_unwrap(value)) is RespError
        return _looks_like_client_failure(_unwrap(value))

    def tentative_failed(self) -> Request:
        """CLIENT REPLY OFF/SKIP failed: back to the state before it; re-expect what followed."""
        assert self.tentative is not None
        state, log, _ = self.tentative
        self.tentative = None
        for name in ConnectionState.__slots__:
            setattr(self.state, name, getattr(state, name))
        self.active = None  # it is in the log: it was settled after CLIENT REPLY
        silent = set(map(id, log))
        self.silent = [r for r in self.silent if id(r) not in silent]
        self.queue.extendleft(reversed(log[1:]))
        return log[0]


__all__ = ["SPECIAL", "ConnectionState", "Pairing", "auth_user", "hello_login",
           "selected_database"]
