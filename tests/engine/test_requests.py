"""Requests that need more than their keys to be ordered: blocking pops, transactions, pushes.

Driven with the model servers of :mod:`tests.engine.harness` (a fake Redis, no socket): each
test checks what a client sees and that both versions end in the same state.
"""

from __future__ import annotations

import re

import pytest

from tests.engine.harness import OWN, World, new_engine, request
from twinproxy import digests
from twinproxy.config.model import RuleConfig, Substitution
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.engine.waits import PROBES_AFTER_WRITE
from twinproxy.protocols.redis import CODEC


def world_with(*clients: int, plain: tuple[int, ...] = ()) -> tuple[World, dict[int, int]]:
    """An update in MVE; ``clients`` on their own connections, ``plain`` on the shared ones."""
    world = World()
    world.feed(ev.Begin())
    conns = {}
    for client in (*clients, *plain):
        conns[client] = new_id()
        world.attach(client, conns[client], session=() if client in plain else (OWN,))
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world, conns


def replies(world: World, client: int, *requests) -> list:
    reader = CODEC.reply_reader()
    for r in requests:
        reader.expect(r)
    return [CODEC.canonical(r) for r in reader.receive(bytes(world.delivered.get(client, b"")))]


def test_a_blocking_pop_blocks_in_the_leader_and_the_follower_gets_its_effect():
    world, conns = world_with(1, 2)
    blpop = request("BLPOP", "q", "0")
    world.feed(ev.Requests(1, [blpop]))
    world.settle()
    assert replies(world, 1, blpop) == []  # nothing to pop: it blocks, in the leader
    assert conns[1] in world.servers[LEADER].blocked
    assert world.engine.status()["waiting_clients"] == 1
    push = request("RPUSH", "q", "a", "b")
    world.feed(ev.Requests(2, [push]))
    world.settle()
    assert replies(world, 1, blpop) == [(b"q", b"a")]
    assert replies(world, 2, push) == [2]
    assert world.servers[LEADER].lists == world.servers[FOLLOWER].lists == {b"q": [b"b"]}
    # The follower never blocked: it got the pop the leader made, after the push.
    assert [r for _, r in world.servers[FOLLOWER].history[b"q"]] == [
        push.raw, request("LPOP", "q").raw]
    assert world.failures() == [] and world.divergences() == []


def test_a_blocking_pop_times_out_in_the_leader_and_the_follower_gets_nothing():
    world, conns = world_with(1)
    blpop = request("BLPOP", "q", "2")
    world.feed(ev.Requests(1, [blpop]))
    world.settle()
    world.time_out(LEADER, conns[1])
    world.settle()
    assert bytes(world.delivered[1]) == b"*-1\r\n"
    assert world.engine.status()["waiting_clients"] == 0
    assert b"q" not in world.servers[FOLLOWER].history
    assert world.failures() == []


def test_a_blocking_pop_with_data_there_is_served_at_once_in_its_place():
    world, _ = world_with(1, 2)
    world.feed(ev.Requests(2, [request("RPUSH", "q", "a")]))
    world.settle()
    blpop = request("BLPOP", "q", "0")
    world.feed(ev.Requests(1, [blpop, request("RPUSH", "q", "b")]))
    world.settle()
    assert replies(world, 1, blpop, request("RPUSH", "q", "b")) == [(b"q", b"a"), 1]
    assert world.servers[LEADER].lists == world.servers[FOLLOWER].lists == {b"q": [b"b"]}
    assert world.failures() == [] and world.divergences() == []


