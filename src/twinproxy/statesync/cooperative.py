"""State sync ``cooperative``: the service forks itself at a safe point of its own, and the
child, with the state transformed, becomes the new version.

At the sync point (every client held at a request boundary) the proxy calls the service's
update endpoint (``docs/update-endpoint.md``) with ``"reply_when": "forked"``: the service
takes no new work, forks, and answers as soon as the child exists. The child's state is then
the leader's state at the sync point, so the clients are released at once, and the engine keeps
what they send from then on for the new version. While clients flow, a second call with the
same request id waits for the child's report: it transformed the state, checked it (forward
then back must give the original: the time-traveling check), and listens. The lifecycle then
runs the child as the follower at the address it reported (:meth:`Cooperative.started`)
instead of starting a process, and the engine replays to it.

Every failure is a :class:`SyncError` naming the step: the endpoint unreachable, silent or
refusing at the sync point; the child crashing, failing its check or not reporting in the new
version's ``ready_timeout``. The leader served throughout: a failure rolls back with nothing
to undo but a child that the service (or, failing that, this method) ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import uuid
from typing import Any

from twinproxy.statesync.base import Started, StateSync, SyncError, SyncPoint, Version
from twinproxy.update import Forked, UpdateFailed, UpdateResult, request_fork, request_update

__all__ = ["METHOD", "Cooperative"]

log = logging.getLogger("twinproxy.update")


class Cooperative(StateSync):
    """The update endpoint at the sync point; the child's report while clients flow."""

    after_release_step = "waiting for the new version's report"

    _forked: Forked | None = None
    _result: UpdateResult | None = None
    _adopted = False
    _child: int | None = None  # a pidfd of the forked child

    @classmethod
    def check(cls, leader: Version, target: Version) -> str | None:
        if not target.forked:
            return (f"sync cooperative has the running service fork the new version, so "
                    f"{target.name} must be a forked version (forked = true), not one with "
                    "a command or an address")
        return None

    async def prepare(self) -> Any:
        """What the service says of its commands, the way its protocol's server would (for
        RESP: the ``COMMAND`` table, so that its requests are ordered by their keys)."""
        if self.job.protocol == "redis":
            from twinproxy.statesync.redis_fork import command_table

            return await command_table(self.job.leader, self.job.leader_login)
        return None

    async def at_sync_point(self, point: SyncPoint) -> None:
        """Ask the service to fork now; return once it has (clients are held meanwhile)."""
        job = self.job
        assert job.endpoint is not None
        self._request_id = uuid.uuid4().hex
        try:
            self._forked = await request_fork(job.endpoint, job.target.name,
                                              timeout=job.barrier_timeout,
                                              request_id=self._request_id)
        except UpdateFailed as exc:
            raise SyncError(exc.reason) from None
        with contextlib.suppress(ProcessLookupError):
            self._child = os.pidfd_open(self._forked.pid)  # this process, even if its pid is reused
        log.info("update %d: the service forked at its safe point (child pid %d, %.1f ms)",
                 job.number, self._forked.pid, self._forked.seconds * 1000)

    async def after_release(self, workdir: str) -> None:
        """Wait for the child's report: its state transformed and checked, its address."""
        job = self.job
        assert job.endpoint is not None and self._forked is not None
        result = self._forked.ready
        if result is None:
            try:
                result = await request_update(job.endpoint, job.target.name,
                                              timeout=job.target.ready_timeout,
                                              request_id=self._request_id)
            except UpdateFailed as exc:
                raise SyncError(exc.reason) from None
        if result.pid != self._forked.pid:
            raise SyncError(f"the service forked pid {self._forked.pid} but reported pid "
                            f"{result.pid}")
        self._result = result
        log.info("update %d: %s reported ready at %s:%d (pid %d)", job.number, job.target.name,
                 result.address[0], result.address[1], result.pid)

    def started(self) -> Started | None:
        if self._result is None:
            return None
        self._adopted = True
        return Started(self._result.address, self._result.pid, self._result.parent_pid)

    async def aclose(self) -> None:
        """A child forked for an update that failed is ended here if the service has not
        ended it already (it should: nobody will use it)."""
        if self._child is None:
            return
        if not self._adopted:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(self._child, signal.SIGKILL)
        os.close(self._child)
        self._child = None


METHOD = Cooperative
