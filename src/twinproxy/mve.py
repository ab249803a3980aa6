"""Multi-version execution: every request goes to both versions, in one order; replies compared.

How this works. During an update the proxy's dispatch loop hands the engine every framed request
and every framed reply; the engine decides what goes where, and when.

* **Paths.** A client's requests go to each version either on the client's own connection to it,
  or on the engine's *shared* connection to it, which carries, pipelined in arrival order, the
  ordinary requests of every client whose session is the plain one (database 0, no user, no
  transaction ...). Requests on one connection run in the order they are sent, so the shared
  connection needs no waiting to keep the two versions in the same order, however much its
  clients conflict. A client keeps its own connections for what its session makes its own
  (SELECT, MULTI, SUBSCRIBE ...; the codec's ``route`` says which), and for good after a request
  that changes its session.
* **Order.** Each request is *admitted* on arrival into the leader's
  :class:`~twinproxy.ordering.Sequencer` (all shared requests count as one connection there). It
  goes once every earlier conflicting request on another connection has been answered, after the
  earlier requests of its own client (a client's requests never overlap across its two paths).
* **Release.** When the leader's reply is complete (the dispatch loop forwards the bytes as they
  come, except on the shared path, where the engine routes each reply to its client), the request
  is *released* to the follower: the codec says what the follower gets (the request, or the
  leader's effect), and it gets a place in the follower's sequencer in the order of the leader's
  replies. So the follower executes conflicting requests in the order the leader did, and never
  holds a client up.
* **Comparison.** The follower's reply is compared with the leader's (:mod:`twinproxy.compare`).
* **Transactions** whose commands the leader's reply decides (SPOP ...): their queued commands
  go to the follower as they are; at EXEC the follower drops them and gets the transaction again
  with the leader's effects (the codec's ``transaction_plan``), so a transaction still open at a
  barrier never holds the follower back.
* **Blocking commands** are waited for by the proxy itself (:mod:`.protocols.redis.blocking`): it
  polls, ordered like any write, so both versions pop the same element at the same place.

The engine does no I/O of its own: it calls the proxy (``_send``, ``_open_link``,
``_drop_link``). What it cannot fix (an unexpected divergence, a follower that crashed, hangs or
falls too far behind) it reports with ``on_failure``; the update's lifecycle acts on it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twinproxy.compare import EQUAL, Comparator, DivergenceLog, Verdict
from twinproxy.events import log_event
from twinproxy.ordering import Sequencer, Ticket
from twinproxy.protocols.base import LocalProtocolError, ProtocolError, Reply, Request
from twinproxy.spill import Spill

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.config import UpdateConfig
    from twinproxy.proxy import Client, Link, Proxy

log = logging.getLogger("twinproxy.mve")

PUBSUB = b"\x00pubsub"  # the pseudo-key every publish and subscription is ordered on
SCRIPTS = {"EVAL", "EVALSHA", "FCALL"}
PUBSUB_COMMANDS = {"PUBLISH", "SPUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE",
                   "PUNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE"}
MAX_PUSHES = 10000  # pushes waiting to be matched, per connection
LEADER_SHARED = "shared connection (leader)"  # the sequencers' name for the shared paths
FOLLOWER_SHARED = "shared connection (follower)"


class Entry:
    """One request during an update, from its arrival to the follower's reply."""

    __slots__ = ("after", "answer", "client", "deadline", "done", "dseq", "error", "fdone",
                 "fmark", "fready", "frequest", "frseq", "fsent", "fticket", "got", "internal",
                 "is_global", "keys", "lraw", "lready", "lreply", "lticket", "ltime", "lvalue",
                 "mark", "park", "parts", "plan", "poll", "poll_of", "polling", "queue",
                 "queued", "request", "rseq", "run", "shared", "spilled", "unblocking", "write")

    def __init__(self, client: Client, request: Request):
        self.client = client
        self.request = request
        self.keys: tuple[bytes, ...] = ()
        self.write = False
        self.is_global = False
        self.shared = False  # it goes on the shared connections
        self.lticket: Ticket | None = None
        self.fticket: Ticket | None = None
        self.lready = False
        self.fready = False
        self.lreply: Reply | None = None
        self.lvalue: Any = None
        self.ltime = 0.0
        self.frequest: Request | None = None
        self.plan: Any = None
        self.fsent = 0.0
        self.answer = False  # the follower's reply goes to the client (the leader failed)
        self.internal = False  # the proxy's own request to the follower (a session replay)
        self.queued = False  # queued in a transaction: its effect comes with EXEC
        self.queue: tuple[Request, ...] = ()  # on EXEC: the requests it runs
        self.spilled: tuple[int, int] | None = None  # its bytes are in the spill file, there
        self.dseq = 0  # when it went to the leader, in dispatch order (writes only)
        self.after: list[Entry] | None = None  # blocking commands this write woke
        # A blocking request the proxy waits for itself (redis/blocking.py): how to poll,
        # until when, the poll admitted for it (and whether it is in the leader); on a poll,
        # the request it polls for.
        self.park: Any = None
        self.deadline = 0.0
        self.poll: Entry | None = None
        self.polling = False
        self.poll_of: Entry | None = None
        self.unblocking = False  # blocked in the leader at the sync point, being released
        # A run: a client's read of ``run`` requests that travel and are compared as bytes
        # (the leader's reply so far in ``parts``, ``got`` replies of it, an ``error`` among
        # them; all of it in ``lraw``); ``rseq`` its place among runs, ``done`` once answered.
        self.run = 0
        self.got = 0
        self.parts: list[bytes] | None = None
        self.error = False
        self.lraw = b""
        self.rseq = 0
        self.done = False
        self.frseq = 0  # the same on the follower
        self.fdone = False
        # On a request on the client's own connection that is ordered: the runs admitted
        # (``mark``) or released (``fmark``) before it, which it waits for; -1: none.
        self.mark = -1
        self.fmark = -1

    def __repr__(self) -> str:
        return f"<Entry {self.request!r}>"


class Twin:
    """A client connection's state during an update."""

    __slots__ = ("client", "fflight", "follower", "fpushes", "fqueue", "gone", "joined",
                 "lflight", "lpushes", "multi", "multi_global", "multi_keys", "multi_queue",
                 "multi_write",
                 "plain", "queue", "replay", "shared", "solo", "watch")

    def __init__(self, client: Client):
        self.client = client
        self.follower: Link | None = None  # its own connection to the follower
        self.queue: deque[Entry] = deque()  # admitted, not yet sent to the leader
        self.lflight: deque[Entry] = deque()  # sent to the leader, reply not complete
        self.fqueue: deque[Entry] = deque()  # released, not yet sent to the follower
        self.fflight: deque[Entry] = deque()  # sent to the follower, reply not complete
        self.joined = False  # its own follower connection has its session
        self.replay: list[bytes] = []  # what gives its follower connection the session
        self.plain = True  # its session is the plain one (no SELECT, AUTH, SUBSCRIBE ...)
        self.shared = True  # plain and not in a transaction: its ordinary requests are shared
        self.solo = False  # served by the leader only (MONITOR): never compared
        self.gone = False  # the client closed; what it sent still goes through, unanswered
        self.lpushes: deque[Any] = deque()  # pushes from the leader not yet matched
        self.fpushes: deque[Any] = deque()
        self.multi = False
        self.multi_keys: set[bytes] = set()
        self.multi_queue: list[Request] = []
        self.multi_write = False
        self.multi_global = False
        self.watch: set[bytes] = set()

    def begin_multi(self) -> None:
        """MULTI: what the transaction queues is gathered for its EXEC."""
        self.multi = True
        self.multi_keys, self.multi_write, self.multi_global = set(), False, False
        self.multi_queue = []

    def queue_in_multi(self, request: Request) -> None:
        """A command queued in the transaction: EXEC will run it, touching its keys."""
        self.multi_queue.append(request)
        self.multi_keys.update(request.keys)
        self.multi_write = self.multi_write or request.write or request.name in SCRIPTS
        self.multi_global = self.multi_global or request.is_global