@pytest.mark.parametrize("served_first", [True, False])
def test_waiting_clients_are_served_in_the_order_they_blocked_on_both_versions(served_first):
    world, conns = world_with(1, 2, 3, 4)
    pops = {c: request("BLPOP", "q", "0") for c in (1, 2, 3)}
    for client in (2, 1, 3):
        world.feed(ev.Requests(client, [pops[client]]))
        world.settle()
    push = request("RPUSH", "q", "x", "y", "z")
    world.feed(ev.Requests(4, [push]))
    world.feed(ev.Flush())
    world.run(LEADER, conns[4], served_first=served_first)
    world.settle()
    assert [replies(world, c, pops[c]) for c in (2, 1, 3)] == [
        [(b"q", b"x")], [(b"q", b"y")], [(b"q", b"z")]]
    assert world.servers[LEADER].lists == world.servers[FOLLOWER].lists == {b"q": []}
    assert world.failures() == [] and world.divergences() == []


def test_a_write_on_a_key_a_request_blocks_on_waits_for_the_fence_after_the_write_before():
    world, conns = world_with(1, 2, 3)
    world.feed(ev.Requests(1, [request("BLPOP", "q", "0")]))
    world.settle()
    leader = world.servers[LEADER]
    world.feed(ev.Requests(2, [request("RPUSH", "q", "a")]))
    world.feed(ev.Requests(3, [request("RPUSH", "q", "b")]))
    world.feed(ev.Flush())
    assert leader.pending[conns[2]] and not leader.pending[conns[3]]
    world.run(LEADER, conns[2], served_first=False)  # the pusher's reply, then the waiter's
    world.feed(ev.Flush())
    # The second push waits until the proxy's probes show every waiter the first one served.
    for _ in range(PROBES_AFTER_WRITE):
        assert not leader.pending[conns[3]]
        [probe_conn] = [c for c in leader.ready() if c not in conns.values()]
        world.run(LEADER, probe_conn)
        world.feed(ev.Flush())
    assert leader.pending[conns[3]]
    world.settle()
    assert leader.lists == world.servers[FOLLOWER].lists == {b"q": [b"b"]}
    assert [r for _, r in world.servers[FOLLOWER].history[b"q"]] == [
        request("RPUSH", "q", "a").raw, request("LPOP", "q").raw, request("RPUSH", "q", "b").raw]
    assert world.failures() == [] and world.divergences() == []


def test_a_served_waiters_pop_held_for_its_place_counts_in_the_backlog():
    """A waiter is answered as soon as the leader serves it, but its pop reaches the follower
    only when the probes after the write are in. Until then the follower still owes it: the
    status's backlog counts it, so "backlog 0" never shows a follower without the pop."""
    world, conns = world_with(1, 2)
    world.feed(ev.Requests(1, [request("BLPOP", "q", "0")]))
    world.settle()
    leader, follower = world.servers
    world.feed(ev.Requests(2, [request("RPUSH", "q", "a")]))
    world.feed(ev.Flush())
    world.run(LEADER, conns[2])  # the push serves the waiter: both replies are in
    world.feed(ev.Flush())
    for conn in follower.ready():  # the follower answers the push; the probes wait
        world.run(FOLLOWER, conn)
    world.feed(ev.Flush())
    assert bytes(world.delivered[1]) == b"*2\r\n$1\r\nq\r\n$1\r\na\r\n"
    assert follower.lists == {b"q": [b"a"]} and leader.lists == {b"q": []}
    assert world.engine.status()["backlog"] == 1
    world.settle()
    assert world.engine.status()["backlog"] == 0
    assert leader.lists == follower.lists == {b"q": []}


def test_a_served_clients_next_request_reaches_the_follower_after_its_pop():
    world, _ = world_with(1, 2)
    blpop, after = request("BLPOP", "q", "0"), request("RPUSH", "r", "next")
    world.feed(ev.Requests(1, [blpop, after]))
    world.settle()
    world.feed(ev.Requests(2, [request("RPUSH", "q", "a")]))
    world.settle()
    assert replies(world, 1, blpop, after) == [(b"q", b"a"), 1]
    follower = world.servers[FOLLOWER]
    [own] = {c for c, r in follower.log if r == after.raw}
    assert [r for c, r in follower.log if c == own][-2:] == [request("LPOP", "q").raw, after.raw]
    assert world.servers[LEADER].lists == follower.lists
    assert world.failures() == []


