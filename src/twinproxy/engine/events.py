"""What goes into the engine: events, each a small record (not changed once made; not frozen,
because a frozen dataclass costs three times as much to make, and the relay makes several per
read).

The relay (the dispatch loop) turns what happens on its sockets into these, and the update's
lifecycle turns its decisions into the control events at the bottom. Connections and clients are
plain integers the relay or the engine took from :func:`new_id`; the engine never sees a socket.

Every event is handled by :meth:`twinproxy.engine.Engine.handle`, which returns the commands
(:mod:`twinproxy.engine.commands`) the relay must carry out, in order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twinproxy.compare import Comparator
    from twinproxy.protocols import ReplyReader, Request

new_id = itertools.count(1).__next__
"""A fresh id for a client or a server connection: one sequence for the relay and the engine,
so that a connection the engine opens never takes an id the relay gave."""


class Event:
    """Base of every event (the relay dispatches on the exact type)."""

    __slots__ = ()


# ---- from the relay ------------------------------------------------------------------------


@dataclass(slots=True)
class Begin(Event):
    """The update begins (the engine is in its first barrier): open the shared connection to
    the leader, if the protocol has one."""


@dataclass(slots=True)
class Tick(Event):
    """The current time (seconds on a monotonic clock): sent as each of the loop's batches
    starts (at most once a millisecond), before each event of the lifecycle's, and twice a
    second by the relay's housekeeping (the follower's health is checked on it while no client
    sends). ``wall``: the same moment on the wall clock (seconds since the epoch; 0: unknown),
    for what the servers keep as wall clock time (an expiry a client set relative to its
    request's time)."""

    now: float
    wall: float = 0.0


@dataclass(slots=True)
class Attach(Event):
    """A client joins the update at a reply boundary: every reply it was owed has been
    delivered, except to ``blocked``, the requests still waiting in the leader (a blocking
    command and whatever was pipelined after it).

    ``conn`` is its connection to the leader (``connected`` false while it is being opened, for
    a client that arrived during the update) and ``replies`` the reader framing that
    connection's replies, which the engine owns until it hands the client back. ``session`` is
    the client's session so far (SELECT, AUTH, HELLO ...), to give its follower connection.
    """

    client: int
    peer: str
    conn: int
    replies: ReplyReader
    session: tuple[Request, ...] = ()
    blocked: tuple[Request, ...] = ()
    connected: bool = True
    host: str = ""  # the client's address alone, for the protocol's data channels
    # A data channel set up before the sync point and not used yet (see engine.transfers):
    # its id, and the request that set it up, which the follower gets after its session.
    channel: int = 0
    setup: bytes = b""


@dataclass(slots=True)
class Requests(Event):
    """Complete requests a client sent, in order."""

    client: int
    requests: list[Request]


@dataclass(slots=True)
class Leave(Event):
    """The client's session goes on with the leader alone from ``held`` on, requests the
    engine must not run (FTP's ``AUTH TLS`` with ``[proxy] tls = "passthrough"``: an encrypted
    session can be neither compared nor replayed). Once nothing of the client's is owed on
    either version, it is handed back on its leader connection with ``held`` to forward, and
    its follower connection closes: the follower never had the session, which is no
    divergence. The relay reads nothing more from the client meanwhile."""

    client: int
    held: tuple[Request, ...]


@dataclass(slots=True)
class Run(Event):
    """``count`` complete ordinary requests a client sent in one read, as raw bytes: they travel
    and are compared as bytes (see :mod:`twinproxy.engine.dispatch`). Sent while
    :meth:`~twinproxy.engine.Engine.runs_allowed` says so for the client; at other times the
    engine takes them request by request. ``small``: every reply to them is small whatever the
    data (the reader's ``small_replies``), so that a client that has not had small replies of
    its own yet may send them as a run (see ``runs_allowed``); ``reads``: none of them changes
    data (the reader's ``reads_only``), so that they may go while requests that only read are
    out on clients' own connections. ``silent`` of them get no reply (memcached's ``noreply``;
    the reader's ``silent``), the last among them if ``silent_last``; ``expiring``: the
    follower gets them changed (the reader's ``expiring``: ``Codec.follower_run``)."""

    client: int
    raw: bytes
    count: int
    small: bool = False
    reads: bool = False
    silent: int = 0
    silent_last: bool = False
    expiring: bool = False


@dataclass(slots=True)
class ClientError(Event):
    """The client broke the protocol after its complete requests (already sent as
    :class:`Requests`): once they are answered it gets ``reply``, then is closed."""

    client: int
    reply: bytes


@dataclass(slots=True)
class ClientEof(Event):
    """The client closed its sending side; it may still read what it is owed."""

    client: int


@dataclass(slots=True)
class SlowReader(Event):
    """The client does not read its replies as fast as they come (they passed the relay's
    bound): its later requests go on its own connections, where the server keeps what it does
    not read, as it would directly, instead of the shared one, where the proxy would have to."""

    client: int


@dataclass(slots=True)
class ClientClosed(Event):
    """The client's connection is gone (closed by it, or by the relay)."""

    client: int


@dataclass(slots=True)
class Connected(Event):
    """A server connection the engine opened (or a new client's leader connection) is up."""

    conn: int


@dataclass(slots=True)
class ConnectFailed(Event):
    """A server connection could not be opened; ``reason`` is the system's error name."""

    conn: int
    reason: str


@dataclass(slots=True)
class Data(Event):
    """Bytes from a server connection the engine owns."""

    conn: int
    data: bytes


@dataclass(slots=True)
class Transferred(Event):
    """One version's half of data channel ``channel`` (see
    :class:`~twinproxy.engine.commands.OpenData`) is over: the server sent ``size`` bytes on it,
    whose digest is ``digest`` (:func:`~twinproxy.engine.verdicts.digest`'s), and ``head`` is
    all of them when they are few (a listing), None otherwise. What the client sent on it is
    the same for both versions (the relay gives the follower the leader's copy)."""
    channel: int
    role: int
    size: int
    digest: bytes
    head: bytes | None = None
    # The half ended in an error (a client that vanished or reset its data connection): what
    # each version made of it may differ, and that is no fault of the new version.
    cut: bool = False


@dataclass(slots=True)
class ConnClosed(Event):
    """A server connection the engine owns was closed by the server (or failed)."""

    conn: int


@dataclass(slots=True)
class Flush(Event):
    """The end of one batch of the dispatch loop: what the engine gathered for the shared
    connections and for the clients they serve goes out now, in one write each."""


# ---- from the lifecycle -------------------------------------------------------------------


@dataclass(slots=True)
class Ahead(Event):
    """Before the sync point's barrier: the clients handed to the engine so far (and those it
    gets from now on) send their requests to the leader alone, owed to nobody: what the
    leader answers before the barrier (``Hold``) is in the snapshot. Each client's session
    as the leader answered it then is what its follower connection is given."""


@dataclass(slots=True)
class Hold(Event):
    """Start a barrier: requests are still admitted, none goes to the leader."""


@dataclass(slots=True)
class Release(Event):
    """End a barrier. The first one pins the sync point: from then on what the leader answers
    is owed to the follower."""


@dataclass(slots=True)
class StartFollower(Event):
    """The follower serves (its state is the leader's at the sync point): open its
    connections, give each its session, and send it what waited."""


@dataclass(slots=True)
class OpenFollowers(Event):
    """Before the clients go to the follower (a cutover): every client gets its own follower
    connection now, and a client that connects from now on gets one at once (until then, a
    new client's opens only when a request of its needs it). ``connected`` holds once they
    are up, each with its session."""


@dataclass(slots=True)
class Watch(Event):
    """Say once, with :class:`~twinproxy.engine.commands.Reached`, when every condition in
    ``conditions`` holds at the same time (see :data:`twinproxy.engine.conditions.CONDITIONS`)."""

    conditions: frozenset[str]


@dataclass(slots=True)
class Unwatch(Event):
    """The lifecycle stopped waiting for ``conditions`` (its wait timed out): stop checking
    them at every batch's end, once (a :class:`Watch` of the same set may be pending twice)."""

    conditions: frozenset[str]


@dataclass(slots=True)
class Unblock(Event):
    """The lifecycle is about to release a request blocked in the leader since before the sync
    point (Redis: CLIENT UNBLOCK); ``request`` is its handle from
    :meth:`~twinproxy.engine.Engine.blocked_at_sync_point`. Its null reply is then the
    engine's, which waits for the request itself. Answered with
    :class:`~twinproxy.engine.commands.Unblocking`."""

    request: object


@dataclass(slots=True)
class CloseBlocked(Event):
    """At the cutover: close the clients still waiting for a blocking request in the leader."""


@dataclass(slots=True)
class CloseOrphans(Event):
    """The leader is alive but closed some client connections itself (CLIENT KILL, a timeout):
    close those clients, as the server's own close would."""


@dataclass(slots=True)
class TakeOver(Event):
    """The leader died during MVE (at a barrier): the follower answers what it had not."""


@dataclass(slots=True)
class Reverse(Event):
    """At a barrier: swap the roles, the follower leads and the old leader follows
    (``after_cutover = "keep-old"``, and the way back), compared under ``comparator``."""

    comparator: Comparator


@dataclass(slots=True)
class End(Event):
    """The update is over: every client goes back to one version, the follower
    (``cutover``) or the leader. Answered with one
    :class:`~twinproxy.engine.commands.Handback` per client."""

    cutover: bool


ALL_EVENTS: tuple[type[Event], ...] = (
    Begin, Tick, Attach, Requests, Run, ClientError, ClientEof, SlowReader, ClientClosed, Connected,
    ConnectFailed, Data, Transferred, ConnClosed, Flush, Hold, Release, StartFollower, Watch,
    Unblock, CloseBlocked, CloseOrphans, TakeOver, Reverse, End,
)

