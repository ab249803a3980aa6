"""The MVE engine's own cost per request, with no socket: what MVE adds to the relay's Python.

    python loadtests/bench_engine.py [--clients 50] [--pipeline 16] [--rounds 400] [--repeat 5]
                                     [--profile]

The engine of a Redis update in MVE is driven as the relay drives it under
``redis-benchmark -t set,get -c 50 -P 16``: in each batch every client's read (``--pipeline``
SETs, or GETs) is counted by its reader (``count_run``) and handed over as a run, the batch
ends (``Flush``), the leader's replies to what was sent on its shared connection come in one read,
the batch ends, the follower's come, the batch ends. The servers are stand-ins that answer SET
with ``+OK`` and GET with a 3-byte value. Printed: the engine's (and the reader's) CPU time per
request, best of ``--repeat`` (``time.process_time``: what the other processes on the machine do
moves it little). ``--profile`` prints cProfile's top functions instead.

This measures the engine alone; ``bench_mve.py`` and ``profile_mve.py`` measure the proxy whole.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from twinproxy.compare import Comparator, Rules
from twinproxy.config import UpdateConfig
from twinproxy.engine import Engine
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.protocols.messages import Limits
from twinproxy.protocols.redis import CODEC, encode_command

SET_REPLY = b"+OK\r\n"
GET_REPLY = b"$3\r\nxxx\r\n"


class Bench:
    """One engine in MVE with ``clients`` plain clients, and what it sends where."""

    def __init__(self, clients: int):
        config = UpdateConfig(sync="none", shared_after=0)
        self.engine = Engine(CODEC, Limits(), config, Comparator(CODEC, Rules((), "a", "b")),
                             ("a", "b"), table=None)
        self.role: dict[int, int] = {}
        self.to_server: list[list[tuple[int, bytes]]] = [[], []]
        self.delivered = 0
        self.readers = {}
        self.handle(ev.Begin())
        for client in range(1, clients + 1):
            conn = ev.new_id()
            self.role[conn] = 0
            self.readers[client] = CODEC.request_reader()
            self.handle(ev.Attach(client, f"127.0.0.1:{client}", conn, CODEC.reply_reader()))
        self.handle(ev.Release())
        self.handle(ev.StartFollower())
        self.handle(ev.Flush())

    def handle(self, event: ev.Event) -> None:
        for command in self.engine.handle(event):
            kind = type(command)
            if kind is cmd.Send:
                self.to_server[self.role[command.conn]].append((command.conn, command.data))
            elif kind is cmd.Deliver:
                self.delivered += len(command.data)
            elif kind is cmd.Open:
                self.role[command.conn] = command.role
                self.handle(ev.Connected(command.conn))
            elif kind in (cmd.Failed, cmd.Diverged):
                raise AssertionError(command)

    def answer(self, role: int) -> None:
        """The server of ``role`` answers everything sent to it, one read per connection."""
        sent, self.to_server[role] = self.to_server[role], []
        for conn, data in sent:
            sets = data.count(b"\r\nSET\r\n")
            gets = data.count(b"\r\nGET\r\n")
            # (a run is all SETs or all GETs, as redis-benchmark's reads are: order is kept)
            self.handle(ev.Data(conn, SET_REPLY * sets + GET_REPLY * gets))
        self.handle(ev.Flush())

    def batch(self, reads: dict[int, bytes]) -> None:
        engine = self.engine
        for client, data in reads.items():
            if engine.runs_allowed(client):
                got = self.readers[client].count_run(data)
                if got is not None:
                    self.handle(ev.Run(client, data, got[1]))
                    continue
            self.handle(ev.Requests(client, self.readers[client].receive(data)))
        self.handle(ev.Flush())
        self.answer(0)
        self.answer(1)


def run(clients: int, pipeline: int, rounds: int) -> float:
    """CPU seconds per request over ``rounds`` batches (half SET, half GET)."""
    bench = Bench(clients)
    sets = {c: encode_command(b"SET", b"key:%06d" % c, b"xxx") * pipeline
            for c in range(1, clients + 1)}
    gets = {c: encode_command(b"GET", b"key:%06d" % c) * pipeline for c in range(1, clients + 1)}
    bench.batch(sets)  # warm up
    start = time.process_time()
    for i in range(rounds):
        bench.batch(sets if i < rounds // 2 else gets)
    took = time.process_time() - start
    status = bench.engine.status()
    assert status["divergences"] == 0 and status["backlog"] == 0, status
    return took / (rounds * clients * pipeline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pipeline", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, args.clients, args.pipeline, args.rounds)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    best = min(run(args.clients, args.pipeline, args.rounds) for _ in range(args.repeat))
    print(f"engine, {args.clients} clients, -P {args.pipeline}: {best * 1e6:.3f} us of CPU "
          f"per request")


if __name__ == "__main__":
    main()
