"""Clients that end their input or close during an update, with requests still in the proxy.

Directly, a server runs what it read from a client before the end of its input: a client that
pipelines writes and closes without reading the replies finds them done. During an update a
request can wait in the proxy (behind another client's write of the same key, or behind the
client's own request on its other path); these tests check that it still runs on both versions
once the client is gone, that the end of input reaches the leader only after it (the harness
refuses a send on a connection that was shut), and what is dropped: reads, nobody's to read,
and what follows a request that would block; and that a client that left before the new
version served still gets its writes there. Driven with the model servers of
:mod:`tests.engine.harness`.
"""

from __future__ import annotations

from tests.engine.harness import OWN, World, request
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.redis import CODEC


class Ends(World):
    """A world that notes, per connection, its sends and its end (Shutdown), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[str, int, bytes]] = []

    def _do(self, command: cmd.Command) -> ev.Event | None:
        if type(command) is cmd.Send:
            self.steps.append(("send", command.conn, bytes(command.data)))
        elif type(command) is cmd.Shutdown:
            self.steps.append(("shutdown", command.conn, b""))
        return super()._do(command)


def started(*clients: int) -> tuple[Ends, dict[int, int]]:
    world = Ends()
    world.feed(ev.Begin())
    conns = {}
    for client in clients:
        conns[client] = new_id()
        world.attach(client, conns[client], session=(OWN,))
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world, conns


def executed(world: World, conn: int) -> list[bytes]:
    """The requests the leader ran from ``conn``, by name and first argument."""
    out = []
    for c, raw in world.servers[LEADER].log:
        if c == conn:
            [parsed] = CODEC.request_reader().receive(raw)
            out.append(b" ".join([parsed.name.encode(), *parsed.args[:1]]))
    return out


def test_writes_queued_behind_another_clients_write_run_after_their_client_closed():
    """Client 2's writes of ``k`` wait for client 1's, out on the leader; client 2 closes
    before it is answered. Both writes, and the one after them, run on both versions, as
    directly; its GET, whose reply nobody would read, is not sent."""
    world, conns = started(1, 2)
    world.feed(ev.Requests(1, [request("INCR", "k")]))
    world.feed(ev.Flush())  # out on the leader, not run yet
    world.feed(ev.Requests(2, [request("INCR", "k"), request("GET", "k"),
                               request("SET", "j", "x")]))
    world.feed(ev.Flush())
    assert executed(world, conns[2]) == [b"CLIENT NO-EVICT"]  # (queued behind client 1's INCR)
    world.feed(ev.ClientEof(2))
    world.feed(ev.ClientClosed(2))
    world.settle()
    assert world.servers[LEADER].data == {b"k": b"2", b"j": b"x"}
    assert world.servers[FOLLOWER].data == world.servers[LEADER].data
    assert executed(world, conns[2]) == [b"CLIENT NO-EVICT", b"INCR k", b"SET j"]
    assert 2 not in world.engine.clients  # forgotten once nothing of its is on the way
    assert world.failures() == [] and world.divergences() == []


def test_the_end_of_input_reaches_the_leader_after_what_waited_in_the_proxy():
    """Client 2 has a request out on its own connection and one waiting behind client 1's
    write when its input ends: the end is passed on only after the waiting one was sent (it
    would find the connection shut), and the server still answers both."""
    world, conns = started(1, 2)
    world.feed(ev.Requests(1, [request("INCR", "k")]))
    world.feed(ev.Flush())
    world.feed(ev.Requests(2, [request("INCR", "z"), request("INCR", "k")]))
    world.feed(ev.Flush())
    world.feed(ev.ClientEof(2))
    own = conns[2]
    assert [step for step, conn, _ in world.steps if conn == own] == ["send"]  # INCR z only
    world.settle()
    mine = [(step, data) for step, conn, data in world.steps if conn == own]
    assert [step for step, _ in mine] == ["send", "send", "shutdown"]
    assert b"INCR" in mine[1][1] and b"$1\r\nk\r\n" in mine[1][1]
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"k": b"2",
                                                                           b"z": b"1"}
    assert 2 in world.closed_clients  # owed nothing any more: closed, as it asked
    assert world.failures() == []


def test_what_follows_a_request_that_would_block_is_dropped_when_its_client_closes():
    """Directly, a client that closes while blocked is freed and nothing it sent after the
    blocking request runs: its queued requests up to that request run, the rest is dropped."""
    world, conns = started(1, 2)
    world.feed(ev.Requests(1, [request("INCR", "k")]))
    world.feed(ev.Flush())
    world.feed(ev.Requests(2, [request("SET", "k", "5"), request("BLPOP", "q", "0"),
                               request("SET", "after", "1")]))
    world.feed(ev.Flush())
    world.feed(ev.ClientClosed(2))
    world.settle()
    assert executed(world, conns[2]) == [b"CLIENT NO-EVICT", b"SET k"]
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"k": b"5"}
    assert 2 not in world.engine.clients
    assert world.failures() == []


def test_transactions_queued_when_their_client_closes_run_whole_as_they_were_sent():
    """Client 2 pipelines a transaction that only reads, one that pops with BLPOP (queued in
    MULTI it never blocks: EXEC pops if it can), and one that writes. Its first EXEC waits
    behind client 1's write of ``k``; client 2 closes. Directly, the server runs all it read:
    three whole transactions. So does the leader, and the follower gets the same effects
    (a reply of a transaction run piecemeal would differ, or nest one MULTI in another)."""
    world, conns = started(1, 2)
    world.servers[LEADER].lists[b"q"] = [b"v"]
    world.servers[FOLLOWER].lists[b"q"] = [b"v"]
    world.feed(ev.Requests(1, [request("INCR", "k")]))
    world.feed(ev.Flush())  # out on the leader, not run yet
    multi, exec_ = request("MULTI"), request("EXEC")
    world.feed(ev.Requests(2, [multi, request("GET", "k"), exec_,
                               multi, request("BLPOP", "q", "0"), exec_,
                               multi, request("SET", "s", "1"), exec_]))
    world.feed(ev.Flush())
    world.feed(ev.ClientClosed(2))
    world.settle()
    assert executed(world, conns[2]) == [b"CLIENT NO-EVICT", b"MULTI", b"GET k", b"EXEC",
                                         b"MULTI", b"BLPOP q", b"EXEC",
                                         b"MULTI", b"SET s", b"EXEC"]
    leader, follower = world.servers
    assert leader.data == follower.data == {b"k": b"1", b"s": b"1"}
    assert leader.lists == follower.lists == {b"q": []}
    assert world.failures() == [] and world.divergences() == []


def test_a_write_answered_after_the_follower_started_reaches_it_though_its_client_left_before():
    """The client left before the new version served, its write still out in the leader; the
    leader answers once the follower started. It had no follower connection then (a client
    that left gets one only for what was released to it): it gets one now, and the write."""
    world = Ends()
    world.feed(ev.Begin())
    own = new_id()
    world.attach(1, own, session=(OWN,))
    world.feed(ev.Release())
    world.feed(ev.Requests(1, [request("SET", "a", "x")]))
    world.feed(ev.Flush())
    world.feed(ev.ClientEof(1))
    world.feed(ev.ClientClosed(1))
    world.feed(ev.StartFollower())
    world.run(LEADER, own)
    world.settle()
    assert world.servers[FOLLOWER].data == world.servers[LEADER].data == {b"a": b"x"}
    assert world.engine.status()["backlog"] == 0 and 1 not in world.engine.clients
    assert world.failures() == []


def test_when_the_leader_closes_the_connection_of_a_client_that_left_what_it_queued_is_dropped():
    """The client left with writes waiting in the proxy; then the leader closes its connection
    (CLIENT KILL, or a QUIT among what it sent): nothing sent after that can run there, as
    directly. What waited is dropped and the client is forgotten, holding up nobody."""
    world, conns = started(1, 2)
    world.feed(ev.Requests(1, [request("INCR", "k")]))
    world.feed(ev.Flush())
    world.feed(ev.Requests(2, [request("INCR", "k"), request("SET", "j", "x")]))
    world.feed(ev.Flush())
    world.feed(ev.ClientClosed(2))
    world.feed(ev.ConnClosed(conns[2]))  # the leader closed it
    world.settle()
    assert 2 not in world.engine.clients
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"k": b"1"}
    world.feed(ev.Requests(1, [request("INCR", "k")]))
    world.settle()
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"k": b"2"}
    assert world.failures() == [] and world.engine.status()["backlog"] == 0
