"""A side's runs held behind ordered own-connection requests (engine/sides.py): a run goes
once every ordered request placed before it on that side is answered, and not before."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from twinproxy.engine import FOLLOWER
from twinproxy.engine.records import Client, Exchange
from twinproxy.engine.sides import Side
from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis import CODEC

CLIENTS = 3

# Steps: ("own", client) places an ordered request on that client's own connection; ("run",
# client) places a run; ("answer", k) answers the k-th still unanswered ordered request (modulo).
steps = st.lists(st.one_of(st.tuples(st.just("own"), st.integers(0, CLIENTS - 1)),
                           st.tuples(st.just("run"), st.integers(0, CLIENTS - 1)),
                           st.tuples(st.just("answer"), st.integers(0, 50))),
                 max_size=60)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_a_held_run_goes_exactly_when_the_ordered_requests_before_it_are_answered(
        script: list[tuple[str, int]]) -> None:
    side = Side(FOLLOWER, "new")
    clients = [Client(i, f"c{i}", CODEC.order_state(None)) for i in range(CLIENTS)]
    owns: list[Exchange] = []  # ordered requests in the order placed
    answered: set[int] = set()  # their indexes
    runs: list[tuple[Exchange, int]] = []  # each run and how many ordered ones came before it
    for kind, n in script:
        if kind == "own":
            exchange = Exchange(clients[n], Request(b"", "SET", [b"k"]))
            side.admit(exchange, (b"k%d" % len(owns),), True, False)
            owns.append(exchange)
        elif kind == "run":
            run = Exchange(clients[n], Request(b"", "GET", [b"k"]))
            if not side.place_run(run):
                side.hold_run(run)
            runs.append((run, len(owns)))
        else:
            waiting = [i for i in range(len(owns)) if i not in answered]
            if not waiting:
                continue
            i = waiting[n % len(waiting)]
            before = {id(run) for run, _ in runs if run.legs[FOLLOWER].ready}
            side.answered(owns[i])
            answered.add(i)
            woken = side.runs_now_ready()
            now = {run.client.id for run, _ in runs
                   if run.legs[FOLLOWER].ready and id(run) not in before}
            assert {client.id for client in woken} == now  # those with a run that may go now
        for run, placed_after in runs:
            may_go = all(i in answered for i in range(placed_after))
            assert run.legs[FOLLOWER].ready == may_go, (run.client.id, placed_after, answered)
