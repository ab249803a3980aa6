"""One update's life, as a table of states and the events that end them.

This is the update's one task; it drives the engine (through :mod:`twinproxy.relay.driver`) and
the state sync (:mod:`twinproxy.statesync`), and owns the decision of what happens when
something goes wrong. Each state is a step; a step ends with an event, and :data:`TRANSITIONS`
says where that event leads. What happens meanwhile (the engine reports a failure, the operator
asks for a rollback or a promote, the leader dies) interrupts the step in progress, if the table
has a transition for it from there; the leader never depended on the follower, so a rollback
has nothing to undo, and a leader that dies hands over to the follower, which has its state.

Rules the table keeps:

* Every state but ``single`` has a way to it: an update always ends.
* ``rollback``, ``takeover``, ``swap-back`` and ``stop-following`` are not interrupted: they are
  how an update ends, and run to their end even when the update is cancelled.
* The steps wait for the engine's notices (:class:`~twinproxy.engine.commands.Reached`), never by
  polling its insides; only the warm-up clock is a timer.

Pauses are measured where clients wait because of the update, in ``pauses_ms``: their parts
are listed in :mod:`twinproxy.held`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from twinproxy.backends import BackendError
from twinproxy.compare import Comparator, Rules
from twinproxy.engine import Engine
from twinproxy.engine import events as ev
from twinproxy.events import log_event
from twinproxy.failover import LeaderFailover
from twinproxy.held import (
    HeldClients,
    collector_paused,
    frame_every_reply,
    full_collections_deferred,
    hand_over_ahead,
    hold_for_cutover,
    unframed_answered,
)
from twinproxy.relay.driver import UpdateDriver
from twinproxy.spill import Spill
from twinproxy.statesync import METHODS, SyncError, SyncJob

if TYPE_CHECKING:
    from twinproxy.backends import Backend
    from twinproxy.config import Config
    from twinproxy.divergences import DivergenceLog
    from twinproxy.engine.commands import Diverged
    from twinproxy.protocols.base import Carry, Codec
    from twinproxy.relay import Relay

log = logging.getLogger("twinproxy.update")

# Seconds between looks at the warm-up's count of compared replies once its time has passed;
# until then the step sleeps until it will have (a proxy whose clients are idle during an
# update wakes only for its housekeeping, see UpdateDriver.control).
WARMUP_CHECK = 0.05

TRANSITIONS: dict[tuple[str, str], str] = {
    ("syncing", "synced"): "mve",
    ("syncing", "failed"): "rollback",
    ("syncing", "rollback"): "rollback",
    ("mve", "warmed-up"): "cutover",
    ("mve", "promote"): "cutover",
    ("mve", "failed"): "rollback",
    ("mve", "rollback"): "rollback",
    ("mve", "leader-died"): "takeover",
    ("cutover", "swapped"): "single",
    ("cutover", "kept"): "following",
    ("cutover", "failed"): "rollback",
    ("cutover", "rollback"): "rollback",
    ("cutover", "leader-died"): "takeover",
    ("following", "promote"): "stop-following",
    ("following", "failed"): "stop-following",
    ("following", "rollback"): "swap-back",
    ("following", "leader-died"): "takeover",
    ("stop-following", "done"): "single",
    ("swap-back", "done"): "single",
    ("rollback", "done"): "single",
    ("takeover", "done"): "single",
}
ENDING = frozenset({"rollback", "takeover", "swap-back", "stop-following"})
# What ``status`` calls each state (an operator sees the old names: keep-old's following is MVE
# with the roles swapped; a takeover is a cutover the leader forced).
SHOWN = {"following": "mve", "swap-back": "mve", "stop-following": "mve", "takeover": "cutover"}


_UNANSWERED = ("requests sent before the update were not answered within {:g}s "
               "(barrier_timeout)")


class Failed(Exception):
    """The update cannot go on; the message says why."""


class Host(Protocol):
    """The service an update runs in (:class:`twinproxy.service.Service`), as far as the update
    reads and changes it. Declared here so that the lifecycle does not import the service,
    which imports the lifecycle to start updates."""

    config: Config
    codec: Codec
    relay: Relay
    divergences: DivergenceLog
    nursery: trio.Nursery
    """Where the new version's server runs, beside the update."""
    serving: Backend
    """The version clients are served by; the update changes it when the new one takes over."""
    updates: dict[str, int]
    """Updates that ended, by outcome; an update counts itself in when it ends."""

    def retire(self, counts: dict[str, int]) -> None:
        """Keep an ended update's engine counts in the process's totals."""


