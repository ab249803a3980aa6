"""What real blocking costs during an update: a push that serves a blocked client, against one
on a key nobody waits for.

    python loadtests/bench_blocking.py [--rounds 3] [--pushes 2000] [--workers 10]
                                       [--baseline OTHER_CHECKOUT/src] [--report F]

One ``twinproxy serve`` in front of Redis 7.0 (two managed versions, both Debian's 7.0). In each
round, in SINGLE mode and then in MVE (an update whose warm-up does not end; rolled back between
rounds), one client times ``--pushes`` RPUSHes one after the other on a key a second client
waits on with ``BLPOP hot 0`` (each push serves it, and it blocks again at once), then as many
on a key nobody waits for (``cold``). During an update a push on a key with a blocked client
waits for the proxy's fence (two probes after its reply, see src/twinproxy/engine/waits.py)
before the next request on that key goes, and the blocked client's next BLPOP for its own
three probes: the hot pushes measure both. Reported: the medians over rounds of each push's
median and p99 latency, and the ratios hot/cold in each mode. Then a job queue: ``--workers``
clients in a loop of ``BLPOP jobs 1`` take ``--pushes`` jobs one client pushes as fast as it is
answered; reported: jobs taken per second, SINGLE and MVE, and their ratio; with
``--baseline OTHER_CHECKOUT/src``, for that code too, rounds interleaved (the engine before
real blocking waited for blocking requests itself, polling the leader).

The machine has 2 shared cores: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import tempfile
import threading
import time
from pathlib import Path

from bench_mve import config, enter_mve, leave_mve, serve
from common import machine, median, publish


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def call(sock: socket.socket, raw: bytes) -> bytes:
    sock.sendall(raw)
    out = b""
    while not out.endswith(b"\r\n"):
        out += sock.recv(4096)
    return out


def pushes(port: int, key: bytes, count: int, waiter: bool) -> list[float]:
    """The latency of each of ``count`` RPUSHes on ``key``, a client blocked on it or not."""
    stop = threading.Event()
    served = [0]

    def wait() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(30)
        while not stop.is_set():
            reply = b""
            sock.sendall(b"BLPOP %s 1\r\n" % key)
            while reply.count(b"\r\n") < (5 if not reply.startswith(b"*-1") else 1):
                reply += sock.recv(4096)
            served[0] += not reply.startswith(b"*-1")
        sock.close()

    thread = threading.Thread(target=wait) if waiter else None
    if thread is not None:
        thread.start()
        time.sleep(0.2)
    sock = socket.create_connection(("127.0.0.1", port))
    call(sock, b"DEL %s\r\n" % key)
    out = []
    for n in range(count):
        start = time.perf_counter()
        call(sock, b"RPUSH %s %d\r\n" % (key, n))
        out.append(time.perf_counter() - start)
        if waiter:
            time.sleep(0.0005)  # the waiter blocks again
    stop.set()
    if thread is not None:
        thread.join()
        assert served[0] > count // 2, served[0]
    sock.close()
    return out


def queue(port: int, items: int, workers: int) -> float:
    """Seconds for ``workers`` clients, each in a loop of ``BLPOP jobs 1``, to take ``items``
    that one client pushes one by one as fast as it is answered."""
    taken = [0]
    lock = threading.Lock()
    done = threading.Event()

    def work() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(30)
        while not done.is_set():
            reply = b""
            sock.sendall(b"BLPOP jobs 1\r\n")
            while reply.count(b"\r\n") < (5 if not reply.startswith(b"*-1") else 1):
                reply += sock.recv(4096)
            if not reply.startswith(b"*-1"):
                with lock:
                    taken[0] += 1
                    if taken[0] >= items:
                        done.set()
        sock.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    sock = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    for n in range(items):
        call(sock, b"RPUSH jobs %d\r\n" % n)
    done.wait(120)
    took = time.perf_counter() - start
    for thread in threads:
        thread.join()
    sock.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--baseline", help="another checkout's src directory: its job queue "
                        "too, rounds interleaved with this one's")
    parser.add_argument("--report", help="also write the tables (markdown) to this file")
    args = parser.parse_args()
    codes: dict[str, str | None] = {"twinproxy": None}
    if args.baseline:
        codes["baseline"] = args.baseline
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    queues: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, src in codes.items():
            with tempfile.TemporaryDirectory() as d:
                cfg = config(Path(d), "warmup_seconds = 100000\nwarmup_requests = 0")
                with serve(cfg, src) as port:
                    for mode in ("SINGLE", "MVE"):
                        if mode == "MVE":
                            enter_mve(cfg, src)
                        if src is None:
                            for kind in ("hot", "cold"):
                                got = pushes(port, kind.encode(), args.pushes, kind == "hot")
                                results.setdefault((mode, kind), []).append(
                                    (median(got) * 1e6, percentile(got, 0.99) * 1e6))
                        queues.setdefault((name, mode), []).append(
                            args.pushes / queue(port, args.pushes, args.workers))
                        if mode == "MVE":
                            leave_mve(cfg, src)
    lines = [f"# Blocking requests during an update ({machine()}, {args.rounds} rounds, "
             f"{args.pushes} pushes each)", "",
             "| mode | push on | median µs | p99 µs |", "|---|---|---|---|"]
    summary: dict[tuple[str, str], tuple[float, float]] = {}
    for (mode, kind), rows in results.items():
        summary[mode, kind] = (median([r[0] for r in rows]), median([r[1] for r in rows]))
        lines.append(f"| {mode} | {kind} key | {summary[mode, kind][0]:.0f} | "
                     f"{summary[mode, kind][1]:.0f} |")
    lines += ["", "| mode | hot/cold median | hot/cold p99 |", "|---|---|---|"]
    for mode in ("SINGLE", "MVE"):
        hot, cold = summary[mode, "hot"], summary[mode, "cold"]
        lines.append(f"| {mode} | {hot[0] / cold[0]:.2f} | {hot[1] / cold[1]:.2f} |")
    lines += ["", f"A job queue: {args.workers} workers in a loop of BLPOP on one list, one "
              f"producer pushing {args.pushes} jobs (medians of jobs taken per second).", "",
              "| code | SINGLE | MVE | MVE/SINGLE |", "|---|---|---|---|"]
    for name in codes:
        single, mve = median(queues[name, "SINGLE"]), median(queues[name, "MVE"])
        lines.append(f"| {name} | {single:.0f} | {mve:.0f} | {mve / single:.2f} |")
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
