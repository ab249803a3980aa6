"""Clients of both RESP dialects, and of every database, share an update's connection, each
answered in its own.

redis-py 8 says ``HELLO 3`` on every connection it opens, and a client configured with
``db=1`` says ``SELECT 1``. Such a client, in the plain state when the update starts, shares the
shared connection with the others: the engine puts that connection in the dialect (protocol
and database) of the client whose request goes next (``HELLO 3``, ``HELLO 2``, ``SELECT n``,
the proxy's own), on both versions. Driven with the model servers of
:mod:`tests.engine.harness` (a fake Redis, no socket), whose GET of a missing key answers
``_`` in RESP3 and ``$-1`` in RESP2, which keep each database's strings apart, and whose INFO
counts HELLO's calls.
"""

from __future__ import annotations

import re

from tests.engine.harness import World, raw, request
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis import CODEC

HELLO_3 = request("HELLO", "3")
HELLO_2 = request("HELLO", "2")


def update(resp3: tuple[int, ...], resp2: tuple[int, ...] = (),
           sessions: dict[int, tuple[Request, ...]] | None = None) -> tuple[World, dict[int, int]]:
    """An update in MVE: clients ``resp3`` said HELLO 3 before it, ``resp2`` nothing (or what
    ``sessions`` gives them)."""
    world = World()
    world.feed(ev.Begin())
    conns = {}
    for client in (*resp3, *resp2):
        conns[client] = new_id()
        world.attach(client, conns[client], session=(HELLO_3,) if client in resp3 else
                     (sessions or {}).get(client, ()))
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world, conns


def shared_log(world: World, role: int) -> list[bytes]:
    """What the shared connection of ``role`` ran, in order."""
    shared = world.engine.sides[role].shared.conn.id
    return [r for conn, r in world.servers[role].log if conn == shared]


def test_each_client_gets_its_dialects_replies_from_the_shared_connection():
    world, conns = update(resp3=(1,), resp2=(2,))
    for _ in range(2):
        world.feed(ev.Requests(1, [request("GET", "none")]))
        world.feed(ev.Requests(2, [request("GET", "none")]))
        world.settle()
    assert bytes(world.delivered[1]) == b"_\r\n_\r\n"
    assert bytes(world.delivered[2]) == b"$-1\r\n$-1\r\n"
    get = raw("GET", "none")
    # Nothing went on the clients' own connections; both versions ran the same, in order.
    for role in (LEADER, FOLLOWER):
        assert shared_log(world, role) == [HELLO_3.raw, get, HELLO_2.raw, get] * 2
    assert not [r for c, r in world.servers[LEADER].log if c == conns[1]][1:]
    assert world.engine.status()["dialect_switches"] == 8
    assert world.failures() == [] and world.divergences() == []


def test_resp3_clients_alone_switch_the_connection_once():
    world, _ = update(resp3=(1, 2, 3))
    for client in (1, 2, 3):
        world.feed(ev.Requests(client, [request("SET", f"k{client}", "v"),
                                         request("GET", f"k{client}")]))
    world.settle()
    for client in (1, 2, 3):
        assert bytes(world.delivered[client]) == b"+OK\r\n$1\r\nv\r\n"
    assert shared_log(world, LEADER)[0] == shared_log(world, FOLLOWER)[0] == HELLO_3.raw
    assert world.engine.status()["dialect_switches"] == 2  # one per version
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data
    assert world.failures() == [] and world.divergences() == []


def _hello_calls(world: World, client: int, info) -> dict[bytes, int]:
    reader = CODEC.reply_reader()
    reader.expect(info)
    [reply] = reader.receive(bytes(world.delivered[client]))
    return {k: int(v) for k, v in re.findall(
        rb"(total_commands_processed|cmdstat_hello:calls)[:=](\d+)", reply.value)}


def test_info_shows_a_client_its_own_hellos_not_the_proxys_switches():
    """A client's INFO on its own connection never runs while a switch is out on the shared
    one, no switch goes while it is out, and the switches the leader ran are taken out of its
    counts: it sees what it would see directly."""
    world, conns = update(resp3=(1,), resp2=(2, 3))
    leader = world.servers[LEADER]
    world.feed(ev.Requests(1, [request("GET", "a")]))  # HELLO 3 on the shared connection
    world.feed(ev.Requests(2, [request("GET", "a")]))  # HELLO 2
    world.settle()
    info = request("INFO")
    world.feed(ev.Requests(3, [info]))  # on its own connection
    world.feed(ev.Flush())
    world.feed(ev.Requests(1, [request("GET", "a")]))  # it would need HELLO 3: held
    world.feed(ev.Flush())
    shared = world.engine.sides[LEADER].shared.conn.id
    assert [r.name for r in leader.pending[conns[3]]] == ["INFO"]
    assert not leader.pending[shared]
    world.settle()
    assert bytes(world.delivered[1]) == b"_\r\n_\r\n"
    ran = len([r for _, r in leader.log[:leader.log.index((conns[3], info.raw)) + 1]])
    # Before the INFO the leader ran: the session's HELLO 3, the two switches, the two GETs.
    assert ran == 6
    assert _hello_calls(world, 3, info) == {b"total_commands_processed": 4,
                                            b"cmdstat_hello:calls": 1}
    assert world.engine.own_counts()[2] == {b"hello": (3, 3 * len(HELLO_3.raw),
                                                       sum(len(leader._hello(0, v)) for v in
                                                           (b"3", b"2", b"3")))}
    assert world.failures() == []


