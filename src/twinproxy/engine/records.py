"""The records the engine keeps: per server connection, per client, per request.

Everything here is plain data with ``__slots__``; the behaviour is in the engine's modules. One
request's life during an update is an :class:`Exchange`: admitted on arrival, sent to the leader
in its turn, answered, released to the follower (as itself or as the leader's effect), sent
there in its turn, answered again, compared. Each version's part of that life is a :class:`Leg`,
so that the leader's and the follower's paths are one mechanism run twice
(:class:`~twinproxy.engine.sides.Side`), indexed by role: ``legs[LEADER]``, ``lanes[FOLLOWER]``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twinproxy.protocols.messages import Request

if TYPE_CHECKING:
    from twinproxy.engine.ordering import Ticket
    from twinproxy.protocols.base import OrderState
    from twinproxy.protocols.messages import Reply
    from twinproxy.protocols.reader import ReplyReader


class Conn:
    """A server connection the engine drives: a client's own connection to one version, or a
    shared one (``client`` None) that carries the plain clients' ordinary requests."""

    __slots__ = ("answering", "caught", "client", "closed", "connected", "id", "intercept",
                 "replies", "role")

    def __init__(self, conn_id: int, role: int, client: Client | None,
                 replies: ReplyReader | None, connected: bool = False):
        self.id = conn_id
        self.role = role
        self.client = client
        self.replies = replies  # frames its replies (a shared connection's parser is elsewhere)
        self.connected = connected
        # A leader connection whose replies are not all the client's (a blocking request is
        # being released at the sync point: its null is the engine's): the engine delivers them
        # one by one instead of as they come.
        self.intercept = False
        # Requests sent whose reply the client gets replaced by the proxy's answer
        # (``Request.answer``): the engine delivers replies one by one too while any is out.
        self.answering = 0
        # The last read was delivered by the engine and ended inside a reply: the rest of that
        # reply is the engine's to deliver too (its start did not go as it came).
        self.caught = False
        self.closed = False

    def __repr__(self) -> str:
        return f"<Conn {self.id} role={self.role}>"


class Lane:
    """One client's requests on one version: waiting their turn, then sent and unanswered."""

    __slots__ = ("conn", "flight", "pushes", "queue")

    def __init__(self) -> None:
        self.queue: deque[Exchange] = deque()  # admitted (or released), not sent yet
        self.flight: deque[Exchange] = deque()  # sent, final reply not in yet
        self.conn: Conn | None = None  # the client's own connection to this version
        self.pushes: deque[Any] = deque()  # pushes from this version not matched yet


class Client:
    """A client connection during an update."""

    __slots__ = ("before", "channels", "data", "dialect", "due", "ended", "eof", "error", "gone",
                 "host", "id", "joined", "lanes", "lazy", "leaving", "logging_in", "named",
                 "order", "peer", "plain", "probed", "replay", "setup", "shared", "slow", "small",
                 "solo", "transaction", "transfer", "unsent_names", "user")

    def __init__(self, client_id: int, peer: str, order: OrderState):
        self.id = client_id
        self.peer = peer
        self.lanes = (Lane(), Lane())  # by role: leader, follower
        self.order = order  # the protocol's view of its transaction, for the order
        self.replay: list[bytes] = []  # what gives its follower connection the session
        # Before the sync point (events.Ahead): its session requests the leader answered, from
        # which ``replay`` is made again when the sync point is pinned; None after it.
        self.before: list[Request] | None = None
        self.joined = False  # its follower connection has its session
        # It has no follower connection yet, and needs none: all it sent so far went on the
        # shared connections (see FollowerFlow._open_follower_later).
        self.lazy = False
        # What named it while it had no follower connection (Codec.names_connection).
        self.unsent_names: list[Request] | None = None
        self.plain = True  # its session is the plain one (no SUBSCRIBE, CLIENT REPLY ...)
        self.shared = True  # plain and not in a transaction: its ordinary requests are shared
        self.transaction = False  # a transaction of its (or WATCH) is open: not shared till it ends
        # The form its replies take and where its requests run (Codec.dialect: Redis's RESP3 is
        # 3, and a database other than 0 is part of it), from its session when it joins the
        # update, then after each HELLO or SELECT the leader answered: the shared connection is
        # put in it before each of its requests there (Exchange.dialect).
        self.dialect: object = None
        # Who it is logged in as (Codec.logged_in_user), from its session's replies when it
        # joins the update, then after each login the leader answered: it shares the shared
        # connections only as the user they log in as (Engine.shared_user).
        self.user: object = None
        self.logging_in = 0  # its logins the leader has not answered yet: not shared meanwhile
        self.solo = False  # served by the leader only (MONITOR): never compared
        # It does not read its replies as they come: none of its requests goes on the shared
        # connection any more (see events.SlowReader).
        self.slow = False
        # Small replies it got on its own connection in a row: past ``[update] shared_after``
        # it may use the shared one (a large reply starts it over; see LeaderFlow._admit).
        self.small = 0
        self.probed = False  # its first read went a request alone first (see engine.first_read)
        self.gone = False  # it closed; what it sent still goes through, unanswered
        # It asked its connection's id (CLIENT ID): another client may name it to the follower
        # (see FollowerFlow._still_named).
        self.named = False
        # A blocking request of its was served in the leader and its effect waits to be
        # released to the follower: its next requests wait too (see engine.waits).
        self.due = False
        self.eof = False  # it closed its sending side: close it once it is owed nothing
        self.ended = False  # that end was passed on to its own leader connection (Shutdown)
        self.error: bytes | None = None  # a protocol error to send once owed nothing, then close
        # Its protocol's data channels (FTP; None: none), its address alone, and per version
        # the channel opened last there (see engine.transfers).
        self.channels: Any = None
        self.host = ""
        self.data = [0, 0]
        self.setup: tuple[int, bytes] | None = None  # a channel set up before the sync point
        self.transfer: Exchange | None = None  # its last transfer, which an abort would end
        # Requests to forward once it is handed back to the leader alone (events.Leave).
        self.leaving: tuple[Request, ...] | None = None

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.peer}>"

    def owes(self) -> bool:
        """Whether a request of its own waits for the leader, or for a reply from it."""
        leader = self.lanes[0]
        return bool(leader.queue or leader.flight)


