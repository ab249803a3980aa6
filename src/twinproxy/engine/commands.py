"""What comes out of the engine: commands the relay carries out in order, and notices for the
update's lifecycle.

The relay turns each command into socket operations and raises on a type it does not know, so
that a command the engine starts emitting cannot be silently dropped. Notices (``Failed``,
``Reached``, ``Diverged``, ``LeaderLost``, ``Unblocking``, ``Log``) are passed on to the lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twinproxy.compare import Verdict
    from twinproxy.engine.large import Spooled
    from twinproxy.protocols import ReplyReader, Request
    from twinproxy.protocols.channels import OpenChannel

LEADER = 0
FOLLOWER = 1
ROLE_NAMES = ("leader", "follower")


class Command:
    """Base of every command."""

    __slots__ = ()


# ---- socket operations ----------------------------------------------------------------------


@dataclass(slots=True)
class Send(Command):
    """Write ``data`` on server connection ``conn``: bytes, or a list of buffers to write in
    order (a batch's large requests on a shared connection, see ``Engine._flush``)."""

    conn: int
    data: bytes | list[bytes]


@dataclass(slots=True)
class SendLarge(Command):
    """Write a large request kept out of memory (:mod:`twinproxy.engine.large`) on server
    connection ``conn``, after what was sent on it before."""

    conn: int
    data: Spooled


@dataclass(slots=True)
class Deliver(Command):
    """Write ``data`` to client ``client``."""

    client: int
    data: bytes


@dataclass(slots=True)
class DeliverAll(Command):
    """Write each client its replies: ``replies`` maps a client's id to its bytes, or to a
    list of buffers to write in order where a few large ones make them up (not joined, see
    ``Engine._flush``). The replies gathered over a batch go in one command at its end
    (``Flush``), not one per client: with fifty clients sending a request each, making and
    carrying out a command per client was a tenth of the proxy's Python in an update
    (memcached, py-spy)."""

    replies: dict[int, bytes | list[bytes]]


@dataclass(slots=True)
class Open(Command):
    """Open server connection ``conn`` to the version that has ``role`` now, for ``client``
    (None: a shared connection). Answered with ``Connected`` or ``ConnectFailed``."""

    conn: int
    role: int
    client: int | None


@dataclass(slots=True)
class Close(Command):
    """Close server connection ``conn`` (what waits to be written to it is dropped)."""

    conn: int


@dataclass(slots=True)
class Shutdown(Command):
    """Pass a client's end of input on: shut the write side of ``conn`` once what waits to be
    written to it is out. The server answers what it read, then closes."""

    conn: int


@dataclass(slots=True)
class CloseClient(Command):
    """Close client ``client`` once what waits to be written to it is out."""

    client: int


@dataclass(slots=True)
class SetRole(Command):
    """Server connection ``conn`` now belongs to the version with ``role`` (after the roles
    were swapped): a follower connection's backlog never pauses a client."""

    conn: int
    role: int


@dataclass(slots=True)
class Handback(Command):
    """At the end of the update: ``client`` goes on alone on server connection ``conn``, whose
    replies ``replies`` frames; ``inflight`` were sent there and are not answered yet, ``held``
    were never sent (forward them, in order)."""

    client: int
    conn: int
    replies: ReplyReader
    inflight: tuple[Request, ...]
    held: tuple[Request, ...]


@dataclass(slots=True)
class OpenData(Command):
    """A data channel for ``client``'s transfer number ``channel`` (an id the engine gives: the
    leader's and the follower's halves of one transfer share it), opened by a message on server
    connection ``conn`` of the version with ``role`` (see :mod:`twinproxy.relay.mirror`):

    * ``toward`` CLIENT (a ``227``/``229`` reply): the leader's reply is delivered to the
      client rewritten to name an endpoint of the proxy, whose connection goes on to
      ``open.target``'s port at the host of ``conn``; the follower's reply only names where
      the follower's half connects to (nothing is delivered);
    * ``toward`` SERVER (PORT/EPRT): the request is sent on ``conn`` rewritten to name an
      endpoint of the proxy that version connects to; the leader's half goes on to the
      client's ``open.target``.

    Answered, once each half's data connection is over, with ``Transferred``."""
    client: int
    conn: int
    role: int
    channel: int
    open: OpenChannel


# ---- notices for the lifecycle ----------------------------------------------------------------


@dataclass(slots=True)
class Failed(Command):
    """The update cannot go on (said once): an unexpected divergence, a follower that crashed,
    hangs or fell too far behind."""

    reason: str


@dataclass(slots=True)
class Reached(Command):
    """Every condition of a ``Watch`` holds now."""

    conditions: frozenset[str]


@dataclass(slots=True)
class Diverged(Command):
    """The two versions answered ``request`` differently; ``verdict`` says whether a rule
    explained it. The lifecycle records it (and logs an unexpected one)."""

    peer: str
    request: Request
    leader: bytes
    follower: bytes
    verdict: Verdict
    reason: str


@dataclass(slots=True)
class LeaderLost(Command):
    """A leader connection closed on its own: the leader died, or closed just that
    connection (the lifecycle finds out which). ``client``: whose (None: the shared one)."""

    client: int | None


@dataclass(slots=True)
class Unblocking(Command):
    """The answer to ``Unblock``: whether the engine now waits for that request itself (False:
    it came back already, or cannot be waited for; leave it alone)."""

    request: object
    ok: bool


@dataclass(slots=True)
class Log(Command):
    """A line for the operator's log (``level`` as in :mod:`logging`)."""

    level: int
    message: str
    fields: Any = None
