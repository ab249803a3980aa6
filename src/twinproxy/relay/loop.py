"""The dispatch loop: one trio task over an epoll set, and the output queues of its sockets.

How this works. One task (:meth:`Loop.run`) owns an epoll set that holds the listener and every
client and server socket, all non-blocking. It waits until the epoll fd is readable
(``trio.lowlevel.wait_readable``), then services the ready sockets in the order the kernel reports
them. Two things follow from that, and both are why the loop is built this way instead of as one
task per direction per connection:

* Requests are forwarded in arrival order. Trio may run the tasks it wakes together in reverse
  order, which would let one client's request overtake another's sent just before it.
* One scheduler round trip serves every ready socket, instead of one per message.

Output that a peer does not take at once waits in the socket's ``out`` queue, and the socket
that produces it stops being read past a bound, until the queue drains below a quarter of it:
``HIGH_WATER`` for a server connection (a client's requests), the config's
``client_output_pause`` for a client (its replies). An update's shared connection to the
version serving carries many clients' requests: while it is past ``HIGH_WATER``, no client the
update drives is read (each is held back at its next read), until it drains. A client whose
unsent replies pass ``client_output_limit`` is closed, and so is the one with the most when all
clients' together pass ``output_budget``, as Redis closes a client past its output buffer limit:
one client that does not read must not hold the proxy's memory. What to do with the bytes read
is the subclass's (:class:`~.relay.Relay`).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from collections.abc import Callable

import trio

from twinproxy.engine.large import Spooled
from twinproxy.protocols.compiled import IO_RAISED
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

BATCHES_PER_WAKEUP = 8

# How long the loop waits on its own epoll set for the next ready socket, after a batch that
# found work, instead of going back through trio's scheduler (when trio has nothing else to run
# and no deadline closer than LINGER_DEADLINE): select.epoll.poll rounds it up to 1 ms. A trip
# through trio costs two more system calls (its epoll_wait, and epoll_ctl to watch the loop's
# epoll fd again) and about 10 us of Python, per request and per reply when one client waits
# for each reply (redis-benchmark -c 1). While the loop lingers, it goes back to trio after
# LINGER_BATCHES batches or LINGER_DEADLINE at most, or after LINGER with nothing ready.
LINGER = 0.001
LINGER_DEADLINE = 0.005
LINGER_BATCHES = 32

# How long the loop keeps polling without sleeping when a poll after a batch of one ready socket
# finds nothing (one client, or one server's reply: the next request or reply often comes within
# a few tens of microseconds), before it lingers (SINGLE mode) or goes back to trio (during an
# update). A sleep and wake-up in between cost more than that on a virtual machine (the
# wake-up's interrupt, two context switches), twice in each request's latency, and during an
# update each request has two servers' replies to wait for. Linux's net.core.busy_poll and
# KVM's halt polling spin the same way, and KVM's also shrinks when it does not pay; here a
# spin that found nothing is not tried again for a while (Loop._spin), so busy servers keep
# their CPU, and an idle proxy spends nothing on it.
SPIN = 30e-6
SPIN_BACKOFF = 63

# Pieces of a large request written per wake-up of its socket: a server that reads as fast as
# the proxy writes would otherwise keep the loop on it for the whole request.
LARGE_PIECES = 4
MAX_BUFFERS = 1024  # the buffers one sendmsg takes (IOV_MAX on Linux); the rest wait in out
SEND_PIECES = 64  # queued buffers written in one sendmsg when the socket can take more

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT


def wanted(side: Socket) -> int:
    """The epoll events a socket waits for in its state now."""
    if type(side) is ClientConn:
        reading = not (side.paused or side.held or side.eof or side.draining or side.closing
                       or side.error is not None)
        return (EPOLLIN if reading else 0) | (EPOLLOUT if side.out else 0)
    if side.connected:
        return (0 if side.paused else EPOLLIN) | (EPOLLOUT if side.out else 0)
    return EPOLLOUT  # connecting


class Loop:
    """The epoll set, the sockets in it and their output; see the module docstring."""

    # What serves a batch's sockets in the plain state in one call (SingleMode's, in C), or
    # None: each ready socket through Python (see _serve_plain).
    serve_plain: Callable[..., tuple | None] | None = None

    def __init__(self, output_pause: int = HIGH_WATER, output_limit: int = 0,
                 output_budget: int = 0) -> None:
        self.now = time.monotonic()  # the loop's clock, read once per wake-up
        self.output_pause = output_pause
        self.output_resume = output_pause // 4
        self.output_limit = output_limit
        self.output_budget = output_budget
        self.client_output = 0  # bytes waiting to be written to all clients
        # An update's shared connections to the version serving past HIGH_WATER, and the
        # clients held back meanwhile (see _hold_back).
        self.filled: set[ServerConn] = set()
        self.held_back: list[ClientConn] = []
        self._fds: dict[int, Socket | Callable[[], None]] = {}
        # Server connections dropped in a pause (see drop_link_later), closed after the batch
        # that follows it.
        self._dropped: list[socket.socket] = []
        self.by_id: dict[int, Socket] = {}  # by the id the engine knows them by
        self._ep = select.epoll()
        # Every read goes into this one buffer and is copied out at its size (recv_into, then
        # _view[:n].tobytes()). sock.recv(BUFSIZE) would allocate BUFSIZE bytes for each read
        # and shrink them: past malloc's mmap threshold that is a mapping of its own per read
        # (three system calls), and a whole page kept for a 5-byte reply for as long as the
        # bytes are held, as an update holds every request and reply for the follower.
        self._buffer = bytearray(BUFSIZE)
        self._view = memoryview(self._buffer)
        # Bytes for the metrics, one addition per read or send: clients', and the servers' by
        # role (index 0 the leader, 1 the follower).
        self.client_received = 0
        self.client_sent = 0
        self.server_received = [0, 0]
        self.server_sent = [0, 0]
        self._spin_skip = self._spin_backoff = 0  # (see _spin)

    async def _serve(self, task_status: trio.TaskStatus, started: object) -> None:
        """Service ready sockets until cancelled."""
        fds = self._fds
        poll = self._ep.poll
        epfd = self._ep.fileno()
        wait_readable = trio.lowlevel.wait_readable
        monotonic = time.monotonic
        plain = self.serve_plain
        task_status.started(started)
        while True:
            await wait_readable(epfd)
            # While the sockets keep having work, serve a few more batches before going back
            # through trio's scheduler, whose round trip costs more than a batch of one
            # request and one reply (under redis-benchmark -c 50 the next poll finds work more
            # often than not, and an empty poll costs a microsecond); the bound keeps the
            # other tasks served. When a poll finds nothing and trio has nothing else to do,
            # the loop waits for the next ready socket on its own epoll set (see LINGER).
            # After a batch of one ready socket, a poll that finds nothing is first tried again
            # for up to SPIN (see there).
            lingering = 0.0
            alone = False
            batches = BATCHES_PER_WAKEUP
            until = 0.0
            while batches:
                batches -= 1
                if lingering and self.now > until:
                    break  # (trio's deadlines, and what else it waits for, come first)
                ready = poll(0, 1024) or (self._spin(poll, monotonic) if alone else [])
                if not ready:
                    if not lingering:
                        lingering = self._linger()
                        if not lingering:
                            break
                        batches = LINGER_BATCHES
                        until = monotonic() + LINGER_DEADLINE - lingering
                    ready = poll(lingering, 1024)
                    if not ready:
                        break
                alone = len(ready) == 1
                self.now = monotonic()
                self._batch_started()
                if plain is not None and self._plain_batches():
                    self._serve_plain(plain, ready)
                else:
                    for fd, events in ready:
                        side = fds.get(fd)
                        if side is not None:
                            self._ready(side, events)
                self._batch_done()

    def _spin(self, poll: Callable[[float, int], list[tuple[int, int]]],
              monotonic: Callable[[], float]) -> list[tuple[int, int]]:
        """Poll without waiting, for up to :data:`SPIN`: the ready sockets, or [] if none was.
        After a spin that found nothing, the next 1, 3, 7 ... calls (up to SPIN_BACKOFF) return
        [] at once: under a load that keeps the servers busy for longer than a spin, what
        the loop would spin is CPU time they need."""
        if self._spin_skip:
            self._spin_skip -= 1
            return []
        end = monotonic() + SPIN
        while monotonic() < end:
            ready = poll(0, 1024)
            if ready:
                self._spin_backoff = 0
                return ready
        self._spin_skip = self._spin_backoff = min(2 * self._spin_backoff + 1, SPIN_BACKOFF)
        return []

    def _serve_plain(self, plain: Callable[..., tuple | None], ready: list[tuple[int, int]]
                     ) -> None:
        """Service a batch through ``plain`` (:attr:`serve_plain`), which serves the sockets in
        the plain state itself and stops at each that needs Python: one read it could not
        finish (the end of a stream, a read to frame, a short send), whose result goes to
        :meth:`_read_done`, or an event it left untouched, which goes to :meth:`_ready`.

        The clients' requests it reads are sent at the end of its run, in the order read,
        before anything goes back to Python (as HAProxy's stream tasks send after its poller's
        events: the requests of a batch reach the server together, and its threads are woken
        once for several; memcached's wake-ups per request behind the proxy fell from 0.72 to
        HAProxy's 0.44 to 0.53, loadtests/reports/profile.md). Those a server connection did not
        take whole come back in ``shorts`` for :meth:`_sent_short`."""
        fds = self._fds
        buffer = self._buffer
        shorts: list[tuple[ServerConn, bytes | None]] = []
        at = 0
        while True:
            stopped = plain(self, fds, ready, at, buffer, shorts)
            if shorts:
                for link, rest in shorts:
                    try:
                        self._sent_short(link, rest)
                    except Exception:
                        self._failed(link)
                shorts.clear()
            if stopped is None:
                return
            at, received, sent = stopped
            fd, events = ready[at]
            at += 1
            side = fds.get(fd)
            if side is None:
                continue
            if received is None:
                self._ready(side, events)
                continue
            try:
                if received == IO_RAISED:
                    raise sent
                self._read_done(side, received, sent)  # type: ignore[arg-type]
            except Exception:
                self._failed(side)

    def _ready(self, side: Socket | Callable[[], None], events: int) -> None:
        """Service one ready socket (or helper's fd)."""
        try:
            kind = type(side)
            if kind is ServerConn:
                if events & EPOLLOUT:
                    self._writable(side)
                if events & ~EPOLLOUT and not side.closed:
                    self._server_readable(side)
            elif kind is ClientConn:
                if events & EPOLLOUT:
                    self._writable(side)
                if events & ~EPOLLOUT and not side.closed:
                    if self.filled and side.attached and not side.held:
                        self._hold_back(side)
                    else:  # (held already: its end or an error, which epoll always reports)
                        self._client_readable(side)
            else:
                side()
        except Exception:
            self._failed(side)

    # ---- what a subclass does with the sockets ----------------------------------------------

    def _lingers(self) -> bool:
        """Whether the loop may wait on its epoll set itself for a while (see LINGER)."""
        return False

    def _plain_batches(self) -> bool:
        """Whether the next batch goes through :attr:`serve_plain`: only where most ready
        sockets are in the plain state. During an update nearly every one needs Python, and
        each return from C to Python and back cost more than the Python loop alone (memcached
        in MVE: 39.8 to 43.5 us of CPU per request against 35.2 to 37.2, matrix.md)."""
        return False

    def _linger(self) -> float:
        """How long the loop may wait on its own epoll set now: LINGER where the subclass
        allows it and trio has no task to run, no callback queued and no deadline within
        LINGER_DEADLINE (whatever else trio waits for, the control API's sockets say, waits at
        most that long); else 0."""
        if not self._lingers():
            return 0.0
        trio_side = trio.lowlevel.current_statistics()
        if (trio_side.tasks_runnable or trio_side.run_sync_soon_queue_size
                or trio_side.seconds_to_next_deadline <= LINGER_DEADLINE):
            return 0.0
        return LINGER

    def _batch_started(self) -> None:
        """Before a batch of ready sockets is serviced."""

    def _batch_done(self) -> None:
        """After a batch of ready sockets was serviced."""

    def _client_readable(self, client: ClientConn) -> None:
        raise NotImplementedError

    def _sent_short(self, link: ServerConn, rest: bytes | None) -> None:
        """Requests :attr:`serve_plain` held to the end of its run that ``link`` did not take
        whole: ``rest`` waits in its queue; None: the send failed."""
        raise NotImplementedError

    def _read_done(self, side: Socket, received: int, sent: int) -> None:
        """Finish a read :attr:`serve_plain` made (its two numbers: see relay/_io.h)."""
        raise NotImplementedError

    def _server_readable(self, link: ServerConn) -> None:
        raise NotImplementedError

    def _connected(self, link: ServerConn) -> None:
        raise NotImplementedError

    def _failed(self, side: Socket | Callable[[], None]) -> None:
        raise NotImplementedError

    def _side_failed(self, side: Socket) -> None:
        raise NotImplementedError

    def close_client(self, client: ClientConn) -> None:
        raise NotImplementedError

    def _client_backed_up(self, client: ClientConn) -> None:
        """A client's unsent replies passed ``client_output_pause`` (once, until they drain)."""

    # ---- the epoll set ----------------------------------------------------------------------

    def _register(self, side: Socket) -> None:
        """Watch a new socket for the events it waits for already (:func:`wanted`)."""
        self._fds[side.fd] = side
        self.by_id[side.id] = side
        side.mask = mask = wanted(side)
        self._ep.register(side.fd, mask)

    def _register_fd(self, fd: int, callback: Callable[[], None]) -> None:
        self._fds[fd] = callback
        self._ep.register(fd, EPOLLIN)

    def _unregister_fd(self, fd: int) -> None:
        self._fds.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(fd)

    def watch_fd(self, fd: int, callback: Callable[[], None], mask: int) -> None:
        """Call ``callback`` whenever ``fd`` is ready for ``mask`` (or has an error): the
        sockets of the relay's helpers (data channels), which keep their own state."""
        self._fds[fd] = callback
        self._ep.register(fd, mask)

    def modify_fd(self, fd: int, mask: int) -> None:
        """Watch a helper's ``fd`` for ``mask`` from now on."""
        self._ep.modify(fd, mask)

    def unwatch_fd(self, fd: int) -> None:
        """Stop watching a helper's ``fd`` (before it is closed)."""
        self._unregister_fd(fd)

    def receive(self, sock: socket.socket) -> bytes | None:
        """What ``sock`` has to read, through the loop's one read buffer: None when nothing
        is there yet, ``b""`` at its end.

        Raises:
            OSError: the connection failed (reset, say).
        """
        try:
            n = sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return None
        return self._view[:n].tobytes()

    def refresh(self, side: Socket) -> None:
        """Set the epoll mask to what the socket needs now."""
        if side.closed:
            return
        mask = wanted(side)
        if mask != side.mask:
            side.mask = mask
            self._ep.modify(side.fd, mask)

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

    # ---- closing ---------------------------------------------------------------------------

    def close_after_output(self, client: ClientConn) -> None:
        if client.out:
            client.closing = True
            self.refresh(client)
        else:
            self.close_client(client)

    def drop_link(self, link: ServerConn) -> None:
        """Close a server connection (what waits to be written to it is dropped)."""
        if link.closed:
            return
        link.closed = True
        self._fds.pop(link.fd, None)  # (closing the socket takes it out of the epoll set)
        self.by_id.pop(link.id, None)
        link.sock.close()
        if link in self.filled:
            self._unfilled(link)
        client = link.client
        if client is not None and client.link is link:
            client.link = None

    def drop_link_later(self, link: ServerConn) -> None:
        """Drop a server connection as :meth:`drop_link` does, but close its socket only after
        the loop's next batch (:meth:`close_dropped`).

        For the end of an update, where every old connection goes at once while clients wait:
        on loopback a close runs the peer's side of the TCP teardown in the caller and wakes
        the server, which on a busy machine can take the CPU away in the middle of the pause
        (53 closes measured 2 to 110 ms). Nothing is read from the connection from now on (the
        loop skips a descriptor it does not know); closing it later takes it out of the epoll
        set too, so that costs no system call now."""
        if link.closed:
            return
        link.closed = True
        self._fds.pop(link.fd, None)
        self.by_id.pop(link.id, None)
        self._dropped.append(link.sock)
        if link in self.filled:
            self._unfilled(link)
        client = link.client
        if client is not None and client.link is link:
            client.link = None

    def close_dropped(self) -> None:
        """Close the sockets :meth:`drop_link_later` left open."""
        dropped, self._dropped = self._dropped, []
        for sock in dropped:
            sock.close()

    def _close_socket(self, client: ClientConn) -> None:
        client.closed = True
        self.client_output -= client.out_size
        client.out_size = 0
        client.out.clear()
        self._fds.pop(client.fd, None)  # (closing the socket takes it out of the epoll set)
        self.by_id.pop(client.id, None)
        client.sock.close()
