"""SINGLE-mode benchmark: twinproxy vs a direct connection vs HAProxy, one run, one machine.

    python loadtests/bench_single.py [--rounds 3] [--requests 200000] [--report FILE]
                                     [--baseline OTHER_CHECKOUT/src]

Runs ``redis-benchmark -t set,get -c 50 -n 200000`` with ``-P 1`` and ``-P 16`` against (a) Redis
7.0 directly, (b) HAProxy 2.6 in TCP mode in front of it, (c) ``twinproxy serve`` in SINGLE mode
in front of it. Rounds are interleaved (direct, HAProxy, twinproxy, then again) so that drift in
the machine's speed hits all three alike; each figure is the median of the rounds. Then it opens
1,000 idle client connections to twinproxy and reads its resident memory.

``--baseline`` adds a fourth target, interleaved with the others: ``twinproxy serve`` run from
another checkout's ``src`` (say the code before a change), so that old and new are measured in
the same run.

The machine has 2 shared cores and its absolute speed drifts: the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import time

from common import (
    haproxy,
    machine,
    median,
    publish,
    redis,
    redis_benchmark,
    rps,
    rss_kib,
    twinproxy,
)


def idle_memory(port: int, pid: int, connections: int = 1000) -> tuple[int, int]:
    """twinproxy's RSS (KiB) before and with ``connections`` idle clients connected."""
    before = rss_kib(pid)
    socks = []
    try:
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
        # Every connection really relays: one PING each, answered.
        for s in socks:
            s.sendall(b"PING\r\n")
        for s in socks:
            assert s.recv(100) == b"+PONG\r\n"
        time.sleep(0.5)
        return before, rss_kib(pid)
    finally:
        for s in socks:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    args = parser.parse_args()

    figures: dict[tuple[str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(redis())
        hap = stack.enter_context(haproxy(upstream))
        tp, proc = stack.enter_context(twinproxy(upstream))
        targets = {"direct": upstream, "haproxy": hap, "twinproxy": tp}
        if args.baseline:
            targets["baseline"] = stack.enter_context(twinproxy(upstream, src=args.baseline))[0]
        for _ in range(args.rounds):
            for pipeline in (1, 16):
                for name, port in targets.items():
                    result = redis_benchmark(port, pipeline, requests=args.requests)
                    figures.setdefault((name, pipeline), []).append(rps(result))
        before, with_idle = idle_memory(tp, proc.pid)

    lines = [
        f"redis-benchmark -t set,get -c 50 -n {args.requests}, median of {args.rounds} "
        f"interleaved rounds ({machine()})",
        "",
        "| pipeline | direct req/s | HAProxy req/s | twinproxy req/s | twinproxy/direct "
        "| twinproxy/HAProxy |",
        "|---|---|---|---|---|---|",
    ]
    for pipeline in (1, 16):
        d, h, t = (median(figures[(n, pipeline)]) for n in ("direct", "haproxy", "twinproxy"))
        lines.append(f"| -P {pipeline} | {d:,.0f} | {h:,.0f} | {t:,.0f} | {t / d:.2f} "
                     f"| {t / h:.2f} |")
    if args.baseline:
        lines += ["", f"baseline: twinproxy from {args.baseline}, in the same rounds", "",
                  "| pipeline | baseline req/s | twinproxy req/s | twinproxy/baseline |",
                  "|---|---|---|---|"]
        for pipeline in (1, 16):
            b, t = (median(figures[(n, pipeline)]) for n in ("baseline", "twinproxy"))
            lines.append(f"| -P {pipeline} | {b:,.0f} | {t:,.0f} | {t / b:.2f} |")
    lines += ["", f"twinproxy resident memory: {before / 1024:.1f} MB at rest, "
                  f"{with_idle / 1024:.1f} MB with 1,000 idle client connections"]
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