def test_a_transaction_is_ordered_at_its_exec_on_everything_it_queued():
    world, conns = world_with(1, 2)
    tx = [request("MULTI"), request("INCR", "n"), request("INCR", "m"), request("EXEC")]
    world.feed(ev.Requests(1, tx))
    world.run(LEADER, conns[1])  # MULTI
    world.run(LEADER, conns[1])  # INCR n: QUEUED
    world.feed(ev.Requests(2, [request("INCR", "m")]))
    # Client 2's INCR came after the EXEC, which writes m too: it waits for the EXEC's reply.
    assert not world.servers[LEADER].pending[conns[2]]
    world.run(LEADER, conns[1])  # INCR m: QUEUED
    assert not world.servers[LEADER].pending[conns[2]]
    world.run(LEADER, conns[1])  # EXEC
    assert world.servers[LEADER].pending[conns[2]]
    world.settle()
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"n": b"1",
                                                                           b"m": b"2"}
    assert replies(world, 1, *tx)[-1] == (1, 1)
    assert world.failures() == []


def test_a_client_that_ends_its_input_is_closed_once_it_is_owed_nothing():
    world, _ = world_with(1)
    incr = request("INCR", "n")
    world.feed(ev.Requests(1, [incr]))
    world.feed(ev.ClientEof(1))
    assert 1 not in world.closed_clients  # its INCR is still owed
    world.settle()
    assert replies(world, 1, incr) == [1]
    assert 1 in world.closed_clients
    assert world.servers[FOLLOWER].data == {b"n": b"1"}  # the follower still got it


def test_a_plain_clients_reads_travel_as_runs_and_are_compared_as_bytes():
    world, _ = world_with(plain=(9,))
    requests = [request("SET", "a", "1"), request("GET", "a"), request("INCR", "a")]
    raw = b"".join(r.raw for r in requests)
    assert world.engine.runs_allowed(9)
    world.feed(ev.Run(9, raw, len(requests)))
    world.settle()
    assert replies(world, 9, *requests) == [b"OK", b"1", 2]
    status = world.engine.status()
    assert status["compared"] == 3 and status["divergences"] == 0


def test_a_run_with_a_relative_expiry_reaches_the_follower_with_the_leaders_moment():
    """A cache's ``SET k v EX 300`` travels in a run like other SETs: the leader gets it as
    it came, the follower with the wall-clock moment the leader answered it, as ``PXAT``."""
    world, _ = world_with(plain=(9,))
    world.feed(ev.Tick(50.0, 1_796_000_000.5))
    requests = [request("set", "a", "1", "EX", "300"), request("GET", "a"),
                request("SET", "b", "2", "px", "1500")]
    raw = b"".join(r.raw for r in requests)
    reader = CODEC.request_reader()
    assert reader.count_run(raw) == (len(raw), 3) and reader.expiring
    world.feed(ev.Run(9, raw, 3, reader.small_replies, reader.reads_only,
                      expiring=reader.expiring))
    world.settle()
    assert replies(world, 9, *requests) == [b"OK", b"1", b"OK"]
    assert [r for _, r in world.servers[LEADER].log[-3:]] == [r.raw for r in requests]
    assert [r for _, r in world.servers[FOLLOWER].log[-3:]] == [
        request("set", "a", "1", "PXAT", "1796000300500").raw, request("GET", "a").raw,
        request("SET", "b", "2", "PXAT", "1796000002000").raw]
    status = world.engine.status()
    assert status["compared"] == 3 and status["divergences"] == 0


