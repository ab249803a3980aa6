"""twinproxy's resident memory with many idle client connections (issue 14: at most 150 MB with
10,000).

    python loadtests/idle_memory.py [--connections 10000] [--step 1000] [--report FILE]

Starts Redis 7.0 and ``twinproxy serve`` in front of it in SINGLE mode, then opens idle client
connections in steps, each answered one PING (so that every one really relays), and reads the
proxy's RSS after each step. ``serve`` allows as many clients as its open-file limit lets it
serve during an update (three descriptors each), so the run first raises the open-file limit it
and its children inherit to four descriptors per connection (the proxy's three and its own one),
the hard limit too where it is allowed to (as root). Where that is refused and the limit is
below what ``--connections`` needs, the run stops at the limit and the table says so, with the
cost per connection measured up to there and the figure it gives for ``--connections``.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import time

from common import machine, publish, redis, rss_kib, twinproxy


def connect(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each got +PONG to a PING; fewer if the proxy refused more
    (it answers Redis's "max number of clients reached" and closes)."""
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"PING\r\n")
        if s.recv(100) != b"+PONG\r\n":
            s.close()
            break
        socks.append(s)
    return socks


def make_room(connections: int) -> int:
    """Raise this process's open-file limit (which the proxy and Redis inherit) to what
    ``connections`` idle clients take, hard limit included if this process may; the soft limit
    it ends with."""
    want = 4 * connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((want, max(want, hard)), (min(want, hard), hard)):
        with contextlib.suppress(ValueError, OSError):
            if soft < limit[0]:
                resource.setrlimit(resource.RLIMIT_NOFILE, limit)
                break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--step", type=int, default=1_000)
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    args = parser.parse_args()

    limit = make_room(args.connections)
    rows: list[tuple[int, float]] = []
    socks: list[socket.socket] = []
    with contextlib.ExitStack() as stack:
        # Redis answers "max number of clients reached" past 10,000 by default.
        upstream = stack.enter_context(redis(extra=("--maxclients", str(args.connections + 100))))
        port, proc = stack.enter_context(twinproxy(upstream))
        time.sleep(0.5)
        rows.append((0, rss_kib(proc.pid) / 1024))
        try:
            while len(socks) < args.connections:
                want = min(args.step, args.connections - len(socks))
                got = connect(port, want)
                socks += got
                time.sleep(0.5)
                rows.append((len(socks), rss_kib(proc.pid) / 1024))
                if len(got) < want:
                    break
        finally:
            for s in socks:
                s.close()
        time.sleep(2)
        after = rss_kib(proc.pid) / 1024

    reached, peak = rows[-1]
    per = (peak - rows[0][1]) / reached * 1024 if reached else 0.0
    lines = [f"twinproxy serve in SINGLE mode in front of Redis 7.0, idle connections opened "
             f"{args.step:,} at a time, each answered one PING, open-file limit {limit:,} "
             f"({machine()})", "",
             "| idle connections | twinproxy RSS MB |", "|---|---|"]
    lines += [f"| {n:,} | {mb:.1f} |" for n, mb in rows]
    lines += ["", f"{per:.1f} KB per idle connection; {after:.1f} MB after they closed."]
    if reached < args.connections:
        lines.append(f"The proxy refused connections past {reached:,} (its open-file limit); at "
                     f"the cost measured, {args.connections:,} would take "
                     f"{rows[0][1] + per * args.connections / 1024:.0f} MB.")
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
