"""The engine's modes, and the control events that move it from one to another.

Rules this file keeps:

* In every mode but ``ended``, clients' requests are admitted as they arrive: their place in the
  order is fixed then, whether or not they may go yet.
* Requests go to the leader only in a mode that ``sends``. A barrier (``Hold``) stops that;
  ``Release`` resumes it.
* The follower is fed only once it is ``live`` (``StartFollower``, after the state sync); before,
  what it is owed waits in the backlog.
* The sync point is ``pinned`` by the first ``Release``: from then on, what the leader answers is
  owed to the follower. Before it, a blocking request answered at the first barrier ran before
  the snapshot, so its effect is in the follower's state already.
* ``Ahead``, before the sync point's barrier: requests go to the leader alone and are owed to
  nobody (what the leader answers before the barrier's ``Hold`` is in the snapshot), so the
  clients are handed to the engine while they flow and the barrier holds them only for the
  state sync's pin. The first ``Release`` after it pins the sync point as above.
* The roles swap (``Reverse``) and the follower takes over from a dead leader (``TakeOver``) only
  at a barrier with the follower live, so that nothing is in flight on the leader that the
  follower has not answered too.
* ``End`` is allowed from every mode and leads nowhere else.

Anything not in :data:`TRANSITIONS` is a bug of the caller (the lifecycle), and raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinproxy.engine.events import (
    Ahead,
    End,
    Event,
    Hold,
    Release,
    Reverse,
    StartFollower,
    TakeOver,
)


@dataclass(frozen=True, slots=True)
class Mode:
    """What the engine does in a mode."""

    name: str
    sends: bool  # requests go to the leader in their turn
    live: bool  # the follower's connections are open and fed
    pinned: bool  # what the leader answers is owed to the follower
    took_over: bool = False  # the leader is gone: the follower answers clients

    def __repr__(self) -> str:
        return f"<Mode {self.name}>"


SYNC_BARRIER = Mode("sync-barrier", sends=False, live=False, pinned=False)
SYNC_AHEAD = Mode("sync-ahead", sends=True, live=False, pinned=False)
SYNCING = Mode("syncing", sends=True, live=False, pinned=True)
SYNC_HELD = Mode("sync-held", sends=False, live=False, pinned=True)
LIVE = Mode("mve", sends=True, live=True, pinned=True)
BARRIER = Mode("barrier", sends=False, live=True, pinned=True)
TAKEN_OVER = Mode("taken-over", sends=False, live=True, pinned=True, took_over=True)
ENDED = Mode("ended", sends=False, live=False, pinned=True)

MODES = (SYNC_BARRIER, SYNC_AHEAD, SYNCING, SYNC_HELD, LIVE, BARRIER, TAKEN_OVER, ENDED)
CONTROL: tuple[type[Event], ...] = (Ahead, Hold, Release, StartFollower, TakeOver, Reverse, End)

TRANSITIONS: dict[tuple[Mode, type[Event]], Mode] = {
    (SYNC_BARRIER, Hold): SYNC_BARRIER,
    (SYNC_BARRIER, Release): SYNCING,
    (SYNC_BARRIER, Ahead): SYNC_AHEAD,
    (SYNC_AHEAD, Hold): SYNC_BARRIER,
    (SYNCING, Hold): SYNC_HELD,
    (SYNCING, StartFollower): LIVE,
    (SYNC_HELD, Hold): SYNC_HELD,
    (SYNC_HELD, Release): SYNCING,
    (LIVE, Hold): BARRIER,
    (BARRIER, Hold): BARRIER,
    (BARRIER, Release): LIVE,
    (BARRIER, Reverse): BARRIER,
    (BARRIER, TakeOver): TAKEN_OVER,
    (TAKEN_OVER, Hold): TAKEN_OVER,
    **{(mode, End): ENDED for mode in MODES if mode is not ENDED},
}


class ModeError(Exception):
    """A control event that is not allowed in the engine's mode (a bug of the caller)."""


def next_mode(mode: Mode, event: Event) -> Mode:
    """The mode ``event`` leads to from ``mode``.

    Raises:
        ModeError: the table has no such transition.
    """
    try:
        return TRANSITIONS[mode, type(event)]
    except KeyError:
        raise ModeError(f"{type(event).__name__} is not allowed in mode {mode.name}") from None