def test_an_update_keeps_nothing_of_the_requests_both_versions_answered():
    world, _ = world_with(1, plain=(9,))
    engine = world.engine
    for _ in range(200):  # runs only
        world.feed(ev.Run(9, request("INCR", "a").raw, 1))
        world.settle()
    assert [len(side.runs) for side in engine.sides] == [0, 0]
    for _ in range(200):  # ordered requests on a client's own connection only
        world.feed(ev.Requests(1, [request("INCR", "b")]))
        world.settle()
    for side in engine.sides:
        assert (len(side.runs), len(side.owns), side.own_ordered, len(side.order)) == (0, 0, 0, 0)
    assert engine.status()["compared"] == 400 and engine.backlog.requests == 0


def test_a_client_that_does_not_read_leaves_the_shared_connection():
    world, conns = world_with(plain=(9,))
    world.feed(ev.Requests(9, [request("GET", "a")]))
    world.feed(ev.Flush())
    shared = [c for c, role in world.role.items() if role == LEADER and c != conns[9]]
    assert world.servers[LEADER].pending[shared[0]]  # on the shared connection
    world.settle()
    world.feed(ev.SlowReader(9))
    assert not world.engine.runs_allowed(9)
    world.feed(ev.Requests(9, [request("GET", "a")]))
    assert world.servers[LEADER].pending[conns[9]]  # on its own: the server keeps the rest
    world.settle()
    assert replies(world, 9, request("GET", "a"), request("GET", "a")) == [None, None]


def test_a_large_reply_waits_for_the_followers_as_a_digest_and_is_compared_by_it():
    world, conns = world_with(1)
    value = b"x" * 200_000
    world.feed(ev.Requests(1, [request("SET", "big", value)]))
    world.settle()
    world.feed(ev.Requests(1, [request("GET", "big")]))
    world.run(LEADER, conns[1])  # answered by the leader; the follower has not answered yet
    assert bytes(world.delivered[1]).endswith(b"$200000\r\n" + value + b"\r\n")
    assert world.engine.backlog.bytes < 1000  # the request, not the 200 kB reply
    world.settle()
    assert world.divergences() == [] and world.engine.status()["compared"] == 2
    world.servers[FOLLOWER].data[b"big"] = b"y" * 200_000  # the versions now differ
    world.feed(ev.Requests(1, [request("GET", "big")]))
    world.settle()
    [diverged] = world.divergences()
    assert diverged.reason == "large replies differ" and not diverged.verdict.expected
    assert diverged.leader.startswith(b"(200011 bytes, %s " % digests.NAME.encode())
    assert world.failures()  # unexpected: the update fails, as for any divergence


def test_a_large_reply_that_a_rule_reads_is_kept_whole_so_that_the_rule_still_applies():
    """A ``normalize`` rule needs the values: a digest could only say that they differ."""
    stamp = RuleConfig("stamp", ("GET",), "normalize",
                       normalize=(Substitution(re.compile(rb"[xy]{200000}"), b"V"),))
    world = World(new_engine(rules=(stamp,)))
    world.feed(ev.Begin())
    world.attach(1, new_id(), session=(OWN,))
    world.attach(9, new_id())
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    world.feed(ev.Requests(1, [request("SET", "big", b"x" * 200_000)]))
    world.settle()
    world.servers[FOLLOWER].data[b"big"] = b"y" * 200_000
    world.feed(ev.Requests(1, [request("GET", "big")]))
    world.settle()
    assert world.engine.runs_allowed(9)
    world.feed(ev.Run(9, request("GET", "big").raw * 2, 2))
    world.settle()
    diverged = world.divergences()
    assert len(diverged) == 3 and all(d.verdict.expected for d in diverged)
    assert {d.verdict.rule for d in diverged} == {"stamp"} and world.failures() == []


