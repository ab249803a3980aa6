"""SINGLE mode's whole path: what the relay does with every read, when one version serves.

What SINGLE mode does per read, and why no more:

* A client's bytes go through the protocol's request reader, and only complete requests are
  forwarded. So the server never holds half a request from the proxy, and the proxy can change
  what it does with a connection (start an update, answer an error, close) between any two reads.
  For ordinary requests the reader only counts (``RequestReader.count``), at C speed.
* A server's bytes are forwarded as they come. For a connection in the plain state (for Redis:
  RESP2, not subscribed, replies on) they are not even framed: when the proxy needs every owed
  reply delivered (a drain, a bad request, the start of an update) it sends the codec's
  *sentinel* (an ``ECHO`` of a random token) and waits for its reply, which it strips
  (:mod:`.settling`). A request
  that changes how replies are framed (HELLO, SUBSCRIBE, CLIENT REPLY ...) switches the
  connection to full reply framing first, at a reply boundary reached the same way, and the
  connection goes back to the unframed path once it owes no reply and is in the plain state
  again. While a request that may make the server refuse every other (a Redis script past its
  time limit: ``-BUSY``) is out, the sentinel is one the server answers even then (see
  ``Codec.refused_sentinel``). Codecs without a sentinel (memcached, FTP) frame replies from
  the start.
* A request the proxy answers itself (``Request.answer``: memcached's value or key over the
  limit) goes to the server as the request the reader made in its place, and while such
  requests are out the server's replies are framed before they are forwarded, so that each of
  their replies is replaced by its answer in its place in the stream.
* A protocol with data channels (FTP) has the messages that set one up rewritten by
  :mod:`.pipes`, which opens the proxy's own endpoint for each: requests as they are forwarded,
  replies once complete (its replies are always framed).
* A bad request is answered with the protocol's error once the replies owed before it are
  delivered, then the connection closes. Where some of those replies may never come on their
  own (memcached's quiet requests), the codec's settle request makes the server say where they
  end. A connection the server stopped reading (memcached's ``watch``) only streams the
  server's output: the client's bytes are dropped, as memcached leaves them unread, and its end
  closes both sides.

During an update the clients the engine drives (``attached``) and the server connections it owns
(``engine``) are served by :class:`~.driver.UpdateDriver`, which turns the engine's commands into
the operations below.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

from twinproxy.protocols.compiled import IO_AGAIN, IO_FAILED, IO_HELD
from twinproxy.protocols.messages import ProtocolError, Request
from twinproxy.protocols.reader import OpaqueReader
from twinproxy.relay.connections import ClientConn, ServerConn
from twinproxy.relay.settling import Settling

if TYPE_CHECKING:
    from twinproxy.protocols import Limits
    from twinproxy.relay.pipes import DataPipes

log = logging.getLogger("twinproxy.relay")

# A value at least this large passes through to the server as it comes, in SINGLE mode, instead
# of being held whole (see RequestReader.pass_from).
PASS_FROM = 1 << 20

# One read and its send in one call to C (relay/_pump.c), a batch of them (serve), and an
# update's replies at the end of a batch (deliver, for UpdateDriver); or None where it was not
# built.
try:
    from twinproxy.relay._pump import classes, deliver, pump, serve
except ImportError:
    deliver = pump = serve = None
else:
    classes(ServerConn, ClientConn)


class Updating(Protocol):
    """What the relay tells the update in progress (:class:`~.driver.UpdateDriver`) about
    the clients and server connections the update's engine drives."""

    def tick(self, now: float) -> None: ...
    def flush(self) -> None: ...
    def attach_new(self, client: ClientConn) -> None: ...
    def client_data(self, client: ClientConn, data: bytes) -> None: ...
    def pass_value(self, client: ClientConn, data: bytes) -> bytes: ...
    def client_eof(self, client: ClientConn) -> None: ...
    def client_closed(self, client: ClientConn) -> None: ...
    def data(self, link: ServerConn, data: bytes) -> None: ...
    def connected(self, link: ServerConn) -> None: ...
    def connect_failed(self, link: ServerConn, reason: str) -> None: ...
    def conn_closed(self, link: ServerConn) -> None: ...
    def leader_down(self) -> None: ...
    def busy(self, client: ClientConn) -> bool: ...
    def backed_up(self, client: ClientConn) -> None: ...
    def internal_error(self) -> None: ...


