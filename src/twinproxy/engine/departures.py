"""Clients that leave during an update: those that close, and those the engine closes.

What a client sent before it left may already be running on the leader, so a client that is gone
is not forgotten at once: what the leader has not answered is still waited for and released to
the follower, and the engine forgets the client, and closes its connections, only once nothing of
its is on the way to either version. What never left the proxy is dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from twinproxy.engine import events as ev
from twinproxy.engine.commands import FOLLOWER, LEADER, Close, CloseClient, Deliver, Log, Shutdown
from twinproxy.engine.records import Client, Conn, Exchange
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
            self._client_gone(client)

    def _close_client(self, client: Client) -> None:
        """Close a client (what is on its way to it goes first); the engine's own decision."""
        box = self.outbox.pop(client, None)
        if box:
            self.emit(Deliver(client.id, b"".join(box)))
        self.emit(CloseClient(client.id))
        self._client_gone(client)

    def _client_gone(self, client: Client) -> None:
        """The client is gone. What the leader has not answered yet may still run there, so it
        is still waited for and released to the follower; what never left the proxy is
        dropped."""
        client.gone = True
        self.held.pop(client.id, None)  # (what it sent and never left the proxy)
        if client.named:
            self._named_left(client)
        self.outbox.pop(client, None)
        lane = client.lanes[LEADER]
        queued = list(lane.queue)  # (releasing one may dispatch: the queue must be empty first)
        lane.queue.clear()
        for exchange in queued:
            self._never_sent(exchange)
        own = lane.conn
        if own is not None and lane.flight and (own.closed or all(
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
        if own is not None and not own.closed and lane.flight and all(
                e in self.blocked for e in lane.flight):
            # Blocked in the leader: its end of input frees it there, as directly; a reply
            # that comes first still goes to the follower as an effect.
            self.emit(Shutdown(own.id))
        if lane.conn is not None and not any(not e.shared for e in lane.flight):
            self._close_conn(lane.conn)
        self._forget_if_done(client)

    def _forget_if_done(self, client: Client) -> None:
        """A client that left: its leader connection closes once nothing of its is in the
        leader, and the engine forgets it once the follower has answered it too."""
        if client.leaving is not None:
            self._leave_if_done(client)
            return
        if not client.gone or client.due:  # (due: its pop's effect is still to be released)
            return
        lanes = client.lanes
        if lanes[LEADER].flight:
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
                if exchange.probe is not None:  # the proxy's probe: its fence ends now
                    side.probing -= 1
                    side.exact = False  # (it may have run: the counts can no longer be fixed)
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


def _read_only(exchange: Exchange) -> bool:
    """Whether a request only reads keys: dropping its reply changes nothing anywhere."""
    return (not exchange.write and not exchange.is_global and bool(exchange.keys)
            and exchange.wait is None and not exchange.run
            and not exchange.queued and not exchange.request.blocking)