def test_a_run_sent_while_runs_are_not_allowed_goes_request_by_request():
    world, _conns = world_with(1, plain=(9,))
    world.feed(ev.Requests(1, [request("GET", "a")]))  # ordered, on its own connection
    assert not world.engine.runs_allowed(9)
    world.feed(ev.Run(9, request("SET", "a", "1").raw + request("GET", "a").raw, 2))
    world.settle()
    assert replies(world, 9, request("SET", "a", "1"), request("GET", "a")) == [b"OK", b"1"]
    assert world.failures() == [] and world.engine.status()["compared"] == 3


def test_a_run_that_only_reads_goes_while_reads_are_out_on_own_connections_not_writes():
    """A client reading large values stays on its own connection: its reads must not keep
    every other client's reads off runs (they commute), but its writes must."""
    world, conns = world_with(1, plain=(9,))
    engine = world.engine
    world.feed(ev.Requests(1, [request("SET", "a", "1")]))
    world.settle()
    world.feed(ev.Requests(1, [request("GET", "a")]))  # ordered, on its own connection
    world.feed(ev.Flush())
    assert world.servers[LEADER].pending[conns[1]]  # out, not answered
    reads = request("GET", "a").raw * 2
    assert engine.runs_allowed(9, False, True) and not engine.runs_allowed(9, False, False)
    world.feed(ev.Run(9, reads, 2, reads=True))
    assert len(engine.sides[LEADER].runs) == 1  # a run, sent at once
    world.feed(ev.Flush())
    shared = [c for c, role in world.role.items() if role == LEADER and c != conns[9]
              and c != conns[1]]
    assert any(world.servers[LEADER].pending[c] for c in shared)
    world.settle()
    world.feed(ev.Requests(1, [request("SET", "a", "2")]))  # a write out on its own
    world.feed(ev.Flush())
    assert not engine.runs_allowed(9, False, True)
    world.feed(ev.Run(9, reads, 2, reads=True))  # sent anyway: request by request
    assert not engine.sides[LEADER].runs
    world.settle()
    assert replies(world, 9, *[request("GET", "a")] * 4) == [b"1", b"1", b"2", b"2"]
    assert world.failures() == [] and engine.status()["compared"] == 7


def test_runs_allowed_says_yes_until_the_next_event_only():
    """The relay asks before it sends a run, and the engine takes the run on that answer: an
    event in between that forbids runs must still send the run request by request."""
    world, _conns = world_with(1, plain=(9,))
    engine = world.engine
    run = request("SET", "a", "1").raw + request("GET", "a").raw
    assert engine.runs_allowed(9)
    world.feed(ev.Run(9, run, 2))
    assert len(engine.sides[LEADER].runs) == 1  # a run
    world.settle()
    assert engine.runs_allowed(9)
    world.feed(ev.Requests(1, [request("GET", "a")]))  # ordered, on its own connection
    world.feed(ev.Run(9, run, 2))
    assert not engine.sides[LEADER].runs  # request by request
    world.settle()
    assert replies(world, 9, *[request("SET", "a", "1"), request("GET", "a")] * 2) == \
        [b"OK", b"1", b"OK", b"1"]
    assert world.failures() == [] and engine.status()["compared"] == 5


def test_a_run_of_large_replies_is_neither_held_whole_nor_compared_whole():
    world, _ = world_with(plain=(9,))
    value = b"v" * 100_000
    world.feed(ev.Requests(9, [request("SET", "big", value)]))
    world.settle()
    gets = request("GET", "big").raw * 3
    world.feed(ev.Run(9, gets, 3))
    world.feed(ev.Flush())
    reply = b"$100000\r\n" + value + b"\r\n"
    leader = next(c for c in world.servers[LEADER].ready() if world.role[c] == LEADER)
    world.run(LEADER, leader)  # the first GET: to the client at once, not at the run's end
    world.feed(ev.Flush())
    assert bytes(world.delivered[9]) == b"+OK\r\n" + reply
    world.settle()
    assert world.divergences() == [] and world.engine.backlog.bytes == 0
    assert len(world.delivered[9]) == len(b"+OK\r\n") + 3 * len(reply)
    world.servers[FOLLOWER].data[b"big"] = b"w" * 100_000
    world.feed(ev.Run(9, gets, 3))
    world.settle()
    [diverged] = world.divergences()
    assert diverged.reason == "large replies differ" and diverged.request.name == "GET"


