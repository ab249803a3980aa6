"""The relay: the one dispatch loop that owns every socket, SINGLE mode's whole path, and the
driver that carries out an update's engine on it.

This is the only part of the data path that imports trio, socket, select or time; the engine
(:mod:`twinproxy.engine`) and the protocols (:mod:`twinproxy.protocols`) are sans-IO.
"""

from twinproxy.relay.relay import Relay

__all__ = ["Relay"]
