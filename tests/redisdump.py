"""A full logical dump of a Redis server, to check that two versions hold the same data.

Logical, not ``DUMP``: a DUMP payload carries its RDB version, which differs between 6.2 and 7.0.
Every key of every database in use, with its type, its value and its remaining time to live.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis
import redis

BATCH = 1000


def dump(port: int, db: int = 0) -> dict[bytes, tuple[str, Any, Any]]:
    """{key: (type, value, expiry)}; sets are sorted, hashes are dicts, streams their entries.

    ``expiry`` is when the key expires, in milliseconds of the wall clock, as the bounds
    ``(earliest, latest)`` the server's own clock gives it: its PTTL plus its TIME just before
    and just after the group of keys it was read with, in the same pipeline (PEXPIRETIME itself
    is 7.0 only); or the PTTL's -1 (no expiry). Comparable between two dumps taken one after the
    other. Bounds, not one reading of TIME: the server reads a batch's commands a few
    kilobytes at a time, and on a busy machine it may run the last PTTLs of a batch long after
    the batch's first TIME (78 ms for a key both versions got from the same snapshot; a failed
    run of test_real_upgrade_6_2_to_7_0 measured a key 1.2 s apart). The server's clock, not
    the client's after the replies, for the same reason."""
    keys = list(redis.Redis(port=port, db=db, socket_timeout=60).scan_iter(count=BATCH))
    out: dict[bytes, tuple[str, Any, Any]] = {}
    with Pipeline(port, db) as pipe:
        for start in range(0, len(keys), BATCH):
            batch = keys[start : start + BATCH]
            types = [t.decode() for t in pipe.run([[b"TYPE", key] for key in batch])]
            commands = [[b"TIME"]]
            for group in range(0, len(batch), GROUP):
                for key, kind in zip(batch[group : group + GROUP],
                                     types[group : group + GROUP], strict=True):
                    read, args = READS.get(kind, (b"EXISTS", []))
                    commands += [[read, key, *args], [b"PTTL", key]]
                commands.append([b"TIME"])
            replies = pipe.run(commands)
            at = 1
            for group in range(0, len(batch), GROUP):
                some = batch[group : group + GROUP]
                values = replies[at : at + 2 * len(some)]
                # (PTTL and TIME count in whole and in micro seconds: 1 ms either way)
                earliest, latest = _ms(replies[at - 1]) - 1, _ms(replies[at + 2 * len(some)]) + 1
                for i, (key, kind) in enumerate(zip(some, types[group : group + GROUP],
                                                    strict=True)):
                    value, pttl = SHAPES.get(kind, _same)(values[2 * i]), values[2 * i + 1]
                    out[key] = (kind, value,
                                (earliest + pttl, latest + pttl) if pttl >= 0 else pttl)
                at += 2 * len(some) + 1
    return out


GROUP = 50
"""Keys read between two TIMEs: the bounds of their expiries are as far apart as the server
took to run the group."""


def _ms(time_reply: list) -> int:
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


# What reads a key's value, by its type: the command and the arguments after the key.
READS = {"string": (b"GET", []), "list": (b"LRANGE", [b"0", b"-1"]), "hash": (b"HGETALL", []),
         "set": (b"SMEMBERS", []), "zset": (b"ZRANGE", [b"0", b"-1", b"WITHSCORES"]),
         "stream": (b"XRANGE", [b"-", b"+"])}


def _same(value: Any) -> Any:
    return value


def _pairs(flat: list) -> list:
    return list(zip(flat[::2], flat[1::2], strict=True))


# The values in the shapes redis-py gives them (and the dumps always had).
SHAPES = {
    "hash": lambda flat: dict(_pairs(flat)),
    "set": sorted,
    "zset": lambda flat: [(member, float(score)) for member, score in _pairs(flat)],
    "stream": lambda entries: [(id_, dict(_pairs(fields))) for id_, fields in entries],
}


class Pipeline:
    """One connection that sends a list of commands at once and reads their replies with
    hiredis: the same commands as redis-py's pipelines, without redis-py's cost per command in
    Python, which made most of the seconds of a dump of 100,000 keys (three commands a key)."""

    def __init__(self, port: int, db: int = 0, timeout: float = 60.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = hiredis.Reader()
        if db:
            self.run([[b"SELECT", b"%d" % db]])

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def run(self, commands: list[list[bytes]]) -> list:
        """The replies to ``commands``, in order; raises the first error reply."""
        self.sock.sendall(b"".join(_pack(command) for command in commands))
        replies: list = []
        while len(replies) < len(commands):
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError(f"closed after {len(replies)} of {len(commands)} replies")
                self.reader.feed(data)
            elif isinstance(reply, hiredis.ReplyError):
                raise reply
            else:
                replies.append(reply)
        return replies


def _pack(command: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in command)


def differences(a: dict, b: dict, ttl_slack_ms: int = 1000) -> list[str]:
    """What differs between two dumps (expiries may differ by ``ttl_slack_ms``: a key's two
    expiries differ when they are surely further apart, whatever their times within the bounds
    :func:`dump` gives); empty if none."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            out.append(f"{key!r} only in {'first' if key in a else 'second'}")
            continue
        (ta, va, pa), (tb, vb, pb) = a[key], b[key]
        if ta != tb or va != vb:
            out.append(f"{key!r}: {ta} {va!r:.100} != {tb} {vb!r:.100}")
        elif (pa != pb if isinstance(pa, int) or isinstance(pb, int)
              else max(pa[0] - pb[1], pb[0] - pa[1]) > ttl_slack_ms):
            out.append(f"{key!r}: expiry {pa} != {pb}")
        if len(out) >= 20:
            break
    return out


def load_every_type(port: int, count: int) -> None:
    """``count`` keys spread over every type, a tenth with a TTL, loaded with pipelines (the
    commands redis-py's ``set``, ``rpush``, ``hset``, ``sadd``, ``zadd``, ``xadd`` and
    ``expire`` send, through :class:`Pipeline`)."""
    commands: list[list[bytes]] = []
    with Pipeline(port, timeout=120) as pipe:
        for i in range(count):
            kind = i % 6
            key = f"pre:{kind}:{i}".encode()
            if kind == 0:
                commands.append([b"SET", key, b"value-%d" % i])
            elif kind == 1:
                commands.append([b"RPUSH", key, *_numbers(i % 7 + 1)])
            elif kind == 2:
                commands.append([b"HSET", key, *(x for j in range(i % 5 + 1)
                                                 for x in (b"f%d" % j, b"%d" % j))])
            elif kind == 3:
                commands.append([b"SADD", key, *_numbers(i % 9 + 1)])
            elif kind == 4:
                commands.append([b"ZADD", key, *(x for j in range(i % 6 + 1)
                                                 for x in (repr(j * 1.5).encode(), b"m%d" % j))])
            else:
                commands.append([b"XADD", key, b"%d-0" % (i + 1), b"n", b"%d" % i])
            if i % 10 == 0:
                commands.append([b"EXPIRE", key, b"3600"])
            if len(commands) >= BATCH:
                pipe.run(commands)
                commands = []
        pipe.run(commands)


def _numbers(n: int) -> list[bytes]:
    return [b"%d" % x for x in range(n)]
