"""What ``[update] shared_after`` costs in MVE: the same load through proxies that differ only
in it, rounds interleaved.

    python loadtests/first_read.py [--values 0,1] [--clients 1000] [--pipeline 16]
                                   [--tests get] [--rounds 3] [--report FILE]

One ``twinproxy serve`` per value in front of two managed Redis 7.0 versions, each brought into
MVE (as in bench_mve.py); redis-benchmark runs through each in turn, ``--rounds`` times. With
``shared_after = 1`` (the default) a new client's first request goes alone on its own connection
and the rest of its first read waits for that reply, so that a client reading large values
never puts them ahead of everybody's on the shared connection; with 0 every plain client shares
it from its first request. Printed per value: requests/s, p99, and the proxy's CPU per request
(medians of the rounds), which is the price an operator weighs against that protection when
many clients connect during an update. The same load through one more ``serve``, left in SINGLE
mode, in the same rounds, is the row issue 14's MVE targets compare with (``--no-single``:
without it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path

from bench_matrix import held_config
from bench_mve import enter_mve, serve_process
from common import cpu_seconds, machine, p99, publish, redis_benchmark, rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", default="0,1", help="shared_after values, comma-separated")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--pipeline", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--tests", default="get", help="redis-benchmark's -t")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-single", action="store_true",
                        help="leave out the proxy in SINGLE mode")
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    values: list[int | None] = [int(v) for v in args.values.split(",")]
    if not args.no_single:
        values.insert(0, None)  # SINGLE mode: no update, so shared_after does not apply

    figures: dict[int | None, list[tuple[float, float, float]]] = {v: [] for v in values}
    with contextlib.ExitStack() as stack:
        proxies = {}
        for value in values:
            d = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cfg = held_config(d, "redis", f"shared_after = {1 if value is None else value}")
            proxies[value] = stack.enter_context(serve_process(cfg))
            if value is not None:
                enter_mve(cfg)
        for _ in range(args.rounds):
            for value, (port, proc) in proxies.items():
                before = cpu_seconds(proc.pid)
                result = redis_benchmark(port, args.pipeline, clients=args.clients,
                                         requests=args.requests, tests=args.tests, size=100)
                spent = cpu_seconds(proc.pid) - before
                figures[value].append((rps(result), p99(result),
                                       spent * 1e6 / (args.requests * len(result))))

    lines = [f"redis-benchmark -t {args.tests} -c {args.clients} -P {args.pipeline} -d 100 -n "
             f"{args.requests} through twinproxy in MVE (Redis 7.0 to 7.0)"
             f"{'' if args.no_single else ' and in SINGLE mode'}, median of {args.rounds} "
             f"interleaved rounds ({machine()})", "",
             "| proxy | requests/s | p99 ms | proxy CPU us/request | /SINGLE | p99/SINGLE's |",
             "|---|---|---|---|---|---|"]
    medians = {value: [statistics.median(column) for column in zip(*rows, strict=True)]
               for value, rows in figures.items()}
    base = medians.get(None)
    for value, (rate, late, cpu) in medians.items():
        name = "SINGLE" if value is None else f"MVE, shared_after = {value}"
        ratios = f"{rate / base[0]:.2f} | {late / base[1]:.2f}" if base else "- | -"
        lines.append(f"| {name} | {rate:,.0f} | {late:.1f} | {cpu:.2f} | {ratios} |")
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    main()
