"""Clients held by an update: getting them ready to be held, what the state sync may do with
them at the sync point, and no garbage collection while they wait.

The lifecycle (:mod:`twinproxy.lifecycle`) holds every client twice in an update, at the sync
point and at the cutover. Before the sync point's barrier, while clients flow, every reply is
framed (:func:`frame_every_reply`) so that the relay knows each client's reply boundary without
a sentinel's round trip, and the clients are handed to the engine then (``ev.Ahead``), not
while they are held. A state sync method sees the held clients only through
:class:`HeldClients` (never the engine's records); :func:`collector_paused` keeps Python's
collector from adding its pauses to theirs.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from twinproxy.statesync import Blocked, SyncPoint

if TYPE_CHECKING:
    from twinproxy.relay import Relay
    from twinproxy.relay.driver import UpdateDriver

__all__ = ["HeldClients", "collector_paused", "frame_every_reply", "frames_only",
           "unframed_answered"]


async def unframed_answered(relay: Relay, timeout: float) -> bool:
    """Wait until the requests that went to the leader with their replies unframed are
    answered (SINGLE mode's fast path: the relay knows them only as bytes), so that a state
    sync that must know every write not answered yet (``SyncMethod.watch``) knows them all
    from here on; a few milliseconds, one round trip of the sentinel. False: not within
    ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while relay.unframed_owed():
            await trio.sleep(0.001)
        return True
    return False


async def frame_every_reply(relay: Relay, timeout: float) -> bool:
    """Every reply framed from here on, while clients still flow (for a state sync that
    watches nothing; one that watches has its replies framed already): at the barrier, or
    when clients are handed to the engine before it, the relay then knows each client's reply
    boundary without a sentinel's round trip (one per client that owes nothing, behind the
    others' requests). False: the replies owed from before did not come within ``timeout``."""
    if relay.watch is None:
        relay.watch_requests(frames_only)
    return await unframed_answered(relay, timeout)


def frames_only(request: object) -> None:
    """The relay's watch before the sync point for a state sync that needs none: it only
    makes the relay frame every reply (see ``Relay.watch_requests``)."""


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while clients are held (the sync point, the cutover): a
    full pass over the proxy's objects took 15 to 330 ms on the loaded 2-core machine, and the
    held clients would wait for it too. Young collections are cheap, but they are what starts
    a full one. Collection resumes (if it was on) however the pause ends; what was allocated
    meanwhile is collected then, once the clients go on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass(frozen=True, eq=False)
class _HeldRequest:
    """A request blocked in the leader at the sync point (:class:`~.statesync.base.Blocked`)."""

    local_address: tuple[str, int]
    handle: object  # the engine's name for it


class HeldClients(SyncPoint):
    """The sync point as a state sync method sees it: only what it may do with the held
    clients, so that a method never depends on the engine's insides."""

    def __init__(self, driver: UpdateDriver):
        self._driver = driver

    def blocked(self) -> list[_HeldRequest]:
        return [_HeldRequest(address, handle)
                for handle, address in self._driver.blocked_at_sync_point()]

    def release(self, request: Blocked) -> bool:
        assert isinstance(request, _HeldRequest)
        return self._driver.unblock(request.handle)

    def still_out(self, request: Blocked) -> bool:
        assert isinstance(request, _HeldRequest)
        return self._driver.still_unblocking(request.handle)
