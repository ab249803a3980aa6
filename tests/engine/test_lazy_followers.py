"""A client that connects during MVE gets its own follower connection only when it needs one.

Its plain requests go on the shared connections, so most such clients (a benchmark's, a web
page's few GETs) never use a connection of their own to the follower, and opening one cost the
proxy a connect and a close per client. It is opened at the first request that does not go on
the shared connection, and for every client before anything hands the clients to the follower
(a cutover's ``OpenFollowers``, a take-over). Driven with the model servers of
:mod:`tests.engine.harness`.
"""

from __future__ import annotations

from collections import deque

from tests.engine.harness import OWN, World, new_engine, request
from twinproxy.compare import Comparator, Rules
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.redis import CODEC


class Opening(World):
    """A world that notes, per client, the connections the engine opened for it."""

    def __init__(self, **settings):
        super().__init__(new_engine(**settings))
        self.opened: dict[int | None, list[int]] = {}

    def _do(self, command: cmd.Command) -> ev.Event | None:
        if type(command) is cmd.Open:
            self.opened.setdefault(command.client, []).append(command.conn)
        return super()._do(command)


def live(**settings) -> Opening:
    """An update in MVE with one client from before it (1, with a session)."""
    world = Opening(**settings)
    world.feed(ev.Begin())
    world.attach(1, new_id(), session=(OWN,))
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world


def ask(world: Opening, client: int, *words: str) -> None:
    world.feed(ev.Requests(client, [request(*words)]))
    world.settle()


def reached(world: Opening) -> list[frozenset[str]]:
    return [n.conditions for n in world.notices if isinstance(n, cmd.Reached)]


def test_a_new_client_opens_its_follower_connection_at_its_first_request_that_needs_it():
    world = live()
    world.attach(5, new_id())
    ask(world, 5, "SET", "k", "1")
    ask(world, 5, "GET", "k")
    assert 5 not in world.opened  # both went on the shared connections
    ask(world, 5, "SELECT", "0")  # (as a login or a HELLO) it goes on the client's own ones
    [conn] = world.opened[5]
    assert world.role[conn] == FOLLOWER
    assert (conn, request("SELECT", "0").raw) in world.servers[FOLLOWER].log
    assert bytes(world.delivered[5]) == b"+OK\r\n$1\r\n1\r\n+OK\r\n"
    assert world.failures() == [] and world.divergences() == []


def test_the_first_request_alone_on_the_leader_goes_shared_to_the_follower():
    """With ``shared_after`` 1, a new client's first GET goes alone on its own leader
    connection; its follower copy goes on the shared one once the reply shows it small."""
    world = live(shared_after=1)
    world.attach(5, new_id())
    ask(world, 5, "GET", "nothing")
    ask(world, 5, "GET", "nothing")
    assert 5 not in world.opened
    assert bytes(world.delivered[5]) == b"$-1\r\n$-1\r\n"
    assert world.engine.status()["backlog"] == 0
    assert world.failures() == [] and world.divergences() == []


def test_a_cutover_opens_the_missing_follower_connections_first_and_hands_every_client_over():
    world = live()
    world.attach(5, new_id())
    ask(world, 5, "INCR", "n")
    assert 5 not in world.opened
    world.feed(ev.OpenFollowers())
    world.feed(ev.Watch(frozenset({"connected"})))
    assert reached(world) == [frozenset({"connected"})]
    [conn] = world.opened[5]
    world.attach(6, new_id())  # from now on a new client gets one at once
    assert len(world.opened[6]) == 1
    world.feed(ev.Hold())
    world.feed(ev.Watch(frozenset({"quiet", "caught-up"})))
    assert frozenset({"quiet", "caught-up"}) in reached(world)
    world.feed(ev.End(True))
    handed = {h.client: h.conn for h in world.handbacks}
    assert handed[5] == conn and world.role[conn] == FOLLOWER
    assert set(handed) == {1, 5, 6} and world.closed_clients == set()


def test_the_roles_swap_with_every_client_on_both_versions():
    world = live()
    world.attach(5, new_id())
    ask(world, 5, "SET", "k", "1")
    world.feed(ev.OpenFollowers())
    world.feed(ev.Hold())
    world.feed(ev.Reverse(Comparator(CODEC, Rules((), "new", "old"))))
    world.feed(ev.Release())
    ask(world, 5, "INCR", "n")
    assert world.closed_clients == set()
    assert bytes(world.delivered[5]).endswith(b":1\r\n")
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data
    assert world.failures() == []


def test_a_take_over_opens_the_missing_follower_connections_and_keeps_every_client():
    world = live()
    world.attach(5, new_id())
    world.feed(ev.Requests(5, [request("INCR", "n")]))  # sent to the leader, never answered
    world.feed(ev.Flush())
    world.feed(ev.Hold())
    world.feed(ev.TakeOver())
    world.settle()
    assert len(world.opened[5]) == 1
    assert bytes(world.delivered[5]) == b":1\r\n"  # answered once, by the follower
    world.feed(ev.Watch(frozenset({"caught-up", "connected"})))
    assert frozenset({"caught-up", "connected"}) in reached(world)
    world.feed(ev.End(True))
    assert {h.client for h in world.handbacks} == {1, 5}
    assert world.closed_clients == set()