def test_a_connection_the_leader_closed_holds_up_nobody():
    """After QUIT (or CLIENT KILL) the leader closes a client's own connection; what the client
    sends after it is never answered there. A global request sent then (redis-py's FLUSHDB in
    its test teardown) held every later request of every client: the proxy stopped answering."""
    world, conns = world_with(1, plain=(2,))
    last = request("SET", "x", "1")  # (the model server has no QUIT: its close comes below)
    world.feed(ev.Requests(1, [last]))
    world.settle()
    assert replies(world, 1, last) == [b"OK"]
    world.feed(ev.ConnClosed(conns[1]))  # the server's own close, after its reply
    assert [type(n).__name__ for n in world.notices] == ["LeaderLost"]
    world.feed(ev.Requests(1, [request("FLUSHDB")]))
    world.settle()
    world.feed(ev.CloseOrphans())  # the leader is alive: it closed that connection itself
    assert 1 in world.closed_clients
    get = request("GET", "a")
    world.feed(ev.Requests(2, [request("SET", "a", "1"), get]))
    world.settle()
    assert replies(world, 2, request("SET", "a", "1"), get) == [b"OK", b"1"]
    assert world.failures() == []


def test_when_the_leader_closes_the_shared_connection_its_clients_are_closed_and_others_go_on():
    """CLIENT KILL LADDR (or TYPE normal) closes the connection plain clients share: a client
    with a request on it is closed, as its own connection would be directly, and the others are
    served on a new shared connection."""
    world, _ = world_with(1, plain=(2, 3))
    world.feed(ev.Requests(2, [request("GET", "a")]))  # on the shared connection, unanswered
    world.feed(ev.Flush())
    shared = world.engine.sides[LEADER].shared.conn.id
    world.feed(ev.ConnClosed(shared))
    world.feed(ev.CloseOrphans())
    assert world.closed_clients == {2}
    assert world.engine.sides[LEADER].shared.conn.id != shared
    get = request("GET", "b")
    world.feed(ev.Requests(3, [request("SET", "b", "2"), get]))
    world.settle()
    assert replies(world, 3, request("SET", "b", "2"), get) == [b"OK", b"2"]
    assert world.failures() == []


def test_a_request_after_a_discard_in_the_same_write_is_answered():
    """redis-py's test_pipeline_discard during an update hung: MULTI, SET, DISCARD, SET, EXEC in
    one write from a plain client. The second SET waited for the DISCARD's own path to be
    answered, and nothing looked at it again once it was."""
    world, _ = world_with(2, plain=(1,))
    words = [("MULTI",), ("SET", "key", "a"), ("DISCARD",), ("SET", "key", "b"), ("EXEC",)]
    sent = [request(*w) for w in words]
    world.feed(ev.Requests(1, sent))
    world.settle()
    got = replies(world, 1, *sent)
    assert got[:4] == [b"OK", b"QUEUED", b"OK", b"OK"] and len(got) == 5
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data
    assert world.servers[LEADER].data[b"key"] == b"b"
    assert world.failures() == []


def test_a_client_that_leaves_while_blocked_is_freed_in_the_leader_and_pops_nothing():
    world, conns = world_with(1, 2)
    world.feed(ev.Requests(1, [request("BLPOP", "q", "0")]))
    world.settle()
    commands = world.engine.handle(ev.ClientClosed(1))
    # Its end of input goes to the leader, which frees a blocked client on it, as directly.
    assert any(type(c).__name__ == "Shutdown" and c.conn == conns[1] for c in commands)
    del world.servers[LEADER].blocked[conns[1]]
    world.feed(ev.ConnClosed(conns[1]))
    world.feed(ev.Requests(2, [request("RPUSH", "q", "a")]))
    world.settle()
    assert world.servers[LEADER].lists == world.servers[FOLLOWER].lists == {b"q": [b"a"]}
    assert world.engine.status()["waiting_clients"] == 0 and 1 not in world.engine.clients
    assert world.failures() == []


