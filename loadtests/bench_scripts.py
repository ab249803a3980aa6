"""Script calls in SINGLE mode: twinproxy vs a direct connection, and vs another checkout.

    python loadtests/bench_scripts.py [--rounds 3] [--requests 100000] [--baseline OTHER/src]
                                      [--eval] [--mve] [--report FILE]

Runs ``redis-benchmark -c 50 EVALSHA <sha> 1 key`` (a script that INCRs its key) with ``-P 1`` and
``-P 16``, rounds interleaved, median of the rounds. Why a benchmark of its own: SINGLE mode frames
the replies of script and function calls (it must know when one is over: while one runs past
``busy-reply-threshold`` redis-server refuses others with -BUSY, and the proxy's sentinel must be
one it answers then), so a connection that calls scripts leaves the counting-only fast path while
one is out. ``--baseline`` measures the code before that change in the same rounds.

``--mve``: also a ``serve`` held in an update (bench_matrix.held_in_mve), where scripts go
request by request on each client's own connections.

``--eval``: ``EVAL <script> 1 key`` instead, the script's body in every call. SINGLE mode frames
those reads (the proxy learns the scripts clients give the server, for the next update's new
version: protocols/redis/scripts.py), where it only counts EVALSHA's.
"""

from __future__ import annotations

import argparse
import contextlib

import redis as redis_py

from bench_matrix import held_in_mve
from common import machine, median, publish, redis, redis_benchmark, rps, twinproxy

SCRIPT = "return redis.call('INCR', KEYS[1])"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    parser.add_argument("--eval", action="store_true", help="EVAL with the body, not EVALSHA")
    parser.add_argument("--mve", action="store_true",
                        help="also twinproxy held in an update (MVE), managing its own servers")
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    args = parser.parse_args()

    figures: dict[tuple[str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(redis())
        sha = redis_py.Redis(port=upstream).script_load(SCRIPT)
        targets = {"direct": upstream, "twinproxy": stack.enter_context(twinproxy(upstream))[0]}
        if args.baseline:
            targets["baseline"] = stack.enter_context(twinproxy(upstream, src=args.baseline))[0]
        if args.mve:  # (the script loaded through it, on both versions)
            targets["MVE"] = stack.enter_context(held_in_mve("redis"))[0]
            if args.baseline:
                targets["baseline MVE"] = stack.enter_context(
                    held_in_mve("redis", args.baseline))[0]
            for name in ("MVE", "baseline MVE"):
                if name in targets:
                    assert redis_py.Redis(port=targets[name]).script_load(SCRIPT) == sha
        command = [*(["EVAL", SCRIPT] if args.eval else ["EVALSHA", sha]), "1", "counter"]
        for _ in range(args.rounds):
            for pipeline in (1, 16):
                for name, port in targets.items():
                    result = redis_benchmark(port, pipeline, requests=args.requests,
                                             command=command)
                    figures.setdefault((name, pipeline), []).append(rps(result))

    names = list(targets)
    ratios = [("twinproxy", "direct"), *([("twinproxy", "baseline")] if args.baseline else []),
              *([("MVE", "twinproxy")] if args.mve else []),
              *([("MVE", "baseline MVE")] if args.mve and args.baseline else [])]
    lines = [f"redis-benchmark -c 50 -n {args.requests} {command[0]} (INCR of one key), median "
             f"of {args.rounds} interleaved rounds ({machine()})"
             + ("; MVE: twinproxy held in an update (Redis 7.0 to 7.0)" if args.mve else ""), "",
             "| pipeline | " + " | ".join(f"{n} req/s" for n in names) + " | "
             + " | ".join(f"{a}/{b}" for a, b in ratios) + " |",
             "|---" * (len(names) + len(ratios) + 1) + "|"]
    for pipeline in (1, 16):
        got = {n: median(figures[(n, pipeline)]) for n in names}
        lines.append(f"| -P {pipeline} | " + " | ".join(f"{got[n]:,.0f}" for n in names) + " | "
                     + " | ".join(f"{got[a] / got[b]:.2f}" for a, b in ratios) + " |")
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
