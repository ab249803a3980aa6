"""Driving the engine of an update: events from the relay in, its commands carried out.

This is the one place where the engine's commands become socket operations. Each is looked up in
a table; a command that is not in it raises (a command the engine emits must never be dropped
silently). The engine's notices go to the update's lifecycle (:class:`Listener`).

The driver also hands the clients to the engine at the sync point's barrier, each at a reply
boundary (every reply it was owed delivered, except to requests blocked in the leader), and
takes them back when the update ends.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from twinproxy.descriptors import describe
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.large import Spooled
from twinproxy.protocols.channels import Toward
from twinproxy.protocols.messages import ProtocolError
from twinproxy.relay.connections import ClientConn, ServerConn
from twinproxy.relay.single import deliver
from twinproxy.spool import Spool

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.compare import Comparator
    from twinproxy.engine import Engine
    from twinproxy.protocols.messages import Request
    from twinproxy.relay.relay import Relay

log = logging.getLogger("twinproxy.update")


class Listener(Protocol):
    """What the driver tells the update's lifecycle."""

    def engine_failed(self, reason: str) -> None:
        """The update cannot go on."""

    def diverged(self, notice: cmd.Diverged) -> None:
        """The versions answered a request differently (expected or not)."""

    def leader_trouble(self) -> None:
        """A leader connection closed on its own, or the leader is down."""