def test_a_rollback_hands_a_client_back_on_its_leader_connection_without_one():
    world = live()
    conn = new_id()
    world.attach(5, conn)
    ask(world, 5, "SET", "k", "1")
    world.feed(ev.Hold())
    world.feed(ev.End(False))
    assert {h.client: h.conn for h in world.handbacks}[5] == conn
    assert 5 not in world.opened


def test_the_sync_waits_for_no_follower_connection_a_new_client_does_not_need():
    """``joined`` (the end of the sync, before MVE) holds with such a client."""
    world = live()
    world.attach(5, new_id())
    world.feed(ev.Watch(frozenset({"joined"})))
    assert reached(world) == [frozenset({"joined"})]


def test_a_connections_name_waits_for_the_follower_connection_it_opens_later():
    """redis-py, go-redis and Jedis name every connection they open (CLIENT SETINFO): that
    alone opens no follower connection; the one a later request opens gets the name first."""
    world = live()
    world.attach(5, new_id())
    ask(world, 5, "CLIENT", "SETINFO", "LIB-NAME", "redis-py")
    ask(world, 5, "CLIENT", "SETNAME", "worker")
    ask(world, 5, "SET", "k", "1")
    assert 5 not in world.opened
    ask(world, 5, "SELECT", "0")  # it goes on the client's own connections: it opens one
    [conn] = world.opened[5]
    sent = [raw for c, raw in world.servers[FOLLOWER].log if c == conn]
    assert sent == [request("CLIENT", "SETINFO", "LIB-NAME", "redis-py").raw,
                    request("CLIENT", "SETNAME", "worker").raw,
                    request("SELECT", "0").raw]
    assert world.failures() == [] and world.divergences() == []


class Slow(Opening):
    """A world where the connections opened for some clients come up only when told."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.slow: set[int] = set()
        self.pending: list[ev.Connected] = []

    def _do(self, command: cmd.Command) -> ev.Event | None:
        if type(command) is cmd.Open and command.client in self.slow:
            self.opened.setdefault(command.client, []).append(command.conn)
            self.role[command.conn] = command.role
            self.servers[command.role].connect(command.conn)
            self.pending.append(ev.Connected(command.conn))
            return None
        return super()._do(command)


def test_the_cutover_waits_for_the_connections_it_opened_not_for_newer_clients():
    """Under a steady stream of new clients one is always being connected: ``connected``
    waits only for those OpenFollowers opened (a newer one still connecting at the cutover
    is closed there, as before, having no session on the new version yet)."""
    world = Slow()
    world.feed(ev.Begin())
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.attach(5, new_id())
    world.slow = {5, 6}
    world.feed(ev.OpenFollowers())
    world.attach(6, new_id())  # opened at once, and still connecting
    world.feed(ev.Watch(frozenset({"connected"})))
    world.feed(ev.Flush())
    assert reached(world) == []  # client 5's, opened for the cutover, is not up yet
    world.feed(world.pending.pop(0))
    world.feed(ev.Flush())
    assert reached(world) == [frozenset({"connected"})]  # not waiting for client 6's


def test_a_clients_shared_requests_wait_for_its_follower_connections_replay():
    """A client whose follower connection replays its session (a name, RESP3) when it opens:
    its shared requests go to the follower only after it. Otherwise the replay's reply, on
    its own connection, was taken for the reply to the request that went shared first."""
    world = Opening()
    world.feed(ev.Begin())
    world.attach(9, new_id(), session=(request("CLIENT", "SETNAME", "n"),))
    world.feed(ev.Release())
    ask(world, 9, "SET", "k", "1")  # answered by the leader; the follower is not up yet
    ask(world, 9, "GET", "k")
    world.feed(ev.StartFollower())
    world.settle()
    assert bytes(world.delivered[9]) == b"+OK\r\n$1\r\n1\r\n"
    assert world.servers[FOLLOWER].data == {b"k": b"1"}
    assert world.failures() == [] and world.divergences() == []


def a_get_out_on_the_follower(world: Opening, client: int) -> list[int]:
    """``client`` sends a GET, which the leader answers on its shared connection; its copy is
    then out on the follower's, not answered yet. Returns the two shared connections."""
    shared = [world.engine.sides[role].shared.conn.id for role in (LEADER, FOLLOWER)]
    world.feed(ev.Requests(client, [request("GET", "k")]))
    world.feed(ev.Flush())
    world.run(LEADER, shared[LEADER])
    world.feed(ev.Flush())
    assert world.servers[FOLLOWER].ready() == [shared[FOLLOWER]]
    return shared


