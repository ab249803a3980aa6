"""pymemcache's default client during an update: its stores say ``noreply``.

    python loadtests/pymemcache_noreply.py [--processes 16] [--seconds 3] [--rounds 3]
                                           [--expire N] [--touch N]
                                           [--src OTHER/src] [--report FILE]

pymemcache (the Python memcached client) sends ``set ... noreply`` unless told
``default_noreply=False``. During an update such a store travels in a run on the connection
clients share, and is settled by the reply that follows it there or by the proxy's own ``mn``
(until 2026-12-07 it kept its client on its own connections for the rest of the update, then it
was framed alone, never in a run); memcslap cannot show it (its ``--noreply``
sends no ``noreply`` token in the text protocol). Each process runs a pymemcache ``Client`` with
``no_delay=True`` (without it, Nagle's algorithm and the server's delayed ACK hold each store
after a ``noreply`` one for 40 ms, directly as through any proxy: 720 requests/s) doing a SET of
100 bytes then a GET of the key, for ``--seconds``, against memcached directly, twinproxy in
SINGLE mode and twinproxy during an update held in MVE, with ``noreply`` and without, the order
turned each round. ``--touch N``: each GET is followed by a ``touch`` of the key to N seconds
from now (a session store sliding an item's life; ``noreply`` as the client's stores say).
Printed, and written to ``--report``: the medians of requests/s, and MVE/SINGLE.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

from pymemcache.client.base import Client

from client_targets import arguments, interleaved, open_targets, still_held, table, together
from common import machine, memcached, publish


def _worker(job: tuple[int, bool, float, int, int, int]) -> int:
    port, noreply, seconds, me, expire, touch = job
    client = Client(("127.0.0.1", port), default_noreply=noreply, no_delay=True)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key = f"k{me}-{done % 100}"
        client.set(key, b"x" * 100, expire=expire)
        client.get(key)
        done += 2
        if touch:
            client.touch(key, expire=touch)
            done += 1
    client.close()
    return done


def rate(port: int, noreply: bool, processes: int, seconds: float, expire: int = 0,
         touch: int = 0) -> float:
    """Requests/s of ``processes`` clients together (``expire``: the stores' expiry; ``touch``:
    a touch's, after each GET)."""
    return together(_worker, [(port, noreply, seconds, i, expire, touch)
                              for i in range(processes)])


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--expire", type=int, default=0,
                        help="the stores' expiry in seconds (0: none, as before)")
    parser.add_argument("--touch", type=int, default=0,
                        help="touch each key after its GET, to this expiry (0: no touch)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        ports, mve = open_targets(stack, Path(d), "memcache", stack.enter_context(memcached()),
                                  args.src)
        figures = interleaved(ports, (True, False), args.rounds, lambda port, noreply: rate(
            port, noreply, args.processes, args.seconds, args.expire, args.touch))
        still_held(mve, args.src)
    expiry = f" expiring in {args.expire} s" if args.expire else ""
    touch = f" then a touch to {args.touch} s" if args.touch else ""
    lines = [f"{args.processes} pymemcache clients (`no_delay=True`), each a SET of 100 bytes"
             f"{expiry} then a GET{touch}, {args.seconds:g} s per run, medians of {args.rounds} "
             "rounds "
             f"({machine()}).", "",
             *table(figures, {True: "noreply", False: "replied"}, "stores")]
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    main()
