"""The relay's sockets: one client connection, one server connection, and what waits to be
written to each.

Every socket has an id from :func:`twinproxy.engine.events.new_id`, the name the engine knows it
by during an update. A server connection belongs either to the relay (SINGLE mode: it forwards
the bytes as they come) or, during an update, to the engine (``engine``: its bytes go to the
engine, which says what to do with them).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twinproxy.engine.events import new_id
from twinproxy.protocols.channels import Toward

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.protocols import ReplyReader, Request, RequestReader
    from twinproxy.protocols.channels import DataChannels
    from twinproxy.spool import Spool

BUFSIZE = 256 * 1024
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024


class Socket:
    """One non-blocking socket of the relay, with what waits to be written to it."""

    __slots__ = ("closed", "closing", "fd", "id", "mask", "out", "out_size", "paused", "sock")

    def __init__(self, sock: socket.socket, conn_id: int | None = None):
        self.sock = sock
        self.fd = sock.fileno()
        self.id = new_id() if conn_id is None else conn_id
        self.out: deque[memoryview | bytes] = deque()
        self.out_size = 0
        self.mask = 0
        self.paused = False  # not read, because what it sends cannot be delivered yet
        self.closing = False  # close once ``out`` is written
        self.closed = False


class ServerConn(Socket):
    """A connection to a version of the service.

    ``replies`` is the reply reader, or None while the connection's replies are not framed
    (SINGLE mode, plain state); then ``sentinel`` is the sentinel reply awaited, if any, and
    ``carry`` the bytes held back because they may be the start of it. ``answering`` counts the
    requests sent whose reply the client gets replaced (``Request.answer``), ``counting`` those
    whose reply the client gets without the proxy's own requests in the counts it shows
    (``Codec.counts_requests``), and ``ahead`` the bytes of the reply in progress that went to
    the client before the first of either was sent. ``counted``: the awaited sentinel is one
    the server counts as a command it ran (``Backend.sentinels``).
    """

    __slots__ = ("ahead", "answering", "backend", "carry", "client", "connected", "counted",
                 "counting", "deadline", "engine", "inflight", "kept", "replies", "role",
                 "scripts", "scripts_before", "sentinel", "shut")

    def __init__(self, sock: socket.socket, client: ClientConn | None, backend: Backend,
                 replies: ReplyReader | None, conn_id: int | None = None, role: int = 0):
        super().__init__(sock, conn_id)
        self.client = client  # None: an update's shared connection
        self.backend = backend
        self.replies = replies
        # While replies go unframed: what a new reader must know of the connection
        # (Codec.framing_kept; None: nothing).
        self.kept: object = None
        self.role = role  # 0: the leader (the version serving), 1: an update's follower
        self.engine = False  # during an update, its bytes go to the engine
        self.connected = False
        self.deadline = 0.0
        self.sentinel = b""
        self.carry = b""
        self.shut = False  # pass the client's end of input on once ``out`` is written
        self.inflight: deque[Request] = deque()  # SINGLE, framed replies: requests unanswered
        self.answering = 0
        self.counting = 0
        self.counted = False
        self.ahead = 0
        # Requests sent that may make the server refuse others while they run (scripts), since
        # they were last known answered; how many of them the awaited sentinel follows.
        self.scripts = 0
        self.scripts_before = 0


class ClientConn(Socket):
    """A client connection and everything the relay knows about it."""

    __slots__ = (
        "after_value",
        "attached",
        "backed_up",
        "blocking",
        "channels",
        "down",
        "draining",
        "eof",
        "error",
        "forwarded",
        "held",
        "host",
        "last_active",
        "leaving",
        "link",
        "listener",
        "opaque",
        "peer",
        "reader",
        "session",
        "spool",
        "waiters",
    )

    def __init__(self, sock: socket.socket, reader: RequestReader, peer: str, host: str = ""):
        super().__init__(sock)
        self.reader = reader
        self.peer = peer
        self.host = host  # the peer's address alone
        # The protocol's data channels (FTP), and the endpoint waiting for one (relay.pipes).
        self.channels: DataChannels | None = None
        self.listener: Listener | None = None
        self.link: ServerConn | None = None
        self.session: list[Request] = []  # session-changing requests, for a later replay
        self.down: ReplyReader | None = None  # set while its server is unavailable
        self.forwarded = False  # requests went out since replies were last known settled
        # What waits for the end of a request whose large value is passing through.
        self.after_value: list[Callable[[], object]] = []
        # During an update: where the large request coming in is written (twinproxy.spool).
        self.spool: Spool | None = None
        # Called after the replies that come (each returns True when it is done waiting).
        self.waiters: list[Callable[[], bool]] = []
        self.attached = False  # the engine of an update drives it
        self.backed_up = False  # its unsent replies passed client_output_pause
        self.held = False  # not read while an update's shared connection is full (Loop.filled)
        self.blocking = False  # the last request may wait for another client (BLPOP ...)
        self.eof = False  # the client closed its side
        self.error: bytes | None = None  # a protocol error to send, then close
        self.draining = False
        # Its session became bytes the proxy cannot read (FTP after AUTH TLS, passthrough):
        # relayed as they come, served by its version alone, never handed to an update.
        self.opaque = False
        # During an update: its session leaves the engine for the leader alone (FTP's AUTH TLS,
        # passthrough); not read until the engine hands it back (see events.Leave).
        self.leaving = False
        self.last_active = 0.0


class Listener:
    """An endpoint waiting for the one connection of a data channel."""

    __slots__ = ("accept_from", "owner", "setup", "sock", "target", "toward")

    def __init__(self, sock: socket.socket, accept_from: str, target: tuple[str, int],
                 owner: ClientConn, toward: Toward = Toward.CLIENT, setup: bytes = b""):
        self.sock = sock
        self.accept_from = accept_from
        self.target = target
        self.owner = owner
        self.toward = toward
        # The request that set the channel up (PASV, PORT ...), as the client sent it: an
        # update that begins before the channel is used gives it to the new version too
        # (relay.mirror.Mirror.adopt).
        self.setup = setup
