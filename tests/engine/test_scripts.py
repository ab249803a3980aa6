"""The engine, one script at a time: an event in, the commands expected out.

No socket and no server: the replies are the bytes a Redis server would send, written here.
Each script starts from an update whose shared leader connection is up and whose clients were
attached at the sync point's barrier (see :func:`started`).
"""

from __future__ import annotations

from tests.engine.harness import OWN, attach, new_engine, raw, request
from tests.engine.playbook import Placeholder, Playbook
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.engine import Engine
from twinproxy.engine.events import new_id
from twinproxy.protocols.redis import CODEC

# The clients' leader connections, with ids from the same sequence as the relay's.
L0, L1, L2 = new_id(), new_id(), new_id()


def started(engine: Engine, pb: Playbook) -> Placeholder:
    """Begin the update; the leader's shared connection comes up. Returns its id."""
    shared = Placeholder("leader shared")
    assert pb >> ev.Begin() << cmd.Open(shared, LEADER, None)
    assert pb >> ev.Connected(shared)
    return shared


def live(pb: Playbook, clients: dict[int, Placeholder]) -> Placeholder:
    """Start the follower: its shared connection and one own connection per client, all up.
    Returns the shared one's id; ``clients`` maps each client to a placeholder for its own."""
    shared = Placeholder("follower shared")
    pb >> ev.StartFollower() << cmd.Open(shared, FOLLOWER, None)
    for client, conn in clients.items():
        pb << cmd.Open(conn, FOLLOWER, client)
    assert pb
    assert pb >> ev.Connected(shared)
    return shared


def test_a_plain_clients_request_goes_to_both_on_the_shared_connections_and_is_compared():
    engine = new_engine()
    pb = Playbook(engine)
    leader = started(engine, pb)
    assert pb >> attach(1, L0)
    assert pb >> ev.Release()
    assert (pb >> ev.Requests(1, [request("SET", "k", "v")])
            >> ev.Flush() << cmd.Send(leader, raw("SET", "k", "v")))
    # The leader's reply goes to the client at the end of the batch; the follower is owed it.
    assert pb >> ev.Data(leader, b"+OK\r\n") >> ev.Flush() << cmd.DeliverAll({1: b"+OK\r\n"})
    assert engine.status()["backlog"] == 1
    own = Placeholder("follower own")
    follower = live(pb, {1: own})
    assert pb >> ev.Connected(own) >> ev.Flush() << cmd.Send(follower, raw("SET", "k", "v"))
    assert pb >> ev.Data(follower, b"+OK\r\n") >> ev.Flush()
    status = engine.status()
    assert (status["compared"], status["divergences"], status["backlog"]) == (1, 0, 0)


def test_a_write_waits_for_an_earlier_conflicting_read_on_another_connection():
    engine = new_engine()
    pb = Playbook(engine)
    started(engine, pb)
    assert pb >> attach(1, L1, session=(OWN,)) >> attach(2, L2, session=(OWN,))
    assert pb >> ev.Release()
    assert pb >> ev.Requests(1, [request("GET", "k")]) << cmd.Send(L1, raw("GET", "k"))
    assert pb >> ev.Requests(2, [request("SET", "k", "v")])  # waits for the GET's reply
    assert (pb >> ev.Data(L1, b"$-1\r\n")
            << cmd.Deliver(1, b"$-1\r\n") << cmd.Send(L2, raw("SET", "k", "v")))


def test_requests_on_other_keys_go_at_once():
    engine = new_engine()
    pb = Playbook(engine)
    started(engine, pb)
    assert pb >> attach(1, L1, session=(OWN,)) >> attach(2, L2, session=(OWN,))
    assert pb >> ev.Release()
    assert pb >> ev.Requests(1, [request("SET", "a", "1")]) << cmd.Send(L1, raw("SET", "a", "1"))
    assert pb >> ev.Requests(2, [request("SET", "b", "1")]) << cmd.Send(L2, raw("SET", "b", "1"))


def test_a_barrier_holds_requests_until_it_is_released():
    engine = new_engine()
    pb = Playbook(engine)
    started(engine, pb)
    assert pb >> attach(1, L1, session=(OWN,))
    assert pb >> ev.Requests(1, [request("INCR", "n")])  # the sync point's barrier: held
    assert pb >> ev.Release() << cmd.Send(L1, raw("INCR", "n"))
    assert pb >> ev.Hold() >> ev.Requests(1, [request("INCR", "n")])
    assert pb >> ev.Release() << cmd.Send(L1, raw("INCR", "n"))


