"""The follower's path: released once the leader's reply is known, sent in the leader's order,
answered, compared.

The follower runs behind the leader, as in Varan's leader/follower ring. A request is *released*
to the follower when the leader's reply to it is complete, so the follower executes conflicting
requests in the order the leader did, and never holds a client up. At release the protocol says
what the follower gets (``follower_plan``): the request itself, the leader's *effect* instead
(SPOP's members as SREM, XADD with the leader's ID), or nothing (a write the leader rejected;
a cursor). A transaction whose commands the leader's reply decides is replayed with those effects
at EXEC (``transaction_plan``). The config's rewrite rules apply last.

The follower's connections are opened when it serves (``StartFollower``); each client's own one
first gets the client's session (SELECT, AUTH, HELLO ...), then what the client was owed.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twinproxy.engine.commands import FOLLOWER, LEADER, Open, Send
from twinproxy.engine.events import OpenFollowers, new_id
from twinproxy.engine.large import Spooled, held_size
from twinproxy.engine.records import Client, Conn, Exchange
from twinproxy.engine.sides import Shared
from twinproxy.engine.verdicts import LARGE_REPLY, digest
from twinproxy.protocols.messages import ProtocolError, Reply

if TYPE_CHECKING:
    from twinproxy.engine.backlog import Backlog
    from twinproxy.engine.modes import Mode
    from twinproxy.engine.records import Woken
    from twinproxy.engine.sides import Side
    from twinproxy.engine.verdicts import Verdicts
    from twinproxy.protocols.base import Codec, TransactionPlan
    from twinproxy.protocols.messages import Limits

WITHHELD = "builtin:withheld"  # the plan's rule for a request the leader rejected


class _AnyId(dict):
    """Every id known (as 0): whether a request names a connection by its id at all."""

    def get(self, key: Any, default: Any = None) -> Any:
        return 0


_ANY_ID = _AnyId()


class FollowerFlow:
    """The follower's path (a part of :class:`twinproxy.engine.Engine`)."""

    codec: Codec
    limits: Limits
    logins: dict[str, bytes]  # (engine: each version's login request, by its name)
    table: Any
    mode: Mode
    now: float
    wall: float
    routes: bool
    clients: dict[int, Client]
    conns: dict[int, Conn]
    sides: list[Side]
    verdicts: Verdicts
    backlog: Backlog
    emit: Any
    withheld: int
    not_sent: int
    quiescing: Client | None
    loads_held: dict[Client, None]
    lazy_followers: bool
    opening: dict[Client, None]

    # ---- releasing ---------------------------------------------------------------------------

    def _release(self, client: Client, exchange: Exchange) -> None:
        """The leader's reply is known: decide what the follower gets and place it in order."""
        codec = self.codec
        request = exchange.request
        if client.lazy and codec.names_connection(request):
            # It has no follower connection: the one it opens gets the name first, as a
            # replay (_open_follower), instead of opening it now (_open_follower_later).
            names = client.unsent_names
            client.unsent_names = codec.compact_session([*(names or ()), request])
            return
        plan = codec.follower_plan(request, exchange.leader_value, exchange.queued, self.wall)
        words = plan.words if plan is not None else None
        if plan is not None and plan.fails:
            self.fail(plan.fails)
            return
        if plan is not None and plan.words is None and plan.check is None:
            if plan.rule == WITHHELD:
                self.withheld += 1
            else:
                self.not_sent += 1
            return
        extra: set[bytes] | None = None
        if exchange.queue and plan is None:
            transaction = codec.transaction_plan(exchange.queue, exchange.leader_value)
            if transaction is not None:
                plan = transaction
                extra = self._replay_transaction(client, exchange, transaction)
        renames = False
        if codec.server_names:  # the names in what the follower gets, rewritten or not
            named = request if words is None else codec.make_request(words)
            theirs = codec.follower_ids(named, self.verdicts.ids, exchange.leader_value)
            # An id not learned yet, while the follower has still to answer a request that
            # teaches one (a CLIENT ID the leader answered first): rewritten when it is sent.
            names = theirs is not None or \
                codec.follower_ids(named, _ANY_ID, exchange.leader_value) is not None
            renames = theirs is None and bool(self.learning) and names
            if names:
                self.naming_out[exchange] = None
            if theirs is not None:
                words = theirs
                plan = codec.renamed_plan(request, plan)
            if codec.server_ids(request, exchange.leader_value, exchange.leader_value):
                self.learning[exchange] = None
                client.named = True
        rewritten = self.verdicts.comparator.rules.rewrite(request)
        if rewritten is not None:
            words = rewritten
            renames = False
        exchange.renames = renames
        if words is not None:
            follower_request = codec.describe(codec.make_request(words), self.table)
            if type(request.raw) is Spooled:  # a large request: its value stays where it is
                raw = request.raw.rewritten(follower_request.raw)
                if raw is None:
                    self.fail(f"a {request.name} with several values of 1 MiB or more cannot be "
                              "rewritten for the follower")
                    raw = request.raw
                follower_request.raw = raw
            keys = follower_request.keys
            write, is_global = follower_request.write, follower_request.is_global
        else:
            follower_request = request
            keys, write, is_global = exchange.keys, exchange.write, exchange.is_global
            if extra:
                keys = tuple(extra.union(keys))
        exchange.follower_request = follower_request
        exchange.plan = plan
        # A request after which the server refuses others for a while (Redis's DEBUG RELOAD,
        # untracked on the leader, where clients get -LOADING meanwhile as they would
        # directly): on the follower, behind, nothing the leader ran may meet that refusal.
        quiesce = not keys and not is_global and not exchange.shared and \
            codec.quiesces(follower_request)
        self.sides[FOLLOWER].admit(exchange, keys, write, is_global, quiesce=quiesce)
        self._queue_follower(client, exchange, 1, held_size(follower_request.raw))

    def _replay_transaction(self, client: Client, exchange: Exchange,
                            plan: TransactionPlan) -> set[bytes]:
        """Queue, ahead of the EXEC ``exchange`` on the client's follower connection, what the
        protocol's transaction plan sends first: the transaction again, with the commands whose
        effect the leader's reply decided replaced by that effect (SPOP -> SREM). These are the
        proxy's own requests, as a session replay's are: their replies are not compared (EXEC's
        reply is, element by element) and they count in no backlog. They may go before EXEC's
        turn in the follower's order: queued commands do nothing until EXEC. Returns the keys
        the effects name (RANDOMKEY's key), for EXEC's place in that order."""
        codec = self.codec
        keys: set[bytes] = set()
        queue = exchange.queue
        rewrite = self.verdicts.comparator.rules.rewrite
        follower_queue = client.lanes[FOLLOWER].queue
        for item in plan.before:
            if isinstance(item, int):
                request = queue[item]
                words = rewrite(request)
                if words is not None:
                    request = codec.describe(codec.make_request(words), self.table)
            else:
                request = codec.describe(codec.make_request(item), self.table)
                keys.update(request.keys)
            internal = Exchange(client, request)
            internal.internal = True
            internal.follower_request = request
            internal.legs[FOLLOWER].ready = True
            follower_queue.append(internal)
        return keys

    def _release_run(self, client: Client, run: Exchange) -> None:
        """A run goes to the follower as it came, but for what the codec changes
        (``Codec.follower_run``: an expiry in seconds from now made the leader's moment, for
        Redis's SET ... EX and memcached's stores); while a request on a client's own follower
        connection is ordered there, runs wait (their keys are not known). Where its replies
        then differ, the requests shown (``Verdicts.run``) are the follower's words."""
        follower = self.sides[FOLLOWER]
        run.follower_request = request = run.request
        if request.expiring:  # (the leader's bytes went already: the follower's replace them)
            request.raw = self.codec.follower_run(request.raw, self.wall)
        if not follower.place_run(run):
            follower.hold_run(run)
        self._queue_follower(client, run, run.run, len(run.request.raw))

    def _queue_follower(self, client: Client, exchange: Exchange, count: int, size: int) -> None:
        exchange.counted = size = size + self._keep_small(exchange)
        backlog = self.backlog
        backlog.add(count, size)
        if exchange.run and self._run_now(FOLLOWER, client, exchange):
            return
        client.lanes[FOLLOWER].queue.append(exchange)
        if exchange.shared:  # it goes on the shared connection in its turn (see sides)
            exchange.legs[FOLLOWER].lined = True
            self.sides[FOLLOWER].line.append(exchange)
        if not self.mode.live:
            if backlog.over_memory:
                backlog.spill(exchange)
            return
        if not exchange.shared and (client.lazy or (
                client.gone and client.lanes[FOLLOWER].conn is None)):
            # The first request of a new client's that does not go on the shared one. Or it
            # left before the follower started, with this request still in the leader: it got
            # no follower connection then (_start_follower), and needs one now (not for a
            # request that goes on the shared one).
            self._open_follower(client)
        self._dispatch(FOLLOWER, client)

    # ---- connections -------------------------------------------------------------------------

    def _keep_small(self, exchange: Exchange) -> int:
        """Keep what the follower's reply is compared with, a large leader reply as its size and
        digest only; returns the bytes kept, which count in the backlog."""
        if exchange.run:
            if exchange.leader_digest is not None:
                return 0
            raw = exchange.leader_raw
            if len(raw) <= LARGE_REPLY or not self.verdicts.by_digest(exchange):
                return len(raw)
            exchange.leader_digest = digest(raw)
            exchange.leader_raw = b""
            return 0
        reply = exchange.leader_reply
        if reply is None:
            return 0
        if len(reply.raw) <= LARGE_REPLY or not self.verdicts.by_digest(exchange):
            return len(reply.raw)
        exchange.leader_digest = digest(reply.raw)
        exchange.leader_reply = Reply(b"", None, request=reply.request, error=reply.error)
        exchange.leader_value = None
        return 0

    def _open_shared(self, role: int) -> Shared | None:
        """The shared connection to one version (for a protocol that routes requests)."""
        if not self.routes:
            return None
        conn = Conn(new_id(), role, None, None)
        self.conns[conn.id] = conn
        self.emit(Open(conn.id, role, None))
        return Shared(conn, self.codec.shared_parser(self.limits),
                      self.logins.get(self.sides[role].name))

    def _open_follower_later(self, client: Client) -> None:
        """A client that connects during MVE with the plain session gets its own follower
        connection once a request of its does not go on the shared one (_queue_follower): most
        never need one (redis-benchmark, memcslap, a web page's few GETs), and each costs the
        proxy a connect and a close, and the new version an accept, per client. The clients go
        to the follower only at a cutover, which opens the missing ones first (OpenFollowers:
        _reverse and _end keep no client without one)."""
        if self.lazy_followers and client.shared and not client.replay and \
                client.setup is None and not client.solo:
            client.lazy = True
            return
        self._open_follower(client)

    def _open_followers(self, event: OpenFollowers) -> None:
        """Every client that still has no follower connection gets one (a cutover comes), and
        from now on each new client at once."""
        self.lazy_followers = False
        if not self.mode.live:
            return
        for client in list(self.clients.values()):
            if client.lazy and not client.gone:
                self._open_follower(client)
                self.opening[client] = None

    def _open_follower(self, client: Client) -> None:
        """The client's own connection to the follower (none for a MONITOR client)."""
        client.lazy = False
        if client.solo:
            return
        if client.unsent_names:
            client.replay = self.codec.replay(client.unsent_names, None)
            client.unsent_names = None
        conn = Conn(new_id(), FOLLOWER, client, self.codec.reply_reader(self.limits))
        self.conns[conn.id] = conn
        client.lanes[FOLLOWER].conn = conn
        self.emit(Open(conn.id, FOLLOWER, client.id))

    def _start_follower(self) -> None:
        """The follower serves: open its connections, replay sessions, send what waited."""
        self.sides[FOLLOWER].shared = self._open_shared(FOLLOWER)
        for client in list(self.clients.values()):
            if not client.gone or client.lanes[FOLLOWER].queue:
                self._open_follower(client)
            self._dispatch(FOLLOWER, client)
        held, self.loads_held = self.loads_held, {}
        for client in held:  # its DEBUG RELOAD goes now that the snapshot is the new version's
            self._dispatch(LEADER, client)

    def _follower_connected(self, conn: Conn) -> None:
        """A client's follower connection is up: its session first, then its backlog."""
        client = conn.client
        lane = client.lanes[FOLLOWER]
        if client.replay:
            expect = conn.replies.expect
            reader = self.codec.request_reader(self.limits)
            for raw in client.replay:
                request = reader.receive(raw)[0]
                exchange = Exchange(client, request)
                exchange.internal = True
                exchange.follower_request = request
                exchange.legs[FOLLOWER].sent = self.now
                expect(request)
                lane.flight.append(exchange)
            self.emit(Send(conn.id, b"".join(client.replay)))
        if client.setup is not None:
            self._set_up_channel(client, conn)
        client.joined = True
        if self.opening:
            self.opening.pop(client, None)
        self._dispatch(FOLLOWER, client)
        self._synthetic(conn)

    def _pair_lost(self, client: Client) -> None:
        """The follower closed the connection of a client that the leader closed too (CLIENT
        KILL, ACL DELUSER): what it had not answered on it never will be. Each request leaves
        the follower's order, so that what waits for it goes, and the backlog, which the
        cutover waits to see empty; no one gets its reply, as no one got the leader's."""
        lane = client.lanes[FOLLOWER]
        lost = [e for e in (*lane.flight, *lane.queue) if not (e.shared or e.internal or e.run)]
        if not lost:
            return
        lane.flight = deque(e for e in lane.flight if e.shared)
        lane.queue = deque(e for e in lane.queue if e.shared or e.run)
        follower = self.sides[FOLLOWER]
        woken: Woken = {}
        for exchange in lost:
            self.backlog.done(1, exchange.counted)
            self.not_sent += 1
            self.learning.pop(exchange, None)
            self.naming_out.pop(exchange, None)
            for other in follower.answered(exchange):
                woken[other.client] = None
        for other_client in follower.runs_now_ready():
            woken[other_client] = None
        woken.pop(client, None)
        for other_client in woken:
            self._dispatch(FOLLOWER, other_client)

    # ---- connection ids named before the follower taught them ---------------------------------

    def _init_naming(self) -> None:
        # Released requests that teach the two servers' ids of a connection (CLIENT ID), not
        # answered by the follower yet; and the clients whose next request waits for them.
        self.learning: dict[Exchange, None] = {}
        self.naming: dict[Client, None] = {}
        # Released requests that name connections by id (CLIENT TRACKING ... REDIRECT), not
        # answered by the follower yet; the clients that left whose follower connection stays
        # open for them, each with those it waits for (the ones released before it left: see
        # _still_named); and the clients whose next request, released after one of those left,
        # waits until its follower connection has closed (see _closed_first).
        self.naming_out: dict[Exchange, None] = {}
        self.closing_named: dict[Client, set[Exchange]] = {}
        self.after_closing: dict[Client, None] = {}

    def _unanswered(self, released: dict[Exchange, None]) -> bool:
        """Whether requests in ``released`` still wait for the follower's reply: those
        answered, or that never will be (their connection closed), are dropped from it."""
        for other in list(released):
            lane = other.client.lanes[FOLLOWER] if other.client is not None else None
            if lane is None or lane.conn is None or lane.conn.closed or not (
                    other in lane.queue or other in lane.flight):
                del released[other]  # answered, or it never will be
        return bool(released)

    def _named_left(self, client: Client) -> None:
        """``client``, which asked its connection's id, left: its follower connection stays
        open until the follower has answered (or can no longer answer) the released requests
        that name connections, as they are now (see _still_named); those released from now on
        wait until it has closed (see _closed_first)."""
        self._unanswered(self.naming_out)
        self.closing_named[client] = set(self.naming_out)

    def _still_named(self, client: Client) -> bool:
        """Whether the follower connection of ``client``, which left after asking its id, must
        stay open a while: a request released before it left may name it (a REDIRECT to it,
        which the leader ran while it was open), and the follower, behind, has not run that
        yet. Closed at once, the follower would refuse the id, and its tracking would differ
        from then on."""
        waits = self.closing_named.get(client)
        if waits is None:
            return False
        if waits:
            self._unanswered(self.naming_out)
            waits.intersection_update(self.naming_out)
            if waits:
                return True
        del self.closing_named[client]
        return False

    def _closed_first(self, client: Client, head: Exchange) -> bool:
        """Whether ``head``, which names connections and was released after a client whose
        follower connection stays open for an earlier such request had left, waits until that
        connection has closed: the leader ran it with that client gone, so the follower must
        too (else its CLIENT LIST ID shows the client, or its REDIRECT to it is accepted)."""
        for waits in self.closing_named.values():
            if head not in waits:
                self.after_closing[client] = None
                return True
        return False

    def _named_closed(self) -> None:
        """A client held open by _still_named is forgotten: the requests that waited for its
        connection to close may go."""
        held = list(self.after_closing)
        self.after_closing.clear()
        for other in held:
            self._dispatch(FOLLOWER, other)

    def _recheck_named(self) -> None:
        """A follower connection closed: the requests naming connections that it carried will
        never be answered, so the clients held open for them are looked at again."""
        for other in list(self.closing_named):
            self._forget_if_done(other)

    def _names_wait(self, client: Client, head: Exchange) -> bool:
        """Whether ``head``, which names a connection by an id the follower did not teach when
        it was released, waits before it is sent to the follower: the leader answers a CLIENT
        ID before the follower does, and a client may name that id on another connection at
        once (CLIENT TRACKING ... REDIRECT): sent before the follower's CLIENT ID reply is in,
        the leader's id reaches the follower, which refuses it. Else its ids are rewritten now
        (those still unknown go as they are, and the follower's error shows as a divergence)."""
        if self._unanswered(self.learning):
            self.naming[client] = None
            return True
        head.renames = False
        codec = self.codec
        words = codec.follower_ids(head.follower_request, self.verdicts.ids, head.leader_value)
        if words is not None:
            head.follower_request = codec.describe(codec.make_request(words), self.table)
            head.plan = codec.renamed_plan(head.request, head.plan)
        return False

    # ---- the follower's replies ----------------------------------------------------------------

    def _follower_data(self, conn: Conn, data: bytes) -> None:
        try:
            replies = conn.replies.receive(data)
        except ProtocolError as exc:
            self.fail(f"the follower {self.sides[FOLLOWER].name} sent malformed output: {exc}")
            self._close_conn(conn)
            return
        self._follower_replies(conn, replies)

    def _follower_replies(self, conn: Conn, replies: list[Reply]) -> None:
        """Framed replies on a client's own follower connection."""
        client = conn.client
        woken: Woken = {client: None}
        flight = client.lanes[FOLLOWER].flight
        canonical = self.codec.canonical
        for reply in replies:
            if reply.request is None:
                if reply.push and not client.solo:
                    self.verdicts.push(client, canonical(reply), FOLLOWER)
                continue
            if not reply.final or not flight:
                if flight and client.channels is not None:
                    self._marked(client, flight[0], FOLLOWER)
                continue
            exchange = flight.popleft() if not flight[0].shared else _own_first(flight)
            if exchange is None:  # (its reader expected a reply: a request went, so never)
                self.fail(f"the follower {self.sides[FOLLOWER].name} answered on "
                          f"{client.peer}'s connection a request the proxy has no record of")
                continue
            if exchange.internal:
                if exchange.channel:  # a data channel set up before the sync point
                    self._followed_setup(client, exchange, reply, conn)
                continue  # a session replay: its outcome shows in the replies that follow
            self._followed(client, exchange, reply, woken)
        if self.quiescing is not None:  # it waits for the follower to be idle: try it again
            woken[self.quiescing] = None
            self.quiescing = None
        for other in woken:
            self._dispatch(FOLLOWER, other)
            self._forget_if_done(other)

    def _followed(self, client: Client, exchange: Exchange, reply: Reply,
                  woken: Woken) -> None:
        """The follower's final reply to ``exchange``: compared (or, after a takeover, the
        client's), and out of the follower's order."""
        if exchange.answer:
            self._to_client(client, reply.raw)
        elif client.channels is None:
            # The time between the two executions is at most the time from the request's
            # going to the leader to the follower's reply: the leader may have run it long
            # before its reply was read (a loaded machine), so not from the reply's arrival.
            sent = exchange.legs[LEADER].sent or exchange.leader_at
            self.verdicts.reply(client, exchange, reply, self.now - min(sent, exchange.leader_at))
        else:  # a protocol with data channels (engine.transfers)
            self._followed_channels(client, exchange, reply)
        self.backlog.done(1, exchange.counted)
        if self.learning.pop(exchange, 0) is None and self.naming:  # its ids are known now
            woken.update(self.naming)
            self.naming.clear()
        if self.naming_out.pop(exchange, 0) is None and self.closing_named:
            for other, waits in self.closing_named.items():
                if exchange in waits:  # (forgotten once nothing it waits for is left)
                    woken[other] = None
        follower = self.sides[FOLLOWER]
        ordered = exchange.legs[FOLLOWER].own_seq
        for other in follower.answered(exchange):
            woken[other.client] = None
        if ordered:
            for other_client in follower.runs_now_ready():
                woken[other_client] = None

    def _run_followed(self, client: Client, run: Exchange, woken: Woken,
                      same: bool = False) -> None:
        """The follower's replies to a run: the same bytes as the leader's (``same``, or
        found so), or each request's replies compared under the rules."""
        self.sides[FOLLOWER].run_answered(run)
        verdicts = self.verdicts
        if same:
            verdicts.compared += run.run
        elif not run.answer:  # (after a take-over its replies went to the client as they came)
            got = (run.size, run.hasher.digest()) if run.hasher is not None \
                else b"".join(run.parts)
            if run.leader_digest is None and not isinstance(got, tuple):
                if got == run.leader_raw:
                    verdicts.compared += run.run
                else:
                    verdicts.run(client, run, got)  # request by request, under the rules
            else:
                verdicts.compared += run.run
                [first, *_] = self.codec.request_reader(self.limits).receive(run.request.raw)
                verdicts.large(client, first, run.leader_digest or digest(run.leader_raw), got)
        run.parts = run.hasher = None
        run.size = 0
        self.backlog.done(run.run, run.counted)
        follower = self.sides[FOLLOWER]
        if follower.marked:
            marked, follower.marked = follower.marked, {}
            woken.update(marked)

    def _caught_up(self) -> bool:
        """The follower answered everything released to it, and every push was matched."""
        if self.backlog.requests or self.awaiting:
            return False
        return all(not c.lanes[FOLLOWER].flight and not c.lanes[LEADER].pushes
                   and not c.lanes[FOLLOWER].pushes
                   for c in self.clients.values() if not c.solo)


def _own_first(flight: deque[Exchange]) -> Exchange | None:
    """The first of a client's requests out on the follower that went on its own connection,
    taken out of ``flight``. A client's requests never overlap on its two paths, but the
    session replay of a follower connection opened while requests of the client's were out on
    the shared one goes at once (its name, as redis-py sends on every connection: see
    ``_open_follower``); its reply may come first."""
    for exchange in flight:
        if not exchange.shared:
            flight.remove(exchange)
            return exchange
    return None
