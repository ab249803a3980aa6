"""State sync ``none``: the new version starts empty.

For a stateless service, or one whose state may be lost (a cache that refills). Every step of
:class:`~twinproxy.statesync.base.StateSync` already does nothing; from the sync point on the
engine replays what clients send, as for every method.
"""

from __future__ import annotations

from twinproxy.statesync.base import StateSync

__all__ = ["METHOD", "NoSync"]


class NoSync(StateSync):
    """Nothing to copy: the new version's state is what the requests after the sync point
    make of an empty one."""


METHOD = NoSync