def test_a_hello_during_the_update_changes_the_dialect_the_client_shares_in():
    """A client that connects during the update says HELLO 3 first (redis-py 8 does, on every
    connection its pool opens). The HELLO goes on its own connections; its requests after it,
    pipelined behind it, go on the shared ones in RESP3, on both versions; a HELLO that fails
    changes nothing."""
    world, conns = update(resp3=(), resp2=(1,))
    get = request("GET", "none")
    world.feed(ev.Requests(1, [get]))  # shared, RESP2
    world.feed(ev.Requests(1, [HELLO_3, get, get]))
    world.feed(ev.Requests(1, [request("HELLO", "4"), get]))  # (no such protocol)
    world.settle()
    hello = world.servers[LEADER]._hello(0, b"3")
    assert bytes(world.delivered[1]) == b"$-1\r\n" + hello + b"_\r\n_\r\n" + \
        b"-NOPROTO unsupported protocol version\r\n_\r\n"
    for role in (LEADER, FOLLOWER):
        assert shared_log(world, role) == [get.raw, HELLO_3.raw, get.raw, get.raw, get.raw]
    assert [r for c, r in world.servers[LEADER].log if c == conns[1]] == \
        [HELLO_3.raw, raw("HELLO", "4")]
    assert world.engine.status()["shared_clients"] == 1
    assert world.failures() == [] and world.divergences() == []


def test_a_hello_in_a_transaction_takes_the_client_off_the_shared_connection():
    world, _ = update(resp3=(), resp2=(1,))
    world.feed(ev.Requests(1, [request("MULTI"), HELLO_3, request("EXEC")]))
    world.settle()
    assert world.engine.status()["shared_clients"] == 0
    assert world.failures() == []


def test_a_version_that_refuses_the_switch_fails_the_update_not_the_client():
    world, _ = update(resp3=(1,))
    world.servers[FOLLOWER].hello = False  # (as a Redis older than 6 would)
    world.feed(ev.Requests(1, [request("GET", "none")]))
    world.settle()
    assert bytes(world.delivered[1]) == b"_\r\n"
    [failure] = world.failures()
    assert "HELLO" in failure and "unknown command" in failure
    assert 1 not in world.closed_clients


def test_clients_in_other_databases_share_in_theirs_on_both_versions():
    """Clients 1 and 3 selected databases 1 and 2 before the update, client 2 none: their
    requests on one key all go on the shared connections, each in its client's database, on
    both versions; nothing goes on their own connections."""
    world, conns = update(resp3=(), resp2=(1, 2, 3),
                          sessions={1: (request("SELECT", "1"),), 3: (request("SELECT", "2"),)})
    for client in (1, 2, 3, 1):
        world.feed(ev.Requests(client, [request("INCR", "k")]))
        world.settle()
    assert [bytes(world.delivered[c]) for c in (1, 2, 3)] == [b":1\r\n:2\r\n", b":1\r\n",
                                                                b":1\r\n"]
    incr, select = raw("INCR", "k"), lambda db: raw("SELECT", str(db))
    for role in (LEADER, FOLLOWER):
        assert shared_log(world, role) == [select(1), incr, select(0), incr, select(2), incr,
                                           select(1), incr]
        assert world.servers[role].data == {b"1/k": b"2", b"k": b"1", b"2/k": b"1"}
    assert [r for c, r in world.servers[LEADER].log if c in conns.values()] == \
        [select(1), select(2)]  # (their sessions, before the update)
    status = world.engine.status()
    assert status["shared_clients"] == 3 and status["dialect_switches"] == 8
    assert world.failures() == [] and world.divergences() == []


def test_a_select_during_the_update_changes_the_database_the_client_shares_in():
    """A SELECT goes on the client's own connections; the requests pipelined behind it go on
    the shared ones in the database it chose, on both versions. One the server refuses (out of
    range) changes nothing, and a HELLO 3 keeps the database."""
    world, conns = update(resp3=(), resp2=(1,))
    world.feed(ev.Requests(1, [request("SET", "k", "0"), request("SELECT", "3"),
                               request("SET", "k", "3"), request("SELECT", "99"),
                               request("GET", "k"), HELLO_3, request("GET", "k"),
                               request("GET", "none")]))
    world.settle()
    hello = world.servers[LEADER]._hello(0, b"3")
    assert bytes(world.delivered[1]) == b"+OK\r\n+OK\r\n+OK\r\n" + \
        b"-ERR DB index is out of range\r\n$1\r\n3\r\n" + hello + b"$1\r\n3\r\n_\r\n"
    for role in (LEADER, FOLLOWER):
        assert world.servers[role].data == {b"k": b"0", b"3/k": b"3"}
        assert shared_log(world, role) == [raw("SET", "k", "0"), raw("SELECT", "3"),
                                           raw("SET", "k", "3"), raw("GET", "k"),
                                           HELLO_3.raw, raw("GET", "k"), raw("GET", "none")]
    assert [r for c, r in world.servers[LEADER].log if c == conns[1]] == \
        [raw("SELECT", "3"), raw("SELECT", "99"), HELLO_3.raw]
    assert world.engine.status()["shared_clients"] == 1
    assert world.failures() == [] and world.divergences() == []
