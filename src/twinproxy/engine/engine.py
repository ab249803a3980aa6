"""The MVE engine: events in, commands out.

How this works. During an update the relay hands the engine every client that it attached
before or at the sync point's barrier, every request those clients send, and every byte of the
server connections the engine drives; the lifecycle hands it its decisions (hold, release, start
the follower, cut over ...). :meth:`Engine.handle` returns, for each event, the commands the relay
must carry out (send, deliver, open, close ...) and the notices the lifecycle acts on (failed,
reached, diverged). The engine opens no socket and reads no clock: time comes in :class:`Tick`
events, so its tests are scripts (an event in, the commands expected out) and random
interleavings, with no server.

Where each step lives:

* :mod:`.dispatch`: sending a client's requests in their turn, and the replies on a shared
  connection, the same mechanism for both sides;
* :mod:`.leader`: admitting a request in arrival order, the leader's replies, runs;
* :mod:`.first_read`: a new client's first read, its first request alone, the rest after it;
* :mod:`.follower`: what the follower is sent for each answered request, its replies;
* :mod:`.waits`: blocking requests, blocked in the leader, their effects on the follower;
* :mod:`.verdicts`: comparing replies; :mod:`.backlog`: what the follower still owes;
* :mod:`.sides`: what the engine keeps per version; :mod:`.ordering`: the order of conflicting
  requests on one version; :mod:`.modes`: the modes and the control events between them;
* :mod:`.departures`: clients that close or are closed, and what of theirs is still on the way;
* :mod:`.handover`: the barriers' ends: taking over from a dead leader, swapping the roles,
  handing the clients back;
* :mod:`.conditions`: what the lifecycle waits for (``Watch``), and when each holds.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twinproxy.engine import events as ev
from twinproxy.engine.backlog import Backlog, Store
from twinproxy.engine.commands import (
    FOLLOWER,
    LEADER,
    Command,
    DeliverAll,
    Failed,
    LeaderLost,
    Log,
    Send,
)
from twinproxy.engine.conditions import Conditions
from twinproxy.engine.departures import Departures
from twinproxy.engine.dispatch import Dispatch
from twinproxy.engine.first_read import FirstRead
from twinproxy.engine.follower import FollowerFlow
from twinproxy.engine.handover import Handover
from twinproxy.engine.health import HEALTH_EVERY, Health
from twinproxy.engine.leader import LeaderFlow
from twinproxy.engine.modes import CONTROL, SYNC_BARRIER, next_mode
from twinproxy.engine.records import Client, Conn, Exchange
from twinproxy.engine.sides import Side
from twinproxy.engine.transfers import TransferFlow
from twinproxy.engine.verdicts import Verdicts
from twinproxy.engine.waits import Waits
from twinproxy.protocols.messages import ProtocolError

if TYPE_CHECKING:
    from twinproxy.compare import Comparator
    from twinproxy.config import UpdateConfig
    from twinproxy.protocols.base import Carry, Codec
    from twinproxy.protocols.messages import Limits

LIST_PAST = 128 * 1024  # a batch's output to one connection this large goes as a list (_joined)


class Engine(Dispatch, LeaderFlow, FollowerFlow, TransferFlow, Waits, Handover, Conditions,
             Health, FirstRead, Departures):
    """The engine of one update; see the module docstring.

    Args:
        codec: the protocol.
        limits: the readers' size limits.
        settings: the ``[update]`` section (timeouts, backlog bounds, what a divergence does).
        comparator: compares replies under this update's rules.
        names: the leader's and the follower's version names, for messages.
        table: the leader's command table, for the protocol's ``describe``.
        new_store: makes the store the sync backlog spills to (called at most once).
    """

    def __init__(self, codec: Codec, limits: Limits, settings: UpdateConfig,
                 comparator: Comparator, names: tuple[str, str], table: Any = None,
                 new_store: Callable[[], Store] | None = None,
                 logins: tuple[tuple[str, ...] | None, tuple[str, ...] | None] = (None, None)):
        self.codec = codec
        self.limits = limits
        # Each version's own login (VersionConfig.login; None: none): its shared connection
        # logs in with it, and only clients logged in as that user share them, so that nobody
        # runs a request there as another. Both must be the same user for anyone to share.
        requests = [codec.login_request(login) if login is not None else None
                    for login in logins]
        self.logins = {name: got[0] for name, got in zip(names, requests, strict=True)
                       if got is not None}
        users = {got[2] if got is not None else None for got in requests}
        self.shared_user: object = users.pop() if len(users) == 1 else _NOBODY
        self.settings = settings
        self.table = table
        self.routes = codec.shared_connection
        self.counting_names = codec.counting_names  # (see Dispatch._dispatch_lane)
        self.shared_after = settings.shared_after
        self.mode = SYNC_BARRIER
        self.ahead = False  # clients were driven before the sync point (ev.Ahead)
        self.now = 0.0
        self.wall = 0.0
        self.clock = 0.0  # the leader's clock ahead of the wall clock (StateSync.leader_clock)
        self.sides = [Side(LEADER, names[0]), Side(FOLLOWER, names[1])]
        self.sent = [0, 0]  # requests sent to the leader and to the follower
        self.clients: dict[int, Client] = {}
        self.conns: dict[int, Conn] = {}
        self.outbox: dict[Client, list[bytes]] = {}  # replies for clients, sent at Flush
        self.failure: str | None = None
        self.withheld = 0  # requests the follower did not get: the leader rejected them
        self.not_sent = 0  # requests the follower did not get: their effect is not its own
        self._out: list[Command] = []
        # Adds a command to what handle() returns (the list's own append, for speed).
        self.emit: Callable[[Command], None] = self._out.append
        self._watches: list[frozenset[str]] = []
        # Requests that quiesce a server (DEBUG RELOAD), until both versions answered them.
        self.loading: dict[Exchange, None] = {}
        # A client whose request that quiesces the follower waits for it to be idle; clients
        # whose such request waits for the new version to serve (see dispatch).
        self.quiescing: Client | None = None
        self.loads_held: dict[Client, None] = {}
        self._health_at = 0.0
        self.follower_answered = 0.0  # when bytes last came from the follower
        self.transferred: dict[tuple[int, int], ev.Transferred] = {}  # see engine.transfers
        self.awaiting: dict[Exchange, None] = {}
        self.transfers_compared = 0
        # After a keep-old cutover: what clients send that names things by the version's names
        # that led before (memcached: CAS tokens) is rewritten first (Codec.after_cutover).
        self.carry: Carry | None = None
        self.runs_vouched: Client | None = None  # (see runs_allowed)
        self.switches = 0  # the shared connections were put in another dialect (Dispatch._switch)
        # A client that connects during MVE gets its follower connection only when it needs
        # one, until OpenFollowers (see FollowerFlow._open_follower_later).
        self.lazy_followers = True
        self.opening: dict[Client, None] = {}  # what OpenFollowers opened, not up yet
        self.verdicts = Verdicts(codec, comparator, table, lambda c: self.emit(c), self.fail,
                                 settings.on_divergence == "rollback")
        self.backlog = Backlog(codec, limits, settings, new_store or _no_store, self.fail)
        self._init_waits()
        self._init_naming()
        self._init_first_read()
        self._handlers: dict[type[ev.Event], Callable[[Any], None]] = {
            ev.Begin: self._begin,
            ev.Tick: self._tick,
            ev.Attach: self._attach,
            ev.Requests: self._requests,
            ev.Leave: self._leave,
            ev.Run: self._run_event,
            ev.ClientError: self._client_error,
            ev.ClientEof: self._client_eof,
            ev.SlowReader: self._slow_reader,
            ev.ClientClosed: self._client_closed_event,
            ev.Connected: self._connected,
            ev.ConnectFailed: self._connect_failed,
            ev.Data: self._data,
            ev.ConnClosed: self._conn_closed,
            ev.Flush: self._flush,
            ev.OpenFollowers: self._open_followers,
            ev.Watch: self._watch,
            ev.Unwatch: self._unwatch,
            ev.Unblock: lambda e: self._unblock(e.request),
            ev.CloseBlocked: self._close_blocked,
            ev.CloseOrphans: self._close_orphans,
            ev.Transferred: self._transferred,
        }

    # ---- the interface ------------------------------------------------------------------

    def handle(self, event: ev.Event) -> list[Command]:
        """Handle one event; the commands it leads to, in the order they must be carried out.

        Raises:
            ModeError: a control event the current mode does not allow.
            TypeError: not an event the engine knows.
        """
        handler = self._handlers.get(type(event))
        try:
            if handler is not None:
                if not (self.held and self._hold(event)):
                    handler(event)
                if self.held_done:
                    self.runs_vouched = None
                    self._let_go_of_answered()
            elif type(event) in CONTROL:
                self._let_go_of_all()  # (what clients sent came before this event)
                self._control(event)
            else:
                raise TypeError(f"not an engine event: {event!r}")
        finally:
            self.runs_vouched = None  # (runs_allowed's yes held until this event only)
        out = self._out
        if not out:
            return out
        self._out = []
        self.emit = self._out.append
        return out

    def close(self) -> None:
        """The update has ended and nothing feeds the engine any more: drop what refers back
        to it (its table of handlers, the callbacks its verdicts and its backlog were given).
        The engine is then freed, with what it still holds, as soon as its update lets go of
        it, instead of whenever Python's cyclic collector next runs. Nothing may be handled
        after."""
        self._handlers.clear()
        self.verdicts.emit = self.verdicts.fail = self.backlog.fail = _closed
        self._let_go_of_clients()

    @property
    def names(self) -> Mapping[Any, Any]:
        """The pairs of names known (the leader's to the follower's), learned from replies and
        given by :meth:`translate`."""
        return self.verdicts.ids

    def translate(self, ids: Mapping[Any, Any]) -> None:
        """Names the two servers give the same thing, the leader's to the follower's, learned
        outside the engine (the state sync's copy: memcached's CAS token of each item), to be
        translated in what the follower gets as those the replies teach are
        (:meth:`~twinproxy.protocols.base.Codec.server_ids`).

        A dict larger than the pairs learned so far is taken over, not copied: the copy of a
        million items hands over a million pairs (~120 MiB), and copying them would hold two
        maps at once. Its pairs win over learned ones of the same name, as an update would."""
        known = self.verdicts.ids
        if type(ids) is dict and len(ids) > len(known):
            for pair in known.items():
                ids.setdefault(*pair)
            self.verdicts.ids = ids
        else:
            known.update(ids)

    def own_before(self, probes: int, sentinels: int,
                   own: Mapping[Any, tuple[int, int, int]]) -> None:
        """The leader ran ``probes`` and ``sentinels`` of the proxy's own before the update
        (the relay's count since its counts were last reset: the readiness probe, SINGLE
        mode's sentinels), and the state sync's own requests ``own`` (a mapping the sync goes
        on counting in as it sends more): a client's INFO during the update gets its counts
        without them too, as without the fences' probes (see engine.waits)."""
        side = self.sides[LEADER]
        side.probes += probes
        side.sentinels = sentinels
        side.own_sent = own

    def own_counts(self) -> tuple[int, int, dict[Any, tuple[int, int, int]]]:
        """The proxy's own requests the leader has run and still counts (probes, sentinels,
        the state sync's requests; see :meth:`own_before`), for SINGLE mode after a rollback
        to go on taking them out of INFO; all 0 when they are no longer known exactly."""
        side = self.sides[LEADER]
        if not side.exact:
            return 0, 0, {}
        return side.probes, side.sentinels, side.own()

    def fail(self, reason: str) -> None:
        """The update cannot go on: say why, once; the lifecycle rolls back."""
        if self.failure is None:
            self.failure = reason
            self.emit(Failed(reason))

    @property
    def compared(self) -> int:
        """Replies compared so far (a run counts each of its requests)."""
        return self.verdicts.compared

    @property
    def unexpected(self) -> int:
        """Divergences no rule explained."""
        return self.verdicts.unexpected

    def busy(self, client_id: int) -> bool:
        """Whether the client waits for something (a reply, or its turn): it is not idle."""
        client = self.clients.get(client_id)
        return client is not None and client.owes()

    def status(self) -> dict[str, Any]:
        """What ``twinproxy status`` shows of the update's engine."""
        verdicts = self.verdicts
        return {
            "compared": verdicts.compared,
            "divergences": verdicts.unexpected,
            "expected_divergences": verdicts.expected,
            "expected_by_rule": dict(verdicts.expected_rules),
            "withheld": self.withheld,
            "not_sent": self.not_sent,
            "transfers_compared": self.transfers_compared,
            **self.backlog.status(),
            # What the follower still owes: released and not answered yet, and the effects of
            # waiters the leader served that wait for their place (Waits.served; their clients
            # already have their replies).
            "backlog": self.backlog.requests + len(self.served),
            "waiting_clients": len(self.blocked),
            "shared_clients": sum(1 for c in self.clients.values() if c.shared),
            "dialect_switches": self.switches,
        }

    def counts(self) -> dict[str, int]:
        """Counters for the metrics (monotonic over the engine's life)."""
        verdicts = self.verdicts
        return {"requests_leader": self.sent[LEADER], "requests_follower": self.sent[FOLLOWER],
                "replies_compared": verdicts.compared,
                "divergences_expected": verdicts.expected,
                "divergences_unexpected": verdicts.unexpected}

    # ---- control events --------------------------------------------------------------------

    def _control(self, event: ev.Event) -> None:
        before = self.mode
        self.mode = next_mode(before, event)
        kind = type(event)
        if kind is ev.Release and not before.pinned and self.ahead:
            self._pin_sessions()  # the sync point: sessions as the leader answered them
        if kind is ev.Release or kind is ev.Ahead:
            if kind is ev.Ahead:
                self.ahead = True
            for client in list(self.clients.values()):
                self._dispatch(LEADER, client)
        elif kind is ev.StartFollower:
            self._start_follower()
        elif kind is ev.TakeOver:
            self._take_over()
        elif kind is ev.Reverse:
            self._reverse(event.comparator)
        elif kind is ev.End:
            self._end(event.cutover)
            return
        self._flush(None)

    def _begin(self, event: ev.Begin) -> None:
        """The update begins: open the shared connection to the leader."""
        self.sides[LEADER].shared = self._open_shared(LEADER)

    def _tick(self, event: ev.Tick) -> None:
        now = self.now = event.now
        self.wall = event.wall + self.clock if event.wall else 0.0
        if now - self._health_at >= HEALTH_EVERY:
            self._health_at = now
            self._check_health(now)

    # ---- clients ---------------------------------------------------------------------------

    def _attach(self, event: ev.Attach) -> None:
        """Take a client over at a reply boundary (at the sync point, or a new one)."""
        codec = self.codec
        replies = event.replies
        client = Client(event.client, event.peer, codec.order_state(replies, self.table))
        self.clients[client.id] = client
        client.channels = codec.data_channels()
        if client.channels is not None:
            client.channels.updating = True
        client.host = event.host
        if event.channel:
            client.data[LEADER] = event.channel
            client.setup = (event.channel, event.setup)
        conn = Conn(event.conn, LEADER, client, replies, connected=event.connected)
        self.conns[conn.id] = conn
        client.lanes[LEADER].conn = conn
        session = list(event.session)
        client.replay = codec.replay(session, replies)
        if not self.mode.pinned:  # its session may change before the sync point (ev.Ahead)
            client.before = session
        if self.routes:
            routes = {codec.route(r) for r in codec.compact_session(session)}
            client.plain = not event.blocked and "session" not in routes and \
                codec.plain_state(replies, transaction=True)
            if client.plain:
                client.dialect = codec.dialect(replies)
                client.user = codec.logged_in_user(replies)
                client.transaction = "begin" in routes or not codec.plain_state(replies)
            client.shared = self._shares(client)
        else:
            client.plain = client.shared = False
        client.solo = client.order.solo
        flight = client.lanes[LEADER].flight
        for request in event.blocked:
            exchange = self._admit(client, request, attached=True)
            exchange.legs[LEADER].ready = True
            flight.append(exchange)
            self.sent[LEADER] += 1
        if self.mode.live:
            self._open_follower_later(client)

    def _requests(self, event: ev.Requests) -> None:
        client = self.clients.get(event.client)
        if client is None or client.gone:
            return
        queue = client.lanes[LEADER].queue
        admit = self._admit
        channels = client.channels
        requests = event.requests
        carry = self.carry
        if carry is not None:
            requests = [carry(request) for request in requests]
        for request in requests:
            if channels is None:
                queue.append(admit(client, request))
                continue
            request, opens = self._channel_request(client, request)
            exchange = admit(client, request)
            exchange.opening = opens
            self._note_abort(client, exchange)
            queue.append(exchange)
        if self.mode.sends:
            self._dispatch(LEADER, client)

    def _run_event(self, event: ev.Run) -> None:
        """A run, or its requests one by one if runs are not allowed for the client now (the
        relay asks first; one sent anyway would wait behind what forbids it forever). When the
        relay asked just before (no event since), only what it did not know is asked again:
        whether the run's replies are all small, and whether it writes."""
        client = self.runs_vouched  # (one of self.clients: no event came since it was asked)
        if client is not None and client.id == event.client:
            if client.gone:
                return
            allowed = (event.small or client.small >= self.shared_after) and \
                (event.reads or not self.sides[LEADER].own_ordered)
        else:
            client = self.clients.get(event.client)
            if client is None or client.gone:
                return
            allowed = self.runs_allowed(client.id, event.small, event.reads)
        if allowed:
            self._run(client, event.raw, event.count, event.reads, event.silent,
                      event.silent_last, event.expiring)
            return
        if not (event.small or client.small >= self.shared_after or client.probed) and \
                self.runs_allowed(client.id, True, event.reads) and \
                self._first_alone(client, event):
            return
        self._requests(ev.Requests(client.id,
                                   self.codec.request_reader(self.limits).receive(event.raw)))

    def _client_error(self, event: ev.ClientError) -> None:
        client = self.clients.get(event.client)
        if client is None or client.gone:
            return
        client.error = event.reply
        self._after_leader(client)

    def _client_eof(self, event: ev.ClientEof) -> None:
        """The client's end of input: passed on to its own leader connection (see _pass_eof),
        and the client is closed once it is owed nothing."""
        client = self.clients.get(event.client)
        if client is None or client.gone:
            return
        client.eof = True
        self._pass_eof(client)
        self._after_leader(client)

    def _slow_reader(self, event: ev.SlowReader) -> None:
        client = self.clients.get(event.client)
        if client is not None:
            client.slow = True

    # ---- server connections ------------------------------------------------------------------

    def _connected(self, event: ev.Connected) -> None:
        conn = self.conns.get(event.conn)
        if conn is None:
            return
        conn.connected = True
        client = conn.client
        if client is None:  # a shared connection
            shared = self.sides[conn.role].shared
            if shared is not None and shared.conn is conn:
                self._log_in(conn.role, shared)
            for other in list(self.clients.values()):
                self._dispatch(conn.role, other)
        elif conn.role == FOLLOWER:
            self._follower_connected(conn)
        else:
            self._dispatch(LEADER, client)

    def _connect_failed(self, event: ev.ConnectFailed) -> None:
        conn = self.conns.pop(event.conn, None)
        if conn is None:
            return
        conn.closed = True
        name = self.sides[conn.role].name
        if conn.client is None or conn.role == FOLLOWER:
            self.fail(f"cannot connect to {name}: {event.reason}")
        elif not conn.client.gone:  # a client that came during the update: no server for it
            self.emit(Log(logging.WARNING, f"cannot connect to {name}: {event.reason}"))
            self._close_client(conn.client)

    def _data(self, event: ev.Data) -> None:
        conn = self.conns.get(event.conn)
        if conn is None:
            return
        client = conn.client
        if client is None:
            shared = self.sides[conn.role].shared
            if shared is None or shared.conn is not conn:
                return
            shared.parser.feed(event.data)
            if conn.role == FOLLOWER:
                self.follower_answered = self.now
            try:
                self._shared_replies(conn.role, shared)
            except ProtocolError as exc:
                self.fail(f"{self.sides[conn.role].name} sent malformed output: {exc}")
                self._close_conn(conn)
            return
        if conn.role == FOLLOWER:
            self.follower_answered = self.now
            self._follower_data(conn, event.data)
            return
        # (A client with data channels gets whole replies: one may open a channel.)
        intercept = conn.intercept or conn.answering > 0 or conn.caught or \
            client.channels is not None
        if not intercept:
            self._pass_through(client, event.data)
        try:
            replies = conn.replies.receive(event.data)
        except ProtocolError as exc:
            # Its stream cannot be followed: the client is closed, once; what it had in the
            # leader cannot be given to the follower, so the update cannot go on either.
            self.emit(Log(logging.ERROR, f"{self.sides[LEADER].name} sent malformed output "
                          f"({exc}): closing client {client.peer}"))
            self.fail(f"{self.sides[LEADER].name} sent malformed output to client "
                      f"{client.peer}: {exc}")
            self._close_conn(conn)
            if not client.gone:
                self._close_client(client)
            return
        conn.caught = intercept and conn.replies.buffered > 0
        self._leader_replies(client, replies, intercept)

    def _conn_closed(self, event: ev.ConnClosed) -> None:
        conn = self.conns.get(event.conn)
        if conn is None or conn.closed:
            return
        conn.closed = True
        del self.conns[conn.id]
        client = conn.client
        name = self.sides[conn.role].name
        if conn.role == FOLLOWER:
            own = client.lanes[LEADER].conn if client is not None else None
            if client is not None and (client.gone or (own is not None and (
                    own.closed or (own.replies is not None and own.replies.closing)))):
                # The leader closed that client too (ACL DELUSER, CLIENT KILL USER ...), or
                # announced it will (FTP's 221 to QUIT, whose close may come after the
                # follower's): the follower did the same to its pair.
                self._pair_lost(client)
                self._forget_if_done(client)
                if self.closing_named:
                    self._recheck_named()
                return
            self.fail(f"the follower {name} closed a connection")
        elif client is None:
            self.emit(LeaderLost(None))
        elif client.gone:
            lane = client.lanes[LEADER]
            lost, lane.flight = lane.flight, deque()
            for exchange in lost:  # (a blocked request: it left with the connection)
                self._waiter_answered(client, exchange)
                self._never_sent(exchange)
            # What it sent after a QUIT, or before a CLIENT KILL, would have run on that
            # connection: never now.
            self._empty_queue(lane)
            self._forget_if_done(client)
        elif client.eof:
            self._close_client(client)  # it followed the client's own end of input
        elif conn.replies is not None and conn.replies.buffered:
            # It closed in the middle of a reply: this client's stream cannot be completed.
            self._close_client(client)
        else:
            self.emit(LeaderLost(client.id))

    # ---- the end of a batch -------------------------------------------------------

    def _flush(self, event: ev.Flush | None) -> None:
        """Send what the shared paths gathered (once per batch of the dispatch loop), and the
        replies routed from them; then say which watched conditions hold."""
        emit = self.emit
        for role, side in enumerate(self.sides):
            shared = side.shared
            if shared is not None and shared.out:
                self._settle_shared(role, shared)
                out, shared.out = shared.out, []
                emit(Send(shared.conn.id, out[0] if len(out) == 1 else _joined(out)))
        if self.outbox:
            outbox, self.outbox = self.outbox, {}
            emit(DeliverAll({client.id: chunks[0] if len(chunks) == 1 else _joined(chunks)
                             for client, chunks in outbox.items()}))
        if self._watches:
            self._check_watches()


_NOBODY = object()
"""The user the shared connections log in as when the two versions' logins name different ones:
nobody is logged in as it, so no client shares them."""


def _joined(chunks: list[bytes]) -> bytes | list[bytes]:
    """A batch's output to one connection: joined, or left a list of buffers when it is large
    (the relay writes those with ``sendmsg``, see ``Output.send``). With 100 KB values at
    ``-P 16`` in MVE, joining a client's replies (the leader's reads as they passed, up to
    hundreds of pieces and several MB a batch) was 40% of the proxy's samples: a copy into
    fresh memory, for a socket that takes a list as well."""
    if sum(map(len, chunks)) >= LIST_PAST:
        return chunks
    return b"".join(chunks)


def _no_store() -> Store:
    raise OSError("no store for the backlog was given")


def _closed(_: object) -> None:
    raise RuntimeError("the update's engine was closed: nothing may be emitted or failed")
