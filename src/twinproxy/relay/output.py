"""The output of the relay's sockets, and the flow control that bounds it.

Output that a peer does not take at once waits in the socket's ``out`` queue, and the socket
that produces it stops being read past a bound, until the queue drains below a quarter of it:
``HIGH_WATER`` for a server connection (a client's requests), the config's
``client_output_pause`` for a client (its replies). An update's shared connection to the
version serving carries many clients' requests: while it is past ``HIGH_WATER``, no client the
update drives is read (each is held back at its next read), until it drains. A client whose
unsent replies pass ``client_output_limit`` is closed, and so is the one with the most when all
clients' together pass ``output_budget``, as Redis closes a client past its output buffer limit:
one client that does not read must not hold the proxy's memory.

:class:`Output` is what :class:`~.loop.Loop` is built on: the loop's epoll set says when a
socket can take more (:meth:`Output._writable`), and the loop sets each socket's events to
what it waits for now (:meth:`Output.refresh`).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket

from twinproxy.engine.large import Spooled
from twinproxy.relay.connections import (
    BUFSIZE,
    HIGH_WATER,
    LOW_WATER,
    ClientConn,
    ServerConn,
    Socket,
)
from twinproxy.spool import Reading

log = logging.getLogger("twinproxy.relay")

# Pieces of a large request written per wake-up of its socket: a server that reads as fast as
# the proxy writes would otherwise keep the loop on it for the whole request.
LARGE_PIECES = 4
MAX_BUFFERS = 1024  # the buffers one sendmsg takes (IOV_MAX on Linux); the rest wait in out
SEND_PIECES = 64  # queued buffers written in one sendmsg when the socket can take more

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT


class Output:
    """The sockets' ``out`` queues and what bounds them; see the module docstring."""

    by_id: dict[int, Socket]  # (the loop's: every socket by its id)

    def __init__(self, output_pause: int = HIGH_WATER, output_limit: int = 0,
                 output_budget: int = 0) -> None:
        self.output_pause = output_pause
        self.output_resume = output_pause // 4
        self.output_limit = output_limit
        self.output_budget = output_budget
        self.client_output = 0  # bytes waiting to be written to all clients
        # An update's shared connections to the version serving past HIGH_WATER, and the
        # clients held back meanwhile (see _hold_back).
        self.filled: set[ServerConn] = set()
        self.held_back: list[ClientConn] = []
        # Bytes sent, for the metrics: to clients, and to the servers by role (index 0 the
        # leader, 1 the follower).
        self.client_sent = 0
        self.server_sent = [0, 0]

    # ---- what the loop provides ----------------------------------------------------------

    def refresh(self, side: Socket) -> None:
        """Set the socket's epoll events to what it waits for now."""
        raise NotImplementedError

    def _connected(self, link: ServerConn) -> None:
        raise NotImplementedError

    def _side_failed(self, side: Socket) -> None:
        raise NotImplementedError

    def close_client(self, client: ClientConn) -> None:
        raise NotImplementedError

    def _client_backed_up(self, client: ClientConn) -> None:
        """A client's unsent replies passed ``client_output_pause`` (once, until they drain)."""

    # ---- output and flow control ---------------------------------------------------------

    def send(self, side: Socket, data: bytes | memoryview | list[bytes]) -> None:
        """Write ``data`` to ``side`` after what waits already; what the socket does not take
        waits in its ``out`` queue. A list of buffers (large replies of a batch, see
        ``Engine._flush``) goes in one ``sendmsg``, not joined first."""
        if side.closed or not data:
            return
        if type(data) is list:
            self._send_buffers(side, data)
            return
        if type(side) is ClientConn:
            self.client_sent += len(data)
        else:
            self.server_sent[side.role] += len(data)  # type: ignore[attr-defined]
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
        self._queued(side, len(data))

    def _send_buffers(self, side: Socket, buffers: list[bytes]) -> None:
        size = sum(map(len, buffers))
        if type(side) is ClientConn:
            self.client_sent += size
        else:
            self.server_sent[side.role] += size  # type: ignore[attr-defined]
        rest: list[bytes | memoryview] = buffers  # type: ignore[assignment]
        if not side.out:
            try:
                sent = side.sock.sendmsg(buffers[:MAX_BUFFERS])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._side_failed(side)
                return
            if sent == size:
                return
            size -= sent
            first = 0
            while sent >= len(buffers[first]):
                sent -= len(buffers[first])
                first += 1
            rest = buffers[first:]  # (the caller's list is left as it was)
            if sent:
                rest[0] = memoryview(rest[0])[sent:]
        side.out.extend(rest)
        self._queued(side, size)

    def _queued(self, side: Socket, size: int) -> None:
        """``size`` more bytes wait in ``side.out``: watch for it to take them, and pause what
        fills it past its bound."""
        side.out_size += size
        if not side.mask & EPOLLOUT:
            self.refresh(side)
        if type(side) is ClientConn:
            self.client_output += size
            if side.out_size > self.output_pause:
                self._backed_up(side)
            if self.output_budget and self.client_output > self.output_budget:
                self._over_budget()
        elif side.out_size > HIGH_WATER:
            self._server_backed_up(side)  # type: ignore[arg-type]

    def send_large(self, link: ServerConn, data: Spooled) -> None:
        """Write a large request kept out of memory, after what waits already: it is read a
        piece at a time as the socket takes it (:class:`~twinproxy.spool.Reading`)."""
        if link.closed or not data.size:
            return
        self.server_sent[link.role] += data.size
        link.out.append(Reading(data))  # type: ignore[arg-type]
        link.out_size += data.size
        self.refresh(link)
        if link.out_size > HIGH_WATER:
            self._server_backed_up(link)

    def _server_backed_up(self, link: ServerConn) -> None:
        """``link``'s requests waiting to be written passed HIGH_WATER: pause what fills it.
        Its client's, for a connection of its own; for an update's shared connection to the
        version serving, every client the update drives (:meth:`_hold_back`): one client that
        sends faster than the server reads, or a server that stopped reading, must not make the
        proxy hold what the clients send (a client sending 100 KB SETs to a stopped leader made
        it hold 2.7 GB in 8 s)."""
        producer = self._producer(link)
        if producer is not None:
            self._pause(producer)
        elif link.client is None and not link.role:
            self.filled.add(link)

    def _hold_back(self, client: ClientConn) -> None:
        """A client the update drives has something to read while a shared connection to the
        version serving is past HIGH_WATER: it is not read until that drains below LOW_WATER
        (:meth:`_unfilled`). Whatever it sends could go on that connection, behind what waits
        there already; each client is held at its own next read, not all at once (a thousand
        idle clients cost no system call)."""
        client.held = True
        self.refresh(client)
        self.held_back.append(client)

    def _unfilled(self, link: ServerConn) -> None:
        """``link`` is no longer past HIGH_WATER (it drained below LOW_WATER, or closed): the
        clients held back are read again once no shared connection is."""
        self.filled.discard(link)
        if self.filled:
            return
        held, self.held_back = self.held_back, []
        for client in held:
            client.held = False
            self.refresh(client)

    def _pause(self, producer: Socket | None) -> None:
        if producer is not None and not producer.paused:
            producer.paused = True
            self.refresh(producer)

    def _backed_up(self, client: ClientConn) -> None:
        """The client's unsent replies passed ``client_output_pause``: stop reading its server
        connection (the server keeps the rest, as it would for a slow client of its own);
        past ``client_output_limit``, close it."""
        if self.output_limit and client.out_size > self.output_limit:
            log.warning("closing client %s: %d MB of replies it does not read "
                        "(client_output_limit)", client.peer, client.out_size >> 20)
            self.close_client(client)
            return
        self._pause(self._producer(client))
        if not client.backed_up:
            client.backed_up = True
            self._client_backed_up(client)

    def _over_budget(self) -> None:
        """All clients' unsent replies passed ``output_budget``: close the client with the
        most, until they are back under it."""
        while self.client_output > self.output_budget:
            clients = [s for s in self.by_id.values() if type(s) is ClientConn and s.out_size]
            if not clients:
                return
            worst = max(clients, key=lambda c: c.out_size)
            log.warning("closing client %s: %d MB of replies it does not read, and all clients' "
                        "unsent replies passed output_budget", worst.peer, worst.out_size >> 20)
            self.close_client(worst)

    def _writable(self, side: Socket) -> None:
        if type(side) is ServerConn and not side.connected:
            self._connected(side)
            return
        out = side.out
        sock = side.sock
        pieces = LARGE_PIECES
        while out:
            chunk = out[0]
            if type(chunk) is Reading:  # a large request: its next piece
                if not pieces:
                    break  # the others' turn: the socket is still writable at the next batch
                pieces -= 1
                try:
                    chunk = chunk.next(BUFSIZE)
                except OSError:
                    self._side_failed(side)
                    return
                if out[0].left:  # type: ignore[union-attr]
                    out.appendleft(chunk)
                else:
                    out[0] = chunk
                if not chunk:
                    out.popleft()
                    continue
            elif len(out) > 1 and type(out[1]) is not Reading:
                went = self._write_pieces(side)
                if went is None:
                    return  # (failed: the side is dealt with, as below)
                if went:
                    continue
                break
            try:
                sent = sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._side_failed(side)
                return
            side.out_size -= sent
            if type(side) is ClientConn:
                self.client_output -= sent
            if sent == len(chunk):
                out.popleft()
            else:
                out[0] = memoryview(chunk)[sent:]
                break
        if side.out_size < (self.output_resume if type(side) is ClientConn else LOW_WATER):
            if type(side) is ClientConn:
                side.backed_up = False
            producer = self._producer(side)
            if producer is not None and producer.paused:
                producer.paused = False
                self.refresh(producer)
            elif self.filled and side in self.filled:
                self._unfilled(side)  # type: ignore[arg-type]
        if not out:
            if side.closing:
                self.close_client(side)  # type: ignore[arg-type]
                return
            self.refresh(side)
            if type(side) is ServerConn and side.shut:
                self._shutdown_write(side)

    def _write_pieces(self, side: Socket) -> bool | None:
        """Several buffers wait at the front of ``side.out`` (a list sent whole, see
        :meth:`send`): up to ``SEND_PIECES`` of them in one ``sendmsg``. True when all went
        (the socket may take more), False when it took less, None when the send failed."""
        out = side.out
        buffers = []
        for piece in out:
            if type(piece) is Reading or len(buffers) == SEND_PIECES:
                break
            buffers.append(piece)
        try:
            sent = side.sock.sendmsg(buffers)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._side_failed(side)
            return None
        side.out_size -= sent
        if type(side) is ClientConn:
            self.client_output -= sent
        left = sent
        for _ in buffers:
            size = len(out[0])
            if left < size:
                out[0] = memoryview(out[0])[left:]
                return False
            left -= size
            out.popleft()
        return True

    def _producer(self, side: Socket) -> Socket | None:
        """The socket whose reads fill ``side``'s output: what to pause when it backs up.

        Never a client for a follower's connection: a client must not wait on the follower
        (its backlog has bounds of its own, past which the update rolls back)."""
        if type(side) is ServerConn:
            if side.role or side.client is None or not side.connected:
                return None
            return side.client
        link = side.link  # type: ignore[attr-defined]
        return link if link is not None and link.connected else None

    def _shutdown_write(self, link: ServerConn) -> None:
        with contextlib.suppress(OSError):
            link.sock.shutdown(socket.SHUT_WR)
