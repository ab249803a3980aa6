"""Two codes side by side in MVE: this checkout's ``twinproxy serve`` and another's, both held in
an update at once, the same load run on each in turn, many rounds, the order swapped each round.

    python loadtests/ab_mve.py --baseline OTHER/src [--memcached] [--rounds 8]
        [--clients 50] [--requests 200000] [--pipeline 1] [--size 3]

What it is for: a change to the update's engine worth a few percent. bench_matrix.py runs every
target in each round, so the two codes' rounds are minutes apart on a machine whose speed
drifts by more than that (the same SINGLE code measured 13% apart in one of its runs); here
they are seconds apart, and each goes first in half the rounds. Printed: each run's
requests/s and the proxy's CPU per request (user and system, from /proc), then the medians and
their ratio. Both proxies must stay in MVE with no divergence, or the figures are not MVE's.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

from bench_matrix import held_in_mve, memcslap
from bench_mve import status
from common import cpu_seconds, machine, redis_benchmark, rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True,
                        help="another checkout's src directory to compare with")
    parser.add_argument("--memcached", action="store_true",
                        help="memcached under memcslap instead of Redis under redis-benchmark")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--pipeline", type=int, default=1, help="redis-benchmark's -P")
    parser.add_argument("--size", type=int, default=3, help="redis-benchmark's -d")
    args = parser.parse_args()
    protocol = "memcache" if args.memcached else "redis"
    codes: dict[str, str | None] = {"twinproxy": None, "baseline": args.baseline}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in codes}
    with contextlib.ExitStack() as stack:
        held = {name: stack.enter_context(held_in_mve(protocol, src))
                for name, src in codes.items()}
        tool = (f"memcslap --concurrency={args.clients}" if args.memcached else
                f"redis-benchmark -t set,get -c {args.clients} -P {args.pipeline} "
                f"-d {args.size}")
        print(f"{protocol} held in MVE, {tool} -n {args.requests}, {args.rounds} rounds "
              f"({machine()})")
        for round_ in range(args.rounds):
            order = list(codes) if round_ % 2 == 0 else list(codes)[::-1]
            for name in order:
                port, proc, cfg = held[name]
                before = cpu_seconds(proc.pid)
                if args.memcached:
                    result = memcslap(port, args.clients, args.requests, probe=False)
                else:
                    result = redis_benchmark(port, args.pipeline, clients=args.clients,
                                             requests=args.requests, size=args.size)
                cpu = cpu_seconds(proc.pid) - before
                n = args.requests * len(result)
                runs[name].append((rps(result), cpu / n * 1e6))
                print(f"  {name}: {rps(result):,.0f} requests/s, {cpu / n * 1e6:.2f} us of CPU "
                      "per request", flush=True)
        for name, (_, _, cfg) in held.items():
            st = status(cfg, codes[name])
            assert st["state"] == "mve" and st["divergences"] == 0, (name, st)
    medians = {name: (statistics.median(r for r, _ in got), statistics.median(c for _, c in got))
               for name, got in runs.items()}
    for name, (rate, cpu) in medians.items():
        print(f"{name}: median {rate:,.0f} requests/s, {cpu:.2f} us of CPU per request")
    (rate, cpu), (base_rate, base_cpu) = medians["twinproxy"], medians["baseline"]
    print(f"twinproxy/baseline: rate {rate / base_rate:.3f}, CPU per request "
          f"{cpu / base_cpu:.3f}")


if __name__ == "__main__":
    main()
