"""A request of 1.1 million arguments (RPUSH, 7.7 MB) through twinproxy in SINGLE mode, and to
redis-server directly, in interleaved rounds.

    python loadtests/bench_many_args.py [--rounds N] [--baseline OTHER_CHECKOUT/src]

Each round sends the RPUSH (to a key deleted first) through this checkout's proxy, through the
baseline's if given (another checkout's ``src``, with its own managed redis-server), then to
the first proxy's redis-server directly; each time is from the first byte sent to the reply's
end. Prints each round and the medians, and the ratios to the direct time.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_harness
from fault_edges import ARGS, reply_line
from fault_harness import Proxy, resp


def rpush(port: int, key: bytes) -> float:
    """Seconds from the RPUSH's first byte to its reply; the list's length is checked."""
    request = b"*%d\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n" % (ARGS + 2, len(key), key) \
        + b"$1\r\nx\r\n" * ARGS
    with socket.create_connection(("127.0.0.1", port), 120) as s:
        s.sendall(resp("DEL", key))
        reply_line(s)
        started = time.perf_counter()
        s.sendall(request)
        reply = reply_line(s)
        took = time.perf_counter() - started
        s.sendall(resp("LLEN", key))
        length = reply_line(s)
    want = b":%d\r\n" % ARGS
    if reply != want or length != want:
        raise SystemExit(f"RPUSH answered {reply!r}, LLEN {length!r}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    args = parser.parse_args()
    sources = {"twinproxy": fault_harness.SRC}
    if args.baseline:
        sources["baseline"] = Path(args.baseline)
    times: dict[str, list[float]] = {name: [] for name in [*sources, "direct"]}
    with contextlib.ExitStack() as stack:
        proxies = {}
        for name, src in sources.items():
            fault_harness.SRC = src
            proxy = Proxy(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            stack.enter_context(proxy.serving())
            proxies[name] = proxy
        leader = int(proxies["twinproxy"].status()["leader"]["address"].rsplit(":", 1)[1])
        for i in range(args.rounds):
            for name, proxy in proxies.items():
                times[name].append(rpush(proxy.port, b"many"))
            times["direct"].append(rpush(leader, b"direct"))
            print(i + 1, "  ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print("medians:", "  ".join(f"{k} {v:.3f}s" for k, v in medians.items()))
    print("to direct:", "  ".join(f"{k} {v / medians['direct']:.2f}" for k, v in medians.items()
                                  if k != "direct"))


if __name__ == "__main__":
    main()
