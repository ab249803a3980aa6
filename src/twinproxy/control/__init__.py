"""The admin API: HTTP/1.1 (h11) with JSON bodies, on a unix socket or a TCP address.

This face hands on every name the rest of twinproxy imports from ``twinproxy.control``. Inside,
each module imports only those listed after it:

- :mod:`~twinproxy.control.serve`: :func:`serve_control`, the listeners (a unix socket made
  0600, or TCP) and who may reach them (the token, loopback addresses).
- :mod:`~twinproxy.control.endpoints`: what each path does with the service, and its statuses.
- :mod:`~twinproxy.control.http_server`: the connections: h11, :class:`Limits`, the token check.
- :mod:`~twinproxy.control.controlled`: what the admin API drives (:class:`Controlled`) and how
  it says no (:class:`Refused`), declared here so that the package imports nothing of the
  service.
"""

from twinproxy.control.controlled import Controlled, Refused, Transition
from twinproxy.control.http_server import DEFAULT_LIMITS, Limits
from twinproxy.control.serve import (
    ControlError,
    control_token,
    insecure_control,
    is_loopback,
    serve_control,
)

__all__ = [
    "DEFAULT_LIMITS",
    "ControlError",
    "Controlled",
    "Limits",
    "Refused",
    "Transition",
    "control_token",
    "insecure_control",
    "is_loopback",
    "serve_control",
]