class Shared:
    """The engine's connection to one version that plain clients' requests share."""

    __slots__ = ("flight", "link", "out", "parser")

    def __init__(self, link: Link, parser: Any):
        self.link = link
        self.parser = parser  # frames its replies (one per request, in order; runs as bytes)
        self.flight: deque[Entry] = deque()  # sent, reply not complete, in order
        self.out: list[bytes] = []  # to send at the end of the dispatch loop's batch


class Mve:
    """The engine of one update; see the module docstring.

    Args:
        proxy: the dispatch loop it drives.
        leader, follower: the two versions.
        comparator: compares replies under this update's rules.
        divergences: where divergences are recorded.
        settings: the ``[update]`` section (timeouts, backlog bounds, what a divergence does).
        on_failure: called once with a reason when the update cannot go on.
        update: this update's number, in divergence records.
        table: the leader's command table, for the codec's ``describe``.
        on_leader_lost: called when a leader connection closed on its own.
    """

    def __init__(self, proxy: Proxy, leader: Backend, follower: Backend, comparator: Comparator,
                 divergences: DivergenceLog, settings: UpdateConfig,
                 on_failure: Callable[[str], None], update: int, table: Any = None,
                 on_leader_lost: Callable[[], None] = lambda: None):
        self.proxy = proxy
        self.codec = proxy.codec
        self.leader = leader
        self.follower = follower
        self.comparator = comparator
        self.divergences = divergences
        self.settings = settings
        self.on_failure = on_failure
        self.on_leader_lost = on_leader_lost
        self.update = update
        self.table = table
        self.twins: dict[Client, Twin] = {}
        self.leader_seq = Sequencer()
        self.follower_seq = Sequencer()
        self.lshared: Shared | None = None
        self.fshared: Shared | None = None
        self.holding = True  # requests are admitted but not sent to the leader (a barrier)
        # The sync point is pinned (the first barrier ended): what the leader answers from now
        # on is not in the follower's state yet. Before it, a blocking request answered at the
        # barrier (woken by a push still in flight, or sent with data already there) ran before
        # the snapshot: its effect is in it, and it is not released to the follower.
        self.pinned = False
        self.follower_live = False  # follower connections may be opened and fed
        self.failed: str | None = None
        # Writes in the leader (sent, reply not in yet), per key, in the order they were sent:
        # a blocking command still in the leader from before the update was woken by the first.
        self.writing: dict[bytes, deque[Entry]] = {}
        self._dseq = 0
        # Blocking requests waiting in the proxy (no poll in the leader), by key and in all.
        self.parked: dict[bytes, list[Entry]] = {}
        self.waiting: dict[Entry, None] = {}
        self._outbox: dict[Client, list[bytes]] = {}  # replies routed from the shared path
        # Runs and the ordered requests of clients' own connections (see the module docstring):
        # runs are made only while no such request is in the leader (``l_own``), and run on the
        # follower only while none is there (``f_own``); such a request waits for the runs
        # before it (``_lruns``, ``_fruns``, in the order they were admitted and released).
        self.l_own = 0
        self.f_own = 0
        self._lruns: deque[Entry] = deque()
        self._fruns: deque[Entry] = deque()
        self._rseq = 0
        self._frseq = 0
        self._marked: dict[Twin, None] = {}  # twins whose next request waits for runs
        self._fmarked: dict[Twin, None] = {}
        self._fheld: dict[Twin, None] = {}  # twins with runs held while f_own > 0
        # Counters for status and metrics.
        self.compared = 0
        self.unexpected = 0
        self.expected = 0
        self.expected_rules: dict[str, int] = {}  # expected divergences per rule that explained
        self.withheld = 0
        self.not_sent = 0
        self.backlog = 0  # released, follower reply not in yet
        self.backlog_bytes = 0
        self.spill: Spill | None = None  # the sync backlog's bytes past settings.spill_bytes
        self.requests_leader = 0
        self.requests_follower = 0

    # ---- clients -----------------------------------------------------------------------------

    def attach(self, client: Client, blocked: list[Request] | None = None) -> Twin:
        """Take a client over at the sync point, at a reply boundary; ``blocked`` are requests
        still waiting in the leader (a blocking command and what was pipelined after it)."""
        twin = Twin(client)
        client.twin = twin
        self.twins[client] = twin
        link = client.link
        replies = link.replies if link is not None else None
        codec = self.codec
        twin.replay = codec.replay(client.session, replies)
        shares = codec.shared_connection
        routes = {codec.route(r) for r in codec.compact_session(client.session)} if shares \
            else set()
        twin.plain = shares and not blocked and "session" not in routes and (
            replies is None or codec.plain_state(replies, transaction=True))
        twin.shared = twin.plain and "begin" not in routes and (
            replies is None or codec.plain_state(replies))
        state = getattr(replies, "state", None)
        if state is not None and getattr(state, "monitor", False):
            twin.solo = True
        if state is not None and getattr(state, "in_multi", False):
            self._in_transaction(twin, state.queued)
        for request in blocked or ():
            entry = self._admit(twin, request, attached=True)
            entry.lready = True
            twin.lflight.append(entry)
            self.requests_leader += 1
        return twin

    def new_client(self, client: Client) -> Twin:
        """A client that connected during the update: no session yet, all of it goes to both."""
        twin = self.attach(client)
        if self.follower_live:
            self._open_follower(twin)
        return twin

    def client_closed(self, client: Client) -> bool:
        """The client is gone. What the leader has not answered yet may still run there, so it
        is still waited for and released to the follower; what never left the proxy is
        dropped. Returns True when the engine keeps the client's leader connection open for
        that (the proxy must not close it)."""
        twin = self.twins.get(client)
        if twin is None:
            return False
        twin.gone = True
        for entry in twin.queue:
            self._leader_done(entry)
        twin.queue.clear()
        self.waiting = {w: None for w in self.waiting if w.client is not client}
        keep = any(not e.shared for e in twin.lflight)
        self._maybe_forget(twin)
        return keep

    def _maybe_forget(self, twin: Twin) -> None:
        if twin.gone and not twin.lflight and not twin.fqueue and not twin.fflight:
            self.twins.pop(twin.client, None)
            if twin.follower is not None:
                self.proxy._drop_link(twin.follower)
                twin.follower = None
            if twin.client.link is not None and twin.client.closed:
                self.proxy._drop_link(twin.client.link)

    # ---- the leader side ---------------------------------------------------------------------

    def requests(self, client: Client, requests: list[Request]) -> None:
        """Framed requests from a client: admit them, send what may go now."""
        twin = self.twins.get(client)
        if twin is None:
            return
        for request in requests:
            if request.session:
                self.proxy._note_session(client, request)
            twin.queue.append(self._admit(twin, request))
        if not self.holding:
            self._dispatch_leader(twin)

    def run_ok(self, client: Client) -> bool:
        """Whether this client's next read may travel as a run (see the module docstring).
        Not while blocking requests wait in the proxy: a run's keys are not known, and the
        per-request path wakes exactly the waiters its writes concern."""
        twin = self.twins.get(client)
        return (twin is not None and twin.shared and not self.l_own and not self.parked
                and self.lshared is not None)

    def run(self, client: Client, raw: bytes, count: int) -> None:
        """A read of ``count`` runnable requests from a client whose requests are shared."""
        twin = self.twins[client]
        entry = Entry(client, Request(raw, "(run)", []))
        entry.run = count
        entry.parts = []
        entry.shared = True
        entry.lready = True
        self._rseq += 1
        entry.rseq = self._rseq
        self._lruns.append(entry)
        twin.queue.append(entry)
        if not self.holding:
            self._dispatch_leader(twin)

    def _lowest_run(self) -> float:
        """The place of the first run not yet answered by the leader (infinity: none)."""
        runs = self._lruns
        while runs and runs[0].done:
            runs.popleft()
        return runs[0].rseq if runs else float("inf")

    def _lowest_frun(self) -> float:
        """The place of the first run not yet answered by the follower (infinity: none)."""
        runs = self._fruns
        while runs and runs[0].fdone:
            runs.popleft()
        return runs[0].frseq if runs else float("inf")

    def _admit(self, twin: Twin, request: Request, attached: bool = False) -> Entry:
        entry = Entry(twin.client, request)
        self._order_view(twin, entry)
        if request.name == "MONITOR":
            twin.solo = True  # its stream is per server (times, addresses): the leader's only
        if self.codec.shared_connection and twin.plain and not attached:
            route = self.codec.route(request)
            if route == "session":
                twin.plain = twin.shared = False
            elif route == "begin":
                twin.shared = False
            entry.shared = route == "shared" and twin.shared
            if route == "end" and not twin.multi:
                twin.shared = True  # the transaction ended: its next requests may be shared
        if request.blocking and not entry.queued and not attached:
            entry.park = self.codec.blocking(request, self.table)
            if entry.park is not None:
                timeout = entry.park.timeout
                entry.deadline = time.monotonic() + timeout if timeout else float("inf")
                self._new_poll(twin, entry)
                return entry
        ticket = Ticket(entry, LEADER_SHARED if entry.shared else twin.client,
                        () if request.blocking else entry.keys,
                        entry.write and not request.blocking, entry.is_global)
        entry.lticket = ticket
        entry.lready = self.leader_seq.admit(ticket)
        if not entry.shared and ticket.tracked:
            entry.mark = self._rseq  # it goes after the runs admitted before it
            self.l_own += 1
        return entry

    def _in_transaction(self, twin: Twin, queued: list[Request]) -> None:
        """A client in the middle of MULTI at the sync point: what it queued before is part of
        its EXEC, which touches those keys too and whose reply holds theirs (so that the
        follower can be given the leader's effects for the whole transaction). Without this its
        later queued commands would count as run at once, SPOP's ``QUEUED`` as what it popped."""
        twin.begin_multi()
        for request in queued:
            twin.queue_in_multi(self.codec.describe(request, self.table))

    def _new_poll(self, twin: Twin, waiter: Entry) -> None:
        """Admit a poll for a waiting blocking request: it goes where it is admitted now."""
        poll = Entry(twin.client, self.codec.make_request(list(waiter.park.poll)))
        self._order_view(twin, poll)
        poll.write = True
        poll.shared = waiter.shared
        poll.poll_of = waiter
        poll.lticket = Ticket(poll, LEADER_SHARED if poll.shared else twin.client, poll.keys,
                              True, poll.is_global)
        poll.lready = self.leader_seq.admit(poll.lticket)
        waiter.poll = poll
        waiter.lready = poll.lready
        self.waiting.pop(waiter, None)

    def _order_view(self, twin: Twin, entry: Entry) -> None:
        """What the request touches, for ordering: a queued command touches nothing until EXEC,
        which touches what its queue and the watched keys do."""
        request = self.codec.describe(entry.request, self.table)
        name = request.name
        if twin.multi and name not in ("EXEC", "DISCARD", "MULTI", "WATCH", "RESET"):
            entry.queued = True
            twin.queue_in_multi(request)
            return
        if name == "MULTI":
            twin.begin_multi()
            return
        if name == "EXEC":
            entry.queue = tuple(twin.multi_queue)
            entry.keys = tuple(twin.multi_keys | twin.watch)
            entry.write, entry.is_global = twin.multi_write, twin.multi_global
            twin.multi, twin.watch = False, set()
            return
        if name in ("DISCARD", "UNWATCH", "RESET"):
            twin.multi, twin.watch = False, set()
            return
        if name == "WATCH":
            twin.watch.update(request.keys)
            entry.keys = request.keys
            return
        if name in PUBSUB_COMMANDS:
            entry.keys, entry.write = (PUBSUB,), True
            return
        entry.keys = request.keys
        entry.write = request.write or name in SCRIPTS
        entry.is_global = request.is_global

    def _dispatch_leader(self, twin: Twin) -> None:
        """Send what may go of a client's requests, in its order, each on its path."""
        queue = twin.queue
        if not queue or not queue[0].lready or self.holding:
            return
        lflight = twin.lflight
        own = twin.client.link
        shared = self.lshared
        out: list[bytes] = []
        while queue and queue[0].lready:
            head = queue[0]
            if lflight and lflight[-1].shared is not head.shared:
                break  # its other path answers first: a client's requests never overlap
            if head.shared:
                if shared is None or not shared.link.connected:
                    break
            elif own is None or not own.connected:
                break
            elif head.mark >= 0 and self._lowest_run() <= head.mark:
                self._marked[twin] = None  # runs admitted before it are not answered yet
                break
            if head.park is not None:
                poll = head.poll
                if poll is None or head.polling:
                    break
                head.polling = True
                if not head.shared:
                    own.intercept = True  # a poll that finds nothing is not the client's
                self._send_leader(twin, poll, shared, own, out)
                break  # the client waits: nothing it sent later may go
            queue.popleft()
            self._send_leader(twin, head, shared, own, out)
        if out:
            self.proxy._send(own, out[0] if len(out) == 1 else b"".join(out))
            self._synthetic(own)

    def _send_leader(self, twin: Twin, entry: Entry, shared: Shared | None, own: Link | None,
                     out: list[bytes]) -> None:
        twin.lflight.append(entry)
        self.requests_leader += entry.run or 1
        if entry.shared:
            shared.flight.append(entry)
            shared.out.append(entry.request.raw)
        else:
            own.replies.expect(entry.request)
            out.append(entry.request.raw)
        if entry.write and entry.keys and not entry.request.blocking:
            self._dseq += 1
            entry.dseq = self._dseq
            for key in entry.keys:
                waiting = self.writing.get(key)
                if waiting is None:
                    self.writing[key] = deque((entry,))
                else:
                    waiting.append(entry)

    def _synthetic(self, link: Link) -> None:
        """Replies the reader makes up without bytes from the server (a request sent while the
        connection's replies are switched off gets an empty one, right after ``expect``)."""
        reply = link.replies.next_reply()
        if reply is None:
            return
        replies = [reply]
        while (reply := link.replies.next_reply()) is not None:
            replies.append(reply)
        if link.follower:
            self.follower_replies(link, replies)
        else:
            self.leader_replies(link.client, replies)

    def flush(self) -> None:
        """Send what the shared paths gathered (once per batch of the dispatch loop), and the
        replies routed from them."""
        send = self.proxy._send
        for shared in (self.lshared, self.fshared):
            if shared is not None and shared.out:
                out, shared.out = shared.out, []
                send(shared.link, out[0] if len(out) == 1 else b"".join(out))
        if self._outbox:
            outbox, self._outbox = self._outbox, {}
            for client, chunks in outbox.items():
                send(client, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def release(self) -> None:
        """End a barrier: send the leader what waited."""
        self.holding = False
        self.pinned = True
        for twin in list(self.twins.values()):
            self._dispatch_leader(twin)
        self.flush()

    # ---- leader replies ----------------------------------------------------------------------

    def leader_replies(self, client: Client, replies: list[Reply], forward: bool = False
                       ) -> None:
        """Framed replies on a client's own leader connection. The proxy forwarded their bytes
        already, unless ``forward`` (a poll was out: only the engine knows what is the
        client's)."""
        twin = self.twins.get(client)
        if twin is None:
            return
        woken: dict[Twin, None] = {}
        now = time.monotonic()
        lflight = twin.lflight
        for reply in replies:
            if reply.request is None:
                if forward:
                    self.proxy._send(client, reply.raw)
                if reply.push and twin.joined and not twin.solo:
                    self._push(twin, self.codec.canonical(reply), leader=True)
                continue
            if not reply.final or not lflight:
                if forward:
                    self.proxy._send(client, reply.raw)
                continue
            entry = lflight.popleft()
            self._answered(twin, entry, reply, now, woken, forward)
        for other in woken:
            self._dispatch_leader(other)
        self._maybe_forget(twin)

    def shared_data(self, link: Link, data: bytes) -> None:
        """Bytes on a shared connection (leader or follower)."""
        shared = self.fshared if link.follower else self.lshared
        if shared is None or shared.link is not link:
            return
        shared.parser.feed(data)
        try:
            if link.follower:
                self._follower_shared(shared)
            else:
                self._leader_shared(shared)
        except ProtocolError as exc:
            self.fail(f"{link.backend.name} sent malformed output: {exc}")

    def _leader_shared(self, shared: Shared) -> None:
        parser = shared.parser
        flight = shared.flight
        woken: dict[Twin, None] = {}
        now = time.monotonic()
        while flight:
            entry = flight[0]
            if entry.run:
                count, raw, error = parser.take(entry.run - entry.got)
                if count:
                    entry.parts.append(raw)
                    entry.got += count
                    entry.error = entry.error or error
                if entry.got < entry.run:
                    break
            else:
                got = parser.next()
                if got is None:
                    break
            flight.popleft()
            twin = self.twins.get(entry.client)
            if twin is None:
                continue
            if twin.lflight and twin.lflight[0] is entry:
                twin.lflight.popleft()
            if entry.run:
                self._run_answered(twin, entry, now, woken)
            else:
                value, raw = got
                self._answered(twin, entry, self.codec.reply(value, raw, entry.request), now,
                               woken, True)
            woken[twin] = None
        for other in woken:
            self._dispatch_leader(other)
            self._maybe_forget(other)

    def _run_answered(self, twin: Twin, run: Entry, now: float, woken: dict[Twin, None]
                      ) -> None:
        """A run's replies are all in: to the client, and on to the follower (request by
        request when the leader refused one of them, so that it is withheld there)."""
        parts = run.parts
        run.lraw = raw = parts[0] if len(parts) == 1 else b"".join(parts)
        run.parts = None
        run.ltime = now
        run.done = True
        self._to_client(twin.client, raw)
        if self._marked:
            marked, self._marked = self._marked, {}
            woken.update(marked)
        if self.parked:
            self._wake_all(woken)
        if twin.solo:
            return
        if run.error:
            self._split_run(twin, run, now)
        else:
            self._release_run(twin, run)

    def _split_run(self, twin: Twin, run: Entry, now: float) -> None:
        """Release a run request by request, each with its leader reply, as if it had come so."""
        requests = self.codec.request_reader().receive(run.request.raw)
        parser = self.codec.shared_parser()
        parser.feed(run.lraw)
        for request in requests:
            value, raw = parser.next()
            entry = Entry(twin.client, request)
            self._order_view(twin, entry)
            entry.shared = True
            entry.lreply = self.codec.reply(value, raw, request)
            entry.lvalue = self.codec.canonical(entry.lreply)
            entry.ltime = now
            self._release(twin, entry)

    def _wake_all(self, woken: dict[Twin, None]) -> None:
        """A run wrote something: the proxy does not know which keys, so every waiting
        blocking request polls again."""
        self._wake(tuple(self.parked), woken)

    def _answered(self, twin: Twin, entry: Entry, reply: Reply, now: float,
                  woken: dict[Twin, None], forward: bool) -> None:
        """The leader's final reply to ``entry``: to the client, out of the order, on to the
        follower."""
        if entry.poll_of is not None:
            self._polled(twin, entry, reply, now, woken)
            return
        if entry.unblocking and self._unblocked(twin, entry, reply, woken):
            return
        if forward:
            self._to_client(twin.client, reply.raw)
        entry.lreply = reply
        entry.lvalue = self.codec.canonical(reply)
        entry.ltime = now
        if entry.mark >= 0:
            entry.mark = -1
            self.l_own -= 1
        for ticket in self.leader_seq.done(entry.lticket):
            other: Entry = ticket.item
            self._ready(other)
            woken[self.twins.get(other.client, twin)] = None
        if entry.dseq:
            self._written(entry)
        if entry.write and self.parked:
            self._wake(entry.keys, woken)
        if twin.solo or not self.pinned:
            return
        if entry.request.blocking and entry.keys:
            waker = self._waker(entry)
            if waker is not None:
                if waker.after is None:
                    waker.after = []
                waker.after.append(entry)
                return
        self._release(twin, entry)
        if entry.after:
            for other in entry.after:
                other_twin = self.twins.get(other.client)
                if other_twin is not None:
                    self._release(other_twin, other)
            entry.after = None

    def blocked_in_leader(self) -> list[Entry]:
        """Blocking requests that were waiting in the leader when the update began."""
        return [e for t in self.twins.values() for e in t.lflight
                if e.request.blocking and e.park is None and e.poll_of is None]

    def unblocking(self, entry: Entry) -> bool:
        """The lifecycle is about to release ``entry`` from the leader (CLIENT UNBLOCK): its
        null reply will not be the client's, and the proxy will wait for it instead. False
        when it cannot be, or came back already (with data, while the lifecycle looked up its
        connection's id)."""
        park = self.codec.blocking(entry.request, self.table)
        link = entry.client.link
        if park is None or link is None or entry.lreply is not None:
            return False
        entry.park = park
        entry.unblocking = True
        link.intercept = True
        return True

    def _unblocked(self, twin: Twin, entry: Entry, reply: Reply, woken: dict[Twin, None]
                   ) -> bool:
        """A request released from the leader at the sync point: it now waits in the proxy,
        polled like any other. False when it got data after all (then it is answered as is)."""
        entry.unblocking = False
        link = twin.client.link
        if link is not None and not any(e.unblocking for e in twin.lflight):
            link.intercept = False
        value = self.codec.canonical(reply)
        if value not in (None, ()):
            entry.park = None
            return False
        for ticket in self.leader_seq.done(entry.lticket):
            self._ready(ticket.item)
            woken[self.twins.get(ticket.item.client, twin)] = None
        timeout = entry.park.timeout
        entry.deadline = time.monotonic() + timeout if timeout else float("inf")
        twin.queue.appendleft(entry)
        self._new_poll(twin, entry)
        woken[twin] = None
        return True

    def _to_client(self, client: Client, raw: bytes) -> None:
        if raw and not client.closed:
            box = self._outbox.get(client)
            if box is None:
                self._outbox[client] = [raw]
            else:
                box.append(raw)

    def _polled(self, twin: Twin, poll: Entry, reply: Reply, now: float,
                woken: dict[Twin, None]) -> None:
        """A poll's reply: the waiting request is answered, or waits on."""
        waiter = poll.poll_of
        assert waiter is not None
        waiter.polling = False
        waiter.poll = None
        poll.lreply = reply
        poll.lvalue = value = self.codec.canonical(reply)
        poll.ltime = now
        link = twin.client.link
        if link is not None and not poll.shared:
            link.intercept = False
        for ticket in self.leader_seq.done(poll.lticket):
            self._ready(ticket.item)
            woken[self.twins.get(ticket.item.client, twin)] = None
        if value is None or value == ():  # nothing there yet: it waits on, in the proxy
            waiter.lready = False
            if not twin.gone:
                self.waiting[waiter] = None
                for key in poll.keys:
                    self.parked.setdefault(key, []).append(waiter)
            return
        self._to_client(twin.client, reply.raw)
        if twin.queue and twin.queue[0] is waiter:
            twin.queue.popleft()
        if not twin.solo:
            self._release(twin, poll)
        self._wake(poll.keys, woken)
        woken[twin] = None

    def _ready(self, entry: Entry) -> None:
        entry.lready = True
        if entry.poll_of is not None:
            entry.poll_of.lready = True

    def _wake(self, keys: tuple[bytes, ...], woken: dict[Twin, None]) -> None:
        """A write on these keys completed: poll again for the requests waiting on them."""
        for key in keys:
            waiters = self.parked.pop(key, None)
            if not waiters:
                continue
            for waiter in waiters:
                twin = self.twins.get(waiter.client)
                if twin is None or twin.gone or waiter.poll is not None \
                        or waiter not in self.waiting:
                    continue
                self._new_poll(twin, waiter)
                woken[twin] = None

    def expire(self, now: float) -> None:
        """Answer the waits whose timeout passed, with the null Redis gives."""
        for waiter in [w for w in self.waiting if w.deadline <= now]:
            self.waiting.pop(waiter, None)
            twin = self.twins.get(waiter.client)
            if twin is None or twin.gone or not twin.queue or twin.queue[0] is not waiter:
                continue
            link = twin.client.link
            self._to_client(twin.client, waiter.park.null(link.replies if link else None))
            twin.queue.popleft()
            self._dispatch_leader(twin)
        self.flush()

    def _written(self, entry: Entry) -> None:
        """A write's reply is in: it no longer is in the leader."""
        for key in entry.keys:
            waiting = self.writing.get(key)
            if waiting is None:
                continue
            if waiting[0] is entry:
                waiting.popleft()
            elif entry in waiting:
                waiting.remove(entry)
            if not waiting:
                del self.writing[key]

    def _waker(self, entry: Entry) -> Entry | None:
        """For a blocking command that was already in the leader when the update began (the
        others are polled): the write that woke it, when its reply comes before the write's
        own, is the first write on its keys still in the leader."""
        first = None
        for key in entry.keys:
            waiting = self.writing.get(key)
            if waiting and (first is None or waiting[0].dseq < first.dseq):
                first = waiting[0]
        return first

    def _leader_done(self, entry: Entry) -> None:
        """An admitted request that will never go to the leader (its client left)."""
        entry.done = True  # a run: no later request waits for it
        if entry.mark >= 0:
            entry.mark = -1
            self.l_own -= 1
        if entry.poll is not None and not entry.polling:
            self._leader_done(entry.poll)
        self.waiting.pop(entry, None)
        if entry.lticket is not None:
            for ticket in self.leader_seq.done(entry.lticket):
                other: Entry = ticket.item
                self._ready(other)
                twin = self.twins.get(other.client)
                if twin is not None and not self.holding:
                    self._dispatch_leader(twin)

    # ---- the follower side -------------------------------------------------------------------

    def _release(self, twin: Twin, entry: Entry) -> None:
        """The leader's reply is known: decide what the follower gets and place it in order."""
        request = entry.request
        plan = self.codec.follower_plan(request, entry.lvalue, entry.queued)
        words = plan.words if plan is not None else None
        if plan is not None and plan.words is None and plan.check is None:
            if plan.rule == "builtin:withheld":
                self.withheld += 1
            else:
                self.not_sent += 1
            return
        extra: set[bytes] | None = None
        if entry.queue and plan is None:
            transaction = self.codec.transaction_plan(entry.queue, entry.lvalue)
            if transaction is not None:
                plan = transaction
                extra = self._replay_transaction(twin, entry, transaction)
        rewritten = self.comparator.rules.rewrite(request)
        if rewritten is not None:
            words = rewritten
        frequest: Request | None = None
        if words is not None:
            # A protocol that cannot build requests raises: the follower gets the client's.
            with contextlib.suppress(LocalProtocolError):
                frequest = self.codec.make_request(words)
        if frequest is not None:
            self.codec.describe(frequest, self.table)
            keys, write, glob = frequest.keys, frequest.write, frequest.is_global
        else:
            frequest = request
            keys, write, glob = entry.keys, entry.write, entry.is_global
            if extra:
                keys = tuple(extra.union(keys))
        entry.frequest = frequest
        entry.plan = plan
        ticket = Ticket(entry, FOLLOWER_SHARED if entry.shared else twin.client, keys, write,
                        glob)
        entry.fticket = ticket
        entry.fready = self.follower_seq.admit(ticket)
        if not entry.shared and ticket.tracked:
            entry.fmark = self._frseq  # it goes after the runs released before it
            self.f_own += 1
        self._queue_follower(twin, entry, 1, len(frequest.raw))

    def _replay_transaction(self, twin: Twin, entry: Entry, plan: Any) -> set[bytes]:
        """Queue, ahead of the EXEC ``entry`` on the client's follower connection, what the
        codec's transaction plan sends first: the transaction again, with the commands whose
        effect the leader's reply decided replaced by that effect (SPOP -> SREM). These are the
        proxy's own requests, as a session replay's are: their replies are not compared (EXEC's
        reply is, element by element, in :meth:`_compare_transaction`) and they count in no
        backlog. They may go before EXEC's turn in the follower's order: queued commands do
        nothing until EXEC. Returns the keys the effects name (RANDOMKEY's key), for EXEC's
        place in that order."""
        keys: set[bytes] = set()
        queue = entry.queue
        rewrite = self.comparator.rules.rewrite
        fqueue = twin.fqueue
        for item in plan.before:
            if isinstance(item, int):
                request = queue[item]
                words = rewrite(request)
                if words is not None:
                    request = self.codec.describe(self.codec.make_request(words), self.table)
            else:
                request = self.codec.describe(self.codec.make_request(item), self.table)
                keys.update(request.keys)
            internal = Entry(twin.client, request)
            internal.internal = True
            internal.frequest = request
            internal.fready = True
            fqueue.append(internal)
        return keys

    def _release_run(self, twin: Twin, run: Entry) -> None:
        """A run goes to the follower as it came; while a request on a client's own follower
        connection is ordered there, runs wait (their keys are not known)."""
        run.frequest = run.request
        run.fready = not self.f_own
        if not run.fready:
            self._fheld[twin] = None
        self._frseq += 1
        run.frseq = self._frseq
        self._fruns.append(run)
        self._queue_follower(twin, run, run.run, len(run.request.raw))

    def _queue_follower(self, twin: Twin, entry: Entry, count: int, size: int) -> None:
        twin.fqueue.append(entry)
        self.backlog += count
        self.backlog_bytes += size
        if self.backlog > self.settings.max_backlog_requests:
            self.fail(f"the follower fell {self.backlog} requests behind "
                      f"(max_backlog_requests = {self.settings.max_backlog_requests})")
        elif self.backlog_bytes > self.settings.max_backlog_bytes:
            self.fail(f"the follower fell {self.backlog_bytes} bytes behind "
                      f"(max_backlog_bytes = {self.settings.max_backlog_bytes})")
        if not self.follower_live:
            if self.backlog_bytes > self.settings.spill_bytes:
                self._spill(entry)
            return
        self._dispatch_follower(twin)

    def _spill(self, entry: Entry) -> None:
        """Move the bytes an entry waits with (its request, the leader's reply) to disk, until
        the follower is live; see :mod:`twinproxy.spill`."""
        if entry.run:
            if entry.parts is not None:
                return  # the leader's reply is still coming in
            if self.spill is None:
                self.spill = Spill()
            entry.spilled = self.spill.put([entry.request.raw, entry.lraw])
            entry.request.raw = entry.lraw = b""
            return
        request, lreply = entry.frequest, entry.lreply
        if (lreply is None or request is None or entry.queue or entry.internal
                or entry.park is not None or entry.poll_of is not None):
            return  # rare, small or shared with other state: it stays in memory
        if self.spill is None:
            self.spill = Spill()
        original = entry.request
        parts = [request.raw, lreply.raw]
        if original is not request:
            parts.append(original.raw)
            original.raw, original.args, original.data = b"", [], None
        entry.spilled = self.spill.put(parts)
        request.raw, request.args, request.data = b"", [], None
        lreply.raw, lreply.value = b"", None
        entry.lvalue = None

    def _unspill(self, entry: Entry) -> None:
        """Read back what :meth:`_spill` moved, re-parsed by the codec (sans-IO: plain bytes)."""
        assert self.spill is not None and entry.spilled is not None
        parts = self.spill.take(entry.spilled)
        entry.spilled = None
        if entry.run:
            entry.request.raw, entry.lraw = parts
            return
        request, lreply = entry.frequest, entry.lreply
        assert request is not None and lreply is not None
        for target, raw in ((request, parts[0]),
                            (entry.request, parts[2] if len(parts) > 2 else None)):
            if raw is not None:
                [parsed] = self.codec.request_reader(self.proxy.limits).receive(raw)
                target.raw, target.args, target.data = raw, parsed.args, parsed.data
        replies = self.codec.reply_reader(self.proxy.limits)
        replies.expect(entry.request)
        [parsed] = replies.receive(parts[1])
        lreply.raw, lreply.value = parsed.raw, parsed.value
        entry.lvalue = self.codec.canonical(lreply)

    def _dispatch_follower(self, twin: Twin) -> None:
        queue = twin.fqueue
        if not queue or not queue[0].fready or not self.follower_live:
            return
        fflight = twin.fflight
        own = twin.follower
        shared = self.fshared
        now = self.proxy.now
        out: list[bytes] = []
        while queue and queue[0].fready:
            entry = queue[0]
            if fflight and fflight[-1].shared is not entry.shared:
                break
            if entry.shared:
                if shared is None or not shared.link.connected:
                    break
            elif own is None or not twin.joined:
                break
            elif entry.fmark >= 0 and self._lowest_frun() <= entry.fmark:
                self._fmarked[twin] = None  # runs released before it are not answered yet
                break
            queue.popleft()
            if entry.spilled is not None:
                self._unspill(entry)
            entry.fsent = now
            fflight.append(entry)
            raw = entry.frequest.raw
            if entry.shared:
                shared.flight.append(entry)
                shared.out.append(raw)
            else:
                own.replies.expect(entry.frequest)
                out.append(raw)
            self.requests_follower += entry.run or 1
        if out:
            self.proxy._send(own, out[0] if len(out) == 1 else b"".join(out))
            self._synthetic(own)

    def start_follower(self) -> None:
        """The follower serves: open its connections, replay sessions, send what waited."""
        self.follower_live = True
        self.fshared = self._open_shared(self.follower, follower=True)
        for twin in list(self.twins.values()):
            if not twin.gone or twin.fqueue:
                self._open_follower(twin)
            self._dispatch_follower(twin)
        self.flush()

    def open_leader(self) -> None:
        """Open the shared connection to the leader (at the start of the update)."""
        self.lshared = self._open_shared(self.leader, follower=False)

    def _open_shared(self, backend: Backend, follower: bool) -> Shared | None:
        if not self.codec.shared_connection:
            return None
        link = self.proxy._open_link(None, backend, follower=follower, shared=True)
        if link is None:
            self.fail(f"cannot connect to {backend.name}")
            return None
        return Shared(link, self.codec.shared_parser(self.proxy.limits))

    def shared_connected(self, link: Link) -> None:
        for twin in list(self.twins.values()):
            if link.follower:
                self._dispatch_follower(twin)
            else:
                self._dispatch_leader(twin)

    def _open_follower(self, twin: Twin) -> None:
        if twin.solo:
            return
        twin.follower = self.proxy._open_link(twin.client, self.follower, follower=True)
        if twin.follower is None:
            self.fail(f"cannot connect to the follower {self.follower.name}")

    def follower_connected(self, link: Link) -> None:
        """A follower connection is up: replay the session first, then the client's backlog."""
        twin = self.twins.get(link.client)
        if twin is None:
            self.proxy._drop_link(link)
            return
        if twin.replay:
            expect = link.replies.expect
            for raw in twin.replay:
                request = self.codec.request_reader().receive(raw)[0]
                entry = Entry(twin.client, request)
                entry.internal = True
                entry.frequest = request
                entry.fsent = self.proxy.now
                expect(request)
                twin.fflight.append(entry)
            self.proxy._send(link, b"".join(twin.replay))
        twin.joined = True
        self._dispatch_follower(twin)
        self._synthetic(link)

    def follower_data(self, link: Link, data: bytes) -> None:
        try:
            replies = link.replies.receive(data)
        except ProtocolError as exc:
            self.fail(f"the follower {self.follower.name} sent malformed output: {exc}")
            return
        self.follower_replies(link, replies)

    def follower_replies(self, link: Link, replies: list[Reply]) -> None:
        """Framed replies on a client's own follower connection."""
        twin = self.twins.get(link.client)
        if twin is None:
            self.proxy._drop_link(link)
            return
        woken: dict[Twin, None] = {twin: None}
        fflight = twin.fflight
        for reply in replies:
            if reply.request is None:
                if reply.push and not twin.solo:
                    self._push(twin, self.codec.canonical(reply), leader=False)
                continue
            if not reply.final or not fflight:
                continue
            entry = fflight.popleft()
            if entry.internal:
                continue  # a session replay: its outcome shows in the replies that follow
            self._followed(twin, entry, reply, woken)
        for other in woken:
            self._dispatch_follower(other)
            self._maybe_forget(other)

    def _follower_shared(self, shared: Shared) -> None:
        parser = shared.parser
        flight = shared.flight
        woken: dict[Twin, None] = {}
        while flight:
            entry = flight[0]
            if entry.run:
                if entry.parts is None:
                    if not entry.answer:
                        same = parser.match(entry.lraw)  # the common case, without framing
                        if same is None:
                            break
                        if same:
                            flight.popleft()
                            twin = self.twins.get(entry.client)
                            if twin is not None:
                                if twin.fflight and twin.fflight[0] is entry:
                                    twin.fflight.popleft()
                                self._run_followed(twin, entry, woken, True)
                                woken[twin] = None
                            continue
                    entry.parts, entry.got = [], 0
                count, raw, _ = parser.take(entry.run - entry.got)
                if count:
                    entry.parts.append(raw)
                    entry.got += count
                if entry.got < entry.run:
                    break
            else:
                got = parser.next()
                if got is None:
                    break
            flight.popleft()
            twin = self.twins.get(entry.client)
            if twin is None:
                continue
            if twin.fflight and twin.fflight[0] is entry:
                twin.fflight.popleft()
            if entry.run:
                self._run_followed(twin, entry, woken)
            else:
                value, raw = got
                self._followed(twin, entry, self.codec.reply(value, raw, entry.frequest), woken)
            woken[twin] = None
        for other in woken:
            self._dispatch_follower(other)
            self._maybe_forget(other)

    def _run_followed(self, twin: Twin, run: Entry, woken: dict[Twin, None],
                      same: bool = False) -> None:
        """The follower's replies to a run: the same bytes as the leader's (``same``, or
        found so), or each request's replies compared under the rules."""
        run.fdone = True
        if same:
            self.compared += run.run
        else:
            parts = run.parts
            raw = parts[0] if len(parts) == 1 else b"".join(parts)
            if run.answer:
                self._to_client(twin.client, raw)
            elif raw == run.lraw:
                self.compared += run.run
            else:
                self._compare_run(twin, run, raw)
        run.parts = None
        self.backlog -= run.run
        self.backlog_bytes -= len(run.request.raw)
        if self._fmarked:
            marked, self._fmarked = self._fmarked, {}
            woken.update(marked)

    def _compare_run(self, twin: Twin, run: Entry, follower_raw: bytes) -> None:
        requests = self.codec.request_reader().receive(run.request.raw)
        leader, follower = self.codec.shared_parser(), self.codec.shared_parser()
        leader.feed(run.lraw)
        follower.feed(follower_raw)
        for request in requests:
            self.codec.describe(request, self.table)
            lvalue, lraw = leader.next()
            fvalue, fraw = follower.next()
            self.compared += 1
            verdict = self.comparator.compare(request, self.codec.reply(lvalue, lraw, request),
                                              self.codec.reply(fvalue, fraw, request))
            self._record(twin, request, lraw, fraw, verdict)

    def _followed(self, twin: Twin, entry: Entry, reply: Reply,
                  woken: dict[Twin, None]) -> None:
        """The follower's final reply to ``entry``: compared (or, after a takeover, the
        client's), and out of the follower's order."""
        if entry.answer:
            self._to_client(twin.client, reply.raw)
        else:
            self._compare(twin, entry, reply)
        self.backlog -= 1
        self.backlog_bytes -= len(entry.frequest.raw)
        if entry.fmark >= 0:
            entry.fmark = -1
            self.f_own -= 1
            if not self.f_own and self._fheld:
                held, self._fheld = self._fheld, {}
                for other_twin in held:
                    for queued in other_twin.fqueue:
                        if queued.run:
                            queued.fready = True
                    woken[other_twin] = None
        if entry.fticket is None:
            return
        for ticket in self.follower_seq.done(entry.fticket):
            other: Entry = ticket.item
            other.fready = True
            other_twin = self.twins.get(other.client)
            if other_twin is not None:
                woken[other_twin] = None

    # ---- comparison --------------------------------------------------------------------------

    def _compare(self, twin: Twin, entry: Entry, reply: Reply) -> None:
        """Compare the follower's reply to ``entry`` with the leader's and record the outcome:
        a difference a built-in or a config rule explains is kept as expected, with that rule,
        as a run's is (:meth:`_compare_run`)."""
        self.compared += 1
        plan = entry.plan
        leader = entry.lreply
        if plan is not None and plan.check is not None:
            value = self.codec.canonical(reply)
            elapsed = time.monotonic() - entry.ltime
            if plan.check(entry.lvalue, value, elapsed):
                # Sent the leader's effect instead (plan.words), the follower's reply answers
                # another request: its difference is no divergence.
                if leader.raw != reply.raw and plan.words is None:
                    self._record(twin, entry.request, leader.raw, reply.raw,
                                 Verdict(False, True, plan.rule, (plan.rule,)))
                return
            verdict = self.comparator.compare(entry.request, leader, reply)
            if not verdict.unexpected:
                self._record(twin, entry.request, leader.raw, reply.raw, verdict)
                return
            verdict = Verdict(False, False, None, (plan.rule, *verdict.tried))
        else:
            verdict = self.comparator.compare(entry.request, leader, reply)
            if verdict.equal:
                return
            if verdict.unexpected and entry.queue:
                verdict = self._compare_transaction(entry, reply, verdict)
        self._record(twin, entry.request, leader.raw, reply.raw, verdict)

    def _compare_transaction(self, entry: Entry, reply: Reply, verdict: Verdict) -> Verdict:
        """EXEC's replies, one per queued request, each under that request's own rules (a TTL,
        an INFO or a HELLO inside a transaction differ as they do outside one).

        A request that the follower got as the leader's effect (``effects`` of the EXEC's
        transaction plan: SREM for SPOP) is compared by that effect's check, as outside a
        transaction; when only such requests differ, the replies are equal in effect and
        nothing is recorded. A request with such a rule that ran on both as it was (no plan:
        the leader aborted it, or it joined mid-transaction) must reply the same.
        """
        a = entry.lvalue
        b = self.codec.canonical(reply)
        queue = entry.queue
        if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == len(queue)):
            return verdict
        elapsed = time.monotonic() - entry.ltime
        effects = getattr(entry.plan, "effects", None) or {}
        used = []
        for i, (request, la, fb) in enumerate(zip(queue, a, b, strict=True)):
            if la == fb:
                continue
            effect = effects.get(i)
            if effect is not None:
                if effect.check is not None and effect.check(la, fb, elapsed):
                    continue
                return Verdict(False, False, None, (*verdict.tried, effect.rule))
            plan = self.codec.follower_plan(request, la, False)
            if plan is not None and plan.check is not None and plan.words is None and \
                    plan.check(la, fb, elapsed):
                used.append(plan.rule)
                continue
            part = self.comparator.compare_values(request, la, fb)
            if part.unexpected:
                return Verdict(False, False, None, (*verdict.tried, *part.tried))
            used.append(part.rule)
        if effects and not used:
            return EQUAL
        return Verdict(False, True, used[0] if used else None, verdict.tried)

    def _record(self, twin: Twin, request: Request, leader: bytes, follower: bytes,
                verdict: Verdict, reason: str = "replies differ") -> None:
        if verdict.equal:
            return
        record = self.divergences.add(self.update, twin.client.peer, request, leader, follower,
                                      verdict, reason)
        if verdict.expected:
            self.expected += 1
            rule = verdict.rule or "?"
            self.expected_rules[rule] = self.expected_rules.get(rule, 0) + 1
            return
        self.unexpected += 1
        log_event("divergence", f"update {self.update}: unexpected divergence on {request.name} "
                  f"from {twin.client.peer}", update=self.update, id=record.id,
                  request=request.name, connection=twin.client.peer, reason=reason,
                  leader=repr(leader[:80]), follower=repr(follower[:80]))
        if self.settings.on_divergence == "rollback":
            self.fail(f"unexpected divergence on {request.name}: leader replied {leader[:60]!r}, "
                      f"follower {follower[:60]!r}")

    def _push(self, twin: Twin, value: Any, leader: bool) -> None:
        """Pushes (pub/sub messages, invalidations) are matched in order, never delivered."""
        mine, theirs = (twin.lpushes, twin.fpushes) if leader else (twin.fpushes, twin.lpushes)
        if theirs:
            other = theirs.popleft()
            a, b = (value, other) if leader else (other, value)
            self.compared += 1
            if a != b:
                request = Request(b"", "(push)", [])
                self._record(twin, request, repr(a).encode(), repr(b).encode(),
                             Verdict(False), "push messages differ")
        elif len(mine) < MAX_PUSHES:
            mine.append(value)
        else:
            self.fail(f"client {twin.client.peer}: {MAX_PUSHES} push messages unmatched")

    # ---- health ------------------------------------------------------------------------------

    def fail(self, reason: str) -> None:
        """The update cannot go on: say why, once; the lifecycle rolls back."""
        if self.failed is None:
            self.failed = reason
            self.on_failure(reason)

    def check_health(self, now: float) -> None:
        """Called by the proxy's housekeeping: a follower that does not answer hangs."""
        if not self.follower_live or self.failed:
            return
        timeout = self.settings.follower_timeout
        oldest = [t.fflight[0].fsent for t in self.twins.values() if t.fflight]
        if self.fshared is not None and self.fshared.flight:
            oldest.append(self.fshared.flight[0].fsent)
        if oldest and now - min(oldest) > timeout:
            self.fail(f"the follower {self.follower.name} did not answer within "
                      f"{timeout:g}s (follower_timeout)")

    def leader_lost(self, client: Client, partial: bool) -> None:
        """A leader connection closed on its own: the leader died, or closed just this one
        (the lifecycle finds out which, with ``on_leader_lost``). ``partial``: it closed in the
        middle of a reply, so this client's stream cannot be completed from the follower."""
        twin = self.twins.get(client)
        if twin is None:
            return
        if partial:
            self.proxy._close_client(client)
            return
        self.on_leader_lost()

    def follower_lost(self, link: Link) -> None:
        """A follower connection closed on its own."""
        self.fail(f"the follower {self.follower.name} closed a connection "
                  f"({'it is down' if not self.follower.up else 'it is still up'})")

    # ---- barriers, cutover and takeover -------------------------------------------------------

    def hold(self) -> None:
        """Start a barrier: requests still arrive and are admitted, but wait."""
        self.holding = True

    def leader_quiet(self) -> bool:
        """Nothing but blocked requests is in the leader."""
        for twin in self.twins.values():
            for entry in twin.lflight:
                if not entry.request.blocking:
                    return False
        return True

    def caught_up(self) -> bool:
        """The follower has answered everything released to it (and every push matched)."""
        if self.backlog:
            return False
        return all(not t.fflight and not t.lpushes and not t.fpushes
                   for t in self.twins.values() if not t.solo)

    def blocked_clients(self) -> list[Client]:
        return [t.client for t in self.twins.values() if t.lflight]

    def close_shared(self) -> None:
        """The update is over: the shared connections go (every client has its own ones)."""
        for shared in (self.lshared, self.fshared):
            if shared is not None:
                self.proxy._drop_link(shared.link)
        self.lshared = self.fshared = None
        if self.spill is not None:
            self.spill.close()

    def take_over(self) -> None:
        """The leader failed: the follower answers what the leader had not.

        Whatever the leader had not answered (sent, or still waiting its turn) goes to the
        follower after what was already released to it, in the same order, and the follower's
        replies go to the client. The leader may have executed some of it before it died; its
        state died with it, so executing it once on the follower is the one execution left.
        """
        if self.lshared is not None:
            self.lshared.flight.clear()
        for phase in ("lflight", "queue"):
            for twin in list(self.twins.values()):
                if twin.solo:
                    continue
                pending: deque[Entry] = getattr(twin, phase)
                for entry in pending:
                    if entry.poll_of is not None:
                        continue  # its waiting request, still queued, goes as it is
                    entry.park = None
                    entry.answer = True
                    entry.frequest = entry.request
                    entry.fticket = Ticket(entry, FOLLOWER_SHARED if entry.shared else twin.client,
                                           entry.keys, entry.write, entry.is_global)
                    entry.fready = self.follower_seq.admit(entry.fticket)
                    entry.parts = None
                    twin.fqueue.append(entry)
                    self.backlog += entry.run or 1
                    self.backlog_bytes += len(entry.request.raw)
                pending.clear()
        for twin in list(self.twins.values()):
            self._dispatch_follower(twin)
        self.flush()

    def reversed(self, comparator: Comparator) -> Mve:
        """The engine with the roles swapped, after a barrier: the follower leads, the old
        leader follows (``after_cutover = "keep-old"``, and the way back).

        Every client's two connections are swapped, and the shared ones; the clients have the
        same session on both versions, so the new follower needs no replay. What waited at the
        barrier keeps its place, in the new leader's order.
        """
        other = Mve(self.proxy, self.follower, self.leader, comparator, self.divergences,
                    self.settings, self.on_failure, self.update, self.table,
                    self.on_leader_lost)
        other.holding = True
        other.follower_live = True
        other.lshared, other.fshared = self.fshared, self.lshared
        other._rseq = self._rseq
        other._lruns = deque(e for t in self.twins.values() for e in t.queue if e.run)
        for shared, follower in ((other.lshared, False), (other.fshared, True)):
            if shared is not None:
                shared.link.follower = follower
        for twin in list(self.twins.values()):
            client = twin.client
            old, new = client.link, twin.follower
            if twin.gone or new is None or not twin.joined:
                if new is not None:
                    self.proxy._drop_link(new)
                if not twin.gone:
                    self.proxy._close_client(client)
                continue
            new.follower = False
            client.link = new
            twin.follower = old
            twin.joined = old is not None
            if old is not None:
                old.follower = True
            twin.lpushes.clear()
            twin.fpushes.clear()
            other.twins[client] = twin
            for entry in twin.queue:
                if entry.park is not None:  # a waiting request: it polls the new leader
                    entry.poll, entry.polling = None, False
                    other._new_poll(twin, entry)
                    continue
                conn = LEADER_SHARED if entry.shared else client
                entry.lticket = Ticket(entry, conn, () if entry.request.blocking
                                       else entry.keys, entry.write, entry.is_global)
                entry.lready = other.leader_seq.admit(entry.lticket)
        return other

    def status(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "divergences": self.unexpected,
            "expected_divergences": self.expected,
            "expected_by_rule": dict(self.expected_rules),
            "withheld": self.withheld,
            "not_sent": self.not_sent,
            "backlog": self.backlog,
            "backlog_bytes": self.backlog_bytes,
            "spilled": self.spill.records if self.spill is not None else 0,
            "spilled_bytes": self.spill.bytes if self.spill is not None else 0,
            "waiting_clients": len(self.waiting),
            "shared_clients": sum(1 for t in self.twins.values() if t.shared),
        }
