"""Trials from the issues, as functions that tests run directly, through twinproxy in SINGLE
mode, and during an update."""

from __future__ import annotations

import socket
import time

import redis

from tests.proxyrun import poll_until
from tests.servers import recv_until


def one_reply(sock: socket.socket) -> bytes:
    """One simple reply, or one bulk string."""
    out = recv_until(sock, b"\r\n")
    if out.startswith(b"$") and not out.startswith(b"$-1"):
        size = int(out[1:out.index(b"\r\n")])
        while len(out) < out.index(b"\r\n") + 2 + size + 2:
            out += sock.recv(65536)
    return out


def blocked_pair_trial(port: int, trial: int, blocked: bool = True) -> tuple[bytes, bytes]:
    """Two fresh connections select a database, then send BRPOPLPUSH on one list about 50 µs
    apart (the first one's target holds a string); a third pushes one element once the server
    shows both blocked (``blocked``; else after half a second: during an update the proxy does
    the waiting). The replies the two get, in the order they blocked (``b"hung"`` for one that
    got nothing in two seconds)."""
    admin = redis.Redis(port=port, db=9, socket_timeout=10)
    src, t1, t2 = f"blist{trial}", f"t1-{trial}", f"t2-{trial}"
    admin.delete(src, t1, t2)
    admin.set(t1, "a string")
    first, second = (socket.create_connection(("127.0.0.1", port), timeout=10)
                     for _ in range(2))
    for s in (first, second):
        s.sendall(b"SELECT 9\r\n")
        assert one_reply(s) == b"+OK\r\n"
    first.sendall(b"BRPOPLPUSH %s %s 0\r\n" % (src.encode(), t1.encode()))
    time.sleep(0.00005)
    second.sendall(b"BRPOPLPUSH %s %s 0\r\n" % (src.encode(), t2.encode()))
    if blocked:
        poll_until(lambda: admin.info("clients")["blocked_clients"], lambda n: n >= 2, 10,
                   "both clients to block")
    else:
        time.sleep(0.5)
    admin.lpush(src, "foo")
    replies = []
    for s in (first, second):
        s.settimeout(2)
        try:
            replies.append(one_reply(s))
        except TimeoutError:
            replies.append(b"hung")
        s.close()
    return replies[0], replies[1]


BLOCKED_PAIR = (b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                b"$3\r\nfoo\r\n")


def blocked_pair_misses(port: int, trials: int, blocked: bool = True) -> list[tuple]:
    """The trials of :func:`blocked_pair_trial` that did not end as directly.

    Tests allow one in their run: on this 2-core machine under load, redis-server itself now
    and then runs two requests in the other order than they reached it (seen with MONITOR: the
    proxy had forwarded them in order, 0.57 ms apart). Directly it did not show in 100 trials;
    the proxy's own reordering hung 18 of 100."""
    misses = []
    for trial in range(trials):
        got = blocked_pair_trial(port, trial, blocked)
        if got != BLOCKED_PAIR:
            misses.append((trial, *got))
    return misses
