"""Data channels' sockets: the endpoints the proxy opens for them, and the pipes that relay them.

A protocol's :class:`~twinproxy.protocols.channels.DataChannels` says, for a message on a
control connection, that a data channel is to be opened (an
:class:`~twinproxy.protocols.channels.OpenChannel`); this module does the I/O, on the dispatch
loop's epoll set like every other socket of the relay:

* :meth:`DataPipes.open` listens on the proxy's address on the side named (toward the client:
  the local address of the client's control connection; toward the server: that of the server
  connection), on a port the kernel picks or one of the configured range (:mod:`.endpoints`),
  and returns the message rewritten to name it (or the configured address). A
  client has at most one endpoint waiting: a new one closes the one before, and the client's
  close closes it.
* The endpoint accepts one connection from the expected host (the client's for a passive
  channel, the server's for an active one); a connection from any other host is closed at once
  and the endpoint keeps waiting. Then it closes, and the proxy connects on to the target.
* A :class:`Pipe` relays bytes both ways. Memory is bounded for any size: an end is read only
  while what it sent before has all been written to the other end (at most one read,
  ``BUFSIZE``, waits per direction), so a slow reader slows the writer through TCP, both ways.
  An end of input is passed on once what precedes it is written (``shutdown(SHUT_WR)``), an
  error or a reset closes both ends, and the pipe closes when both directions have ended.

Pipes outlive the control connection that opened them, as a data connection outlives its
command: an upload the client finished just before QUIT still reaches the server whole.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twinproxy.protocols.channels import OpenChannel, Toward, same_host
from twinproxy.protocols.messages import ProtocolError, Reply, Request
from twinproxy.ratelog import RateLimitedLog
from twinproxy.relay.connections import ClientConn, Listener, ServerConn
from twinproxy.relay.endpoints import Endpoints
from twinproxy.relay.loop import EPOLLIN, EPOLLOUT

if TYPE_CHECKING:
    from twinproxy.relay.loop import Loop

log = logging.getLogger("twinproxy.relay")


class End:
    """One socket of a pipe, and what waits to be written to it."""

    __slots__ = ("connected", "eof", "fd", "out", "out_size", "shut", "sock", "watched")

    def __init__(self, sock: socket.socket, connected: bool):
        self.sock = sock
        self.fd = sock.fileno()
        self.connected = connected
        self.out: deque[memoryview | bytes] = deque()
        self.out_size = 0
        self.eof = False  # its peer ended its input
        self.shut = False  # its output was ended, once ``out`` was written
        self.watched = True  # in the epoll set (until both its directions ended)


class Pipe:
    """A data channel's two sockets, relayed both ways (see the module docstring)."""

    __slots__ = ("closed", "ends", "listener", "relayed")

    def __init__(self, accepted: End, connecting: End, listener: Listener):
        self.ends = (accepted, connecting)
        self.closed = False
        self.relayed = 0  # bytes, both ways
        self.listener = listener  # the endpoint it came from (its owner, how it was set up)