class UpdateDriver:
    """Carries one update's engine on the relay.

    Args:
        relay: the data path.
        engine: the update's engine.
        leader, follower: the two versions (their roles swap with :meth:`reverse`).
        listener: the lifecycle, told of the engine's notices.
    """

    def __init__(self, relay: Relay, engine: Engine, leader: Backend, follower: Backend,
                 listener: Listener):
        self.relay = relay
        self.engine = engine
        self.backends = [leader, follower]
        self.listener = listener
        self.by_id = relay.by_id
        self._watches: dict[frozenset[str], list[trio.Event]] = {}
        self._broken = False
        self._unblocked = False
        self._ending = False  # in end(): the connections dropped are closed after the pause
        self._ticked = 0.0
        self._do: dict[type[cmd.Command], Callable[[Any], None]] = {
            cmd.Send: self._send,
            cmd.SendLarge: self._send_large,
            cmd.Deliver: self._deliver,
            cmd.DeliverAll: self._deliver_all,
            cmd.Open: self._open,
            cmd.Close: self._close,
            cmd.Shutdown: self._shutdown,
            cmd.CloseClient: self._close_client,
            cmd.SetRole: self._set_role,
            cmd.OpenData: self._open_data,
            cmd.Handback: self._handback,
            cmd.Failed: lambda c: self.listener.engine_failed(c.reason),
            cmd.Reached: self._reached,
            cmd.Diverged: self.listener.diverged,
            cmd.LeaderLost: lambda c: self.listener.leader_trouble(),
            cmd.Unblocking: self._unblocking,
            cmd.Log: lambda c: log.log(c.level, "%s", c.message),
        }

    # ---- feeding the engine -----------------------------------------------------------------

    def feed(self, event: ev.Event) -> None:
        """Hand ``event`` to the engine and carry out what it says: the loop's events (the
        lifecycle's go through :meth:`control`).

        A fault in the engine fails the update, never a client connection: it is logged, the
        lifecycle rolls back, and the clients are handed back with what can be saved.
        """
        if self._broken and type(event) is not ev.End:
            return
        try:
            commands = self.engine.handle(event)
        except Exception:
            log.exception("internal error in the update's engine (on %s)", type(event).__name__)
            self.internal_error()
            return
        by_id = self.by_id
        send = self.relay.send
        do = self._do
        for command in commands:
            kind = type(command)
            if kind is cmd.Send or kind is cmd.Deliver:  # most of them: no lookup, no call
                side = by_id.get(command.conn if kind is cmd.Send else command.client)
                if side is not None:
                    send(side, command.data)
                continue
            handler = do.get(kind)
            if handler is None:
                raise TypeError(f"the relay does not know the engine's command {command!r}")
            handler(command)

    def internal_error(self) -> None:
        """The engine met a bug: fail the update; from now on only its end is fed."""
        if not self._broken:
            self._broken = True
            self.listener.engine_failed("internal error in the update's engine (see the log)")

    def tick(self, now: float) -> None:
        """The engine's clock: at most once a millisecond (the loop wakes far more often)."""
        if now - self._ticked >= 0.001:
            self._ticked = now
            self.feed(ev.Tick(now, time.time()))

    def control(self, event: ev.Event) -> None:
        """An event of the update's lifecycle (its steps, its waits, the operator's asks),
        fed once the engine has the time. The engine reads no clock: the loop gives it the
        time as each of its batches starts, and the relay's housekeeping twice a second, so
        when the clients have sent nothing for a while the engine's time is that of the last
        batch; what the lifecycle's events do with it (a blocked request's time left, at a
        handover) must not be that far off. No timer ticks the engine meanwhile: a tick every
        10 ms (and a look at the warm-up every 50) kept a proxy whose clients were idle during
        an update at 1.7 to 3.5% of a core, against 0.1 to 0.2% without (loadtests/idle_cpu.py,
        loadtests/reports/profile.md); under load it cost nothing measurable."""
        self.tick(time.monotonic())
        self.feed(event)

    def flush(self) -> None:
        self.feed(ev.Flush())

    # ---- what the relay reports ---------------------------------------------------------------

    def client_data(self, client: ClientConn, data: bytes) -> None:
        """Bytes from a client the engine drives: framed here, sent on as requests or a run."""
        reader = client.reader
        if self.engine.runs_allowed(client.id, True, True):  # (asked again about what it read)
            got = reader.count_run(data)
            if got is not None:
                used, count = got
                if count:  # (none: the start of a large request, held by the reader)
                    self.feed(ev.Run(client.id, data if used == len(data) else data[:used],
                                     count, reader.small_replies, reader.reads_only,
                                     reader.silent, reader.silent_last, reader.expiring))
                return
            more = reader.continue_run(data)  # (a large request the last run left begun)
            if more is not None:
                request, rest = more
                if request:
                    self.feed(ev.Run(client.id, request, 1, reader.small_replies,
                                     reader.reads_only, reader.silent, reader.silent_last,
                                     reader.expiring))
                if rest:
                    self.client_data(client, rest)
                return
        error = None
        try:
            requests = reader.receive(data, answers=True)
        except ProtocolError as exc:
            requests, error = exc.messages, exc
        if client.spool is not None:  # a large value passed: this completes its request
            if requests:
                self._spooled(client, requests[0])
            elif error is not None:
                client.spool = None
        relay = self.relay
        for request in requests:
            if request.session:
                relay.note_session(client, request)
        at = _leaving_at(client, requests)
        if at is not None:
            requests, held = requests[:at], tuple(requests[at:])
        if requests:
            self.feed(ev.Requests(client.id, requests))
        if at is not None:
            # Its session turns into one the engine cannot follow: it is read no more until
            # the engine hands it back to the leader alone (_handback resumes it).
            client.paused = client.leaving = True
            relay.refresh(client)
            self.feed(ev.Leave(client.id, held))
            return
        if reader.value_left and error is None:
            # A large value began: its request is written to disk as it comes, not held.
            spool = client.spool
            if spool is None:
                client.spool = spool = Spool()
            head = reader.passing()
            spool.write(head)
            spool.value_at = spool.size - (reader.value_size + 2 - reader.value_left)
            spool.values += 1  # (MSET may have several)
        if error is not None:
            log.info("client %s: %s", client.peer, error)
            client.error = error.reply  # no more reading
            relay.refresh(client)
            self.feed(ev.ClientError(client.id, error.reply))

    def pass_value(self, client: ClientConn, data: bytes) -> bytes:
        """Bytes of a large value coming in (:meth:`client_data` began it): to its spool, and
        its request to the engine if they end it; returns what follows."""
        took, request = client.reader.pass_through(data)
        spool = client.spool
        assert spool is not None
        spool.write(data if took == len(data) else memoryview(data)[:took])
        if request is not None:
            self._spooled(client, request)
            self.feed(ev.Requests(client.id, [request]))
        return data[took:]

    def _spooled(self, client: ClientConn, request: Request) -> None:
        """The end of a large request: ``request`` (its value empty, its ``raw`` what followed
        the value) becomes the one the engine gets (see :mod:`twinproxy.engine.large`)."""
        spool, client.spool = client.spool, None
        assert spool is not None
        reader = client.reader
        spool.write(request.raw)
        spooled = spool.spooled(reader.value_size)
        request.raw = spooled  # type: ignore[assignment]
        request.args[reader.value_at] = spooled.token
        if spool.error is not None:
            self.listener.engine_failed(spool.error)

    def client_eof(self, client: ClientConn) -> None:
        self.feed(ev.ClientEof(client.id))

    def client_closed(self, client: ClientConn) -> None:
        self.feed(ev.ClientClosed(client.id))

    def data(self, link: ServerConn, data: bytes) -> None:
        self.feed(ev.Data(link.id, data))

    def connected(self, link: ServerConn) -> None:
        self.feed(ev.Connected(link.id))

    def connect_failed(self, link: ServerConn, reason: str) -> None:
        self.feed(ev.ConnectFailed(link.id, reason))

    def conn_closed(self, link: ServerConn) -> None:
        self.feed(ev.ConnClosed(link.id))

    def leader_down(self) -> None:
        self.listener.leader_trouble()

    def busy(self, client: ClientConn) -> bool:
        return self.engine.busy(client.id)

    def backed_up(self, client: ClientConn) -> None:
        self.feed(ev.SlowReader(client.id))

    # ---- the commands -------------------------------------------------------------------

    def _send(self, command: cmd.Send) -> None:
        side = self.by_id.get(command.conn)
        if side is not None:
            self.relay.send(side, command.data)

    def _send_large(self, command: cmd.SendLarge) -> None:
        link = self.by_id.get(command.conn)
        if type(link) is ServerConn:
            self.relay.send_large(link, command.data)

    def _deliver(self, command: cmd.Deliver) -> None:
        client = self.by_id.get(command.client)
        if client is not None:
            self.relay.send(client, command.data)

    def _deliver_all(self, command: cmd.DeliverAll) -> None:
        by_id = self.by_id
        send = self.relay.send
        if deliver is not None:  # those C did not write whole go on as Output.send takes them
            for client, data, sent in deliver(self.relay, by_id, command.replies):
                send(client, memoryview(data)[sent:] if sent else data)
            return
        for client_id, data in command.replies.items():
            client = by_id.get(client_id)
            if client is not None:
                send(client, data)

    def _open(self, command: cmd.Open) -> None:
        client = self.by_id.get(command.client) if command.client is not None else None
        try:
            link = self.relay.open_link(client, self.backends[command.role], framed=False,
                                        conn_id=command.conn, role=command.role)
        except OSError as exc:  # out of descriptors: for the follower, the update fails
            self.feed(ev.ConnectFailed(command.conn, describe(exc)))
            return
        if link is None:
            self.feed(ev.ConnectFailed(command.conn, "refused"))
            return
        link.engine = True

    def _close(self, command: cmd.Close) -> None:
        link = self.by_id.get(command.conn)
        if type(link) is ServerConn:
            self._drop(link)

    def _drop(self, link: ServerConn) -> None:
        """Drop a server connection; at the end of the update, while clients wait for their
        hand-back, its socket is closed only once they went on (see Loop.drop_link_later)."""
        if self._ending:
            self.relay.drop_link_later(link)
        else:
            self.relay.drop_link(link)

    def _shutdown(self, command: cmd.Shutdown) -> None:
        link = self.by_id.get(command.conn)
        if type(link) is ServerConn:
            self.relay.shut_after_output(link)

    def _close_client(self, command: cmd.CloseClient) -> None:
        client = self.by_id.get(command.client)
        if type(client) is ClientConn:
            client.attached = False  # the engine is done with it
            self.relay.close_after_output(client)

    def _open_data(self, command: cmd.OpenData) -> None:
        """A data channel's half (:mod:`twinproxy.relay.mirror`), and the message naming it."""
        client = self.by_id.get(command.client)
        link = self.by_id.get(command.conn)
        if type(link) is not ServerConn:
            return
        if type(client) is not ClientConn:
            # A client that left: what it sent still runs on the follower, transfers too.
            client = self.relay.mirror.owner(command.channel)
            if client is None or command.role == cmd.LEADER:
                if command.role != cmd.LEADER and command.open.toward is Toward.SERVER:
                    # Its channel went with it (a transfer the leader refused: nothing used
                    # it), but the engine waits for the follower's reply to this PORT: it goes
                    # naming an endpoint that is closed, so that the follower's replies stay
                    # paired with their requests (without it, its 425 to the transfer that
                    # follows was taken for the PORT's reply).
                    self.relay.send(link, self.relay.mirror.nowhere(link, command.open))
                return
        opens = command.open
        message = self.relay.mirror.open(client, link, command.role, command.channel, opens)
        if opens.toward is Toward.SERVER:  # a PORT/EPRT request, rewritten
            self.relay.send(link, message if message != opens.failed else b"NOOP\r\n")
        elif message is not None and command.role == cmd.LEADER:  # a 227/229 reply
            self.relay.send(client, message)

    def _transferred(self, event: ev.Transferred) -> None:
        self.feed(event)

    def _set_role(self, command: cmd.SetRole) -> None:
        link = self.by_id.get(command.conn)
        if type(link) is ServerConn:
            link.role = command.role

    def _handback(self, command: cmd.Handback) -> None:
        """The client goes on alone on ``command.conn``."""
        relay = self.relay
        client = self.by_id.get(command.client)
        link = self.by_id.get(command.conn)
        if type(client) is not ClientConn or client.closed:
            if type(link) is ServerConn:
                self._drop(link)
            return
        client.attached = False
        client.reader.pass_values(relay.pass_from)
        if type(link) is not ServerConn or link.closed:
            relay.close_client(client)
            return
        if client.link is not None and client.link is not link and not client.link.engine:
            self._drop(client.link)
        link.engine = False
        link.role = 0
        link.client = client
        client.link = link
        link.replies = command.replies
        link.inflight = deque(command.inflight)
        if not command.inflight and relay.sentinel_works(link) and relay.carry is None and \
                relay.watch is None and relay.codec.plain_state(command.replies):
            relay.unframed(link)  # plain again: back to the fast path
            client.forwarded = False
        if command.held:
            self._forward_held(client, link, command.held)
        if client.leaving:
            client.leaving = client.paused = False
            relay.refresh(client)
        if client.spool is not None:
            # A large value is coming in: what it has so far goes now, the rest passes through
            # as in SINGLE mode (SingleMode._pass_value).
            spool, client.spool = client.spool, None
            relay.send_large(link, spool.spooled(0))
            client.forwarded = True
        relay.resume(client)

    def _forward_held(self, client: ClientConn, link: ServerConn,
                      held: tuple[Request, ...]) -> None:
        """Requests the engine never sent, in order; a large one from its file."""
        relay = self.relay
        batch: list[Request] = []
        for request in held:
            raw = request.raw
            if type(raw) is not Spooled:
                batch.append(request)
                continue
            request.raw = b""  # (the reply is expected in its place; its bytes go below)
            relay.forward(client, [*batch, request], noted=True)
            batch = []
            relay.send_large(link, raw)
        if batch:
            relay.forward(client, batch, noted=True)

    def _unblocking(self, command: cmd.Unblocking) -> None:
        self._unblocked = command.ok

    def _reached(self, command: cmd.Reached) -> None:
        for event in self._watches.pop(command.conditions, ()):
            event.set()

    # ---- what the lifecycle asks ------------------------------------------------------------

    def prepare(self) -> None:
        """Before the sync point's barrier, while clients flow: shorten each client's session
        record to what still matters (as the relay does past 64 requests), so that handing it
        to the engine at the barrier costs little. A client's record grows with every
        WATCH/EXEC it sends; compacting it at the barrier cost 2 to 4 ms for 50 clients."""
        compact = self.relay.codec.compact_session
        for client in self.relay.clients:
            if len(client.session) > 1:
                client.session[:] = compact(client.session)

    def begin(self) -> trio.Event:
        """Hand every client to the engine at a reply boundary: the sync point's barrier.

        Each client stops being read while it waits; one whose owed replies are all out (or
        whose only unanswered requests wait behind a blocking command) is attached at once.
        Returns an event set once every client is attached; the engine holds their requests.
        """
        relay = self.relay
        relay.driver = self
        relay.mirror.report = self._transferred
        relay.mirror.budget(self.engine.settings.max_spool_bytes, self.listener.engine_failed)
        self.control(ev.Begin())
        attached = trio.Event()
        # An opaque session (FTP over TLS, passed through) cannot be replayed on the new
        # version nor compared: it stays with the leader, its version, until the update ends
        # (lifecycle, "tls_sessions").
        waiting: set[ClientConn] = {c for c in relay.clients if not c.opaque}

        def done(client: ClientConn) -> None:
            waiting.discard(client)
            if not waiting:
                attached.set()

        for client in list(waiting):
            self._attach(client, done)
        if not waiting:
            attached.set()
        return attached

    def _attach(self, client: ClientConn, done: Callable[[ClientConn], None]) -> None:
        relay = self.relay
        if client.reader.mid_request():  # a large value is passing through: after its end
            client.after_value.append(lambda: self._attach(client, done))
            return
        link = client.link
        if client.closed:
            done(client)
            return
        if link is None:  # its server was unavailable: it has no session anywhere
            relay.close_client(client)
            done(client)
            return
        if not link.connected:  # nothing was forwarded yet
            self._hand(client, (), connected=False)
            done(client)
            return
        client.paused = True
        relay.refresh(client)

        def ready() -> bool:
            if client.closed or relay.driver is not self:  # gone, or the update was abandoned
                if not client.closed:
                    client.paused = False
                    relay.refresh(client)
                done(client)
                return True
            replies = link.replies
            blocked: list = []
            if replies is not None and replies.pending:
                blocked = relay.blocked(link, self.engine.table)
                if len(blocked) != replies.pending:
                    return False
            self._hand(client, tuple(blocked), connected=True)
            client.paused = False
            relay.refresh(client)
            done(client)
            return True

        if link.replies is None:
            relay.settle(client, ready)
        elif not ready():
            client.waiters.append(ready)

    def attach_new(self, client: ClientConn) -> None:
        """A client that connected during the update: no session yet, all of it goes to both."""
        self._hand(client, (), connected=False)

    def _hand(self, client: ClientConn, blocked: tuple, connected: bool) -> None:
        link = client.link
        if link.replies is None:
            self.relay.framed(link)
        link.inflight.clear()
        link.engine = True
        client.attached = True
        # A large value is written to disk as it comes (see UpdateDriver.pass_value).
        client.reader.pass_values(self.relay.pass_from)
        channel, setup = self.relay.mirror.adopt(client) or (0, b"")
        self.feed(ev.Attach(client.id, client.peer, link.id, link.replies,
                            tuple(client.session), blocked, connected, client.host, channel,
                            setup))

    async def until(self, *conditions: str) -> None:
        """Wait until every one of ``conditions`` holds at once (see
        :data:`twinproxy.engine.CONDITIONS`)."""
        key = frozenset(conditions)
        event = trio.Event()
        self._watches.setdefault(key, []).append(event)
        self.control(ev.Watch(key))
        try:
            await event.wait()
        finally:
            if not event.is_set():  # (cancelled: a timeout) the engine stops checking them
                waiting = self._watches.get(key, [])
                if event in waiting:
                    waiting.remove(event)
                if not waiting:
                    self._watches.pop(key, None)
                self.control(ev.Unwatch(key))

    def reverse(self, comparator: Comparator) -> None:
        """Swap the roles at a barrier: the follower leads."""
        self.backends.reverse()
        self.control(ev.Reverse(comparator))
        self.relay.mirror.reverse()

    def end(self, cutover: bool) -> None:
        """The update is over: every client goes back to SINGLE mode, on the follower
        (``cutover``) or on the leader. The relay serves without the engine from now on."""
        relay = self.relay
        self._broken = False
        self._ending = True
        try:
            self.control(ev.End(cutover))
        finally:
            relay.driver = None
            relay.mirror.end(cutover)
            for client in list(relay.clients):
                if client.attached:  # the engine could not hand it back
                    client.attached = False
                    relay.close_client(client)
                elif client.paused and client.link is not None and client.link.connected \
                        and not client.link.sentinel:
                    # Still waiting to be attached when the update was abandoned.
                    client.paused = False
                    relay.settled(client)
                    relay.refresh(client)
            for side in list(self.by_id.values()):
                if type(side) is ServerConn and side.engine:  # nobody was handed it back
                    relay.drop_link_later(side)
            self._ending = False

    def close(self) -> None:
        """After :meth:`end`: drop the table of handlers, which refers back to this driver, so
        that the driver is freed as soon as its update lets go of it (see
        :meth:`~twinproxy.engine.Engine.close`)."""
        self._do.clear()

    # ---- releasing requests blocked at the sync point (see twinproxy.engine.waits) --------------

    def blocked_at_sync_point(self) -> list[tuple[object, tuple[str, int]]]:
        """Requests blocked in the leader since before the update, each with the local address
        of its client's leader connection (how the server names that connection)."""
        out = []
        for handle, conn_id in self.engine.blocked_at_sync_point():
            link = self.by_id.get(conn_id)
            if type(link) is ServerConn and not link.closed:
                out.append((handle, link.sock.getsockname()[:2]))
        return out

    def unblock(self, handle: object) -> bool:
        """The engine will wait for this blocked request itself; False: leave it alone."""
        self._unblocked = False
        self.control(ev.Unblock(handle))
        return self._unblocked

    def still_unblocking(self, handle: object) -> bool:
        return self.engine.still_unblocking(handle)


def _leaving_at(client: ClientConn, requests: list[Request]) -> int | None:
    """Where in ``requests`` the client's session leaves the update for the leader alone (FTP's
    ``AUTH`` when TLS sessions are passed through: see :class:`ev.Leave`), or None."""
    channels = client.channels
    if channels is None or not channels.passthrough:
        return None
    for at, request in enumerate(requests):
        if channels.leaves(request):
            return at
    return None
