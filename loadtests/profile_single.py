"""Where a request's time goes under memcslap (or redis-benchmark): twinproxy against HAProxy.

    python loadtests/profile_single.py [--rounds 3] [--requests 60000] [--clients 50]
                                       [--baseline OTHER_CHECKOUT/src] [--perf] [--mve]
                                       [--redis] [--size 100] [--report FILE]

The same run as ``bench_matrix.py --memcached`` (memcslap ``--test=set`` then ``--test=get``,
``--concurrency CLIENTS``, against memcached 1.6 directly, HAProxy 2.6 and ``twinproxy serve`` in
SINGLE mode, rounds interleaved), with what the matrix leaves out, each per request (set and get
together), median of the rounds. ``--mve`` adds the matrix's ``twinproxy MVE``: a ``serve``
managing two versions, held in MVE; "server" is then both of them. ``--redis``: Redis 7.0 under
``redis-benchmark -t set,get -P 1 -d SIZE`` instead, so that the two protocols' figures, and the
two load tools', can be set side by side. The figures:

- the proxy's user and system time apart (``/proc/PID/stat``, all its threads);
- its voluntary and involuntary context switches (``/proc/PID/task/*/status``), and the share
  of the run's wall time its threads ran and waited on a run queue, preempted or woken but not
  yet on a core (``/proc/PID/task/*/schedstat``; HAProxy's two threads add up, to 200%);
- the CPU that the server and the client (the load tool) spent, so a proxy that makes *them*
  work more shows, and the client's context switches: memcslap runs a thread per connection,
  so each reply wakes one, where redis-benchmark's one event loop takes a batch of them at a
  time; and the share of the two cores left idle during the run (``/proc/stat``): a throughput
  below HAProxy's with the cores not full is waiting, not work;
- with ``--perf``: ``perf stat`` on the proxy for each run, its system calls per request
  (``recvfrom``, ``sendto``, ``epoll_wait``, ``epoll_ctl`` and all of them together), and the
  server's and the client's context switches and system calls.

Why: the matrix's CPU per request adds user and system time, and cannot tell a proxy that costs
more from one that waits more (loadtests/reports/profile.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_matrix import held_in_mve, memcslap
from bench_mve import status
from common import (
    children,
    haproxy_process,
    machine,
    median,
    memcached,
    publish,
    redis_benchmark,
    redis_process,
    rps,
    servers_cpu,
    twinproxy,
)

TICK = os.sysconf("SC_CLK_TCK")
PERF_EVENTS = {
    "syscalls:sys_enter_recvfrom": "recvfrom",
    "syscalls:sys_enter_sendto": "sendto",
    "syscalls:sys_enter_epoll_wait": "epoll_wait",
    "syscalls:sys_enter_epoll_ctl": "epoll_ctl",
    "raw_syscalls:sys_enter": "all calls",
}
# The columns of the other processes (the server, the client), per request, from perf stat.
OTHERS = {"context-switches": "cs", "all calls": "calls"}

# A load: (port, a command to run the tool under) -> its figures (as redis_benchmark's), and
# the number of requests it made.
Load = Callable[[int, list[str] | None], tuple[dict[str, dict[str, float]], int]]


def times(pid: int) -> tuple[float, float]:
    """A process's user and system time so far, seconds (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of all of a process's threads so far."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds all of a process's threads ran, and waited on a run queue (ready to run, the
    core taken by another task), so far (``/proc/PID/task/*/schedstat``)."""
    ran = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "schedstat").read_text().split()
            ran += int(fields[0])
            waited += int(fields[1])
    return ran / 1e9, waited / 1e9


def idle_ticks() -> tuple[int, int]:
    """The machine's idle and total CPU ticks so far (/proc/stat)."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return cpu[3] + cpu[4], sum(cpu[:8])


def children_cpu() -> tuple[float, int]:
    """CPU seconds and context switches of this process's ended children (the load tool)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw + usage.ru_nivcsw


def memcached_pid(port: int) -> int:
    """The memcached listening on ``port`` (started by common.memcached)."""
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


@contextlib.contextmanager
def perf_stat(pids: list[int], into: dict[str, float]):
    """``perf stat`` on ``pids`` (all their threads, counted together) while the block runs;
    the counts into ``into``."""
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as out:
        proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out.name, "-e", EVENTS,
                                 "-p", ",".join(map(str, pids))], stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # (perf attaches)
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        read_perf(out.read(), into)


EVENTS = ",".join(["task-clock", "context-switches", *PERF_EVENTS])


def read_perf(text: str, into: dict[str, float]) -> None:
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            name = PERF_EVENTS.get(parts[2], parts[2])
            into[name] = into.get(name, 0.0) + float(parts[0])


def load_perf(load: Load, port: int, into: dict[str, float]
              ) -> tuple[dict[str, dict[str, float]], int]:
    """The load tool's run under ``perf stat`` (its counts into ``into``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as out:
        prefix = ["perf", "stat", "-x", ",", "-o", out.name, "--append", "-e", EVENTS, "--"]
        got = load(port, prefix)
        read_perf(out.read(), into)
    return got


def run(load: Load, port: int, pid: int | None, servers: list[int], perf: bool
        ) -> dict[str, float]:
    """One ``load`` run against ``port``, whose requests the ``servers`` run; the figures per
    request."""
    counts: dict[str, float] = {}
    server_counts: dict[str, float] = {}
    client_counts: dict[str, float] = {}
    before = (times(pid), switches(pid), schedstat(pid)) if pid else None
    server_before = servers_cpu(servers)
    client_before = children_cpu()
    idle, total = idle_ticks()
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if perf:
            if pid:
                stack.enter_context(perf_stat([pid], counts))
            stack.enter_context(perf_stat(servers, server_counts))
            result, n = load_perf(load, port, client_counts)
        else:
            result, n = load(port, None)
    idle2, total2 = idle_ticks()
    wall = time.monotonic() - start
    client_after = children_cpu()
    out = {"rps": rps(result), "server us": (servers_cpu(servers) - server_before) / n * 1e6,
           "client us": (client_after[0] - client_before[0]) / n * 1e6,
           "client cs": (client_after[1] - client_before[1]) / n,
           "idle %": 100 * (idle2 - idle) / max(1, total2 - total)}
    for who, got in (("server", server_counts), ("client", client_counts)):
        for event, column in OTHERS.items():  # (the client's switches: perf's, where it ran)
            if event in got:
                out[f"{who} {column}"] = got[event] / n
    if before is not None:
        (user, system), (vol, invol) = times(pid), switches(pid)
        ran, waited = schedstat(pid)
        out["ran %"] = 100 * (ran - before[2][0]) / wall
        out["run queue %"] = 100 * (waited - before[2][1]) / wall
        out["user us"] = (user - before[0][0]) / n * 1e6
        out["system us"] = (system - before[0][1]) / n * 1e6
        out["voluntary cs"] = (vol - before[1][0]) / n
        out["involuntary cs"] = (invol - before[1][1]) / n
        for name in ("recvfrom", "sendto", "epoll_wait", "epoll_ctl", "all calls"):
            if name in counts:
                out[name] = counts[name] / n
        if "task-clock" in counts:
            out["task-clock us"] = counts["task-clock"] * 1e3 / n
    return out


COLUMNS = ["rps", "user us", "system us", "voluntary cs", "involuntary cs", "ran %",
           "run queue %", "server us", "client us", "client cs", "idle %", "recvfrom", "sendto",
           "epoll_wait", "epoll_ctl", "all calls", "server cs", "server calls", "client calls"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    parser.add_argument("--perf", action="store_true", help="count system calls (perf stat)")
    parser.add_argument("--no-direct", action="store_true", help="leave out the server alone")
    parser.add_argument("--mve", action="store_true", help="also twinproxy held in MVE")
    parser.add_argument("--redis", action="store_true",
                        help="Redis under redis-benchmark -P 1 instead of memcached")
    parser.add_argument("--size", type=int, default=100, help="redis-benchmark's -d")
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    protocol = "redis" if args.redis else "memcache"
    figures: dict[str, list[dict[str, float]]] = {}

    def load(port: int, prefix: list[str] | None) -> tuple[dict[str, dict[str, float]], int]:
        if args.redis:
            got = redis_benchmark(port, 1, clients=args.clients, requests=args.requests,
                                  size=args.size, prefix=prefix)
            return got, args.requests * len(got)
        got = memcslap(port, args.clients, args.requests, prefix, probe=False)
        return got, args.requests // args.clients * args.clients * len(got)

    with contextlib.ExitStack() as stack:
        if args.redis:
            upstream, server = stack.enter_context(redis_process())
            alone = [server.pid]
        else:
            upstream = stack.enter_context(memcached())
            alone = [memcached_pid(upstream)]
        # target -> (port, the proxy's pid, the server processes behind it)
        targets: dict[str, tuple[int, int | None, list[int]]] = {}
        if not args.no_direct:
            targets["direct"] = (upstream, None, alone)
        port, proc = stack.enter_context(haproxy_process(upstream, protocol))
        targets["HAProxy"] = (port, proc.pid, alone)
        port, proc = stack.enter_context(twinproxy(upstream, protocol=protocol))
        targets["twinproxy"] = (port, proc.pid, alone)
        if args.baseline:
            port, proc = stack.enter_context(twinproxy(upstream, src=args.baseline,
                                                       protocol=protocol))
            targets["baseline"] = (port, proc.pid, alone)
        if args.mve:
            port, proc, cfg = stack.enter_context(held_in_mve(protocol))
            # (their keepers sleep: only the two servers count)
            binary = "redis-server" if args.redis else "memcached"
            versions = [pid for pid in children(proc.pid)
                        if Path(f"/proc/{pid}/comm").read_text().strip() == binary]
            targets["twinproxy MVE"] = (port, proc.pid, versions)
        for _ in range(args.rounds):
            for name, (port, pid, servers) in targets.items():
                figures.setdefault(name, []).append(run(load, port, pid, servers, args.perf))
        if args.mve:  # still in MVE at the end: a rollback would have measured SINGLE
            st = status(cfg)
            assert st["state"] == "mve" and st["divergences"] == 0, st
    columns = [c for c in COLUMNS if any(c in f for runs in figures.values() for f in runs)]
    tool = (f"redis-benchmark -t set,get -P 1 -d {args.size} -c {args.clients}" if args.redis
            else f"memcslap --test=set,get --concurrency={args.clients}")
    lines = [f"{tool} -n {args.requests}, median of {args.rounds} interleaved rounds, per "
             f"request (set and get together); server: {'Redis' if args.redis else 'memcached'}"
             f"{' (both versions in MVE)' if args.mve else ''}, client: the load tool; load "
             f"average {os.getloadavg()[0]:.1f} at the end ({machine()})", "",
             "| target | " + " | ".join(columns) + " | /HAProxy |",
             "|---" * (len(columns) + 2) + "|"]
    hap = median([f["rps"] for f in figures["HAProxy"]])
    for name, runs in figures.items():
        cells = []
        for column in columns:
            values = [f[column] for f in runs if column in f]
            if not values:
                cells.append("")
            elif column == "rps":
                cells.append(f"{median(values):,.0f}")
            else:
                cells.append(f"{median(values):.2f}")
        ratio = median([f["rps"] for f in runs]) / hap
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
