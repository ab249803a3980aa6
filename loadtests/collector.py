"""What Python's cyclic garbage collector costs the proxy while many clients connect.

    python loadtests/collector.py [--clients 1000] [--pipeline 16] [--requests 200000]
                                  [--runs 2] [--single] [--memcached]
                                  [--baseline OTHER_CHECKOUT/src]

``twinproxy serve`` held in MVE (bench_matrix.py's config, Redis 7.0; ``--single``: the same,
left in SINGLE mode) runs under loadtests/traced_serve.py, which notes every collection. Then
``redis-benchmark -t set,get -c CLIENTS -P PIPELINE -n REQUESTS`` runs ``--runs`` times, each
with new connections. Reported for the load's window: the collections of each generation
(young, middle, full), the CPU time they took (in all, and the longest one's), the longest wall
time of one (with its waits for a core), and the proxy's CPU time, so the collector's share of
it. ``--baseline`` measures another checkout's code the same way, after this one.
``--memcached``: two managed memcached versions instead (bench_matrix.py's), under memcslap's set
then get test with ``--clients`` connections, ``--requests`` each (``--pipeline`` does not
apply).

The collector counts containers made and not yet freed: what a request makes is freed by
reference counting and barely counts, but what a client keeps for as long as it is connected
does, so clients connecting are what starts collections (service.collect_less_often).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_matrix import held_config, held_in_mve, memcslap
from bench_mve import serve_process
from common import cpu_seconds, machine, redis_benchmark

GENERATIONS = ("young", "middle", "full")


@contextlib.contextmanager
def traced_single(src: str | None, trace: Path, protocol: str
                  ) -> Iterator[tuple[int, object, None]]:
    """The same ``serve`` (bench_matrix.py's config) left in SINGLE mode."""
    with tempfile.TemporaryDirectory() as d, \
            serve_process(held_config(Path(d), protocol), src, trace) as (port, proc):
        yield port, proc, None


def measure(args: argparse.Namespace, src: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.jsonl"
        protocol = "memcache" if args.memcached else "redis"
        target = traced_single(src, trace, protocol) if args.single else \
            held_in_mve(protocol, src, trace)
        with target as (port, proc, _):
            if args.memcached:
                memcslap(port, 50, 20_000, probe=False)  # (its start's own objects)
            else:
                redis_benchmark(port, 1, clients=50, requests=20_000)
            start, cpu = time.monotonic(), cpu_seconds(proc.pid)
            for _ in range(args.runs):
                if args.memcached:
                    memcslap(port, args.clients, args.requests, probe=False)
                else:
                    redis_benchmark(port, args.pipeline, clients=args.clients,
                                    requests=args.requests)
            end, cpu = time.monotonic(), cpu_seconds(proc.pid) - cpu
        figures: dict[str, float] = {"cpu_s": cpu, "wall_max": 0.0}
        for name in GENERATIONS:
            figures[f"{name}_n"] = figures[f"{name}_ms"] = figures[f"{name}_max"] = 0.0
        for line in trace.read_text().splitlines():
            event = json.loads(line)
            if event["kind"] != "gc" or not start <= event["t"] <= end:
                continue
            name = GENERATIONS[event["gen"]]
            figures[f"{name}_n"] += 1
            figures[f"{name}_ms"] += event["cpu_ms"]
            figures[f"{name}_max"] = max(figures[f"{name}_max"], event["cpu_ms"])
            figures["wall_max"] = max(figures["wall_max"], event["ms"])
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--pipeline", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--single", action="store_true", help="SINGLE mode instead of MVE")
    parser.add_argument("--memcached", action="store_true",
                        help="memcached under memcslap instead of Redis under redis-benchmark")
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    args = parser.parse_args()
    codes = {"twinproxy": None, **({"baseline": args.baseline} if args.baseline else {})}
    load = (f"memcslap --test=set,get --concurrency={args.clients} -n {args.requests}"
            if args.memcached else
            f"redis-benchmark -t set,get -c {args.clients} -P {args.pipeline} -n {args.requests}")
    print(f"{load}, {args.runs} runs, twinproxy {'SINGLE' if args.single else 'MVE'} "
          f"({machine()})\n")
    print("| code | young (longest CPU ms) | middle | full | collector CPU ms (longest) "
          "| longest wall ms "
          "| proxy CPU s | share |")
    print("|---|---|---|---|---|---|---|---|")
    for name, src in codes.items():
        f = measure(args, src)
        total = sum(f[f"{g}_ms"] for g in GENERATIONS)
        longest = max(f[f"{g}_max"] for g in GENERATIONS)
        counts = " | ".join(f"{f[f'{g}_n']:.0f} ({f[f'{g}_max']:.1f})" for g in GENERATIONS)
        print(f"| {name} | {counts} | {total:.1f} ({longest:.1f}) | {f['wall_max']:.1f} | "
              f"{f['cpu_s']:.2f} | {total / 10 / f['cpu_s']:.1f}% |")


if __name__ == "__main__":
    main()