def test_a_probe_lost_with_the_shared_connection_ends_its_fence():
    """The leader closes the shared connection (CLIENT KILL TYPE normal) while a probe for a
    blocking request is on it: its keys are not fenced for ever."""
    world, conns = world_with(1, 2)
    blpop = request("BLPOP", "q", "0")
    world.feed(ev.Requests(1, [blpop]))
    world.feed(ev.Flush())
    world.run(LEADER, conns[1])  # it blocks; its first probe is on the shared connection
    shared = world.engine.sides[LEADER].shared.conn.id
    world.feed(ev.ConnClosed(shared))
    world.feed(ev.CloseOrphans())
    push = request("RPUSH", "q", "a")
    world.feed(ev.Requests(2, [push]))
    world.settle()
    assert replies(world, 1, blpop) == [(b"q", b"a")] and replies(world, 2, push) == [1]
    assert world.servers[LEADER].lists == world.servers[FOLLOWER].lists == {b"q": []}
    assert world.failures() == []


def _counts(world: World, client: int, info) -> dict[bytes, int]:
    """The counts a client's INFO reply showed it."""
    [text] = replies(world, client, request("PING"), info)[1:]
    return {k: int(v) for k, v in re.findall(rb"(total_commands_processed|cmdstat_ping:calls)"
                                              rb"[:=](\d+)", text)}


def test_info_shows_a_client_its_own_pings_not_the_proxys_probes():
    """The probes of a fence are PINGs the leader counts; a client's INFO never runs while one
    is out, and its reply has them taken out: it sees the counts it would see directly."""
    world, conns = world_with(1, 2, 3)
    leader = world.servers[LEADER]
    world.feed(ev.Requests(1, [request("BLPOP", "q", "0")]))  # (probes: blocked?)
    world.settle()
    world.feed(ev.Requests(2, [request("RPUSH", "q", "a")]))
    world.feed(ev.Flush())
    world.run(LEADER, conns[2])
    world.feed(ev.Flush())  # the write's reply is in: a probe is out on the shared connection
    info = request("INFO", "everything")
    world.feed(ev.Requests(3, [request("PING"), info]))
    world.feed(ev.Flush())
    assert [r.name for r in leader.pending[conns[3]]] == ["PING"]  # INFO waits for the probe
    world.settle()
    probes = sum(1 for c, r in leader.log if c not in conns.values())
    assert probes > 3  # the leader ran them: 3 after the BLPOP, 2 after the RPUSH
    before = len(leader.log) - 1  # everything the leader ran before the INFO
    assert _counts(world, 3, info) == {b"total_commands_processed": before - probes + 1,
                                       b"cmdstat_ping:calls": 1}
    assert world.failures() == []  # (INFO itself differs, as expected: server-specific)


def test_config_resetstat_starts_the_proxys_count_of_its_probes_again():
    world, _ = world_with(1, 2)
    world.feed(ev.Requests(1, [request("BLPOP", "q", "0")]))
    world.settle()
    world.feed(ev.Requests(2, [request("CONFIG", "RESETSTAT")]))
    world.settle()
    world.feed(ev.Requests(2, [request("RPUSH", "q", "a")]))  # served: 2 probes after it
    world.settle()
    world.delivered.pop(2, None)
    info = request("INFO")
    world.feed(ev.Requests(2, [request("PING"), info]))
    world.settle()
    # Since the reset: the RPUSH, the PING and the INFO; not the probes.
    assert _counts(world, 2, info) == {b"total_commands_processed": 3, b"cmdstat_ping:calls": 1}