class DataPipes:
    """The data channels of one relay: endpoints waiting, and pipes open.

    Args:
        loop: the dispatch loop whose epoll set holds the sockets.
        endpoints: where endpoints listen and are announced (the config's ``data_*`` keys).
    """

    def __init__(self, loop: Loop, endpoints: Endpoints | None = None):
        self.loop = loop
        self.endpoints = endpoints or Endpoints()
        # A client refused an endpoint (a port range all taken, out of sockets): a line per
        # period, not per client.
        self.no_endpoint = RateLimitedLog(log, logging.WARNING, "cannot open a data endpoint")
        self.pipes: set[Pipe] = set()
        self.refused = 0  # connections to an endpoint from a host other than the expected one
        # Told of a client's endpoint closed here that is not one of these pipes' (an update's
        # channel, relay.mirror, which shares the client's one endpoint slot).
        self.forget: Callable[[object], None] | None = None

    # ---- what the control connection's messages ask for --------------------------------------

    def requests(self, client: ClientConn, requests: list[Request]) -> list[Request]:
        """``requests`` as they go to the server: those that open a channel rewritten to name
        the proxy's endpoint, those the protocol refuses replaced by their stand-in."""
        channels = client.channels
        link = client.link
        if channels is None or link is None:
            return requests
        out = []
        for request in requests:
            decision = channels.request(request, client.host)
            if isinstance(decision, OpenChannel):
                rewritten = self.open(client, decision, request.raw)
                if rewritten is None:
                    request = channels.refuse(decision.failed)
                else:
                    request.raw = rewritten
            elif decision is not None:
                request = decision
            out.append(request)
        return out

    def reply(self, link: ServerConn, reply: Reply) -> bytes:
        """The bytes the client gets for ``reply``: rewritten to name the proxy's endpoint when
        it opens a channel."""
        client = link.client
        channels = client.channels if client is not None else None
        if channels is None:
            return reply.raw
        try:
            server_host = link.sock.getpeername()[0]
        except OSError:
            return reply.raw
        decision = channels.reply(reply, server_host)
        if decision is None:
            return reply.raw
        rewritten = self.open(client, decision, reply.request.raw if reply.request else b"")
        return decision.failed if rewritten is None else rewritten

    def open(self, client: ClientConn, channel: OpenChannel, setup: bytes = b"") -> bytes | None:
        """Listen for ``channel`` on the proxy's address on the client's control connection or
        on its server connection, as ``channel.toward`` says, accepting only that connection's
        peer host; the message naming the endpoint, or None when none can be opened (logged).
        ``setup``: the client's request that asked for it."""
        self.close_listener(client)
        if channel.toward is Toward.CLIENT:
            side = client.sock
        elif client.link is not None:
            side = client.link.sock
        else:
            return None
        try:
            accept_from = side.getpeername()[0]
            sock, host, port = self.endpoints.listen(side, channel.toward)
        except (OSError, ValueError) as exc:
            self.no_endpoint.note(f"client {client.peer}: {exc}")
            return None
        try:
            message = channel.rewrite(host, port)
        except ProtocolError as exc:
            sock.close()
            log.warning("client %s: cannot open a data endpoint: %s", client.peer, exc)
            return None
        listener = Listener(sock, accept_from, channel.target, client, channel.toward, setup)
        client.listener = listener
        self.loop.watch_fd(sock.fileno(), lambda: self._accept(listener), EPOLLIN)
        return message

    def close_listener(self, client: ClientConn) -> None:
        """Close the endpoint the client has waiting, if any."""
        listener = client.listener
        if listener is None:
            return
        client.listener = None
        if type(listener) is not Listener and self.forget is not None:
            self.forget(listener)
            return
        self.loop.unwatch_fd(listener.sock.fileno())
        listener.sock.close()

    def close_all(self) -> None:
        """Close every pipe (the relay stops)."""
        for pipe in list(self.pipes):
            self._close(pipe)

    # ---- endpoints -----------------------------------------------------------------------

    def _accept(self, listener: Listener) -> None:
        owner = listener.owner
        if owner.listener is not listener:
            return
        while True:
            try:
                sock, addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("client %s: data endpoint: %s", owner.peer, exc)
                self.close_listener(owner)
                return
            if not same_host(addr[0], listener.accept_from):
                # RFC 2577: a data connection from another host is not the client's (or the
                # server's): it could steal a download or inject an upload.
                self.refused += 1
                log.warning("client %s: refused a data connection from %s (expected %s)",
                            owner.peer, addr[0], listener.accept_from)
                sock.close()
                continue
            self.close_listener(owner)
            self._connect(sock, listener)
            return

    def _connect(self, accepted: socket.socket, listener: Listener) -> None:
        target, owner = listener.target, listener.owner
        accepted.setblocking(False)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET,
                                 socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("client %s: cannot connect a data channel: %s", owner.peer, exc)
            accepted.close()
            return
        sock.setblocking(False)
        code = sock.connect_ex(target)
        if code not in (0, errno.EINPROGRESS):
            log.warning("client %s: data channel to %s:%d: %s", owner.peer, *target,
                        errno.errorcode.get(code, code))
            sock.close()
            accepted.close()
            return
        pipe = Pipe(End(accepted, True), End(sock, False), listener)
        self.pipes.add(pipe)
        for i, end in enumerate(pipe.ends):
            self.loop.watch_fd(end.fd, lambda p=pipe, i=i: self._ready(p, i), 0)
        self._refresh(pipe)

    # ---- pipes ---------------------------------------------------------------------------

    def _ready(self, pipe: Pipe, i: int) -> None:
        """End ``i`` of ``pipe`` is ready (for reading, writing, or with an error)."""
        if pipe.closed:
            return
        end, other = pipe.ends[i], pipe.ends[1 - i]
        try:
            progressed = self._service(pipe, end, other)
        except OSError:
            self._close(pipe)
            return
        if pipe.closed:
            return
        if not progressed and end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._close(pipe)
            return
        if end.eof and other.eof and end.shut and other.shut:
            self._close(pipe)
            return
        self._refresh(pipe)

    def _service(self, pipe: Pipe, end: End, other: End) -> bool:
        """Connect, write, then read ``end``; whether anything happened. Raises OSError on a
        socket error (the pipe is closed then)."""
        if not end.connected:
            code = end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, errno.errorcode.get(code, str(code)))
            end.connected = True
            return True
        progressed = self._flush(end)
        if not end.out and other.eof and not end.shut:
            end.shut = True
            end.sock.shutdown(socket.SHUT_WR)
            progressed = True
        if self._reading(end, other):
            data = self.loop.receive(end.sock)
            if data is None:
                return progressed
            if not data:
                end.eof = True
                if not other.out and not other.shut:
                    other.shut = True
                    other.sock.shutdown(socket.SHUT_WR)
                return True
            pipe.relayed += len(data)
            other.out.append(data)
            other.out_size += len(data)
            self._flush(other)
            progressed = True
        return progressed

    @staticmethod
    def _reading(end: End, other: End) -> bool:
        # Read only what the other end can take now: nothing waits unwritten there.
        return end.connected and other.connected and not end.eof and not other.out

    @staticmethod
    def _flush(end: End) -> bool:
        out = end.out
        sent_any = False
        while out:
            chunk = out[0]
            try:
                sent = end.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            sent_any = True
            end.out_size -= sent
            if sent == len(chunk):
                out.popleft()
            else:
                out[0] = memoryview(chunk)[sent:]
                break
        return sent_any

    def _refresh(self, pipe: Pipe) -> None:
        refresh_pair(self.loop, *pipe.ends)

    def _close(self, pipe: Pipe) -> None:
        pipe.closed = True
        self.pipes.discard(pipe)
        for end in pipe.ends:
            self.loop.unwatch_fd(end.fd)
            with contextlib.suppress(OSError):
                end.sock.close()
            end.out.clear()


def refresh_pair(loop: Loop, first: End, second: End) -> None:
    """Set the epoll masks of two ends that carry bytes to each other: each reads only what
    the other can take now, and writes while it has bytes or owes the other's end of data
    (SINGLE mode's pipes, and the leader's half of a transfer during an update)."""
    for end, other in ((first, second), (second, first)):
        if not end.watched:
            continue
        if end.eof and end.shut:
            # Done both ways: out of the epoll set, which would report its hang-up (which
            # no mask hides) on every poll until the other end is done too.
            end.watched = False
            loop.unwatch_fd(end.fd)
            continue
        if not end.connected:
            mask = EPOLLOUT
        else:
            mask = (EPOLLIN if DataPipes._reading(end, other) else 0) | (
                EPOLLOUT if end.out or (other.eof and not end.shut) else 0)
        loop.modify_fd(end.fd, mask)
