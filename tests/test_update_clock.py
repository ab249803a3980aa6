"""The engine's clock during an update (relay/driver.py): the engine reads no clock and no timer
ticks it. The loop's batches give it the time as they start, and each event of the lifecycle's
comes right after the time it happens at, however long the clients have been quiet (a blocked
request handed over at a cutover keeps only what is left of its timeout)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from twinproxy.engine import events as ev
from twinproxy.relay.driver import UpdateDriver


class Recorder:
    """Stands in for the engine: keeps what it is handed and asks for nothing."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def handle(self, event: ev.Event) -> list:
        self.events.append(event)
        return []


def _driver(engine: Recorder) -> UpdateDriver:
    relay = SimpleNamespace(by_id={}, send=lambda side, data: None,
                            mirror=SimpleNamespace(reverse=lambda: None))
    listener = SimpleNamespace(engine_failed=print, diverged=print, leader_trouble=print)
    return UpdateDriver(relay, engine, None, None, listener)  # type: ignore[arg-type]


def test_an_event_of_the_lifecycle_comes_after_the_time_it_happens_at() -> None:
    engine = Recorder()
    driver = _driver(engine)
    driver.tick(time.monotonic() - 5.0)  # the loop's last batch: no client sent since
    before, wall = time.monotonic(), time.time()
    driver.control(ev.Hold())
    after = time.monotonic()
    tick, hold = engine.events[-2:]
    assert type(hold) is ev.Hold
    assert type(tick) is ev.Tick and before <= tick.now <= after
    assert wall <= tick.wall <= time.time()


def test_the_swap_of_roles_comes_after_the_time_it_happens_at() -> None:
    """The cutover's swap hands blocked requests over with their time left (Engine.time_left):
    the engine must have the time of the swap, not of the last request the clients sent."""
    engine = Recorder()
    driver = _driver(engine)
    driver.tick(time.monotonic() - 5.0)
    before = time.monotonic()
    driver.reverse(None)  # type: ignore[arg-type]
    tick, reverse = engine.events[-2:]
    assert type(reverse) is ev.Reverse
    assert type(tick) is ev.Tick and tick.now >= before


def test_the_loop_gives_the_time_at_most_once_a_millisecond() -> None:
    """The loop ticks as each batch starts, thousands of times a second under load: one Tick a
    millisecond is enough for what the engine times."""
    engine = Recorder()
    driver = _driver(engine)
    start = time.monotonic()
    for i in range(10):
        driver.tick(start + i * 0.0001)
    driver.tick(start + 0.0011)
    assert [e.now for e in engine.events] == [start, start + 0.0011]
