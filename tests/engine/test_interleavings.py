"""Random interleavings: clients' requests and both servers' replies in any order.

Hypothesis picks, step by step, which client sends what, which server executes which connection's
next request, when a batch of the dispatch loop ends, and when the follower starts. Whatever it
picks, the engine must keep its two promises:

* both versions execute conflicting requests (same key, one of them writing) in the same order,
  so they end with the same data;
* every request a client sent is answered exactly once, from the leader;
* every write a client sent runs once on the leader, also when the client closed before it went
  there (as directly, the server runs what it read before the end of input).

CI runs a few hundred interleavings; ``ENGINE_EXAMPLES=20000`` runs a long search.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine.harness import OWN, World, new_engine, request
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.redis import CODEC, fast

SELECT_1 = request("SELECT", "1")
MULTI, EXEC = request("MULTI"), request("EXEC")
HELLO_3 = request("HELLO", "3")
ALONE = (1, 2, 3)  # clients with a session of their own (OWN): their own connections
PLAINS = (8, 9)  # clients in the plain session: the shared connections, and runs
# Client 9 may speak RESP3 (HELLO 3 before the update): the shared connections switch
# dialects between its requests and the others'.
# A plain client that connects while the follower serves: no follower connection of its own
# until it sends a SELECT 1 or a HELLO 3 (then it shares in database 1, or in RESP3: the
# shared connections switch between its requests and the others'), or the cutover comes near
# (OpenFollowers). (The model server has one database: the order is what is checked.)
LATE = 7
# (Client ids are the engine's to compare only; server connection ids come from new_id(), as
# the relay's do, so that they never meet the ids of the connections the engine opens.)
COMMANDS = (("GET", "a"), ("GET", "b"), ("SET", "a", "x"), ("SET", "b", "y"), ("INCR", "a"),
            ("INCR", "b"), ("DEL", "a"), ("PING",))


def _labels(world: World) -> dict[int, object]:
    """Which client each server connection belongs to ('shared' for the shared ones)."""
    labels: dict[int, object] = {conn: c for c, conn in world.leader_conns.items()}
    for command in world.opened:
        labels[command.conn] = command.client if command.client is not None else "shared"
    return labels


def _order(world: OpenedWorld, role: int) -> dict[bytes, tuple[list, list]]:
    """Per key: the writes in the order they ran, and each read with the writes before it
    (but those of clients that closed: the follower gets no read of theirs)."""
    labels = _labels(world)
    out = {}
    for key, history in world.servers[role].history.items():
        writes, reads = [], []
        for conn, raw in history:
            name = raw.split(b"\r\n")[2].upper()
            label = conn[1] if type(conn) is tuple else labels[conn]  # (see OpenedWorld.run)
            if name == b"GET":
                if label not in world.gone:
                    reads.append((label, raw, len(writes)))
            else:
                writes.append((label, raw))
        if writes or reads:
            out[key] = (writes, sorted(reads, key=repr))
    return out


class OpenedWorld(World):
    """A world that remembers the connections the engine opened."""

    def __init__(self, shared_after: int = 0) -> None:
        super().__init__(new_engine(shared_after=shared_after))
        self.opened: list[cmd.Open] = []
        self.gone: set[int] = set()  # the clients that closed

    def _do(self, command: cmd.Command) -> ev.Event | None:
        if type(command) is cmd.Open:
            self.opened.append(command)
        return super()._do(command)

    def run(self, role: int, conn: int, served_first: bool = True) -> None:
        """As :meth:`World.run`, but what a shared connection ran goes in the server's history
        as its client's, ``("client", id)``: the exchange at the head of that connection's
        flight, whose reply is fed at once. One version may run a client's request on its own
        connection and the other on the shared one (Exchange.shares_later), and the order
        checked is the clients'."""
        shared = self.engine.sides[role].shared
        if shared is None or shared.conn.id != conn or not shared.flight or \
                shared.flight[0].client is None:
            super().run(role, conn, served_first)
            return
        owner = ("client", shared.flight[0].client.id)
        history = self.servers[role].history
        before = {key: len(entries) for key, entries in history.items()}
        super().run(role, conn, served_first)
        for key, entries in history.items():
            for i in range(before.get(key, 0), len(entries)):
                if entries[i][0] == conn:
                    entries[i] = (owner, entries[i][1])


