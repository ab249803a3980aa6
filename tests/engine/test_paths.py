"""Which path a request takes during an update: a client's own connection or the shared one.

On the shared connection every client's requests wait behind the replies to those before them,
so a client goes on it only after small replies on its own (``[update] shared_after``), goes
back to its own after a large reply, and a large request kept on disk
(:mod:`twinproxy.engine.large`) never goes on it. Driven with the model servers of
:mod:`tests.engine.harness`.
"""

from __future__ import annotations

from tests.engine.harness import World, new_engine, request
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.engine.large import Spooled
from twinproxy.protocols.redis import CODEC


class Recording(World):
    """A world that notes on which connection each request went, and writes a large request's
    bytes as the relay would."""

    def __init__(self, shared_after: int):
        super().__init__(new_engine(shared_after=shared_after))
        self.sent: list[tuple[int, bytes]] = []

    def _do(self, command: cmd.Command) -> ev.Event | None:
        if type(command) is cmd.SendLarge:
            data = b"".join(e if type(e) is bytes else e[0].read(e[1], e[2])
                            for e in command.data.extents)
            command = cmd.Send(command.conn, data)
        if type(command) is cmd.Send:
            self.sent.append((command.conn, command.data))
        return super()._do(command)

    def path(self, client: int) -> str:
        """Where the client's last request to the leader went."""
        conn = next(c for c, _ in reversed(self.sent) if self.role.get(c) == LEADER)
        if conn == self.engine.sides[LEADER].shared.conn.id:
            return "shared"
        assert conn == self.leader_conns[client]
        return "own"


def started(shared_after: int) -> Recording:
    world = Recording(shared_after)
    world.feed(ev.Begin())
    world.attach(1, new_id())
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world


def ask(world: Recording, *words: str | bytes) -> str:
    world.feed(ev.Requests(1, [request(*words)]))
    world.feed(ev.Flush())
    path = world.path(1)
    world.settle()
    return path


def test_a_client_takes_the_shared_connection_after_small_replies_and_leaves_it_after_a_large():
    world = started(shared_after=2)
    assert ask(world, "SET", "a", "1") == "shared"  # its reply is a status whatever the data
    assert ask(world, "GET", "a") == "own"
    assert ask(world, "GET", "a") == "own"
    assert ask(world, "GET", "a") == "shared"  # two small replies on its own: it may share
    assert ask(world, "SET", "big", "x" * 100_000) == "shared"
    assert ask(world, "GET", "big") == "shared"  # a 100 kB reply ...
    assert ask(world, "GET", "a") == "own"  # ... sends it back to its own connection
    assert world.failures() == []


def test_new_clients_first_writes_of_one_key_share_at_once_and_keep_runs_allowed():
    """memcslap's 1,000 clients all start by setting the same key, in a first read the relay
    frames request by request. On their own connections those writes went one round trip at
    a time (seconds for the last, and some clients timed out), and while one was out no
    client's write could travel as a run. A request whose reply is small whatever the data
    takes the shared connection at once, as a run of such requests does."""
    world = started(shared_after=1)
    clients = range(2, 12)
    for client in clients:
        world.attach(client, new_id())
    world.settle()
    for client in clients:
        world.feed(ev.Requests(client, [request("SET", "k", str(client))]))
    world.feed(ev.Flush())
    shared = world.engine.sides[LEADER].shared.conn.id
    assert len(world.servers[LEADER].pending[shared]) == len(clients)  # all out at once
    assert not any(world.servers[LEADER].pending[world.leader_conns[c]] for c in clients)
    assert world.engine.runs_allowed(1, True, False)  # nothing ordered holds writes back
    world.settle()
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"k": b"11"}
    assert world.failures() == [] and world.divergences() == []


def test_a_new_clients_write_behind_its_own_request_stays_on_its_own_connection():
    """A SET after a GET that is out on the client's own connection is pipelined behind it
    there: on the shared connection it would wait for that reply first (a client's requests
    never overlap across paths), and a client that closed meanwhile would lose it."""
    world = started(shared_after=1)
    world.feed(ev.Requests(1, [request("GET", "a"), request("SET", "a", "1")]))
    world.feed(ev.Flush())
    assert [r.name for r in world.servers[LEADER].pending[world.leader_conns[1]]] == \
        ["GET", "SET"]
    world.settle()
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"a": b"1"}


def test_with_shared_after_0_a_plain_client_shares_from_its_first_request():
    world = started(shared_after=0)
    assert ask(world, "SET", "a", "1") == "shared"


def read(world: Recording, client: int, *requests) -> str:
    """One read of ``client``'s, as the relay hands it over (a run when its reader can count it
    and the engine takes runs, else request by request); where it went."""
    data = b"".join(r.raw for r in requests)
    reader = CODEC.request_reader()
    if world.engine.runs_allowed(client, True) and reader.count_run(data) is not None:
        world.feed(ev.Run(client, data, len(requests), reader.small_replies))
    else:
        world.feed(ev.Requests(client, list(requests)))
    world.feed(ev.Flush())
    return world.path(client)


def test_a_new_clients_read_of_small_replies_only_shares_at_once_and_others_wait():
    """Writes whose replies are small whatever the data (SET, INCR) may go on the shared
    connection from a client's first read: fifty new clients setting one key then take one
    connection in their order, instead of each waiting on its own for the one before it.
    GETs (a reply as large as the value) and SET ... GET (the old value) wait for a small
    reply on the client's own connection first, as ``shared_after`` says."""
    world = started(shared_after=1)
    for client in (2, 3, 4):
        world.attach(client, new_id())
    sets = [request("SET", "k", str(i)) for i in range(4)]
    assert read(world, 2, *sets) == "shared"
    assert read(world, 3, request("INCR", "n"), request("DEL", "x")) == "shared"
    world.settle()
    assert read(world, 4, request("GET", "k")) == "own"
    world.settle()
    assert read(world, 1, request("SET", "k", "v", "GET")) == "own"
    world.settle()
    # (its runs gave it no small reply of its own: a GET still waits for one)
    assert read(world, 2, request("GET", "k"), request("SET", "k", "w")) == "own"
    world.settle()
    assert read(world, 2, request("GET", "k")) == "shared"
    world.settle()
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data
    assert world.failures() == [] and world.divergences() == []
    assert world.engine.status()["compared"] == 11


