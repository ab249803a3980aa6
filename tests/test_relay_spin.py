"""Loop._spin: a lingering loop polls without sleeping for a short while (SPIN) before it waits
in epoll_wait, and stops spinning for longer and longer after spins that found nothing. A
clock that moves 10 us per reading stands in for time, so what is counted is polls, not
microseconds."""

from __future__ import annotations

import socket

from twinproxy.relay.loop import SPIN_BACKOFF, Loop


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 10e-6
        return self.now


def test_a_spin_returns_what_becomes_ready_while_it_polls() -> None:
    loop = Loop()
    ours, peer = socket.socketpair()
    try:
        loop._ep.register(ours.fileno(), 1)  # EPOLLIN
        polls = []

        def poll(timeout: float, most: int) -> list[tuple[int, int]]:
            assert timeout == 0  # (a spin never sleeps)
            polls.append(timeout)
            if len(polls) == 2:
                peer.send(b"x")
            return loop._ep.poll(timeout, most)

        assert loop._spin(poll, Clock()) == [(ours.fileno(), 1)]
        assert len(polls) == 2
        assert loop._spin_skip == 0  # (it paid: the next gap spins too)
    finally:
        loop._ep.close()
        ours.close()
        peer.close()


def test_spins_that_find_nothing_are_tried_again_less_and_less_often() -> None:
    loop = Loop()
    try:
        polls = []

        def nothing(timeout: float, most: int) -> list[tuple[int, int]]:
            polls.append(timeout)
            return []

        made = []  # polls per gap
        for _ in range(40):
            before = len(polls)
            assert loop._spin(nothing, Clock()) == []
            made.append(len(polls) - before)
        # after each spin that found nothing, 1, 3, 7, 15 ... gaps without one; each spin
        # polls for as long as SPIN, the same number of times on the same clock
        assert [i for i, n in enumerate(made) if n] == [0, 2, 6, 14, 30]
        assert len({n for n in made if n}) == 1
        for _ in range(200):
            loop._spin(nothing, Clock())
        assert loop._spin_backoff == SPIN_BACKOFF  # (at most that many gaps without a spin)

        ready = [(7, 1)]
        while not loop._spin(lambda timeout, most: ready, Clock()):
            pass  # (the gaps it skips)
        assert loop._spin_skip == loop._spin_backoff == 0  # one that pays: spinning again
    finally:
        loop._ep.close()
