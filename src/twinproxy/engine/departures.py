"""Clients that leave during an update: those that close, and those the engine closes.

What a client sent before it left may already be running on the leader, so a client that is gone
is not forgotten at once: what the leader has not answered is still waited for and released to
the follower, and the engine forgets the client, and closes its connections, only once nothing of
its is on the way to either version.

What a client that closed sent and the proxy still holds (behind another client's write of the
same key, or behind its own request on its other path) goes on as well: directly, the server
runs what it read before the end of input, and a client that pipelines writes and closes
without reading the replies counts on that. Its reads are dropped (nobody reads their replies,
and they change nothing), but for a transaction's, which goes whole; and so is what follows a
request that would block (directly, the server frees a blocked client at the end of its input,
and runs nothing of it after; queued in a transaction, a blocking request does not block). When the
engine closes a client (a protocol error, the cutover, the leader closing its connection), or
a client with data channels (FTP: a transfer needs its client) closes, what never left the
proxy is dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from twinproxy.engine import events as ev
from twinproxy.engine.commands import FOLLOWER, LEADER, Close, CloseClient, Deliver, Log, Shutdown
from twinproxy.engine.records import Client, Conn, Exchange, Lane
from twinproxy.engine.sides import Side


class Departures:
    """Clients closing and closed (a part of :class:`twinproxy.engine.Engine`)."""

    clients: dict[int, Client]
    conns: dict[int, Conn]
    sides: list[Side]
    outbox: dict[Client, list[bytes]]
    held: dict[int, Any]  # (first_read)
    blocked: Any  # (waits)
    after_closing: Any  # (follower: clients that named others)
    emit: Any

    def _client_closed_event(self, event: ev.ClientClosed) -> None:
        client = self.clients.get(event.client)
        if client is not None and not client.gone:
            self._client_gone(client, closed=True)

    def _close_client(self, client: Client) -> None:
        """Close a client (what is on its way to it goes first); the engine's own decision."""
        box = self.outbox.pop(client, None)
        if box:
            self.emit(Deliver(client.id, b"".join(box)))
        self.emit(CloseClient(client.id))
        self._client_gone(client)

    def _client_gone(self, client: Client, closed: bool = False) -> None:
        """The client is gone (``closed``: it closed; otherwise the engine closes it). What the
        leader has not answered yet may still run there, so it is still waited for and released
        to the follower; what is still queued goes on too if the client closed (see the
        module's docstring), or is dropped."""
        client.gone = True
        self.held.pop(client.id, None)  # (let go of at ClientClosed: see first_read)
        if client.named:
            self._named_left(client)
        self.outbox.pop(client, None)
        lane = client.lanes[LEADER]
        own = lane.conn
        own_open = own is not None and not own.closed
        blocked = own_open and bool(lane.flight) and all(e in self.blocked for e in lane.flight)
        kept = self._empty_queue(lane, keep=closed and own_open and not blocked and
                                 client.channels is None)
        own_kept = any(not e.shared for e in kept)
        if own is not None and lane.flight and not own_kept and (own.closed or all(
                _read_only(e) for e in lane.flight if not e.shared)):
            # The leader closed its connection (QUIT, CLIENT KILL): no reply comes for what was
            # sent on it after that, and it must not hold up the requests ordered after it.
            # Or all that is out there only reads keys: nobody needs the replies (the follower
            # gets no read of a client that left), so the connection closes now instead of
            # reading them (fifty clients that pipelined twenty GETs of a 10 MB value and left
            # kept the proxy framing 10 GB of replies for nobody).
            lost = [e for e in lane.flight if not e.shared]
            lane.flight = deque(e for e in lane.flight if e.shared)
            for exchange in lost:
                self._never_sent(exchange)
        if blocked:
            # Blocked in the leader: its end of input frees it there, as directly; a reply
            # that comes first still goes to the follower as an effect.
            self.emit(Shutdown(own.id))
        if lane.conn is not None and not own_kept and not any(
                not e.shared for e in lane.flight):
            self._close_conn(lane.conn)
        if kept:
            lane.queue.extend(kept)
            self._dispatch(LEADER, client)
        self._forget_if_done(client)

    def _empty_queue(self, lane: Lane, keep: bool = False) -> list[Exchange]:
        """Empty the leader queue of a client that left. What never goes is forgotten; with
        ``keep`` (it closed itself), what still runs is returned instead (see _still_run)."""
        queued = list(lane.queue)  # (releasing one may dispatch: the queue must be empty first)
        lane.queue.clear()
        kept, dropped = _still_run(queued) if keep else ([], queued)
        for exchange in dropped:
            self._never_sent(exchange)
        return kept

    def _pass_eof(self, client: Client) -> None:
        """Pass a client's end of input on to its own leader connection once all it sent for
        there went, if requests of its are out there: the server answers what it read, then
        closes, which also settles replies that may never come (memcached's quiet requests).
        Called at the end of its input, then after each send on that connection (a request of
        its may wait in the proxy behind another's: it must not find the connection shut)."""
        lane = client.lanes[LEADER]
        conn = lane.conn
        if client.ended or conn is None or conn.closed or \
                not any(not e.shared for e in lane.flight) or \
                any(not e.shared for e in lane.queue):
            return
        client.ended = True
        self.emit(Shutdown(conn.id))

    def _forget_if_done(self, client: Client) -> None:
        """A client that left: its leader connection closes once nothing of its is in the
        leader, and the engine forgets it once the follower has answered it too."""
        if client.leaving is not None:
            self._leave_if_done(client)
            return
        if not client.gone or client.due:  # (due: its pop's effect is still to be released)
            return
        lanes = client.lanes
        if lanes[LEADER].flight or lanes[LEADER].queue:
            return
        if lanes[LEADER].conn is not None:
            self._close_conn(lanes[LEADER].conn)
        if not lanes[FOLLOWER].queue and not lanes[FOLLOWER].flight and \
                not self._still_named(client):
            self.clients.pop(client.id, None)
            if lanes[FOLLOWER].conn is not None:
                self._close_conn(lanes[FOLLOWER].conn)
            for lane in lanes:  # nothing of its is left anywhere: its connections' records,
                lane.conn = None  # which refer back to it, go with it (not at the next gc)
            if self.after_closing:
                self._named_closed()

    def _close_conn(self, conn: Conn) -> None:
        if not conn.closed:
            conn.closed = True
            self.conns.pop(conn.id, None)
            self.emit(Close(conn.id))

    def _close_blocked(self, event: ev.CloseBlocked) -> None:
        """At the cutover: a client still waiting for the leader cannot be moved."""
        for client in list(self.clients.values()):
            flight = client.lanes[LEADER].flight
            if flight and not client.gone and not all(e in self.blocked for e in flight):
                self.emit(Log(logging.WARNING, f"closing client {client.peer}: still blocked "
                              "in the leader at the cutover"))
                self._close_client(client)

    def _close_orphans(self, event: ev.CloseOrphans) -> None:
        side = self.sides[LEADER]
        shared = side.shared
        if shared is not None and shared.conn.closed:
            # The leader closed the shared connection itself (CLIENT KILL LADDR, TYPE normal
            # ...): the clients whose requests were on it are closed, as their own connections
            # would have been directly; the others go on, on a new one.
            lost = list(shared.flight)
            shared.flight.clear()
            side.shared = self._open_shared(LEADER)
            woken: dict[Client, None] = {}
            for exchange in lost:
                if exchange.client is None:  # the proxy's own: a probe, or a dialect switch
                    side.probing -= 1
                    side.exact = False  # (it may have run: the counts can no longer be fixed)
                    if exchange.probe is not None:  # its fence ends now
                        exchange.probe.rounds = 1
                        self._probed(exchange.probe, woken)
                    continue
                client = exchange.client
                lane = client.lanes[LEADER]
                if exchange in lane.flight:
                    lane.flight.remove(exchange)
                self._never_sent(exchange)
                if not client.gone:
                    self._close_client(client)
            for client in woken:
                self._dispatch(LEADER, client)
        for client in list(self.clients.values()):
            conn = client.lanes[LEADER].conn
            if not client.gone and (conn is None or conn.closed):
                self._close_client(client)


def _still_run(queued: list[Exchange]) -> tuple[list[Exchange], list[Exchange]]:
    """Of what a client that closed has queued, what still goes to the leader (all but its
    reads, up to a request that would block), and what is dropped."""
    kept: list[Exchange] = []
    dropped: list[Exchange] = []
    for i, exchange in enumerate(queued):
        if exchange.request.blocking and not exchange.queued:  # (queued, it never blocks)
            dropped += queued[i:]
            break
        (dropped if _read_only(exchange) else kept).append(exchange)
    return kept, dropped


def _read_only(exchange: Exchange) -> bool:
    """Whether a request only reads keys: dropping its reply changes nothing anywhere. Not a
    transaction's end, even one that only reads: its start and what it queued went or go
    before it, and a later transaction would nest in theirs."""
    return (not exchange.write and not exchange.is_global and bool(exchange.keys)
            and exchange.wait is None and not exchange.run and not exchange.queue
            and not exchange.queued and not exchange.request.blocking)
