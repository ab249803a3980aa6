"""What a service author writes against: versions, transforms, and one call that serves.

A service registers each version's entry point (its serving loop) and the transforms between
versions, then calls :meth:`Updatable.serve`. The library runs the update endpoint
(``docs/update-endpoint.md``) in a thread beside the loop; the loop calls the
:class:`~.safepoint.SafePoint` it is given where it is at rest, and the update happens there:
fork, the child transforms and checks the state (:mod:`.check`), listens on a new port,
reports, and runs the new version's entry point on the new state; the parent goes on serving
as if nothing happened. See ``docs/cooperative.md`` for a walk-through.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from twinproxy.cooperative.attempt import Attempt
from twinproxy.cooperative.child import run_child
from twinproxy.cooperative.endpoint import Endpoint
from twinproxy.cooperative.running import Entry, Transform
from twinproxy.cooperative.safepoint import SafePoint

__all__ = ["Entry", "Transform", "Updatable"]

class Updatable:
    """A service that twinproxy can update cooperatively.

    Example::

        service = Updatable()
        service.version("v1", serve_v1)
        service.version("v2", serve_v2)
        service.transform("v1", "v2", forward=to_v2, backward=to_v1)
        service.serve("v1", state={}, listen=("127.0.0.1", 7379),
                      endpoint=("127.0.0.1", 7380))
    """

    def __init__(self) -> None:
        self.versions: dict[str, Entry] = {}
        self.transforms: dict[tuple[str, str], Transform] = {}
        self.current: str | None = None
        self.state: Any = None
        self.data_host = "127.0.0.1"
        self.endpoint_address: tuple[str, int] | None = None
        self.attempt: Attempt | None = None
        self.lock = threading.Lock()
        self.safe_point: SafePoint[Attempt] = SafePoint(self._fork)

    # ---- registration ---------------------------------------------------------------------------

    def version(self, name: str, entry: Entry) -> None:
        """Register version ``name`` (as the proxy's config names it) and its serving loop."""
        self.versions[name] = entry

    def transform(self, old: str, new: str, *, forward: Callable[[Any], Any],
                  backward: Callable[[Any], Any]) -> None:
        """Register how ``old``'s state becomes ``new``'s (``forward``) and back
        (``backward``). Neither may change its argument: the check compares with it."""
        self.transforms[old, new] = Transform(forward, backward)

    def transform_for(self, to: str) -> Transform:
        """The transform from the running version to ``to``.

        Raises:
            LookupError: none is registered.
        """
        try:
            return self.transforms[self.current, to]
        except KeyError:
            raise LookupError(f"no state transform from {self.current} to {to}") from None

    # ---- running ------------------------------------------------------------------------

    def serve(self, version: str, state: Any, listen: tuple[str, int] | socket.socket,
              endpoint: tuple[str, int]) -> None:
        """Serve ``version`` on ``listen`` from ``state``, with the update endpoint on
        ``endpoint`` (an address only the proxy reaches); returns when the entry point does.

        Raises:
            OSError: ``listen`` or ``endpoint`` cannot be bound.
        """
        listener = listen if isinstance(listen, socket.socket) else socket.create_server(listen)
        self.data_host = listener.getsockname()[0]
        self.endpoint_address = endpoint
        self.become(version, state, listener, takes_over_endpoint=False)

    def become(self, version: str, state: Any, listener: socket.socket, *,
               takes_over_endpoint: bool) -> None:
        """Run ``version`` on ``state``: the endpoint in a thread, the entry point here.

        ``takes_over_endpoint``: a new version forked by an update, whose parent still holds
        the endpoint's address: it binds it once the parent has let go of it (the proxy ends
        the parent after the cutover), so that the next update finds it there.
        """
        if version not in self.versions:
            raise LookupError(f"no version {version!r}")
        self.current, self.state, self.attempt = version, state, None
        # New ones in a child: the parent's endpoint thread may have held these at the fork,
        # and that thread does not exist here to let them go.
        self.lock = threading.Lock()
        self.safe_point = SafePoint(self._fork)
        assert self.endpoint_address is not None
        Endpoint(self, self.endpoint_address).start(retry=takes_over_endpoint)
        self.versions[version](state, listener, self.safe_point)

    def _fork(self, attempt: Attempt) -> None:
        """At the safe point, in the serving loop: fork; the child never comes back."""
        try:
            read, write = os.pipe()
        except OSError as exc:
            attempt.fork_failed(str(exc))
            return
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(read)
            os.close(write)
            attempt.fork_failed(str(exc))
            return
        if pid == 0:
            os.close(read)
            run_child(self, attempt.to, write)  # does not return
        os.close(write)
        attempt.forked_as(pid, read)
