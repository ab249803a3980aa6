"""A full logical dump of a Redis server, to check that two versions hold the same data.

Logical, not ``DUMP``: a DUMP payload carries its RDB version, which differs between 6.2 and 7.0.
Every key of every database in use, with its type, its value and its remaining time to live.
"""

from __future__ import annotations

from typing import Any

import redis

BATCH = 1000


def dump(port: int, db: int = 0) -> dict[bytes, tuple[str, Any, int]]:
    """{key: (type, value, expiry)}; sets are sorted, hashes are dicts, streams their entries.

    ``expiry`` is when the key expires, in milliseconds of the wall clock (the server's TIME
    just before its PTTL was read in the same pipeline, plus the PTTL), or the PTTL's -1 (no
    expiry): comparable between two dumps taken one after the other (PEXPIRETIME itself is 7.0
    only). The server's clock, not the client's after the replies: on a busy machine reading a
    batch's replies can take longer than the slack the comparison allows."""
    r = redis.Redis(port=port, db=db, socket_timeout=60)
    keys = list(r.scan_iter(count=BATCH))
    out: dict[bytes, tuple[str, Any, int]] = {}
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        pipe = r.pipeline(transaction=False)
        for key in batch:
            pipe.type(key)
        types = [t.decode() for t in pipe.execute()]
        pipe = r.pipeline(transaction=False)
        pipe.time()
        for key, kind in zip(batch, types, strict=True):
            if kind == "string":
                pipe.get(key)
            elif kind == "list":
                pipe.lrange(key, 0, -1)
            elif kind == "hash":
                pipe.hgetall(key)
            elif kind == "set":
                pipe.smembers(key)
            elif kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                pipe.xrange(key)
            else:
                pipe.exists(key)
            pipe.pttl(key)
        (seconds, micros), *values = pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        for i, (key, kind) in enumerate(zip(batch, types, strict=True)):
            value, pttl = values[2 * i], values[2 * i + 1]
            if kind == "set":
                value = sorted(value)
            out[key] = (kind, value, now_ms + pttl if pttl >= 0 else pttl)
    return out


def differences(a: dict, b: dict, ttl_slack_ms: int = 1000) -> list[str]:
    """What differs between two dumps (expiries may differ by ``ttl_slack_ms``); empty if
    none."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            out.append(f"{key!r} only in {'first' if key in a else 'second'}")
            continue
        (ta, va, pa), (tb, vb, pb) = a[key], b[key]
        if ta != tb or va != vb:
            out.append(f"{key!r}: {ta} {va!r:.100} != {tb} {vb!r:.100}")
        elif ((pa < 0 or pb < 0) and pa != pb) or abs(pa - pb) > ttl_slack_ms:
            out.append(f"{key!r}: ttl {pa} != {pb}")
        if len(out) >= 20:
            break
    return out


def load_every_type(port: int, count: int) -> None:
    """``count`` keys spread over every type, a tenth with a TTL, loaded with pipelines."""
    r = redis.Redis(port=port, socket_timeout=120)
    pipe = r.pipeline(transaction=False)
    for i in range(count):
        kind = i % 6
        key = f"pre:{kind}:{i}"
        if kind == 0:
            pipe.set(key, f"value-{i}")
        elif kind == 1:
            pipe.rpush(key, *range(i % 7 + 1))
        elif kind == 2:
            pipe.hset(key, mapping={f"f{j}": j for j in range(i % 5 + 1)})
        elif kind == 3:
            pipe.sadd(key, *range(i % 9 + 1))
        elif kind == 4:
            pipe.zadd(key, {f"m{j}": j * 1.5 for j in range(i % 6 + 1)})
        else:
            pipe.xadd(key, {"n": i}, id=f"{i + 1}-0")
        if i % 10 == 0:
            pipe.expire(key, 3600)
        if len(pipe) >= BATCH:
            pipe.execute()
    pipe.execute()
