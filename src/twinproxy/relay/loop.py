"""The dispatch loop: one trio task over an epoll set, and the sockets in it.

How this works. One task (:meth:`Loop.run`) owns an epoll set that holds the listener and every
client and server socket, all non-blocking. It waits until the epoll fd is readable
(``trio.lowlevel.wait_readable``), then services the ready sockets in the order the kernel reports
them. Two things follow from that, and both are why the loop is built this way instead of as one
task per direction per connection:

* Requests are forwarded in arrival order. Trio may run the tasks it wakes together in reverse
  order, which would let one client's request overtake another's sent just before it.
* One scheduler round trip serves every ready socket, instead of one per message.

Output that a peer does not take at once, and the flow control that bounds it, are
:class:`~.output.Output`'s, which :class:`Loop` is built on. What to do with the bytes read is
the subclass's (:class:`~.relay.Relay`).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from collections.abc import Callable

import trio

from twinproxy.protocols.compiled import IO_RAISED
from twinproxy.relay.connections import BUFSIZE, HIGH_WATER, ClientConn, ServerConn, Socket
from twinproxy.relay.output import EPOLLIN, EPOLLOUT, Output

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


def wanted(side: Socket) -> int:
    """The epoll events a socket waits for in its state now."""
    if type(side) is ClientConn:
        reading = not (side.paused or side.held or side.eof or side.draining or side.closing
                       or side.error is not None)
        return (EPOLLIN if reading else 0) | (EPOLLOUT if side.out else 0)
    if side.connected:
        return (0 if side.paused else EPOLLIN) | (EPOLLOUT if side.out else 0)
    return EPOLLOUT  # connecting


class Loop(Output):
    """The epoll set and the sockets in it (their output: :class:`~.output.Output`); see the
    module docstring."""

    # What serves a batch's sockets in the plain state in one call (SingleMode's, in C), or
    # None: each ready socket through Python (see _serve_plain).
    serve_plain: Callable[..., tuple | None] | None = None

    def __init__(self, output_pause: int = HIGH_WATER, output_limit: int = 0,
                 output_budget: int = 0) -> None:
        super().__init__(output_pause, output_limit, output_budget)
        self.now = time.monotonic()  # the loop's clock, read once per wake-up
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
        # Bytes for the metrics, one addition per read: clients', and the servers' by role
        # (index 0 the leader, 1 the follower); the sends' are Output's.
        self.client_received = 0
        self.server_received = [0, 0]
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

    def _failed(self, side: Socket | Callable[[], None]) -> None:
        raise NotImplementedError

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

    # ---- closing ---------------------------------------------------------------------------

    def close_after_output(self, client: ClientConn) -> None:
        if client.out:
            client.closing = True
            self.refresh(client)
        else:
            self.close_client(client)

    def drop_link(self, link: ServerConn) -> None:
        """Close a server connection (what waits to be written to it is dropped)."""
        if not link.closed:
            self._forget_link(link)
            link.sock.close()  # (which takes it out of the epoll set)

    def drop_link_later(self, link: ServerConn) -> None:
        """Drop a server connection as :meth:`drop_link` does, but close its socket only after
        the loop's next batch (:meth:`close_dropped`).

        For the end of an update, where every old connection goes at once while clients wait:
        on loopback a close runs the peer's side of the TCP teardown in the caller and wakes
        the server, which on a busy machine can take the CPU away in the middle of the pause
        (53 closes measured 2 to 110 ms). Nothing is read from the connection from now on (the
        loop skips a descriptor it does not know); closing it later takes it out of the epoll
        set too, so that costs no system call now."""
        if not link.closed:
            self._forget_link(link)
            self._dropped.append(link.sock)

    def _forget_link(self, link: ServerConn) -> None:
        """A server connection that closes: nothing reads it, writes to it or waits for it
        to drain from now on."""
        link.closed = True
        self._fds.pop(link.fd, None)
        self.by_id.pop(link.id, None)
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