EXAMPLES = int(os.environ.get("ENGINE_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_both_versions_run_conflicting_requests_in_one_order(data: st.DataObject) -> None:
    # shared_after 1: a plain client's first request goes on its own connection, the next
    # ones on the shared one (held on the follower behind the first's reply there).
    world = OpenedWorld(data.draw(st.sampled_from((0, 1)), label="shared_after"))
    world.feed(ev.Begin())
    for client in ALONE:
        world.attach(client, new_id(), session=(OWN,))
    resp3 = data.draw(st.booleans(), label="client 9 speaks RESP3")
    for client in PLAINS:
        world.attach(client, new_id(), session=(HELLO_3,) if resp3 and client == 9 else ())
    sent: dict[int, list] = {c: [] for c in (*ALONE, *PLAINS)}
    readers = {c: CODEC.request_reader() for c in (*PLAINS, LATE)}
    if data.draw(st.booleans(), label="handed over before the barrier"):
        # Clients driven before the sync point (ev.Ahead): what the leader answers until the
        # barrier is in the snapshot the follower starts from.
        world.feed(ev.Ahead())
        _steps(world, data, sent, readers, ("send", "send", "leader", "flush"))
        world.feed(ev.Hold())
        world.feed(ev.Watch(frozenset({"quiet"})))
        leader = world.servers[0]
        while True:  # the leader answers what is in flight (the end of a batch sends it)
            world.feed(ev.Flush())
            if not leader.ready():
                break
            world.run(0, leader.ready()[0])
        assert [n.conditions for n in world.notices if isinstance(n, cmd.Reached)] == \
            [frozenset({"quiet"})]
        follower = world.servers[1]
        follower.data = dict(leader.data)  # the fork
        follower.lists = {k: list(v) for k, v in leader.lists.items()}
        leader.history = {}  # the order promised is that of what came after it
    world.feed(ev.Release())
    live = _steps(world, data, sent, readers, ("send", "send", "leader", "leader",
                                               "follower", "flush", "start", "close",
                                               "connect", "prepare"))
    if not live:
        world.feed(ev.StartFollower())
    world.settle()
    _check(world, sent)


def _steps(world: OpenedWorld, data: st.DataObject, sent: dict[int, list],
           readers: dict, steps: tuple[str, ...]) -> bool:
    """Random steps: clients send, servers answer, batches end, the follower starts; whether
    it started."""
    engine = world.engine
    live = False
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        step = data.draw(st.sampled_from(steps), label="step")
        open_clients = [c for c in sent if c not in world.gone]
        if step == "connect" and live and LATE not in sent:
            world.attach(LATE, new_id())
            sent[LATE] = []
        elif step == "prepare" and live:
            world.feed(ev.OpenFollowers())  # (a cutover comes: every client gets its own)
        elif step == "close" and open_clients:
            # A client closes, whatever of its is still out or waiting in the proxy.
            client = data.draw(st.sampled_from(open_clients), label="closes")
            world.gone.add(client)
            world.feed(ev.ClientEof(client))
            world.feed(ev.ClientClosed(client))
        elif step == "send" and open_clients:
            client = data.draw(st.sampled_from(open_clients), label="client")
            words = data.draw(st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=3),
                              label="requests")
            requests = [request(*w) for w in words]
            first = data.draw(st.sampled_from((None, SELECT_1, HELLO_3)),
                              label="a SELECT 1 or a HELLO 3 first") if client == LATE else None
            selects = first is not None  # (then not a run)
            if selects:
                requests.insert(0, first)
            elif client in (*PLAINS, LATE) and fast.c_scan is not None and \
                    data.draw(st.booleans(), label="in a transaction"):
                requests = [MULTI, *requests, EXEC]  # (redis-py's default pipeline)
            sent[client].extend(requests)
            # A run that only reads may go while reads are out on own connections. The relay
            # asks as if the run's replies were small; a new client's run that is not then
            # sends its first request alone and holds the rest (engine.first_read).
            reads = all(w[0] in ("GET", "PING") for w in words)
            if client in (*PLAINS, LATE) and not selects and \
                    engine.runs_allowed(client, True, reads) and \
                    data.draw(st.booleans(), label="as a run"):
                raw = b"".join(r.raw for r in requests)
                reader = readers[client]
                used, count = reader.count_run(raw)
                assert (used, count, reader.reads_only) == (len(raw), len(requests), reads)
                world.feed(ev.Run(client, raw, count, reader.small_replies, reads))
            else:
                world.feed(ev.Requests(client, requests))
        elif step in ("leader", "follower"):
            role = 0 if step == "leader" else 1
            ready = world.servers[role].ready()
            if ready:
                world.run(role, data.draw(st.sampled_from(ready), label="conn"))
        elif step == "flush":
            world.feed(ev.Flush())
        elif step == "start" and not live:
            world.feed(ev.StartFollower())
            live = True
    return live


def _check(world: OpenedWorld, sent: dict[int, list]) -> None:
    engine = world.engine
    assert [(d.peer, d.request, d.leader, d.follower) for d in world.divergences()
            if not d.verdict.expected] == []
    assert world.failures() == []
    writes = sorted(r.raw for requests in sent.values() for r in requests
                    if r.name not in ("GET", "PING", "SELECT", "HELLO", "MULTI", "EXEC"))
    log = [raw for _, raw in world.servers[0].log]
    assert sorted(raw for raw in log if raw not in (OWN.raw, MULTI.raw, EXEC.raw) and
                  not raw.startswith((b"*2\r\n$3\r\nGET", b"*1\r\n$4\r\nPING",
                                      b"*2\r\n$5\r\nHELLO", b"*2\r\n$6\r\nSELECT"))) == writes
    # A transaction that writes runs on the leader (a read-only one of a client that closed
    # may be dropped: nobody reads its reply, and it changes nothing).
    writing = sum(map(_writing_transactions, sent.values()))
    assert writing <= log.count(EXEC.raw) <= sum(r is EXEC for rs in sent.values() for r in rs)
    for client, requests in sent.items():
        if client in world.gone:
            continue  # (closed: it reads nothing)
        replies = CODEC.reply_reader()
        for r in requests:
            replies.expect(r)
        got = replies.receive(bytes(world.delivered.get(client, b"")))
        assert len(got) == len(requests), (client, requests, got, world.delivered,
                                           world.closed_clients)
        assert replies.pending == 0 and not replies.buffered
    assert _order(world, 0) == _order(world, 1)
    assert world.servers[0].data == world.servers[1].data
    assert engine.status()["backlog"] == 0


def _writing_transactions(requests: list) -> int:
    """How many of a client's transactions (MULTI ... EXEC) hold a request that writes."""
    count, inside = 0, None
    for r in requests:
        if r is MULTI:
            inside = False
        elif r is EXEC:
            count += bool(inside)
            inside = None
        elif inside is not None and r.name not in ("GET", "PING"):
            inside = True
    return count
