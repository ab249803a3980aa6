"""Barriers and how an update ends: cutover, rollback, take-over, role swap; follower lag.

These drive the engine with the model servers of :mod:`tests.engine.harness` (a fake Redis, no
socket) and check what an operator relies on: every client is handed back on the right
connection with what it still waits for, nothing it sent is lost or sent twice, and a follower
that falls behind or stops answering fails the update.
"""

from __future__ import annotations

from tests.engine.harness import OWN, World, new_engine, request
from twinproxy.compare import Comparator, Rules
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.redis import CODEC


def live_world(**settings) -> tuple[World, dict[int, int]]:
    """An update in MVE with two clients on their own connections and one plain client."""
    world = World(new_engine(**settings)) if settings else World()
    world.feed(ev.Begin())
    conns = {1: new_id(), 2: new_id(), 9: new_id()}
    world.attach(1, conns[1], session=(OWN,))
    world.attach(2, conns[2], session=(OWN,))
    world.attach(9, conns[9])
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world, conns


def conditions_reached(world: World) -> list[frozenset[str]]:
    return [n.conditions for n in world.notices if isinstance(n, cmd.Reached)]


def test_a_cutover_hands_every_client_back_on_its_follower_connection():
    world, conns = live_world()
    world.feed(ev.Requests(1, [request("SET", "k", "1")]))
    world.feed(ev.Requests(9, [request("INCR", "n")]))
    world.settle()
    world.feed(ev.Hold())
    world.feed(ev.Watch(frozenset({"quiet", "caught-up"})))
    assert frozenset({"quiet", "caught-up"}) in conditions_reached(world)
    # What arrives at the barrier waits, and goes with the client to the new version.
    world.feed(ev.Requests(2, [request("GET", "k")]))
    world.feed(ev.End(True))
    handed = {h.client: h for h in world.handbacks}
    assert set(handed) == {1, 2, 9}
    for client, handback in handed.items():
        assert world.role[handback.conn] == FOLLOWER and handback.conn != conns[client]
        assert handback.inflight == ()
    assert [r.name for r in handed[2].held] == ["GET"]
    assert handed[1].held == handed[9].held == ()


def test_a_rollback_hands_back_the_leader_connections_with_what_waited():
    world, conns = live_world()
    world.feed(ev.Requests(1, [request("SET", "k", "1")]))  # sent to the leader, unanswered
    world.feed(ev.Hold())
    world.feed(ev.Requests(1, [request("GET", "k")]))  # held at the barrier
    world.feed(ev.End(False))
    [handback] = [h for h in world.handbacks if h.client == 1]
    assert handback.conn == conns[1]
    assert [r.name for r in handback.inflight] == ["SET"]
    assert [r.name for r in handback.held] == ["GET"]


def test_a_run_held_at_a_rollback_is_handed_back_request_by_request():
    world, _ = live_world()
    world.feed(ev.Hold())
    raw = request("INCR", "a").raw + request("INCR", "b").raw
    assert world.engine.runs_allowed(9)
    world.feed(ev.Run(9, raw, 2))
    world.feed(ev.End(False))
    [handback] = [h for h in world.handbacks if h.client == 9]
    assert [(r.name, r.args) for r in handback.held] == [("INCR", [b"a"]), ("INCR", [b"b"])]


def test_a_dead_leaders_work_is_answered_by_the_follower_once():
    world, _ = live_world()
    world.feed(ev.Requests(1, [request("INCR", "n")]))  # sent to the leader, never answered
    world.feed(ev.Hold())
    world.feed(ev.Requests(2, [request("INCR", "n")]))  # waiting at the barrier
    world.feed(ev.TakeOver())
    world.settle()
    assert bytes(world.delivered[1]).endswith(b":1\r\n")
    assert bytes(world.delivered[2]).endswith(b":2\r\n")
    assert world.servers[FOLLOWER].data[b"n"] == b"2"
    assert world.engine.status()["backlog"] == 0
    world.feed(ev.End(True))
    assert {h.client for h in world.handbacks} == {1, 2, 9}


def test_the_roles_swap_at_a_barrier_and_the_old_version_follows():
    world, _ = live_world()
    world.feed(ev.Hold())
    world.feed(ev.Requests(1, [request("SET", "k", "1")]))  # waits at the barrier
    world.feed(ev.Reverse(Comparator(CODEC, Rules((), "new", "old"))))
    world.feed(ev.Release())
    world.settle()
    # The new version (the follower before) ran it first, then the old one followed.
    assert world.servers[FOLLOWER].data == world.servers[LEADER].data == {b"k": b"1"}
    assert bytes(world.delivered[1]).endswith(b"+OK\r\n")
    assert world.failures() == []


def test_a_follower_too_far_behind_fails_the_update():
    world, conns = live_world(max_backlog_requests=3)
    for _ in range(5):
        world.feed(ev.Requests(1, [request("INCR", "n")]))
        world.run(LEADER, conns[1])  # the leader answers; the follower never does
    assert any("fell 4 requests behind" in reason for reason in world.failures())


def test_a_follower_that_does_not_answer_fails_the_update_on_its_timeout():
    world, conns = live_world(follower_timeout=5.0)
    world.feed(ev.Tick(100.0))
    world.feed(ev.Requests(1, [request("INCR", "n")]))
    world.run(LEADER, conns[1])
    world.feed(ev.Tick(104.0))
    assert world.failures() == []
    world.feed(ev.Tick(106.0))
    assert any("did not answer within 5s" in reason for reason in world.failures())


