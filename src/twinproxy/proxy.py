"""The proxy's dispatch loop: listener, client connections, server connections.

How this works. One trio task (:meth:`Proxy.run`) owns an epoll set that holds the listener and
every client and server socket, all non-blocking. It waits until the epoll fd is readable
(``trio.lowlevel.wait_readable``), then services the ready sockets in the order the kernel reports
them. Two things follow from that, and both are why the loop is built this way instead of as one
task per direction per connection:

* Requests are forwarded in arrival order. Trio may run the tasks it wakes together in reverse
  order, which would let one client's request overtake another's sent just before it.
* One scheduler round trip serves every ready socket, instead of one per message.

In SINGLE mode a client's read is framed by the protocol's request reader (so the proxy always
knows where requests end, how many replies are owed, and the session a client built), and then
forwarded as one chunk; a server's read is forwarded first and framed after. Nothing else happens
per message: no logging, no allocation beyond the codec's.

Output that a peer does not take at once waits in the side's ``out`` queue, and the side that
produces it stops being read past ``HIGH_WATER`` bytes, until the queue drains below
``LOW_WATER``.
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
    from twinproxy.protocols.base import Codec, ReplyReader, RequestReader

log = logging.getLogger("twinproxy.proxy")

BUFSIZE = 256 * 1024
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
HOUSEKEEPING = 0.5  # seconds between checks of connect and idle timeouts

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERRS = select.EPOLLHUP | select.EPOLLERR
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
    """A server connection, owned by one client connection."""

    __slots__ = ("backend", "client", "connected", "deadline", "replies", "shut")

    def __init__(self, sock: socket.socket, client: Client, backend: Backend,
                 replies: ReplyReader):
        super().__init__(sock)
        self.client = client
        self.backend = backend
        self.replies = replies
        self.connected = False
        self.deadline = 0.0
        self.shut = False  # the client closed its side: pass that on once ``out`` is written


class Client(Side):
    """A client connection and everything the proxy knows about it."""

    __slots__ = ("down", "draining", "eof", "error", "last_active", "link", "peer", "reader",
                 "session")

    def __init__(self, sock: socket.socket, reader: RequestReader, peer: str):
        super().__init__(sock)
        self.reader = reader
        self.peer = peer
        self.link: Link | None = None
        self.session: list[Request] = []  # session-changing requests, for a later replay
        self.down: ReplyReader | None = None  # set while its server is unavailable
        self.eof = False  # the client closed its side
        self.error: bytes | None = None  # to send once owed replies are out, then close
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
        self.started_at = time.time()
        self._fds: dict[int, Side | Callable[[], None]] = {}
        self._ep = select.epoll()
        self._listener: socket.socket | None = None
        self._draining = False
        self._drained = trio.Event()
        self._accept_paused_until = 0.0
        self._server_speaks_first = not codec.probe()
        self.now = time.monotonic()  # the loop's clock, read once per wake-up
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
        task_status.started(self.listen_address)
        ep, fds = self._ep, self._fds
        poll = ep.poll
        epfd = ep.fileno()
        wait_readable = trio.lowlevel.wait_readable
        next_housekeeping = 0.0
        try:
            while True:
                self.now = now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING
                with trio.move_on_after(HOUSEKEEPING):
                    await wait_readable(epfd)
                for fd, events in poll(0, 1024):
                    side = fds.get(fd)
                    if side is None:
                        continue
                    if type(side) is Link:
                        if events & EPOLLOUT:
                            self._writable(side)
                        if events & ~EPOLLOUT and not side.closed:
                            self._link_readable(side)
                    elif type(side) is Client:
                        if events & EPOLLOUT:
                            self._writable(side)
                        if events & ~EPOLLOUT and not side.closed:
                            self._client_readable(side)
                    else:
                        side()
        finally:
            self._close_all()

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
            self._close_if_drained(client)
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
        if listener is None or time.monotonic() < self._accept_paused_until:
            return
        now = time.monotonic()
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
        """Open the client's server connection (non-blocking; finished in ``_writable``)."""
        backend = self.backend
        if not backend.up or backend.address is None:
            self._server_unavailable(client)
            return
        host, port = backend.address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link(sock, client, backend, self.codec.reply_reader(self.limits))
        link.deadline = time.monotonic() + self.connect_timeout
        client.link = link
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            client.link = None
            self._connect_failed(client, backend, errno.errorcode.get(code, str(code)))
            return
        self._register(link)
        link.mask = EPOLLOUT
        self._ep.modify(link.fd, EPOLLOUT)

    def _connected(self, link: Link) -> None:
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        client = link.client
        if code:
            self._drop_link(link)
            self._connect_failed(client, link.backend, errno.errorcode.get(code, str(code)))
            return
        link.connected = True
        client.paused = False
        client.down = None
        self._update(link)
        self._update(client)

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
        if backend.up:
            log.info("%s serves at %s:%d", backend.name, *backend.address)
            for client in list(self.clients):
                if client.down is not None and not client.reader.buffered:
                    self._connect(client)
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
        client.last_active = self.now
        link = client.link
        reader = client.reader
        held = reader.buffered
        try:
            requests = reader.receive(data)
        except ProtocolError as exc:
            self._client_protocol_error(client, exc, data, held)
            return
        if link is None:
            self._answer_unavailable(client, requests)
            return
        expect = link.replies.expect
        for request in requests:
            expect(request)
            if request.session:
                self._note_session(client, request)
        self._send(link, data)

    def _link_readable(self, link: Link) -> None:
        try:
            data = link.sock.recv(BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        client = link.client
        if not data:
            self._link_eof(link)
            return
        self._send(client, data)
        try:
            link.replies.receive(data)
        except ProtocolError as exc:
            log.error("%s sent malformed output (%s): closing client %s", link.backend.name,
                      exc, client.peer)
            self._close_client(client)
            return
        if client.draining or client.eof or client.error is not None:
            self._close_if_drained(client)

    def _note_session(self, client: Client, request: Request) -> None:
        """Keep the session a client built, to replay it on a new version's connection."""
        session = client.session
        if len(session) >= 64:
            del session[0]
        session.append(request)

    def _answer_unavailable(self, client: Client, requests: list[Request]) -> None:
        down = client.down
        assert down is not None
        owed = down.pending
        for request in requests:
            down.expect(request)
        owed = down.pending - owed
        if owed:
            self._send(client, self.codec.error_reply(self._unavailable_text()) * owed)

    def _client_protocol_error(self, client: Client, exc: ProtocolError, data: bytes,
                               held: int) -> None:
        """Forward the requests complete before the bad bytes, then answer them and close."""
        log.info("client %s: %s", client.peer, exc)
        requests: list[Request] = exc.messages
        good = sum(len(r.raw) for r in requests) - held
        link = client.link
        if link is not None:
            for request in requests:
                link.replies.expect(request)
            if good > 0:
                self._send(link, data[:good])
        elif requests:
            self._answer_unavailable(client, requests)
        client.error = exc.reply
        client.paused = True
        self._update(client)
        self._close_if_drained(client)

    def _client_eof(self, client: Client) -> None:
        client.eof = True
        link = client.link
        if link is None or not link.connected or client.reader.buffered:
            # Gone in the middle of a request: the server would only ever see half of it.
            self._close_client(client)
            return
        self._update(client)
        if link.replies.pending:
            # Pass the end of input on, as HAProxy does: the server answers what it read, then
            # closes, which also settles replies that may never come (memcached quiet requests).
            link.shut = True
            if not link.out:
                self._shutdown_write(link)
        self._close_if_drained(client)

    def _shutdown_write(self, link: Link) -> None:
        with contextlib.suppress(OSError):
            link.sock.shutdown(socket.SHUT_WR)

    def _link_eof(self, link: Link) -> None:
        """The server closed: answer what it still owed with errors, then close the client."""
        client = link.client
        owed = link.replies.pending
        at_boundary = not link.replies.buffered
        self._drop_link(link)
        if client.closed:
            return
        if client.eof:
            self._close_after_output(client)  # it closed first: the server only followed
            return
        if owed and at_boundary and not self._server_speaks_first:
            log.warning("%s closed a connection owing %d replies (client %s)", link.backend.name,
                        owed, client.peer)
            self._send(client, self.codec.error_reply(
                f"twinproxy: {link.backend.name} closed the connection") * owed)
        elif self._server_speaks_first and owed:
            self._send(client, self.codec.error_reply(
                f"twinproxy: {link.backend.name} closed the connection"))
        self._close_after_output(client)

    def _close_if_drained(self, client: Client) -> None:
        """Close a client that is done (EOF, error or draining) once nothing more is owed."""
        link = client.link
        if link is not None and link.connected and link.replies.pending:
            return
        if client.error is not None:
            self._send(client, client.error)
            self._close_after_output(client)
        elif client.eof or client.draining:
            self._close_after_output(client)

    # ---- output and flow control -----------------------------------------------------------

    def _send(self, side: Side, data: bytes | memoryview) -> None:
        if side.closed or not data:
            return
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
            if producer is not None and producer.paused:
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
        """The side whose reads fill ``side``'s output: what to pause when it backs up."""
        if type(side) is Link:
            return side.client if side.connected else None
        link = side.link  # type: ignore[attr-defined]
        return link if link is not None and link.connected else None

    def _update(self, side: Side) -> None:
        """Set the epoll mask to what the side needs now."""
        if side.closed:
            return
        if type(side) is Client:
            reading = not (side.paused or side.eof or side.draining or side.closing
                           or side.error is not None)
        else:
            reading = side.connected and not side.paused
        mask = (EPOLLIN if reading else 0) | (EPOLLOUT if side.out else 0)
        if type(side) is Link and not side.connected:
            mask = EPOLLOUT
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
        if link.client.link is link:
            link.client.link = None

    def _close_client(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        if client.link is not None:
            self._drop_link(client.link)
        self._unregister_fd(client.fd)
        client.sock.close()
        self.clients.discard(client)
        if self._draining and not self.clients:
            self._drained.set()

    def _side_failed(self, side: Side) -> None:
        if type(side) is Link:
            self._link_eof(side)
        else:
            self._close_client(side)  # type: ignore[arg-type]

    def _housekeeping(self, now: float) -> None:
        for client in list(self.clients):
            link = client.link
            if link is not None and not link.connected and now > link.deadline:
                self._drop_link(link)
                self._connect_failed(client, link.backend, "timed out")
            elif (self.idle_timeout and now - client.last_active > self.idle_timeout
                  and not (link and link.replies.pending)):
                self._close_client(client)
