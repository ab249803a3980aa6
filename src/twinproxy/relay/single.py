"""SINGLE mode's whole path: what the relay does with every read, when one version serves.

What SINGLE mode does per read, and why no more:

* A client's bytes go through the protocol's request reader, and only complete requests are
  forwarded. So the server never holds half a request from the proxy, and the proxy can change
  what it does with a connection (start an update, answer an error, close) between any two reads.
  For ordinary requests the reader only counts (``RequestReader.count``), at C speed.
* A server's bytes are forwarded as they come. For a connection in the plain state (for Redis:
  RESP2, not subscribed, replies on) they are not even framed: when the proxy needs every owed
  reply delivered (a drain, a bad request, the start of an update) it sends the codec's
  *sentinel* (an ``ECHO`` of a random token) and waits for its reply, which it strips. A request
  that changes how replies are framed (HELLO, SUBSCRIBE, CLIENT REPLY ...) switches the
  connection to full reply framing first, at a reply boundary reached the same way. Codecs without
  a sentinel (memcached, FTP) frame replies from the start.

During an update the clients the engine drives (``attached``) and the server connections it owns
(``engine``) are served by :class:`~.driver.UpdateDriver`, which turns the engine's commands into
the operations below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twinproxy.protocols.messages import ProtocolError, Request
from twinproxy.relay.connections import ClientConn, ServerConn
from twinproxy.relay.loop import Loop

if TYPE_CHECKING:
    from twinproxy.protocols import Limits
    from twinproxy.protocols.base import Codec

log = logging.getLogger("twinproxy.relay")

# A sentinel not answered in this long (a server stuck in a script, say) ends the connection.
SETTLE_TIMEOUT = 60.0


class Updating(Protocol):
    """What the relay tells the update in progress (:class:`~.driver.UpdateDriver`) about
    the clients and server connections the update's engine drives."""

    def tick(self, now: float) -> None: ...
    def flush(self) -> None: ...
    def attach_new(self, client: ClientConn) -> None: ...
    def client_data(self, client: ClientConn, data: bytes) -> None: ...
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


