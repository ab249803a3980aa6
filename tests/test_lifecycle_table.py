"""The update's transition table keeps the rules its module states (no server needed)."""

from __future__ import annotations

from twinproxy.lifecycle import ENDING, SHOWN, TRANSITIONS

STATES = {state for state, _ in TRANSITIONS} | set(TRANSITIONS.values())
SHOWN_STATES = {"syncing", "mve", "cutover", "rollback", "single"}  # what status may say


def test_every_state_has_a_way_to_single():
    reaches = {"single"}
    changed = True
    while changed:
        changed = False
        for (state, _), target in TRANSITIONS.items():
            if target in reaches and state not in reaches:
                reaches.add(state)
                changed = True
    assert reaches == STATES


def test_the_states_that_end_an_update_only_end():
    for (state, event), target in TRANSITIONS.items():
        if state in ENDING:
            assert (event, target) == ("done", "single"), (state, event, target)


def test_every_failure_before_the_cutover_rolls_back_and_an_operator_can_always_act():
    for state in ("syncing", "mve", "cutover"):
        assert TRANSITIONS[state, "failed"] == "rollback"
        assert TRANSITIONS[state, "rollback"] == "rollback"
    assert TRANSITIONS["following", "rollback"] == "swap-back"
    assert TRANSITIONS["following", "promote"] == "stop-following"


def test_status_shows_only_the_states_operators_know():
    assert {SHOWN.get(s, s) for s in STATES} == SHOWN_STATES
