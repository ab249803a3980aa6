"""The :class:`Codec` interface: everything the relay and the engine ask of a protocol.

A codec is sans-IO, like h11: it never sees a socket. The proxy core owns two readers per server
connection it relays (:mod:`twinproxy.protocols.reader`), over the messages of
:mod:`twinproxy.protocols.messages`:

* a request reader on the client's byte stream, which frames requests;
* a reply reader on the server's byte stream, which frames replies and matches each one to
  the request it answers. The proxy tells it, with ``expect()``, every request it sends on that
  server connection, in order, because reply framing and pairing depend on them (a memcached
  ``get`` ends with ``END``; an FTP transfer command gets a 1xx reply and a final one; a Redis
  connection in RESP2 subscribe mode answers ``SUBSCRIBE a b`` with two replies).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, LocalProtocolError, Reply, Request

if TYPE_CHECKING:
    from twinproxy.protocols.channels import DataChannels
    from twinproxy.protocols.reader import Learner, ReplyReader, RequestReader


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
    follower gets nothing. ``rule`` names the check in divergence records. ``same``: the check
    only looks past the names each server gives (memcached's CAS tokens), so replies it accepts
    are the same and nothing is recorded; else an accepted difference is an expected divergence.
    ``fails``: the request made the leader's state one the follower cannot be brought to by
    any request (Redis's ``DEBUG RELOAD NOSAVE`` loads each server's own dump file): the update
    fails, with this reason, and the follower gets nothing.
    """

    __slots__ = ("check", "fails", "rule", "same", "words")

    effects: dict[int, Plan] = {}

    def __init__(self, words: list[bytes] | None = None, check: Check | None = None,
                 rule: str = "", same: bool = False, fails: str = ""):
        self.words = words
        self.check = check
        self.rule = rule
        self.same = same
        self.fails = fails


SKIP = Plan(rule="builtin:not-sent")
"""The follower gets nothing for the request, and nothing is compared."""


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


