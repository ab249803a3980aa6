"""A mixed Redis load from many concurrent clients (redis-py, asyncio), for updates under load.

    python loadtests/redis_load.py --port 6380 --clients 50 --seconds 10 [--out result.json]

Each client runs commands of many types on a shared key space (so that clients conflict and the
proxy's ordering is exercised): strings, counters, lists, hashes, sets with SPOP/SRANDMEMBER,
sorted sets, streams with ``XADD *``, expirations and TTLs, MULTI/EXEC transactions, pipelines,
scripts and short blocking pops (``--mix hot``: INCR, LPUSH, SADD and SPOP on the same 10
keys, all clients contending; ``--mix transactions``: MULTI/EXEC holding SPOP, SRANDMEMBER,
HRANDFIELD, ZRANDMEMBER and RANDOMKEY on shared keys, some aborted by WATCH, some discarded).
Every client also appends a sequence number to its own list ``acks:<client>`` and remembers
which appends were acknowledged, so that a test can check that no acknowledged write was lost.
Runs until ``--seconds`` pass or SIGTERM/SIGINT, then writes a JSON summary: operations (per
kind with ``--mix hot`` and ``--mix transactions``), errors (with samples), and the acknowledged
sequence numbers per client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

KEYS = 200  # per type: small enough that clients meet on the same keys often

SCRIPT = "redis.call('INCR', KEYS[1]); return redis.call('GET', KEYS[1])"


async def one_op(r: aioredis.Redis, rnd: random.Random, me: int, seq: int) -> None:
    n = rnd.randrange(KEYS)
    op = rnd.randrange(24)
    if op == 0:
        await r.set(f"str:{n}", f"v{seq}")
    elif op == 1:
        await r.get(f"str:{n}")
    elif op == 2:
        await r.incr(f"cnt:{n}")
    elif op == 3:
        await r.append(f"str:{n}", "x")
    elif op == 4:
        await r.mget([f"str:{n}", f"str:{(n + 1) % KEYS}"])
    elif op == 5:
        await r.lpush(f"list:{n}", seq)
    elif op == 6:
        await r.rpop(f"list:{n}")
    elif op == 7:
        await r.lrange(f"list:{n}", 0, 5)
    elif op == 8:
        await r.hset(f"hash:{n}", f"f{seq % 20}", seq)
    elif op == 9:
        await r.hgetall(f"hash:{n}")
    elif op == 10:
        await r.hincrby(f"hash:{n}", "count", 1)
    elif op == 11:
        await r.sadd(f"set:{n}", seq % 50)
    elif op == 12:
        await r.spop(f"set:{n}")
    elif op == 13:
        await r.srandmember(f"set:{n}", 2)
    elif op == 14:
        await r.zadd(f"zset:{n}", {f"m{seq % 30}": seq})
    elif op == 15:
        await r.zincrby(f"zset:{n}", 1.5, "m1")
    elif op == 16:
        await r.zrange(f"zset:{n}", 0, 3, withscores=True)
    elif op == 17:
        await r.xadd(f"stream:{n % 20}", {"seq": seq}, maxlen=100, approximate=False)
    elif op == 18:
        await r.expire(f"str:{n}", 300)
        await r.ttl(f"str:{n}")
    elif op == 19:
        async with r.pipeline(transaction=True) as p:
            p.incr(f"cnt:{n}").lpush(f"list:{n}", seq).hset(f"hash:{n}", "last", seq)
            await p.execute()
    elif op == 20:
        async with r.pipeline(transaction=False) as p:
            for i in range(5):
                p.set(f"str:{(n + i) % KEYS}", seq).get(f"cnt:{(n + i) % KEYS}")
            await p.execute()
    elif op == 21:
        await r.eval(SCRIPT, 1, f"cnt:{n}")
    elif op == 22:
        await r.blpop([f"queue:{n % 10}"], timeout=0.05)
        await r.rpush(f"queue:{(n + 1) % 10}", seq)
    else:
        await r.delete(f"tmp:{n}")
        await r.exists(f"str:{n}")


async def hot_op(r: aioredis.Redis, rnd: random.Random, me: int, seq: int) -> str:
    """INCR, LPUSH, SADD and SPOP on the same 10 keys: every client conflicts with the others.
    Returns the command, so that a test can tell each kind ran."""
    n = rnd.randrange(10)
    op = rnd.randrange(4)
    if op == 0:
        await r.incr(f"hot:cnt:{n}")
        return "INCR"
    if op == 1:
        await r.lpush(f"hot:list:{n}", f"{me}-{seq}")
        return "LPUSH"
    if op == 2:
        await r.sadd(f"hot:set:{n}", f"{me}-{seq % 40}")
        return "SADD"
    # An SPOP that finds the set empty did nothing random: counted apart.
    return "SPOP" if await r.spop(f"hot:set:{n}") is not None else "SPOP (empty)"


async def _raw(r: aioredis.Redis, *commands: tuple) -> list:
    """Send ``commands`` one by one on one connection, each after the reply to the one before
    (a transaction typed interactively); returns the replies."""
    conn = await r.connection_pool.get_connection()
    try:
        replies = []
        for words in commands:
            await conn.send_command(*words)
            replies.append(await conn.read_response())
        return replies
    except BaseException:
        await conn.disconnect()  # mid-transaction: not fit for the next user
        raise
    finally:
        await r.connection_pool.release(conn)


async def tx_op(r: aioredis.Redis, rnd: random.Random, me: int, seq: int) -> str:
    """Transactions holding random commands (SPOP, SRANDMEMBER, HRANDFIELD, ZRANDMEMBER,
    RANDOMKEY) on 10 sets, hashes and sorted sets that all clients share: pipelined (redis-py),
    typed interactively, aborted by a WATCHed key that changed, and discarded. Returns the kind,
    so that a test can tell each ran."""
    n = rnd.randrange(10)
    s, h, z = f"tx:set:{n}", f"tx:hash:{n}", f"tx:zset:{n}"
    fill = [("SADD", s, f"{me}-{seq % 20}", f"{me}-{(seq + 7) % 20}"),
            ("HSET", h, f"f{seq % 12}", seq), ("ZADD", z, seq % 50, f"m{seq % 15}")]
    chosen = [("SPOP", s, 2), ("SRANDMEMBER", s), ("HRANDFIELD", h, 2, "WITHVALUES"),
              ("ZRANDMEMBER", z, 2, "WITHSCORES")]
    op = rnd.randrange(6)
    if op == 0:
        async with r.pipeline(transaction=True) as p:
            for words in fill + chosen:
                p.execute_command(*words)
            await p.execute()
        return "MULTI (pipelined)"
    if op in (1, 2):
        extra = [("RANDOMKEY",), ("SPOP", s)] if op == 2 else []
        replies = await _raw(r, ("MULTI",), *fill, *chosen, *extra, ("EXEC",))
        assert isinstance(replies[-1], list), replies[-1]
        return "MULTI (interactive)"
    if op == 3:  # the watched key changes on the same connection: EXEC must abort
        replies = await _raw(r, ("WATCH", s), ("SADD", s, f"w{me}-{seq}"), ("MULTI",),
                             ("SPOP", s, 2), ("SRANDMEMBER", s, -3), ("EXEC",))
        assert replies[-1] is None, replies[-1]
        return "EXEC (aborted)"
    if op == 4:  # contended: EXEC aborts when another client wrote the set in between
        replies = await _raw(r, ("WATCH", s), ("SCARD", s), ("MULTI",), ("SPOP", s),
                             ("HRANDFIELD", h), ("EXEC",))
        return "EXEC (watched)" if replies[-1] is not None else "EXEC (aborted)"
    await _raw(r, ("MULTI",), *fill, ("SPOP", s, 3), ("DISCARD",))
    return "DISCARD"


MIXES = {"mixed": one_op, "hot": hot_op, "transactions": tx_op}


async def client(port: int, me: int, stop: asyncio.Event, out: dict, mix: str) -> None:
    rnd = random.Random(me)
    r = aioredis.Redis(port=port, socket_timeout=30, retry=Retry(NoBackoff(), 0))
    acked: list[int] = []
    seq = 0
    try:
        while not stop.is_set():
            seq += 1
            try:
                kind = await MIXES[mix](r, rnd, me, seq)
                if seq % 5 == 0:
                    await r.rpush(f"acks:{me}", seq)
                    acked.append(seq)
                out["ops"] += 1
                if kind is not None:
                    out["by_command"][kind] = out["by_command"].get(kind, 0) + 1
            except Exception as exc:
                out["errors"] += 1
                if len(out["samples"]) < 10:
                    out["samples"].append(f"client {me}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)
    finally:
        out["acked"][me] = acked
        await r.aclose()


async def main(port: int, clients: int, seconds: float, mix: str = "mixed",
               ready: str | None = None) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready:  # from now on a SIGTERM stops the load cleanly, with its summary written
        with open(ready, "w"):
            pass
    out: dict = {"ops": 0, "errors": 0, "samples": [], "acked": {}, "by_command": {}}
    started = time.monotonic()
    tasks = [asyncio.create_task(client(port, i, stop, out, mix)) for i in range(clients)]
    if seconds:
        loop.call_later(seconds, stop.set)
    await stop.wait()
    await asyncio.gather(*tasks)
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=0, help="0: until SIGTERM")
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--out", help="write the JSON summary here (default: stdout)")
    parser.add_argument("--ready", help="create this file once SIGTERM stops the load cleanly")
    args = parser.parse_args()
    result = asyncio.run(main(args.port, args.clients, args.seconds, args.mix, args.ready))
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
