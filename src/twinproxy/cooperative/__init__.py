"""Cooperative live update for service authors: register versions and state transforms, serve,
and twinproxy can update the service in place.

The service keeps serving from its own process; at an update the proxy calls its update
endpoint, the service forks at a safe point of its own loop, and the child transforms the state
(checked by transforming it back: :func:`time_travel`), listens on a new port and runs the new
version, which the proxy runs beside the old one (MVE) until it cuts over. Reference and
walk-through: ``docs/cooperative.md``; the wire format: ``docs/update-endpoint.md``.
"""

from twinproxy.cooperative.check import CheckFailed, first_differences, time_travel
from twinproxy.cooperative.running import Entry, Transform
from twinproxy.cooperative.safepoint import SafePoint
from twinproxy.cooperative.service import Updatable

__all__ = ["CheckFailed", "Entry", "SafePoint", "Transform", "Updatable", "first_differences",
           "time_travel"]