class Carry(Protocol):
    """What the relay does, in SINGLE mode after a cutover, to the requests that still name
    things by the old version's names (memcached: the CAS tokens clients took from it)."""

    seconds: float
    """How long after the cutover it is kept (it also ends when the next update starts)."""

    def __call__(self, request: Request) -> Request:
        """The request to send in place of ``request`` (``request`` itself: as it is)."""

    def seen(self, replies: Sequence[Reply]) -> None:
        """Replies the new version sent (framed, on their way to the clients)."""


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

    server_names: ClassVar[bool] = False
    """Whether the servers name things in their replies that a client sends back (Redis: a
    connection's id; memcached: an item version's CAS token), each server its own names: the
    engine then learns the pairs (:meth:`server_ids`) and asks :meth:`follower_ids` for the
    follower's request. Left false, it never asks."""

    counting_names: ClassVar[frozenset[str]] = frozenset()
    """The names of the requests :meth:`counts_requests` may say yes to: SINGLE mode and the
    engine ask it only about those (one set lookup per request instead of two calls, and other
    requests cost nothing more). Empty: it is never asked."""

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

    def refused_sentinel(self) -> tuple[bytes, bytes] | None:
        """A sentinel for a server that may be refusing requests, as ``(request, token)``, or
        None (the default: there is no such state, or no such request).

        The server answers it, with ``token`` in its answer, even while it answers every
        ordinary request with an error (Redis past a script's time limit answers ``-BUSY``,
        which :meth:`sentinel`'s request would get too, so that the proxy would never find its
        reply and the client would get an extra one). The answer's wording around the token is
        learned from the server when it comes up, since it differs between versions. Servers
        count that answer as an error, so the relay sends it only while a request that can
        cause the refusals (:meth:`may_hold`) may be out."""
        return None

    def login_request(self, login: tuple[str, ...]) -> tuple[bytes, bytes, object] | None:
        """For a server that wants a password: the request that logs a fresh connection in
        with the proxy's own ``login`` (``VersionConfig.login``), the exact reply it gets when
        that works, and who it logs in as (what :meth:`logged_in_user` says of a connection
        logged in so); None (the default): the protocol has no login.

        A sentinel that works after that login works on every connection logged in as the
        same user (it may run the same commands): SINGLE mode leaves those connections'
        replies unframed, as on a server that wants no password (``backends.Backend``). During
        an update the shared connections log in so, and only clients logged in as that user
        share them (``Engine``)."""
        return None

    def logged_in_user(self, replies: ReplyReader) -> object:
        """Who the connection whose replies ``replies`` framed is logged in as, from the login
        requests it saw answered; None: nobody, or not known (the default)."""
        return None

    def may_hold(self, request: Request) -> bool:
        """Whether, while it runs, ``request`` may make the server refuse other connections'
        requests (a Redis script past its time limit). Only asked where :meth:`sentinel` is not
        None. The request reader's ``count`` notes such requests too (``holds``), so that they
        stay on the fast path."""
        return False

    def quiesces(self, request: Request) -> bool:
        """Whether, while it runs, ``request`` makes the server refuse every other request
        (Redis's ``DEBUG RELOAD``: ``-LOADING``). During an update the follower runs it after
        every earlier request the order tracks was answered there, and nothing after it goes
        there before its reply (see :mod:`twinproxy.engine.ordering`)."""
        return False

    def refused_for_now(self, raw: bytes) -> bool:
        """Whether a reply says the server did not run the request because of what it was
        doing at that moment (Redis: ``-LOADING``, ``-BUSY``), not because of the request."""
        return False

    def plain(self, request: Request) -> bool:
        """Whether a connection whose replies go unframed stays in the plain state after
        ``request`` (else the relay frames its replies from then on). Only asked where
        :meth:`sentinel` is not None; the default, False, frames at once."""
        return False

    def settle_request(self) -> Request | None:
        """A request after which the server has answered every request sent before it, even
        those it answers only for some outcomes (memcached's quiet meta requests), with
        ``answer`` set to what the client gets instead of its reply (nothing). SINGLE mode sends
        it when it must wait for the replies a framed connection owes and some may never come on
        their own (before it answers a bad request, or drains); during an update the engine
        sends it after a request that gets no reply, last on a shared connection
        (``Dispatch._settle_shared``). None (the default): every reply owed comes on its own."""
        return None

    def plain_state(self, replies: ReplyReader, transaction: bool = False) -> bool:
        """Whether the connection whose replies ``replies`` frames is in the plain state, so
        that the relay may stop framing it (SINGLE mode) and the engine may let its client
        share connections (``transaction``: a transaction in progress does not count). The
        default, False, keeps every connection framed and on its own connections."""
        return False

    def dialect(self, replies: ReplyReader) -> object:
        """The form of the replies of the connection ``replies`` frames, where a protocol has
        more than one (Redis: RESP2 or RESP3); None for the form a new connection starts in.
        During an update, plain clients of every dialect share the shared connection: the
        engine puts it in the dialect of the client whose request goes next, with
        :meth:`switch_dialect`, when it is in another. The default: one form only."""
        return None

    def dialect_after(self, request: Request, reply: Reply, before: object) -> object:
        """The :meth:`dialect` of a connection that was in ``before`` once ``request``, which
        :meth:`route` calls ``"dialect"``, was answered ``reply``. The default: unchanged."""
        return before

    def switch_dialect(self, dialect: object, current: object) -> bytes:
        """The requests (one or more) that put a connection in ``current`` in ``dialect`` (see
        :meth:`dialect`); the proxy's own, each counted with :meth:`count_own`. Asked only of a
        protocol whose :meth:`dialect` is not always None."""
        raise NotImplementedError(f"the {self.name} codec has one dialect")

    def count_own(self, own: dict[Any, tuple[int, int, int]], request: Request,
                  reply: bytes) -> None:
        """Count in ``own`` one request of the proxy's own that a server ran, answered with
        ``reply``: :meth:`without_probes` takes what ``own`` holds out of the counts a client
        sees. The default: nothing (a protocol whose server shows no counts)."""
        return None

    def framing_kept(self, replies: ReplyReader) -> object:
        """What a reply reader of this connection must know again when the relay frames it
        after an unframed stretch, where a fresh reader starts from the protocol's defaults
        (Redis: that the connection speaks RESP3, its database, and who it is logged in as);
        None: nothing.
        See :meth:`resume_framing`."""
        return None

    def resume_framing(self, replies: ReplyReader, kept: object) -> None:
        """Give a fresh reader of a connection what :meth:`framing_kept` kept of it. The
        default: nothing (it keeps nothing)."""
        return None

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

    # ---- data channels ------------------------------------------------------------------------

    def data_channels(self) -> DataChannels | None:
        """A new :class:`~twinproxy.protocols.channels.DataChannels` for one client connection,
        when this protocol sets up other connections from its control connection (FTP's data
        connections), so that the relay carries them through itself. The default, None: a
        protocol with one connection per session."""
        return None

    def learner(self) -> Learner | None:
        """A new store of what the proxy learns from its clients' requests of the server's
        state that a state sync cannot copy (Redis: its scripts), set on every client's reader
        (``RequestReader.learner``) and given to each update's state sync; one per proxy. The
        default, None: nothing to learn."""
        return None

    # ---- what the MVE engine asks -------------------------------------------------------------

    def make_request(self, words: list[bytes]) -> Request:
        """A request built from its words, as a client would have sent it: how the engine sends
        the follower a rewritten request or an effect.

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

    def follower_plan(self, request: Request, leader_value: Any, in_multi: bool,
                      at: float = 0.0) -> Plan | None:
        """What the follower gets for ``request`` once the leader's reply value is known, when
        not the request as it is compared as it is (a :class:`Plan`: the leader's effect, a
        looser check, or nothing). ``at``: when the leader answered, on the wall clock (0:
        unknown), for a time relative to the request (an expiry in seconds from now), which
        the follower, running later, must get as the leader's moment. The default, None: a
        protocol without non-deterministic requests."""
        return None

    def server_ids(self, request: Request, leader_value: Any, follower_value: Any
                   ) -> Sequence[tuple[Any, Any]]:
        """The names the two servers gave the same things in their replies to ``request``, as
        (the leader's, the follower's) pairs: a connection's id (Redis: CLIENT ID), an item
        version's CAS token (memcached: gets). Asked only for requests whose plan has a check
        (:meth:`follower_plan`). The default: none."""
        return ()

    def follower_ids(self, request: Request, ids: Mapping[Any, Any], leader_value: Any = None
                     ) -> list[bytes] | None:
        """``request`` as the follower gets it when it names a thing by the leader's name
        (Redis: CLIENT TRACKING ... REDIRECT id; memcached: a CAS token): each leader name in
        ``ids`` replaced by the follower's for the same thing; ``leader_value`` is the leader's
        reply, for a name not learned. None: as it is. Asked only where :attr:`server_names`."""
        return None

    def same_push(self, leader: Any, follower: Any, ids: Mapping[Any, Any]) -> bool:
        """Whether two pushes that differ as values (canonical form) say the same thing, each
        naming a thing by its own server's name (Redis: ``tracking-redir-broken`` names the
        connection that was the redirect target by its id); ``ids`` maps the leader's names to
        the follower's. The default: a protocol without such pushes, False."""
        return False

    def renamed_plan(self, request: Request, plan: Plan | None) -> Plan | None:
        """The plan for ``request`` once :meth:`follower_ids` gave the follower its own names
        for every one the request names: the replies then speak of the same things, and may be
        compared more closely than ``plan`` (from :meth:`follower_plan`) compares them. The
        default: ``plan``."""
        return plan

    def after_cutover(self, ids: Mapping[Any, Any]) -> Carry | None:
        """What the relay does with requests after a cutover that ends an update whose pairs of
        names (the old version's to the new one's) are ``ids``, so that a name a client took
        from the old version keeps naming the same thing (:class:`Carry`). The default, None:
        nothing (the names are the connection's own, or the protocol has none)."""
        return None

    def own_request_shown(self, reply: Reply) -> bool:
        """Whether ``reply``, on a connection that shows other connections' requests
        (``ReplyReader.watching``), shows a request the proxy sent on its own (a sentinel),
        which the client must not see. The default: no such connection, False."""
        return False

    def time_left(self, request: Request, elapsed: float) -> None:
        """Rewrite a blocking ``request`` that the proxy sends again ``elapsed`` seconds after
        the client sent it, so that it waits only for what is left of the client's timeout
        (a client's wait does not start over at the sync point or the cutover). The default:
        nothing (a protocol without blocking requests)."""
        return None

    def counts_requests(self, request: Request) -> bool:
        """Whether ``request``'s reply counts the requests the server ran, or it resets those
        counts (Redis: INFO, CONFIG RESETSTAT): the engine then lets no :meth:`probe` of its
        own be in flight in the leader with it, so that it knows exactly how many of its
        probes the count holds (:meth:`without_probes`). The default: none does. Only asked
        about a request named in :attr:`counting_names`."""
        return False

    def resets_counts(self, request: Request) -> bool:
        """Whether ``request`` sets the server's counts back to 0 (Redis: CONFIG RESETSTAT)."""
        return False

    def without_probes(self, raw: bytes, probes: int, sentinels: int = 0,
                       own: Mapping[Any, tuple[int, int, int]] | None = None) -> bytes:
        """The reply ``raw`` to a request that :meth:`counts_requests`, as the server would
        have given it had it not run ``probes`` of the proxy's :meth:`probe` requests,
        ``sentinels`` of its :meth:`sentinel` requests, and the requests of the update's own
        ``own`` (:meth:`~twinproxy.statesync.base.StateSync.own_requests`). The default: as
        it is."""
        return raw

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
        ``"begin"``/``"end"`` (on its own until the transaction it begins ends), ``"dialect"``
        (on its own; it only sets the :meth:`dialect` of the connection's replies, and the
        client goes on sharing in that one: :meth:`dialect_after`; it may log in too),
        ``"login"`` (on its own; the client goes on sharing if it logged in as the user the
        shared connection is, :meth:`logged_in_user`). Asked only
        where :attr:`shared_connection` is true; the default, None: this protocol has no shared
        connection."""
        return None

    def names_connection(self, request: Request) -> bool:
        """Whether ``request`` only names its connection (Redis's CLIENT SETNAME and SETINFO,
        which client libraries send on every connection they open): a client with no
        follower connection yet opens none for it, and the one it opens later gets it first,
        in its session's replay (see FollowerFlow._open_follower_later). The default: False."""
        return False

    def small_reply(self, request: Request) -> bool:
        """Whether ``request``'s reply is small whatever the data (a status, a number): it may
        take the shared connection before its client has had small replies on its own
        (``[update] shared_after``), as a run of such requests may. The default: False."""
        return False

    def shared_parser(self, limits: Limits = DEFAULT_LIMITS) -> Any:
        """The reply framer of an update's shared connection (see :attr:`shared_connection`):
        ``feed(data)``, ``next()`` (a reply's value and bytes), ``take(limit)`` (up to
        ``limit`` replies' bytes), ``match(expected)``, and where some requests get no reply
        (``Request.replies`` 0) ``waiting``: whether bytes of a later reply are held, which
        shows that the server ran them (``Dispatch._shared_replies``).

        Raises:
            LocalProtocolError: by default: this protocol has no shared connection.
        """
        raise LocalProtocolError(f"the {self.name} codec has no shared connection")

    def reply(self, value: Any, raw: bytes, request: Request | None = None) -> Reply:
        """A :class:`Reply` for a value and its bytes as the reply reader would make it: how the
        engine turns what :meth:`shared_parser` framed into replies it can compare."""
        return Reply(raw, value, request=request)

    def follower_run(self, raw: bytes, at: float) -> bytes:
        """A run's bytes as the follower gets them, for a run its reader said ``expiring``
        (``RequestReader.expiring``), where ``at`` is the wall-clock time the leader's replies
        came (as :meth:`follower_plan`'s). The default: as they came."""
        return raw

    def loose_run(self, raw: bytes) -> bool:
        """Whether a run (its requests' bytes) holds a request whose replies may differ as
        bytes and still agree (its :meth:`follower_plan` has a check: Redis's SMEMBERS, in any
        order): its large replies are then kept whole for the comparison, not as a digest.
        The default: False."""
        return False

    def run_reply(self, parser: Any, request: Request) -> tuple[Reply, bytes]:
        """The reply to one of a run's requests, framed one by one from the run's replies
        (``parser``, a :meth:`shared_parser` fed with them): the next one, or for a request
        that gets none (``replies`` 0: memcached's ``noreply``) the empty reply the
        request-by-request path gives it. ``(reply, its bytes)``."""
        if request.replies == 0:
            return self.reply(None, b"", request), b""
        value, raw = parser.next()
        return self.reply(value, raw, request), raw
