"""What the pieces started by a running service need of it, declared apart from it.

:class:`~.service.Updatable` starts the update endpoint (:mod:`.endpoint`) and, at an update,
the forked child (:mod:`.child`); both read and change the service's running state. They take
it as a :class:`Running`, declared here, so that neither imports the module that starts them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twinproxy.cooperative.safepoint import SafePoint

if TYPE_CHECKING:
    from twinproxy.cooperative.attempt import Attempt

Entry = Callable[[Any, socket.socket, SafePoint], None]
"""A version's serving loop: ``entry(state, listener, safe_point)``. It accepts clients on
``listener``, serves them from ``state`` (which it may change in place) and calls
``safe_point.reached()`` between requests; it returns only when the service stops."""


@dataclass(frozen=True)
class Transform:
    """How the state of one version becomes another's, and back (for the check)."""

    forward: Callable[[Any], Any]
    backward: Callable[[Any], Any]


class Running(Protocol):
    """A service serving one version (:class:`~.service.Updatable` is the implementation)."""

    versions: Mapping[str, Entry]
    transforms: Mapping[tuple[str, str], Transform]
    current: str | None
    state: Any
    data_host: str
    attempt: Attempt | None
    lock: threading.Lock
    safe_point: SafePoint[Attempt]

    def transform_for(self, to: str) -> Transform:
        """The transform from the running version to ``to`` (LookupError: none)."""
        ...

    def become(self, version: str, state: Any, listener: socket.socket, *,
               takes_over_endpoint: bool) -> None:
        """Run ``version`` on ``state`` from ``listener``; returns when its entry point does."""
        ...