class Update(LeaderFailover):
    """One update, from ``service.serving`` to ``to``."""

    def __init__(self, service: Host, to: Backend, number: int):
        self.service = service
        self.relay = service.relay
        self.config = service.config.update
        self.leader: Backend = service.serving
        self.follower: Backend = to
        self.number = number
        self.state = "syncing"  # as shown (see SHOWN)
        self.outcome = "in-progress"
        self.reason: str | None = None
        self.engine: Engine | None = None
        self.driver: UpdateDriver | None = None
        self.started = time.monotonic()
        self.phase_started = self.started
        self.phases: dict[str, float] = {}
        self.pauses: dict[str, float] = {}
        self.sync_stats: dict[str, float] = {}  # what the state sync's steps did (its stats)
        self.sync_step = (0, 5, "barrier")
        self.mve_started = 0.0
        self.compared_at_mve = 0
        self.done = trio.Event()
        self._state = "syncing"
        self._pending: tuple[str, str | None] | None = None  # an interrupt not acted on yet
        self._scope: trio.CancelScope | None = None
        self._leader_trouble = trio.Event()
        self._new_dir: str | None = None  # the new version's directory until its run owns it
        self._leader_pid = self.leader.pid
        self._final: dict[str, Any] = {}  # the engine's status when the update ended
        self._steps: dict[str, Callable[[], Awaitable[str]]] = {
            "syncing": self._syncing, "mve": self._mve, "cutover": self._cutover,
            "following": self._following, "stop-following": self._stop_following,
            "swap-back": self._swap_back, "rollback": self._rollback,
            "takeover": self._takeover,
        }

    # ---- what the service, the driver and the engine call ----------------------------------

    def fail(self, reason: str) -> None:
        """Roll back with this reason (after a keep-old cutover: stop the old version's
        following); later reasons are ignored."""
        self._interrupt("failed", reason)

    def rollback(self) -> None:
        """The operator's rollback: drop the new version (swap back, after a keep-old cutover)."""
        self._interrupt("rollback", "rollback requested")

    def promote(self) -> None:
        """Cut over now; after a keep-old cutover, stop the old version's following."""
        self._interrupt("promote", None)

    def engine_failed(self, reason: str) -> None:
        self.fail(reason)

    def leader_trouble(self) -> None:
        self._leader_trouble.set()

    def diverged(self, notice: Diverged) -> None:
        """Record a divergence the engine reported (and log an unexpected one)."""
        record = self.service.divergences.add(self.number, notice.peer, notice.request,
                                              notice.leader, notice.follower, notice.verdict,
                                              notice.reason)
        if not notice.verdict.expected:
            request = notice.request
            log_event("divergence", f"update {self.number}: unexpected divergence on "
                      f"{request.name} from {notice.peer}", update=self.number, id=record.id,
                      request=request.name, connection=notice.peer, reason=notice.reason,
                      leader=repr(notice.leader[:80]), follower=repr(notice.follower[:80]))

    @property
    def following(self) -> bool:
        """After a keep-old cutover: the old version follows the new one (the update goes on
        until ``promote`` or ``rollback``)."""
        return self._state == "following"

    def _interrupt(self, event: str, reason: str | None) -> None:
        if self._pending is not None or self._state in ENDING:
            return
        if (self._state, event) not in TRANSITIONS:
            return
        self._pending = (event, reason)
        if self._scope is not None:
            self._scope.cancel()

    # ---- the life --------------------------------------------------------------------------

    async def run(self) -> None:
        """The whole update; returns once it has ended (cut over or rolled back)."""
        log_event("update_started", f"update {self.number}: {self.leader.name} -> "
                  f"{self.follower.name} (sync {self.config.sync})", update=self.number,
                  source=self.leader.name, to=self.follower.name)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_leader)
                while self._state != "single":
                    event, reason = await self._step(self._state)
                    if reason is not None and self.reason is None:
                        self.reason = reason
                    self._enter(TRANSITIONS[self._state, event])
                nursery.cancel_scope.cancel()
        finally:
            if self._new_dir is not None:  # failed before the new version started on it
                shutil.rmtree(self._new_dir, ignore_errors=True)
            self.done.set()

    async def _step(self, state: str) -> tuple[str, str | None]:
        """Run one state's step; the event that ended it (and a failure's reason)."""
        pending, self._pending = self._pending, None
        if pending is not None and (state, pending[0]) in TRANSITIONS:
            return pending  # it came while the last step was ending: it is this one's
        ending = state in ENDING
        with trio.CancelScope(shield=ending) as scope:
            self._scope = None if ending else scope
            try:
                return await self._steps[state](), None
            except Failed as exc:
                return "failed", str(exc)
            except SyncError as exc:  # the server's refusal, not a bug of ours
                return "failed", f"the state sync failed ({self.sync_step[2]}): {exc}"
            except Exception:
                log.exception("update %d: internal error in state %s", self.number, state)
                if not ending:
                    return "failed", "internal error (see the log)"
                if self.outcome == "in-progress":
                    self._finish("rolled-back", f"internal error while ending the update "
                                 f"({state}; see the log)")
                return "done", None
            finally:
                self._scope = None
        pending, self._pending = self._pending, None
        assert pending is not None, "a step was cancelled without a reason"
        return pending

    def _enter(self, state: str) -> None:
        now = time.monotonic()
        self.phases[self.state] = now - self.phase_started
        self.phase_started = now
        self._state = state
        self.state = SHOWN.get(state, state)
        if state == "single":
            self._let_go()
            # Ended, from now on: a new update may start at once (this task only has its
            # watchers left to cancel).
            self.done.set()
        if state == "mve":
            self.mve_started = now
            self.compared_at_mve = self.engine.compared if self.engine else 0
            log_event("mve", f"update {self.number}: MVE, warm-up "
                      f"{self.config.warmup_seconds:g}s / {self.config.warmup_requests} requests",
                      update=self.number, to=self.follower.name,
                      warmup_seconds=self.config.warmup_seconds,
                      warmup_requests=self.config.warmup_requests)

    def _let_go(self) -> None:
        """The update ended: keep what its engine counted and said, and let the engine go, with
        everything it still holds (a rolled-back update must not keep the replies of clients
        it served)."""
        engine, driver = self.engine, self.driver
        if engine is None:
            return
        self._final = engine.status()
        self.service.retire(engine.counts())
        self.engine = self.driver = None
        # Both refer to themselves (their tables of handlers, the engine's parts' callbacks):
        # break those cycles, so that they are freed now, not when Python's cyclic collector
        # next runs. The relay let go of the driver when the engine ended (UpdateDriver.end);
        # if it still has it, the end went wrong: leave them as they are.
        if driver is None or self.relay.driver is not driver:
            if driver is not None:
                driver.close()
            engine.close()
        self.relay.trim_soon()

    def _finish(self, outcome: str, reason: str | None) -> None:
        self.outcome = outcome
        self.reason = reason
        self.service.updates[outcome] = self.service.updates.get(outcome, 0) + 1

    # ---- syncing ---------------------------------------------------------------------------

    def _new_engine(self, knowledge: Any) -> Engine:
        service = self.service
        rules = Rules(service.config.rules, self.leader.name, self.follower.name)
        self.follower.on_change = self._follower_changed
        return Engine(service.codec, self.relay.limits, self.config,
                      Comparator(service.codec, rules), (self.leader.name, self.follower.name),
                      knowledge, new_store=Spill,
                      logins=(self.leader.login(), self.follower.login()))

    def _follower_changed(self, backend: Backend) -> None:
        if not backend.up:
            self.fail(f"the follower {backend.name} stopped (crashed or was killed)")

    async def _syncing(self) -> str:
        """The barrier, the sync point, the follower started on the state, joined: with no
        full garbage collection over the requests kept for the follower meanwhile (see
        :func:`~twinproxy.held.full_collections_deferred`)."""
        with full_collections_deferred():
            return await self._sync()

    async def _sync(self) -> str:
        try:
            login = self.leader.version.login()
        except LookupError as exc:  # password_env unset since serve checked it
            raise SyncError(f"{self.leader.name}'s login: {exc}") from None
        sync = METHODS[self.config.sync].load()(SyncJob(
            number=self.number, leader=self.leader.address, target=self.follower.version,
            barrier_timeout=self.config.barrier_timeout, leader_dir=self.leader.workdir,
            protocol=self.service.config.proxy.protocol,
            endpoint=self.config.cooperative_endpoint, leader_login=login,
            learned=self.relay.learner))
        # The last cutover's names end here: this update's engine translates its own.
        self.relay.carry = None
        self.sync_stats = sync.stats
        relay, timeout = self.relay, self.config.barrier_timeout
        relay.watch_requests(sync.watch(relay.in_flight))
        # A state sync that watches the requests sees them only in SINGLE mode: its clients are
        # handed to the engine at the barrier. Otherwise they are handed to it before, while
        # they flow, and the barrier holds them only for what is in flight and the pin.
        ahead = relay.watch is None
        try:
            if not ahead and not await unframed_answered(relay, timeout):
                raise Failed(_UNANSWERED.format(timeout))
            # Before the engine opens connections: a refusal here leaves nothing behind.
            if sync.prepare_step is not None:
                self.sync_step = (0, 5, sync.prepare_step)
            knowledge = await sync.prepare()
            if ahead and not await frame_every_reply(relay, timeout):
                raise Failed(_UNANSWERED.format(timeout))
            self.sync_step = (0, 5, "barrier")
            self.engine = engine = self._new_engine(knowledge)
            engine.clock = sync.leader_clock
            self.driver = driver = UpdateDriver(relay, engine, self.leader, self.follower, self)
            workdir = self._new_dir = tempfile.mkdtemp(prefix=f"twinproxy-{self.follower.name}-")
            driver.prepare()
            if ahead:
                handing = time.monotonic()
                if not await hand_over_ahead(driver, timeout):
                    raise Failed(f"the clients were not handed to the engine within "
                                 f"{timeout:g}s (barrier_timeout)")
                self.pauses["ahead"] = time.monotonic() - handing  # (clients flowed)
            with collector_paused():
                barrier, cpu = time.monotonic(), time.process_time()
                if ahead:
                    attached = None  # (handed over already: hold them)
                    driver.control(ev.Hold())
                else:
                    attached = driver.begin()
                self.pauses["begin"] = time.monotonic() - barrier
                with trio.move_on_after(timeout) as waiting:
                    if attached is not None:
                        await attached.wait()
                    self.pauses["attached"] = time.monotonic() - barrier
                    await driver.until("quiet")
                # (every client settled: all the sentinels are in)
                engine.own_before(self.leader.probes, self.leader.sentinels,
                                  sync.own_requests())
                if waiting.cancelled_caught:
                    raise Failed(f"the sync point's barrier was not reached within "
                                 f"{timeout:g}s (barrier_timeout)")
                # (of the sync point's pause, the wait for what was in flight: a transfer's end)
                self.pauses["barrier"] = time.monotonic() - barrier
                self.sync_step = (1, 5, "sync point")
                pinning = time.monotonic()
                await sync.at_sync_point(HeldClients(driver))
                # (of it, the state sync's own step: Redis's BGSAVE round trip, its fork)
                self.pauses["pin"] = time.monotonic() - pinning
                relay.watch_requests(None)
                releasing = time.monotonic()
                driver.control(ev.Release())
                self.pauses["release"] = time.monotonic() - releasing
                self.pauses["sync_point"] = time.monotonic() - barrier
                self.pauses["sync_point_cpu"] = time.process_time() - cpu
            log_event("sync_point", f"update {self.number}: sync point pinned, clients held "
                      f"{self.pauses['sync_point'] * 1000:.1f} ms", update=self.number,
                      to=self.follower.name, pause_ms=round(self.pauses["sync_point"] * 1000, 3))
            if sync.after_release_step is not None:
                self.sync_step = (2, 5, sync.after_release_step)
            await sync.after_release(workdir)
            started = sync.started()
            self.sync_step = (3, 5, "starting the new version")
            if started is not None:  # the service forked it: it serves already
                self.follower.adopt(started.address, started.pid)
                if started.leader_pid is not None and not self.leader.version.managed:
                    self.leader.adopt(self.leader.address, started.leader_pid)
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
            if sync.after_start_step is not None:
                self.sync_step = (3, 5, sync.after_start_step)
            ids = await sync.after_start(self.follower.address)
            if ids:
                engine.translate(ids)
        finally:
            self.relay.watch_requests(None)
            with trio.CancelScope(shield=True):
                await sync.aclose()
        self.sync_step = (4, 5, "replaying what came after the sync point")
        driver.control(ev.StartFollower())
        # A new version slower than the old one under this load never catches up, and the
        # update would replay for ever below max_backlog_requests: it fails instead.
        with trio.move_on_after(self.config.catch_up_timeout) as waiting:
            await driver.until("joined")
        if waiting.cancelled_caught:
            raise Failed(f"{self.follower.name} did not catch up within "
                         f"{self.config.catch_up_timeout:g}s (catch_up_timeout): "
                         f"{engine.backlog.requests} requests behind")
        self.sync_step = (5, 5, "in sync")
        log_event("synced", f"update {self.number}: {self.follower.name} is in sync "
                  f"({engine.backlog.requests} requests behind)", update=self.number,
                  to=self.follower.name, backlog=engine.backlog.requests)
        return "synced"

    # ---- MVE and the cutover ------------------------------------------------------------------

    async def _mve(self) -> str:
        """MVE until the warm-up has passed with no unexpected divergence (or a promote)."""
        engine = self.engine
        while True:
            left = self.warmup_left()
            if left is not None and left["seconds_left"] <= 0 and left["requests_left"] <= 0 \
                    and engine.unexpected == 0:
                return "warmed-up"
            await trio.sleep(max(WARMUP_CHECK, left["seconds_left"] if left else 0.0))

    def warmup_left(self) -> dict[str, float] | None:
        if self.state != "mve" or self.engine is None:
            return None
        seconds = self.config.warmup_seconds - (time.monotonic() - self.mve_started)
        requests = self.config.warmup_requests - (self.engine.compared - self.compared_at_mve)
        return {"seconds_left": round(max(0.0, seconds), 3), "requests_left": max(0, requests)}

    async def _cutover(self) -> str:
        """Hold, let the leader finish and the follower catch up, swap, resume. A server that
        reloads its dataset meanwhile (a client's DEBUG RELOAD) is waited for first, up to
        ``barrier_timeout``, with the clients served: as the sync point waits for a load."""
        engine, driver = self.engine, self.driver
        # The clients that have needed no follower connection so far get one now, with the
        # clients served: the swap hands every client over on its own.
        driver.control(ev.OpenFollowers())
        with trio.move_on_after(self.config.barrier_timeout) as opening:
            await driver.until("connected")
        if opening.cancelled_caught:
            raise Failed(f"the clients' connections to {self.follower.name} were not all up "
                         f"within {self.config.barrier_timeout:g}s (barrier_timeout)")
        with trio.move_on_after(self.config.barrier_timeout):
            await driver.until("loaded")
        with collector_paused():
            start, cpu = time.monotonic(), time.process_time()
            if not await hold_for_cutover(self.driver, self.config.barrier_timeout,
                                          self.pauses):
                raise Failed(f"the cutover's barrier was not reached within "
                             f"{self.config.barrier_timeout:g}s: the follower is "
                             f"{engine.backlog.requests} requests behind")
            # (of the cutover's pause, the wait for the leader's replies and the follower's)
            self.pauses["cutover_barrier"] = time.monotonic() - start
            with trio.move_on_after(self.config.session_join_timeout):
                await driver.until("unblocked")
            driver.control(ev.CloseBlocked())  # still blocked in the leader: cannot be moved
            # (then for requests in the leader that cannot move: they time out or get data)
            self.pauses["cutover_unblock"] = time.monotonic() - start \
                - self.pauses["cutover_barrier"]
            if engine.unexpected and self.config.on_divergence == "rollback":
                raise Failed("an unexpected divergence came during the cutover")
            old, new = self.leader, self.follower
            # Before the clients go on: the first request they send after the cutover may
            # name something by the old version's name (a CAS token).
            self._carry_names()
            if self.config.after_cutover == "keep-old":
                self._reverse()
            else:
                driver.end(cutover=True)
                self._serve_from(new)
            self.pauses["cutover"] = time.monotonic() - start
            self.pauses["cutover_cpu"] = time.process_time() - cpu
        self._finish("cutover", None)
        log_event("cutover", f"update {self.number}: {new.name} serves; clients held "
                  f"{self.pauses['cutover'] * 1000:.1f} ms", update=self.number,
                  to=new.name, pause_ms=round(self.pauses["cutover"] * 1000, 3))
        if self.config.after_cutover == "keep-old":
            driver.control(ev.Release())
            log_event("following", f"update {self.number}: {old.name} follows {new.name} "
                      "until promote (or rollback swaps back)", update=self.number)
            return "kept"
        with trio.CancelScope(shield=True):
            await self._retire_opaque(old)
            await old.stop()
        return "swapped"

    def _carry_names(self) -> None:
        """The roles swap (a cutover; the swap back after a keep-old one): the names clients
        took from the version that led (memcached's CAS tokens) are translated from now on,
        in the requests the engine still drives (after a keep-old swap the old version follows,
        and gets the names it gave back) and in those the relay forwards alone afterwards, for
        :attr:`Carry.seconds` or until the next update."""
        engine = self.engine
        assert engine is not None
        carry = self.relay.carry = self.service.codec.after_cutover(engine.names)
        engine.carry = carry
        if carry is not None:
            self.service.nursery.start_soon(_end_carry, self.relay, carry, engine)

    def _serve_from(self, backend: Backend) -> None:
        self.relay.serve_from(backend)
        self.service.serving = backend

    def _reverse(self) -> None:
        """Swap the roles of the two versions, at a barrier: the follower leads."""
        leader, follower = self.follower, self.leader
        rules = Rules(self.service.config.rules, leader.name, follower.name)
        self.driver.reverse(Comparator(self.service.codec, rules))
        self._serve_from(leader)
        follower.on_change = self._follower_changed
        self.leader, self.follower = leader, follower
        self._leader_pid = leader.pid

    async def _retire_opaque(self, old: Backend) -> None:
        """Sessions passed through encrypted on ``old`` (FTP over TLS, ``[proxy] tls =
        "passthrough"``), which no update could take over: before ``old`` stops, wait for them
        to end (``tls_sessions = "wait"``: ``old`` serves them alone meanwhile, every other
        client is on the new version) or close them (``"close"``)."""
        relay = self.relay
        sessions = relay.opaque_on(old)
        if not sessions:
            return
        if self.config.tls_sessions == "close":
            log.info("update %d: closing %d TLS sessions passed through to %s, which stops",
                     self.number, len(sessions), old.name)
            for client in sessions:
                relay.close_client(client)
            return
        log.info("update %d: %s goes on serving %d TLS sessions passed through to it, and "
                 "stops once they ended", self.number, old.name, len(sessions))
        while relay.opaque_on(old):
            await trio.sleep(0.1)

    async def _drain(self) -> None:
        """Before the clients go back to the leader alone: what is in the leader on the shared
        connection is answered there before that connection closes (the clients' own
        connections carry on by themselves), with the proxy's probes for blocking requests; so
        is the release of a request blocked at the sync point, whose null is the engine's and
        not the client's."""
        self.driver.control(ev.Hold())
        with trio.move_on_after(self.config.barrier_timeout):
            await self.driver.until("drained")

    async def _following(self) -> str:
        """After a keep-old cutover: the old version follows until promote or rollback."""
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _stop_following(self) -> str:
        """Drop the old version (promote, or it could not follow)."""
        old = self.follower
        old.on_change = lambda backend: None
        await self._drain()
        self.driver.end(cutover=False)
        reason = self.reason
        if reason is not None:
            self.reason = f"{old.name} stopped following: {reason}"
            log_event("stopped_following", f"update {self.number}: {self.reason}",
                      update=self.number, reason=reason)
        await self._retire_opaque(old)
        await old.stop()
        return "done"

    async def _swap_back(self) -> str:
        """Rollback after a keep-old cutover: the old version leads again, the new one goes."""
        await hold_for_cutover(self.driver, self.config.barrier_timeout, self.pauses)
        self._carry_names()
        self._reverse()
        new = self.follower
        new.on_change = lambda backend: None
        self.driver.end(cutover=False)
        self.outcome, self.reason = "rolled-back", "rollback requested after the cutover"
        self.service.updates["rolled-back"] = self.service.updates.get("rolled-back", 0) + 1
        log_event("rollback", f"update {self.number}: swapped back to {self.leader.name}",
                  update=self.number, to=new.name, reason=self.reason)
        await new.stop()
        return "done"

    async def _rollback(self) -> str:
        """Stop the follower, keep serving from the leader. Nothing to undo."""
        reason = self.reason or "rollback requested"
        log_event("rollback", f"update {self.number} rolled back: {reason}", update=self.number,
                  to=self.follower.name, reason=reason)
        if self.driver is not None:
            await self._drain()
            self.driver.end(cutover=False)
        if self.engine is not None:  # what the leader ran of the proxy's: still in its counts
            leader = self.leader
            leader.probes, leader.sentinels, leader.own = self.engine.own_counts()
        self.follower.on_change = lambda backend: None
        await self.follower.stop()
        self._finish("rolled-back", reason)
        return "done"

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
        if self.sync_stats:
            out["sync_stats"] = dict(self.sync_stats)
        out.update(engine.status() if engine is not None else self._final)
        if self.state == "syncing":
            done, total, step = self.sync_step
            out["sync"] = {"done": done, "total": total, "step": step}
        return out


async def _end_carry(relay: Relay, carry: Carry, engine: Engine) -> None:
    """The old version's names stop being translated once their time is up (unless the next
    update ended them already). Not a method: the ended update is freed meanwhile."""
    await trio.sleep(carry.seconds)
    if relay.carry is carry:
        relay.carry = None
    if engine.carry is carry:
        engine.carry = None
