"""The proxy's CPU per request, split: the kernel's part (system time) and Python's (user time),
and during an update the engine's part of it, for each mode and each test on its own.

    python loadtests/cpu_split.py [--memcached] [--size 3] [--clients 50] [--requests 100000]
                                  [--rounds 3] [--password] [--db N] [--ex SECONDS]
                                  [--src OTHER/src] [--report FILE]

Three serves of this checkout at once, the same load run on each in turn, the order turned
each round (the machine's speed drifts by more than a few percent between minutes):

* SINGLE mode;
* MVE: an update held there (``bench_matrix.HELD``), its clients' reads travelling as runs on
  the shared connections;
* MVE request by request: the same with ``[update] shared_after`` past any count, so that
  every request goes alone on its client's own connections, ordered and compared one by one.
  That is the path of a client whose replies were large (``LeaderFlow._answered`` takes it off
  the shared connection) and of a new client's first request (engine/first_read.py): what
  100 KB values cost in MVE is mostly this path's.

The load: memcslap's set and get tests (``--memcached``; its values are 1 to 5 KB, and its get
test first stores the keys it reads, counted here with it), or redis-benchmark's SET and GET at
``-P 1`` with ``-d SIZE``; with ``--password``, against Redis servers that want one
(``requirepass``, and the versions' ``password`` for the proxy's own connections), each client
logging in first; with ``--db``, each client SELECTs that database first; with ``--ex``, the
SET test's SETs say ``EX SECONDS``, as a cache's do (``SET key:__rand_int__ VALUE EX SECONDS``,
redis-benchmark's own SET but for the expiry).

Printed, and written to ``--report``: per mode and test, the medians of requests/s, of the
proxy's user and system CPU time per request (/proc), and in MVE the engine's CPU time per
request by event (the serves run under loadtests/engine_clock.py; the clock's own cost is taken
out). Both MVE serves must still be in MVE with no divergence at the end, or their figures are
not MVE's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_matrix import HELD, held_config
from bench_mve import REDIS7, config, enter_mve, leave_mve, serve_process, status
from common import machine, redis_benchmark, user_system

MODES = ("SINGLE", "MVE", "MVE request by request")
ALONE = "shared_after = 1000000000"  # (no client has that many small replies)
PASSWORD = "cpu-split"
WITH_PASSWORD = REDIS7.replace('"--dir", "{dir}"]', f'"--dir", "{{dir}}", "--requirepass", '
                               f'"{PASSWORD}"]\npassword = "{PASSWORD}"')


def clock_cost() -> float:
    """Nanoseconds two readings of the thread's CPU clock cost (engine_clock.py's per event)."""
    clock = time.thread_time_ns
    start = time.perf_counter_ns()
    for _ in range(100_000):
        clock()
        clock()
    return (time.perf_counter_ns() - start) / 100_000


def engine_totals(proc: subprocess.Popen, path: Path) -> dict:
    """The engine's totals so far, as engine_clock.py writes them on SIGUSR1."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not path.exists() or path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise RuntimeError("the serve did not write its engine's totals")
        time.sleep(0.01)
    return json.loads(path.read_text())


