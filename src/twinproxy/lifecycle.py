"""One update's life: SINGLE -> SYNCING -> MVE -> CUTOVER -> SINGLE, or ROLLBACK.

This is the update's one task; it drives the proxy (:mod:`twinproxy.proxy`), the engine
(:mod:`twinproxy.mve`) and the state sync (:mod:`twinproxy.statesync`), and owns the decision of
what happens when something goes wrong. Whatever the engine or a backend reports (an unexpected
divergence, a follower that crashed, hangs or falls behind, an operator's ``rollback``) cancels
the phase in progress and the update rolls back; the leader never depended on the follower, so
there is nothing to undo. A leader that dies instead hands over to the follower, which has the same
state, and answers what the leader had not.

Pauses are measured where clients wait because of the update: the sync point's barrier (until
the state sync pinned the state: Redis's fork) and the cutover's barrier (until the swap). The
status reports them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from twinproxy.backends import BackendError, probe
from twinproxy.compare import Comparator, Rules
from twinproxy.events import log_event
from twinproxy.mve import Mve
from twinproxy.statesync import METHODS, Blocked, SyncError, SyncJob, SyncPoint

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.compare import DivergenceLog
    from twinproxy.config import Config
    from twinproxy.protocols.base import Codec
    from twinproxy.proxy import Proxy

log = logging.getLogger("twinproxy.update")

POLL = 0.002  # seconds between checks of a barrier's condition


def _diverting(engine: Mve) -> list[Any]:
    """Clients whose own leader connection still diverts replies to the engine (a poll for a
    blocking request, or a CLIENT UNBLOCK's null, is out): ending the update now would hand
    them back to SINGLE mode with that diversion on, and every later reply would be lost."""
    out = []
    for twin in engine.twins.values():
        link = twin.client.link
        if link is not None and link.intercept and not twin.client.closed:
            out.append(twin.client)
    return out


@dataclass(frozen=True, eq=False)
class _HeldRequest:
    """A request blocked in the leader at the sync point (:class:`~.statesync.base.Blocked`)."""

    local_address: tuple[str, int]
    entry: Any  # the engine's Entry


class HeldClients(SyncPoint):
    """The sync point as a state sync method sees it, on top of the engine (:mod:`.mve`).

    Everything a method may do with the held clients goes through here, so that the engine's
    insides can change without touching a method: only this class knows how a blocked request
    is found, released into the proxy and seen to come back.
    """

    def __init__(self, engine: Mve):
        self._engine = engine

    def blocked(self) -> list[_HeldRequest]:
        out = []
        for entry in self._engine.blocked_in_leader():
            link = entry.client.link
            if link is not None:  # its connection closed: nothing waits in the leader
                host, port = link.sock.getsockname()[:2]
                out.append(_HeldRequest((host, port), entry))
        return out

    def release(self, request: Blocked) -> bool:
        assert isinstance(request, _HeldRequest)
        return self._engine.unblocking(request.entry)

    def still_out(self, request: Blocked) -> bool:
        assert isinstance(request, _HeldRequest)
        return bool(request.entry.unblocking)


class Host(Protocol):
    """The service an update runs in (:class:`twinproxy.service.Service`), as far as the update
    reads and changes it. Declared here so that the lifecycle does not import the service,
    which imports the lifecycle to start updates."""

    config: Config
    codec: Codec
    proxy: Proxy
    divergences: DivergenceLog
    nursery: trio.Nursery
    """Where the new version's server runs, beside the update."""
    serving: Backend
    """The version clients are served by; the update changes it when the new one takes over."""
    updates: dict[str, int]
    """Updates that ended, by outcome; an update counts itself in when it ends."""

    def retire_engine(self, engine: Mve) -> None:
        """Keep what ``engine`` counted: a keep-old cutover replaces it with a reversed one."""


class Failed(Exception):
    """The update cannot go on; the message says why."""


class Update:
    """One update, from ``service.serving`` to ``to``."""

    def __init__(self, service: Host, to: Backend, number: int):
        self.service = service
        self.proxy = service.proxy
        self.config = service.config.update
        self.leader: Backend = service.serving
        self.follower: Backend = to
        self.number = number
        self.state = "syncing"
        self.outcome = "in-progress"
        self.reason: str | None = None
        self.engine: Mve | None = None
        self.started = time.monotonic()
        self.phase_started = self.started
        self.phases: dict[str, float] = {}
        self.pauses: dict[str, float] = {}
        self.sync_step = (0, 5, "barrier")
        self.mve_started = 0.0
        self.compared_at_mve = 0
        self.done = trio.Event()
        self._failure: str | None = None
        self._scope: trio.CancelScope | None = None
        self._promote = trio.Event()
        self._leader_trouble = trio.Event()
        self._leader_dead = False
        self._following = False  # after a keep-old cutover: the old version follows
        self._rollback_requested = False
        self._new_dir: str | None = None  # the new version's directory until its run owns it
        self.new = to
        self._leader_pid = self.leader.pid
        self._leader_restarts = self.leader.restarts

    # ---- what the service and the engine call -------------------------------------------

    def fail(self, reason: str) -> None:
        """Roll back (from SYNCING or MVE) with this reason; later reasons are ignored. When
        the old version follows the new one after a cutover, it stops following instead."""
        if self._failure is None and self.state in ("syncing", "mve", "cutover"):
            self._failure = reason
            if self._scope is not None:
                self._scope.cancel()

    def rollback(self) -> None:
        """The operator's rollback: drop the new version (swap back, after a keep-old cutover)."""
        self._rollback_requested = True
        self.fail("rollback requested")

    def promote(self) -> None:
        """Cut over now; after a keep-old cutover, stop the old version's following."""
        self._promote.set()
        if self._following and self._scope is not None:
            self._scope.cancel()

    def leader_trouble(self) -> None:
        self._leader_trouble.set()

    @property
    def following(self) -> bool:
        """After a keep-old cutover: the old version follows the new one (the update goes on
        until ``promote`` or ``rollback``)."""
        return self._following

    # ---- the life --------------------------------------------------------------------------

    async def run(self) -> None:
        """The whole update; returns once it has cut over or rolled back."""
        log_event("update_started", f"update {self.number}: {self.leader.name} -> "
                  f"{self.follower.name} (sync {self.config.sync})", update=self.number,
                  source=self.leader.name, to=self.follower.name)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_leader)
                nursery.start_soon(self._timeouts)
                self._scope = trio.CancelScope()
                with self._scope:
                    try:
                        await self._sync()
                        self._enter("mve")
                        await self._warm_up()
                        await self._cutover()
                    except Failed as exc:
                        self._failure = self._failure or str(exc)
                    except SyncError as exc:  # the server's refusal, not a bug of ours
                        self._failure = self._failure or (
                            f"the state sync failed ({self.sync_step[2]}): {exc}")
                nursery.cancel_scope.cancel()
            if self._leader_dead:
                await self._take_over()
            elif self._following:
                if self._rollback_requested:
                    await self._swap_back()
                else:
                    await self._stop_following(None if self._promote.is_set() else self._failure)
            elif self._failure is not None:
                await self._rollback(self._failure)
        except Exception:
            log.exception("update %d: internal error", self.number)
            with trio.CancelScope(shield=True):
                await self._rollback("internal error (see the log)")
        finally:
            if self._new_dir is not None:  # failed before the new version started on it
                shutil.rmtree(self._new_dir, ignore_errors=True)
            self.done.set()

    def _enter(self, state: str) -> None:
        now = time.monotonic()
        self.phases[self.state] = now - self.phase_started
        self.phase_started = now
        self.state = state
        if state == "mve":
            self.mve_started = now
            self.compared_at_mve = self.engine.compared if self.engine else 0
            log_event("mve", f"update {self.number}: MVE, warm-up "
                      f"{self.config.warmup_seconds:g}s / {self.config.warmup_requests} requests",
                      update=self.number, to=self.follower.name,
                      warmup_seconds=self.config.warmup_seconds,
                      warmup_requests=self.config.warmup_requests)

    def _new_engine(self, knowledge: Any) -> Mve:
        service = self.service
        rules = Rules(service.config.rules, self.leader.name, self.follower.name)
        self.follower.on_change = self._follower_changed
        return Mve(self.proxy, self.leader, self.follower, Comparator(service.codec, rules),
                   service.divergences, self.config, self.fail, self.number, knowledge,
                   on_leader_lost=self.leader_trouble)

    def _follower_changed(self, backend: Backend) -> None:
        if not backend.up:
            self.fail(f"the follower {backend.name} stopped (crashed or was killed)")

    async def _sync(self) -> None:
        """SYNCING: the barrier, the sync point, the follower started on the state, joined.

        The configured method (:mod:`twinproxy.statesync`) takes its part at each step; what it
        does there is its own business."""
        sync = METHODS[self.config.sync].load()(SyncJob(
            number=self.number, leader=self.leader.address, target=self.follower.version,
            barrier_timeout=self.config.barrier_timeout))
        try:
            # Before the engine opens connections: a refusal here leaves nothing behind.
            knowledge = await sync.prepare()
            self.engine = engine = self._new_engine(knowledge)
            engine.open_leader()
            barrier = time.monotonic()
            attached = self.proxy.begin_update(engine)
            with trio.move_on_after(self.config.barrier_timeout) as waiting:
                await attached.wait()
                while not engine.leader_quiet():
                    await trio.sleep(POLL)
            if waiting.cancelled_caught:
                raise Failed(f"the sync point's barrier was not reached within "
                             f"{self.config.barrier_timeout:g}s (barrier_timeout)")
            self.sync_step = (1, 5, "sync point")
            workdir = self._new_dir = tempfile.mkdtemp(prefix=f"twinproxy-{self.follower.name}-")
            await sync.at_sync_point(HeldClients(engine))
            engine.release()
            self.pauses["sync_point"] = time.monotonic() - barrier
            log_event("sync_point", f"update {self.number}: sync point pinned, clients held "
                      f"{self.pauses['sync_point'] * 1000:.1f} ms", update=self.number,
                      to=self.follower.name, pause_ms=round(self.pauses["sync_point"] * 1000, 3))
            if sync.after_release_step is not None:
                self.sync_step = (2, 5, sync.after_release_step)
            await sync.after_release(workdir)
        finally:
            await sync.aclose()
        self.sync_step = (3, 5, "starting the new version")
        self._new_dir = None  # the follower's run removes it when it stops, as one it made
        try:
            await self.service.nursery.start(self.follower.run, workdir)
        except BackendError as exc:
            raise Failed(str(exc)) from exc
        except BaseExceptionGroup as group:  # nursery.start wraps what the task raised
            errors = group.subgroup(BackendError)
            if errors is None:
                raise
            raise Failed(str(errors.exceptions[0])) from group
        self.sync_step = (4, 5, "replaying what came after the sync point")
        engine.start_follower()
        while not self._joined(engine):
            await trio.sleep(0.01)
        self.sync_step = (5, 5, "in sync")
        log_event("synced", f"update {self.number}: {self.follower.name} is in sync "
                  f"({engine.backlog} requests behind)", update=self.number,
                  to=self.follower.name, backlog=engine.backlog)

    def _joined(self, engine: Mve) -> bool:
        twins = [t for t in engine.twins.values() if not t.solo and not t.gone]
        return all(t.joined for t in twins) and engine.backlog < 1000

    async def _warm_up(self) -> None:
        """MVE until the warm-up has passed with no unexpected divergence, or ``promote``."""
        engine = self.engine
        assert engine is not None
        while not self._promote.is_set():
            left = self.warmup_left()
            if left is not None and left["seconds_left"] <= 0 and left["requests_left"] <= 0 \
                    and engine.unexpected == 0:
                return
            with trio.move_on_after(0.05):
                await self._promote.wait()

    def warmup_left(self) -> dict[str, float] | None:
        if self.state != "mve" or self.engine is None:
            return None
        seconds = self.config.warmup_seconds - (time.monotonic() - self.mve_started)
        requests = self.config.warmup_requests - (self.engine.compared - self.compared_at_mve)
        return {"seconds_left": round(max(0.0, seconds), 3), "requests_left": max(0, requests)}

    async def _cutover(self) -> None:
        """CUTOVER: hold, let the leader finish and the follower catch up, swap, resume."""
        engine = self.engine
        assert engine is not None
        self._enter("cutover")
        start = time.monotonic()
        engine.hold()
        with trio.move_on_after(self.config.barrier_timeout) as waiting:
            while not (engine.leader_quiet() and engine.caught_up()):
                await trio.sleep(POLL)
        if waiting.cancelled_caught:
            raise Failed(f"the cutover's barrier was not reached within "
                         f"{self.config.barrier_timeout:g}s: the follower is "
                         f"{engine.backlog} requests behind")
        blocked = engine.blocked_clients()
        if blocked:
            with trio.move_on_after(self.config.session_join_timeout):
                while engine.blocked_clients():
                    await trio.sleep(0.01)
            for client in engine.blocked_clients():
                log.warning("closing client %s: still blocked after %.1fs at cutover",
                            client.peer, self.config.session_join_timeout)
                self.proxy._close_client(client)
        if engine.unexpected and self.config.on_divergence == "rollback":
            raise Failed("an unexpected divergence came during the cutover")
        old, new = self.leader, self.follower
        if self.config.after_cutover == "keep-old":
            self._reverse()
        else:
            self._swap(new)
        self.pauses["cutover"] = time.monotonic() - start
        self._finish("cutover", None)
        log_event("cutover", f"update {self.number}: {new.name} serves; clients held "
                  f"{self.pauses['cutover'] * 1000:.1f} ms", update=self.number,
                  to=new.name, pause_ms=round(self.pauses["cutover"] * 1000, 3))
        if self.config.after_cutover == "keep-old":
            self.engine.release()
            self._following = True
            self.state = "mve"
            log_event("following", f"update {self.number}: {old.name} follows {new.name} "
                      "until promote (or rollback swaps back)", update=self.number)
            await trio.sleep_forever()
        await old.stop()

    def _reverse(self) -> None:
        """Swap the roles of the two versions, at a barrier: the follower leads."""
        engine = self.engine
        assert engine is not None
        service = self.service
        leader, follower = self.follower, self.leader
        rules = Rules(service.config.rules, leader.name, follower.name)
        other = engine.reversed(Comparator(service.codec, rules))
        self.proxy.mve = other
        self.proxy.backend.on_change = lambda backend: None
        self.proxy.backend = leader
        leader.on_change = self.proxy._backend_changed
        follower.on_change = self._follower_changed
        service.serving = leader
        service.retire_engine(engine)
        self.engine, self.leader, self.follower = other, leader, follower
        self._leader_pid = leader.pid

    async def _barrier(self) -> None:
        """Hold new requests until the leader is quiet and the follower caught up."""
        engine = self.engine
        assert engine is not None
        engine.hold()
        with trio.move_on_after(self.config.barrier_timeout):
            while not (engine.leader_quiet() and engine.caught_up()):
                await trio.sleep(POLL)

    async def _swap_back(self) -> None:
        """Rollback after a keep-old cutover: the old version leads again, the new one goes."""
        self._following = False
        with trio.CancelScope(shield=True):
            await self._barrier()
            self._reverse()
            new = self.follower
            new.on_change = lambda backend: None
            self.proxy.end_update(None)
            self.outcome, self.reason = "rolled-back", "rollback requested after the cutover"
            self.service.updates["rolled-back"] = self.service.updates.get("rolled-back", 0) + 1
            self._enter("single")
            log_event("rollback", f"update {self.number}: swapped back to {self.leader.name}",
                      update=self.number, to=new.name, reason=self.reason)
            await new.stop()

    async def _stop_following(self, reason: str | None) -> None:
        """After a keep-old cutover: drop the old version (promote, or it could not follow)."""
        self._following = False
        old = self.follower
        old.on_change = lambda backend: None
        self.proxy.end_update(None)
        self._enter("single")
        if reason is not None:
            self.reason = f"{old.name} stopped following: {reason}"
            log_event("stopped_following", f"update {self.number}: {self.reason}",
                      update=self.number, reason=reason)
        with trio.CancelScope(shield=True):
            await old.stop()

    def _swap(self, new: Backend) -> None:
        self.proxy.end_update(new)
        self.service.serving = new
        new.on_change = self.proxy._backend_changed

    def _finish(self, outcome: str, reason: str | None) -> None:
        self._enter("single")
        self.outcome = outcome
        self.reason = reason
        self.service.updates[outcome] = self.service.updates.get(outcome, 0) + 1

    async def _rollback(self, reason: str) -> None:
        """ROLLBACK: stop the follower, keep serving from the leader. Nothing to undo."""
        self._enter("rollback")
        log_event("rollback", f"update {self.number} rolled back: {reason}", update=self.number,
                  to=self.follower.name, reason=reason)
        engine = self.proxy.mve
        if engine is not None:
            # What is in the leader on the shared connection is answered there before that
            # connection closes (the clients' own connections carry on by themselves). So is
            # a poll for a blocking request on a client's own connection: its reply is the
            # engine's, not the client's, so that connection diverts replies until it came.
            engine.hold()
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.barrier_timeout):
                while (engine.lshared is not None and engine.lshared.flight) \
                        or _diverting(engine):
                    await trio.sleep(POLL)
            for client in _diverting(engine):
                # Its stream cannot be completed: the poll's reply would be taken for its own.
                log.warning("closing client %s: a poll for its blocking request was still "
                            "unanswered after %.1fs at the rollback", client.peer,
                            self.config.barrier_timeout)
                self.proxy._close_client(client)
            self.proxy.end_update(None)
        self.follower.on_change = lambda backend: None
        with trio.CancelScope(shield=True):
            await self.follower.stop()
        self._finish("rolled-back", reason)

    # ---- a leader that dies ------------------------------------------------------------------

    async def _timeouts(self) -> None:
        """Blocking requests the proxy waits for time out on their own clock, not on the next
        write: checked every 10 ms."""
        while True:
            await trio.sleep(0.01)
            engine = self.proxy.mve
            if engine is not None and engine.waiting:
                engine.expire(time.monotonic())

    async def _watch_leader(self) -> None:
        """Find out whether a leader connection that closed means the leader died."""
        while True:
            await self._leader_trouble.wait()
            self._leader_trouble = trio.Event()
            if await self._leader_alive():
                self._close_orphans()
                continue
            engine = self.engine
            if engine is None or self.state not in ("mve", "cutover") \
                    or not engine.follower_live:
                self.fail(f"the leader {self.leader.name} failed before the follower was "
                          "in sync")
                return
            self._leader_dead = True
            if self._scope is not None:
                self._scope.cancel()  # the warm-up or cutover in progress is moot
            return

    async def _leader_alive(self) -> bool:
        leader = self.leader
        if leader.version.managed:
            await trio.sleep(0.05)  # its supervisor sees a death at once (pidfd)
            return leader.up and leader.pid == self._leader_pid
        return leader.address is not None and await probe(self.service.codec, leader.address)

    def _close_orphans(self) -> None:
        """The leader closed some connections itself (CLIENT KILL, a timeout): close them."""
        engine = self.engine
        if engine is None:
            return
        for twin in list(engine.twins.values()):
            if twin.client.link is None and not twin.client.closed:
                self.proxy._close_client(twin.client)

    async def _take_over(self) -> None:
        """The leader died during MVE: the follower, which has its state, serves from now on."""
        engine = self.engine
        assert engine is not None
        log_event("leader_failed", f"update {self.number}: the leader {self.leader.name} "
                  f"failed; {self.follower.name} takes over", update=self.number)
        self.state = "cutover"
        self.leader.on_change = lambda backend: None
        engine.hold()
        engine.take_over()
        with trio.move_on_after(self.config.follower_timeout * 2):
            while not engine.caught_up():
                await trio.sleep(POLL)
        self._swap(self.follower)
        self._finish("cutover", f"the leader {self.leader.name} failed; "
                     f"{self.follower.name} took over")
        with trio.CancelScope(shield=True):
            await self.leader.stop()

    # ---- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        engine = self.engine
        out: dict[str, Any] = {
            "number": self.number,
            "to": self.follower.name,
            "from": self.leader.name,
            "outcome": self.outcome,
            "reason": self.reason,
            "pauses_ms": {k: round(v * 1000, 3) for k, v in self.pauses.items()},
            "phases_s": {k: round(v, 3) for k, v in self.phases.items()},
        }
        if engine is not None:
            out.update(engine.status())
        if self.state == "syncing":
            done, total, step = self.sync_step
            out["sync"] = {"done": done, "total": total, "step": step}
        return out

