"""The mechanism both sides share: sending a client's requests in their turn, and taking the
replies off a shared connection.

The leader and the follower are driven the same way (see :mod:`.sides`): a client's requests go
in its order, each on its path (its own connection, or the shared one), once every earlier
conflicting request on another connection was answered there, and a client's requests never
overlap across its paths. What differs is small, and written where it differs: the leader gets
the client's request (after the fences that blocking requests need: :mod:`.waits`), the
follower what the leader's reply decided, read back from the backlog's store if it was spilled.

Replies on a shared connection are framed one per request, a run's as bytes; the follower
first tries a run's bytes against the leader's, the common case, without framing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinproxy.digests import new_hasher
from twinproxy.engine.commands import LEADER, Deliver, Send, SendLarge
from twinproxy.engine.large import Spooled
from twinproxy.engine.records import Exchange
from twinproxy.engine.verdicts import LARGE_REPLY

if TYPE_CHECKING:
    from twinproxy.engine.backlog import Backlog
    from twinproxy.engine.modes import Mode
    from twinproxy.engine.records import Client, Conn, Lane, Woken
    from twinproxy.engine.sides import Shared, Side
    from twinproxy.engine.verdicts import Verdicts
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Limits



class Dispatch:
    """Sending and shared replies, for both sides (a part of :class:`twinproxy.engine.Engine`)."""

    codec: Codec
    mode: Mode
    now: float
    sides: list[Side]
    sent: list[int]
    backlog: Backlog
    verdicts: Verdicts
    outbox: dict[Client, list[bytes]]
    gate: dict[bytes, Any]
    hot: dict[bytes, Any]
    count_gated: dict[Client, None]
    clients: dict[int, Client]
    quiescing: Client | None
    loading: dict[Exchange, None]
    loads_held: dict[Client, None]
    counting_names: frozenset[str]
    counting: dict[Exchange, None]
    switch_held: dict[Client, None]
    switches: int
    limits: Limits
    fail: Any
    emit: Any
    _names_wait: Any  # (engine.follower)
    _pass_eof: Any  # (engine.departures)
    _closed_first: Any
    closing_named: dict[Client, set[Exchange]]
    naming_out: dict[Exchange, None]

    def _dispatch(self, role: int, client: Client) -> None:
        """Send what may go of a client's requests to one side, in its order, each on its
        path; one write for the client's own connection. On the follower, once the head of
        its shared line went, the client whose request is the new head goes on (see sides)."""
        if not self._dispatch_lane(role, client) or role == LEADER:
            return
        line = self.sides[role].line
        while line and self._dispatch_lane(role, line[0].client):
            pass

    def _dispatch_lane(self, role: int, client: Client) -> bool:
        """:meth:`_dispatch` for one client; True when the follower's line moved."""
        lane = client.lanes[role]
        queue = lane.queue
        if not queue or not queue[0].legs[role].ready:
            return False
        mode = self.mode
        if not (mode.sends if role == LEADER else mode.live):
            return False
        side = self.sides[role]
        flight = lane.flight
        own = lane.conn
        shared = side.shared
        line = side.line
        moved = False
        out: list[bytes] = []
        while queue and queue[0].legs[role].ready:
            head = queue[0]
            if flight and flight[-1].shared is not head.shared:
                break  # its other path answers first: a client's requests never overlap
            if head.shared:
                if shared is None or not shared.conn.connected:
                    break
                if head.legs[role].lined and line and line[0] is not head:
                    break  # the follower's shared requests go in the order released
                if own is not None and not (role == LEADER or client.joined):
                    break  # its session's replay goes first (its replies would overlap)
                if role == LEADER and self.counting and client.dialect != shared.dialect:
                    self.switch_held[client] = None  # (see _switch)
                    break
            elif own is None or own.closed or \
                    not (own.connected if role == LEADER else client.joined):
                break
            elif head.legs[role].mark >= 0 and side.lowest_run() <= head.legs[role].mark:
                side.marked[client] = None  # runs placed before it are not answered yet
                break
            if role == LEADER:
                if not mode.live and self.loading and head in self.loading:
                    # A DEBUG RELOAD before the new version serves: its save would replace
                    # the old version's dump file, which may not be placed as the new
                    # version's snapshot yet. It goes when the new version serves.
                    self.loads_held[client] = None
                    break
                if (self.gate or self.hot or client.due or head.request.blocking) and \
                        self._held_back(client, head):
                    break
                if head.request.name in self.counting_names and \
                        self.codec.counts_requests(head.request):
                    if self._count_held(client, head):
                        break
                    if not head.shared:  # its reply is rewritten: the engine delivers it
                        if own.replies is not None and own.replies.buffered and not (
                                own.intercept or own.answering or own.caught):
                            break
                        own.answering += 1
                if head.request.answer is not None and not head.shared:
                    # Its reply is replaced by the proxy's answer, so the engine delivers this
                    # connection's replies from then on: not while one is going to the client
                    # as it comes (the rest would go twice).
                    if own.replies is not None and own.replies.buffered and not (
                            own.intercept or own.answering or own.caught):
                        break
                    own.answering += 1
                queue.popleft()
            else:
                if flight and flight[-1].request.preliminary:
                    # A transfer under way on the follower: the next command waits for its
                    # final reply, as the client waited for the leader's. A server may read
                    # its control connection during a transfer, for ABOR, and refuse anything
                    # else then (Pure-FTPd: "500 Unknown command"). An abort waits too: at
                    # the moment it would reach the follower, the follower is at another
                    # point of its transfer than the leader was (Pure-FTPd answers an ABOR
                    # that comes before its data connection is up "500 Unknown command"), so
                    # the follower runs the transfer whole, then gets the abort, and the two
                    # are compared loosely (engine.transfers, ``aborted``).
                    break
                if head.renames and self._names_wait(client, head):
                    break
                if self.closing_named and head in self.naming_out and \
                        self._closed_first(client, head):
                    break
                ticket = head.legs[role].ticket
                if ticket is not None and ticket.quiesce and self._follower_busy(client):
                    self.quiescing = client  # tried again as the follower's replies come
                    break
                queue.popleft()
                if head.legs[role].lined:
                    head.legs[role].lined = False
                    if line and line[0] is head:
                        line.popleft()
                        moved = True
                if head.spilled is not None and not self.backlog.unspill(head):
                    break
            self._send(role, lane, head, shared, own, out)
            if role == LEADER and head.block_seq:
                break  # the server would not read what follows before it is answered anyway
        if out:
            self.emit(Send(own.id, out[0] if len(out) == 1 else b"".join(out)))
            self._synthetic(own)
        if client.eof and role == LEADER:
            self._pass_eof(client)  # (what waited behind another's went: now it may end)
        return moved

    def _run_now(self, role: int, client: Client, run: Exchange) -> bool:
        """A run just admitted (the leader's) or released (the follower's), in the common case:
        nothing of its client's waits on this side before it, the shared path is up, and
        nothing holds it. It goes now, as :meth:`_dispatch_lane` would send it, without the
        queue (and the follower's line); False when it must take them."""
        lane = client.lanes[role]
        side = self.sides[role]
        shared = side.shared
        if lane.queue or not run.legs[role].ready or shared is None or \
                not shared.conn.connected:
            return False
        flight = lane.flight
        if flight and (not flight[-1].shared or flight[-1].request.preliminary):
            return False  # its other path answers first; a transfer under way
        if role == LEADER:
            if not self.mode.sends or self.gate or self.hot or client.due or \
                    (self.counting and client.dialect != shared.dialect):
                return False
        elif not self.mode.live or side.line or not (client.joined or lane.conn is None):
            return False
        # (_send, for a shared one that is not blocking and writes no keys it knows)
        flight.append(run)
        run.legs[role].sent = self.now
        self.sent[role] += run.run
        if role == LEADER:
            run.dialect = client.dialect
        if run.dialect != shared.dialect:
            self._switch(role, shared, run.dialect)
        shared.flight.append(run)
        shared.out.append((run.request if role == LEADER else run.follower_request).raw)
        return True

    def _follower_busy(self, client: Client) -> bool:
        """Whether another connection has a request out in the follower: a request that
        quiesces it (DEBUG RELOAD) waits for those too, even the ones the order does not track
        (a PING read after the reload began would be refused, ``-LOADING``)."""
        shared = self.sides[1].shared
        if shared is not None and shared.flight:
            return True
        for other in self.clients.values():
            lane = other.lanes[1]
            if lane.flight and other is not client and lane.conn is not None and \
                    not lane.conn.closed:  # (a closed one answers nothing any more)
                return True
        return False

    def _send(self, role: int, lane: Lane, exchange: Exchange, shared: Shared | None,
              own: Conn | None, out: list[bytes]) -> None:
        lane.flight.append(exchange)
        exchange.legs[role].sent = self.now
        if exchange.request.blocking and not exchange.request.sent:
            exchange.request.sent = self.now  # (its timeout runs from here: time_left)
        self.sent[role] += exchange.run or 1
        request = exchange.request if role == LEADER else exchange.follower_request
        if exchange.shared:
            if role == LEADER:  # (the client's HELLO before it was answered: see _dispatch)
                exchange.dialect = exchange.client.dialect
            if exchange.dialect != shared.dialect:
                self._switch(role, shared, exchange.dialect)
            shared.flight.append(exchange)
            shared.out.append(request.raw)
        else:
            own.replies.expect(request)
            raw = request.raw
            if exchange.opening is not None:  # rewritten by the relay (see engine.transfers)
                if out:
                    self.emit(Send(own.id, out[0] if len(out) == 1 else b"".join(out)))
                    out.clear()
                self._send_channel(role, own, exchange)
            elif type(raw) is not Spooled:
                out.append(raw)
            else:  # a large request kept out of memory: after what goes before it
                if out:
                    self.emit(Send(own.id, out[0] if len(out) == 1 else b"".join(out)))
                    out.clear()
                self.emit(SendLarge(own.id, raw))
        if role == LEADER and exchange.write and exchange.keys and not request.blocking:
            self._write_sent(exchange)

    def _switch(self, role: int, shared: Shared, dialect: object) -> None:
        """Put a shared connection in ``dialect`` before the next request on it: the proxy's
        own request (Codec.switch_dialect), answered in turn (:meth:`_switched`).

        Plain clients of every dialect share the connection: redis-py 8 speaks RESP3 on every
        connection, and a client alone on its own connections waits a round trip per
        request, and for every other client's request on the same keys. Each client's
        requests go in its dialect on both versions: the follower puts the connection in the
        one the leader's was in for that request (``Exchange.dialect``). On the leader no
        switch goes while a request that shows the server's counts is out (the client waits,
        in ``switch_held``), and such a request waits for the switches out
        (``Side.probing``), so that the counts a client sees leave out exactly the switches
        the server ran (Codec.count_own)."""
        self._own_request(role, shared, self.codec.switch_dialect(dialect, shared.dialect))
        shared.dialect = dialect
        self.switches += 1

    def _log_in(self, role: int, shared: Shared) -> None:
        """A shared connection just connected logs in first, as the proxy's own login (see
        ``Engine.shared_user``)."""
        if shared.login is not None:
            self._own_request(role, shared, shared.login)

    def _settle_shared(self, role: int, shared: Shared) -> None:
        """At the end of a batch, after a request that gets no reply (memcached's ``noreply``),
        or a run that ends with one, last on a shared connection: the codec's settle request
        (``mn``), the proxy's own, whose reply shows it ran (:meth:`_shared_replies`). Without
        it the request would wait for the next one any client sends there, and its client's
        next request behind it."""
        last = shared.flight[-1] if shared.flight else None
        if last is not None and last.client is not None and (
                last.request.silent_last if last.run else last.request.replies == 0):
            settle = self.codec.settle_request()
            if settle is not None:
                self._own_request(role, shared, settle.raw)

    def _own_request(self, role: int, shared: Shared, raw: bytes) -> None:
        """Requests of the proxy's own on a shared connection, each answered in turn there
        (:meth:`_switched`)."""
        for request in self.codec.request_reader(self.limits).receive(raw):
            switch = Exchange(None, request)
            switch.switching = True
            switch.follower_request = request
            switch.legs[role].sent = self.now
            shared.flight.append(switch)
            shared.out.append(request.raw)
            if role == LEADER:
                self.sides[LEADER].probing += 1

    def _switched(self, role: int, switch: Exchange, reply: Any, woken: Woken) -> None:
        """The reply to a request of the proxy's own on a shared connection (a switch, a
        login): counted as the proxy's own; a version that refuses it fails the update (its
        clients' replies would come in another form, or be refused)."""
        side = self.sides[role]
        if role == LEADER:
            side.probing -= 1
            self._probing_over(side, woken)
        if reply.error:
            self.fail(f"{side.name} refused {switch.request.raw!r} on the shared connection: "
                      f"{bytes(reply.raw[:200])!r}")
            return
        self.codec.count_own(side.own_made, switch.request, reply.raw)

    def _synthetic(self, conn: Conn) -> None:
        """Replies the reader makes up without bytes from the server (a request sent while the
        connection's replies are switched off gets an empty one, right after ``expect``)."""
        reply = conn.replies.next_reply()
        if reply is None:
            return
        replies = [reply]
        while (reply := conn.replies.next_reply()) is not None:
            replies.append(reply)
        if conn.role == LEADER:
            self._leader_replies(conn.client, replies, False)
        else:
            self._follower_replies(conn, replies)

    def _shared_replies(self, role: int, shared: Shared) -> None:
        """Replies on a shared connection: each to the exchange it answers, in order."""
        parser = shared.parser
        flight = shared.flight
        woken: Woken = {}
        codec = self.codec
        while flight:
            exchange = flight[0]
            got = None
            if exchange.run:
                run = exchange.request
                if exchange.parts is None:  # the follower's, whose leader reply is known
                    if not exchange.answer and exchange.leader_digest is None and \
                            not run.silent_last:
                        same = parser.match(exchange.leader_raw)  # the common case
                        if same is None:
                            break
                        if same:
                            self._shared_answer(role, exchange, None, woken, same=True)
                            continue
                    exchange.parts, exchange.got = [], 0
                count, raw, error = parser.take(run.replies - exchange.got)
                if count:
                    exchange.got += count
                    exchange.run_error = exchange.run_error or error
                    if role == LEADER or exchange.answer:  # the client's: as they come
                        self._to_client(exchange.client, raw)
                    if not exchange.answer:
                        self._collect(exchange, raw)
                if exchange.got < run.replies or (run.silent_last and not parser.waiting):
                    break  # (a last request with no reply ran once a later reply comes)
            else:
                request = exchange.request if role == LEADER else exchange.follower_request
                if exchange.request.replies == 0 and exchange.client is not None:
                    # No reply comes for it (memcached's noreply): it ran once the server
                    # answers what follows it (see _settle_shared).
                    if not parser.waiting:
                        break
                    got = codec.reply(None, b"", request)
                else:
                    got = parser.next()
                    if got is None:
                        break
                    value, raw = got
                    got = codec.reply(value, raw, request)
            self._shared_answer(role, exchange, got, woken)
        if role and self.quiescing is not None:
            woken[self.quiescing] = None
            self.quiescing = None
        for other in woken:
            if other.lanes[role].queue:  # (most were answered their last: nothing to send)
                self._dispatch(role, other)
            self._after_leader(other)

    def _collect(self, run: Exchange, raw: bytes) -> None:
        """Keep a run's replies for the comparison: their bytes while they are small, only
        their digest past :data:`~.verdicts.LARGE_REPLY` (a run of twenty 10 MB values must not
        be held whole, on either side) unless a rule needs them."""
        run.size += len(raw)
        hasher = run.hasher
        if hasher is not None:
            hasher.update(raw)
            return
        run.parts.append(raw)
        if run.size > LARGE_REPLY and self.verdicts.by_digest(run):
            run.hasher = hasher = new_hasher()
            for part in run.parts:
                hasher.update(part)
            run.parts = []

    def _shared_answer(self, role: int, exchange: Exchange, reply: Any, woken: Woken,
                       same: bool = False) -> None:
        """One exchange answered on a shared connection: out of the flights, to its side
        (``same``: a run whose replies are byte for byte the leader's)."""
        shared = self.sides[role].shared
        shared.flight.popleft()
        client = exchange.client
        if client is None:  # the proxy's own
            if exchange.switching:
                self._switched(role, exchange, reply, woken)
                return
            side = self.sides[role]  # a probe, ending a fence (see waits)
            side.probes += 1
            side.probing -= 1
            self._probed(exchange.probe, woken)
            self._probing_over(side, woken)
            return
        lane = client.lanes[role]
        if lane.flight and lane.flight[0] is exchange:
            lane.flight.popleft()
        if role == LEADER:
            if exchange.run:
                self._run_answered(client, exchange, woken)
            else:
                self._answered(client, exchange, reply, woken, True)
        elif exchange.run:
            self._run_followed(client, exchange, woken, same)
        else:
            self._followed(client, exchange, reply, woken)
        woken[client] = None

    def _probing_over(self, side: Side, woken: Woken) -> None:
        """When none of the proxy's probes and switches is out on ``side`` any more, the
        requests that show the server's counts, held until then (Waits._count_held), go."""
        if not side.probing and self.count_gated:
            woken.update(self.count_gated)
            self.count_gated = {}

    def _to_client(self, client: Client, raw: bytes) -> None:
        """A reply for the client, sent at the end of the batch (:class:`Flush`)."""
        if raw and not client.gone:
            box = self.outbox.get(client)
            if box is None:
                self.outbox[client] = [raw]
            else:
                box.append(raw)

    def _pass_through(self, client: Client, data: bytes) -> None:
        """Bytes from the client's own leader connection, forwarded as they came (after what
        waits in its outbox, if anything does)."""
        if client in self.outbox:
            self._to_client(client, data)
        elif not client.gone:
            self.emit(Deliver(client.id, data))
