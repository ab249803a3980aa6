"""The MVE engine's own cost per request, with no socket: what MVE adds to the relay's Python.

    python loadtests/bench_engine.py [--clients 50] [--pipeline 16] [--rounds 400] [--repeat 5]
                                     [--profile] [--memcached] [--new-clients]

The engine of a Redis update in MVE is driven as the relay drives it under
``redis-benchmark -t set,get -c 50 -P 16``: in each batch every client's read (``--pipeline``
SETs, or GETs) is counted by its reader (``count_run``) and handed over as a run, the batch
ends (``Flush``), the leader's replies to what was sent on its shared connection come in one read,
the batch ends, the follower's come, the batch ends. The servers are stand-ins that answer SET
with ``+OK`` and GET with a 3-byte value. ``--memcached``: a memcached update instead, its
clients sending ``set key 0 0 3`` and ``get key`` as memcslap does, answered ``STORED`` and one
3-byte VALUE. Printed: the engine's (and the reader's) CPU time per
request, best of ``--repeat`` (``time.process_time``: what the other processes on the machine do
moves it little). ``--profile`` prints cProfile's top functions instead (also with
``--new-clients``).

``--new-clients``: instead, ``--clients`` clients connect during the update at once and each
reads ``--pipeline`` GETs three times (``new_clients``): the engine's CPU per new client, with
``[update] shared_after`` at ``--shared-after`` (1, the default).

This measures the engine alone; ``bench_mve.py`` and ``profile_mve.py`` measure the proxy whole.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from collections.abc import Callable

from twinproxy.compare import Comparator, Rules
from twinproxy.config import UpdateConfig
from twinproxy.engine import Engine
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.protocols import memcache, redis
from twinproxy.protocols.base import Codec
from twinproxy.protocols.messages import Limits
from twinproxy.protocols.redis import encode_command


class Load:
    """A protocol's SET and GET of a 3-byte value, how to tell them in what the engine sent a
    server, and the replies that server gives."""

    def __init__(self, codec: Codec, set_: Callable[[bytes], bytes],
                 get: Callable[[bytes], bytes], set_mark: bytes, get_mark: bytes,
                 set_reply: bytes, get_reply: bytes) -> None:
        self.codec = codec
        self.set, self.get = set_, get  # (of the key)
        self.set_mark, self.get_mark = set_mark, get_mark
        self.set_reply, self.get_reply = set_reply, get_reply


REDIS = Load(redis.CODEC, lambda key: encode_command(b"SET", key, b"xxx"),
             lambda key: encode_command(b"GET", key), b"\r\nSET\r\n", b"\r\nGET\r\n",
             b"+OK\r\n", b"$3\r\nxxx\r\n")
MEMCACHED = Load(memcache.CODEC, lambda key: b"set %s 0 0 3\r\nxxx\r\n" % key,
                 lambda key: b"get %s\r\n" % key, b"set ", b"get ", b"STORED\r\n",
                 b"VALUE key 0 3\r\nxxx\r\nEND\r\n")


class Bench:
    """One engine in MVE with ``clients`` plain clients, and what it sends where."""

    def __init__(self, clients: int, load: Load, shared_after: int = 0):
        config = UpdateConfig(sync="none", shared_after=shared_after)
        self.load = load
        codec = self.codec = load.codec
        self.engine = Engine(codec, Limits(), config, Comparator(codec, Rules((), "a", "b")),
                             ("a", "b"), table=None)
        self.role: dict[int, int] = {}
        self.to_server: list[list[tuple[int, bytes]]] = [[], []]
        self.delivered = 0
        self.readers = {}
        self.handle(ev.Begin())
        for client in range(1, clients + 1):
            self.attach(client)
        self.handle(ev.Release())
        self.handle(ev.StartFollower())
        self.handle(ev.Flush())

    def attach(self, client: int) -> None:
        """A client the engine takes over (before the follower starts: at the sync point; after
        it: a client that connected during the update)."""
        conn = ev.new_id()
        self.role[conn] = 0
        self.readers[client] = self.codec.request_reader()
        self.readers[client].receive(b"version\r\n" if self.load is MEMCACHED else b"")
        self.handle(ev.Attach(client, f"127.0.0.1:{client}", conn, self.codec.reply_reader()))

    def handle(self, event: ev.Event) -> None:
        for command in self.engine.handle(event):
            kind = type(command)
            if kind is cmd.Send:
                data = command.data if type(command.data) is bytes else b"".join(command.data)
                self.to_server[self.role[command.conn]].append((command.conn, data))
            elif kind is cmd.DeliverAll:
                self.delivered += sum(len(data) if type(data) is bytes else sum(map(len, data))
                                      for data in command.replies.values())
            elif kind is cmd.Open:
                self.role[command.conn] = command.role
                self.handle(ev.Connected(command.conn))
            elif kind in (cmd.Failed, cmd.Diverged):
                raise AssertionError(command)

    def answer(self, role: int) -> None:
        """The server of ``role`` answers everything sent to it, one read per connection."""
        sent, self.to_server[role] = self.to_server[role], []
        load = self.load
        for conn, data in sent:
            sets = data.count(load.set_mark)
            gets = data.count(load.get_mark)
            # (a run is all SETs or all GETs, as the benchmarks' reads are: order is kept)
            self.handle(ev.Data(conn, load.set_reply * sets + load.get_reply * gets))
        self.handle(ev.Flush())

    def batch(self, reads: dict[int, bytes]) -> None:
        engine = self.engine
        for client, data in reads.items():
            if engine.runs_allowed(client, True, True):  # (as UpdateDriver.client_data asks)
                reader = self.readers[client]
                got = reader.count_run(data)
                if got is not None:
                    self.handle(ev.Run(client, data, got[1], reader.small_replies,
                                       reader.reads_only))
                    continue
            self.handle(ev.Requests(client, self.readers[client].receive(data)))
        self.handle(ev.Flush())
        self.answer(0)
        self.answer(1)


def new_clients(clients: int, pipeline: int, load: Load = REDIS, shared_after: int = 1) -> float:
    """CPU seconds per client for ``clients`` that connect during the update at once, each then
    reading ``pipeline`` GETs three times, one read after the other's replies, as
    redis-benchmark's clients do at the start of a test (``[update] shared_after = 1``, the
    default: each client's first read goes through its protection, engine.first_read; 0: it
    goes as a run on the shared connection at once)."""
    bench = Bench(0, load, shared_after=shared_after)
    gets = {c: load.get(b"key:%06d" % c) * pipeline for c in range(1, clients + 1)}
    gc.collect()  # (not the previous repeat's clients, found in cycles in this one's time)
    start = time.process_time()
    for client in range(1, clients + 1):
        bench.attach(client)
    for _ in range(3):
        bench.batch(gets)
        while bench.to_server[0] or bench.to_server[1]:  # (what a first reply let go of)
            bench.answer(0)
            bench.answer(1)
    took = time.process_time() - start
    status = bench.engine.status()
    assert status["divergences"] == 0 and status["backlog"] == 0, status
    return took / clients


def run(clients: int, pipeline: int, rounds: int, load: Load = REDIS) -> float:
    """CPU seconds per request over ``rounds`` batches (half SET, half GET)."""
    bench = Bench(clients, load)
    sets = {c: load.set(b"key:%06d" % c) * pipeline for c in range(1, clients + 1)}
    gets = {c: load.get(b"key:%06d" % c) * pipeline for c in range(1, clients + 1)}
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
    parser.add_argument("--memcached", action="store_true", help="a memcached update")
    parser.add_argument("--new-clients", action="store_true",
                        help="the CPU per client of --clients that connect during the update")
    parser.add_argument("--shared-after", type=int, default=1,
                        help="with --new-clients: [update] shared_after (1, the default)")
    args = parser.parse_args()
    load = MEMCACHED if args.memcached else REDIS
    if args.new_clients and args.profile:
        profile = cProfile.Profile()
        profile.runcall(new_clients, args.clients, args.pipeline, load, args.shared_after)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    if args.new_clients:
        best = min(new_clients(args.clients, args.pipeline, load, args.shared_after)
                   for _ in range(args.repeat))
        print(f"{load.codec.name} engine, {args.clients} new clients, three reads of "
              f"{args.pipeline} GETs each, shared_after = {args.shared_after}: "
              f"{best * 1e6:.1f} us of CPU per client")
        return
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, args.clients, args.pipeline, args.rounds, load)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    best = min(run(args.clients, args.pipeline, args.rounds, load) for _ in range(args.repeat))
    print(f"{load.codec.name} engine, {args.clients} clients, -P {args.pipeline}: "
          f"{best * 1e6:.3f} us of CPU per request")


if __name__ == "__main__":
    main()
