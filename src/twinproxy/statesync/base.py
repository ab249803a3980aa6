"""The state sync interface: what every method does, in which step of an update, and why.

A method's job is the first half of the contract in ``docs/design.md`` ("State sync"): when
the update leaves SYNCING, the new version's state equals the old one's at the *sync point*,
the instant the proxy holds every client at a request boundary. The second half (every request
after that point reaches the new version exactly once) is the MVE engine's: it keeps what
clients send from the sync point on and replays it once the new version is up. So a method only
has to produce the state as of the sync point, and it may take its time doing so, as long as
what it needs from that instant it takes while the clients are held.

The lifecycle (:mod:`twinproxy.lifecycle`) runs one :class:`StateSync` per update through
these steps, in this order, and names no method:

    check           before the update starts; may refuse         (clients flow)
    watch           from before prepare until the sync point     (clients flow)
    prepare         before the barrier; may refuse               (clients flow)
    at_sync_point   the barrier is reached                       (clients held: be quick)
    after_release   the new version's directory exists           (clients flow; not started)
    after_start     the new version serves, nothing replayed yet (clients flow)
    aclose          always, however the update ends

Then the lifecycle starts the new version in that directory (or, when the method started it
itself, as a cooperative fork does, runs it where :meth:`StateSync.started` says); after
after_start the engine replays what came after the sync point.

Rules this file keeps:

* No I/O and no imports of the proxy, the engine or the config: the registry
  (:mod:`twinproxy.statesync`) that the config loader reads imports this module, and every
  command-line call loads a config. A method sees the versions through :class:`Version` and the
  held clients through :class:`SyncPoint`, both declared here.
* A failure a method can name (the server refused, a file could not be written) is a
  :class:`SyncError`: the update rolls back with ``the state sync failed (<step>): <message>``.
  Anything else is taken for a bug and logged with its traceback.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from twinproxy.protocols.messages import Request

__all__ = ["Address", "Blocked", "Started", "StateSync", "SyncError", "SyncJob", "SyncPoint",
           "Version"]

Address = tuple[str, int]


class SyncError(Exception):
    """The state could not be taken or placed; the message says why, in the server's words
    where it gave any."""


class Version(Protocol):
    """A version of the service as a method sees it (a ``[versions.<name>]`` of the config)."""

    @property
    def name(self) -> str:
        """The version's name in the config, as the operator typed it."""

    @property
    def managed(self) -> bool:
        """Whether twinproxy starts this version itself (it has a command), so that it can be
        started on state placed in its directory; else it is an address already serving."""

    @property
    def command(self) -> tuple[str, ...] | None:
        """The argv twinproxy starts it with (placeholders unfilled), or None if external."""

    @property
    def forked(self) -> bool:
        """Whether the running service starts this version itself, by forking, when a
        cooperative update asks it to (neither a command nor an address)."""

    @property
    def ready_timeout(self) -> float:
        """How long this version may take to serve once asked to start."""

    def login(self) -> tuple[str, ...] | None:
        """What the proxy's own connections send after ``AUTH`` (Redis), or None."""


@dataclass(frozen=True)
class SyncJob:
    """What one update asks of its method."""

    number: int
    """The update's number, for log lines (``update 3: ...``)."""
    leader: Address
    """Where the running version answers now."""
    target: Version
    """The version the update starts."""
    barrier_timeout: float
    """The config's ``update.barrier_timeout``: how long a step may wait for the servers while
    clients are held or about to be."""
    leader_dir: str | None = None
    """The running version's private directory (``{dir}`` in its command), where a managed
    server keeps its files; None for a version given by its address."""
    protocol: str = ""
    """The config's ``proxy.protocol``."""
    endpoint: str | None = None
    """The config's ``update.cooperative_endpoint``, for the method that calls it."""
    leader_login: tuple[str, ...] | None = None
    """What the method's own connections to the leader send after ``AUTH`` (Redis's
    ``requirepass`` or an ACL user: the version's ``username`` and ``password``), or None."""
    learned: Any = None
    """What the proxy learned from its clients' requests of the leader's state that a copy of
    it does not hold (``Codec.learner``: Redis's scripts), for the method to give the new
    version; None: the codec learns nothing."""


@dataclass(frozen=True)
class Started:
    """A new version the method started itself (a cooperative fork), already serving: the
    lifecycle runs it at this address instead of starting it, and ends it with SIGTERM to
    ``pid``."""

    address: Address
    pid: int
    leader_pid: int | None = None
    """The old version's process, when the method learnt it and twinproxy did not start it:
    after a cutover the lifecycle ends it with SIGTERM as it would a managed one."""


class Blocked(Protocol):
    """A client's request that was waiting in the leader when clients were held (a ``BLPOP``
    with nothing to pop): it holds no place in the request stream yet, so the barrier does not
    wait for it, but the server still has it."""

    @property
    def local_address(self) -> Address:
        """The proxy's end of the connection the request waits on: the client address the
        leader knows this connection by (in Redis, ``addr`` in ``CLIENT LIST``)."""


