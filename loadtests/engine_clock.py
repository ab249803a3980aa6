"""``twinproxy serve`` with its update engine's CPU time counted, for loadtests/cpu_split.py.

    python loadtests/engine_clock.py TOTALS.json serve CONFIG

Every event the relay hands the engine (``Engine.handle``) is timed with the thread's CPU clock,
and the totals per kind of event (nanoseconds, and how many) are written to TOTALS.json when
the process gets SIGUSR1. What the engine costs in the proxy, with its sockets and its loop
around it, can differ from what ``bench_engine.py`` measures of it alone: caches are colder, and
batches are as the load makes them. Each event costs two more readings of the clock (a system
call here, about half a microsecond), which the totals include; cpu_split.py takes them out.
Nothing of twinproxy is changed: the wrapper replaces the method on the class before it serves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any


def main() -> None:
    out = sys.argv[1]
    from twinproxy import cli
    from twinproxy.engine.engine import Engine

    clock = time.thread_time_ns
    spent: dict[str, int] = {}
    events: dict[str, int] = {}
    handle = Engine.handle

    def counted(self: Engine, event: Any) -> Any:
        start = clock()
        try:
            return handle(self, event)
        finally:
            kind = type(event).__name__
            spent[kind] = spent.get(kind, 0) + clock() - start
            events[kind] = events.get(kind, 0) + 1

    def write(*_: Any) -> None:
        with open(out + ".new", "w") as f:
            json.dump({"ns": spent, "events": events}, f)
        os.replace(out + ".new", out)

    Engine.handle = counted  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, write)
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    cli.main()


if __name__ == "__main__":
    main()