class SingleMode(Loop):
    """What the relay does with each read (a part of :class:`~.relay.Relay`)."""

    codec: Codec
    limits: Limits
    driver: Updating | None
    _server_speaks_first: bool

    def _unavailable_text(self) -> str:
        raise NotImplementedError

    def _client_readable(self, client: ClientConn) -> None:
        try:
            data = self._view[:client.sock.recv_into(self._buffer)].tobytes()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._client_eof(client)
            return
        self.client_received += len(data)
        client.last_active = self.now
        reader = client.reader
        link = client.link
        if link is not None and link.replies is None:
            # The hot path: ordinary requests only counted, forwarded as they came.
            used = reader.count(data)
            if used is not None:
                if used:
                    client.forwarded = True
                    client.blocking = False
                    self.send(link, data if used == len(data) else data[:used])
                return
        if client.attached:
            self.driver.client_data(client, data)
            return
        error = None
        try:
            requests = reader.receive(data)
        except ProtocolError as exc:
            requests, error = exc.messages, exc
        if link is None:
            self._answer_unavailable(client, requests)
        else:
            self.forward(client, requests)
        if error is not None:
            self._client_protocol_error(client, error)

    def forward(self, client: ClientConn, requests: list[Request], noted: bool = False) -> None:
        """Send framed requests to the client's server, switching to full reply framing first
        if one of them needs it. ``noted``: their sessions were recorded already."""
        link = client.link
        assert link is not None
        replies = link.replies
        plain = self.codec.plain
        out = []
        for i, request in enumerate(requests):
            if request.session and not noted:
                self.note_session(client, request)
            if replies is None and not plain(request):
                if out:
                    client.forwarded = True
                    self.send(link, b"".join(out))
                client.held = requests[i:]
                client.paused = True
                self.refresh(client)
                self.settle(client, lambda: self._frame_replies(client))
                return
            if replies is not None:
                replies.expect(request)
                link.inflight.append(request)
            out.append(request.raw)
        if out:
            client.forwarded = True
            client.blocking = bool(requests[-1].blocking)
            self.send(link, out[0] if len(out) == 1 else b"".join(out))

    def _frame_replies(self, client: ClientConn) -> None:
        """From a reply boundary on, frame this connection's replies (never undone)."""
        link = client.link
        if link is None or client.closed:
            return
        link.replies = self.codec.reply_reader(self.limits)
        link.inflight.clear()
        held, client.held = client.held, []
        client.paused = False
        self.refresh(client)
        self.forward(client, held, noted=True)

    def _server_readable(self, link: ServerConn) -> None:
        try:
            data = self._view[:link.sock.recv_into(self._buffer)].tobytes()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._link_eof(link)
            return
        self.server_received[link.role] += len(data)
        if link.engine:
            self.driver.data(link, data)
            return
        client = link.client
        replies = link.replies
        if replies is None:
            if link.sentinel:
                data = self._strip_sentinel(link, data)
            self.send(client, data)
            return
        self.send(client, data)
        try:
            replies.receive(data)
        except ProtocolError as exc:
            log.error("%s sent malformed output (%s): closing client %s", link.backend.name,
                      exc, client.peer)
            self.drop_link(link)
            self.close_client(client)
            return
        inflight = link.inflight
        while len(inflight) > replies.pending:
            inflight.popleft()
        if client.waiters:
            self.settled(client)

    def _strip_sentinel(self, link: ServerConn, data: bytes) -> bytes:
        """Forward what precedes the awaited sentinel reply; hold back what may begin it."""
        data = link.carry + data if link.carry else data
        sentinel = link.sentinel
        if data.endswith(sentinel):
            link.sentinel = link.carry = b""
            client = link.client
            client.forwarded = False
            self.send(client, data[: -len(sentinel)])
            self.settled(client)
            return b""
        keep = len(sentinel) - 1
        link.carry = data[-keep:]
        return data[:-keep]

    def settle(self, client: ClientConn, then: Callable[[], object]) -> None:
        """Call ``then`` once every reply owed for what was forwarded has gone to the client."""
        link = client.link
        if link is None or not link.connected:
            then()
            return
        if link.replies is not None:
            def done() -> bool:
                if link.replies is not None and link.replies.pending:
                    return False
                then()
                return True

            if not done():
                client.waiters.append(done)
            return
        if not client.forwarded:
            then()
            return

        def answered() -> bool:
            then()
            return True

        client.waiters.append(answered)
        if not link.sentinel:
            request, link.sentinel = self.codec.sentinel()
            link.deadline = self.now + SETTLE_TIMEOUT
            self.send(link, request)

    def settled(self, client: ClientConn) -> None:
        """Give each waiter its look at the replies that came; keep those still waiting."""
        waiters, client.waiters = client.waiters, []
        for waiter in waiters:
            if not client.closed and not waiter():
                client.waiters.append(waiter)

    def note_session(self, client: ClientConn, request: Request) -> None:
        """Keep the session a client built, to replay it on a new version's connection."""
        session = client.session
        session.append(request)
        if len(session) > 64:
            session[:] = self.codec.compact_session(session)

    def _answer_unavailable(self, client: ClientConn, requests: list[Request]) -> None:
        down = client.down
        if down is None:
            return
        owed = down.pending
        for request in requests:
            down.expect(request)
        owed = down.pending - owed
        if owed:
            self.send(client, self.codec.error_reply(self._unavailable_text()) * owed)

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
        if link is None or not link.connected or client.held:
            self.close_client(client)
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
        if (owed or self._server_speaks_first) and not replies.buffered:  # never mid-reply
            count = 1 if self._server_speaks_first else owed
            self.send(client, self.codec.error_reply(
                f"twinproxy: {link.backend.name} closed the connection") * count)
        self.close_after_output(client)

    def blocked(self, link: ServerConn) -> list[Request]:
        """The unanswered requests from the first blocking one on (they all wait for it)."""
        describe = self.codec.describe
        inflight = list(link.inflight)
        for i, request in enumerate(inflight):
            if describe(request).blocking:
                return inflight[i:]
        return []
