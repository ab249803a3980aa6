"""Redis benchmark matrix: direct vs HAProxy vs twemproxy vs twinproxy SINGLE vs twinproxy MVE.

    python loadtests/bench_matrix.py [--rounds 3] [--requests 200000] [--clients 50[,1000]]
                                     [--size 3[,100,102400]] [--tests set,get]
                                     [--pipelines 1,16] [--reconnect] [--resp3]
                                     [--baseline OTHER_CHECKOUT/src]
                                     [--no-mve] [--memcached | --and-memcached]
                                     [--report FILE] [--plot FILE.png]

Issue 14's whole matrix, in one command (about 15 minutes)::

    python loadtests/bench_matrix.py --clients 50,1000 --size 100,102400 --and-memcached \\
        --report loadtests/reports/matrix-grid.md --plot loadtests/reports/matrix-grid.png

``redis-benchmark -t TESTS -c CLIENTS -d SIZE`` at ``-P 1`` and ``-P 16`` against each target,
for each number of clients and each value size, rounds interleaved (every target once per
combination and pipeline depth, then again), each figure the median of the rounds:
requests/s, p50 and p99 latency (the larger of SET's and GET's), and for the proxies their CPU
time per request (user and system, from /proc) and resident memory at the end; the
servers' CPU time per request (the one Redis behind direct, HAProxy, twemproxy and SINGLE; the
two managed versions behind an MVE proxy: on 2 cores the second server's work is part of MVE's
cost); the load average before each benchmark (the range goes in the report's first line: on a
shared machine, throughput ratios beyond what the CPU per request explains are its doing). An
MVE proxy's state is checked after every benchmark run through it, so that a rollback (a lag, a
timeout) cannot pass SINGLE's figures off as MVE's. ``--reconnect``: each request on a new
connection (``redis-benchmark -k 0``, as clients without persistent connections do), so that
the CPU per request is what a new client costs each proxy. ``--resp3``: each connection starts
with ``HELLO 3`` (``redis-benchmark -3``), as redis-py 8's do; twemproxy, which does not know
HELLO, is left out.

Targets: Redis 7.0 directly; HAProxy 2.6 (TCP mode); twemproxy (Debian's ``nutcracker``);
``twinproxy serve`` in SINGLE mode; a second ``twinproxy serve`` managing two Redis 7.0
versions, held in MVE for the whole run (an update whose warm-up does not end: every request
runs on both, the follower checked against the leader); with ``--baseline``, ``twinproxy serve``
from another checkout's ``src`` in SINGLE mode, and in MVE too unless ``--no-mve`` (old and new
code in the same run).

``--memcached``: the same for memcached 1.6 with ``memcslap`` (Debian's libmemcached-tools:
``--test=set`` then ``--test=get``, ``--concurrency CLIENTS``, text protocol), against memcached
directly, HAProxy, twemproxy, ``twinproxy serve`` in SINGLE mode and a ``twinproxy serve``
managing two memcached versions held in MVE (``memcache-copy`` of an empty cache, then every
request on both); memcslap reports no latencies, so p50 and p99 are those of one more client
sending a get every 2 ms while each test runs (the larger of the set test's and the get
test's), and it sets values of its own size (it has no option for it: ``--size`` is Redis's
only). ``--and-memcached``: Redis, then memcached, in one
command and one report.

``--plot`` draws each table as bars (matplotlib, from the optional ``bench`` extra).

The machine has 2 shared cores and its absolute speed drifts: compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

from bench_mve import config as mve_config
from bench_mve import enter_mve, leave_mve, serve_process, status
from common import (
    Probe,
    children,
    cpu_seconds,
    haproxy_process,
    load,
    machine,
    median,
    memcached,
    p50,
    p99,
    publish,
    redis_benchmark,
    redis_process,
    rps,
    rss_kib,
    servers_cpu,
    twemproxy,
    twinproxy,
)

HELD = "warmup_seconds = 100000\nwarmup_requests = 0"  # an update that stays in MVE
# Managed memcached versions for MVE: CAS on (memcache-copy needs it); 1,024 MB each, where
# the memcached the other targets share has 256 (common.memcached).
MEMCACHED_VERSION = ('command = ["/usr/bin/memcached", "-p", "{port}", "-l", "127.0.0.1", '
                     '"-U", "0", "-m", "1024", "-c", "4096", "-u", "nobody"]')
MEMCACHED_RULES = '[[rules]]\nname = "stats"\ncommand = "stats"\nignore = true\n'


def held_config(d: Path, protocol: str, update: str = "") -> Path:
    """The config of a ``serve`` managing two versions of ``protocol``'s server (Redis 7.0, or
    :data:`MEMCACHED_VERSION`) whose update, once started, stays in MVE (:data:`HELD`);
    ``update``: more lines for its [update] section."""
    held = f"{HELD}\n{update}" if update else HELD
    if protocol == "memcache":
        return mve_config(d, held, "memcache", MEMCACHED_VERSION, MEMCACHED_RULES)
    return mve_config(d, held)


@contextlib.contextmanager
def held_in_mve(protocol: str, src: str | None = None, trace: Path | None = None
                ) -> Iterator[tuple[int, subprocess.Popen, Path]]:
    """A ``serve`` of :func:`held_config` brought into MVE, for the block: its port, its
    process and its config; the update is rolled back at the end (``trace``: see
    ``bench_mve.serve_process``)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = held_config(Path(d), protocol)
        with serve_process(cfg, src, trace) as (port, proc):
            enter_mve(cfg, src)
            try:
                yield port, proc, cfg
            finally:
                leave_mve(cfg, src)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000,
                        help="per test (fewer for values over 1 KB: see requests_for)")
    parser.add_argument("--clients", default="50", help="connections, comma-separated")
    parser.add_argument("--size", default="3", help="SET's value, bytes (-d), comma-separated")
    parser.add_argument("--tests", default="set,get", help="redis-benchmark's -t")
    parser.add_argument("--reconnect", action="store_true",
                        help="a new connection for each request (redis-benchmark -k 0)")
    parser.add_argument("--resp3", action="store_true",
                        help="RESP3 connections (redis-benchmark -3, redis-py 8's default)")
    parser.add_argument("--pipelines", default="1,16", help="the -P depths, comma-separated")
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    parser.add_argument("--no-mve", action="store_true", help="leave out twinproxy MVE")
    parser.add_argument("--memcached", action="store_true",
                        help="memcached with memcslap instead of Redis")
    parser.add_argument("--and-memcached", action="store_true",
                        help="Redis, then memcached with memcslap (the whole matrix)")
    parser.add_argument("--report", help="also write the tables (markdown) to this file")
    parser.add_argument("--plot", help="draw the requests/s as bars into this PNG (one per "
                        "table: -2, -3 ... before the suffix after the first)")
    args = parser.parse_args()
    if (args.reconnect or args.resp3) and args.memcached:
        parser.error("--reconnect and --resp3 are redis-benchmark's: memcslap has neither")
    clients = tuple(int(c) for c in args.clients.split(","))
    sizes = tuple(int(s) for s in args.size.split(","))
    protocols = (("memcache",) if args.memcached else
                 ("redis", "memcache") if args.and_memcached else ("redis",))
    tables: list[tuple[list[str], dict, list[str], tuple[int, ...]]] = []
    for protocol in protocols:
        combos = [(c, s) for c in clients for s in (sizes if protocol == "redis" else (0,))]
        tables += matrix(protocol, combos, args)
    publish("\n\n".join("\n".join(lines) for lines, *_ in tables), args.report)
    if args.plot:
        path = Path(args.plot)
        for i, (lines, table, names, pipelines) in enumerate(tables):
            name = path if i == 0 else path.with_name(f"{path.stem}-{i + 1}{path.suffix}")
            plot(table, names, pipelines, str(name), lines[0])


