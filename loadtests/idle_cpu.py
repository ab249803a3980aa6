"""What an update costs the proxy while its clients send nothing: the CPU of a ``twinproxy serve``
held in MVE (two managed versions, as in bench_matrix.py) with no traffic at all.

    python loadtests/idle_cpu.py [--memcached] [--seconds 10] [--rounds 2] [--baseline OTHER/src]

An update can last long with idle clients (a warm-up of minutes at night, an old version kept
following until an operator promotes): what the proxy does then is wake for its own timers.
Each wake-up of a process that was asleep costs far more than the same work under load (its
caches are cold), so a timer every 10 ms, which is nothing under load, shows here. Printed: the
proxy's CPU (user and system, from /proc) over each window of ``--seconds``, as a share of one
core, for this checkout and ``--baseline``'s (both held at once, measured in the same windows).
"""

from __future__ import annotations

import argparse
import contextlib
import time

from bench_matrix import held_in_mve
from common import cpu_seconds, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memcached", action="store_true", help="memcached instead of Redis")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    args = parser.parse_args()
    codes: dict[str, str | None] = {"twinproxy": None}
    if args.baseline:
        codes["baseline"] = args.baseline
    protocol = "memcache" if args.memcached else "redis"
    with contextlib.ExitStack() as stack:
        held = {name: stack.enter_context(held_in_mve(protocol, src))[1]
                for name, src in codes.items()}
        time.sleep(2.0)  # (the update's own start settles)
        print(f"{protocol}, held in MVE, no client sending ({machine()}): CPU as % of a core "
              f"over {args.seconds:g} s")
        for _ in range(args.rounds):
            before = {name: cpu_seconds(proc.pid) for name, proc in held.items()}
            time.sleep(args.seconds)
            used = {name: cpu_seconds(proc.pid) - before[name] for name, proc in held.items()}
            print(", ".join(f"{name} {100 * cpu / args.seconds:.2f}%"
                            for name, cpu in used.items()))


if __name__ == "__main__":
    main()
