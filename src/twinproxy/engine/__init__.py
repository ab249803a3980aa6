"""The MVE engine, sans-IO: events in (:mod:`.events`), commands out (:mod:`.commands`).

It imports neither trio, socket, select nor time: the relay (:mod:`twinproxy.relay`) carries
out its commands, the update's lifecycle (:mod:`twinproxy.lifecycle`) decides its control
events, and its tests drive it with scripts.
"""

from twinproxy.engine.commands import FOLLOWER, LEADER
from twinproxy.engine.conditions import CONDITIONS
from twinproxy.engine.engine import Engine
from twinproxy.engine.modes import ModeError

__all__ = ["CONDITIONS", "FOLLOWER", "LEADER", "Engine", "ModeError"]