def requests_for(requests: int, size: int) -> int:
    """Requests per test for values of ``size`` bytes: ``requests`` up to 1 KB; for larger
    values as many as move about 1 GB (at least 1,000), so that 100 KB values take seconds,
    not minutes, per run."""
    return requests if size <= 1024 else max(1000, min(requests, 10**9 // size))


def matrix(protocol: str, combos: list[tuple[int, int]], args: argparse.Namespace
           ) -> list[tuple[list[str], dict, list[str], tuple[int, ...]]]:
    """Every target against one upstream of ``protocol``, for each (clients, value size) of
    ``combos`` and each pipeline depth, the rounds interleaved over all of them; a table (its
    lines, figures, targets and depths) per combination."""
    memcache = protocol == "memcache"
    pipelines = (1,) if memcache else tuple(int(p) for p in args.pipelines.split(","))
    # (clients, size, target, pipeline) -> [(rps, p50 ms, p99 ms, cpu us per request,
    # servers' cpu us)]
    figures: dict[tuple[int, int, str, int], list[tuple[float, ...]]] = {}
    memory: dict[str, float] = {}
    loads: list[float] = []
    # The servers each target's requests run on: the one upstream, or an MVE proxy's two
    # managed versions (their CPU is MVE's cost too: two servers do the work on 2 cores).
    servers: dict[str, list[int]] = {}
    mves: dict[str, tuple[Path, str | None]] = {}
    with contextlib.ExitStack() as stack:
        if memcache:
            upstream, upstream_pid = stack.enter_context(memcached()), None
        else:
            upstream, server = stack.enter_context(redis_process())
            upstream_pid = server.pid
        targets: dict[str, tuple[int, int | None]] = {"direct": (upstream, None)}
        port, proc = stack.enter_context(haproxy_process(upstream, protocol))
        targets["HAProxy"] = (port, proc.pid)
        if not args.resp3:  # (twemproxy does not know HELLO: RESP2 only)
            port, proc = stack.enter_context(twemproxy(upstream, protocol))
            targets["twemproxy"] = (port, proc.pid)
        port, proc = stack.enter_context(twinproxy(upstream, protocol=protocol))
        targets["twinproxy SINGLE"] = (port, proc.pid)
        if args.baseline:
            port, proc = stack.enter_context(twinproxy(upstream, src=args.baseline,
                                                       protocol=protocol))
            targets["baseline SINGLE"] = (port, proc.pid)
        if not args.no_mve:
            for name, src in (("twinproxy MVE", None), ("baseline MVE", args.baseline)):
                if name == "baseline MVE" and not src:
                    continue
                port, proc, cfg = stack.enter_context(held_in_mve(protocol, src))
                targets[name] = (port, proc.pid)
                servers[name] = children(proc.pid)
                mves[name] = (cfg, src)
        for _ in range(args.rounds):
            for clients, size in combos:
                requests = requests_for(args.requests, size)
                for pipeline in pipelines:
                    for name, (port, pid) in targets.items():
                        loads.append(load())
                        pids = servers.get(name, [upstream_pid] if upstream_pid else [])
                        before = cpu_seconds(pid) if pid else 0.0
                        server = servers_cpu(pids)
                        if memcache:
                            try:
                                result = memcslap(port, clients, requests)
                            except RuntimeError as exc:
                                raise RuntimeError(f"{name}, {clients} clients: {exc}") from exc
                        else:
                            result = redis_benchmark(port, pipeline, clients=clients,
                                                     requests=requests, size=size,
                                                     tests=args.tests,
                                                     reconnect=args.reconnect,
                                                     resp3=args.resp3)
                        cpu = (cpu_seconds(pid) - before) if pid else 0.0
                        n = requests * len(result)
                        server = (servers_cpu(pids) - server) / n * 1e6
                        if name in mves:  # still in MVE: a rollback would measure SINGLE
                            st = status(*mves[name])
                            assert st["state"] == "mve" and st["divergences"] == 0, (name, st)
                        figures.setdefault((clients, size, name, pipeline), []).append(
                            (rps(result), p50(result), p99(result), cpu / n * 1e6, server))
        for name, (_, pid) in targets.items():
            if pid:
                memory[name] = rss_kib(pid) / 1024

    names = list(targets)
    out = []
    for clients, size in combos:
        requests = requests_for(args.requests, size)
        tool = (f"memcslap --test=set,get --concurrency={clients}" if memcache else
                f"redis-benchmark -t {args.tests} -c {clients} -d {size}"
                + (" -k 0" if args.reconnect else "") + (" -3" if args.resp3 else ""))
        lines = [f"{tool} -n {requests}, median of {args.rounds} interleaved rounds "
                 f"({machine()}; load average {min(loads):.1f} to {max(loads):.1f}). CPU "
                 "us/request: the proxy's, and the servers' behind it (two in MVE); RSS at "
                 "the end of the whole run" + ("; p50 and p99: one more client's gets, one "
                                               "every 2 ms, beside memcslap's" if memcache
                                               else ""), ""]
        table = {(name, pipeline): tuple(median([f[i] for f in figures[(clients, size, name,
                                                                          pipeline)]])
                                         for i in range(5))
                 for pipeline in pipelines for name in names}
        lines += table_lines(table, names, pipelines, memory, args)
        out.append((lines, table, names, pipelines))
    return out


def table_lines(table: dict[tuple[str, int], tuple[float, ...]], names: list[str],
                pipelines: tuple[int, ...], memory: dict[str, float],
                args: argparse.Namespace) -> list[str]:
    """The figures of one (clients, size), then the ratios issue 14 asks about."""
    lines = ["| pipeline | target | req/s | /direct | /HAProxy | p50 ms | p99 ms "
             "| CPU us/request | servers' CPU us/request | RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for pipeline in pipelines:
        direct, hap = table[("direct", pipeline)][0], table[("HAProxy", pipeline)][0]
        for name in names:
            r, l50, l99, cpu, server = table[(name, pipeline)]
            lines.append(f"| -P {pipeline} | {name} | {r:,.0f} | {r / direct:.2f} | "
                         f"{r / hap:.2f} | {_ms(l50)} | {_ms(l99)} | "
                         f"{'' if name == 'direct' else f'{cpu:.2f}'} | "
                         f"{f'{server:.2f}' if server else ''} | "
                         f"{f'{memory[name]:.1f}' if name in memory else ''} |")
    lines += ["", "| pipeline | twinproxy/HAProxy | twinproxy/twemproxy"
              + (" | MVE/SINGLE | MVE p99/SINGLE p99" if not args.no_mve else "")
              + (" | twinproxy/baseline" if args.baseline else "")
              + (" | baseline MVE/SINGLE" if args.baseline and not args.no_mve else "") + " |",
              "|---" * (3 + 2 * (not args.no_mve) + bool(args.baseline)
                        + bool(args.baseline and not args.no_mve)) + "|"]
    for pipeline in pipelines:
        t = table[("twinproxy SINGLE", pipeline)]
        row = [f"-P {pipeline}", f"{t[0] / table[('HAProxy', pipeline)][0]:.2f}",
               f"{t[0] / table[('twemproxy', pipeline)][0]:.2f}"
               if ("twemproxy", pipeline) in table else "-"]
        if not args.no_mve:
            m = table[("twinproxy MVE", pipeline)]
            row += [f"{m[0] / t[0]:.2f}", f"{m[2] / t[2]:.2f}" if t[2] else ""]
        if args.baseline:
            b = table[("baseline SINGLE", pipeline)]
            row.append(f"{t[0] / b[0]:.2f}")
            if not args.no_mve:
                row.append(f"{table[('baseline MVE', pipeline)][0] / b[0]:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _ms(latency: float) -> str:
    return f"{latency:.3f}" if latency else ""


# One get of a key nobody sets, every 2 ms beside memcslap's load (about 2% more requests):
# memcslap reports no latencies.
PROBE_GET = {"request": b"get twinproxy-probe\r\n", "reply": b"END\r\n", "interval": 0.002}


def memcslap(port: int, clients: int, requests: int, prefix: list[str] | None = None,
             probe: bool = True) -> dict[str, dict[str, float]]:
    """memcslap's set then get test (``requests`` each, spread over ``clients`` connections),
    as redis_benchmark's figures: requests/s, and since memcslap gives no latencies, those of
    one more client's gets while each test runs (:data:`PROBE_GET`; 0 without ``probe``).
    ``prefix``: a command to run memcslap under (``perf stat ... --``).

    Raises:
        RuntimeError: a client saw an error, or the set test stored fewer keys than asked
            (memcslap goes on after an error, and counts only the keys that worked: a proxy
            that made clients time out would look merely slower).
    """
    out: dict[str, dict[str, float]] = {}
    each = max(1, requests // clients)
    for test in ("set", "get"):
        timing = Probe(port, **PROBE_GET) if probe else None
        with contextlib.ExitStack() as stack:
            if timing is not None:
                timing.start()
                stack.callback(timing.stop)
            run = subprocess.run(
                [*(prefix or []), "memcslap", f"--servers=127.0.0.1:{port}",
                 f"--concurrency={clients}", f"--execute-number={each}", f"--test={test}"],
                capture_output=True, text=True, timeout=600, check=True)
        text = run.stdout
        found = re.search(rf"Time to {test}\s+(\d+) keys.*?([0-9.]+) seconds", text)
        if found is None:
            raise RuntimeError(f"memcslap: {text}")
        errors = run.stderr.count("Fatal error")
        # (A get may miss without any error: the set tests of a round's earlier targets, up to
        # 200 MB each, evict keys from the memcached behind them; 195,053 of 200,000 found
        # with --baseline's extra targets.)
        if errors or (test == "set" and int(found[1]) != each * clients):
            raise RuntimeError(f"memcslap {test}: {found[1]} of {each * clients} requests "
                               f"worked, {errors} errors: {run.stderr[-300:]}")
        latency = timing.percentiles() if timing is not None else (0.0, 0.0)
        out[test] = {"rps": int(found[1]) / float(found[2]), "p50_latency_ms": latency[0],
                     "p99_latency_ms": latency[1]}
    return out


def plot(table: dict[tuple[str, int], tuple[float, ...]], names: list[str],
         pipelines: tuple[int, ...], path: str, title: str) -> None:
    """Requests/s per target, one group of bars per pipeline depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pipelines), figsize=(5.5 * len(pipelines), 4), squeeze=False)
    for ax, pipeline in zip(axes[0], pipelines, strict=True):
        values = [table[(n, pipeline)][0] / 1000 for n in names]
        ax.bar(range(len(names)), values, color="#4477aa")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"-P {pipeline}")
        ax.set_ylabel("thousand requests/s")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(textwrap.fill(title, 60 * len(pipelines)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
