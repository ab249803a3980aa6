"""The sequencer: conflicting requests go in admission order; others go at once; no deadlock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from twinproxy.engine.ordering import Sequencer, Ticket


def conflict(a: Ticket, b: Ticket) -> bool:
    if a.conn == b.conn or not (a.tracked and b.tracked):
        return False
    if a.is_global or b.is_global:
        return a.write or b.write
    return bool(set(a.keys) & set(b.keys)) and (a.write or b.write)


def test_reads_share_writes_wait() -> None:
    seq = Sequencer()
    r1 = Ticket("r1", "a", [b"k"])
    r2 = Ticket("r2", "b", [b"k"])
    w = Ticket("w", "c", [b"k"], write=True)
    r3 = Ticket("r3", "d", [b"k"])
    assert seq.admit(r1) and seq.admit(r2)
    assert not seq.admit(w)
    assert not seq.admit(r3)  # after the waiting write, not beside the earlier reads
    assert seq.done(r1) == []
    assert seq.done(r2) == [w]
    assert seq.done(w) == [r3]


def test_one_connection_pipelines_freely() -> None:
    seq = Sequencer()
    tickets = [Ticket(i, "a", [b"k"], write=True) for i in range(16)]
    assert all(seq.admit(t) for t in tickets)
    other = Ticket("b", "b", [b"k"])
    assert not seq.admit(other)
    for t in tickets[:-1]:
        assert seq.done(t) == []
    assert seq.done(tickets[-1]) == [other]


def test_a_request_behind_a_waiting_one_of_its_connection_waits_too() -> None:
    """The leader's shared connection sends each client's requests as its turn comes: a later
    request there must not go before an earlier one that waits for another connection, and
    so before what that one waits for."""
    seq = Sequencer(unordered="shared")
    blocking = Ticket("BLMOVE l1 l2", "own", [b"l1", b"l2"], write=True)
    first = Ticket("RPUSH l1 (a)", "shared", [b"l1"], write=True)
    second = Ticket("RPUSH l1 (b)", "shared", [b"l1"], write=True)
    assert seq.admit(blocking)
    assert not seq.admit(first)
    assert not seq.admit(second)  # (it went at once: it overtook the BLMOVE's wait)
    assert seq.done(blocking) == [first]
    assert seq.done(first) == [second]
    free = Ticket("RPUSH l1 (c)", "shared", [b"l1"], write=True)
    assert seq.admit(free)  # behind one that does not wait: pipelined
    own = [Ticket(i, "own", [b"l1"], write=True) for i in range(2)]
    assert not seq.admit(own[0])
    assert seq.admit(own[1])  # a connection sent in order: pipelined behind the first


def test_global_write_waits_for_all_and_holds_all() -> None:
    seq = Sequencer()
    a = Ticket("a", "a", [b"x"])
    flush = Ticket("flush", "b", is_global=True, write=True)
    c = Ticket("c", "c", [b"y"])
    free = Ticket("ping", "d")
    assert seq.admit(a)
    assert not seq.admit(flush)
    assert not seq.admit(c)
    assert seq.admit(free)  # no keys, not global: never waits
    assert seq.done(a) == [flush]
    assert seq.done(flush) == [c]


def test_a_quiescing_write_holds_even_untracked_requests() -> None:
    """DEBUG RELOAD on the follower: a PING sent while it loads would get -LOADING there."""
    seq = Sequencer()
    a = Ticket("a", "a", [b"x"])
    before = Ticket("ping before", "d")
    reload = Ticket("reload", "b", quiesce=True)
    assert reload.tracked and reload.write and reload.is_global
    same = Ticket("ping on its connection", "b")
    ping = Ticket("ping", "d")
    c = Ticket("c", "c", [b"y"])
    assert seq.admit(a) and seq.admit(before)
    assert not seq.admit(reload)
    assert seq.admit(same)  # one connection: the server runs it after the reload anyway
    assert not seq.admit(ping)
    assert not seq.admit(c)
    assert seq.done(a) == [reload]
    assert seq.done(reload) == [ping, c]
    assert seq.admit(Ticket("ping after", "d"))


def test_global_read_waits_only_for_writes() -> None:
    seq = Sequencer()
    r = Ticket("get", "a", [b"x"])
    keys = Ticket("keys", "b", is_global=True)
    assert seq.admit(r)
    assert seq.admit(keys)
    w = Ticket("set", "c", [b"z"], write=True)
    assert not seq.admit(w)
    assert seq.done(keys) == [w]


ticket_specs = st.lists(
    st.tuples(
        st.sampled_from("abcd"),  # connection
        st.lists(st.sampled_from([b"k1", b"k2", b"k3"]), max_size=2),
        st.booleans(),  # write
        st.integers(0, 9),  # 0 = global
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ticket_specs, st.randoms(use_true_random=False), st.booleans())
def test_never_overtakes_a_conflict_and_never_deadlocks(specs, rnd, shared) -> None:
    """Modelled as the engine and a server behave: a ticket goes when the sequencer frees it
    *and* every earlier request of its connection has gone; a connection's requests are
    answered in the order they went. With ``shared``, connection ``d`` is the leader's shared
    one: any of its free requests may go first (each client's turn comes when it does)."""
    seq = Sequencer(unordered="d" if shared else None)
    admitted: list[Ticket] = []
    queues: dict[str, list[Ticket]] = {}
    free: set[int] = set()
    running: list[Ticket] = []
    finished: set[int] = set()

    def dispatch(conn: str) -> None:
        queue = queues[conn]
        if shared and conn == "d":  # every free one goes, in any order
            rnd.shuffle(queue)
            queue.sort(key=lambda t: id(t) not in free)
        while queue and id(queue[0]) in free:
            t = queue.pop(0)
            for earlier in admitted[: admitted.index(t)]:
                if conflict(earlier, t):
                    assert id(earlier) in finished, (earlier, t)
            running.append(t)

    pending = list(specs)
    while pending or running:
        if pending and (not running or rnd.random() < 0.5):
            conn, keys, write, g = pending.pop(0)
            t = Ticket(len(admitted), conn, keys, write=write, is_global=(g == 0))
            admitted.append(t)
            queues.setdefault(conn, []).append(t)
            if seq.admit(t):
                free.add(id(t))
            dispatch(conn)
        else:
            conn = rnd.choice(sorted({t.conn for t in running}))
            t = next(t for t in running if t.conn == conn)
            running.remove(t)
            finished.add(id(t))
            for f in seq.done(t):
                free.add(id(f))
                dispatch(f.conn)
    assert len(finished) == len(admitted)
    assert len(seq) == 0