def test_a_replay_on_a_connection_opened_while_shared_requests_are_out_is_not_their_reply():
    """A new client's name waits for the follower connection a later request opens; when that
    opens while a request of the client's is still out on the follower's shared connection,
    the replay's reply, on the client's own connection, may come first: it is the replay's,
    not that request's."""
    world = live()
    world.attach(5, new_id())
    leader, follower = world.servers
    a_get_out_on_the_follower(world, 5)
    world.feed(ev.Requests(5, [request("CLIENT", "SETNAME", "n"), request("SELECT", "0")]))
    world.feed(ev.Flush())
    while leader.ready():
        world.run(LEADER, leader.ready()[0])
        world.feed(ev.Flush())
    [conn] = world.opened[5]
    while conn in follower.ready():  # the follower answers the client's own connection first
        world.run(FOLLOWER, conn)
        world.feed(ev.Flush())
    world.settle()
    assert [raw for c, raw in follower.log if c == conn] == \
        [request("CLIENT", "SETNAME", "n").raw, request("SELECT", "0").raw]
    assert bytes(world.delivered[5]) == b"$-1\r\n-ERR unknown command\r\n+OK\r\n"
    assert world.failures() == [] and world.divergences() == []
    assert world.engine.status()["backlog"] == 0


def test_a_client_gone_before_the_follower_started_gets_none_for_its_shared_requests():
    """A RESP3 client sends a run and a GET, then closes, before the follower starts: their
    copies go on the follower's shared connection, in RESP3, and no connection of its own is
    opened for it. (One was, and its session's replay went while the run was out on the shared
    connection: the test of random interleavings found the replay's reply taken for the
    run's.)"""
    world = Opening()
    world.feed(ev.Begin())
    world.attach(9, new_id(), session=(request("HELLO", "3"),))
    world.feed(ev.Release())
    get = request("GET", "a")
    reader = CODEC.request_reader()
    assert world.engine.runs_allowed(9, True, True)
    assert reader.count_run(get.raw) == (len(get.raw), 1)
    world.feed(ev.Run(9, get.raw, 1, reader.small_replies, True))
    world.feed(ev.Requests(9, [request("GET", "a")]))
    world.feed(ev.ClientEof(9))
    world.feed(ev.ClientClosed(9))
    world.feed(ev.StartFollower())
    world.settle()
    assert 9 not in world.opened
    assert [raw for _, raw in world.servers[FOLLOWER].log] == \
        [request("HELLO", "3").raw, get.raw, get.raw]  # (the shared connection in RESP3)
    assert world.failures() == [] and world.divergences() == []
    assert world.engine.status()["backlog"] == 0


def named_and_opened_at_a_cutover() -> tuple[Opening, int]:
    """A new client (5) names its connection (as redis-py does) and has a GET out on the
    follower's shared connection when OpenFollowers opens its own: the GET and the name's
    replay are both out there. Returns the world and that connection."""
    world = live()
    world.attach(5, new_id())
    ask(world, 5, "CLIENT", "SETINFO", "LIB-NAME", "redis-py")
    shared = a_get_out_on_the_follower(world, 5)
    world.feed(ev.OpenFollowers())
    [conn] = world.opened[5]
    assert world.servers[FOLLOWER].ready() == [shared[FOLLOWER], conn]
    return world, conn


def test_a_cutovers_follower_connection_replays_a_name_while_a_shared_request_is_out():
    """The same at a cutover: OpenFollowers opens the connection of a client that named its
    own while its GET is still out on the follower's shared connection; the name's replay is
    answered first, and each reply goes to its own request."""
    world, conn = named_and_opened_at_a_cutover()
    world.run(FOLLOWER, conn)  # the replay's reply first
    world.feed(ev.Flush())
    world.settle()
    world.feed(ev.Watch(frozenset({"connected", "caught-up"})))
    assert frozenset({"connected", "caught-up"}) in reached(world)
    assert bytes(world.delivered[5]) == b"-ERR unknown command\r\n$-1\r\n"
    assert world.failures() == [] and world.divergences() == []


def test_a_reply_on_a_follower_connection_to_no_request_on_record_fails_the_update():
    """Should the engine lose the record of what it sent on a client's own follower connection
    (a bug), the reply there is not taken for a request out on the shared connection: the
    update fails (and is rolled back), and the client still gets its replies from the leader."""
    world, conn = named_and_opened_at_a_cutover()
    lane = world.engine.clients[5].lanes[FOLLOWER]
    lane.flight = deque(e for e in lane.flight if e.shared)  # (the replay's record lost)
    world.run(FOLLOWER, conn)
    assert world.failures() == [
        "the follower new answered on 127.0.0.1:5's connection a request the proxy has no "
        "record of"]
    assert bytes(world.delivered[5]) == b"-ERR unknown command\r\n$-1\r\n"
    assert world.divergences() == []
