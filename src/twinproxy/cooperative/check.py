"""The time-traveling check: a state transform must be undone by its backward transform.

Before the new version serves, its state is transformed forward (old format to new) and the
result transformed back; what comes back must equal the original state (Giuffrida et al., "Back
to the Future: fault-tolerant live update with time-traveling state transfer", LISA 2013). A
transform that loses or garbles data rarely has a backward transform that puts the data back, so
the check catches most transform bugs before a single client sees the new version, at the price
of one more transform in the child (the parent serves meanwhile).

The check runs in the forked child only: a mismatch or an exception aborts the update there, and
the parent (the old version, still serving) is told why in the child's report.

Transforms must not change their input: the check compares against the original state, so a
forward transform that modified it in place could hide its own loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CheckFailed", "first_differences", "time_travel"]

SHOWN_DIFFERENCES = 5
"""How many differing keys a failed check names (the first ones, in the state's own order)."""


class CheckFailed(Exception):
    """The state did not survive forward-then-backward; the message names what differed."""


def first_differences(before: Any, after: Any,
                      limit: int = SHOWN_DIFFERENCES) -> list[tuple[Any, Any, Any]]:
    """The first ``limit`` (key, value before, value after) that differ between two mappings;
    a missing value is shown as ``<missing>``. Two values that are not both mappings differ as a
    whole, under the key ``<state>``."""
    if not (isinstance(before, Mapping) and isinstance(after, Mapping)):
        return [] if before == after else [("<state>", before, after)]
    found: list[tuple[Any, Any, Any]] = []
    for key, value in before.items():
        if key not in after:
            found.append((key, value, "<missing>"))
        elif after[key] != value:
            found.append((key, value, after[key]))
        if len(found) >= limit:
            return found
    for key, value in after.items():
        if key not in before:
            found.append((key, "<missing>", value))
            if len(found) >= limit:
                break
    return found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def time_travel(state: Any, forward: Callable[[Any], Any],
                backward: Callable[[Any], Any]) -> Any:
    """Transform ``state`` forward, check that ``backward`` gives it back, return the new state.

    Raises:
        CheckFailed: backward(forward(state)) differs from ``state``; the message names the
            first keys that differ with their values before and after. An exception in a
            transform propagates as it is (the caller reports it).
    """
    new = forward(state)
    back = backward(new)
    if back == state:
        return new
    differences = first_differences(state, back)
    shown = "; ".join(f"{_short(k)}: {_short(b)} -> {_short(a)}" for k, b, a in differences)
    sizes = ""
    if isinstance(state, Mapping) and isinstance(back, Mapping):
        sizes = f" ({len(state)} keys before, {len(back)} after the round trip)"
    raise CheckFailed(f"time-traveling check failed: backward(forward(state)) differs from the "
                      f"state{sizes}; first differences: {shown}")
