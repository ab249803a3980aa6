"""The ends of barriers: a dead leader's work goes to the follower, the roles swap, or the
clients go back to one version.

Each of these happens at a barrier (:mod:`.modes` allows them nowhere else), when nothing new
goes to the leader, so that what is in flight is known.

* **Take over** (the leader died): whatever the leader had not answered, sent or still waiting
  its turn, goes to the follower after what was already released to it, in the same order, and
  the follower's replies go to the client. The leader may have executed some of it before it
  died; its state died with it, so executing it once on the follower is the one execution left.
* **Reverse** (``after_cutover = "keep-old"``, and the way back): every client's two connections
  swap, and the shared ones; the clients have the same session on both versions, so the new
  follower needs no replay. What waited at the barrier keeps its place, in the new leader's
  order.
* **Leave**: one client goes on with the leader alone (FTP's ``AUTH TLS`` passed through),
  once nothing of its is owed on either version: what its session did so far was compared;
  what it does next is served by the leader only, like a session that was opaque before the
  update (the lifecycle's ``tls_sessions`` decides its fate at the cutover).
* **End**: every client is handed back to the relay on one connection, the follower's after a
  cutover, with what it still waits for; a client that cannot go on there is closed, as a
  restart would.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from twinproxy.engine.commands import FOLLOWER, LEADER, Deliver, Handback, Log, SetRole
from twinproxy.engine.events import OpenFollowers
from twinproxy.engine.large import held_size
from twinproxy.engine.records import Client, Exchange, Leg
from twinproxy.engine.sides import Side
from twinproxy.protocols.messages import Request

if TYPE_CHECKING:
    from twinproxy.compare import Comparator
    from twinproxy.engine.backlog import Backlog
    from twinproxy.engine.verdicts import Verdicts


class Handover:
    """Take-over, role swap and hand-back (a part of :class:`twinproxy.engine.Engine`)."""

    clients: dict[int, Client]
    sides: list[Side]
    backlog: Backlog
    verdicts: Verdicts
    outbox: dict[Client, list[bytes]]
    emit: Any
    _open_followers: Any  # (follower)

    def _take_over(self) -> None:
        self._open_followers(OpenFollowers())  # (the clients go to the follower at the end)
        leader_shared = self.sides[LEADER].shared
        if leader_shared is not None:
            leader_shared.flight.clear()
        follower = self.sides[FOLLOWER]
        backlog = self.backlog
        clients = [c for c in self.clients.values() if not c.solo]
        for which in ("flight", "queue"):
            for client in clients:
                lane = client.lanes[LEADER]
                pending: deque[Exchange] = lane.flight if which == "flight" else lane.queue
                for exchange in pending:
                    exchange.wait = None
                    exchange.answer = True
                    exchange.follower_request = exchange.request
                    exchange.legs = (exchange.legs[LEADER], Leg())
                    follower.admit(exchange, exchange.keys, exchange.write, exchange.is_global,
                                   after_runs=False)
                    exchange.parts = None
                    client.lanes[FOLLOWER].queue.append(exchange)
                    exchange.counted = held_size(exchange.request.raw)
                    backlog.requests += exchange.run or 1
                    backlog.bytes += exchange.counted
                pending.clear()
        self._init_waits()  # (blocked requests now go to the follower as they came)
        for client in clients:
            client.due = False
            self._dispatch(FOLLOWER, client)

    def _reverse(self, comparator: Comparator) -> None:
        old_leader, old_follower = self.sides
        leader = Side(LEADER, old_follower.name)
        follower = Side(FOLLOWER, old_leader.name)
        leader.shared, follower.shared = old_follower.shared, old_leader.shared
        for side in (leader, follower):
            if side.shared is not None:
                side.shared.conn.role = side.role
                self.emit(SetRole(side.shared.conn.id, side.role))
        # Runs held at the barrier keep their places: the count goes on from the old leader's.
        leader.run_seq = old_leader.run_seq
        leader.runs = deque(e for c in self.clients.values() for e in c.lanes[LEADER].queue
                            if e.run)
        self.sides = [leader, follower]
        blocked = self.blocked
        self._init_waits()
        self.verdicts.comparator = comparator
        ids = self.verdicts.ids  # the roles swap: so do the two names of a thing
        self.verdicts.ids = {theirs: ours for ours, theirs in ids.items()}
        for client in list(self.clients.values()):
            lanes = client.lanes
            old, new = lanes[LEADER].conn, lanes[FOLLOWER].conn
            again = [e for e in lanes[LEADER].flight if e in blocked]
            for exchange in again:
                self.time_left(exchange)
            if again and not client.gone and old is not None:
                # Blocked in the old leader, which now follows: nothing can serve it there at
                # the barrier. That connection closes (which frees it there), the request goes
                # again to the new leader, and the client gets a new follower connection with
                # its session.
                lanes[LEADER].flight = deque(e for e in lanes[LEADER].flight if e not in again)
                lanes[LEADER].queue.extendleft(reversed(again))
                self._close_conn(old)
                old = None
            if client.gone or new is None or not client.joined:
                if new is not None:
                    self._close_conn(new)
                    lanes[FOLLOWER].conn = None
                if not client.gone:
                    self._close_client(client)
                continue
            client.data.reverse()  # (data channels: the one opened last on each version)
            new.role, lanes[LEADER].conn = LEADER, new
            self.emit(SetRole(new.id, LEADER))
            lanes[FOLLOWER].conn = old
            client.joined = old is not None and not old.closed
            if old is not None:
                old.role = FOLLOWER
                self.emit(SetRole(old.id, FOLLOWER))
            elif again:
                self._open_follower(client)
            for lane in lanes:
                lane.pushes.clear()
            for exchange in lanes[LEADER].queue:
                if exchange.run:
                    exchange.legs[LEADER].ready = True  # it keeps its place among the runs
                    continue
                exchange.legs = (Leg(), exchange.legs[FOLLOWER])
                exchange.block_seq = 0
                blocking = exchange.request.blocking
                if blocking and not exchange.queued and exchange.keys:
                    leader.admit(exchange, exchange.keys, True, exchange.is_global)
                    continue
                leader.admit(exchange, () if blocking else exchange.keys,
                             exchange.write and not blocking, exchange.is_global)

    def _leave(self, event: Any) -> None:
        """``events.Leave``: note the requests to hand back with the client, then hand it back
        as soon as it owes nothing."""
        client = self.clients.get(event.client)
        if client is None or client.gone:
            return
        client.leaving = (*(client.leaving or ()), *event.held)
        self._leave_if_done(client)

    def _leave_if_done(self, client: Client) -> None:
        """Hand a leaving client back on its leader connection once every request of its was
        answered by both versions (and compared), with the replies it is owed delivered first;
        its follower connection closes. A client that left meanwhile is forgotten as any."""
        leaving = client.leaving
        assert leaving is not None
        lanes = client.lanes
        if client.gone:
            client.leaving = None
            self._forget_if_done(client)
            return
        if client.due or any(lane.queue or lane.flight for lane in lanes):
            return
        box = self.outbox.pop(client, None)
        if box:
            self.emit(Deliver(client.id, b"".join(box)))
        leader, follower = lanes[LEADER].conn, lanes[FOLLOWER].conn
        if follower is not None:
            self._close_conn(follower)
        self.clients.pop(client.id, None)
        for lane in lanes:
            lane.conn = None
        client.leaving = None
        if leader is None or leader.closed:
            self._close_client(client)
            return
        self.conns.pop(leader.id, None)
        self.emit(Log(logging.INFO, f"client {client.peer} goes on with "
                      f"{self.sides[LEADER].name} alone ({leaving[0].name}: a session that "
                      "cannot be compared)"))
        self.emit(Handback(client.id, leader.id, leader.replies, (), leaving))

    def _end(self, cutover: bool) -> None:
        self._flush(None)  # what was answered goes to the clients before they are handed back
        for side in self.sides:
            if side.shared is not None:
                self._close_conn(side.shared.conn)
                side.shared = None
        self.backlog.close()
        new_name = self.sides[FOLLOWER].name
        for client in list(self.clients.values()):
            lanes = client.lanes
            if client.gone:
                for lane in lanes:
                    if lane.conn is not None:
                        self._close_conn(lane.conn)
                continue
            leader, follower = lanes[LEADER].conn, lanes[FOLLOWER].conn
            if leader is not None and leader.intercept:
                # A request released from the leader at the sync point did not come back: its
                # null would be taken for the client's own, so its stream cannot be handed back.
                self.emit(Log(logging.WARNING, f"closing client {client.peer}: its blocking "
                              "request was still being released at the end of the update"))
                self._close_client(client)
                continue
            held = list(lanes[LEADER].queue)
            if cutover and follower is not None and client.joined and not follower.closed:
                # Blocked in the old leader, which stops: sent again to the new one, which
                # never ran it (it got only the effects of the ones served).
                again = [e for e in lanes[LEADER].flight if e in self.blocked]
                for exchange in again:
                    self.time_left(exchange)
                held = again + held
                if leader is not None:
                    self._close_conn(leader)
                conn = follower
                conn.role = LEADER
                self.emit(SetRole(conn.id, LEADER))
                inflight = self._queue_of(lanes[FOLLOWER].flight)
                held = [e for e in lanes[FOLLOWER].queue if e.answer] + held
            else:
                if follower is not None:
                    self._close_conn(follower)
                if cutover:
                    self.emit(Log(logging.WARNING, f"closing client {client.peer}: it has no "
                                  f"session on {new_name}"))
                    self._close_client(client)
                    continue
                conn = leader
                inflight = self._queue_of(lanes[LEADER].flight)
            if conn is None or conn.closed:
                self._close_client(client)
                continue
            self.conns.pop(conn.id, None)
            self.emit(Handback(client.id, conn.id, conn.replies, inflight,
                               self._queue_of(deque(held)) + (client.leaving or ())))
        self._let_go_of_clients()
        for conn in list(self.conns.values()):  # what nobody was handed back on
            self._close_conn(conn)

    def _let_go_of_clients(self) -> None:
        """Forget every client (the engine is done with them: the end of the update). A
        client's record refers to its connections' records and to its requests not answered
        on both sides, which refer back to it, as their places in the order do to them: those
        links are cut, so that all of it is freed at once."""
        for client in self.clients.values():
            for lane in client.lanes:
                lane.conn = None
                for exchange in (*lane.queue, *lane.flight):
                    for leg in exchange.legs:
                        leg.ticket = None
                lane.queue.clear()
                lane.flight.clear()
        self.clients.clear()

    def _queue_of(self, requests: deque[Exchange]) -> tuple[Request, ...]:
        """The client's requests in these exchanges, a run's one by one."""
        out: list[Request] = []
        for exchange in requests:
            if exchange.run:
                out.extend(self.codec.request_reader(self.limits).receive(exchange.request.raw))
            else:
                out.append(exchange.request)
        return tuple(out)
