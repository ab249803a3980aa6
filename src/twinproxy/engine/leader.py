"""The leader's path: a request is admitted in arrival order, sent in its turn, answered.

* **Admit.** On arrival each request gets its place in the leader's order
  (:meth:`~twinproxy.engine.sides.Side.admit`), from the protocol's view of what it touches
  (its client's :class:`~twinproxy.protocols.base.OrderState`: a queued command touches nothing
  until EXEC, which touches what its queue and the watched keys do). A blocking request holds
  its keys as a write until the leader showed whether it blocked (:mod:`twinproxy.engine.waits`).
* **Dispatch** (:mod:`twinproxy.engine.dispatch`, the same mechanism for both sides): a
  client's requests go in its order, each on its path, once every earlier conflicting request
  on another connection was answered there; a client's requests never overlap across its paths.
* **Answered.** The leader's reply goes to the client (its bytes as they come on the client's own
  connection; routed one by one from the shared connection), the request leaves the order
  (freeing the requests that waited for it) and is released to the follower
  (:mod:`twinproxy.engine.follower`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinproxy.engine.commands import LEADER
from twinproxy.engine.large import Spooled
from twinproxy.engine.records import Client, Exchange, RunRequest
from twinproxy.engine.verdicts import LARGE_REPLY
from twinproxy.protocols.messages import Reply, Request

if TYPE_CHECKING:
    from twinproxy.engine.backlog import Backlog
    from twinproxy.engine.modes import Mode
    from twinproxy.engine.records import Woken
    from twinproxy.engine.sides import Side
    from twinproxy.engine.verdicts import Verdicts
    from twinproxy.protocols.base import Carry, Codec
    from twinproxy.protocols.messages import Limits



class LeaderFlow:
    """The leader's path (a part of :class:`twinproxy.engine.Engine`)."""

    # State of the engine this part uses (set in Engine.__init__).
    codec: Codec
    limits: Limits
    table: Any
    mode: Mode
    now: float
    routes: bool
    shared_after: int
    shared_user: object  # (engine: who the shared connections log in as)
    clients: dict[int, Client]
    sides: list[Side]
    sent: list[int]
    verdicts: Verdicts
    backlog: Backlog
    outbox: dict[Client, list[bytes]]
    hot: dict[bytes, dict[Exchange, None]]
    gate: dict[bytes, Any]
    fences: dict[Any, None]
    counting: dict[Exchange, None]
    loading: dict[Exchange, None]
    _prune_loading: Any  # (conditions)
    emit: Any
    carry: Carry | None
    _run_now: Any  # (dispatch)
    _release: Any  # (follower)
    _release_run: Any  # (follower)
    withheld: int  # (engine: requests the follower never got, as the leader refused them)
    held: dict[int, Any]  # (first_read)
    _first_answered: Any  # (first_read)
    # The client runs_allowed said yes to, since no event was handled (else None).
    runs_vouched: Client | None

    # ---- admitting ------------------------------------------------------------------------

    def _view(self, client: Client, exchange: Exchange) -> None:
        """What the request touches, for the order: the protocol's view, per client."""
        (exchange.keys, exchange.write, exchange.is_global, exchange.queued,
         exchange.queue) = client.order.view(exchange.request)

    def _admit(self, client: Client, request: Request, attached: bool = False) -> Exchange:
        """A request's place in the leader's order, fixed on arrival. ``attached``: it was
        already in the leader when the client joined the update (it is not sent again)."""
        exchange = Exchange(client, request)
        self._view(client, exchange)
        if client.order.solo:
            client.solo = True  # its stream is per server (MONITOR): the leader's only
        if self.routes and client.plain and not attached:
            route = self.codec.route(request)
            if (route == "dialect" or route == "login") and not exchange.queued:
                exchange.sets_dialect = True  # (on its own connections: see _answered)
                if route == "login":  # who it is is known at its reply: on its own till then
                    client.logging_in += 1
                    client.shared = False
            elif route == "session" or route == "dialect" or route == "login":
                client.plain = client.shared = False
            elif route == "begin":
                client.transaction = True
                client.shared = False
            # On the shared connection every client's requests wait behind the replies to the
            # requests before them there: a client goes on it only once it has had small
            # replies on its own (shared_after), and a large request never does. So twenty
            # pipelined GETs of a 10 MB value from each of 50 clients do not queue 10 GB of
            # replies ahead of everyone else's. A request whose reply is small whatever the
            # data (a SET) takes it at once, as a run of them does, unless the client's request
            # before it is out on its own connection (it would wait for that reply, where it
            # can be pipelined behind it). On clients' own connections, writes to one key go
            # one round trip at a time: 1,000 memcslap clients, which all start with the same
            # key, waited seconds for their first SETs (some past their timeout), and while
            # those were out no client's writes could travel as runs.
            shareable = route == "shared" and client.shared and not client.slow and \
                type(request.raw) is not Spooled
            exchange.shared = shareable and \
                (client.small >= self.shared_after or self._small_shares(client, request))
            exchange.shares_later = shareable and not exchange.shared
            if request.replies == 0 and route == "shared" and not exchange.shared:
                # No reply shows when it ran (memcached's noreply): its client's later requests
                # must follow it on its own connection, from now on (a "session" request).
                client.plain = client.shared = False
                exchange.shares_later = False
            if route == "end" and not client.order.in_transaction:
                client.transaction = False
                client.shared = self._shares(client)
        blocking = request.blocking
        if blocking and not exchange.queued and not attached and exchange.keys:
            # It blocks in the leader, on the client's own connection; until the leader showed
            # whether it blocked, it holds its keys as a write (see waits).
            exchange.shared = exchange.shares_later = False
            self.sides[LEADER].admit(exchange, exchange.keys, True, exchange.is_global)
            return exchange
        self.sides[LEADER].admit(exchange, () if blocking else exchange.keys,
                                 exchange.write and not blocking, exchange.is_global)
        if not (exchange.shared or exchange.keys or exchange.is_global) and \
                self.codec.quiesces(request):
            if len(self.loading) >= 64:
                self._prune_loading()
            self.loading[exchange] = None  # (the cutover waits for it: "loaded")
        return exchange

    def _shares(self, client: Client) -> bool:
        """Whether a plain client may share the shared connections: out of a transaction, and
        only as the user they log in as (``shared_user``), so that nobody runs a request there
        as another (a client that did not log in, on a server that wants a password, is
        refused on its own connections as directly)."""
        return client.plain and client.user == self.shared_user and \
            not client.transaction and not client.logging_in

    def _small_shares(self, client: Client, request: Request) -> bool:
        """Whether a request of a client that has not had ``shared_after`` small replies yet
        takes the shared connection: its reply is small whatever the data, and nothing of the
        client's before it waits on its own connection."""
        if not self.codec.small_reply(request):
            return False
        lane = client.lanes[LEADER]
        last = lane.queue[-1] if lane.queue else lane.flight[-1] if lane.flight else None
        return last is None or last.shared

    def _run(self, client: Client, raw: bytes, count: int, reads: bool = False, silent: int = 0,
             silent_last: bool = False, expiring: bool = False) -> None:
        """A read of ``count`` ordinary requests from a plain client: one exchange
        (``reads``: none of them changes data; ``silent`` of them get no reply, the last among
        them if ``silent_last``; ``expiring``: the follower gets them changed)."""
        run = Exchange(client, RunRequest(raw, count - silent, silent_last, expiring))
        run.run = count
        run.parts = []
        run.shared = True
        # Ready: runs start only while no ordered request is out, or none that writes for one
        # that only reads (runs_allowed).
        self.sides[LEADER].place_run(run, reads)
        if self._run_now(LEADER, client, run):
            return
        client.lanes[LEADER].queue.append(run)
        if self.mode.sends:
            self._dispatch(LEADER, client)

    def runs_allowed(self, client_id: int, small: bool = False, reads: bool = False) -> bool:
        """Whether this client's next read may travel as a run. Not while requests block in
        the leader (a run's keys are not known, and the request-by-request path fences exactly
        the writes on their keys), nor while a request on a client's own leader
        connection is ordered (it must stay after the runs before it and before those after),
        unless the run only reads (``reads``) and no such request writes: reads commute, so
        the two versions' outcomes do not depend on how they interleave. Without that, a
        thousand new clients each reading on its own connection first (``shared_after``) kept
        every client's reads off runs until all of them had had their first replies.
        Not before the client has had ``shared_after`` small replies on its own connection,
        unless the run's replies are all small whatever the data (``small``: SETs, INCRs):
        otherwise fifty new clients whose first writes touch one key would go on their own
        connections, each waiting for the one before it to be answered there.

        A yes holds until the next event is handled: the run the client sends right after it
        is taken without asking all of this again (see ``Engine._run_event``).
        """
        client = self.clients.get(client_id)
        leader = self.sides[LEADER]
        allowed = (client is not None and client.shared and not client.slow
                   and (small or client.small >= self.shared_after)
                   and (not leader.own_ordered or (reads and not leader.own_writes))
                   and not self.hot and not self.fences and leader.shared is not None)
        self.runs_vouched = client if allowed else None
        return allowed

    # ---- the leader's replies ------------------------------------------------------------

    def _leader_replies(self, client: Client, replies: list[Reply], forward: bool) -> None:
        """Framed replies on a client's own leader connection. Their bytes went to the client
        already, unless ``forward`` (a blocking request is being released at the sync point:
        only the engine knows what is the client's)."""
        woken: Woken = {}
        flight = client.lanes[LEADER].flight
        for reply in replies:
            if reply.request is None:
                if forward:
                    self._to_client(client, reply.raw)
                if reply.push and client.joined and not client.solo:
                    self.verdicts.push(client, self.codec.canonical(reply), LEADER)
                continue
            if not reply.final or not flight:
                if forward:
                    self._to_client(client, reply.raw)
                if flight and client.channels is not None:
                    self._marked(client, flight[0], LEADER)
                continue
            self._answered(client, flight.popleft(), reply, woken, forward)
        queue = client.lanes[LEADER].queue
        if queue and (not flight or queue[0].request.answer is not None):
            # What waited for this path to be answered may go now (a request on the shared
            # path after a DISCARD on its own: MULTI, SET, DISCARD, SET, EXEC in one write; a
            # request the proxy answers, after the reply in progress).
            woken[client] = None
        for other in woken:
            self._dispatch(LEADER, other)
        self._after_leader(client)

    def _answered(self, client: Client, exchange: Exchange, reply: Reply, woken: Woken,
                  forward: bool) -> None:
        """The leader's final reply to ``exchange``: to the client, out of the order, on to the
        follower."""
        wait = exchange.wait
        if wait is not None and wait.unblocking and self._unblocked(client, exchange, reply,
                                                                     woken):
            return
        if exchange.sets_dialect:  # before its client's next request goes to the leader
            client.dialect = self.codec.dialect_after(exchange.request, reply, client.dialect)
            if self.codec.route(exchange.request) == "login":
                conn = client.lanes[LEADER].conn
                if conn is not None and conn.replies is not None:  # (who it logged in as)
                    client.user = self.codec.logged_in_user(conn.replies)
                client.logging_in -= 1
                client.shared = self._shares(client)
        answer = exchange.request.answer
        raw = reply.raw
        if self.counting and exchange in self.counting:  # counts without the proxy's probes
            raw = self._counted(exchange, reply, woken)
            conn = client.lanes[LEADER].conn
            if not exchange.shared and conn is not None and conn.answering:
                conn.answering -= 1
        if answer is not None:  # the proxy's own answer goes where the reply would
            conn = client.lanes[LEADER].conn
            if conn is not None and conn.answering:
                conn.answering -= 1
            self._to_client(client, answer)
        elif client.channels is not None:  # whole replies; one may open a channel
            if exchange.opening is not None:
                self._port_answered(client, exchange, LEADER)
            if not self._channel_reply(client, exchange, reply, LEADER,
                                       client.lanes[LEADER].conn):
                self._to_client(client, reply.raw)
        elif forward:
            self._to_client(client, raw)
        if len(reply.raw) >= LARGE_REPLY:
            client.small = 0  # off the shared connection (see _admit)
        elif not exchange.shared and client.small < self.shared_after:
            client.small += 1
        exchange.leader_reply = reply
        exchange.leader_value = self.codec.canonical(reply)
        exchange.leader_at = self.now
        if self.carry is not None:  # the tokens the version that leads now shows
            self.carry.seen((reply,))
        self._leader_freed(self.sides[LEADER].answered(exchange), woken)
        if exchange.written:
            self._write_done(exchange)
        if exchange.opens is not None:
            self._write_answered(exchange)
        if exchange.block_seq and self._waiter_answered(client, exchange):
            return  # its effect goes to the follower when its fence ends
        if client.solo or not self.mode.pinned:
            if client.before is not None and exchange.request.session:
                client.before.append(exchange.request)  # in the snapshot's session (Ahead)
            return
        if exchange.request.blocking and exchange.keys and not exchange.block_seq:
            waker = self._waker(exchange)
            if waker is not None:
                if waker.effects_after is None:
                    waker.effects_after = []
                waker.effects_after.append(exchange)
                return
        if exchange.shares_later and answer is None and len(reply.raw) < LARGE_REPLY:
            # Kept off the shared connection to the leader only until its reply showed it
            # small: the follower's copy goes on the shared one. A new client's first request
            # then costs the follower no send and no read of its own, nor their framing.
            exchange.shared = True
            exchange.dialect = client.dialect  # (after what its connection answered first)
        self._release(client, exchange)
        if exchange.effects_after:
            for other in exchange.effects_after:
                if other.client.id in self.clients:
                    self._release(other.client, other)
            exchange.effects_after = None

    def _pin_sessions(self) -> None:
        """The sync point is pinned after the clients were driven ahead of it (events.Ahead):
        each client's follower connection gets the session the leader had answered by then
        (nothing but a blocked request is in flight at the barrier, so its reply reader's
        state is that session's too); what the leader answers from now on is owed to the
        follower as usual."""
        codec = self.codec
        for client in self.clients.values():
            if client.before is None:
                continue
            conn = client.lanes[LEADER].conn
            client.replay = codec.replay(client.before,
                                         conn.replies if conn is not None else None)
            client.before = None

    def _leader_freed(self, freed: list[Exchange], woken: Woken) -> None:
        for other in freed:
            woken[other.client] = None

    def _run_answered(self, client: Client, run: Exchange, woken: Woken) -> None:
        """A run's replies are all in: to the client, and on to the follower (request by
        request when the leader refused one of them, so that it is withheld there)."""
        if run.hasher is not None:  # large: its bytes went to the client, its digest stays
            run.leader_digest = (run.size, run.hasher.digest())
            client.small = 0  # off the shared connection (see _admit)
        else:
            parts = run.parts
            run.leader_raw = parts[0] if len(parts) == 1 else b"".join(parts)
        run.parts = run.hasher = None
        run.size = 0
        run.leader_at = self.now
        self.sides[LEADER].run_answered(run)
        leader = self.sides[LEADER]
        if leader.marked:
            marked, leader.marked = leader.marked, {}
            woken.update(marked)
        if run.opens is not None:
            self._write_answered(run)
        if client.solo or not self.mode.pinned:  # (before the sync point: in the snapshot)
            return
        if run.run_error and run.leader_digest is None:
            self._split_run(client, run)
        else:  # (a large run with an error goes as it is: its replies were not kept)
            self._release_run(client, run)

    def _split_run(self, client: Client, run: Exchange) -> None:
        """Release a run request by request, each with its leader reply, as if it had come so;
        but a transaction in it (a run takes them whole: Redis's MULTI ... EXEC) goes on whole,
        since on the follower's shared connection nobody else's request may come inside it."""
        codec = self.codec
        requests = codec.request_reader(self.limits).receive(run.request.raw)
        parser = codec.shared_parser(self.limits)
        parser.feed(run.leader_raw)
        order = client.order
        block: list[tuple[Request, bytes]] = []  # a transaction's requests, leader replies
        opened = False  # (the leader opened it: it did not refuse MULTI)
        for request in requests:
            exchange = Exchange(client, request)
            self._view(client, exchange)
            reply, raw = codec.run_reply(parser, request)
            if block or order.in_transaction:
                if not block:
                    opened = not reply.error
                block.append((request, raw))
                if not order.in_transaction:  # its end: the leader ran none of it if it
                    # refused one (EXEC aborted), or it was discarded or empty
                    self._release_transaction(client, run, block, opened and (
                        reply.error or not exchange.queue))
                    block = []
                continue
            exchange.shared = True
            exchange.dialect = run.dialect
            exchange.leader_reply = reply
            exchange.leader_value = codec.canonical(reply)
            exchange.leader_at = self.now
            exchange.legs[LEADER].sent = run.legs[LEADER].sent
            self._release(client, exchange)

    def _release_transaction(self, client: Client, run: Exchange,
                             block: list[tuple[Request, bytes]], withheld: bool) -> None:
        """A whole transaction of a run that is released request by request: to the follower
        as a run of its own, as the client sent it; or not at all (``withheld``) where the
        leader ran none of it, as a refused write is withheld: a version that would not have
        refused what the leader did would run it. (Where the leader refused MULTI itself, it ran
        the others as they came, and so does the follower.)"""
        if withheld:
            self.withheld += len(block)
            return
        part = Exchange(client, RunRequest(b"".join(r.raw for r, _ in block), len(block),
                                           expiring=run.request.expiring))
        part.run = len(block)
        part.shared = True
        part.dialect = run.dialect
        part.leader_raw = b"".join(raw for _, raw in block)
        part.leader_at = self.now
        part.legs[LEADER].sent = run.legs[LEADER].sent
        self._release_run(client, part)

    def _never_sent(self, exchange: Exchange) -> None:
        """An admitted request that will never go to the leader (its client left): it leaves
        the order, and whatever waited for it may go."""
        if exchange.run:  # no later request waits for it
            self.sides[LEADER].run_answered(exchange)
        woken: Woken = {}
        if self.counting.pop(exchange, 0) is None:  # (a request that shows counts: see waits)
            self._uncounted(woken)
        self._leader_freed(self.sides[LEADER].answered(exchange), woken)
        if self.mode.sends:
            for other in woken:
                self._dispatch(LEADER, other)

    def _after_leader(self, client: Client) -> None:
        """After the leader answered some of a client's requests: a client that asked to be
        closed once it is owed nothing (end of its input, a protocol error) is closed now; a
        client that left is forgotten once nothing of its is on the way. A client whose input is
        held until its first request is answered gets it back (see first_read)."""
        if self.held:
            self._first_answered(client)
        if (client.eof or client.error is not None) and not client.gone and not client.owes():
            if client.error is not None:
                self._to_client(client, client.error)
            self._close_client(client)
        self._forget_if_done(client)