class SyncPoint(ABC):
    """The clients held at the sync point, as far as a method may act on them.

    The lifecycle hands one to :meth:`StateSync.at_sync_point`. It is all a method sees of the
    engine, on purpose: the engine is being rebuilt, and a method must not depend on its
    insides.
    """

    @abstractmethod
    def blocked(self) -> list[Blocked]:
        """Requests waiting in the leader at the sync point (:class:`Blocked`)."""

    @abstractmethod
    def release(self, request: Blocked) -> bool:
        """Tell the engine that ``request`` is about to be released from the leader by the
        method (Redis: ``CLIENT UNBLOCK``): the empty reply the leader then sends is not the
        client's, and the proxy waits for the request itself from now on, as it does for every
        blocking request during an update.

        Returns:
            False when it cannot be: the request came back already (it got data while the
            method looked around) or its connection is gone. Then leave it alone.
        """

    @abstractmethod
    def still_out(self, request: Blocked) -> bool:
        """Whether a request :meth:`release` was told of has not come back from the leader yet
        (a release the server did not act on, because the request had not reached it, must be
        tried again)."""


class StateSync:
    """One update's state sync. Every step does nothing by default: a method overrides the
    ones it needs (``sync = "none"`` overrides none).

    A new instance is made for each update, when its SYNCING begins; it may keep what it opens
    (a connection to the leader) between steps, and closes it in :meth:`aclose`.
    """

    prepare_step: ClassVar[str | None] = None
    """What the update's status and a failure's reason call :meth:`prepare` when it takes a
    while (such as ``"copying the files"``); None: it counts as part of the barrier."""

    after_release_step: ClassVar[str | None] = None
    """What the update's status and a failure's reason call :meth:`after_release` (such as
    ``"writing the snapshot"``); None for a method that does nothing then."""

    after_start_step: ClassVar[str | None] = None
    """The same for :meth:`after_start` (such as ``"copying the items"``)."""

    leader_clock: float = 0.0
    """Seconds the old version's clock, as it counts the expiries it keeps, is ahead of the
    proxy's wall clock (negative: behind), once :meth:`prepare` returned: an expiry in seconds
    from now reaches the new version as the old one's moment (memcached's clock lags: it
    ticks once a second). 0: the same."""

    def __init__(self, job: SyncJob):
        self.job = job
        self.stats: dict[str, float] = {}
        """What the steps did, for the update's status (``sync_stats``): seconds, counts."""

    @classmethod
    def check(cls, leader: Version, target: Version) -> str | None:
        """Why this method cannot update ``leader`` to ``target``, or None if it can.

        Called when the operator asks for the update, before anything starts, so that a
        request that can never work is refused at once (HTTP 400, the reason as the error)
        instead of failing a rollback later. Looks at the config only: no I/O.
        """
        return None

    def watch(self, in_flight: Callable[[], Iterable[Request]]
              ) -> Callable[[Request], object] | None:
        """A function the relay shows every request it sends to the old version, from before
        :meth:`prepare` until :meth:`at_sync_point` returns (first the requests sent already
        and not answered yet), for a method that reads the state while clients write and must
        know what they changed meanwhile (memcached: the keys written during the copy). It
        runs in the relay's loop, on every request: it must be quick, and only look.
        ``in_flight()``: the requests sent and not answered yet, at the moment it is called
        (a write among them may still take effect). None (the default): the method needs
        none."""
        return None

    async def prepare(self) -> Any:
        """Get ready while clients still flow; return what the engine should know of the
        protocol as this server speaks it (Redis: its ``COMMAND`` table, so that module and
        newer commands are ordered by their real keys), or None for the codec's built-in
        knowledge.

        This is the place to refuse what would fail at the sync point (Redis refuses a
        ``BGSAVE`` while an AOF rewrite runs): nothing is held and the engine has opened no
        connection yet, so a :class:`SyncError` here leaves nothing behind.
        """
        return None

    async def at_sync_point(self, point: SyncPoint) -> None:
        """Pin the state as of this instant (Redis: ``BGSAVE``, which forks).

        Every client is held at a request boundary while this runs, and they wait for it: do
        only what must happen at this instant, and leave writing and copying to
        :meth:`after_release`. ``point`` shows the requests still waiting in the leader, which
        the barrier could not wait for.
        """

    async def after_release(self, workdir: str) -> None:
        """Finish the state in the new version's directory ``workdir`` (Redis: wait for the
        snapshot, then place it where the new version loads it), while clients go on.

        The new version is started in ``workdir`` once this returns.
        """

    def started(self) -> Started | None:
        """The new version, if the method started it itself (after :meth:`after_release`);
        None (the default): the lifecycle starts it in the directory the method prepared."""
        return None

    async def after_start(self, follower: Address) -> Mapping[Any, Any] | None:
        """Place the state in the new version, which now serves at ``follower``, for a method
        that can only write it through the server's own protocol (memcached: the items).

        The engine keeps every request from the sync point and replays it only once this
        returns, so the follower sees the state as of the sync point first, then each later
        request once. Returns the names the two servers give the same thing, the leader's to the
        follower's (memcached: the CAS token of each item copied), which the follower's requests
        are translated with (:meth:`~twinproxy.protocols.base.Codec.follower_ids`); None: none.
        """
        return None

    def own_requests(self) -> Mapping[Any, tuple[int, int, int]]:
        """The requests this method sent the old version on its own (Redis: COMMAND, INFO,
        BGSAVE ...), by the name the server counts them under: (how many, their bytes, their
        replies' bytes), counted as their replies come; the engine takes them out of the
        counts a client reads during the update (``Codec.without_probes``). The default:
        none."""
        return {}

    async def aclose(self) -> None:
        """Release what the method opened. Called once, however the update ended (also after a
        failure or a cancellation in any step, and when :meth:`prepare` was never reached),
        so it must not assume any step ran."""
