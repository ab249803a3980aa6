"""How long one slow reader stalls everybody else: probe 1 of issue 15, a connection at a time.

    python loadtests/slow_readers_stall.py [--connections 15] [--gap 1] [--rounds 3]
                                           [--modes direct,single,mve]

Connections with a 4 KB receive buffer each send 20 pipelined GETs of a 10 MB value and never
read, ``--gap`` seconds apart; during each gap another connection sends PING after PING, and the
longest PING is that connection's stall. Then all close, and the longest PING in the next 3 s is
the stall of their close. Run against redis-server 7.0 alone (``direct``), through ``twinproxy
serve`` in SINGLE mode (``single``) and during an update (``mve``), the modes interleaved in
each round. Prints per run the median and the worst stall over the connections, and the close's.

Why: redis-server copies each GET's reply into the connection's output buffer (no limit for
normal clients), 200 MB for such a connection, and answers nobody meanwhile; this tells that
stall from anything the proxy adds (see loadtests/reports/faults.md).
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

from fault_harness import Direct, Proxy, resp

PING = b"*1\r\n$4\r\nPING\r\n"


def longest_ping(probe: socket.socket, seconds: float) -> float:
    """PING after PING for ``seconds``: the longest one, in ms."""
    worst = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        probe.sendall(PING)
        if probe.recv(100) != b"+PONG\r\n":
            raise SystemExit("PING not answered +PONG")
        worst = max(worst, time.perf_counter() - started)
        time.sleep(0.002)
    return worst * 1000


def run(mode: str, connections: int, gap: float) -> tuple[list[float], float]:
    """Each connection's stall and the close's, in ms."""
    with tempfile.TemporaryDirectory() as d:
        target = Direct(Path(d)) if mode == "direct" else Proxy(Path(d))
        with target.serving():
            if mode == "mve":
                target.update()
                if target.wait(lambda s: s["state"] == "mve")["state"] != "mve":
                    raise SystemExit("the update did not reach MVE")
            port = target.port
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(resp("SET", "big", b"x" * (10 << 20)))
                if s.recv(100) != b"+OK\r\n":
                    raise SystemExit("SET not answered +OK")
            slow: list[socket.socket] = []
            stalls = []
            with socket.create_connection(("127.0.0.1", port)) as probe, \
                    contextlib.ExitStack() as closing:
                for _ in range(connections):
                    s = socket.socket()
                    closing.callback(s.close)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.connect(("127.0.0.1", port))
                    s.sendall(resp("GET", "big") * 20)
                    slow.append(s)
                    stalls.append(longest_ping(probe, gap))
                for s in slow:
                    s.close()
                return stalls, longest_ping(probe, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=15)
    parser.add_argument("--gap", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="direct,single,mve")
    args = parser.parse_args()
    for i in range(args.rounds):
        for mode in args.modes.split(","):
            stalls, close = run(mode, args.connections, args.gap)
            print(f"round {i + 1} {mode}: median {statistics.median(stalls):.0f} ms, worst "
                  f"{max(stalls):.0f} ms over {len(stalls)} connections; their close "
                  f"{close:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