class Leg:
    """One version's part of an exchange: its place in that version's order, and among runs.

    A run's keys are not known, so runs and the requests on clients' own connections that are
    ordered (tracked by keys) are kept in one order by places: such a request waits for the runs
    placed before it (``mark``: the last of them), and a run for the ordered requests placed
    before it (``after``: the last of them, by their ``own_seq``).
    """

    __slots__ = ("after", "lined", "mark", "own_done", "own_seq", "own_write", "ready",
                 "run_done", "run_seq", "sent", "ticket")

    def __init__(self) -> None:
        self.ticket: Ticket | None = None  # its place in the version's order
        self.ready = False  # every earlier conflicting request is answered there
        self.sent = 0.0  # when it was sent (the follower's: for its timeout)
        self.run_seq = 0  # a run: its place among the runs on this version
        self.run_done = False  # a run: answered there
        self.after = 0  # a run: the last ordered own-connection request placed before it
        self.mark = -1  # an ordered request: the last run placed before it (-1: none)
        self.own_seq = 0  # an ordered request: its place among them (0: not one)
        self.own_done = False  # an ordered request: answered there
        self.own_write = False  # an ordered request that writes (see Side.own_writes)
        self.lined = False  # the follower's, for its shared connection: in its side's line


class Wait:
    """A request blocked in the leader at the sync point, being released from it (see
    :mod:`twinproxy.engine.waits`): its null reply is the engine's."""

    __slots__ = ("unblocking",)

    def __init__(self) -> None:
        self.unblocking = True


