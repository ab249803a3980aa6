"""Data channels during an update: each transfer carried for the client by the leader, and run
again on the follower, whose half is only digested.

The engine (:mod:`twinproxy.engine.transfers`) decides which messages open a channel and pairs
the two versions' halves under one id; this module does their I/O on the dispatch loop's epoll
set, as :mod:`.pipes` does in SINGLE mode:

* **The leader's half** is a pipe between the client and the leader, as in SINGLE mode:
  passive, the proxy listens toward the client and connects on to the leader's data port;
  active, it listens toward the leader and connects on to the client's port. It is read only
  while what it sent waits nowhere (one read per direction at most), so memory is bounded and a
  slow reader slows the writer. What the leader sends is digested as it passes (its size, a
  running digest, and its first bytes when they are few: a listing, for the rules).
* **The follower's half**: passive, the proxy connects to the port the follower's own reply
  named, once the client used the channel; active, it listens for the follower. What the
  follower sends is read as it comes and only digested, never held. What the client sends
  (an upload) is written to a file as it passes to the leader, and from that file to the
  follower, which runs behind the leader (it gets the upload's command once the leader has
  answered it): disk, not memory, holds the difference, and the client never waits for the
  follower. The file is emptied whenever the follower has all of it, so it holds what the
  follower lags behind; past ``[update] max_spool_bytes`` for all uploads together, or when it
  cannot be written (a full disk), the update fails and the follower's half is dropped: the
  client's upload goes on with the leader, unharmed.
* Each half reports its end to the engine (:class:`~twinproxy.engine.events.Transferred`),
  which compares.

When the update ends with a channel opened but not used yet, it goes on with the version that
serves from then on: on a rollback the leader's half stays as it is; on a cutover the channel
is pointed at the follower's half (passive: its data port; active: the endpoint the follower
was told), and a client connection already accepted but with nothing sent either way is
connected on there instead. A transfer under way at the end completes with the leader (the
lifecycle's barrier waits for transfers in progress before a cutover, so this is a rollback's
case); the follower's half is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import tempfile
from collections.abc import Callable

from twinproxy.engine.commands import FOLLOWER, LEADER
from twinproxy.engine.events import Transferred, new_id
from twinproxy.protocols.channels import OpenChannel, Toward, same_host
from twinproxy.protocols.messages import ProtocolError
from twinproxy.relay.connections import BUFSIZE, ClientConn, Listener, ServerConn
from twinproxy.relay.loop import EPOLLIN, EPOLLOUT, Loop
from twinproxy.relay.mirrored import Half, Mirrored
from twinproxy.relay.pipes import DataPipes, End, refresh_pair

log = logging.getLogger("twinproxy.relay")

class Mirror:
    """The data channels of the update in progress (one per relay; idle in SINGLE mode).

    Args:
        loop: the relay's loop, which watches the sockets.
        pipes: SINGLE mode's pipes (whose listener slot on each client this shares).
    """

    def __init__(self, loop: Loop, pipes: DataPipes):
        self.loop = loop
        self.pipes = pipes
        self.channels: dict[int, Mirrored] = {}
        self.report: Callable[[Transferred], None] | None = None  # the engine, while it runs
        self.spool_limit = 0  # max_spool_bytes of the update that runs
        self.spooled = 0  # bytes in the follower's upload files, all channels together
        self._fail: Callable[[str], None] | None = None
        pipes.forget = self._forget

    def budget(self, limit: int, fail: Callable[[str], None]) -> None:
        """The update that begins allows ``limit`` bytes of uploads waiting for the follower on
        disk; past them (or a full disk) it is failed with ``fail(reason)``."""
        self.spool_limit, self._fail = limit, fail

    # ---- opening (the engine's OpenData) --------------------------------------------------

    def open(self, client: ClientConn, link: ServerConn, role: int, channel: int,
             opens: OpenChannel) -> bytes | None:
        """Carry one half of channel ``channel``; the message to send or deliver in place of
        the one that opened it (None: nothing to send, or ``opens.failed`` when no endpoint
        can be opened)."""
        try:
            server_host = link.sock.getpeername()[0]
        except OSError:
            return opens.failed if role == LEADER or opens.toward is Toward.SERVER else None
        if role == LEADER:
            self._sweep()
            self.pipes.close_listener(client)
            passive = opens.toward is Toward.CLIENT
            target = (server_host, opens.target[1]) if passive else opens.target
            mirrored = Mirrored(channel, client, passive, target)
            side = client.sock if passive else link.sock
            sock, message = self._listen(client, side, opens)
            if sock is None:
                return opens.failed
            mirrored.sock = sock
            mirrored.accept_from = side.getpeername()[0]
            client.listener = mirrored  # type: ignore[assignment]
            self.channels[channel] = mirrored
            self.loop.watch_fd(sock.fileno(), lambda: self._accept(mirrored), EPOLLIN)
            return message
        mirrored = self.channels.get(channel)
        if opens.toward is Toward.CLIENT:  # the follower's 227: where its half connects to
            if mirrored is not None and mirrored.follow:
                mirrored.follower_target = (server_host, opens.target[1])
                if mirrored.used:
                    self._connect_follower(mirrored)
            return None
        sock, message = self._listen(client, link.sock, opens)
        if sock is None:
            return opens.failed
        if mirrored is None or not mirrored.follow:
            sock.close()  # (a channel dropped meanwhile: the follower's connection is refused)
            return message
        mirrored.follower_listener = sock
        mirrored.follower_from = server_host
        self.loop.watch_fd(sock.fileno(), lambda: self._accept_follower(mirrored), EPOLLIN)
        return message

    def adopt(self, client: ClientConn) -> tuple[int, bytes] | None:
        """At the sync point: the client's data channel set up in SINGLE mode and not used
        yet (an endpoint waiting, or a passive connection accepted that nothing went through)
        becomes a channel of the update, its leader's half as it is, so that the follower can
        be given its setup too (the client's transfer command may come after the sync point).
        Returns the channel's id and the request that set it up, or None."""
        listener = client.listener
        if type(listener) is Listener and listener.setup:
            m = Mirrored(new_id(), client, listener.toward is Toward.CLIENT, listener.target)
            m.sock, m.accept_from = listener.sock, listener.accept_from
            fd = m.sock.fileno()
            self.loop.unwatch_fd(fd)
            self.loop.watch_fd(fd, lambda: self._accept(m), EPOLLIN)
            client.listener = m  # type: ignore[assignment]
            self.channels[m.channel] = m
            return m.channel, listener.setup
        pipes = self.pipes.pipes
        for pipe in pipes:
            listener = pipe.listener
            accepted, dialled = pipe.ends
            if listener.owner is not client or listener.toward is not Toward.CLIENT or \
                    pipe.relayed or accepted.eof or dialled.eof or not listener.setup:
                continue
            pipes.discard(pipe)
            m = Mirrored(new_id(), client, True, listener.target)
            m.client_end, m.leader_end = accepted, dialled
            m.used = True
            for end in pipe.ends:
                self.loop.unwatch_fd(end.fd)
                self.loop.watch_fd(end.fd, lambda m=m: self._ready(m), 0)
            self.channels[m.channel] = m
            self._refresh(m)
            return m.channel, listener.setup
        return None

    def nowhere(self, link: ServerConn, opens: OpenChannel) -> bytes:
        """A PORT/EPRT for ``link`` naming an endpoint of the proxy that is closed at once: a
        connection to it is refused (``opens.failed`` when none can be opened)."""
        try:
            sock, host, port = self.pipes.endpoints.listen(link.sock, opens.toward)
        except (OSError, ValueError):
            return opens.failed
        try:
            return opens.rewrite(host, port)
        except ProtocolError:
            return opens.failed
        finally:
            sock.close()

    def owner(self, channel: int) -> ClientConn | None:
        """The client of ``channel`` (it may have closed since)."""
        m = self.channels.get(channel)
        return m.owner if m is not None else None

    def _listen(self, client: ClientConn, side: socket.socket,
                opens: OpenChannel) -> tuple[socket.socket | None, bytes]:
        try:  # (where and on which port: as in SINGLE mode, relay.endpoints)
            sock, host, port = self.pipes.endpoints.listen(side, opens.toward)
        except (OSError, ValueError) as exc:
            self.pipes.no_endpoint.note(f"client {client.peer}: {exc}")
            return None, b""
        try:
            return sock, opens.rewrite(host, port)
        except ProtocolError as exc:
            sock.close()
            log.warning("client %s: cannot open a data endpoint: %s", client.peer, exc)
            return None, b""

    # ---- accepting and connecting -----------------------------------------------------------

    def _take(self, sock: socket.socket, accept_from: str,
              owner: ClientConn) -> socket.socket | None:
        try:
            conn, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            log.warning("client %s: data endpoint: %s", owner.peer, exc)
            return None
        if accept_from and not same_host(addr[0], accept_from):
            self.pipes.refused += 1
            log.warning("client %s: refused a data connection from %s (expected %s)",
                        owner.peer, addr[0], accept_from)
            conn.close()
            return None
        conn.setblocking(False)
        return conn

    def _accept(self, m: Mirrored) -> None:
        if m.sock is None:
            return
        conn = self._take(m.sock, m.accept_from, m.owner)
        if conn is None:
            return
        self._close_endpoint(m)
        m.used = True
        outbound = self._dial(m.target, m.owner)
        if outbound is None:
            conn.close()
            self._drop(m)
            return
        accepted, dialled = End(conn, True), End(outbound, False)
        m.client_end, m.leader_end = (accepted, dialled) if m.passive else (dialled, accepted)
        for end in (accepted, dialled):
            self.loop.watch_fd(end.fd, lambda: self._ready(m), 0)
        if m.follower_target is not None and m.follow:
            self._connect_follower(m)
        self._refresh(m)

    def _accept_follower(self, m: Mirrored) -> None:
        sock = m.follower_listener
        if sock is None:
            return
        conn = self._take(sock, m.follower_from, m.owner)
        if conn is None:
            return
        self.loop.unwatch_fd(sock.fileno())
        sock.close()
        m.follower_listener = None
        m.follower_end = End(conn, True)
        self.loop.watch_fd(m.follower_end.fd, lambda: self._ready(m), 0)
        self._refresh(m)

    def _connect_follower(self, m: Mirrored) -> None:
        if m.follower_end is not None or m.follower_target is None:
            return
        sock = self._dial(m.follower_target, m.owner)
        if sock is None:
            self._report(m, FOLLOWER)  # (its final reply tells what went wrong)
            return
        m.follower_end = End(sock, False)
        self.loop.watch_fd(m.follower_end.fd, lambda: self._ready(m), 0)
        self._refresh(m)

    @staticmethod
    def _dial(target: tuple[str, int], owner: ClientConn) -> socket.socket | None:
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET,
                                 socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("client %s: cannot connect a data channel: %s", owner.peer, exc)
            return None
        sock.setblocking(False)
        code = sock.connect_ex(target)
        if code not in (0, errno.EINPROGRESS):
            log.warning("client %s: data channel to %s:%d: %s", owner.peer, *target,
                        errno.errorcode.get(code, code))
            sock.close()
            return None
        return sock

    # ---- relaying ---------------------------------------------------------------------------

    def _ready(self, m: Mirrored) -> None:
        """A socket of ``m`` is ready: move what can move, on both halves."""
        if m.client_end is not None:
            try:
                self._leader_half(m)
            except OSError:
                m.cut = True
                self._end_leader_half(m)
        if m.follower_end is not None:
            try:
                self._follower_half(m)
            except OSError:
                self._end_follower_half(m)
        if self._done(m):
            self._drop(m)
            return
        self._refresh(m)

    @staticmethod
    def _connected(end: End) -> bool:
        if end.connected:
            return True
        code = end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, errno.errorcode.get(code, str(code)))
        try:
            end.sock.getpeername()
        except OSError:
            return False
        end.connected = True
        return True

    def _leader_half(self, m: Mirrored) -> None:
        client, leader = m.client_end, m.leader_end
        if not (self._connected(client) and self._connected(leader)):
            return
        DataPipes._flush(client)
        DataPipes._flush(leader)
        loop = self.loop
        if not client.eof and not leader.out:  # the client's bytes: to the leader, and aside
            data = loop.receive(client.sock)
            if data == b"":
                client.eof = True
                m.spool_done = True
            elif data is not None:
                m.moved += len(data)
                leader.out.append(data)
                DataPipes._flush(leader)
                if m.follow:
                    self._keep(m, data)
        if not leader.eof and not client.out:  # the leader's bytes: to the client, digested
            data = loop.receive(leader.sock)
            if data == b"":
                leader.eof = True
                self._report(m, LEADER)
            elif data is not None:
                m.moved += len(data)
                m.halves[LEADER].add(data)
                client.out.append(data)
                DataPipes._flush(client)
        for end, other in ((client, leader), (leader, client)):
            if end.eof and not other.out and not other.shut:
                other.shut = True
                other.sock.shutdown(socket.SHUT_WR)

    def _keep(self, m: Mirrored, data: bytes) -> None:
        """The client's bytes, aside for the follower; a fault here fails the update, never the
        client's upload (the leader's half goes on as it is)."""
        if self.spooled + len(data) > self.spool_limit:
            self._spool_failed(m, f"the follower's copies of uploads passed max_spool_bytes = "
                                  f"{self.spool_limit} (the follower fell that far behind)")
            return
        try:
            if m.spool is None:
                # closed with the follower's half (_end_follower_half)
                m.spool = tempfile.TemporaryFile(  # noqa: SIM115
                    prefix="twinproxy-upload-", buffering=0)
            fd, view, written = m.spool.fileno(), memoryview(data), 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], m.spool_size + written)
        except OSError as exc:
            self._spool_failed(m, f"an upload's copy for the follower could not be written to "
                                  f"disk: {exc}")
            return
        m.spool_size += len(data)
        self.spooled += len(data)

    def _spool_failed(self, m: Mirrored, reason: str) -> None:
        log.warning("client %s: %s; the update fails, the upload goes on", m.owner.peer, reason)
        if self._fail is not None:
            self._fail(reason)  # (first: the follower's cut transfer is not the reason)
        self._drop_follower(m)

    def _follower_half(self, m: Mirrored) -> None:
        end = m.follower_end
        if not self._connected(end):
            return
        DataPipes._flush(end)
        if not end.out and m.spool_sent < m.spool_size:
            chunk = os.pread(m.spool.fileno(), min(BUFSIZE, m.spool_size - m.spool_sent),
                             m.spool_sent)
            m.spool_sent += len(chunk)
            end.out.append(chunk)
            DataPipes._flush(end)
            if m.spool_sent == m.spool_size:  # the follower has it all: the file starts over
                m.spool.truncate(0)
                self.spooled -= m.spool_size
                m.spool_size = m.spool_sent = 0
        if m.spool_done and not end.out and m.spool_sent == m.spool_size and not end.shut:
            end.shut = True
            end.sock.shutdown(socket.SHUT_WR)
        if not end.eof:
            data = self.loop.receive(end.sock)
            if data == b"":
                end.eof = True
                self._report(m, FOLLOWER)
            elif data is not None:
                m.halves[FOLLOWER].add(data)

    def _report(self, m: Mirrored, role: int) -> None:
        half = m.halves[role]
        if half.reported:
            return
        half.reported = True
        report = self.report
        if report is not None and (m.follow or role == LEADER):
            head = bytes(half.head) if half.head is not None else None
            report(Transferred(m.channel, role, half.size, half.hasher.digest(), head,
                               m.cut and role == LEADER))

    def _done(self, m: Mirrored) -> bool:
        client, leader, follower = m.client_end, m.leader_end, m.follower_end
        if client is not None and client.eof and leader.eof and client.shut and leader.shut:
            self._end_leader_half(m)
        if follower is not None and follower.eof and (follower.shut or not m.follow):
            self._end_follower_half(m)
        leader_over = m.sock is None and m.client_end is None
        follower_over = not m.follow or (m.follower_end is None and m.halves[FOLLOWER].reported)
        return leader_over and follower_over

    def _end_leader_half(self, m: Mirrored) -> None:
        if m.client_end is not None:
            self._report(m, LEADER)
        m.spool_done = True  # (what the follower gets of an upload cut short)
        for end in (m.client_end, m.leader_end):
            if end is not None:
                self._close_end(end)
        m.client_end = m.leader_end = None

    def _end_follower_half(self, m: Mirrored) -> None:
        if m.follower_end is not None:
            self._report(m, FOLLOWER)
            self._close_end(m.follower_end)
            m.follower_end = None
        if m.spool is not None:
            m.spool.close()
            m.spool = None
            self.spooled -= m.spool_size
            m.spool_size = m.spool_sent = 0

    def _close_end(self, end: End) -> None:
        if end.watched:
            end.watched = False
            self.loop.unwatch_fd(end.fd)
        with contextlib.suppress(OSError):
            end.sock.close()
        end.out.clear()

    def _refresh(self, m: Mirrored) -> None:
        client, leader, follower = m.client_end, m.leader_end, m.follower_end
        if client is not None:
            refresh_pair(self.loop, client, leader)
        if follower is not None and follower.watched:
            if not follower.connected:
                mask = EPOLLOUT
            else:
                writing = follower.out or m.spool_sent < m.spool_size or (
                    m.spool_done and not follower.shut)
                mask = (0 if follower.eof else EPOLLIN) | (EPOLLOUT if writing else 0)
            self.loop.modify_fd(follower.fd, mask)

    # ---- closing ----------------------------------------------------------------------------

    def _close_endpoint(self, m: Mirrored) -> None:
        if m.owner.listener is m:  # type: ignore[comparison-overlap]
            m.owner.listener = None
        if m.sock is not None:
            self.loop.unwatch_fd(m.sock.fileno())
            with contextlib.suppress(OSError):
                m.sock.close()
            m.sock = None

    def _drop(self, m: Mirrored) -> None:
        """Close everything of ``m``."""
        self._close_endpoint(m)
        self._end_leader_half(m)
        self._drop_follower(m)
        self.channels.pop(m.channel, None)

    def _drop_follower(self, m: Mirrored) -> None:
        m.follow = False
        if m.follower_listener is not None:
            self.loop.unwatch_fd(m.follower_listener.fileno())
            m.follower_listener.close()
            m.follower_listener = None
        self._end_follower_half(m)

    def _forget(self, listener: object) -> None:
        """The client's endpoint was closed from outside (the client closed, or it asked for
        another channel): a channel not used yet goes with it."""
        if isinstance(listener, Mirrored) and listener.client_end is None:
            self._drop(listener)

    def _sweep(self) -> None:
        """Forget channels whose endpoint was closed from outside (the client closed, or a
        later channel replaced it) before they were used."""
        for m in list(self.channels.values()):
            if m.client_end is None and m.sock is not None and m.sock.fileno() < 0:
                m.sock = None
                self._drop(m)

    def close_all(self) -> None:
        """Close every channel (the relay stops)."""
        for m in list(self.channels.values()):
            self._drop(m)

    # ---- the end of the update ----------------------------------------------------------

    def end(self, cutover: bool) -> None:
        """The update is over (see the module docstring): channels not used yet go on with the
        version that serves; the follower's halves of the others are dropped."""
        self.report = None
        self._sweep()
        for m in list(self.channels.values()):
            if cutover and m.moved == 0 and m.follow and self._retarget(m):
                continue
            self._drop_follower(m)
            if self._done(m):
                self._drop(m)

    def reverse(self) -> None:
        """The roles swap at a barrier (``after_cutover = "keep-old"``, and back): a channel
        nothing went through yet swaps its halves, so that the version leading from now on
        carries the client's transfer. (The barrier waited for the transfers under way, so the
        others are over.)"""
        self._sweep()
        for m in list(self.channels.values()):
            if m.moved or not m.follow:
                continue
            if m.passive:
                if m.follower_target is None:
                    continue
                if m.leader_end is not None and m.follower_end is None:
                    continue  # (not after a 227 from both: the follower's half was connected)
                m.target, m.follower_target = m.follower_target, m.target
                m.leader_end, m.follower_end = m.follower_end, m.leader_end
            else:
                if m.sock is None or m.follower_listener is None:
                    continue
                self.loop.unwatch_fd(m.sock.fileno())
                self.loop.unwatch_fd(m.follower_listener.fileno())
                m.sock, m.follower_listener = m.follower_listener, m.sock
                m.accept_from, m.follower_from = m.follower_from, m.accept_from
                self.loop.watch_fd(m.sock.fileno(), lambda m=m: self._accept(m), EPOLLIN)
                self.loop.watch_fd(m.follower_listener.fileno(),
                                   lambda m=m: self._accept_follower(m), EPOLLIN)
                m.owner.listener = m  # type: ignore[assignment]
            m.halves = (Half(), Half())
            if m.client_end is not None:
                self._refresh(m)

    def _retarget(self, m: Mirrored) -> bool:
        """A cutover: point a channel nothing went through yet at the follower's half."""
        if m.passive:
            if m.follower_target is None:
                return False
            m.target = m.follower_target
            if m.leader_end is not None:  # accepted already: connect it on there instead
                self._close_end(m.leader_end)
                # The follower's half is connected there already (and first in the follower's
                # queue of connections to accept): it becomes the channel's.
                m.leader_end, m.follower_end = m.follower_end, None
                if m.leader_end is None:
                    outbound = self._dial(m.target, m.owner)
                    if outbound is None:
                        self._drop(m)
                        return True
                    m.leader_end = End(outbound, False)
                    self.loop.watch_fd(m.leader_end.fd, lambda: self._ready(m), 0)
                m.halves = (Half(), Half())
        else:
            if m.follower_listener is None or m.leader_end is not None:
                return False
            self._close_endpoint(m)
            m.sock, m.follower_listener = m.follower_listener, None
            m.accept_from = m.follower_from
            self.loop.unwatch_fd(m.sock.fileno())
            self.loop.watch_fd(m.sock.fileno(), lambda: self._accept(m), EPOLLIN)
            m.owner.listener = m  # type: ignore[assignment]
        m.follow = False
        if m.follower_end is not None:
            self._close_end(m.follower_end)
            m.follower_end = None
        if m.client_end is not None:
            self._refresh(m)
        return True
