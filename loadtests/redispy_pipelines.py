"""redis-py's pipelines during an update: transactional (its default) against not.

    python loadtests/redispy_pipelines.py [--processes 16] [--seconds 3] [--rounds 3]
                                          [--depth 8] [--hash] [--src OTHER/src]
                                          [--report FILE]

``redis.Redis.pipeline()`` wraps its commands in MULTI ... EXEC unless told
``transaction=False``. During an update both travel as runs on the connection clients share, a
transaction whole (until 2026-12-07 a transaction went request by request on its client's own
connections). This measures what each costs: each process runs a
``redis.Redis`` client sending pipelines of ``--depth`` commands (SETs and GETs of 100 bytes,
half each) for ``--seconds``, against Redis 7.0 directly, twinproxy in SINGLE mode and twinproxy
during an update held in MVE, with ``transaction=True`` and ``False``, the order turned each
round. ``--hash``: HSET of a field and HGETALL of a hash of ten instead (an object cache's
reads). Printed, and written to ``--report``: the medians of commands/s, and MVE/SINGLE.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import redis

from client_targets import arguments, interleaved, open_targets, still_held, table, together
from common import machine, publish
from common import redis as redis_server


def _worker(job: tuple[int, bool, float, int, int, bool]) -> int:
    port, transaction, seconds, depth, me, hashes = job
    client = redis.Redis(port=port, single_connection_client=True)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with client.pipeline(transaction=transaction) as pipe:
            for i in range(depth // 2):
                key = f"k{me}-{(done + i) % 100}"
                if hashes:
                    pipe.hset(key, f"f{done % 10}", b"x" * 10).hgetall(key)
                else:
                    pipe.set(key, b"x" * 100).get(key)
            pipe.execute()
        done += depth // 2 * 2
    client.close()
    return done


def rate(port: int, transaction: bool, processes: int, seconds: float, depth: int,
         hashes: bool = False) -> float:
    """Commands/s of ``processes`` clients together (``hashes``: HSET and HGETALL)."""
    return together(_worker, [(port, transaction, seconds, depth, i, hashes)
                              for i in range(processes)])


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=8, help="commands per pipeline")
    parser.add_argument("--hash", action="store_true", help="HSET and HGETALL, not SET and GET")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        ports, mve = open_targets(stack, Path(d), "redis", stack.enter_context(redis_server()),
                                  args.src)
        figures = interleaved(ports, (True, False), args.rounds, lambda port, transaction: rate(
            port, transaction, args.processes, args.seconds, args.depth, args.hash))
        still_held(mve, args.src)
    commands = "HSET of 10 bytes and HGETALL of a hash of up to ten" if args.hash else \
        "SET and GET of 100 bytes"
    lines = [f"{args.processes} redis-py clients, each sending pipelines of {args.depth} "
             f"commands ({commands}), {args.seconds:g} s per run, medians of "
             f"{args.rounds} rounds ({machine()}).", "",
             *table(figures, {True: "MULTI ... EXEC (the default)",
                              False: "transaction=False"}, "pipelines")]
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    main()
