"""Blocking requests during an update: the proxy does the waiting itself.

Which write wakes a blocked request (BLPOP) is decided inside the server, among requests arriving
on different connections, so the proxy cannot know where in the order the pop happened. During an
update it therefore never sends a blocking request as such: the protocol's ``blocking`` hook gives
a *poll*, a request that does once and without blocking what the blocking one does when data is
there, with the same reply. The poll is ordered like any write on its keys, so both versions run
it at the same place in the order and take the same element. When it finds nothing, the client
waits in the proxy (*parked* on the poll's keys); the proxy polls again after each write on those
keys, or answers the client's timeout itself with the protocol's null.

Requests that were blocked in the leader when the update began are released from it at the sync
point (the state sync method does it, Redis with CLIENT UNBLOCK: :class:`Unblock`) and from then
on wait the same way. One that got data before it could be released was woken by a write still
in the leader at that moment: its effect goes to the follower right after that write's.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twinproxy.engine.commands import LEADER, Unblocking
from twinproxy.engine.records import Client, Exchange, Wait

if TYPE_CHECKING:
    from twinproxy.engine.dispatch import Woken
    from twinproxy.engine.sides import Side
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Reply


class Waits:
    """Blocking requests waited for in the proxy (a part of :class:`twinproxy.engine.Engine`)."""

    codec: Codec
    table: Any
    now: float
    clients: dict[int, Client]
    sides: list[Side]
    emit: Any

    def _init_waits(self) -> None:
        # Blocking requests waiting in the proxy (no poll in the leader), by key and in all.
        self.parked: dict[bytes, list[Exchange]] = {}
        self.waiting: dict[Exchange, None] = {}
        # Writes in the leader (sent, reply not in yet), per key, in the order they were sent:
        # a blocking request still in the leader from before the update was woken by the first.
        self.writing: dict[bytes, deque[Exchange]] = {}
        self.write_seq = 0

    def _new_poll(self, client: Client, waiter: Exchange) -> None:
        """Admit a poll for a waiting blocking request: it goes where it is admitted now."""
        poll = Exchange(client, self.codec.make_request(list(waiter.wait.how.poll)))
        self._view(client, poll)
        poll.write = True
        poll.shared = waiter.shared
        poll.poll_of = waiter
        ready = self.sides[LEADER].admit(poll, poll.keys, True, poll.is_global, after_runs=False)
        waiter.wait.poll = poll
        waiter.legs[LEADER].ready = ready
        self.waiting.pop(waiter, None)

    def _polled(self, client: Client, poll: Exchange, reply: Reply, woken: Woken) -> None:
        """A poll's reply: the waiting request is answered, or waits on."""
        waiter = poll.poll_of
        wait = waiter.wait
        wait.polling = False
        wait.poll = None
        poll.leader_reply = reply
        poll.leader_value = value = self.codec.canonical(reply)
        poll.leader_at = self.now
        own = client.lanes[LEADER].conn
        if own is not None and not poll.shared:
            own.intercept = False
        self._leader_freed(self.sides[LEADER].answered(poll), woken)
        if value is None or value == ():  # nothing there yet: it waits on, in the proxy
            waiter.legs[LEADER].ready = False
            if not client.gone:
                self.waiting[waiter] = None
                for key in poll.keys:
                    self.parked.setdefault(key, []).append(waiter)
            return
        self._to_client(client, wait.how.answer(reply))
        queue = client.lanes[LEADER].queue
        if queue and queue[0] is waiter:
            queue.popleft()
        if not client.solo:
            self._release(client, poll)
        self._wake(poll.keys, woken)
        woken[client] = None

    def _wake(self, keys: tuple[bytes, ...], woken: Woken) -> None:
        """A write on these keys completed: poll again for the requests waiting on them."""
        for key in keys:
            waiters = self.parked.pop(key, None)
            if not waiters:
                continue
            for waiter in waiters:
                client = waiter.client
                if client.gone or waiter.wait.poll is not None or waiter not in self.waiting:
                    continue
                self._new_poll(client, waiter)
                woken[client] = None

    def _expire(self, now: float) -> None:
        """Answer the waits whose timeout passed, with the null the protocol gives."""
        for waiter in [w for w in self.waiting if w.wait.deadline <= now]:
            self.waiting.pop(waiter, None)
            client = waiter.client
            queue = client.lanes[LEADER].queue
            if client.gone or not queue or queue[0] is not waiter:
                continue
            own = client.lanes[LEADER].conn
            self._to_client(client, waiter.wait.how.null(own.replies if own else None))
            queue.popleft()
            self._dispatch(LEADER, client)
            self._after_leader(client)

    # ---- writes in the leader, for requests blocked there at the sync point ------------------

    def _write_sent(self, exchange: Exchange) -> None:
        self.write_seq += 1
        exchange.written = self.write_seq
        writing = self.writing
        for key in exchange.keys:
            queue = writing.get(key)
            if queue is None:
                writing[key] = deque((exchange,))
            else:
                queue.append(exchange)

    def _write_done(self, exchange: Exchange) -> None:
        """A write's reply is in: it no longer is in the leader."""
        for key in exchange.keys:
            queue = self.writing.get(key)
            if queue is None:
                continue
            if queue[0] is exchange:
                queue.popleft()
            elif exchange in queue:
                queue.remove(exchange)
            if not queue:
                del self.writing[key]

    def _waker(self, exchange: Exchange) -> Exchange | None:
        """For a blocking request that was already in the leader when the update began (the
        others are polled): the write that woke it, when its reply comes before the write's
        own, is the first write on its keys still in the leader."""
        first = None
        for key in exchange.keys:
            queue = self.writing.get(key)
            if queue and (first is None or queue[0].written < first.written):
                first = queue[0]
        return first

    # ---- releasing the requests blocked at the sync point ------------------------------------

    def blocked_at_sync_point(self) -> list[tuple[object, int]]:
        """The requests blocked in the leader since before the update, each with its client's
        leader connection: ``(handle, connection id)``; the handle names it in :class:`Unblock`
        and :meth:`still_unblocking`."""
        out = []
        for client in self.clients.values():
            conn = client.lanes[LEADER].conn
            if conn is None or conn.closed or client.gone:
                continue
            for exchange in client.lanes[LEADER].flight:
                if exchange.request.blocking and exchange.wait is None \
                        and exchange.poll_of is None:
                    out.append((exchange, conn.id))
        return out

    def still_unblocking(self, handle: object) -> bool:
        """Whether a request released with :class:`Unblock` has not come back yet."""
        wait = handle.wait if isinstance(handle, Exchange) else None
        return wait is not None and wait.unblocking

    def _unblock(self, handle: object) -> None:
        """The lifecycle releases a blocked request from the leader: its null reply is the
        engine's, which then waits for it itself."""
        ok = False
        if isinstance(handle, Exchange) and not handle.client.gone:
            exchange = handle
            conn = exchange.client.lanes[LEADER].conn
            if conn is not None and not conn.closed and exchange.wait is None \
                    and exchange.leader_reply is None \
                    and exchange in exchange.client.lanes[LEADER].flight:
                how = self.codec.blocking(exchange.request, self.table)
                if how is not None:
                    exchange.wait = Wait(how, float("inf"))
                    exchange.wait.unblocking = True
                    conn.intercept = True
                    ok = True
        self.emit(Unblocking(handle, ok))

    def _unblocked(self, client: Client, exchange: Exchange, reply: Reply,
                   woken: Woken) -> bool:
        """A request released from the leader at the sync point: it now waits in the proxy,
        polled like any other. False when it got data after all (then it is answered as is)."""
        wait = exchange.wait
        wait.unblocking = False
        lane = client.lanes[LEADER]
        conn = lane.conn
        if conn is not None and not any(e.wait is not None and e.wait.unblocking
                                        for e in lane.flight):
            conn.intercept = False
        value = self.codec.canonical(reply)
        if value not in (None, ()):
            exchange.wait = None
            return False
        self._leader_freed(self.sides[LEADER].answered(exchange), woken)
        timeout = wait.how.timeout
        wait.deadline = self.now + timeout if timeout else float("inf")
        lane.queue.appendleft(exchange)
        self._new_poll(client, exchange)
        woken[client] = None
        return True
