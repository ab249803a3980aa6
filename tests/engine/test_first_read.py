"""A new client's first read during an update: its first request alone on its own connection,
the rest held until that request is answered, then a run on the shared connection if the reply
was small (:mod:`twinproxy.engine.first_read`). Driven with the model servers of
:mod:`tests.engine.harness`."""

from __future__ import annotations

from tests.engine.harness import raw, request
from tests.engine.test_paths import Recording, ask, started
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.engine.first_read import HOLD_LIMIT


def new_client(world: Recording, client: int) -> None:
    world.attach(client, new_id())


def first_read(world: Recording, client: int, *requests: tuple[str, ...]) -> None:
    """A read the relay would send as a run: all ordinary, not all of small replies."""
    assert world.engine.runs_allowed(client, True, False)
    data = b"".join(raw(*words) for words in requests)
    world.feed(ev.Run(client, data, len(requests), False, False))
    world.feed(ev.Flush())


def to_version(world: Recording, since: int, role: int = LEADER) -> list[tuple[str, bytes]]:
    """What went to the leader (or the follower) since ``since`` sends: (path, bytes)."""
    shared = world.engine.sides[role].shared.conn.id
    return [("shared" if conn == shared else "own", data) for conn, data in world.sent[since:]
            if world.role.get(conn) == role]


def test_the_rest_of_a_new_clients_first_read_waits_for_its_first_reply_then_shares():
    world = started(shared_after=1)
    assert ask(world, "SET", "k", "1") == "shared"  # a status whatever the data
    new_client(world, 2)
    at = len(world.sent)
    first_read(world, 2, ("GET", "k"), ("GET", "k"), ("SET", "k", "2"))
    world.feed(ev.Requests(2, [request("SET", "k", "3")]))  # its next read, while held
    world.feed(ev.Flush())
    assert to_version(world, at) == [("own", raw("GET", "k"))]
    world.run(LEADER, world.leader_conns[2])  # the first GET's reply: small
    world.feed(ev.Flush())
    after = to_version(world, at)[1:]
    assert {path for path, _ in after} == {"shared"}
    assert b"".join(data for _, data in after) == \
        raw("GET", "k") + raw("SET", "k", "2") + raw("SET", "k", "3")
    world.settle()
    assert bytes(world.delivered[2]) == b"$1\r\n1\r\n$1\r\n1\r\n+OK\r\n+OK\r\n"
    assert world.servers[0].data == world.servers[1].data == {b"k": b"3"}
    assert world.failures() == [] and world.divergences() == []


def test_the_followers_copy_of_a_first_request_with_a_small_reply_goes_on_the_shared_connection():
    # The leader's copy went alone only until its reply showed it small: the follower gets it
    # on the shared connection (no send, read and framing of its own). A large one stays on
    # the client's own follower connection, as it did on the leader's.
    world = started(shared_after=1)
    assert ask(world, "SET", "big", "x" * 100_000) == "shared"
    for key, path in (("k", "shared"), ("big", "own")):
        new_client(world, 2)
        at = len(world.sent)
        world.feed(ev.Requests(2, [request("GET", key)]))
        world.feed(ev.Flush())
        world.settle()
        assert to_version(world, at) == [("own", raw("GET", key))]
        assert to_version(world, at, FOLLOWER) == [(path, raw("GET", key))]
        world.feed(ev.ClientClosed(2))
        world.settle()
    assert world.failures() == [] and world.divergences() == []
    assert world.engine.status()["backlog"] == 0


def test_after_a_large_first_reply_the_rest_goes_on_its_own_and_no_later_read_waits():
    world = started(shared_after=1)
    assert ask(world, "SET", "big", "x" * 100_000) == "shared"
    new_client(world, 2)
    first_read(world, 2, ("GET", "big"), ("GET", "big"))
    world.settle()
    at = len(world.sent)
    first_read(world, 2, ("GET", "k"), ("GET", "big"))  # (the first read was the one split)
    assert b"".join(data for path, data in to_version(world, at) if path == "own") == \
        raw("GET", "k") + raw("GET", "big")
    world.settle()
    big = b"$100000\r\n" + b"x" * 100_000 + b"\r\n"
    assert bytes(world.delivered[2]) == big + big + b"$-1\r\n" + big
    assert world.failures() == [] and world.divergences() == []


def test_what_a_client_sent_before_it_closed_runs_on_both_versions_though_it_was_held():
    world = started(shared_after=1)
    new_client(world, 2)
    first_read(world, 2, ("GET", "k"), ("SET", "k", "9"))
    world.feed(ev.ClientClosed(2))
    world.settle()
    assert world.servers[0].data == world.servers[1].data == {b"k": b"9"}
    assert world.failures() == [] and world.divergences() == []


def test_held_input_past_the_limit_goes_on_at_once():
    world = started(shared_after=1)
    new_client(world, 2)
    at = len(world.sent)
    first_read(world, 2, ("GET", "k"), ("GET", "k"))
    value = "v" * HOLD_LIMIT
    world.feed(ev.Requests(2, [request("SET", "k", value)]))
    world.feed(ev.Flush())
    sent = b"".join(data for _, data in to_version(world, at))
    assert raw("GET", "k") * 2 + raw("SET", "k", value) in sent
    world.settle()
    assert bytes(world.delivered[2]) == b"$-1\r\n$-1\r\n+OK\r\n"
    assert world.servers[0].data == world.servers[1].data == {b"k": value.encode()}


def test_a_new_clients_first_read_that_is_a_transaction_stays_whole_on_its_own_connection():
    """A transaction in a new client's first read, with a reply that may be large (GET): its
    MULTI goes alone, and the rest follows it on the client's own connection (a transaction
    opened there ends there), never on the shared one."""
    world = started(shared_after=1)
    assert ask(world, "SET", "k", "1") == "shared"
    new_client(world, 2)
    at = len(world.sent)
    first_read(world, 2, ("MULTI",), ("GET", "k"), ("INCR", "n"), ("EXEC",))
    world.settle()
    assert {path for path, _ in to_version(world, at)} == {"own"}
    assert b"".join(data for _, data in to_version(world, at)) == \
        raw("MULTI") + raw("GET", "k") + raw("INCR", "n") + raw("EXEC")
    assert bytes(world.delivered[2]) == \
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\n1\r\n:1\r\n"
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data