def test_a_follower_that_answers_slowly_is_not_taken_for_hung():
    world, conns = live_world(follower_timeout=5.0)
    world.feed(ev.Tick(100.0))
    for _ in range(3):
        world.feed(ev.Requests(1, [request("INCR", "n")]))
        world.run(LEADER, conns[1])
    follower = next(c for c, role in world.role.items()
                    if role == FOLLOWER and world.servers[FOLLOWER].pending.get(c))
    # It answers one every 4 s (huge values, say): slow, not hung.
    for t in (104.0, 108.0, 112.0):
        world.feed(ev.Tick(t))
        world.run(FOLLOWER, follower)
    world.feed(ev.Tick(116.0))
    assert world.failures() == []
    world.feed(ev.Requests(1, [request("INCR", "n")]))
    world.run(LEADER, conns[1])
    world.feed(ev.Tick(121.5))  # 5.5 s since it was sent, and nothing since
    assert any("did not answer within 5s" in reason for reason in world.failures())


def test_the_sync_backlog_spills_past_its_bound_and_comes_back_in_order():
    engine = new_engine(spill_bytes=64)
    world = World(engine)
    world.feed(ev.Begin())
    conn = new_id()
    world.attach(1, conn, session=(OWN,))
    world.feed(ev.Release())
    for i in range(20):
        world.feed(ev.Requests(1, [request("SET", f"k{i}", "x" * 10)]))
        world.run(LEADER, conn)
    assert engine.backlog.store.records > 10
    world.feed(ev.StartFollower())
    world.settle()
    assert world.servers[FOLLOWER].data == world.servers[LEADER].data
    assert engine.status()["compared"] == 20 and world.failures() == []


def test_a_store_that_fails_fails_the_update_and_keeps_the_backlog():
    engine = new_engine(spill_bytes=64)
    world = World(engine)
    world.feed(ev.Begin())
    conn = new_id()
    world.attach(1, conn, session=(OWN,))
    world.feed(ev.Release())
    world.feed(ev.Requests(1, [request("SET", "k0", "x" * 100)]))
    engine.backlog.store = store = engine.backlog.new_store()
    store.fail = True  # the disk is full
    world.run(LEADER, conn)
    assert any("could not be spilled to disk" in reason for reason in world.failures())
    assert bytes(world.delivered[1]) == b"+OK\r\n"  # the client never noticed
    world.feed(ev.StartFollower())
    world.settle()
    assert world.servers[FOLLOWER].data == world.servers[LEADER].data


def test_a_client_that_breaks_the_protocol_is_answered_first_then_gets_its_error():
    world, _ = live_world()
    world.feed(ev.Requests(1, [request("INCR", "n")]))
    world.feed(ev.ClientError(1, b"-ERR Protocol error: bad\r\n"))
    assert 1 not in world.closed_clients
    world.settle()
    assert bytes(world.delivered[1]).endswith(b":1\r\n-ERR Protocol error: bad\r\n")
    assert 1 in world.closed_clients


def test_a_request_blocked_at_the_cutover_goes_with_what_is_left_of_its_timeout():
    """The clock is the relay's (Tick): a BLPOP of 2 s sent at 100.0 and still blocked at the
    cutover at 101.25 goes to the new version with 0.75 s, not 2 (protocols/redis/timeouts.py)."""
    world, conns = live_world()
    world.feed(ev.Tick(100.0))
    world.feed(ev.Requests(1, [request("BLPOP", "q", "2")]))
    world.settle()
    assert conns[1] in world.servers[LEADER].blocked
    world.feed(ev.Tick(101.25))
    world.feed(ev.Hold())
    world.feed(ev.End(True))
    [again] = {h.client: h for h in world.handbacks}[1].held
    assert again.raw == request("BLPOP", "q", "0.750").raw


def test_clients_driven_ahead_of_the_sync_point_give_the_follower_the_session_then():
    """Clients handed to the engine before the sync point's barrier (``Ahead``) are served by
    the leader alone until it; the follower starts on the snapshot taken at the barrier, with
    each client's session as the leader had answered it then, and gets exactly what came
    after."""
    world = World()
    world.feed(ev.Begin())
    conn = new_id()
    world.attach(1, conn, session=(OWN,))
    world.feed(ev.Ahead())
    world.feed(ev.Requests(1, [request("SELECT", "1"), request("SET", "a", "1")]))
    world.run(LEADER, conn)
    world.run(LEADER, conn)
    assert bytes(world.delivered[1]) == b"+OK\r\n+OK\r\n"
    world.feed(ev.Hold())
    world.feed(ev.Requests(1, [request("SET", "b", "2")]))  # waits at the barrier
    world.feed(ev.Watch(frozenset({"quiet"})))
    assert frozenset({"quiet"}) in conditions_reached(world)
    snapshot = dict(world.servers[LEADER].data)  # the fork
    world.feed(ev.Release())
    world.run(LEADER, conn)
    world.servers[FOLLOWER].data.update(snapshot)
    world.feed(ev.StartFollower())
    world.settle()
    sent = [r for _, r in world.servers[FOLLOWER].log]
    assert sent == [OWN.raw, request("SELECT", "1").raw, request("SET", "b", "2").raw]
    assert world.servers[FOLLOWER].data == world.servers[LEADER].data
    assert world.failures() == [] and world.divergences() == []


def test_a_watch_the_lifecycle_gave_up_is_not_answered_later():
    """A barrier's wait that timed out (``Unwatch``) is no longer checked at every batch's
    end; the same wait not given up is answered once its condition holds."""
    world, _ = live_world()
    given_up, kept = frozenset({"quiet"}), frozenset({"quiet", "joined"})
    world.feed(ev.Requests(1, [request("SET", "k", "1")]))  # in flight on the leader
    world.feed(ev.Watch(given_up))
    world.feed(ev.Watch(kept))
    assert conditions_reached(world) == []
    world.feed(ev.Unwatch(given_up))
    world.settle()
    assert conditions_reached(world) == [kept]
