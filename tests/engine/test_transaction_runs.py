"""Transactions in MVE runs: redis-py's default pipeline (MULTI, its commands, EXEC, in one
write) travels on the shared connections as one run, like its ``transaction=False`` pipeline.

Driven with the model servers of :mod:`tests.engine.harness` (a fake Redis, no socket; it
refuses to queue a ``SET`` without a value, and then aborts the transaction, as Redis does).
Each script feeds the engine a read as the relay frames it (``count_run``) and checks what the
client got, what each version ran, and what was compared.
"""

from __future__ import annotations

from tests.engine.harness import World, new_engine, request
from tests.engine.test_requests import replies, world_with
from twinproxy.config.model import RuleConfig
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import events as ev
from twinproxy.protocols.redis import CODEC, fast


def run_of(world: World, client: int, requests: list) -> None:
    """``requests`` as one read of ``client``'s, taken as a run as the relay takes it."""
    raw = b"".join(r.raw for r in requests)
    reader = CODEC.request_reader()
    if fast.c_scan is not None:  # (without the C scan the relay frames transactions instead)
        assert reader.count_run(raw) == (len(raw), len(requests))
    assert world.engine.runs_allowed(client, reader.small_replies, reader.reads_only)
    world.feed(ev.Run(client, raw, len(requests), reader.small_replies, reader.reads_only))


def executed(world: World, role: int) -> list[bytes]:
    """The requests the server of ``role`` ran, in order, but the proxy's own (probes)."""
    return [raw for _, raw in world.servers[role].log if raw != request("PING").raw]


def test_a_transaction_travels_whole_in_its_run_and_is_compared_as_bytes():
    world, _ = world_with(plain=(9, 8))
    tx = [request("SET", "a", "1"), request("MULTI"), request("INCR", "n"), request("GET", "a"),
          request("EXEC"), request("INCR", "n")]
    run_of(world, 9, tx)
    run_of(world, 8, [request("INCR", "n")])
    world.settle()
    assert replies(world, 9, *tx) == [b"OK", b"OK", b"QUEUED", b"QUEUED", (1, b"1"), 2]
    assert replies(world, 8, request("INCR", "n")) == [3]
    leader, follower = world.servers
    assert leader.data == follower.data == {b"a": b"1", b"n": b"3"}
    # Both ran the client's bytes, its transaction whole: nobody's request inside it.
    assert executed(world, LEADER) == executed(world, FOLLOWER) == [r.raw for r in tx] + [
        request("INCR", "n").raw]
    status = world.engine.status()
    assert status["compared"] == 7 and status["divergences"] == 0 and status["withheld"] == 0
    assert world.failures() == []


def test_a_transaction_the_leader_aborted_is_withheld_and_the_rest_of_its_run_goes_on():
    """A request the leader refused to queue aborted its EXEC: the leader changed nothing, so
    the follower gets none of that transaction (a version that would have queued it would run
    it). The run's other requests reach it one by one, and a transaction that ran goes whole."""
    world, _ = world_with(plain=(9,))
    aborted = [request("MULTI"), request("INCR", "n"), request("SET", "a"), request("EXEC")]
    ran = [request("MULTI"), request("INCR", "m"), request("EXEC")]
    run = [request("SET", "x", "1"), *aborted, request("INCR", "x"), *ran]
    run_of(world, 9, run)
    world.settle()
    got = replies(world, 9, *run)
    assert got[2:5] == [b"QUEUED", got[3], got[4]]
    assert got[3].message.startswith(b"ERR wrong number")
    assert got[4].message.startswith(b"EXECABORT")
    assert got[5:] == [2, b"OK", b"QUEUED", (1,)]
    leader, follower = world.servers
    assert leader.data == follower.data == {b"x": b"2", b"m": b"1"}
    assert executed(world, FOLLOWER) == [r.raw for r in [run[0], run[5], *ran]]
    status = world.engine.status()
    assert status["withheld"] == len(aborted) and status["divergences"] == 0
    assert world.failures() == []


def test_a_transactions_replies_that_differ_are_compared_part_by_part():
    """Where a run's replies differ, EXEC's are compared one by one, each by the rules of the
    request it answers: here a rule for INCR explains the difference, GET's part is equal."""
    rule = RuleConfig("counters", ("INCR",), "ignore", ignore=True)
    for rules, expected in (((rule,), True), ((), False)):
        world = World(new_engine(rules=rules))
        world.feed(ev.Begin())
        world.attach(9, 1000 + len(rules))
        world.feed(ev.Release())
        world.feed(ev.StartFollower())
        world.settle()
        world.servers[FOLLOWER].data[b"n"] = b"5"  # (the two versions count differently)
        tx = [request("MULTI"), request("INCR", "n"), request("GET", "a"), request("EXEC")]
        run_of(world, 9, tx)
        world.settle()
        assert replies(world, 9, *tx)[-1] == (1, None)
        [diverged] = world.divergences()
        assert diverged.request.name == "EXEC"
        assert diverged.verdict.expected is expected
        status = world.engine.status()
        assert status["compared"] == 4 and status["divergences"] == (0 if expected else 1)


def test_where_the_leader_refused_multi_the_follower_runs_the_rest_as_it_came():
    """A user may be denied MULTI (an ACL): then the server runs the pipeline's other
    requests at once and refuses EXEC. The follower gets the same bytes, and does the same."""
    world, _ = world_with(plain=(9,))
    for server in world.servers:
        server.refused.add("MULTI")
    tx = [request("MULTI"), request("INCR", "n"), request("EXEC")]
    run_of(world, 9, tx)
    world.settle()
    got = replies(world, 9, *tx)
    assert got[1] == 1 and got[0].message.startswith(b"NOPERM")
    assert got[2].message == b"ERR EXEC without MULTI"
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"n": b"1"}
    status = world.engine.status()
    assert status["withheld"] == 0 and status["divergences"] == 0
