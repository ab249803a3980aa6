"""The proxy's dispatch loop: listener, client connections, server connections.

How this works. One trio task (:meth:`Proxy.run`) owns an epoll set that holds the listener and
every client and server socket, all non-blocking. It waits until the epoll fd is readable
(``trio.lowlevel.wait_readable``), then services the ready sockets in the order the kernel reports
them. Two things follow from that, and both are why the loop is built this way instead of as one
task per direction per connection:

* Requests are forwarded in arrival order. Trio may run the tasks it wakes together in reverse
  order, which would let one client's request overtake another's sent just before it.
* One scheduler round trip serves every ready socket, instead of one per message.

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

Output that a peer does not take at once waits in the side's ``out`` queue, and the side that
produces it stops being read past ``HIGH_WATER`` bytes, until the queue drains below ``LOW_WATER``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from twinproxy.protocols.base import ProtocolError, Request

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.config import Config
    from twinproxy.mve import Mve, Twin
    from twinproxy.protocols import Codec, ReplyReader, RequestReader

log = logging.getLogger("twinproxy.proxy")

BUFSIZE = 256 * 1024
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
HOUSEKEEPING = 0.5  # seconds between checks of connect and idle timeouts
BATCHES_PER_WAKEUP = 8
BUSY_BATCH = 8  # a batch this large says more work is likely waiting: poll again at once
# A sentinel not answered in this long (a server stuck in a script, say) ends the connection.
SETTLE_TIMEOUT = 60.0

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
CAPACITY_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Side:
    """One socket of the proxy, with what waits to be written to it."""

    __slots__ = ("closed", "closing", "fd", "mask", "out", "out_size", "paused", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.out: deque[memoryview | bytes] = deque()
        self.out_size = 0
        self.mask = 0
        self.paused = False  # not read, because what it sends cannot be delivered yet
        self.closing = False  # close once ``out`` is written
        self.closed = False


class Link(Side):
    """A server connection, owned by one client connection.

    ``replies`` is the reply reader, or None while the connection's replies are not framed
    (SINGLE mode, plain state); then ``sentinel`` is the sentinel reply awaited, if any, and
    ``carry`` the bytes held back because they may be the start of it.
    """

    __slots__ = ("backend", "carry", "client", "connected", "deadline", "follower", "inflight",
                 "intercept", "replies", "sentinel", "shared", "shut")

    def __init__(self, sock: socket.socket, client: Client | None, backend: Backend,
                 replies: ReplyReader | None):
        super().__init__(sock)
        self.client = client
        self.backend = backend
        self.replies = replies
        self.connected = False
        self.deadline = 0.0
        self.sentinel = b""
        self.carry = b""
        self.shut = False  # the client closed its side: pass that on once ``out`` is written
        self.follower = False  # the follower's connection during an update (never answers)
        self.intercept = False  # during an update: the engine forwards replies one by one
        self.shared = False  # an update's shared connection (client is None; see twinproxy.mve)
        self.inflight: deque[Request] = deque()  # SINGLE, framed replies: requests unanswered


class Client(Side):
    """A client connection and everything the proxy knows about it."""

    __slots__ = ("blocking", "down", "draining", "eof", "error", "forwarded", "held",
                 "last_active", "link", "peer", "reader", "session", "twin", "waiters")

    def __init__(self, sock: socket.socket, reader: RequestReader, peer: str):
        super().__init__(sock)
        self.reader = reader
        self.peer = peer
        self.link: Link | None = None
        self.session: list[Request] = []  # session-changing requests, for a later replay
        self.down: ReplyReader | None = None  # set while its server is unavailable
        self.forwarded = False  # requests went out since replies were last known settled
        self.held: list[Request] = []  # framed, waiting until replies settle
        # Called after the replies that come (each returns True when it is done waiting).
        self.waiters: list[Callable[[], bool]] = []
        self.twin: Twin | None = None  # its state in an update (twinproxy.mve)
        self.blocking = False  # the last request may wait for another client (BLPOP ...)
        self.eof = False  # the client closed its side
        self.error: bytes | None = None  # a protocol error to send, then close
        self.draining = False
        self.last_active = 0.0


class Proxy:
    """The dispatch loop and the connections it relays.

    Args:
        config: the loaded config (listen address, limits, timeouts).
        codec: the protocol's codec.
        backend: the version that serves.
    """

    def __init__(self, config: Config, codec: Codec, backend: Backend):
        self.config = config
        self.codec = codec
        self.backend = backend
        self.limits = config.limits
        p = config.proxy
        self.max_connections = p.max_connections
        self.connect_timeout = p.connect_timeout
        self.idle_timeout = p.idle_timeout
        self.listen_address = p.listen
        self.clients: set[Client] = set()
        self.accepted = 0
        # Bytes for the metrics, one addition per read or send: clients', and the servers' by
        # role (index 0 the leader, 1 the follower).
        self.client_received = 0
        self.client_sent = 0
        self.server_received = [0, 0]
        self.server_sent = [0, 0]
        self.started_at = time.time()
        self.now = time.monotonic()  # the loop's clock, read once per wake-up
        self._fds: dict[int, Side | Callable[[], None]] = {}
        self._ep = select.epoll()
        self._listener: socket.socket | None = None
        self._draining = False
        self._drained = trio.Event()
        self._accept_paused_until = 0.0
        self._server_speaks_first = not codec.probe()
        self.mve: Mve | None = None  # the engine of the update in progress
        # Codec hooks for unframed replies in SINGLE mode (see the module docstring); used only
        # on a backend where the sentinel was seen to work (Backend.sentinel_ok).
        self._sentinel = codec.sentinel
        self._plain = codec.plain
        backend.on_change = self._backend_changed

    # ---- lifecycle -------------------------------------------------------------------------

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
        self._fds[sock.fileno()] = self._accept
        self._ep.register(sock.fileno(), EPOLLIN)
        self.listen_address = sock.getsockname()[:2]
        return self.listen_address

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled; ``task_status.started`` gets the address listened on.

        Every socket is closed when this returns, however it ends.
        """
        if self._listener is None:
            self.bind()
        fds = self._fds
        poll = self._ep.poll
        epfd = self._ep.fileno()
        wait_readable = trio.lowlevel.wait_readable
        monotonic = time.monotonic
        try:
            async with trio.open_nursery() as nursery:
                # Timeouts are checked by a task of their own, so that the loop below needs no
                # cancel scope per wake-up.
                nursery.start_soon(self._housekeeper)
                task_status.started(self.listen_address)
                while True:
                    await wait_readable(epfd)
                    # While the sockets keep having work (the last batch was large), serve a few
                    # more batches before going back through trio's scheduler, whose round trip
                    # costs as much as a batch; the bound keeps the other tasks served.
                    for _ in range(BATCHES_PER_WAKEUP):
                        ready = poll(0, 1024)
                        if not ready:
                            break
                        self.now = monotonic()
                        for fd, events in ready:
                            side = fds.get(fd)
                            if side is None:
                                continue
                            try:
                                kind = type(side)
                                if kind is Link:
                                    if events & EPOLLOUT:
                                        self._writable(side)
                                    if events & ~EPOLLOUT and not side.closed:
                                        self._link_readable(side)
                                elif kind is Client:
                                    if events & EPOLLOUT:
                                        self._writable(side)
                                    if events & ~EPOLLOUT and not side.closed:
                                        self._client_readable(side)
                                else:
                                    side()
                            except Exception:
                                self._failed(side)
                        if self.mve is not None:
                            self.mve.flush()
                        if len(ready) < BUSY_BATCH:
                            break
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
        if self._listener is not None:
            self._unregister_fd(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for client in list(self.clients):
            client.draining = True
            self._update(client)
            self._settle(client, lambda c=client: self._close_after_output(c))
        if self.clients:
            log.info("draining %d connections (up to %.1fs)", len(self.clients), timeout)
            with trio.move_on_after(timeout):
                await self._drained.wait()
        if self.clients:
            log.warning("closing %d connections still waiting for replies", len(self.clients))
        self._close_all()

    def _close_all(self) -> None:
        for client in list(self.clients):
            self._close_client(client)
        if self._listener is not None:
            self._unregister_fd(self._listener.fileno())
            self._listener.close()
            self._listener = None

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
            client = Client(sock, self.codec.request_reader(self.limits), f"{addr[0]}:{addr[1]}")
            client.last_active = now
            client.paused = True  # until its server connection is up
            self.clients.add(client)
            self._register(client)
            self._connect(client)

    # ---- server connections ----------------------------------------------------------------

    def _connect(self, client: Client) -> None:
        """Open the client's server connection (non-blocking; finished in ``_connected``)."""
        backend = self.backend
        if not backend.up or backend.address is None:
            self._server_unavailable(client)
            return
        client.forwarded = False
        link = self._open_link(client, backend)
        if link is None:
            self._connect_failed(client, backend, "refused")
            return
        client.link = link
        if self.mve is not None:
            self.mve.new_client(client)

    def _open_link(self, client: Client | None, backend: Backend, follower: bool = False,
                   shared: bool = False) -> Link | None:
        """A non-blocking connection to ``backend`` for ``client`` (None: an update's shared
        connection); None when it fails at once.

        A follower's connection always frames its replies; a leader's is left unframed when the
        backend answers the sentinel (see the module docstring).
        """
        if backend.address is None:
            return None
        host, port = backend.address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lazy = backend.sentinel_ok and not (follower or shared) and self.mve is None
        link = Link(sock, client, backend, None if lazy else self.codec.reply_reader(self.limits))
        link.follower = follower
        link.shared = shared
        link.deadline = time.monotonic() + self.connect_timeout
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return None
        self._register(link)
        self._update(link)
        return link

    def _connected(self, link: Link) -> None:
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        client = link.client
        if link.shared:
            if code:
                self._drop_link(link)
                if self.mve is not None:
                    self.mve.fail(f"cannot connect to {link.backend.name}: "
                                  f"{errno.errorcode.get(code, str(code))}")
                return
            link.connected = True
            self._update(link)
            if self.mve is not None:
                self.mve.shared_connected(link)
            return
        if code:
            self._drop_link(link)
            reason = errno.errorcode.get(code, str(code))
            if link.follower:
                if self.mve is not None:
                    self.mve.fail(f"cannot connect to the follower {link.backend.name}: {reason}")
                return
            self._connect_failed(client, link.backend, reason)
            return
        link.connected = True
        self._update(link)
        if link.follower:
            if self.mve is not None:
                self.mve.follower_connected(link)
            return
        client.paused = False
        client.down = None
        self._update(client)
        if client.twin is not None and self.mve is not None:
            self.mve._dispatch_leader(client.twin)

    def _connect_failed(self, client: Client, backend: Backend, reason: str) -> None:
        if not backend.version.managed:
            backend.mark_down()
        log.warning("cannot connect to %s at %s: %s", backend.name, backend.address, reason)
        self._server_unavailable(client)

    def _server_unavailable(self, client: Client) -> None:
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
        if self.mve is not None and not backend.up:
            self.mve.on_leader_lost()  # during an update the follower may take over
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

    # ---- the relay -------------------------------------------------------------------------

    def _client_readable(self, client: Client) -> None:
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
        if client.twin is not None and self.mve.run_ok(client):  # type: ignore[union-attr]
            # During an update, a read of ordinary requests travels as a run (twinproxy.mve).
            got = reader.count_run(data)
            if got is not None:
                used, count = got
                self.mve.run(client, data if used == len(data) else data[:used], count)
                return
        error = None
        try:
            requests = reader.receive(data)
        except ProtocolError as exc:
            requests, error = exc.messages, exc
        if client.twin is not None:
            self.mve.requests(client, requests)  # type: ignore[union-attr]
        elif link is None:
            self._answer_unavailable(client, requests)
        else:
            self._forward(client, requests)
        if error is not None:
            self._client_protocol_error(client, error)

    def _forward(self, client: Client, requests: list[Request]) -> None:
        """Send framed requests to the client's server, switching to full reply framing first
        if one of them needs it."""
        link = client.link
        assert link is not None
        replies = link.replies
        plain = self._plain
        out = []
        for i, request in enumerate(requests):
            if request.session:
                self._note_session(client, request)
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

    def _frame_replies(self, client: Client) -> None:
        """From a reply boundary on, frame this connection's replies (never undone)."""
        link = client.link
        if link is None or client.closed:
            return
        link.replies = self.codec.reply_reader(self.limits)
        link.inflight.clear()
        held, client.held = client.held, []
        client.paused = False
        self._update(client)
        self._forward(client, held)

    def _link_readable(self, link: Link) -> None:
        try:
            data = link.sock.recv(BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._link_eof(link)
            return
        self.server_received[link.follower] += len(data)
        if link.shared:
            self.mve.shared_data(link, data)  # type: ignore[union-attr]
            return
        client = link.client
        replies = link.replies
        if replies is None:
            if link.sentinel:
                data = self._strip_sentinel(link, data)
            self._send(client, data)
            return
        if link.follower:
            self.mve.follower_data(link, data)  # type: ignore[union-attr]
            return
        intercept = link.intercept
        if not intercept:
            self._send(client, data)
        try:
            got = replies.receive(data)
        except ProtocolError as exc:
            log.error("%s sent malformed output (%s): closing client %s", link.backend.name,
                      exc, client.peer)
            self._close_client(client)
            return
        if client.twin is not None:
            self.mve.leader_replies(client, got, intercept)  # type: ignore[union-attr]
        else:
            inflight = link.inflight
            while len(inflight) > replies.pending:
                inflight.popleft()
        if client.waiters:
            self._settled(client)

    def _strip_sentinel(self, link: Link, data: bytes) -> bytes:
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

    def _settle(self, client: Client, then: Callable[[], None]) -> None:
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
            request, link.sentinel = self._sentinel()
            link.deadline = self.now + SETTLE_TIMEOUT
            self._send(link, request)

    def _settled(self, client: Client) -> None:
        """Give each waiter its look at the replies that came; keep those still waiting."""
        waiters, client.waiters = client.waiters, []
        for waiter in waiters:
            if not client.closed and not waiter():
                client.waiters.append(waiter)

    def _note_session(self, client: Client, request: Request) -> None:
        """Keep the session a client built, to replay it on a new version's connection."""
        session = client.session
        session.append(request)
        if len(session) > 64:
            session[:] = self.codec.compact_session(session)

    def _answer_unavailable(self, client: Client, requests: list[Request]) -> None:
        down = client.down
        if down is None:
            return
        owed = down.pending
        for request in requests:
            down.expect(request)
        owed = down.pending - owed
        if owed:
            self._send(client, self.codec.error_reply(self._unavailable_text()) * owed)

    def _client_protocol_error(self, client: Client, exc: ProtocolError) -> None:
        """The requests complete before the bad bytes are forwarded (by the caller); once they
        are answered, the client gets the protocol's error and is closed."""
        log.info("client %s: %s", client.peer, exc)
        client.error = exc.reply
        client.paused = True
        self._update(client)
        self._settle(client, lambda: self._send_error_and_close(client))

    def _send_error_and_close(self, client: Client) -> None:
        self._send(client, client.error or b"")
        self._close_after_output(client)

    def _client_eof(self, client: Client) -> None:
        client.eof = True
        link = client.link
        self._update(client)
        if link is None or not link.connected or client.held:
            self._close_client(client)
            return
        # Pass the end of input on, as HAProxy does: the server answers what it read, then
        # closes, which also settles replies that may never come (memcached quiet requests).
        if link.replies is not None and not link.replies.pending:
            self._close_after_output(client)
            return
        link.shut = True
        if not link.out:
            self._shutdown_write(link)

    def _shutdown_write(self, link: Link) -> None:
        with contextlib.suppress(OSError):
            link.sock.shutdown(socket.SHUT_WR)

    def _link_eof(self, link: Link) -> None:
        """The server closed: answer what it still owed with errors, then close the client."""
        client = link.client
        replies = link.replies
        if link.shared:
            self._drop_link(link)
            if self.mve is not None:
                if link.follower:
                    self.mve.follower_lost(link)
                else:
                    self.mve.on_leader_lost()
            return
        if link.follower:
            self._drop_link(link)
            if self.mve is not None:
                self.mve.follower_lost(link)
            return
        if client.twin is not None and self.mve is not None and not client.closed:
            partial = bool(replies is not None and replies.buffered)
            self._drop_link(link)
            self.mve.leader_lost(client, partial)
            return
        self._drop_link(link)
        if client.closed:
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

    # ---- updates: the I/O side of what twinproxy.mve and twinproxy.lifecycle decide ----------

    def begin_update(self, engine: Mve) -> trio.Event:
        """Hand every client to ``engine`` at a reply boundary: the sync point's barrier.

        Each client stops being read while it waits; one whose owed replies are all out (or
        whose only unanswered requests wait behind a blocking command) is attached at once.
        Returns an event set once every client is attached; the engine holds their requests.
        """
        self.mve = engine
        attached = trio.Event()
        waiting: set[Client] = set(self.clients)

        def done(client: Client) -> None:
            waiting.discard(client)
            if not waiting:
                attached.set()

        for client in list(waiting):
            self._attach(client, done)
        if not waiting:
            attached.set()
        return attached

    def _attach(self, client: Client, done: Callable[[Client], None]) -> None:
        link = client.link
        if client.closed:
            done(client)
            return
        if link is None:  # its server was unavailable: it has no session anywhere
            self._close_client(client)
            done(client)
            return
        if not link.connected:  # nothing was forwarded yet
            if link.replies is None:
                link.replies = self.codec.reply_reader(self.limits)
            self.mve.attach(client)  # type: ignore[union-attr]
            done(client)
            return
        client.paused = True
        self._update(client)
        engine = self.mve

        def ready() -> bool:
            if client.closed or self.mve is not engine:  # gone, or the update was abandoned
                if not client.closed:
                    client.paused = False
                    self._update(client)
                done(client)
                return True
            replies = link.replies
            blocked: list[Request] = []
            if replies is not None and replies.pending:
                blocked = self._blocked(link)
                if len(blocked) != replies.pending:
                    return False
            if link.replies is None:
                link.replies = self.codec.reply_reader(self.limits)
            link.inflight.clear()
            self.mve.attach(client, blocked)  # type: ignore[union-attr]
            client.paused = False
            self._update(client)
            done(client)
            return True

        if link.replies is None:
            self._settle(client, ready)
        elif not ready():
            client.waiters.append(ready)

    def _blocked(self, link: Link) -> list[Request]:
        """The unanswered requests from the first blocking one on (they all wait for it)."""
        describe = self.codec.describe
        inflight = list(link.inflight)
        for i, request in enumerate(inflight):
            if describe(request).blocking:
                return inflight[i:]
        return []

    def end_update(self, new: Backend | None) -> None:
        """Leave MVE: every client goes back to SINGLE mode on ``new`` (the new version after a
        cutover) or on the version that served all along (``None``: a rollback).

        What waited in the engine for its turn is sent on, in order: with one version there is
        no order to keep between clients.
        """
        engine = self.mve
        assert engine is not None
        engine.close_shared()
        self.mve = None
        for client in list(self.clients):
            if client.twin is None and client.paused and client.link is not None \
                    and client.link.connected and not client.held and not client.link.sentinel:
                # Still waiting to be attached when the update was abandoned.
                client.paused = False
                self._settled(client)
                self._update(client)
        for twin in list(engine.twins.values()):
            client = twin.client
            follower = twin.follower
            if new is not None and follower is not None and twin.joined and not client.closed:
                if client.link is not None:
                    self._drop_link(client.link)
                client.link, follower.follower = follower, False
                twin.follower = None
            else:
                if follower is not None:
                    self._drop_link(follower)
                if new is not None and not client.closed:
                    # Never paired with the new version (its follower connection failed):
                    # it cannot go on there, so it is closed, as a restart would.
                    log.warning("closing client %s: it has no session on %s", client.peer,
                                new.name)
                    client.twin = None
                    self._close_client(client)
            client.twin = None
            link = client.link
            if client.closed or link is None:
                continue
            link.inflight = deque(e.request for e in twin.lflight)
            held = [e.request for e in twin.queue]
            if new is not None and not twin.lflight and new.sentinel_ok and \
                    self.codec.plain_state(link.replies):
                link.replies = None  # plain again: back to the fast path
                client.forwarded = False
            if held:
                self._forward(client, held)
        if new is not None:
            self.backend.on_change = lambda backend: None
            self.backend = new
            new.on_change = self._backend_changed

    # ---- output and flow control -----------------------------------------------------------

    def _send(self, side: Side, data: bytes | memoryview) -> None:
        if side.closed or not data:
            return
        if type(side) is Client:
            self.client_sent += len(data)
        else:
            self.server_sent[side.follower] += len(data)  # type: ignore[attr-defined]
        if not side.out:
            try:
                sent = side.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._side_failed(side)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        side.out.append(data)
        side.out_size += len(data)
        if not side.mask & EPOLLOUT:
            self._update(side)
        if side.out_size > HIGH_WATER:
            producer = self._producer(side)
            if producer is not None and not producer.paused:
                producer.paused = True
                self._update(producer)

    def _writable(self, side: Side) -> None:
        if type(side) is Link and not side.connected:
            self._connected(side)
            return
        out = side.out
        sock = side.sock
        while out:
            chunk = out[0]
            try:
                sent = sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._side_failed(side)
                return
            side.out_size -= sent
            if sent == len(chunk):
                out.popleft()
            else:
                out[0] = memoryview(chunk)[sent:]
                break
        if side.out_size < LOW_WATER:
            producer = self._producer(side)
            if producer is not None and producer.paused and not (
                    type(producer) is Client and producer.held):
                producer.paused = False
                self._update(producer)
        if not out:
            if side.closing:
                self._close_client(side)  # type: ignore[arg-type]
                return
            self._update(side)
            if type(side) is Link and side.shut:
                self._shutdown_write(side)

    def _producer(self, side: Side) -> Side | None:
        """The side whose reads fill ``side``'s output: what to pause when it backs up.

        Never a client for a follower's connection: a client must not wait on the follower
        (its backlog has bounds of its own, past which the update rolls back)."""
        if type(side) is Link:
            if side.follower or side.shared or not side.connected:
                return None
            return side.client
        link = side.link  # type: ignore[attr-defined]
        return link if link is not None and link.connected else None

    def _update(self, side: Side) -> None:
        """Set the epoll mask to what the side needs now."""
        if side.closed:
            return
        if type(side) is Client:
            reading = not (side.paused or side.eof or side.draining or side.closing
                           or side.error is not None)
            mask = (EPOLLIN if reading else 0) | (EPOLLOUT if side.out else 0)
        elif side.connected:
            mask = (0 if side.paused else EPOLLIN) | (EPOLLOUT if side.out else 0)
        else:
            mask = EPOLLOUT  # connecting
        if mask != side.mask:
            side.mask = mask
            self._ep.modify(side.fd, mask)

    # ---- closing ---------------------------------------------------------------------------

    def _register(self, side: Side) -> None:
        self._fds[side.fd] = side
        self._ep.register(side.fd, 0)
        side.mask = 0

    def _unregister_fd(self, fd: int) -> None:
        self._fds.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(fd)

    def _close_after_output(self, client: Client) -> None:
        if client.out:
            client.closing = True
            self._update(client)
        else:
            self._close_client(client)

    def _drop_link(self, link: Link) -> None:
        if link.closed:
            return
        link.closed = True
        self._unregister_fd(link.fd)
        link.sock.close()
        client = link.client
        if client is None:
            return
        if client.link is link:
            client.link = None
        twin = client.twin
        if twin is not None and twin.follower is link:
            twin.follower = None

    def _close_client(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        keep = False
        if client.twin is not None and self.mve is not None:
            # What it sent may still run in the leader: the engine waits for it (and closes
            # the leader connection then), so that the follower gets it too.
            keep = self.mve.client_closed(client)
        if client.link is not None and not keep:
            self._drop_link(client.link)
        self._unregister_fd(client.fd)
        client.sock.close()
        self.clients.discard(client)
        if self._draining and not self.clients:
            self._drained.set()

    def _failed(self, side: Side | Callable[[], None]) -> None:
        """A bug met while serving one connection ends that connection, not the proxy."""
        client = side.client if type(side) is Link else side
        peer = getattr(client, "peer", "listener")
        log.exception("internal error serving %s: closing that connection", peer)
        if type(client) is Client:
            self._close_client(client)

    def _side_failed(self, side: Side) -> None:
        if type(side) is Link:
            self._link_eof(side)
        else:
            self._close_client(side)  # type: ignore[arg-type]

    def _housekeeping(self, now: float) -> None:
        if self.mve is not None:
            self.mve.check_health(now)
        idle = self.idle_timeout
        for client in list(self.clients):
            link = client.link
            if link is not None and not link.connected and now > link.deadline:
                self._drop_link(link)
                self._connect_failed(client, link.backend, "timed out")
            elif link is not None and link.sentinel and now > link.deadline:
                log.warning("client %s: %s did not answer the settle sentinel in %.0fs: closing",
                            client.peer, link.backend.name, SETTLE_TIMEOUT)
                self._close_client(client)
            elif idle and now - client.last_active > idle and not client.blocking and not (
                    link is not None and link.replies is not None and link.replies.pending):
                log.info("closing client %s: idle for %.0fs", client.peer, idle)
                self._close_client(client)
