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


# A script that keeps the server busy for about a second and a half, then returns 1.
BUSY_SCRIPT = (b"local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] "
               b"repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 1500000 "
               b"return 1")


def busy_multi_trial(port: int) -> list[bytes]:
    """A client that has been served sends ``MULTI``, ``SET``, ``EXEC`` in one write while a
    script runs past the busy threshold; the three replies it gets. Directly: ``+OK``, the
    server's ``-BUSY``, and ``-EXECABORT`` (MULTI is allowed while the server is busy, the SET
    is refused and flags the transaction). The proxy's own requests must not change that."""
    admin = redis.Redis(port=port, socket_timeout=10)
    admin.config_set("lua-time-limit", 100)
    client, runner, probe = (socket.create_connection(("127.0.0.1", port), timeout=10)
                             for _ in range(3))
    lines = client.makefile("rb")
    try:
        client.sendall(b"PING\r\n")
        assert lines.readline() == b"+PONG\r\n"
        runner.sendall(b"*3\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n"
                       % (len(BUSY_SCRIPT), BUSY_SCRIPT))
        deadline = time.monotonic() + 5
        while True:  # until the server answers -BUSY to others (INFO: during an update the
            # proxy sends it on the client's own connections, where it is not queued behind
            # the script)
            probe.sendall(b"INFO server\r\n")
            if one_reply(probe).startswith(b"-BUSY"):
                break
            assert time.monotonic() < deadline, "the script never made the server busy"
            time.sleep(0.02)
        client.sendall(b"MULTI\r\nSET busy-key v\r\nEXEC\r\n")
        replies = [lines.readline() for _ in range(3)]
        assert one_reply(runner) == b":1\r\n"
        client.sendall(b"PING\r\n")  # and the connection goes on in step
        replies.append(lines.readline())
        return replies
    finally:
        lines.close()
        for s in (client, runner, probe):
            s.close()
        admin.close()


def busy_multi_ok(replies: list[bytes]) -> bool:
    """Whether :func:`busy_multi_trial`'s replies are what redis-server gives directly."""
    return (len(replies) == 4 and replies[0] == b"+OK\r\n" and replies[1].startswith(b"-BUSY")
            and replies[2].startswith(b"-EXECABORT") and replies[3] == b"+PONG\r\n")


def blocked_chain_trial(port: int, trial: int) -> list[bytes]:
    """Two clients chain BRPOPLPUSH between two lists (each moves what the other waits for),
    then both block on empty lists and close while blocked; a third client's requests are then
    answered, and an element pushed for nobody stays where it was pushed. The replies, in
    order: the two moved elements, then PING's, LPUSH's and LRANGE's."""
    admin = socket.create_connection(("127.0.0.1", port), timeout=10)
    names = [f"chain{trial}:{n}" for n in range(4)]
    admin.sendall(b"DEL %s\r\n" % " ".join(names).encode())
    one_reply(admin)
    first, second = (socket.create_connection(("127.0.0.1", port), timeout=10)
                     for _ in range(2))
    c0, c1, c2, c3 = (n.encode() for n in names)
    first.sendall(b"BRPOPLPUSH %s %s 0\r\n" % (c0, c1))
    second.sendall(b"BRPOPLPUSH %s %s 0\r\n" % (c1, c0))
    time.sleep(0.3)
    admin.sendall(b"LPUSH %s v\r\n" % c0)
    replies = [one_reply(admin), one_reply(first), one_reply(second)]
    first.sendall(b"BRPOPLPUSH %s %s 0\r\n" % (c2, c3))
    second.sendall(b"BRPOPLPUSH %s %s 0\r\n" % (c3, c2))
    time.sleep(0.3)
    first.close()
    second.close()
    time.sleep(0.3)
    admin.settimeout(5)
    for request in (b"PING\r\n", b"LPUSH %s w\r\n" % c2, b"LRANGE %s 0 -1\r\n" % c2):
        admin.sendall(request)
        try:
            replies.append(recv_until(admin, b"\r\n") if not request.startswith(b"LRANGE")
                           else recv_until(admin, b"w\r\n"))
        except TimeoutError:
            replies.append(b"hung")
    admin.close()
    return replies


BLOCKED_CHAIN = [b":1\r\n", b"$1\r\nv\r\n", b"$1\r\nv\r\n", b"+PONG\r\n", b":1\r\n",
                 b"*1\r\n$1\r\nw\r\n"]
