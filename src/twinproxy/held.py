"""Clients held by an update: getting them ready to be held, what the state sync may do with
them at the sync point, and no garbage collection while they wait.

The lifecycle (:mod:`twinproxy.lifecycle`) holds every client twice in an update, at the sync
point and at the cutover. Before the sync point's barrier, while clients flow, every reply is
framed (:func:`frame_every_reply`) so that the relay knows each client's reply boundary without
a sentinel's round trip, and the clients are handed to the engine then (``ev.Ahead``), not
while they are held. A state sync method sees the held clients only through
:class:`HeldClients` (never the engine's records); :func:`collector_paused` keeps Python's
collector from adding its pauses to theirs.

Pauses are measured where clients wait because of the update (the update's ``pauses_ms``): the
sync point's barrier (until the state sync pinned the state: Redis's fork, a cooperative
service's fork) and the cutover's barrier (until the swap). Parts of them are shown too, to tell
where a long one went: ``ahead`` (handing every client to the engine before the barrier, while
they flow: not a pause), ``begin`` (holding them, or handing them to the engine at the barrier
for a state sync that watches requests), ``attached`` (until every client was), ``barrier``
(until nothing was in flight), ``pin`` (the state sync's step at the sync point), ``release``
(then sending the requests held), ``cutover_quiet`` (until the leader answered what was in
flight), ``cutover_barrier`` (and the follower caught up), all from the pause's start but
``pin`` and ``release``, and ``cutover_unblock`` (then until no client waits in the leader for
a request the new version cannot be given instead, up to ``session_join_timeout``); and
``sync_point_cpu`` and ``cutover_cpu``, the CPU time the proxy spent in each pause (the rest it
waited: for the servers, or for a CPU on a busy machine).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from twinproxy.engine import events as ev
from twinproxy.statesync import Blocked, SyncPoint

if TYPE_CHECKING:
    from twinproxy.relay import Relay
    from twinproxy.relay.driver import UpdateDriver

BLOCKED_WAIT = 0.25  # seconds the barrier waits for requests blocked since before the update

__all__ = ["HeldClients", "collector_paused", "frame_every_reply", "frames_only",
           "full_collections_deferred",
           "hand_over_ahead", "hold_for_cutover", "unframed_answered"]


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


async def hand_over_ahead(driver: UpdateDriver, timeout: float) -> bool:
    """Hand every client to the engine while they flow, before the sync point's barrier
    (``ev.Ahead``): their requests go to the leader alone until the barrier, so the barrier
    holds them only for what is in flight and the state sync's pin, not for the hand-over
    (3.4 ms median for 50 clients, up to 12 ms on a busy machine). Each client waits only
    for the replies it was owed then (every reply is framed: :func:`frame_every_reply`).
    False: not every client was handed over within ``timeout``."""
    attached = driver.begin()
    driver.control(ev.Ahead())
    with trio.move_on_after(timeout):
        await attached.wait()
    if not attached.is_set():
        return False
    # A request blocked in the leader since before the update (a BLPOP with a timeout) must be
    # released from it at the sync point and sent again (RedisFork.release_blocked: CLIENT
    # LIST, then an UNBLOCK and a round trip per request, 5 to 10 ms of the pause). Most end
    # by themselves soon: their client's next one is sent by the engine, which needs none of
    # that. So the barrier waits for them a little, while the clients flow.
    with trio.move_on_after(BLOCKED_WAIT):
        await driver.until("prior-ended")
    return True


async def hold_for_cutover(driver: UpdateDriver, timeout: float,
                           pauses: dict[str, float]) -> bool:
    """Hold new requests until the leader is quiet and the follower caught up (every reply
    compared: the cutover swaps only versions that agreed on everything so far); False when
    that did not happen within ``timeout``. Notes ``cutover_quiet`` in ``pauses``."""
    driver.control(ev.Hold())
    t0 = time.monotonic()
    with trio.move_on_after(timeout):
        await driver.until("quiet")
        pauses["cutover_quiet"] = time.monotonic() - t0
        await driver.until("quiet", "caught-up")
        return True
    return False


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


# A generation-2 threshold no update reaches: the collector counts young collections against it.
_NEVER = 2**31 - 1


@contextlib.contextmanager
def full_collections_deferred() -> Iterator[None]:
    """No full (generation 2) collection while the state sync runs, from the update's start
    until the follower has replayed what came after the sync point; young collections go on.

    The requests kept for the follower meanwhile live for seconds, so the collector moves
    them to the oldest generation, and their number is what starts a full pass over them:
    measured on the 2-core machine with 1,000,000 keys and 50 clients
    (loadtests/trace_update.py), passes of 29 and 71 ms of CPU over 50,000 and 132,000
    objects held the proxy's one loop while the snapshot was written and loaded, and were the
    longest waits a client saw during the update. Once the follower has caught up those
    requests are gone, and the next full pass is short. Little is left to a full pass here:
    the proxy's cycles die young (a few hundred objects found per full pass)."""
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    try:
        yield
    finally:
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, full)


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
