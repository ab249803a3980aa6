"""The relay: the listener, and the client and server connections of the data path.

A client's connection is accepted, gets its connection to the version serving (or errors while
none serves), and is closed in the end, whatever way it ends; what happens to its bytes in
between is :mod:`.single`'s (SINGLE mode) or, during an update, the engine's through
:class:`~.driver.UpdateDriver`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio

from twinproxy import descriptors, heap
from twinproxy.descriptors import Reserve
from twinproxy.ratelog import RateLimitedLog
from twinproxy.relay.connections import ClientConn, ServerConn, Socket
from twinproxy.relay.endpoints import Endpoints
from twinproxy.relay.loop import EPOLLIN
from twinproxy.relay.mirror import Mirror
from twinproxy.relay.pipes import DataPipes
from twinproxy.relay.settling import SETTLE_TIMEOUT
from twinproxy.relay.single import SingleMode, Updating

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.config import Config
    from twinproxy.protocols.base import Carry, Codec
    from twinproxy.protocols.messages import Request

log = logging.getLogger("twinproxy.relay")

HOUSEKEEPING = 0.5  # seconds between checks of connect and idle timeouts
CAPACITY_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Relay(SingleMode):
    """The proxy's data path.

    Args:
        config: the loaded config (listen address, limits, timeouts).
        codec: the protocol's codec.
        backend: the version that serves.
    """

    def __init__(self, config: Config, codec: Codec, backend: Backend):
        p = config.proxy
        super().__init__(p.client_output_pause, p.client_output_limit, p.output_budget)
        self.config = config
        self.codec = codec
        self.backend = backend
        self.limits = config.limits
        # What clients' requests tell of the server's state that an update's state sync
        # cannot copy (Redis: the scripts they load), kept for every update to come.
        self.learner = codec.learner()
        p = config.proxy
        self.max_connections = p.max_connections
        self.connect_timeout = p.connect_timeout
        self.idle_timeout = p.idle_timeout
        self.listen_address = p.listen
        self.clients: set[ClientConn] = set()
        self.holding: set[ServerConn] = set()
        self.accepted = 0
        self.started_at = time.time()
        self.driver: Updating | None = None  # the update in progress
        # Set by an update (see SingleMode.forward): requests rewritten after a cutover
        # (Codec.after_cutover), requests shown to a state sync before its sync point.
        self.carry: Carry | None = None
        self.watch: Callable[[Request], object] | None = None
        self._listener: socket.socket | None = None
        self._draining = False
        self._drained = trio.Event()
        self._accept_paused = False  # the listener is out of the epoll set's reads
        self._server_speaks_first = not codec.probe()
        # At a limit every new client is refused: a line per period, not per client.
        self.refused = RateLimitedLog(log, logging.WARNING,
                                      "refused a client: max number of clients reached")
        self.no_socket = RateLimitedLog(
            log, logging.ERROR, "cannot open a socket: new clients are refused, or wait, until "
            "one can be opened; connections already open are served")
        self._reserve: Reserve | None = None  # opened with the listener (descriptors.py)
        self._trimmer = heap.Trimmer()  # when the heap's free pages go back (twinproxy.heap)
        self._relayed = 0  # clients' bytes both ways at the last check, for the trimmer
        self.tls_passthrough = p.tls == "passthrough"  # (FTP's AUTH TLS: see pipes)
        ports = (p.data_port_min, p.data_port_max) if p.data_port_min is not None else None
        self.pipes = DataPipes(self, Endpoints(p.data_address, ports))  # data channels (FTP)
        self.mirror = Mirror(self, self.pipes)  # the same during an update
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
        self._reserve = Reserve(1)
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
            self.refresh(client)
            if client.attached:
                self.driver.client_eof(client)
            else:
                self.settle(client, lambda c=client: self.close_after_output(c))
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
        if self._reserve is not None:
            self._reserve.close()
            self._reserve = None

    def _close_all(self) -> None:
        for client in list(self.clients):
            self.close_client(client)
        for side in list(self.by_id.values()):
            if type(side) is ServerConn:
                self.drop_link(side)
        self.close_dropped()
        self.pipes.close_all()
        self.mirror.close_all()
        self._close_listener()

    def _client_backed_up(self, client: ClientConn) -> None:
        if client.attached:
            self.driver.backed_up(client)

    def _lingers(self) -> bool:
        return self.frameless()  # (not during an update, nor while a state sync watches)

    def _plain_batches(self) -> bool:
        return self.frameless()  # (the same: where connections may be in the plain state)

    def _batch_started(self) -> None:
        if self.driver is not None:
            self.driver.tick(self.now)

    def _batch_done(self) -> None:
        if self.driver is not None:
            self.driver.flush()
        if self._dropped:
            self.close_dropped()

    # ---- accepting -------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        now = self.now
        for _ in range(256):
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in CAPACITY_ERRORS:
                    self._cannot_accept(listener, exc)
                return
            self.accepted += 1
            sock.setblocking(False)
            if len(self.clients) >= self.max_connections:
                self._refuse(sock)
                self.refused.note(f"max_connections {self.max_connections}")
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = self.codec.request_reader(self.limits)
            reader.pass_values(self.pass_from)
            if self.learner is not None:
                reader.learner = self.learner
            client = ClientConn(sock, reader, f"{addr[0]}:{addr[1]}", addr[0])
            client.channels = self.codec.data_channels()
            if client.channels is not None:
                client.channels.passthrough = self.tls_passthrough
                # FTP clients send ABOR as TCP urgent data (Python's ftplib: "ABOR\r\n" with
                # MSG_OOB, so its last byte is the urgent one). Read out of band, that byte
                # would be missing from the stream and the line would never end: inline, the
                # command arrives whole.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            client.last_active = now
            client.paused = True  # until its server connection is up
            self.clients.add(client)
            self._register(client)
            self._connect(client)

    def _cannot_accept(self, listener: socket.socket, exc: OSError) -> None:
        """Out of descriptors (or socket memory) despite the cap on clients (a limit lowered
        while the proxy runs, a leak): refuse the waiting clients at once, each with a
        descriptor of the reserve given back for the moment, rather than leave them in the
        accept queue; when even that fails, stop reading the listener (the epoll set would
        report it ready, again and again) until a client closes or the next housekeeping.
        Connections already open are not touched."""
        self.no_socket.note(f"accept: {descriptors.describe(exc)}")
        reserve = self._reserve
        for _ in range(256):
            if reserve is None or not reserve.release():
                break
            try:
                sock, _ = listener.accept()
                self.accepted += 1
                self._refuse(sock)
            except BlockingIOError:
                return  # every waiting client refused
            except OSError:
                break  # the reserve's descriptor did not help (above a lowered limit)
            finally:
                reserve.refill()  # after the refused client's socket is closed
        else:
            return  # more are waiting: the listener is still ready
        self._pause_accepting()

    def _pause_accepting(self) -> None:
        if self._listener is not None and not self._accept_paused:
            self._accept_paused = True
            self._ep.modify(self._listener.fileno(), 0)

    def _resume_accepting(self) -> None:
        if self._listener is not None and self._accept_paused:
            self._accept_paused = False
            self._ep.modify(self._listener.fileno(), EPOLLIN)

    def _refuse(self, sock: socket.socket) -> None:
        """The protocol's own error for a client there is no room for, then close."""
        with contextlib.suppress(OSError):
            sock.send(self.codec.error_reply("max number of clients reached"))
        sock.close()

    # ---- server connections ----------------------------------------------------------------

    def _connect(self, client: ClientConn) -> None:
        """Open the client's server connection (non-blocking; finished in ``_connected``)."""
        backend = self.backend
        if not backend.up or backend.address is None:
            self._server_unavailable(client)
            return
        client.forwarded = False
        framed = not backend.sentinel_ok or not self.frameless()
        try:
            link = self.open_link(client, backend, framed=framed)
        except OSError:  # no socket: no room for this client after all
            self.send(client, self.codec.error_reply("max number of clients reached"))
            self.close_after_output(client)
            return
        if link is None:
            self._connect_failed(client, backend, "refused")
            return
        client.link = link
        if self.driver is not None:
            self.driver.attach_new(client)

    def open_link(self, client: ClientConn | None, backend: Backend, *, framed: bool,
                  conn_id: int | None = None, role: int = 0) -> ServerConn | None:
        """A non-blocking connection to ``backend`` for ``client`` (None: an update's shared
        connection); None when the connection fails at once. Its replies are left unframed
        unless ``framed`` (see the module docstring).

        Raises:
            OSError: no socket can be made (out of descriptors, or memory); logged here, at
                most once per 10 s, so that the caller only decides what it costs: a new
                client is refused, an update fails.
        """
        if backend.address is None:
            return None
        host, port = backend.address
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self.no_socket.note(f"connection to {backend.name}: {descriptors.describe(exc)}")
            raise
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
        return link

    def _connected(self, link: ServerConn) -> None:
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        client = link.client
        if code:
            self.drop_link(link)
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
        self.refresh(link)
        if client is not None and link.role == 0 and client.link is link:
            client.paused = False
            client.down = None
            self.refresh(client)
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
            self.send(client, self.codec.error_reply(self._unavailable_text()))
            self.close_after_output(client)
            return
        client.link = None
        client.down = self.codec.reply_reader(self.limits)
        client.paused = False
        self.refresh(client)

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

    def in_flight(self) -> Iterator[Request]:
        """The requests sent to a server in SINGLE mode that it has not answered yet."""
        for client in self.clients:
            link = client.link
            if link is not None:
                yield from link.inflight

    def watch_requests(self, watch: Callable[[Request], object] | None) -> None:
        """Show ``watch`` every request sent to a server in SINGLE mode from now on (None: stop),
        and at once those sent already that the server has not answered yet (a state sync that
        must know every write that can still change the server's data)."""
        self.watch = watch
        if watch is not None:
            for request in self.in_flight():
                watch(request)
            # What went out unframed is not known request by request: the sentinel marks its
            # end, and unframed_owed() says when every such end came. (An opaque session has
            # no ends to mark: the update leaves it to the leader, see opaque_on.)
            for client in list(self.clients):
                link = client.link
                if link is not None and link.replies is None and client.forwarded \
                        and link.connected and not link.sentinel and not client.opaque:
                    self.settle(client, _nothing)

    def unframed_owed(self) -> int:
        """How many clients may still be owed replies to requests that went out unframed (not
        in :meth:`in_flight`): after :meth:`watch_requests`, a state sync waits for none."""
        owed = 0
        for client in self.clients:
            link = client.link
            if link is not None and not link.closed and not client.opaque and (
                    link.sentinel or (link.replies is None and client.forwarded)):
                owed += 1
        return owed

    def opaque_on(self, backend: Backend) -> list[ClientConn]:
        """The clients whose sessions pass through encrypted to ``backend`` (see
        SingleMode._go_opaque), still open."""
        return [c for c in self.clients if c.opaque and not c.closed and c.link is not None
                and c.link.backend is backend]

    def serve_from(self, backend: Backend) -> None:
        """From now on new clients go to ``backend`` (after a cutover)."""
        self.backend.on_change = lambda b: None
        self.backend = backend
        backend.on_change = self._backend_changed

    # ---- closing ---------------------------------------------------------------------------

    def close_client(self, client: ClientConn) -> None:
        if client.closed:
            return
        self._close_socket(client)
        if client.listener is not None:
            self.pipes.close_listener(client)
        link = client.link
        if client.attached:
            # What it sent may still run in the leader: the engine waits for it (and closes
            # the leader connection then), so that the follower gets it too.
            client.attached = False
            self.driver.client_closed(client)
        elif link is not None and not link.engine:
            self.drop_link(link)
        self.clients.discard(client)
        self._resume_accepting()  # its descriptors are free
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
            self.close_client(client)
        else:
            log.exception("internal error in the relay")

    def _side_failed(self, side: Socket) -> None:
        if type(side) is ServerConn:
            self._link_eof(side)
        else:
            self.close_client(side)  # type: ignore[arg-type]

    def trim_soon(self) -> None:
        """An update let go of its engine: give the memory it held back to the system at the
        next check (by then its last references, the caller's, are gone)."""
        self._trimmer.soon()

    def _housekeeping(self, now: float) -> None:
        relayed = self.client_received + self.client_sent
        used, free = heap.usage()
        if self._trimmer.due(used, free, heap.resident(), relayed - self._relayed):
            heap.release()
            self._trimmer.done(used, heap.resident())
        self._relayed = relayed
        self.refused.flush()
        self.no_socket.flush()
        if self._dropped:
            self.close_dropped()
        self._resume_accepting()  # descriptors may have been freed outside the relay
        driver = self.driver
        if driver is not None:
            driver.tick(now)
        idle = self.idle_timeout
        for side in list(self.by_id.values()):
            if type(side) is ServerConn and not side.connected and now > side.deadline \
                    and not side.closed:
                self.drop_link(side)
                if side.engine:
                    driver.connect_failed(side, "timed out")
                elif side.client is not None:
                    self._connect_failed(side.client, side.backend, "timed out")
        for client in list(self.clients):
            link = client.link
            if link is not None and link.sentinel and now > link.deadline:
                log.warning("client %s: %s did not answer the settle sentinel in %.0fs: closing",
                            client.peer, link.backend.name, SETTLE_TIMEOUT)
                self.close_client(client)
            elif idle and now - client.last_active > idle and not self._busy(client):
                log.info("closing client %s: idle for %.0fs", client.peer, idle)
                self.close_client(client)

    def _busy(self, client: ClientConn) -> bool:
        """Whether the client waits for a reply (an idle timeout does not apply)."""
        if client.attached:
            return self.driver.busy(client)
        link = client.link
        return client.blocking or (link is not None and link.replies is not None
                                   and bool(link.replies.pending))


def _nothing() -> None:
    """A settle's ``then`` for a caller that only needs the settling to happen."""
