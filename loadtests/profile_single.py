"""Where a SINGLE-mode request's time goes under memcslap: twinproxy against HAProxy, per request.

    python loadtests/profile_single.py [--rounds 3] [--requests 60000] [--clients 50]
                                       [--baseline OTHER_CHECKOUT/src] [--perf]
                                       [--report FILE]

The same run as ``bench_matrix.py --memcached`` (memcslap ``--test=set`` then ``--test=get``,
``--concurrency CLIENTS``, against memcached 1.6 directly, HAProxy 2.6 and ``twinproxy serve`` in
SINGLE mode, rounds interleaved), with what the matrix leaves out, each per request (set and get
together), median of the rounds:

- the proxy's user and system time apart (``/proc/PID/stat``, all its threads);
- its voluntary and involuntary context switches (``/proc/PID/task/*/status``), and the share
  of the run's wall time its threads ran and waited on a run queue, preempted or woken but not
  yet on a core (``/proc/PID/task/*/schedstat``; HAProxy's two threads add up, to 200%);
- the CPU that memcached and memcslap spent (so a proxy that makes *them* work more shows), and
  the share of the two cores left idle during the run (``/proc/stat``): a throughput below
  HAProxy's with the cores not full is waiting, not work;
- with ``--perf``: ``perf stat`` on the proxy for each run, its system calls per request
  (``recvfrom``, ``sendto``, ``epoll_wait``, ``epoll_ctl`` and all of them together).

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
from pathlib import Path

from bench_matrix import memcslap
from common import haproxy_process, machine, median, memcached, publish, rps, twinproxy

TICK = os.sysconf("SC_CLK_TCK")
PERF_EVENTS = {
    "syscalls:sys_enter_recvfrom": "recvfrom",
    "syscalls:sys_enter_sendto": "sendto",
    "syscalls:sys_enter_epoll_wait": "epoll_wait",
    "syscalls:sys_enter_epoll_ctl": "epoll_ctl",
    "raw_syscalls:sys_enter": "all calls",
}
# The columns of the other processes (memcached, memcslap), per request, from perf stat.
OTHERS = {"context-switches": "cs", "all calls": "calls"}


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


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def memcached_pid(port: int) -> int:
    """The memcached listening on ``port`` (started by common.memcached)."""
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


@contextlib.contextmanager
def perf_stat(pid: int, into: dict[str, float]):
    """``perf stat`` on ``pid`` (all its threads) while the block runs; its counts into
    ``into``."""
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as out:
        proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out.name, "-e", EVENTS,
                                 "-p", str(pid)], stderr=subprocess.DEVNULL)
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


def memcslap_perf(port: int, clients: int, requests: int, into: dict[str, float]
                  ) -> dict[str, dict[str, float]]:
    """bench_matrix's memcslap run, each test under ``perf stat`` (its counts into ``into``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as out:
        prefix = ["perf", "stat", "-x", ",", "-o", out.name, "--append", "-e", EVENTS, "--"]
        result = memcslap(port, clients, requests, prefix, probe=False)
        read_perf(out.read(), into)
    return result


def run(port: int, pid: int | None, mc_pid: int, clients: int, requests: int,
        perf: bool) -> dict[str, float]:
    """One memcslap set + get run against ``port``; the figures per request."""
    counts: dict[str, float] = {}
    mc_counts: dict[str, float] = {}
    slap_counts: dict[str, float] = {}
    before = (times(pid), switches(pid), schedstat(pid)) if pid else None
    mc_before = sum(times(mc_pid))
    kids = children_cpu()
    idle, total = idle_ticks()
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if perf:
            if pid:
                stack.enter_context(perf_stat(pid, counts))
            stack.enter_context(perf_stat(mc_pid, mc_counts))
            result = memcslap_perf(port, clients, requests, slap_counts)
        else:
            result = memcslap(port, clients, requests, probe=False)
    idle2, total2 = idle_ticks()
    wall = time.monotonic() - start
    n = requests // clients * clients * len(result)
    out = {"rps": rps(result), "memcached us": (sum(times(mc_pid)) - mc_before) / n * 1e6,
           "memcslap us": (children_cpu() - kids) / n * 1e6,
           "idle %": 100 * (idle2 - idle) / max(1, total2 - total)}
    for who, got in (("memcached", mc_counts), ("memcslap", slap_counts)):
        for event, column in OTHERS.items():
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
           "run queue %", "memcached us",
           "memcslap us", "idle %", "recvfrom", "sendto", "epoll_wait", "epoll_ctl",
           "all calls", "memcached cs", "memcached calls", "memcslap cs", "memcslap calls"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    parser.add_argument("--perf", action="store_true", help="count system calls (perf stat)")
    parser.add_argument("--no-direct", action="store_true", help="leave out memcached alone")
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    figures: dict[str, list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(memcached())
        mc_pid = memcached_pid(upstream)
        targets: dict[str, tuple[int, int | None]] = {}
        if not args.no_direct:
            targets["direct"] = (upstream, None)
        port, proc = stack.enter_context(haproxy_process(upstream, "memcache"))
        targets["HAProxy"] = (port, proc.pid)
        port, proc = stack.enter_context(twinproxy(upstream, protocol="memcache"))
        targets["twinproxy"] = (port, proc.pid)
        if args.baseline:
            port, proc = stack.enter_context(twinproxy(upstream, src=args.baseline,
                                                       protocol="memcache"))
            targets["baseline"] = (port, proc.pid)
        for _ in range(args.rounds):
            for name, (port, pid) in targets.items():
                figures.setdefault(name, []).append(
                    run(port, pid, mc_pid, args.clients, args.requests, args.perf))
    load = os.getloadavg()[0]
    columns = [c for c in COLUMNS if any(c in f for runs in figures.values() for f in runs)]
    lines = [f"memcslap --test=set,get --concurrency={args.clients} -n {args.requests}, "
             f"median of {args.rounds} interleaved rounds, per request (set and get together); "
             f"load average {load:.1f} at the end ({machine()})", "",
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