class Memory:
    """A source of a large request's bytes, in memory (the relay's is a file)."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


def test_a_large_request_goes_on_its_clients_own_connection_to_both_versions():
    world = started(shared_after=0)
    value = b"v" * 50_000
    token = b"<value on disk>"
    raw = CODEC.make_request([b"SET", b"k", value]).raw
    source = Memory(raw)
    at = raw.index(value)
    large = request("SET", "k", token)
    large.raw = Spooled([(source, 0, len(raw))], (source, at, len(value)), token)
    world.feed(ev.Requests(1, [large]))
    world.feed(ev.Flush())
    assert world.path(1) == "own"
    world.settle()
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"k": value}
    assert world.engine.status()["backlog_bytes"] == 0
    assert world.failures() == []


def test_a_large_request_rewritten_for_the_follower_keeps_its_value_from_the_source():
    """``Spooled.rewritten``: the words with the token, made into a request, get the value's
    range back in the token's place."""
    value = b"w" * 1000
    token = b"<value on disk>"
    raw = CODEC.make_request([b"SET", b"k", value, b"EX", b"10"]).raw
    source = Memory(raw)
    spooled = Spooled([(source, 0, len(raw))], (source, raw.index(value), len(value)), token)
    rebuilt = CODEC.make_request([b"SET", b"k", token, b"PXAT", b"123"]).raw
    out = spooled.rewritten(rebuilt)
    data = b"".join(e if type(e) is bytes else e[0].read(e[1], e[2]) for e in out.extents)
    assert data == CODEC.make_request([b"SET", b"k", value, b"PXAT", b"123"]).raw
    assert len(out) == len(data)
    assert spooled.rewritten(b"*1\r\n$4\r\nPING\r\n") == b"*1\r\n$4\r\nPING\r\n"


def test_a_client_that_leaves_with_only_reads_out_has_its_leader_connection_closed_at_once():
    """Its GETs' replies are for nobody, and the follower gets no read of a client that left:
    the connection closes without waiting for them. A write out there is still waited for
    (it may have run on the leader: the follower must get it)."""
    world = started(shared_after=5)  # client 1 stays on its own connection
    own = world.leader_conns[1]
    world.feed(ev.Requests(1, [request("GET", "a"), request("GET", "b")]))
    world.feed(ev.Flush())
    closes: list[int] = []
    handle = world.engine.handle
    for command in handle(ev.ClientClosed(1)):
        if type(command) is cmd.Close:
            closes.append(command.conn)
    assert own in closes
    assert world.engine.status()["backlog"] == 0
    world.attach(2, new_id())
    world.settle()
    world.feed(ev.Requests(2, [request("RPUSH", "q", "x", "y")]))  # (shared: a number)
    world.settle()
    world.feed(ev.Requests(2, [request("LPOP", "q")]))  # a write, on its own connection
    world.feed(ev.Flush())
    assert [c for c in handle(ev.ClientClosed(2)) if type(c) is cmd.Close] == []
    world.settle()
    assert world.servers[FOLLOWER].lists == world.servers[LEADER].lists == {b"q": [b"y"]}
    assert world.failures() == []


def test_a_shared_request_held_behind_its_clients_own_one_is_not_overtaken_on_the_follower():
    """Client 1's first request goes on its own connection, its second on the shared one; on
    the follower the second waits for the first's reply there (a client's requests never
    overlap across its paths). Client 2's write of the same key, answered by the leader after
    client 1's, must not pass it on the follower's shared connection meanwhile: the follower
    would end with client 1's value where the leader has client 2's. (The conformance run's
    lock tests met this under load: a lock taken by the next test's client on the follower
    before the previous test's client released it.)"""
    world = started(shared_after=1)
    ask(world, "GET", "warm")  # client 1's small reply: it shares from now on
    world.attach(2, new_id())
    world.settle()
    engine = world.engine
    leader_shared = engine.sides[LEADER].shared.conn.id
    # Client 2's first, on its own connection (SET ... GET replies with the old value, so it
    # waits for a small reply there first; the model server ignores the option).
    world.feed(ev.Requests(2, [request("SET", "k", "first", "GET")]))
    world.feed(ev.Flush())
    world.run(LEADER, world.leader_conns[2])  # the follower does not answer it yet
    world.feed(ev.Requests(2, [request("SET", "k", "second")]))  # shared; waits on the
    world.feed(ev.Flush())                                     # follower for "first"
    world.run(LEADER, leader_shared)
    world.feed(ev.Requests(1, [request("SET", "k", "third")]))  # shared, after "second"
    world.feed(ev.Flush())
    world.run(LEADER, leader_shared)
    world.settle()
    assert world.servers[LEADER].data[b"k"] == b"third"
    assert world.servers[FOLLOWER].data == world.servers[LEADER].data
    assert [raw for _, raw in world.servers[FOLLOWER].history[b"k"]] == \
        [raw for _, raw in world.servers[LEADER].history[b"k"]]
    world.feed(ev.Requests(1, [request("GET", "k")]))
    world.settle()
    assert world.divergences() == [] and world.failures() == []
