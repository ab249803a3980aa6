"""MVE under mixed reads: many clients reading small values while a few read large ones.

    python loadtests/bench_mixed_reads.py [--rounds 3] [--baseline OTHER_CHECKOUT/src]
                                          [--report F]

One ``twinproxy serve`` in front of Redis 7.0 (two managed versions, as in bench_mve.py), held
in MVE by an update whose warm-up does not end. Per round, at the same time:
``redis-benchmark -c 50 -P 16 -n 300000 GET small`` (a 100-byte value) and
``redis-benchmark -c 5 -P 4 -n 3000 GET big`` (a 100 KB value). A client that gets large replies
stays on its own server connection (``[update] shared_after``), so its reads are out there,
ordered, nearly all the time: what this measures is what they cost the other clients' reads.
Reported: the medians of each load's requests/s and p99 (``--baseline``: the other checkout's
code too, rounds interleaved), and, after each round, the update must still be in MVE with no
divergence.

The machine has 2 shared cores: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import subprocess
import tempfile
from pathlib import Path

from bench_mve import config, enter_mve, serve_process, status
from common import load, machine, median, publish

SMALL = ["-c", "50", "-P", "16", "-n", "300000", "GET", "small"]
BIG = ["-c", "5", "-P", "4", "-n", "3000", "GET", "big"]


def bench(port: int, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(["redis-benchmark", "-p", str(port), "-q", "--csv", *args],
                            stdout=subprocess.PIPE, text=True)


def figures(proc: subprocess.Popen) -> tuple[float, float]:
    """requests/s and p99 (ms) of a finished redis-benchmark."""
    out, _ = proc.communicate(timeout=600)
    if proc.returncode:
        raise RuntimeError(f"redis-benchmark failed: {out}")
    [row] = list(csv.DictReader(io.StringIO(out)))
    return float(row["rps"]), float(row["p99_latency_ms"])


def one_round(cfg: Path, port: int, src: str | None) -> tuple[float, float, float, float]:
    big = bench(port, BIG)
    small = bench(port, SMALL)
    got = (*figures(small), *figures(big))
    state = status(cfg, src)
    if state["state"] != "mve" or state["divergences"]:
        raise RuntimeError(f"not a clean MVE run: {state}")
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    codes = {"twinproxy": None}
    if args.baseline:
        codes["baseline"] = args.baseline
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in codes}
    loads = [load()]
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, src in codes.items():
            d = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cfg = config(d, "warmup_seconds = 100000\nwarmup_requests = 0")
            port, _proc = stack.enter_context(serve_process(cfg, src))
            enter_mve(cfg, src)
            for key, size in (("small", 100), ("big", 102_400)):
                subprocess.run(["redis-cli", "-p", str(port), "-x", "SET", key],
                               input=b"x" * size, check=True, capture_output=True)
            servers[name] = (cfg, port, src)
        for _ in range(args.rounds):
            for name, (cfg, port, src) in servers.items():
                results[name].append(one_round(cfg, port, src))
                loads.append(load())
    lines = [f"50 clients `GET small` (100 B, -P 16) while 5 clients `GET big` (100 KB, -P 4), in "
             f"MVE; median of {args.rounds} interleaved rounds ({machine()}; load average "
             f"{min(loads):.1f} to {max(loads):.1f})", "",
             "| code | small req/s | small p99 ms | big req/s | big p99 ms |",
             "|---|---|---|---|---|"]
    for name, rounds in results.items():
        cols = [median([r[i] for r in rounds]) for i in range(4)]
        lines.append(f"| {name} | {cols[0]:,.0f} | {cols[1]:.2f} | {cols[2]:,.0f} | "
                     f"{cols[3]:.2f} |")
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    main()