class SingleMode(Settling):
    """What the relay does with each read (a part of :class:`~.relay.Relay`)."""

    limits: Limits
    driver: Updating | None
    pipes: DataPipes
    _server_speaks_first: bool
    pass_from = PASS_FROM
    serve_plain = serve

    def _unavailable_text(self) -> str:
        raise NotImplementedError

    def _client_readable(self, client: ClientConn) -> None:
        link = client.link
        if (link is not None and link.replies is None and not link.out and not link.closed
                and self.carry is None and self.watch is None and not client.after_value
                and not client.reader.value_left):
            # The hot path in one call to C, where the reader can (RequestReader.forward):
            # the read, its count, and its send when it is only ordinary requests. (serve in
            # relay/_pump.c makes these same checks for a batch: change both together.)
            got = client.reader.forward(client.fd, link.fd, self._buffer)
            if got is not None:
                self._forwarded(client, *got)
                return
        try:
            data = self._view[:client.sock.recv_into(self._buffer)].tobytes()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._client_read(client, data)

    def _forwarded(self, client: ClientConn, received: int, sent: int) -> None:
        """What follows a client's read that RequestReader.forward made (here, or in the C
        batch: serve_plain)."""
        if received > 0 and sent != IO_HELD:
            link = client.link
            self.client_received += received
            self.server_sent[link.role] += received  # type: ignore[union-attr]
            client.last_active = self.now
            client.forwarded = True
            client.blocking = False
            if sent != received:
                self._pumped_short(link, sent, received)  # type: ignore[arg-type]
            return
        if received == IO_AGAIN:
            return
        self._client_read(client, self._view[:received].tobytes() if received > 0 else b"")

    def _client_read(self, client: ClientConn, data: bytes) -> None:
        if not data:
            self._client_eof(client)
            return
        self.client_received += len(data)
        client.last_active = self.now
        self._client_data(client, data)
        if client.after_value and not client.reader.mid_request():
            self._value_passed(client)

    def _read_done(self, side: ClientConn | ServerConn, received: int, sent: int) -> None:
        if type(side) is ClientConn:
            self._forwarded(side, received, sent)
        else:
            self._pumped(side, received, sent)  # type: ignore[arg-type]

    def _client_data(self, client: ClientConn, data: bytes) -> None:
        reader = client.reader
        if reader.value_left:
            if client.spool is not None:  # during an update: see UpdateDriver.pass_value
                data = self.driver.pass_value(client, data)
            else:
                data = self._pass_value(client, data)
            if not data:
                return
        link = client.link
        if link is not None and link.replies is None and self.carry is None and self.watch is None:
            # The hot path: ordinary requests only counted, forwarded as they came.
            used = reader.count(data)
            if used is not None:
                if used:
                    client.forwarded = True
                    client.blocking = False
                    if reader.holds:  # a script: the sentinel may meet -BUSY meanwhile
                        reader.holds = False
                        self._holding(link)
                    self.send(link, data if used == len(data) else data[:used])
                return
        if client.attached:
            self.driver.client_data(client, data)
            return
        if link is not None and link.replies is not None and link.replies.streaming:
            return  # the server reads nothing more from it: the bytes go nowhere, as directly
        error = None
        try:
            requests = reader.receive(data, answers=True)
        except ProtocolError as exc:
            requests, error = exc.messages, exc
        if link is None:
            self._answer_unavailable(client, requests)
        else:
            self.forward(client, requests)
        if reader.value_left:  # a large value began: what its request has so far goes now
            passing = reader.passing()
            if link is not None:
                client.forwarded = True
                self.send(link, passing)
        if error is not None:
            if reader.mid_request():
                # Part of the request is on the server already: nothing may follow it there.
                self.send(client, error.reply)
                self.close_after_output(client)
                return
            self._client_protocol_error(client, error)

    def _pass_value(self, client: ClientConn, data: bytes) -> bytes:
        """Forward the part of ``data`` that belongs to a large value passing through (never
        held whole: a 200 MB SET cost the proxy 600 MB and every other client a second's wait);
        what follows it."""
        reader = client.reader
        took, request = reader.pass_through(data)
        link = client.link
        if link is not None:
            client.forwarded = True
            self.send(link, data if took == len(data) else data[:took])
            if request is not None:
                self.forward(client, [request], passed=True)
        elif request is not None:
            self._answer_unavailable(client, [request])
        return data[took:]

    def _value_passed(self, client: ClientConn) -> None:
        """A request that passed a value through is complete, and the rest of the read that
        completed it forwarded: what waited for its end goes."""
        waiting, client.after_value = client.after_value, []
        for then in waiting:
            then()

    def forward(self, client: ClientConn, requests: list[Request], noted: bool = False,
                passed: bool = False) -> None:
        """Send framed requests to the client's server, switching to full reply framing at the
        first that needs it. ``noted``: their sessions were recorded already. ``passed``: the
        request's bytes went to the server already (a large value passed through).

        After a cutover, requests that name things by the old version's names are rewritten
        first (:attr:`carry`, ``Codec.after_cutover``); while a state sync watches
        (:attr:`watch`), it is shown every request that goes.

        The switch waits for nothing: the sentinel goes out in the same write, just before the
        request that needs framing, and the replies after the sentinel's are framed. Holding the
        request for the sentinel's round trip let other connections' later requests pass it
        (of two BRPOPLPUSH on one list, the second was served first)."""
        link = client.link
        assert link is not None
        if self.carry is not None and not passed:
            carry = self.carry
            requests = [carry(request) for request in requests]
        if self.watch is not None:
            for request in requests:
                self.watch(request)
        if client.channels is not None:
            requests = self.pipes.requests(client, requests)
        replies = link.replies
        codec = self.codec
        plain = codec.plain
        may_hold = codec.may_hold
        counted = codec.counting_names
        framing = self.carry is not None or self.watch is not None
        out = []
        for request in requests:
            if request.session and not noted:
                self.note_session(client, request)
            counts = request.name in counted and codec.counts_requests(request)
            before = False  # its reply comes before the sentinel's, unframed
            if replies is None and (request.answer is not None or framing or counts
                                    or not plain(request)):
                replies = self.framed(link)
                link.inflight.clear()
                if (client.forwarded or out) and not link.sentinel:
                    out.append(self._sentinel(link))
                    link.deadline = float("inf")  # the client's own request waits behind it
                    # A large value's request whose bytes went already: before the sentinel.
                    before = passed
            if may_hold(request):
                self._holding(link)
            if replies is not None and not before:
                if request.answer is not None or counts:
                    if not link.answering and not link.counting and client.channels is None:
                        link.ahead = replies.buffered  # forwarded already, as it came
                    if counts:
                        link.counting += 1
                    else:
                        link.answering += 1
                replies.expect(request)
                link.inflight.append(request)
                if not request.sent and not plain(request):  # blocking, among others: an
                    request.sent = self.now  # update may send it again (Codec.time_left)
            out.append(request.raw)
        if out:
            client.forwarded = True
            client.blocking = bool(requests[-1].blocking)
            self.send(link, out[0] if len(out) == 1 else b"".join(out))

    def _server_readable(self, link: ServerConn) -> None:
        client = link.client
        if (pump is not None and link.replies is None and not link.sentinel and not link.engine
                and client is not None and not client.out and not client.closed):
            # The plain path in one call to C: the read, and its send to the client. (serve
            # in relay/_pump.c makes these same checks for a batch: change both together.)
            self._pumped(link, *pump(link.fd, client.fd, self._buffer))
            return
        try:
            data = self._view[:link.sock.recv_into(self._buffer)].tobytes()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._server_read(link, data)

    def _pumped(self, link: ServerConn, received: int, sent: int) -> None:
        """What follows a server's read that pump made (here, or in the C batch)."""
        if received > 0:
            self.server_received[link.role] += received
            self.client_sent += received
            if sent != received:
                self._pumped_short(link.client, sent, received)  # type: ignore[arg-type]
            return
        if received == IO_AGAIN:
            return
        self._link_eof(link)

    def _server_read(self, link: ServerConn, data: bytes) -> None:
        if not data:
            self._link_eof(link)
            return
        self.server_received[link.role] += len(data)
        if link.engine:
            self.driver.data(link, data)
            return
        client = link.client
        if link.sentinel:
            data = self._strip_sentinel(link, data)
            if not data:
                return
        replies = link.replies
        if replies is None:
            self.send(client, data)
            return
        error = None
        if link.answering or link.counting or client.channels is not None or replies.watching:
            error = self._answer(link, data)
        else:
            self.send(client, data)
            try:
                got = replies.receive(data)
            except ProtocolError as exc:
                error = exc
            else:
                if self.carry is not None and got:
                    self.carry.seen(got)
                if replies.watching:  # (MONITOR's +OK came: its lines go whole from now on)
                    link.ahead = replies.buffered  # forwarded already, as it came
        if error is not None:
            log.error("%s sent malformed output (%s): closing client %s", link.backend.name,
                      error, client.peer)
            self.drop_link(link)
            self.close_client(client)
            return
        if client.opaque:
            return  # (from this read on, nothing it sends is framed)
        inflight = link.inflight
        if len(inflight) > replies.pending:
            while len(inflight) > replies.pending:
                inflight.popleft()
            if link.scripts and not any(map(self.codec.may_hold, inflight)):
                self._held(link)
            if not inflight:
                self._unframe(link)
        if client.waiters:
            self.settled(client)

    def _sent_short(self, link: ServerConn, rest: bytes | None) -> None:
        if rest is None:
            self._side_failed(link)
            return
        self.server_sent[link.role] -= len(rest)  # (send counts them again)
        self.send(link, rest)

    def _pumped_short(self, side: ClientConn | ServerConn, sent: int, received: int) -> None:
        """A read pumped to ``side`` that it did not take all of (``sent`` of ``received``
        bytes, or IO_FAILED): the rest waits in its queue, as :meth:`send` would leave it."""
        if sent == IO_FAILED:
            self._side_failed(side)
            return
        rest = self._view[sent:received].tobytes()
        if type(side) is ClientConn:  # (send counts them again)
            self.client_sent -= len(rest)
        else:
            self.server_sent[side.role] -= len(rest)
        self.send(side, rest)

    def _answer(self, link: ServerConn, data: bytes) -> ProtocolError | None:
        """Forward what ``data`` completes, each reply to a request the proxy answers replaced by
        its answer, and a reply that shows the server's counts given without the proxy's
        sentinels (:meth:`_counted`); the bytes of a reply in progress wait, since they may be
        such a reply, until no such request is out. For a protocol with data channels every
        reply is complete before it goes, since it may be one to rewrite (:mod:`.pipes`).
        Returns the error that makes the stream unreadable (nothing of ``data`` forwarded
        then), or None."""
        replies = link.replies
        assert replies is not None
        try:
            got = replies.receive(data)
        except ProtocolError as exc:
            return exc
        if self.carry is not None and got:
            self.carry.seen(got)
        out = []
        ahead = link.ahead
        channels = link.client.channels
        watching = replies.watching
        for reply in got:
            request = reply.request
            if watching and request is None and self.codec.own_request_shown(reply):
                continue  # (MONITOR's line for a sentinel of another connection's)
            if request is not None and request.answer is not None:
                out.append(request.answer)
                link.answering -= 1
            elif ahead and reply.raw:
                out.append(reply.raw[ahead:])  # its start went out before answering began
                ahead = 0
            elif link.counting and request is not None \
                    and request.name in self.codec.counting_names \
                    and self.codec.counts_requests(request):
                out.append(self._counted(link, request, reply.raw))
            elif channels is not None:
                out.append(self.pipes.reply(link, reply))
                if channels.passthrough and channels.opaque_after(reply):
                    tail = replies.buffered  # (what follows it: already the server's TLS)
                    if tail:
                        out.append(data[-tail:])
                    self._go_opaque(link)
                    break
            else:
                out.append(reply.raw)
        link.ahead = ahead
        if not link.answering and not link.counting and channels is None and not watching:
            # The reply in progress began after the last answered one, in this read.
            tail = min(replies.buffered, len(data))
            if tail:
                out.append(data[-tail:])
        self.send(link.client, b"".join(out))
        return None

    def _counted(self, link: ServerConn, request: Request, raw: bytes) -> bytes:
        """The reply to a request that shows the server's counts, without the proxy's sentinels
        and probes it counts (``Backend.sentinels``: those answered so far, which for this
        connection are all it sent before; see protocols/redis/ownstats.py for what that makes
        exact); or one that resets them (CONFIG RESETSTAT), after which they count from 0."""
        link.counting -= 1
        codec = self.codec
        backend = link.backend
        if codec.resets_counts(request):
            if raw == b"+OK\r\n":
                backend.sentinels = backend.probes = 0
                backend.own = {}
            return raw
        return codec.without_probes(raw, backend.probes, backend.sentinels, backend.own)

    def _go_opaque(self, link: ServerConn) -> None:
        """The session turned into bytes the proxy cannot read (FTP: the server accepted
        ``AUTH TLS`` and passthrough is allowed): from now on both directions are relayed as
        they come, by the path of ordinary requests, with nothing framed. (A client waits for
        the server's ``234`` before its TLS handshake, RFC 4217 4, so nothing of it was framed
        before.)"""
        client = link.client
        link.replies = None
        link.inflight.clear()
        client.reader = OpaqueReader()
        client.opaque = True
        client.session.clear()  # (a session no other connection can be given)
        self.pipes.close_listener(client)
        log.info("client %s: its session passes through encrypted (TLS), served by %s alone",
                 client.peer, link.backend.name)

    def note_session(self, client: ClientConn, request: Request) -> None:
        """Keep the session a client built, to replay it on a new version's connection."""
        session = client.session
        session.append(request)
        if len(session) > 64:
            session[:] = self.codec.compact_session(session)

    def _answer_unavailable(self, client: ClientConn, requests: list[Request]) -> None:
        """Each request that owes a reply gets the protocol's error, in order; one the proxy
        answers itself gets its answer."""
        down = client.down
        if down is None:
            return
        error = self.codec.error_reply(self._unavailable_text())
        out = []
        for request in requests:
            if request.answer is not None:
                out.append(request.answer)
                continue
            owed = down.pending
            down.expect(request)
            out.append(error * (down.pending - owed))
        self.send(client, b"".join(out))

    def _client_protocol_error(self, client: ClientConn, exc: ProtocolError) -> None:
        """The requests complete before the bad bytes are forwarded (by the caller); once they
        are answered, the client gets the protocol's error and is closed."""
        log.info("client %s: %s", client.peer, exc)
        client.error = exc.reply
        client.paused = True
        self.refresh(client)
        self.settle(client, lambda: self._send_error_and_close(client))

    def _send_error_and_close(self, client: ClientConn) -> None:
        self.send(client, client.error or b"")
        self.close_after_output(client)

    def _client_eof(self, client: ClientConn) -> None:
        client.eof = True
        link = client.link
        self.refresh(client)
        if client.attached:
            self.driver.client_eof(client)
            return
        if link is None or not link.connected or (
                link.replies is not None and link.replies.streaming):
            self.close_client(client)  # (a stream's server would only see the end on a write)
            return
        # Pass the end of input on, as HAProxy does: the server answers what it read, then
        # closes, which also settles replies that may never come (memcached quiet requests).
        if link.replies is not None and not link.replies.pending:
            self.close_after_output(client)
            return
        self.shut_after_output(link)

    def resume(self, client: ClientConn) -> None:
        """A client the engine handed back goes on in SINGLE mode, with what it asked for while
        the engine drove it: a protocol error to answer, the end of its input, a drain."""
        if client.closed:
            return
        if client.error is not None:
            self.settle(client, lambda: self._send_error_and_close(client))
        elif client.eof:
            self._client_eof(client)
        elif client.draining:
            self.settle(client, lambda: self.close_after_output(client))

    def shut_after_output(self, link: ServerConn) -> None:
        link.shut = True
        if not link.out:
            self._shutdown_write(link)

    def _link_eof(self, link: ServerConn) -> None:
        """The server closed: answer what it still owed with errors, then close the client."""
        client = link.client
        replies = link.replies
        self.drop_link(link)
        if link.engine:
            self.driver.conn_closed(link)
            return
        if client is None or client.closed:
            return
        partial = replies is not None and replies.buffered
        if replies is not None and not partial:
            # The close may be the answer owed (memcached's shutdown): the reader says.
            if link.answering:
                self._answer(link, b"")
            else:
                with contextlib.suppress(ProtocolError):
                    replies.receive(b"")
        if client.eof or replies is None:
            # It followed the client's close, or its replies were not framed: then where the
            # stream stands is not known, and an error could land inside a reply half
            # forwarded (or complete an array with a bogus element). Only the close is sure.
            self.close_after_output(client)
            return
        # Each reply owed is answered with the protocol's error. A connection that owes none
        # is closed as the server's death would close it, except for FTP, whose 421 is meant
        # to be sent unasked: a Redis or memcached error nobody asked for would be read as the
        # reply to the client's next request, and fail it even after the server is back, where
        # a closed connection lets the client reconnect (and retry, if it does).
        owed = replies.pending
        if owed:
            log.warning("%s closed a connection owing %d replies (client %s)",
                        link.backend.name, owed, client.peer)
        # A server that said it would close (FTP's 221 to QUIT, or a 421) closes as announced.
        unasked = self._server_speaks_first and not replies.closing
        if (owed or unasked) and not partial:  # never mid-reply
            count = 1 if self._server_speaks_first else owed
            self.send(client, self.codec.error_reply(
                f"twinproxy: {link.backend.name} closed the connection") * count)
        self.close_after_output(client)

    def blocked(self, link: ServerConn, table: object = None) -> list[Request]:
        """The unanswered requests from the first blocking one on (they all wait for it).
        ``table``: the server's command table for ``Codec.describe`` (the update's, which has
        it already: the built-in one, built on first use, cost milliseconds at the barrier)."""
        describe = self.codec.describe
        inflight = list(link.inflight)
        for i, request in enumerate(inflight):
            if describe(request, table).blocking:
                return inflight[i:]
        return []
