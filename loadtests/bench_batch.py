"""The relay's user-space cost per ready socket in SINGLE mode's plain state, without the
kernel's share or the machine's load: the batch served through C (``serve``, relay/_pump.c)
against the same batch through Python (``Loop._ready``), on socket pairs.

Each round writes one memcached request to each of ``--pairs`` clients and one reply to each of
their server connections, then times one batch of all those ready sockets (read, count, send),
and drains what was sent. Prints the median microseconds per ready socket of each path; the
system calls (one recv and one send per socket) are in both. Run:
``PYTHONPATH=src python loadtests/bench_batch.py``.

``--redis``: a Redis client's read of ``--pipeline`` requests (SET and GET, as
``redis-benchmark -P N`` sends them) and their replies instead, and the batch as the loop runs
it (``serve`` holding the clients' requests to its end: ``Loop._serve_plain``). The times are the
thread's CPU time (``time.thread_time``), which other processes' load does not stretch; to
compare two checkouts, run it from each (``PYTHONPATH=OTHER/src``), interleaved.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable
from select import EPOLLIN

from twinproxy.protocols.memcache import CODEC
from twinproxy.protocols.messages import DEFAULT_LIMITS
from twinproxy.protocols.reader import RequestReader
from twinproxy.protocols.redis import CODEC as REDIS
from twinproxy.relay import single
from twinproxy.relay.connections import BUFSIZE, ClientConn, ServerConn
from twinproxy.relay.single import SingleMode

REQUEST = b"get key:000000000001\r\n"
REPLY = b"VALUE key:000000000001 0 3\r\nabc\r\nEND\r\n"
REDIS_SET = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000001\r\n$3\r\nxxx\r\n"
REDIS_GET = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000001\r\n"


def relay() -> SingleMode:
    """A SingleMode with only what the plain path reads (no epoll set, no listener)."""
    r = SingleMode.__new__(SingleMode)
    r.carry = r.watch = r.driver = None
    r.now = 1.0
    r.client_received = r.client_sent = 0
    r.server_received, r.server_sent = [0, 0], [0, 0]
    r._buffer = bytearray(BUFSIZE)
    r._view = memoryview(r._buffer)
    r._fds = {}
    return r


def plain_pairs(r: SingleMode, pairs: int, reader: Callable[[], RequestReader]
                ) -> tuple[list[socket.socket], list[tuple[socket.socket, socket.socket]],
                           list[tuple[int, int]]]:
    """``pairs`` clients in the plain state, each with its server connection, on socket pairs
    registered in ``r``: (every socket, (client peer, server peer) per client, the ready list
    of both sides' fds)."""
    socks, peers, ready = [], [], []
    for _ in range(pairs):
        client_peer, client_sock = socket.socketpair()
        server_sock, server_peer = socket.socketpair()
        for s in (client_sock, server_sock):
            s.setblocking(False)
        client = ClientConn(client_sock, reader(), "peer")
        link = ServerConn(server_sock, client, backend=None, replies=None)  # type: ignore[arg-type]
        link.connected = True
        client.link = link
        r._fds[client.fd] = client
        r._fds[link.fd] = link
        ready += [(client.fd, EPOLLIN), (link.fd, EPOLLIN)]
        socks += [client_sock, server_sock, client_peer, server_peer]
        peers.append((client_peer, server_peer))
    return socks, peers, ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--redis", action="store_true",
                        help="Redis pipelines (and the batch holding requests) instead")
    parser.add_argument("--pipeline", type=int, default=16, help="requests per read (--redis)")
    args = parser.parse_args()
    if args.redis:
        redis(args)
        return
    r = relay()

    def reader() -> RequestReader:
        made = CODEC.request_reader(DEFAULT_LIMITS)
        made.receive(b"mn\r\n")  # (past the first request, as count() wants)
        return made

    socks, peers, ready = plain_pairs(r, args.pairs, reader)
    fds = r._fds
    times: dict[str, list[float]] = {"C (serve)": [], "Python (_ready)": []}
    for i in range(args.rounds):
        for client_peer, server_peer in peers:
            client_peer.send(REQUEST)
            server_peer.send(REPLY)
        if i % 2:
            start = time.perf_counter()
            assert single.serve(r, fds, ready, 0, r._buffer) is None
            times["C (serve)"].append(time.perf_counter() - start)
        else:
            start = time.perf_counter()
            for fd, events in ready:
                r._ready(fds[fd], events)
            times["Python (_ready)"].append(time.perf_counter() - start)
        for client_peer, server_peer in peers:
            assert server_peer.recv(4096) == REQUEST
            assert client_peer.recv(4096) == REPLY
    for name, values in times.items():
        print(f"{name}: {1e6 * statistics.median(values) / len(ready):.2f} us per ready socket")
    for s in socks:
        s.close()


def redis(args: argparse.Namespace) -> None:
    """``--redis``: a round of SET reads and replies, then one of GET, alternately; the thread's
    CPU time per batch of all the ready sockets, per request (a request and its reply)."""
    r = relay()
    rounds = [(REDIS_SET * args.pipeline, b"+OK\r\n" * args.pipeline),
              (REDIS_GET * args.pipeline, b"$3\r\nxxx\r\n" * args.pipeline)]

    def reader() -> RequestReader:
        made = REDIS.request_reader(DEFAULT_LIMITS)
        made.count(REDIS_SET + REDIS_GET)  # (SET and GET now known ordinary)
        return made

    socks, peers, ready = plain_pairs(r, args.pairs, reader)
    fds = r._fds
    shorts: list = []
    times: list[float] = []
    clock = time.thread_time
    for i in range(args.rounds):
        requests, replies = rounds[i % 2]
        for client_peer, server_peer in peers:
            client_peer.send(requests)
            server_peer.send(replies)
        start = clock()
        assert single.serve(r, fds, ready, 0, r._buffer, shorts) is None
        times.append(clock() - start)
        assert not shorts
        for client_peer, server_peer in peers:
            assert server_peer.recv(65536) == requests
            assert client_peer.recv(65536) == replies
    per = 1e6 / (args.pairs * args.pipeline)
    print(f"C (serve), Redis -P {args.pipeline}: {statistics.median(times) * per:.3f} us of CPU "
          f"per request and reply (quartiles {statistics.quantiles(times)[0] * per:.3f} to "
          f"{statistics.quantiles(times)[2] * per:.3f})")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
