"""The relay: listener, client connections, server connections; SINGLE mode's whole path.

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

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from twinproxy.protocols.base import ProtocolError, Request
from twinproxy.relay.connections import BUFSIZE, ClientConn, ServerConn, Socket
from twinproxy.relay.loop import Loop

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.config import Config
    from twinproxy.protocols.base import Codec
    from twinproxy.relay.driver import UpdateDriver

log = logging.getLogger("twinproxy.relay")

HOUSEKEEPING = 0.5  # seconds between checks of connect and idle timeouts
# A sentinel not answered in this long (a server stuck in a script, say) ends the connection.
SETTLE_TIMEOUT = 60.0
CAPACITY_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Relay(Loop):
    """The proxy's data path.

    Args:
        config: the loaded config (listen address, limits, timeouts).
        codec: the protocol's codec.
        backend: the version that serves.
    """

    def __init__(self, config: Config, codec: Codec, backend: Backend):
        super().__init__()
        self.config = config
        self.codec = codec
        self.backend = backend
        self.limits = config.limits
        p = config.proxy
        self.max_connections = p.max_connections
        self.connect_timeout = p.connect_timeout
        self.idle_timeout = p.idle_timeout
        self.listen_address = p.listen
        self.clients: set[ClientConn] = set()
        self.accepted = 0
        self.started_at = time.time()
        self.driver: UpdateDriver | None = None  # the update in progress
        self._listener: socket.socket | None = None
        self._draining = False
        self._drained = trio.Event()
        self._accept_paused_until = 0.0
        self._server_speaks_first = not codec.probe()
        backend.on_change = self._backend_changed

    # ---- life ------------------------------------------------------------------------------

    def bind(self) -> tuple[str, int]:
        """Open the listening socket; returns the address it listens on.

        Raises:
            OSError: the address is in use or cannot be bound; the message names it.
        """
        host, port = self.listen_address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.setblocking(False)
        self._listener = sock
        self._register_fd(sock.fileno(), self._accept)
        self.listen_address = sock.getsockname()[:2]
        return self.listen_address

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled; ``task_status.started`` gets the address listened on.

        Every socket is closed when this returns, however it ends.
        """
        if self._listener is None:
            self.bind()
        try:
            async with trio.open_nursery() as nursery:
                # Timeouts are checked by a task of their own, so that the loop needs no
                # cancel scope per wake-up.
                nursery.start_soon(self._housekeeper)
                await self._serve(task_status, self.listen_address)
        finally:
            self._close_all()

    async def _housekeeper(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING)
            self.now = time.monotonic()
            self._housekeeping(self.now)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let owed replies go out for up to ``timeout`` seconds, then close.

        New requests are no longer read: a client whose requests are all answered is closed at
        once, as a load balancer draining a server would do.
        """
        self._draining = True
        self._close_listener()
        for client in list(self.clients):
            client.draining = True
            self._update(client)
            if client.attached:
                self.driver.client_eof(client)
            else:
                self._settle(client, lambda c=client: self._close_after_output(c))
        if self.clients:
            log.info("draining %d connections (up to %.1fs)", len(self.clients), timeout)
            with trio.move_on_after(timeout):
                await self._drained.wait()
        if self.clients:
            log.warning("closing %d connections still waiting for replies", len(self.clients))
        self._close_all()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._unregister_fd(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _close_all(self) -> None:
        for client in list(self.clients):
            self._close_client(client)
        for side in list(self._by_id.values()):
            if type(side) is ServerConn:
                self._drop_link(side)
        self._close_listener()

    def _batch_started(self) -> None:
        if self.driver is not None:
            self.driver.tick(self.now)

    def _batch_done(self) -> None:
        if self.driver is not None:
            self.driver.flush()

    # ---- accepting -------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        now = time.monotonic()
        if listener is None or now < self._accept_paused_until:
            return
        for _ in range(256):
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in CAPACITY_ERRORS:
                    # Like trio's serve_listeners: out of descriptors or memory is worth a
                    # log line and a pause, not a crash.
                    log.error("accept failed (%s): pausing accepts for 100 ms", exc.strerror)
                    self._accept_paused_until = now + 0.1
                return
            self.accepted += 1
            sock.setblocking(False)
            if len(self.clients) >= self.max_connections:
                with contextlib.suppress(OSError):
                    sock.send(self.codec.error_reply("max number of clients reached"))
                sock.close()
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = ClientConn(sock, self.codec.request_reader(self.limits),
                                f"{addr[0]}:{addr[1]}")
            client.last_active = now
            client.paused = True  # until its server connection is up
            self.clients.add(client)
            self._register(client)
            self._connect(client)

    # ---- server connections ----------------------------------------------------------------

    def _connect(self, client: ClientConn) -> None:
        """Open the client's server connection (non-blocking; finished in ``_connected``)."""
        backend = self.backend
        if not backend.up or backend.address is None:
            self._server_unavailable(client)
            return
        client.forwarded = False
        framed = not backend.sentinel_ok or self.driver is not None
        link = self.open_link(client, backend, framed=framed)
        if link is None:
            self._connect_failed(client, backend, "refused")
            return
        client.link = link
        if self.driver is not None:
            self.driver.attach_new(client)

    def open_link(self, client: ClientConn | None, backend: Backend, *, framed: bool,
                  conn_id: int | None = None, role: int = 0) -> ServerConn | None:
        """A non-blocking connection to ``backend`` for ``client`` (None: an update's shared
        connection); None when it fails at once. Its replies are left unframed unless
        ``framed`` (see the module docstring)."""
        if backend.address is None:
            return None
        host, port = backend.address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = self.codec.reply_reader(self.limits) if framed else None
        link = ServerConn(sock, client, backend, replies, conn_id, role)
        link.deadline = time.monotonic() + self.connect_timeout
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return None
        self._register(link)
        self._update(link)
        return link

    def _connected(self, link: ServerConn) -> None:
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        client = link.client
        if code:
            self._drop_link(link)
            reason = errno.errorcode.get(code, str(code))
            if link.engine:
                self.driver.connect_failed(link, reason)
                if client is None or link.role:
                    return
                if not link.backend.version.managed:
                    link.backend.mark_down()
                return
            self._connect_failed(client, link.backend, reason)
            return
        link.connected = True
        self._update(link)
        if client is not None and link.role == 0 and client.link is link:
            client.paused = False
            client.down = None
            self._update(client)
        if link.engine:
            self.driver.connected(link)

    def _connect_failed(self, client: ClientConn, backend: Backend, reason: str) -> None:
        if not backend.version.managed:
            backend.mark_down()
        log.warning("cannot connect to %s at %s: %s", backend.name, backend.address, reason)
        self._server_unavailable(client)

    def _server_unavailable(self, client: ClientConn) -> None:
        """No server for this client: answer each request with an error until one is back."""
        if self._server_speaks_first:
            # FTP-like: the client waits for a greeting; 421 is the greeting that says "go".
            self._send(client, self.codec.error_reply(self._unavailable_text()))
            self._close_after_output(client)
            return
        client.link = None
        client.down = self.codec.reply_reader(self.limits)
        client.paused = False
        self._update(client)

    def _unavailable_text(self) -> str:
        return f"twinproxy: {self.backend.name} is unavailable, try again later"

    def _backend_changed(self, backend: Backend) -> None:
        if backend is not self.backend:
            return
        if self.driver is not None and not backend.up:
            self.driver.leader_down()  # during an update the follower may take over
            return
        if backend.up:
            log.info("%s serves at %s:%d", backend.name, *backend.address)
            for client in list(self.clients):
                if client.down is not None and not client.closed:
                    self._connect(client)
        elif backend.stopping:
            log.info("%s stopped", backend.name)  # ordered by twinproxy: not a failure
        else:
            log.warning("%s is down", backend.name)

    def serve_from(self, backend: Backend) -> None:
        """From now on new clients go to ``backend`` (after a cutover)."""
        self.backend.on_change = lambda b: None
        self.backend = backend
        backend.on_change = self._backend_changed

    # ---- the relay -------------------------------------------------------------------------

    def _client_readable(self, client: ClientConn) -> None:
        try:
            data = client.sock.recv(BUFSIZE)
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
                    self._send(link, data if used == len(data) else data[:used])
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
            self._forward(client, requests)
        if error is not None:
            self._client_protocol_error(client, error)

    def _forward(self, client: ClientConn, requests: list[Request], noted: bool = False) -> None:
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
                    self._send(link, b"".join(out))
                client.held = requests[i:]
                client.paused = True
                self._update(client)
                self._settle(client, lambda: self._frame_replies(client))
                return
            if replies is not None:
                replies.expect(request)
                link.inflight.append(request)
            out.append(request.raw)
        if out:
            client.forwarded = True
            client.blocking = bool(requests[-1].blocking)
            self._send(link, out[0] if len(out) == 1 else b"".join(out))

    def _frame_replies(self, client: ClientConn) -> None:
        """From a reply boundary on, frame this connection's replies (never undone)."""
        link = client.link
        if link is None or client.closed:
            return
        link.replies = self.codec.reply_reader(self.limits)
        link.inflight.clear()
        held, client.held = client.held, []
        client.paused = False
        self._update(client)
        self._forward(client, held, noted=True)

    def _server_readable(self, link: ServerConn) -> None:
        try:
            data = link.sock.recv(BUFSIZE)
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
            self._send(client, data)
            return
        self._send(client, data)
        try:
            replies.receive(data)
        except ProtocolError as exc:
            log.error("%s sent malformed output (%s): closing client %s", link.backend.name,
                      exc, client.peer)
            self._drop_link(link)
            self._close_client(client)
            return
        inflight = link.inflight
        while len(inflight) > replies.pending:
            inflight.popleft()
        if client.waiters:
            self._settled(client)

    def _strip_sentinel(self, link: ServerConn, data: bytes) -> bytes:
        """Forward what precedes the awaited sentinel reply; hold back what may begin it."""
        data = link.carry + data if link.carry else data
        sentinel = link.sentinel
        if data.endswith(sentinel):
            link.sentinel = link.carry = b""
            client = link.client
            client.forwarded = False
            self._send(client, data[: -len(sentinel)])
            self._settled(client)
            return b""
        keep = len(sentinel) - 1
        link.carry = data[-keep:]
        return data[:-keep]

    def _settle(self, client: ClientConn, then: Callable[[], object]) -> None:
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
            self._send(link, request)

    def _settled(self, client: ClientConn) -> None:
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
            self._send(client, self.codec.error_reply(self._unavailable_text()) * owed)

    def _client_protocol_error(self, client: ClientConn, exc: ProtocolError) -> None:
        """The requests complete before the bad bytes are forwarded (by the caller); once they
        are answered, the client gets the protocol's error and is closed."""
        log.info("client %s: %s", client.peer, exc)
        client.error = exc.reply
        client.paused = True
        self._update(client)
        self._settle(client, lambda: self._send_error_and_close(client))

    def _send_error_and_close(self, client: ClientConn) -> None:
        self._send(client, client.error or b"")
        self._close_after_output(client)

    def _client_eof(self, client: ClientConn) -> None:
        client.eof = True
        link = client.link
        self._update(client)
        if client.attached:
            self.driver.client_eof(client)
            return
        if link is None or not link.connected or client.held:
            self._close_client(client)
            return
        # Pass the end of input on, as HAProxy does: the server answers what it read, then
        # closes, which also settles replies that may never come (memcached quiet requests).
        if link.replies is not None and not link.replies.pending:
            self._close_after_output(client)
            return
        self.shut_after_output(link)

    def resume(self, client: ClientConn) -> None:
        """A client the engine handed back goes on in SINGLE mode, with what it asked for while
        the engine drove it: a protocol error to answer, the end of its input, a drain."""
        if client.closed:
            return
        if client.error is not None:
            self._settle(client, lambda: self._send_error_and_close(client))
        elif client.eof:
            self._client_eof(client)
        elif client.draining:
            self._settle(client, lambda: self._close_after_output(client))

    def shut_after_output(self, link: ServerConn) -> None:
        link.shut = True
        if not link.out:
            self._shutdown_write(link)

    def _link_eof(self, link: ServerConn) -> None:
        """The server closed: answer what it still owed with errors, then close the client."""
        client = link.client
        replies = link.replies
        self._drop_link(link)
        if link.engine:
            self.driver.conn_closed(link)
            return
        if client is None or client.closed:
            return
        if client.eof or replies is None:
            # It followed the client's close, or its replies were not framed: then where the
            # stream stands is not known, and an error could land inside a reply half
            # forwarded (or complete an array with a bogus element). Only the close is sure.
            self._close_after_output(client)
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
            self._send(client, self.codec.error_reply(
                f"twinproxy: {link.backend.name} closed the connection") * count)
        self._close_after_output(client)

    def blocked(self, link: ServerConn) -> list[Request]:
        """The unanswered requests from the first blocking one on (they all wait for it)."""
        describe = self.codec.describe
        inflight = list(link.inflight)
        for i, request in enumerate(inflight):
            if describe(request).blocking:
                return inflight[i:]
        return []

    # ---- closing ---------------------------------------------------------------------------

    def _close_client(self, client: ClientConn) -> None:
        if client.closed:
            return
        self._close_socket(client)
        link = client.link
        if client.attached:
            # What it sent may still run in the leader: the engine waits for it (and closes
            # the leader connection then), so that the follower gets it too.
            client.attached = False
            self.driver.client_closed(client)
        elif link is not None and not link.engine:
            self._drop_link(link)
        self.clients.discard(client)
        if self._draining and not self.clients:
            self._drained.set()

    def _failed(self, side: Socket | Callable[[], None]) -> None:
        """A bug met while serving one connection ends that connection, not the proxy."""
        if type(side) is ServerConn and side.engine:
            log.exception("internal error serving a connection of the update")
            self.driver.internal_error()
            return
        client = side.client if type(side) is ServerConn else side
        if type(client) is ClientConn:
            log.exception("internal error serving %s: closing that connection", client.peer)
            self._close_client(client)
        else:
            log.exception("internal error in the relay")

    def _side_failed(self, side: Socket) -> None:
        if type(side) is ServerConn:
            self._link_eof(side)
        else:
            self._close_client(side)  # type: ignore[arg-type]

    def _housekeeping(self, now: float) -> None:
        driver = self.driver
        if driver is not None:
            driver.tick(now)
        idle = self.idle_timeout
        for side in list(self._by_id.values()):
            if type(side) is ServerConn and not side.connected and now > side.deadline \
                    and not side.closed:
                self._drop_link(side)
                if side.engine:
                    driver.connect_failed(side, "timed out")
                elif side.client is not None:
                    self._connect_failed(side.client, side.backend, "timed out")
        for client in list(self.clients):
            link = client.link
            if link is not None and link.sentinel and now > link.deadline:
                log.warning("client %s: %s did not answer the settle sentinel in %.0fs: closing",
                            client.peer, link.backend.name, SETTLE_TIMEOUT)
                self._close_client(client)
            elif idle and now - client.last_active > idle and not self._busy(client):
                log.info("closing client %s: idle for %.0fs", client.peer, idle)
                self._close_client(client)

    def _busy(self, client: ClientConn) -> bool:
        """Whether the client waits for a reply (an idle timeout does not apply)."""
        if client.attached:
            return self.driver.busy(client)
        link = client.link
        return client.blocking or (link is not None and link.replies is not None
                                   and bool(link.replies.pending))

