"""A version that reloads its dataset during an update (a client's DEBUG RELOAD): it answers
``-LOADING`` to everything else until it is done.

On the leader the clients get that refusal, as they would directly, and what it refused never
goes to the follower. On the follower, which runs behind, the reload goes only once nothing
else is out there (a PING the order does not track included), and nothing goes after it before
its reply: nothing the leader ran meets the follower loading. Driven with the model servers of
:mod:`tests.engine.harness`.
"""

from __future__ import annotations

from tests.engine.harness import World, raw, request
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"


def started() -> World:
    world = World()
    world.feed(ev.Begin())
    for client in (1, 2):
        world.attach(client, new_id())
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world


def send(world: World, client: int, *words: str) -> None:
    world.feed(ev.Requests(client, [request(*words)]))
    world.feed(ev.Flush())


def run_all(world: World, role: int) -> None:
    """The server of ``role`` answers everything it has (the other waits)."""
    server = world.servers[role]
    while server.ready():
        for conn in server.ready():
            world.run(role, conn)
        world.feed(ev.Flush())


def test_debug_reload_on_both_versions_meets_no_request_of_the_other_version() -> None:
    world = started()
    engine = world.engine
    send(world, 1, "SET", "k", "before")
    run_all(world, LEADER)  # the follower has it, not answered yet
    send(world, 2, "PING")  # untracked; goes to the follower at once, after the SET
    run_all(world, LEADER)
    assert engine._holds("loaded")
    send(world, 1, "DEBUG", "RELOAD")
    run_all(world, LEADER)  # the leader loads now
    assert not engine._holds("loaded")  # a cutover asked for now waits for both loads
    send(world, 2, "GET", "k")  # the leader refuses it: -LOADING, as directly
    run_all(world, LEADER)
    assert world.delivered[2].endswith(LOADING)
    world.loaded(LEADER)
    send(world, 2, "SET", "k", "after")
    send(world, 2, "PING")
    run_all(world, LEADER)
    assert world.servers[LEADER].data[b"k"] == b"after"
    follower = world.servers[FOLLOWER]
    # The reload is released to the follower, but waits there for the SET and the PING out.
    assert all(raw("DEBUG", "RELOAD") not in (r.raw for r in q)
               for q in follower.pending.values())
    reload = raw("DEBUG", "RELOAD")
    while follower.ready():  # the reload first, once it is there: the order to fear
        ready = follower.ready()
        world.run(FOLLOWER, next((c for c in ready if follower.pending[c][0].raw == reload),
                                 ready[0]))
        world.feed(ev.Flush())
    assert follower.reloading is not None  # it went once the others were answered
    assert not follower.ready()  # nothing after it was sent meanwhile
    assert not engine._holds("loaded")
    world.loaded(FOLLOWER)
    assert engine._holds("loaded")
    world.settle()
    assert follower.data == world.servers[LEADER].data == {b"k": b"after"}
    assert [r for _, r in follower.history[b"k"]] == \
        [raw("SET", "k", "before"), raw("SET", "k", "after")]
    assert world.divergences() == [] and world.failures() == []
    assert engine.withheld == 1  # the GET the leader refused
