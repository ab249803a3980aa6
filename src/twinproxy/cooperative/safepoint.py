"""The safe point: where the service's own loop lets an update fork it.

Only the service knows where no request is half done; for a single-threaded server that is
between two requests. Its loop calls :meth:`SafePoint.reached` there, often (every request, and
when idle at least every few tens of milliseconds): when no update waits the call is one
attribute read; when one does, the fork happens inside the call, so that the state the child
inherits is exactly the state after the last request the service completed, and no new request
is taken until the fork is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SafePoint"]

T = TypeVar("T")


class SafePoint(Generic[T]):
    """A handover from the endpoint's thread (which asks) to the serving loop (which acts)."""

    def __init__(self, act: Callable[[T], None]):
        self._act = act
        self._waiting: T | None = None
        self._lock = threading.Lock()

    def reached(self) -> None:
        """Call where the service is at rest (no request half done, none taken yet): runs a
        waiting update's fork here, in the calling thread, and returns once it is done."""
        if self._waiting is None:
            return
        with self._lock:
            waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._act(waiting)

    def ask(self, what: T) -> None:
        """Have ``what`` acted on at the next safe point (from another thread)."""
        with self._lock:
            self._waiting = what

    def withdraw(self, what: T) -> bool:
        """Take back ``what`` if no safe point took it yet; False if one already did."""
        with self._lock:
            if self._waiting is what:
                self._waiting = None
                return True
            return False
