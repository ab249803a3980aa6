"""``twinproxy serve`` with its trio loop traced, for loadtests/trace_update.py.

    python loadtests/traced_serve.py TRACE.jsonl serve CONFIG

Writes one JSON line per event to TRACE.jsonl, every time in ``time.monotonic()`` seconds
(CLOCK_MONOTONIC, the same clock in every process of the machine, so the lines line up with a
client's): a trio task step longer than 1 ms (``step``: its task, start, length, and the
process's CPU time in it, so that a step that waited for a CPU tells apart from one that
computed), a gc collection (``gc``: its generation and length), a twinproxy log line (``log``)
and a change of the update's step (``sync_step``). Nothing of twinproxy is changed: the wrapper
installs a trio Instrument by passing it to ``trio.run``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import time
from typing import Any

import trio

LONG_STEP = 0.001  # seconds: shorter task steps are not written


class Trace:
    def __init__(self, path: str):
        self.out = open(path, "w", buffering=1)  # noqa: SIM115 (open for the process's life)
        self.gc_start = self.gc_cpu = 0.0

    def write(self, **fields: Any) -> None:
        self.out.write(json.dumps(fields) + "\n")

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.gc_start = time.monotonic()
            self.gc_cpu = time.thread_time()
        else:
            now = time.monotonic()
            fields = {}
            if info["generation"] == 2:  # how many objects it went through (after it)
                fields["objects"] = len(gc.get_objects())
            fields["cpu_ms"] = (time.thread_time() - self.gc_cpu) * 1000
            self.write(kind="gc", t=self.gc_start, ms=(now - self.gc_start) * 1000,
                       gen=info["generation"], collected=info["collected"], **fields)


def timed(trace: Trace, owner: Any, name: str, label: str) -> None:
    """Write the wall and CPU time of every call of ``owner.name`` longer than 1 ms."""
    fn = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.monotonic(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.monotonic() - start
            if took > LONG_STEP:
                trace.write(kind="call", t=start, ms=took * 1000, name=label,
                            cpu_ms=(time.thread_time() - cpu) * 1000)

    setattr(owner, name, wrapper)


def timed_batches(trace: Trace, relay_cls: Any) -> None:
    """Each batch of ready sockets the relay's loop serves (one epoll poll's worth) longer
    than 1 ms: its length, CPU time, and whether an update's driver was in it."""
    started, done = relay_cls._batch_started, relay_cls._batch_done
    clock = {"t": 0.0, "cpu": 0.0}

    def batch_started(self: Any) -> None:
        clock["t"], clock["cpu"] = time.monotonic(), time.thread_time()
        started(self)

    def batch_done(self: Any) -> None:
        done(self)
        took = time.monotonic() - clock["t"]
        if took > LONG_STEP:
            trace.write(kind="batch", t=clock["t"], ms=took * 1000,
                        cpu_ms=(time.thread_time() - clock["cpu"]) * 1000,
                        engine=self.driver is not None)

    relay_cls._batch_started, relay_cls._batch_done = batch_started, batch_done


class LongSteps(trio.abc.Instrument):
    """Task steps longer than LONG_STEP, with their task's name and the CPU they used."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.start = 0.0
        self.cpu = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.start = time.monotonic()
        self.cpu = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.monotonic() - self.start
        if took > LONG_STEP:
            self.trace.write(kind="step", t=self.start, ms=took * 1000, task=task.name,
                             cpu_ms=(time.thread_time() - self.cpu) * 1000)


class LogLines(logging.Handler):
    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace

    def emit(self, record: logging.LogRecord) -> None:
        self.trace.write(kind="log", t=time.monotonic(), msg=record.getMessage())


def main() -> None:
    trace = Trace(sys.argv[1])
    gc.callbacks.append(trace.on_gc)

    def audit(event: str, args: tuple) -> None:
        if event == "import":  # a module imported while the proxy runs: its start
            trace.write(kind="import", t=time.monotonic(), module=args[0])

    sys.addaudithook(audit)
    from twinproxy import cli, lifecycle, service
    from twinproxy.protocols.redis import commands
    from twinproxy.relay import driver, relay
    from twinproxy.statesync import control

    timed_batches(trace, relay.Relay)
    for owner, name in ((driver.UpdateDriver, "prepare"), (driver.UpdateDriver, "begin"),
                        (driver.UpdateDriver, "feed"), (driver.UpdateDriver, "__init__"),
                        (control.ServerControl, "__init__")):
        timed(trace, owner, name, f"{owner.__name__}.{name}")
    for cls in vars(lifecycle).values():
        if isinstance(cls, type) and "_new_engine" in vars(cls):
            timed(trace, cls, "_new_engine", "Update._new_engine")
    from twinproxy.statesync import redis_fork
    with_canonical = redis_fork.CODEC
    with contextlib.suppress(AttributeError):
        timed(trace, with_canonical, "canonical", "CODEC.canonical")
    parse = commands.CommandTable.from_command_reply.__func__
    timed_parse = {}

    def from_reply(cls: Any, reply: Any) -> Any:
        return timed_parse["fn"](cls, reply)

    timed_parse["fn"] = parse
    holder = type("Holder", (), {"fn": staticmethod(parse)})
    timed(trace, holder, "fn", "CommandTable.from_command_reply")
    timed_parse["fn"] = holder.fn
    commands.CommandTable.from_command_reply = classmethod(from_reply)

    # The update's step, as the status shows it: timed where it is set.
    def set_step(self: Any, value: Any) -> None:
        self.__dict__["sync_step"] = value
        trace.write(kind="sync_step", t=time.monotonic(), step=value[2])

    def get_step(self: Any) -> Any:
        return self.__dict__["sync_step"]

    for cls in vars(lifecycle).values():
        if isinstance(cls, type) and "_syncing" in vars(cls):
            cls.sync_step = property(get_step, set_step)  # type: ignore[attr-defined]
            enter = cls._enter

            def traced_enter(self: Any, state: str, enter: Any = enter) -> None:
                trace.write(kind="state", t=time.monotonic(), state=state)
                enter(self, state)

            cls._enter = traced_enter  # type: ignore[attr-defined]
    run = trio.run

    def traced_run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("instruments", [LongSteps(trace)])
        return run(fn, *args, **kwargs)

    setup = service.setup_logging

    def traced_setup(*args: Any, **kwargs: Any) -> None:
        setup(*args, **kwargs)
        logging.getLogger("twinproxy").addHandler(LogLines(trace))

    service.trio.run = traced_run  # type: ignore[attr-defined]
    service.setup_logging = traced_setup  # type: ignore[assignment]
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    cli.main()


if __name__ == "__main__":
    main()
