"""One version as the engine drives it: its order, its shared connection, its runs.

The leader and the follower are driven by one mechanism; what differs is only which requests
reach them and when (the leader gets clients' requests in arrival order, the follower the
leader's released ones in the order the leader answered them). A :class:`Side` holds what that
mechanism keeps per version. The two sides swap when the roles do (a keep-old cutover).

Three paths reach a version, and a client's requests never overlap across them:

* the client's **own connection** (:class:`~twinproxy.engine.records.Conn`), which carries
  whatever its session makes its own (MULTI, SUBSCRIBE, CLIENT REPLY ...), ordered request by
  request in the side's :class:`~twinproxy.engine.ordering.Sequencer`;
* the **shared connection** (:class:`Shared`), which carries, pipelined in arrival order, the
  ordinary requests of every client whose session is the plain one. Requests on one connection
  run in the order they are sent, so the shared connection needs no waiting to keep the two
  versions in one order, however much its clients conflict;
* **runs**: a read of ordinary requests from a plain client, framed only by counting, that
  travels and is compared as bytes on the shared connection. A run's keys are not known, so a
  request on a client's own connection that is ordered waits for the runs admitted before it
  (its leg's ``mark``), and no new run starts while such a request is out (``own_ordered``),
  except a run that only reads while none of them writes (``own_writes``): reads commute.

The sequencers see the shared connection as one connection, whose requests never wait for each
other: that holds only if they go on it in the order they were placed. On the follower they
might not: a client's shared request waits in its queue behind its own connection's reply
(its paths never overlap), or behind a conflicting request of another client's own connection,
while another client's later request on the same keys (a run's keys are not even known) would
be ready at once. So the follower's shared requests and runs wait in its side's ``line``, in
the order they were released, and go on the shared connection only from its head. That delays
only the follower (clients are answered by the leader). The leader's shared requests go as
they are ready: what it executes is the order the follower is given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twinproxy.engine.ordering import Sequencer, Ticket

if TYPE_CHECKING:
    from twinproxy.engine.records import Client, Conn, Exchange

SHARED = ("shared connection (leader)", "shared connection (follower)")
"""The name the sequencers know each side's shared path by: its requests never wait for each
other, as those of one connection never do."""


class Shared:
    """The engine's connection to one version that plain clients' requests share."""

    __slots__ = ("conn", "dialect", "flight", "login", "out", "parser")

    def __init__(self, conn: Conn, parser: Any, login: bytes | None = None):
        self.conn = conn
        self.parser = parser  # frames its replies (one per request, in order; runs as bytes)
        # The request that logs it in as the proxy's own login (Codec.login_request), sent
        # first once it is connected; None: it does not log in.
        self.login = login
        # The form its replies take after what was sent on it so far (Codec.dialect; None: the
        # one a connection starts in). Each client's requests go on it in the client's.
        self.dialect: object = None
        self.flight: deque[Exchange] = deque()  # sent, reply not complete, in order
        self.out: list[bytes] = []  # to send at the end of the dispatch loop's batch


class Side:
    """What the engine keeps for one version (``role`` LEADER or FOLLOWER)."""

    __slots__ = ("exact", "held_runs", "line", "marked", "name", "order", "own_made",
                 "own_ordered", "own_sent", "own_seq", "own_writes", "owns", "probes", "probing",
                 "role", "run_seq", "runs", "sentinels", "shared")

    def __init__(self, role: int, name: str):
        self.role = role
        self.name = name  # the version's name, for messages
        # (The leader's shared connection sends each client's requests in its turn, not in
        # the order they were placed: see ordering.)
        self.order = Sequencer(unordered=None if role else SHARED[role])
        self.shared: Shared | None = None
        # Runs in the order they were placed on this side, and the last place given.
        self.runs: deque[Exchange] = deque()
        self.run_seq = 0
        # Requests on clients' own connections that are ordered, in the order they were placed,
        # the last place given, how many are not answered here yet, and how many of those write
        # (or touch the whole keyspace, or quiesce the server).
        self.owns: deque[Exchange] = deque()
        self.own_seq = 0
        self.own_ordered = 0
        self.own_writes = 0
        self.marked: dict[Client, None] = {}  # clients whose next request waits for runs
        # The runs that wait for ordered own-connection requests, in the order they were placed.
        self.held_runs: deque[Exchange] = deque()
        # The proxy's own probes this version ran (see engine.waits, "counts"), those in
        # flight, and whether that count is exact (a probe lost with its connection may or may
        # not have run).
        self.probes = 0
        self.probing = 0
        self.exact = True
        # The relay's sentinels this version ran before the update, and the state sync's own
        # requests (counted as they are answered), still in its counts.
        self.sentinels = 0
        self.own_sent: Mapping[Any, tuple[int, int, int]] = {}
        # The engine's own requests other than probes it ran (the shared connection's
        # dialect switches), counted the same way (Codec.count_own).
        self.own_made: dict[Any, tuple[int, int, int]] = {}
        # The follower's: its shared requests and runs not sent yet, in the order released.
        self.line: deque[Exchange] = deque()

    def own(self) -> dict[Any, tuple[int, int, int]]:
        """The requests of the proxy's own this version ran and counts, but for probes and
        sentinels: the state sync's and the engine's, by the name the server counts them
        under (calls, bytes sent, bytes answered)."""
        own = dict(self.own_sent)
        for name, (calls, sent, got) in self.own_made.items():
            before = own.get(name, (0, 0, 0))
            own[name] = (before[0] + calls, before[1] + sent, before[2] + got)
        return own

    def lowest_run(self) -> float:
        """The place of the first run not yet answered on this side (infinity: none)."""
        runs = self._drop_answered_runs()
        return runs[0].legs[self.role].run_seq if runs else float("inf")

    def _drop_answered_runs(self) -> deque[Exchange]:
        """The runs from the first one not yet answered on this side: what is still out."""
        runs = self.runs
        role = self.role
        while runs and runs[0].legs[role].run_done:
            runs.popleft()
        return runs

    def run_answered(self, run: Exchange) -> None:
        """A run was answered on this side (or will never be sent to it): it leaves the runs,
        with every answered one before it, so that the list holds only what is out."""
        run.legs[self.role].run_done = True
        self._drop_answered_runs()

    def lowest_own(self) -> float:
        """The place of the first ordered own-connection request not yet answered on this side
        (infinity: none)."""
        owns = self.owns
        role = self.role
        while owns and owns[0].legs[role].own_done:
            owns.popleft()
        return owns[0].legs[role].own_seq if owns else float("inf")

    def place_run(self, run: Exchange, reads: bool = False) -> bool:
        """Give a run its place among this side's runs; True when it may go at once (no
        ordered own-connection request placed before it is still out, or, for a run that
        only reads, none that writes)."""
        leg = run.legs[self.role]
        self.run_seq += 1
        leg.run_seq = self.run_seq
        leg.after = self.own_seq
        self.runs.append(run)
        leg.ready = not self.owns or self.lowest_own() > leg.after or \
            (reads and not self.own_writes)  # (no owns: the common case)
        return leg.ready

    def admit(self, exchange: Exchange, keys: tuple[bytes, ...], write: bool,
              is_global: bool, after_runs: bool = True, quiesce: bool = False) -> bool:
        """Place ``exchange`` in this side's order; True when it may go at once. A request on
        the client's own connection that is ordered also waits for the runs placed before it
        (unless not ``after_runs``: a blocking request sent again after the sync point
        released it, or what a dead leader left). ``quiesce``: every later request waits for
        it, even one the order does not track (see :mod:`.ordering`).
        """
        leg = exchange.legs[self.role]
        conn = SHARED[self.role] if exchange.shared else exchange.client
        ticket = Ticket(exchange, conn, keys, write, is_global, quiesce)
        leg.ticket = ticket
        leg.ready = self.order.admit(ticket)
        if after_runs and not exchange.shared and ticket.tracked:
            leg.mark = self.run_seq
            self.own_seq += 1
            leg.own_seq = self.own_seq
            self.owns.append(exchange)
            self.own_ordered += 1
            if write or is_global or quiesce:
                leg.own_write = True
                self.own_writes += 1
        return leg.ready

    def answered(self, exchange: Exchange) -> list[Exchange]:
        """``exchange`` was answered on this side: it leaves the order. Returns the exchanges
        that may go now (their leg is marked ready)."""
        leg = exchange.legs[self.role]
        if leg.own_seq and not leg.own_done:
            leg.own_done = True
            self.own_ordered -= 1
            if leg.own_write:
                self.own_writes -= 1
            self.lowest_own()  # the answered ones leave the list
        done, leg.ticket = leg.ticket, None  # (it refers back to the exchange)
        if done is None:
            return []
        role = self.role
        freed = []
        for ticket in self.order.done(done):
            other: Exchange = ticket.item
            other.legs[role].ready = True
            freed.append(other)
        return freed

    def hold_run(self, run: Exchange) -> None:
        """``run`` (just placed, not ready) waits for the ordered own-connection requests
        placed before it: :meth:`runs_now_ready` marks it ready once they are answered."""
        self.held_runs.append(run)

    def runs_now_ready(self) -> list[Client]:
        """After an ordered own-connection request was answered: the clients whose held runs
        may go now (their runs are marked ready).

        Runs are held as they are placed, and the place a run waits for is the last ordered
        request placed before it, so the held runs wait for places that only grow along them:
        the first that must still wait ends the walk. Only what becomes ready is looked at;
        neither the queues behind a follower that runs thousands of requests late (that was 83%
        of the proxy's samples under 100 KB values at ``-P 16``) nor the clients that hold runs
        (a walk of a thousand new clients' held runs at every answer was 6.7% with 1,000
        clients) are walked again at each answer."""
        held = self.held_runs
        if not held:
            return []
        lowest = self.lowest_own()
        role = self.role
        woken: dict[Client, None] = {}
        while held and held[0].legs[role].after < lowest:
            run = held.popleft()
            run.legs[role].ready = True
            woken[run.client] = None
        return list(woken)