class Exchange:
    """One request during an update, from its arrival to the follower's reply."""

    __slots__ = ("aborted", "answer", "block_seq", "channel", "client", "counted", "data",
                 "dialect", "effects_after", "follower_request", "got", "hasher", "internal",
                 "is_global", "keys", "leader_at", "leader_digest", "leader_raw", "leader_reply",
                 "leader_value", "legs", "opening", "opens", "parts", "plan", "probe", "queue",
                 "queued", "renames", "request", "run", "run_error", "sets_dialect", "shared",
                 "shares_later", "size", "spilled", "switching", "wait", "write", "written")

    def __init__(self, client: Client | None, request: Request):
        self.client = client
        self.request = request
        self.legs = (Leg(), Leg())
        # What it touches, for the order (the protocol's view).
        self.keys: tuple[bytes, ...] = ()
        self.write = False
        self.is_global = False
        self.queued = False  # queued in a transaction: its effect comes with EXEC
        self.queue: tuple[Request, ...] = ()  # on EXEC: the requests it runs
        self.shared = False  # it goes on the shared connections
        # It went alone on the client's own leader connection only because the client had not
        # had ``[update] shared_after`` small replies yet: once the leader's reply shows it
        # small, the follower's copy takes the shared connection (LeaderFlow._answered).
        self.shares_later = False
        # The leader's reply, its comparison form, and when it came.
        self.leader_reply: Reply | None = None
        self.leader_value: Any = None
        self.leader_at = 0.0
        # A large leader reply is kept for the follower's comparison as its size and digest
        # only (see verdicts.LARGE_REPLY); ``counted``: the bytes it waits with in the backlog.
        self.leader_digest: tuple[int, bytes] | None = None
        self.counted = 0
        # What the follower gets (the request, or the leader's effect) and how it is compared.
        self.follower_request: Request | None = None
        self.plan: Any = None
        self.answer = False  # the follower's reply goes to the client (the leader failed)
        self.internal = False  # the proxy's own request to the follower (a session replay)
        # The proxy's own request that puts a shared connection in another dialect (see
        # Dispatch._switch; a probe is one of its own too: ``probe``).
        self.switching = False
        # The dialect its client's replies were in when the leader got it: on the shared
        # connections it goes in that one, on both versions. ``sets_dialect``: it changes
        # the client's (a HELLO 3; Codec.dialect_after).
        self.dialect: object = client.dialect if client is not None else None
        self.sets_dialect = False
        self.spilled: tuple[int, int] | None = None  # its bytes wait in the backlog store
        # A write in the leader: its place in the order writes were sent (see waits), and
        # blocking requests from before the sync point that it woke.
        self.written = 0
        self.effects_after: list[Exchange] | None = None
        # It names a connection by the leader's id, not learned yet when it was released: the
        # follower's id goes in when it is sent (engine.follower, _names_wait).
        self.renames = False
        self.wait: Wait | None = None  # blocked at the sync point, being released
        # A blocking request sent to the leader during the update: its place among them (0:
        # not one). A request whose leader reply opens a fence over keys with a blocked
        # request; the proxy's own probe that ends one (see engine.waits).
        self.block_seq = 0
        self.opens: Fence | None = None
        self.probe: Fence | None = None
        # Data channels (see engine.transfers): the one it opens (``opening``, a request's
        # OpenChannel; ``channel``, the id its halves share) and, per version, the one it
        # transferred on (None: none on either).
        self.opening: Any = None
        self.channel = 0
        self.data: list[int] | None = None
        # A transfer the client aborted (FTP's ABOR), or the abort itself: how each version
        # ends it depends on timing, so its replies are compared loosely and its data not at
        # all (see engine.transfers).
        self.aborted = False
        # A run: ``run`` requests read at once, that travel and are compared as bytes; the
        # replies so far in ``parts`` (``got`` of them, ``size`` bytes, ``run_error`` if one is
        # an error), or past a large size only their digest so far (``hasher``); all of the
        # leader's in ``leader_raw`` (or ``leader_digest``).
        self.run = 0
        self.parts: list[bytes] | None = None
        self.got = 0
        self.size = 0
        self.hasher: Any = None
        self.run_error = False
        self.leader_raw = b""

    def __repr__(self) -> str:
        return f"<Exchange {self.request!r}>"


class RunRequest(Request):
    """A run's request (see :class:`Exchange`'s ``run``): only its bytes and how its replies
    come are its own. ``replies`` is how many the server sends for the whole run: one per
    request but those that get none (memcached's ``noreply``), and ``silent_last`` says the
    last is one of those: the run has run only once a later reply's bytes come
    (``Dispatch._shared_replies``); ``expiring``, that the follower gets its bytes changed
    (``Codec.follower_run``, when it is released there). The rest of a request's fields are
    the same for every run (ordinary requests, framed only by counting: no name, no keys
    known, none blocking), so they are this class's constants, not a dozen fields written per
    run. They read as a request's do, and cannot be set: nothing sets them on a run. ``raw``
    can (the backlog spills it; the follower's replaces it)."""

    __slots__ = ("expiring", "silent_last")

    name = "(run)"
    args: list[bytes] = []  # (never changed: nothing sets a run's args)
    keys: tuple[bytes, ...] = ()
    write = False
    is_global = False
    session = False
    blocking = False
    data = None
    preliminary = False
    answer = None
    sent = 0.0

    def __init__(self, raw: bytes, replies: int, silent_last: bool = False,
                 expiring: bool = False):  # (Request's own would write every field)
        self.raw = raw
        self.replies = replies
        self.silent_last = silent_last
        self.expiring = expiring


class Fence:
    """Keys no other request may touch in the leader until the leader showed which waiting
    requests a request on them served (see :mod:`twinproxy.engine.waits`)."""

    __slots__ = ("keys", "request", "rounds", "waiter")

    def __init__(self, keys: tuple[bytes, ...], request: Exchange | None,
                 waiter: Exchange | None, rounds: int):
        self.keys = keys
        self.request = request  # the write in the leader whose reply starts the probes
        self.waiter = waiter  # a new blocking request: blocked, or served at once?
        self.rounds = rounds  # probes still to be answered

    def __repr__(self) -> str:
        return f"<Fence {self.keys!r} rounds={self.rounds}>"


Woken = dict[Client, None]
"""Clients whose queues may move now, in the order they were woken (a dict as an ordered set)."""