def test_the_follower_gets_what_the_leader_answered_in_the_leaders_order():
    engine = new_engine()
    pb = Playbook(engine)
    started(engine, pb)
    assert pb >> attach(1, L1, session=(OWN,)) >> attach(2, L2, session=(OWN,))
    assert pb >> ev.Release()
    own1, own2 = Placeholder("own 1"), Placeholder("own 2")
    live(pb, {1: own1, 2: own2})
    # Both follower connections get their session first.
    assert pb >> ev.Connected(own1) << cmd.Send(own1, OWN.raw)
    assert pb >> ev.Connected(own2) << cmd.Send(own2, OWN.raw)
    assert pb >> ev.Data(own1, b"+OK\r\n") >> ev.Data(own2, b"+OK\r\n")
    assert pb >> ev.Requests(1, [request("INCR", "n")]) << cmd.Send(L1, raw("INCR", "n"))
    assert pb >> ev.Requests(2, [request("INCR", "n")])
    assert (pb >> ev.Data(L1, b":1\r\n") << cmd.Deliver(1, b":1\r\n")
            << cmd.Send(own1, raw("INCR", "n")) << cmd.Send(L2, raw("INCR", "n")))
    # Client 2's INCR reaches the follower only once client 1's was answered there.
    assert pb >> ev.Data(L2, b":2\r\n") << cmd.Deliver(2, b":2\r\n")
    assert pb >> ev.Data(own1, b":1\r\n") << cmd.Send(own2, raw("INCR", "n"))
    assert pb >> ev.Data(own2, b":2\r\n")
    assert engine.status()["compared"] == 2


def test_an_unexpected_divergence_fails_the_update_once_and_is_reported():
    engine = new_engine()
    pb = Playbook(engine)
    started(engine, pb)
    assert pb >> attach(1, L1, session=(OWN,)) >> ev.Release()
    own = Placeholder("own")
    live(pb, {1: own})
    assert pb >> ev.Connected(own) << cmd.Send(own, OWN.raw)
    assert pb >> ev.Data(own, b"+OK\r\n")
    assert pb >> ev.Requests(1, [request("GET", "k")]) << cmd.Send(L1, raw("GET", "k"))
    assert (pb >> ev.Data(L1, b"$1\r\nx\r\n") << cmd.Deliver(1, b"$1\r\nx\r\n")
            << cmd.Send(own, raw("GET", "k")))
    diverged = Placeholder("diverged")
    failed = Placeholder("failed")
    assert pb >> ev.Data(own, b"$1\r\ny\r\n") << diverged << failed
    assert isinstance(diverged.value, cmd.Diverged) and not diverged.value.verdict.expected
    assert isinstance(failed.value, cmd.Failed) and "GET" in failed.value.reason
    assert pb >> ev.Requests(1, [request("GET", "k")]) << cmd.Send(L1, raw("GET", "k"))
    assert pb >> ev.Data(L1, b"$1\r\nx\r\n") << cmd.Deliver(1, b"$1\r\nx\r\n") \
        << cmd.Send(own, raw("GET", "k"))
    assert pb >> ev.Data(own, b"$1\r\ny\r\n") << Placeholder("diverged again")  # failed once


def test_a_client_that_leaves_still_has_what_it_sent_run_on_the_follower():
    engine = new_engine()
    pb = Playbook(engine)
    started(engine, pb)
    assert pb >> attach(1, L1, session=(OWN,)) >> ev.Release()
    assert pb >> ev.Requests(1, [request("SET", "k", "v")]) << cmd.Send(L1, raw("SET", "k", "v"))
    assert pb >> ev.ClientClosed(1)  # the leader connection stays: the SET may run there
    assert pb >> ev.Data(L1, b"+OK\r\n") << cmd.Close(L1)
    own = Placeholder("own")
    follower = Placeholder("follower shared")
    assert pb >> ev.StartFollower() << cmd.Open(follower, FOLLOWER, None) \
        << cmd.Open(own, FOLLOWER, 1)
    assert pb >> ev.Connected(own) << cmd.Send(own, OWN.raw) \
        << cmd.Send(own, raw("SET", "k", "v"))
    assert pb >> ev.Data(own, b"+OK\r\n+OK\r\n") << cmd.Close(own)
    assert engine.status()["compared"] == 1


def test_codec_has_the_hooks_the_engine_calls():
    assert CODEC.shared_connection