def memcslap_test(port: int, clients: int, requests: int, test: str) -> tuple[float, int]:
    """One memcslap test: (its requests/s, every request it made, its get test's stores too)."""
    each = max(1, requests // clients)
    out = subprocess.run(["memcslap", f"--servers=127.0.0.1:{port}", f"--concurrency={clients}",
                          f"--execute-number={each}", f"--test={test}"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    found = re.search(rf"Time to {test}\s+(\d+) keys.*?([0-9.]+) seconds", out)
    if found is None or "Fatal error" in out:
        raise RuntimeError(f"memcslap {test}: {out}")
    stored = re.search(r"Time to set\s+(\d+) keys", out) if test == "get" else None
    return int(found[1]) / float(found[2]), int(found[1]) + (int(stored[1]) if stored else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memcached", action="store_true",
                        help="memcached under memcslap instead of Redis under redis-benchmark")
    parser.add_argument("--size", type=int, default=3, help="redis-benchmark's -d")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=100_000, help="per test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--password", action="store_true",
                        help="Redis servers that want a password, clients that log in")
    parser.add_argument("--db", type=int, default=0, help="the database clients SELECT")
    parser.add_argument("--ex", type=int, default=0, help="SETs expire in this many seconds")
    parser.add_argument("--src", help="another checkout's src directory to measure instead")
    parser.add_argument("--report", help="also write the table to this markdown file")
    args = parser.parse_args()
    if args.memcached and (args.password or args.db):
        parser.error("--password and --db are Redis's: memcslap has neither")
    if args.memcached and args.ex:
        parser.error("--ex is Redis's: memcslap's stores have no expiry")
    protocol = "memcache" if args.memcached else "redis"
    password = PASSWORD if args.password else None
    tests = ("set", "get")
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    per_event = clock_cost()
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        serves = {}
        for i, mode in enumerate(MODES):
            (Path(d) / str(i)).mkdir()
            update = ALONE if i == 2 else ""
            cfg = config(Path(d) / str(i), f"{HELD}\n{update}", server=WITH_PASSWORD) \
                if args.password else held_config(Path(d) / str(i), protocol, update)
            totals = Path(d) / str(i) / "engine.json"
            wrapper = [str(Path(__file__).with_name("engine_clock.py")), str(totals)]
            port, proc = stack.enter_context(serve_process(cfg, args.src, wrapper=wrapper))
            if mode != "SINGLE":
                enter_mve(cfg, args.src)
                stack.callback(leave_mve, cfg, args.src)
            serves[mode] = (cfg, port, proc, totals)
        if not args.memcached:  # (GET reads what SET stored: every serve has its keys first)
            for _, port, _, _ in serves.values():
                redis_benchmark(port, 1, clients=args.clients, requests=args.requests // 4,
                                size=args.size, tests="set", password=password, db=args.db)
        for round_ in range(args.rounds):
            order = MODES if round_ % 2 == 0 else MODES[::-1]
            for mode in order:
                cfg, port, proc, totals = serves[mode]
                for test in tests:
                    engine = engine_totals(proc, totals)
                    user, system = user_system(proc.pid)
                    if args.memcached:
                        rate, made = memcslap_test(port, args.clients, args.requests, test)
                    else:
                        command = ["SET", "key:__rand_int__", "x" * args.size, "EX",
                                   str(args.ex)] if args.ex and test == "set" else None
                        result = redis_benchmark(port, 1, clients=args.clients,
                                                 requests=args.requests, size=args.size,
                                                 tests=test, password=password, db=args.db,
                                                 command=command)
                        [rate] = [r["rps"] for r in result.values()]
                        made = args.requests
                    user_after, system_after = user_system(proc.pid)
                    after = engine_totals(proc, totals)
                    got = {"rps": rate, "user": (user_after - user) / made * 1e6,
                           "system": (system_after - system) / made * 1e6}
                    if mode != "SINGLE":
                        for kind, ns in after["ns"].items():
                            events = after["events"][kind] - engine["events"].get(kind, 0)
                            spent = ns - engine["ns"].get(kind, 0) - events * per_event
                            got[kind] = spent / made / 1000
                    figures.setdefault((mode, test), []).append(got)
                    print(f"  {mode}, {test}: {rate:,.0f} requests/s, user "
                          f"{got['user']:.1f} system {got['system']:.1f} us per request",
                          flush=True)
        for mode in MODES[1:]:
            st = status(serves[mode][0], args.src)
            if st["state"] != "mve" or st["divergences"]:
                raise RuntimeError(f"{mode}: not held in MVE with no divergence: {st}")
    load = ("memcslap --concurrency={c}" if args.memcached else
            "redis-benchmark -c {c} -P 1 -d {s}").format(c=args.clients, s=args.size) + \
        (" -a PASSWORD (requirepass)" if args.password else "") + \
        (f" --dbnum {args.db}" if args.db else "") + \
        (f", SETs with EX {args.ex}" if args.ex else "")
    lines = [f"{load}, {args.requests:,} requests per test, medians of {args.rounds} rounds "
             f"({machine()}; load average {os.getloadavg()[0]:.1f} at the end). The proxy's CPU "
             "per request, in microseconds: user and system time; the engine's (Engine.handle, "
             "a part of the user time) by event: Run (a client's read), Data (replies), Flush "
             "(a batch's end), Requests (requests framed one by one), the rest together.", "",
             "| mode | test | requests/s | user | system | engine | Run | Data | Flush | "
             "Requests | other events |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mode, test), runs in figures.items():
        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r.get(key, 0.0) for r in runs)
        kinds = {k for r in runs for k in r} - {"rps", "user", "system"}
        named = ("Run", "Data", "Flush", "Requests")
        engine = sum(median(k) for k in kinds)
        other = engine - sum(median(k) for k in named)
        cells = [f"{median(k):.1f}" for k in named] if kinds else ["-"] * 4
        lines.append(f"| {mode} | {test} | {median('rps'):,.0f} | {median('user'):.1f} | "
                     f"{median('system'):.1f} | {f'{engine:.1f}' if kinds else '-'} | "
                     f"{' | '.join(cells)} | {f'{other:.1f}' if kinds else '-'} |")
    print("\n".join(lines))
    if args.report:
        Path(args.report).write_text(f"`python loadtests/{Path(sys.argv[0]).name} "
                                     f"{' '.join(sys.argv[1:])}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
