"""When an update's leader may have died: find out, and let the follower take over.

A leader connection that closes on its own (the engine's ``LeaderLost``) may mean the leader
died, or only that it closed some connections itself (CLIENT KILL, a timeout). Which one is
found out here; a leader that died during MVE hands over to the follower, which has its state
(``takeover`` in :data:`twinproxy.lifecycle.TRANSITIONS`). A part of
:class:`twinproxy.lifecycle.Update`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from twinproxy.backends import probe
from twinproxy.engine import events as ev
from twinproxy.events import log_event

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.relay.driver import UpdateDriver


class LeaderFailover:
    """The leader's death and the take-over (a part of :class:`twinproxy.lifecycle.Update`)."""

    leader: Backend
    follower: Backend
    number: int
    driver: UpdateDriver | None
    service: Any
    config: Any
    _state: str
    _leader_trouble: trio.Event
    _leader_pid: int | None
    fail: Any
    _interrupt: Any
    _serve_from: Any
    _finish: Any

    async def _watch_leader(self) -> None:
        """Find out whether a leader connection that closed means the leader died."""
        while True:
            await self._leader_trouble.wait()
            self._leader_trouble = trio.Event()
            if await self._leader_alive():
                # It closed some connections itself (CLIENT KILL, a timeout): close those.
                if self.driver is not None:
                    self.driver.control(ev.CloseOrphans())
                continue
            if self._state == "syncing":
                self.fail(f"the leader {self.leader.name} failed before the follower was "
                          "in sync")
                return
            self._interrupt("leader-died", None)
            return

    async def _leader_alive(self) -> bool:
        leader = self.leader
        if leader.version.managed:
            await trio.sleep(0.05)  # its supervisor sees a death at once (pidfd)
            return leader.up and leader.pid == self._leader_pid
        return leader.address is not None and await probe(self.service.codec, leader.address)

    async def _takeover(self) -> str:
        """The leader died during MVE: the follower, which has its state, serves from now on."""
        driver = self.driver
        leader, follower = self.leader, self.follower
        log_event("leader_failed", f"update {self.number}: the leader {leader.name} "
                  f"failed; {follower.name} takes over", update=self.number)
        leader.on_change = lambda backend: None
        driver.control(ev.Hold())
        driver.control(ev.TakeOver())
        with trio.move_on_after(self.config.follower_timeout * 2):
            await driver.until("caught-up", "connected")
        driver.end(cutover=True)
        self._serve_from(follower)
        self._finish("cutover", f"the leader {leader.name} failed; {follower.name} took over")
        await leader.stop()
        return "done"
