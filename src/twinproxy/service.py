"""The running service: the start version, the proxy in front of it, and signals, in one nursery.

``serve`` is the whole life of ``twinproxy serve``: start the version named by ``proxy.start``
(and wait until it answers), listen, serve until SIGTERM or SIGINT, drain, stop the servers it
started. Everything it starts lives in its nursery, so nothing outlives it, whatever way it ends.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
import time
from typing import TYPE_CHECKING

import trio

from twinproxy import descriptors
from twinproxy.backends import Backend, BackendError
from twinproxy.config import format_address
from twinproxy.control import Refused, serve_control
from twinproxy.control import serve as control_serve
from twinproxy.divergences import DivergenceLog
from twinproxy.lifecycle import Update
from twinproxy.protocols import get_codec
from twinproxy.relay import Relay
from twinproxy.statesync import METHODS

if TYPE_CHECKING:
    from twinproxy.config import Config

log = logging.getLogger("twinproxy")

# counters() keys summed over every update's engine (Engine.counts()).
ENGINE_COUNTS = ("requests_leader", "requests_follower", "replies_compared",
                 "divergences_expected", "divergences_unexpected")


class Service:
    """What ``serve`` runs, kept together so that tests and the control API can reach it."""

    def __init__(self, config: Config, open_files: descriptors.OpenFiles | None = None):
        """``open_files``: the limit as ``serve`` raised it (:func:`descriptors.raise_limit`);
        read as it is when None (a service run inside another program, such as the tests)."""
        self.config = config
        self.open_files = open_files
        self.codec = get_codec(config.proxy.protocol)
        self.backends = {name: Backend(v, self.codec) for name, v in config.versions.items()}
        self.serving = self.backends[config.proxy.start]
        self.relay = Relay(config, self.codec, self.serving)
        self.divergences = DivergenceLog(config.update.divergence_log)
        self.current: Update | None = None  # the update in progress, or the last one
        self.updates: dict[str, int] = {}  # updates that ended, by outcome
        # What engines no longer in use counted (ENGINE_COUNTS), so that the metrics stay
        # monotonic over the process's life, as Prometheus counters must.
        self.retired: dict[str, int] = dict.fromkeys(ENGINE_COUNTS, 0)
        self.nursery: trio.Nursery  # set by run(): where backends and updates live
        self._stop = trio.Event()

    def stop(self) -> None:
        """Ask ``run`` to drain and return (what SIGTERM does)."""
        self._stop.set()

    # ---- what the control API calls (all in the trio thread) -------------------------------

    @property
    def updating(self) -> Update | None:
        """The update in progress, if any."""
        current = self.current
        return current if current is not None and not current.done.is_set() else None

    def status(self) -> dict:
        """The ``/status`` document: state, versions, comparison counts, warm-up, last update."""
        relay = self.relay
        current = self.current
        updating = self.updating
        engine = updating.engine if updating is not None else None
        follower = updating.follower if updating is not None and updating.state != "single" \
            else None
        out = {
            "state": updating.state if updating is not None else "single",
            "leader": self._version_status(updating.leader if updating else self.serving),
            "follower": self._version_status(follower) if follower is not None else None,
            "compared": engine.compared if engine else 0,
            "divergences": engine.unexpected if engine else 0,
            "warmup": updating.warmup_left() if updating is not None else None,
            "last_update": None,
            "protocol": self.config.proxy.protocol,
            "listen": format_address(relay.listen_address),
            "uptime": round(time.time() - relay.started_at, 3),
            "connections": len(relay.clients),
            "serving": self.serving.name,
        }
        if current is not None:
            out["last_update"] = {"to": current.follower.name, "outcome": current.outcome,
                                  "reason": current.reason}
            out["update"] = current.status()
            if updating is not None and "sync" in out["update"]:
                out["sync"] = out["update"]["sync"]
        return out

    def _version_status(self, backend: Backend) -> dict:
        address = format_address(backend.address) if backend.address else None
        return {"version": backend.name, "pid": backend.pid, "address": address,
                "up": backend.up}

    async def update(self, to: str) -> None:
        """Start an update to version ``to`` (returns once it has started).

        Raises:
            Refused: 400 for an unknown version, the serving one, or a version the configured
                sync method cannot start; 409 during an update or while the leader is down.
        """
        if to not in self.backends:
            raise Refused(f"no version {to!r} in {self.config.path}", 400)
        if to == self.serving.name:
            raise Refused(f"{to} is the version serving now", 400)
        if self.updating is not None:
            raise Refused(f"an update to {self.updating.follower.name} is in progress "
                          f"(state {self.updating.state})")
        if not self.serving.up:
            raise Refused(f"{self.serving.name} is down: an update needs it serving")
        target = self.backends[to]
        refusal = METHODS[self.config.update.sync].refusal(
            self.config.proxy.protocol, self.serving.version, target.version)
        if refusal is not None:
            raise Refused(refusal, 400)
        number = (self.current.number + 1) if self.current is not None else 1
        self.current = Update(self, target, number)
        self.nursery.start_soon(self.current.run)

    def promote(self) -> None:
        """Cut over now, skipping the rest of the warm-up (after a keep-old cutover: stop the
        old version's following).

        Raises:
            Refused: 409 when no update is in MVE.
        """
        updating = self.updating
        if updating is None:
            raise Refused("no update in progress: promote needs an update in state mve")
        if updating.state != "mve":
            raise Refused(f"promote needs an update in state mve (the state is "
                          f"{updating.state})")
        updating.promote()

    def rollback(self) -> None:
        """Drop the new version and keep the old one.

        Raises:
            Refused: 409 when no update is in progress.
        """
        updating = self.updating
        if updating is None:
            raise Refused("no update in progress: rollback needs an update in state syncing "
                          "or mve")
        if updating.state not in ("syncing", "mve"):
            raise Refused(f"rollback needs an update in state syncing or mve (the state is "
                          f"{updating.state})")
        updating.rollback()

    def transition_timeout(self) -> float:
        """The longest a promote or rollback can take by the config's own bounds: a barrier,
        blocked clients joining (cutover), and stopping a server; plus a margin."""
        stop = max((v.stop_timeout for v in self.config.versions.values()), default=0.0)
        update = self.config.update
        return update.barrier_timeout + update.session_join_timeout + stop + 5.0

    async def settle(self, update: Update, was_following: bool,
                     timeout: float | None = None) -> bool:
        """Wait until the transition just asked of ``update`` (promote or rollback) is done, so
        that the caller can report the state it led to rather than the one before.

        Done means the update ended (cut over or rolled back, its old or dropped version
        stopped), or, for a promote with ``after_cutover = "keep-old"``, that the cutover
        happened and the old version now follows. Polls every 10 ms: this is the control
        plane, never the relay.

        Args:
            update: the update the transition was asked of.
            was_following: ``update.following`` before the transition was asked.
            timeout: seconds; :meth:`transition_timeout` when None.

        Returns:
            True when the transition finished in time; False when it is still going on
            (it is not cancelled: it goes on and ``/status`` shows it).
        """
        bound = self.transition_timeout() if timeout is None else timeout
        with trio.move_on_after(bound):
            while not (update.done.is_set() or (update.following and not was_following)):
                await trio.sleep(0.01)
            return True
        return False

    def retire(self, counts: dict[str, int]) -> None:
        """Keep what an update's engine counted in the process's totals: the update ended and
        lets its engine go, and the next update's engine counts from 0."""
        for key, value in counts.items():
            self.retired[key] += value

    def counters(self) -> dict[str, float]:
        """Plain counters for the metrics collector, read when scraped (never per request)."""
        relay = self.relay
        out: dict[str, float] = {
            "connections": len(relay.clients),
            "connections_accepted": relay.accepted,
            "updates_started": self.current.number if self.current is not None else 0,
            "updates_cutover": self.updates.get("cutover", 0),
            "updates_rolled_back": self.updates.get("rolled-back", 0),
            "client_bytes_received": relay.client_received,
            "client_bytes_sent": relay.client_sent,
            "bytes_received_leader": relay.server_received[0],
            "bytes_received_follower": relay.server_received[1],
            "bytes_sent_leader": relay.server_sent[0],
            "bytes_sent_follower": relay.server_sent[1],
        }
        out.update(self.retired)
        current = self.current
        if current is not None:
            engine = current.engine
            if engine is not None:
                for key, value in engine.counts().items():
                    out[key] += value
                out["follower_backlog_requests"] = engine.backlog.requests
                out["follower_backlog_bytes"] = engine.backlog.bytes
            for phase, seconds in current.phases.items():
                if phase in ("syncing", "mve", "cutover", "rollback"):
                    key = "sync" if phase == "syncing" else phase
                    out[f"update_{key}_seconds"] = round(seconds, 6)
        return out

    async def run(self, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED,
                  handle_signals: bool = True) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT when ``handle_signals``).

        ``task_status.started`` is called with the service once clients can connect.

        Raises:
            BackendError: the start version could not be started.
            OSError: the listen address cannot be bound.
        """
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.relay.bind()
            await nursery.start(self.serving.run)
            await nursery.start(self.relay.run)
            await nursery.start(serve_control, self)
            self._fit_open_files()
            if handle_signals:
                nursery.start_soon(self._signals)
            log.info("serving %s on %s:%d in front of %s", self.config.proxy.protocol,
                     *self.relay.listen_address, self.serving.name)
            task_status.started(self)
            await self._stop.wait()
            await self.relay.drain(self.config.proxy.shutdown_timeout)
            nursery.cancel_scope.cancel()
        log.info("stopped")

    def _fit_open_files(self) -> None:
        """Cap the clients at what the open-files limit allows during an update, and say so in
        one line: a warning when the config asks for more (see :mod:`twinproxy.descriptors`).

        Called once everything of the start is open (the listener, the start version, the
        control API and its reserve), so that what is open now is counted as the proxy's own.
        """
        files = self.open_files or descriptors.current()
        reserved = (descriptors.open_now() + control_serve.LIMITS.max_connections
                    + descriptors.MARGIN)
        allowed = descriptors.clients_allowed(files.soft, reserved)
        configured = self.config.proxy.max_connections
        self.relay.max_connections = min(configured, allowed)
        limit = (f"open files: limit {files.soft} (raised from {files.before})"
                 if files.soft != files.before else f"open files: limit {files.soft}")
        why = (f"{descriptors.PER_CLIENT} per client during an update, {reserved} kept for "
               "the proxy, the control API and the servers")
        if configured <= allowed:
            log.info("%s allows max_connections %d (%s); configured %d", limit, allowed, why,
                     configured)
        else:
            log.warning("%s allows max_connections %d (%s), not the %d configured: clients "
                        "past %d are refused with 'max number of clients reached'; raise the "
                        "hard limit (%d: ulimit -Hn, LimitNOFILE= in systemd) to serve more",
                        limit, allowed, why, configured, allowed, files.hard)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stop.is_set():
                    log.warning("second %s: stopping now", signal.Signals(signum).name)
                    raise KeyboardInterrupt
                log.info("%s: stopping (draining up to %.1fs)", signal.Signals(signum).name,
                         self.config.proxy.shutdown_timeout)
                self.stop()


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers.

    A lifecycle event (:func:`twinproxy.events.log_event`) adds ``event`` and each of its
    fields as a key of its own (``"to": "v7"``, ``"reason": "..."``), so that a shipper can
    filter on them without parsing the message. A value JSON cannot hold is written as text.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if event:
            entry["event"] = event
            fields = getattr(record, "fields", None) or {}
            entry.update((k, v) for k, v in fields.items() if k not in entry)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One readable line per record. A lifecycle event shows its name in brackets after the
    level (``[rollback]``), so that a text log is searched for the same names as a JSON one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")
        self._event = logging.Formatter("%(asctime)s %(levelname)-7s [%(event)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "event", None):
            return self._event.format(record)
        return super().format(record)


def setup_logging(log_format: str, level: int = logging.INFO) -> None:
    """Log lines to stderr: readable text, or JSON lines with ``log_format="json"``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger("twinproxy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def set_aside_start_up() -> None:
    """Set the objects made so far aside from the cyclic garbage collector, for the process's
    life (``gc.freeze``): what importing twinproxy, trio and the rest made (about 34,000
    objects) is most of what a full collection goes through, and none of it becomes garbage.
    A full pass over them held the proxy's one loop for 5 to 12 ms of CPU on the 2-core
    machine; after this one, it goes over what serving made since (loadtests/trace_update.py).
    Called once, by ``serve``, before the loop starts."""
    gc.collect()
    gc.freeze()


# When the cyclic collector runs: a young collection every YOUNG_COLLECTION containers made
# (net of those freed), a middle one every MIDDLE_COLLECTION young ones (CPython: 700 and 10).
YOUNG_COLLECTION = 5000
MIDDLE_COLLECTION = 5


def collect_less_often() -> None:
    """Start young collections less often than CPython does, middle ones more often.

    Why: what the proxy makes for a request is mostly freed by reference counting and barely
    counts towards a collection, but what it makes for a client lives as long as the client
    (its connections and readers and, during an update, the engine's records: about a hundred
    containers), and every collection goes over all of it that is young enough. With CPython's
    thresholds, 1,000 clients connecting three times during an update went through 933 young,
    85 middle and 7 full collections, the full ones up to 39 ms of CPU each over every client's
    records, for 7% of the proxy's CPU (``python loadtests/collector.py --baseline``). With
    these, 77 young, 13 middle and 1 full, 3% of the CPU, the longest 10 ms; a young collection
    takes up to 2 or 3 ms instead of under 1. A middle collection every 5 young ones keeps it
    to what those left (with 10 it took up to 23 ms). Called once, by ``serve``."""
    gc.set_threshold(YOUNG_COLLECTION, MIDDLE_COLLECTION, gc.get_threshold()[2])


def serve_forever(config: Config, *, log_format: str = "text") -> int:
    """Run ``twinproxy serve`` in the foreground; returns the process exit status.

    0 after a stop by signal; 1 when the start version or the listener could not be started
    (the reason is logged). A second Ctrl-C stops at once, still stopping the servers.
    """
    setup_logging(log_format)
    service = Service(config, open_files=descriptors.raise_limit())
    set_aside_start_up()
    collect_less_often()
    try:
        trio.run(service.run)
    except BaseException as exc:  # sorted out below; anything else is re-raised
        error = _startup_error(exc)
        if error is None:
            raise
        if isinstance(error, KeyboardInterrupt):
            log.info("stopped")
            return 0
        log.error("%s", error)
        return 1
    return 0


def _startup_error(exc: BaseException) -> BaseException | None:
    """The one failure that ended ``serve``, out of trio's exception groups, if it is one we
    explain in a line (a server that would not start, an address in use, Ctrl-C)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        interrupts = exc.subgroup(KeyboardInterrupt)
        return interrupts.exceptions[0] if interrupts else None
    if isinstance(exc, BackendError | OSError | KeyboardInterrupt):
        return exc
    return None
