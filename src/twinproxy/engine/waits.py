"""Blocking requests during an update: they block for real in the leader.

A blocking request (BLPOP, BLMOVE, BZPOPMIN, XREADGROUP BLOCK ...) goes to the leader as it
came, on the client's own connection, so the server sees a blocked client exactly as it would
without the proxy (INFO's ``blocked_clients``, CLIENT LIST, CLIENT UNBLOCK, its own timeouts, the
order it serves waiting clients in). The follower never runs it: when the leader answers, the
follower gets the leader's effect (``Codec.follower_plan``: BLPOP's ``[key, value]`` becomes
``LPOP key``; a timeout changes nothing and sends nothing), at the place in its order where the
leader served it. Finding that place is this module's work. The rules it keeps:

* **A waiter's keys are hot.** Redis serves a blocked client right after the command that made
  its key ready, before it runs the next command of any client. So the pop belongs, in the
  follower's order, right after the write that served it and before any later request on those
  keys. While a request blocks in the leader (:attr:`Waits.hot`), a write on its keys (or a
  global write, or a run, whose keys are not known) opens a *fence* over them: nothing else that
  touches those keys goes to the leader until the write's reply is in and then the reply to a
  cheap request of the proxy's own (the codec's ``probe``, on the shared connection). The probe
  runs in a later turn of the server's event loop than the write, so a waiter the write served
  had its reply written before the probe's: when the probe's reply is in, every waiter served by
  the write has answered. Their effects are then released to the follower, right after the
  write, in the order the leader served them (:meth:`Waits._serving_order`).
* **A new blocking request fences its own keys** (the leader may serve it at once, or it blocks):
  two probes in a row after it, then it is blocked, or it was served at once and its effect goes
  at its place. Meanwhile it holds its keys in the leader's order as a write.
* **A client whose waiter was served sends nothing more to the leader until that effect was
  released**, so the follower gets its requests in the order the client sent them (a SELECT
  after a BLPOP must not come before the follower's LPOP).
* A timed-out or unblocked waiter (a null, or an error) changes nothing: the follower gets
  nothing for it.
* **Counts show only the clients' requests.** The server counts the probes with the clients'
  requests (Redis: ``INFO commandstats``, ``total_commands_processed``). A request whose reply
  shows those counts, or that resets them (``Codec.counts_requests``), never overlaps a probe in
  the leader: it waits until no probe is in flight, and probes wait while it is out
  (:meth:`Waits._count_held`). So the leader had run exactly the probes answered so far
  (``Side.probes``), and the client gets the reply without them (``Codec.without_probes``).

Requests that were blocked in the leader when the update began are released from it at the sync
point (the state sync method does it, Redis with CLIENT UNBLOCK: :class:`Unblock`) and sent again
at once, now with the rules above. One that got data before it could be released was woken by a
write still in the leader at that moment: its effect goes to the follower right after that
write's (:meth:`Waits._waker`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twinproxy.engine.commands import LEADER, Shutdown, Unblocking
from twinproxy.engine.records import Client, Exchange, Fence, Leg, Wait, Woken

if TYPE_CHECKING:
    from twinproxy.engine.modes import Mode
    from twinproxy.engine.sides import Side
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Limits, Reply

PROBES_AFTER_WRITE = 2
"""Probes, one after the other, after the reply to a write on keys a request blocks on. The
first runs in a later turn of the server's event loop than the write, so the replies of the
waiters the write served were written before its reply. But the relay reads the server's
connections in the order the kernel reports them ready, and a connection that was already
ready (the shared one, busy) can be read first: the second probe gives the relay a full turn of
its own loop to read the waiters' connections, which were ready before the first probe's reply
came."""

PROBES_AFTER_WAITER = 3
"""Probes after a new blocking request before it counts as blocked: one more than after a write,
because the server may read the first probe before the blocking request (in the same turn of its
event loop, from a connection it was about to read anyway)."""


class Waits:
    """Blocking requests in the leader (a part of :class:`twinproxy.engine.Engine`)."""

    codec: Codec
    limits: Limits
    table: Any
    mode: Mode
    now: float
    clients: dict[int, Client]
    sides: list[Side]
    emit: Any

    def _init_waits(self) -> None:
        # Requests blocked in the leader, by key in the order they blocked (the order Redis
        # serves them in), and in all.
        self.hot: dict[bytes, dict[Exchange, None]] = {}
        self.blocked: dict[Exchange, None] = {}
        self.block_seq = 0
        # Fences: every one, and by key (a key has at most one at a time).
        self.fences: dict[Fence, None] = {}
        self.gate: dict[bytes, Fence] = {}
        self.gated: dict[Client, None] = {}  # clients whose next request waits for a fence
        self.served: list[Exchange] = []  # served waiters whose effect waits for a fence
        # Writes in the leader (sent, reply not in yet), per key, in the order they were sent:
        # a blocking request still in the leader from before the update was woken by the first.
        self.writing: dict[bytes, deque[Exchange]] = {}
        self.write_seq = 0
        # Requests that show or reset the server's counts, held or in the leader (no probe may
        # be in flight with them); the fences whose probe waits for them; the clients whose
        # such request waits for the probes in flight.
        self.counting: dict[Exchange, None] = {}
        self.deferred: list[Fence] = []
        self.count_gated: dict[Client, None] = {}
        # Clients whose next request needs the leader's shared connection in their dialect,
        # held while a request that shows counts is out (see Dispatch._switch).
        self.switch_held: dict[Client, None] = {}

    # ---- before a request goes to the leader -------------------------------------------------

    def _held_back(self, client: Client, head: Exchange) -> bool:
        """Whether ``head`` must wait before it goes to the leader (a fence on what it touches,
        or its client's served waiter not released yet); else open the fence it needs."""
        if client.due:
            return True
        if head.queued:  # queued in a transaction: it touches nothing until EXEC
            return False
        gate = self.gate
        whole = head.is_global or bool(head.run)
        blocking = head.request.blocking and head.keys and head.block_seq == 0
        fenced: tuple[bytes, ...] = ()  # the keys the fence it opens covers
        if blocking:
            fenced = self._reach(head.keys)
        elif self.hot and (head.write or head.run):
            fenced = self._reach(tuple(self.hot) if whole else
                                 tuple(k for k in head.keys if k in self.hot))
        if gate and (whole or any(k in gate for k in head.keys)
                     or any(k in gate for k in fenced)):
            self.gated[client] = None
            return True
        if blocking:
            self.block_seq += 1
            head.block_seq = self.block_seq
            self._probe(self._fence(fenced, None, head, PROBES_AFTER_WAITER))
        elif fenced:
            head.opens = self._fence(fenced, head, None, PROBES_AFTER_WRITE)
        return False

    def _reach(self, keys: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """``keys`` and every key a request blocked on them may write when served (BLMOVE's
        destination), and so on: a write can serve a chain of waiters, all before its reply."""
        out = dict.fromkeys(keys)
        todo = list(keys)
        hot = self.hot
        while todo:
            for waiter in hot.get(todo.pop(), ()):
                for key in waiter.keys:
                    if key not in out:
                        out[key] = None
                        todo.append(key)
        return tuple(out)

    def _fence(self, keys: tuple[bytes, ...], request: Exchange | None,
               waiter: Exchange | None, rounds: int) -> Fence:
        fence = Fence(keys, request, waiter, rounds)
        self.fences[fence] = None
        for key in keys:
            self.gate[key] = fence
        return fence

    def _count_held(self, client: Client, head: Exchange) -> bool:
        """Whether ``head``, a request that shows or resets the server's counts, must wait for
        the probes in flight (see the module docstring); from now on no new probe goes until
        the leader answered it."""
        self.counting[head] = None
        if self.sides[LEADER].probing:
            self.count_gated[client] = None
            return True
        return False

    def _counted(self, exchange: Exchange, reply: Reply, woken: Woken) -> bytes:
        """The leader's reply to a request that shows or resets the server's counts: what the
        client gets (the counts without the proxy's probes); the probes held for it go now,
        and the clients whose next request waits to switch the shared connection's dialect
        are ``woken``."""
        del self.counting[exchange]
        side = self.sides[LEADER]
        raw = reply.raw
        if self.codec.resets_counts(exchange.request):
            if not reply.error:
                side.probes, side.sentinels, side.own_sent, side.exact = 0, 0, {}, True
                side.own_made = {}
        elif side.exact and (side.probes or side.sentinels or side.own_sent or side.own_made):
            raw = self.codec.without_probes(raw, side.probes, side.sentinels, side.own())
        self._uncounted(woken)
        return raw

    def _uncounted(self, woken: Woken) -> None:
        """No request that shows counts is out any more: the probes held for them go, and the
        switches of the shared connection's dialect (see Dispatch._switch) may."""
        if self.counting:
            return
        if self.deferred:
            deferred, self.deferred = self.deferred, []
            for fence in deferred:
                self._probe(fence)
        if self.switch_held:
            woken.update(self.switch_held)
            self.switch_held = {}

    def _probe(self, fence: Fence) -> None:
        """Send the probe for ``fence`` on the leader's shared connection (at the end of the
        batch, after what was sent before it); later while a request that shows the server's
        counts is out."""
        if self.counting:
            self.deferred.append(fence)
            return
        side = self.sides[LEADER]
        shared = side.shared
        if shared is None or shared.conn.closed:
            fence.rounds = 1  # no connection to probe on: the fence ends now
            self._probed(fence, {})
            return
        probe = Exchange(None, self.codec.request_reader(self.limits).receive(
            self.codec.probe())[0])
        probe.probe = fence
        side.probing += 1
        shared.flight.append(probe)
        shared.out.append(probe.request.raw)

    def _probed(self, fence: Fence, woken: Woken) -> None:
        """A probe's reply: the next probe, or the fence ends."""
        fence.rounds -= 1
        if fence.rounds > 0:
            self._probe(fence)
            return
        self.fences.pop(fence, None)
        gate = self.gate
        for key in fence.keys:
            if gate.get(key) is fence:
                del gate[key]
        waiter = fence.waiter
        if waiter is not None and waiter.leader_reply is None:
            lane = waiter.client.lanes[LEADER]
            if waiter in lane.flight:  # it blocks in the leader: its keys are hot from now
                self.blocked[waiter] = None
                for key in waiter.keys:
                    self.hot.setdefault(key, {})[waiter] = None
                conn = lane.conn
                if waiter.client.gone and conn is not None and not conn.closed:
                    self.emit(Shutdown(conn.id))  # its client left meanwhile (see _client_gone)
            self._leader_freed(self.sides[LEADER].answered(waiter), woken)
        self._release_served(fence, woken)
        if self.gated:
            woken.update(self.gated)
            self.gated = {}

    # ---- the leader's replies ------------------------------------------------------------------

    def _write_answered(self, exchange: Exchange) -> None:
        """The reply to a write that opened a fence is in: the probes start."""
        fence = exchange.opens
        exchange.opens = None
        if fence is not None and fence.request is exchange:
            fence.request = None
            self._probe(fence)

    def _waiter_answered(self, client: Client, exchange: Exchange) -> bool:
        """The leader's reply to a blocking request that went to it during the update. True
        when its effect must wait for a fence to be released to the follower (it is then
        released by :meth:`_release_served`); False: release it now."""
        if exchange in self.blocked:
            del self.blocked[exchange]
            for key in exchange.keys:
                waiters = self.hot.get(key)
                if waiters is not None:
                    waiters.pop(exchange, None)
                    if not waiters:
                        del self.hot[key]
        value = exchange.leader_value
        if value is None or value == () or exchange.leader_reply.error:
            return False  # timed out or unblocked: nothing was taken
        gate = self.gate
        if not any(k in gate for k in exchange.keys):
            return False  # (not served by a write the proxy sent: it goes where it is)
        self.served.append(exchange)
        client.due = True
        return True

    def _release_served(self, fence: Fence, woken: Woken) -> None:
        """A fence ended: the waiters it covered that were served go to the follower, in the
        order the leader served them."""
        if not self.served:
            return
        gate = self.gate
        ready = [e for e in self.served if not any(k in gate for k in e.keys)]
        if not ready:
            return
        self.served = [e for e in self.served if any(k in gate for k in e.keys)]
        for exchange in self._serving_order(fence.keys, ready):
            client = exchange.client
            client.due = False
            woken[client] = None
            if not client.solo and self.mode.pinned:
                self._release(client, exchange)

    @staticmethod
    def _serving_order(keys: tuple[bytes, ...], served: list[Exchange]) -> list[Exchange]:
        """The order Redis served these waiters in: key by key as the keys became ready (first
        the written ones, then each key a served waiter may have written: BLMOVE's
        destination), on each key in the order its waiters blocked."""
        left = sorted(served, key=lambda e: e.block_seq)
        order: list[Exchange] = []
        ready = deque(keys)
        seen: set[bytes] = set()
        while ready and left:
            key = ready.popleft()
            if key in seen:
                continue
            seen.add(key)
            for exchange in [e for e in left if key in e.keys]:
                left.remove(exchange)
                order.append(exchange)
                ready.extend(k for k in exchange.keys if k != key)
        return order + left

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
        """For a blocking request that was already in the leader when the update began: the
        write that woke it, when its reply comes before the write's own, is the first write on
        its keys still in the leader."""
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
                        and exchange.block_seq == 0:
                    out.append((exchange, conn.id))
        return out

    def still_unblocking(self, handle: object) -> bool:
        """Whether a request released with :class:`Unblock` has not come back yet."""
        wait = handle.wait if isinstance(handle, Exchange) else None
        return wait is not None and wait.unblocking

    def _unblock(self, handle: object) -> None:
        """The lifecycle releases a blocked request from the leader: its null reply is the
        engine's, which then sends the request again."""
        ok = False
        if isinstance(handle, Exchange) and not handle.client.gone:
            exchange = handle
            conn = exchange.client.lanes[LEADER].conn
            if conn is not None and not conn.closed and exchange.wait is None \
                    and exchange.leader_reply is None and exchange.keys \
                    and exchange in exchange.client.lanes[LEADER].flight:
                exchange.wait = Wait()
                conn.intercept = True
                ok = True
        self.emit(Unblocking(handle, ok))

    def time_left(self, exchange: Exchange) -> None:
        """A blocking request about to go again (released at the sync point, or moved at the
        cutover) waits only for what is left of the client's timeout, as it would directly."""
        request = exchange.request
        if request.sent:
            self.codec.time_left(request, self.now - request.sent)

    def _unblocked(self, client: Client, exchange: Exchange, reply: Reply,
                   woken: Woken) -> bool:
        """A request released from the leader at the sync point: sent again, in its place at
        the head of its client's requests. False when it got data after all (then it is
        answered as is)."""
        exchange.wait = None
        lane = client.lanes[LEADER]
        conn = lane.conn
        if conn is not None and not any(e.wait is not None for e in lane.flight):
            conn.intercept = False
        value = self.codec.canonical(reply)
        if value not in (None, ()):
            return False
        self._leader_freed(self.sides[LEADER].answered(exchange), woken)
        exchange.legs = (Leg(), exchange.legs[1])
        self.sides[LEADER].admit(exchange, exchange.keys, True, exchange.is_global,
                                 after_runs=False)
        self.time_left(exchange)
        lane.queue.appendleft(exchange)
        woken[client] = None
        return True
