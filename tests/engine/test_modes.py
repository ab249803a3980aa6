"""The engine's modes: every control event tried in every mode, as h2 tests its state machine.

A control event the table allows moves the engine to the mode the table says; any other raises
:class:`~twinproxy.engine.ModeError` and leaves the engine as it was.
"""

from __future__ import annotations

import pytest

from tests.engine.harness import NAMES, new_engine
from twinproxy.compare import Comparator, Rules
from twinproxy.engine import ModeError
from twinproxy.engine import events as ev
from twinproxy.engine.modes import CONTROL, MODES, TRANSITIONS
from twinproxy.protocols.redis import CODEC

PATHS = {  # control events that lead from the first mode to each mode
    "sync-barrier": [],
    "sync-ahead": [ev.Ahead()],
    "syncing": [ev.Release()],
    "sync-held": [ev.Release(), ev.Hold()],
    "mve": [ev.Release(), ev.StartFollower()],
    "barrier": [ev.Release(), ev.StartFollower(), ev.Hold()],
    "taken-over": [ev.Release(), ev.StartFollower(), ev.Hold(), ev.TakeOver()],
    "ended": [ev.End(False)],
}


def control(kind: type[ev.Event]) -> ev.Event:
    if kind is ev.Reverse:
        return ev.Reverse(Comparator(CODEC, Rules((), *reversed(NAMES))))
    if kind is ev.End:
        return ev.End(False)
    return kind()


def test_every_mode_is_reachable_and_the_table_names_only_known_modes():
    assert {m.name for m in MODES} == set(PATHS)
    assert {target for target in TRANSITIONS.values()} <= set(MODES)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("kind", CONTROL, ids=lambda k: k.__name__)
def test_a_control_event_moves_the_engine_as_the_table_says(mode, kind):
    engine = new_engine()
    engine.handle(ev.Begin())
    for event in PATHS[mode.name]:
        engine.handle(event)
    assert engine.mode is mode
    target = TRANSITIONS.get((mode, kind))
    if target is None:
        with pytest.raises(ModeError):
            engine.handle(control(kind))
        assert engine.mode is mode
    else:
        engine.handle(control(kind))
        assert engine.mode is target


def test_an_event_that_is_not_the_engines_is_refused():
    engine = new_engine()
    with pytest.raises(TypeError, match="not an engine event"):
        engine.handle(object())  # type: ignore[arg-type]
