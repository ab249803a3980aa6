"""On a Redis that wants a password, an update's shared connections log in as the versions' own
login, and a client shares them only while it is logged in as that same user.

Driven with the model servers of :mod:`tests.engine.harness` (a fake Redis, no socket) given a
``default`` user with a password and a ``reader`` who may only GET. Nobody's request may run on
a shared connection as a user it did not log in as: a client not logged in, or logged in as the
reader, keeps its own connections, where the servers refuse what they would refuse it directly.
"""

from __future__ import annotations

from tests.engine.harness import World, new_engine, raw, request
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id

PASSWORD = b"pw"
LOGIN = request("AUTH", PASSWORD)


def update(sessions: dict[int, tuple]) -> tuple[World, dict[int, int]]:
    """An update in MVE whose versions want a password and whose own login is ``default``'s;
    each client's session before it as given."""
    world = World(new_engine(logins=(("pw",), ("pw",))))
    for server in world.servers:
        server.users = {b"default": (PASSWORD, None),
                        b"reader": (b"r", frozenset({"GET", "AUTH", "HELLO"}))}
    world.feed(ev.Begin())
    conns = {}
    for client, session in sessions.items():
        conns[client] = new_id()
        world.attach(client, conns[client], session=session)
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world, conns


def on(world: World, role: int, conn: int) -> list[bytes]:
    """What ``conn`` ran on the server of ``role``, in order."""
    return [r for c, r in world.servers[role].log if c == conn]


def shared(world: World, role: int) -> int:
    return world.engine.sides[role].shared.conn.id


def test_only_clients_logged_in_as_the_proxys_user_share_and_each_is_served_as_directly():
    world, conns = update({1: (LOGIN,), 2: (), 3: (request("AUTH", "reader", "r"),)})
    get, set_ = request("GET", "k"), request("SET", "k", "v")
    for client in (1, 2, 3):
        world.feed(ev.Requests(client, [set_, get]))
    world.settle()
    assert bytes(world.delivered[1]) == b"+OK\r\n$1\r\nv\r\n"
    assert bytes(world.delivered[2]) == b"-NOAUTH Authentication required.\r\n" * 2
    assert bytes(world.delivered[3]) == \
        b"-NOPERM this user has no permissions to run the 'set' command\r\n$1\r\nv\r\n"
    for role in (LEADER, FOLLOWER):  # the shared connections logged in first, then client 1's
        assert on(world, role, shared(world, role)) == [LOGIN.raw, set_.raw, get.raw]
    assert on(world, LEADER, conns[2])[-2:] == on(world, LEADER, conns[3])[-2:] == \
        [set_.raw, get.raw]
    assert world.engine.status()["shared_clients"] == 1
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"k": b"v"}
    assert world.failures() == [] and world.divergences() == []


def test_a_client_that_logs_in_during_the_update_shares_from_its_logins_reply_on():
    world, conns = update({1: ()})
    get = request("GET", "k")
    # What it sent with its login goes on its own connection, after the login; once the
    # login is answered, what it sends goes on the shared one.
    world.feed(ev.Requests(1, [LOGIN, get]))
    world.settle()
    world.feed(ev.Requests(1, [get]))
    world.settle()
    assert bytes(world.delivered[1]) == b"+OK\r\n$-1\r\n$-1\r\n"
    assert on(world, LEADER, conns[1]) == [LOGIN.raw, get.raw]
    assert on(world, LEADER, shared(world, LEADER)) == [LOGIN.raw, get.raw]
    # A wrong password leaves it logged in as it was, and sharing as it did.
    world.feed(ev.Requests(1, [request("AUTH", "wrong"), get]))
    world.settle()
    assert bytes(world.delivered[1]).endswith(
        b"-WRONGPASS invalid username-password pair\r\n$-1\r\n")
    assert world.engine.status()["shared_clients"] == 1
    # Logged in as the reader: its own connections from then on.
    world.feed(ev.Requests(1, [request("AUTH", "reader", "r")]))
    world.feed(ev.Requests(1, [request("SET", "k", "v")]))
    world.settle()
    assert bytes(world.delivered[1]).endswith(
        b"+OK\r\n-NOPERM this user has no permissions to run the 'set' command\r\n")
    assert on(world, LEADER, conns[1])[-1] == raw("SET", "k", "v")
    assert world.engine.status()["shared_clients"] == 0
    assert world.failures() == [] and world.divergences() == []
