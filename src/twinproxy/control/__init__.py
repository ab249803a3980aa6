"""The admin API: HTTP/1.1 (h11) with JSON bodies, on a unix socket or a TCP address.

This face hands on every name the rest of twinproxy imports from ``twinproxy.control``.
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
