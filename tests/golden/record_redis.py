"""Record what real redis-server 6.2 and 7.0 answer, for the Redis codec's golden tests.

    python tests/golden/record_redis.py                  # rewrites tests/golden/redis/*
    python tests/golden/record_redis.py --builtin-table  # regenerates redis/command_data.py

Each session runs on fresh servers (started with tests/servers.py) over raw sockets, one request
at a time: a request is sent, then everything every connection of the session receives is kept
until all have been quiet for a moment. So which request a reply answers is known from when it
came, not from the codec under test: replies on the connection that sent the request answer it,
except what the protocol says is out of band (RESP3 pushes other than the confirmations the
request asked for, RESP2 pub/sub messages, MONITOR lines); replies that come on another
connection answer the request that blocked there. Each reply's bytes and value are cut and
parsed by hiredis, fed one byte at a time: an independent parser.

Stored per version (``6.2.json``, ``7.0.json``), as JSON strings holding bytes one to one
(latin-1): the sessions (each step's request bytes, the bytes each connection received, and the
replies with their hiredis values and what they answer), the raw ``COMMAND`` reply (in
``<version>.command.resp``), ``COMMAND GETKEYS`` for a list of requests, and what the server does
with malformed requests (``protocol_errors``).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import hiredis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402

OUT = ROOT / "tests" / "golden" / "redis"
DATA_MODULE = ROOT / "src" / "twinproxy" / "protocols" / "redis" / "command_data.py"
VERSIONS = {"6.2": "6", "7.0": "7"}
QUIET = 0.15  # seconds without bytes that end a step (generous: the machine may be busy)
MONITOR_LINE = re.compile(rb"[0-9]+\.[0-9]+ \[[0-9]+ ")
CONFIRMS = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
            "sunsubscribe"}  # fmt: skip


def cmd(*args: str | bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def c(text: str, conn: str = "a", **opts: Any) -> dict:
    """A step: ``text`` split on spaces (``\\s`` for a space inside an argument)."""
    args = [a.replace("\\s", " ") for a in text.split(" ")]
    return {"conn": conn, "request": cmd(*args), **opts}


def raw(data: bytes, conn: str = "a", **opts: Any) -> dict:
    """A step sending ``data`` as it is (inline commands)."""
    return {"conn": conn, "request": data, **opts}


LUA_TYPES = ("return {1, 'two', {3, false}, redis.status_reply('ok'), redis.error_reply('bad')}")
LUA_RESP3 = ("redis.setresp(3); return {redis.call('HGETALL', KEYS[1]), "
             "redis.call('SMEMBERS', KEYS[2]), redis.call('ZSCORE', KEYS[3], 'm')}")
FUNCTION = "#!lua name=lib\nredis.register_function('echo_key', function(k, a) return k[1] end)"

# Sessions: name -> steps. Options: volatile (the value changes run to run), blocks (the reply
# comes later, on another step), wait (seconds to wait instead of QUIET), v7 (7.0 only).
# UNSUBSCRIBE of several channels and COMMAND INFO of a command with subcommands are volatile:
# the server walks hash tables in random order.
SESSIONS: dict[str, list[dict]] = {
    "strings": [
        c("SET s1 hello"), c("GET s1"), c("GET missing"), c("SET s1 world GET"),
        c("MSET s2 1 s3 2"), c("MGET s1 s2 nosuch s3"), c("INCR s2"), c("INCRBY s2 -5"),
        c("INCRBYFLOAT s3 1.5"), c("APPEND s1 !!"), c("STRLEN s1"), c("GETRANGE s1 0 2"),
        c("SETNX s1 x"), c("GETDEL s1"), c("SETEX s4 100 v"), c("EXISTS s2 s3 s4 s5"),
        c("SET empty \\s"), c("GET empty"), c("DEL s2 s3 s4"),
    ],
    "lists": [
        c("RPUSH l a b c d e"), c("LRANGE l 0 -1"), c("LPOP l 2"), c("LMOVE l l2 RIGHT LEFT"),
        c("LPOS l c"), c("LINSERT l BEFORE c x"), c("LLEN l"), c("LINDEX l 99"),
        c("LMPOP 2 nolist l LEFT COUNT 2"), c("LRANGE l2 0 -1"),
    ],
    "hashes": [
        c("HSET h f1 v1 f2 v2 f3 3"), c("HGETALL h"), c("HMGET h f1 nosuch f2"),
        c("HINCRBYFLOAT h f3 0.25"), c("HKEYS h"), c("HEXISTS h f1"), c("HDEL h f1 nosuch"),
        c("HRANDFIELD h -2 WITHVALUES", volatile=True), c("HLEN h"),
    ],
    "sets": [
        c("SADD st 3 1 2"), c("SMEMBERS st"), c("SISMEMBER st 2"), c("SMISMEMBER st 1 9"),
        c("SADD st2 2 3 4"), c("SINTER st st2"), c("SINTERCARD 2 st st2"), c("SCARD st"),
        c("SRANDMEMBER st", volatile=True), c("SPOP st2", volatile=True),
    ],
    "sorted_sets": [
        c("ZADD z 1 a 2.5 b 3 c"), c("ZRANGE z 0 -1 WITHSCORES"), c("ZSCORE z b"),
        c("ZSCORE z nosuch"), c("ZINCRBY z 0.1 a"), c("ZRANGEBYSCORE z (1 +inf"),
        c("ZMSCORE z a nosuch c"), c("ZPOPMIN z"), c("ZADD z2 10 b 20 d"),
        c("ZUNIONSTORE zu 2 z z2 WEIGHTS 1 2"), c("ZRANGE zu 0 -1 WITHSCORES"),
        c("ZRANDMEMBER z 2", volatile=True), c("ZADD z inf top -inf bottom"),
        c("ZRANGE z 0 -1 WITHSCORES"),
    ],
    "streams": [
        c("XADD x 1-1 a 1 b 2"), c("XADD x 2-1 a 3"), c("XLEN x"), c("XRANGE x - +"),
        c("XGROUP CREATE x g 0"), c("XREADGROUP GROUP g c1 COUNT 1 STREAMS x >"),
        c("XPENDING x g"), c("XACK x g 1-1"), c("XREAD COUNT 5 STREAMS x 0"),
        c("XINFO STREAM x"), c("XADD x * c 1", volatile=True), c("XTRIM x MAXLEN 1"),
    ],
    "keys": [
        c("SET k1 v"), c("EXPIRE k1 100"), c("TTL k1"), c("PERSIST k1"), c("TTL k1"),
        c("TYPE k1"), c("RENAME k1 k2"), c("OBJECT ENCODING k2"), c("OBJECT REFCOUNT k2"),
        c("OBJECT FREQ k2"), c("DBSIZE"), c("COPY k2 k3"), c("KEYS k*", volatile=True),
        c("RPUSH srt 3 1 2"), c("SORT srt"), c("SORT srt DESC STORE srt2"), c("LRANGE srt2 0 -1"),
        c("RANDOMKEY", volatile=True), c("SCAN 0 COUNT 100", volatile=True), c("FLUSHDB"),
    ],
    "scripting": [
        c("EVAL " + LUA_TYPES.replace(" ", "\\s") + " 0"),
        c("EVAL return\\sKEYS[1]..ARGV[1] 1 key arg"),
        c("SCRIPT LOAD return\\s42"), c("EVALSHA 1fa00e76656cc152ad327c13fe365858fd7be306 0"),
        c("EVALSHA 0000000000000000000000000000000000000000 0"),
        c("EVAL return\\sredis.call('NOSUCH') 0"),
        c("SCRIPT EXISTS 1fa00e76656cc152ad327c13fe365858fd7be306 00"),
        c("HSET lh f v"), c("SADD ls m"), c("ZADD lz 1.5 m"),
        c("EVAL " + LUA_RESP3.replace(" ", "\\s") + " 3 lh ls lz"),
        c("FUNCTION LOAD " + FUNCTION.replace(" ", "\\s"), v7=True),
        c("FCALL echo_key 1 somekey", v7=True), c("FCALL_RO echo_key 1 somekey", v7=True),
    ],
    "errors": [
        c("SET e v"), c("LPUSH e x"), c("NOSUCHCOMMAND a b"), c("GET"), c("SET e v EX notanumber"),
        c("INCR e"), c("CONFIG GET maxmemory"), c("OBJECT"),
    ],
    "transactions": [
        c("MULTI"), c("SET t 1"), c("INCR t"), c("GET t"), c("EXEC"),
        c("MULTI"), c("SET t 2"), c("NOSUCH"), c("EXEC"),
        c("WATCH t"), c("SET t 5", conn="b"), c("MULTI"), c("INCR t"), c("EXEC"),
        c("MULTI"), c("INCR t"), c("DISCARD"), c("EXEC"), c("MULTI"), c("MULTI"), c("WATCH x"),
        c("DISCARD"),
        c("MULTI"), c("SET t2 x"), c("LPUSH t2 y"), c("EXEC"),
    ],
    "multi_subscribe": [
        c("MULTI"), c("SUBSCRIBE ch1 ch2 ch3"), c("PING"), c("EXEC"), c("PING"),
        c("PUBLISH ch2 msg", conn="b"), c("UNSUBSCRIBE", volatile=True), c("PING"),
    ],
    "multi_hello": [
        c("MULTI"), c("HELLO 3", volatile=True), c("HSET h a 1"), c("HGETALL h"),
        c("EXEC", volatile=True),
        c("HGETALL h"), c("HELLO 2", volatile=True), c("HGETALL h"),
    ],
    "pubsub_resp2": [
        c("SUBSCRIBE ch1 ch2"), c("PSUBSCRIBE news.*"), c("PUBLISH ch1 hello", conn="b"),
        c("PUBLISH news.today paper", conn="b"), c("PING"), c("PING hi"), c("GET x"),
        c("SUBSCRIBE ch1"), c("UNSUBSCRIBE ch2 nosuch"), c("PUBLISH ch1 again", conn="b"),
        c("UNSUBSCRIBE"), c("PUNSUBSCRIBE"), c("UNSUBSCRIBE"), c("PING"),
        c("SSUBSCRIBE sh1", v7=True), c("SPUBLISH sh1 shard", conn="b", v7=True),
        c("SUNSUBSCRIBE", v7=True), c("SUNSUBSCRIBE", v7=True), c("PING"),
    ],
    "pubsub_resp3": [
        c("HELLO 3", volatile=True), c("SUBSCRIBE ch1 ch2"), c("PSUBSCRIBE p*"),
        c("PUBLISH ch1 hello", conn="b"), c("PUBLISH px pattern", conn="b"), c("GET k"),
        c("PING"), c("UNSUBSCRIBE", volatile=True), c("PUBLISH p1 still", conn="b"),
        c("PUNSUBSCRIBE"),
        c("UNSUBSCRIBE"), c("SSUBSCRIBE sh", v7=True), c("SPUBLISH sh x", conn="b", v7=True),
        c("SUNSUBSCRIBE sh", v7=True), c("PING"),
    ],
    "resp3_types": [
        c("HELLO 3", volatile=True), c("HSET h f1 v1 f2 2"), c("HGETALL h"), c("SADD s a"),
        c("SMEMBERS s"), c("ZADD z 1.5 m 2 n"), c("ZSCORE z m"), c("ZRANGE z 0 -1 WITHSCORES"),
        c("ZSCORE z nosuch"), c("GET nosuch"), c("EXISTS h"), c("CONFIG GET maxmemory"),
        c("XADD x 1-1 f v"), c("XRANGE x - +"), c("XINFO STREAM x"),
        c("CLIENT INFO", volatile=True), c("COMMAND INFO get set client xread", volatile=True),
        c("COMMAND DOCS get", v7=True),
        c("DEBUG PROTOCOL string"), c("DEBUG PROTOCOL integer"), c("DEBUG PROTOCOL double"),
        c("DEBUG PROTOCOL bignum"), c("DEBUG PROTOCOL null"), c("DEBUG PROTOCOL array"),
        c("DEBUG PROTOCOL set"), c("DEBUG PROTOCOL map"), c("DEBUG PROTOCOL attrib"),
        c("DEBUG PROTOCOL push"), c("DEBUG PROTOCOL verbatim"), c("DEBUG PROTOCOL true"),
        c("DEBUG PROTOCOL false"), c("LOLWUT VERSION 5 8 1 1", volatile=True),
        c("HELLO", volatile=True),
        c("HELLO 4"), c("HELLO 2", volatile=True), c("HGETALL h"), c("DEBUG PROTOCOL map"),
        c("DEBUG PROTOCOL double"), c("DEBUG PROTOCOL true"),
    ],
    "client_reply": [
        c("CLIENT REPLY OFF"), c("SET cr 1"), c("GET cr"), c("CLIENT REPLY SKIP"),
        c("CLIENT REPLY ON"), c("GET cr"), c("CLIENT REPLY SKIP"), c("INCR cr"), c("GET cr"),
        c("CLIENT REPLY SKIP"), c("CLIENT REPLY SKIP"), c("INCR cr"), c("GET cr"),
        c("CLIENT REPLY bogus"), c("CLIENT REPLY OFF"), c("SUBSCRIBE c1"),
        c("PUBLISH c1 m", conn="b"), c("RESET"), c("GET cr"),
        c("CLIENT REPLY OFF"), c("MULTI"), c("HELLO 3"), c("EXEC"), c("CLIENT REPLY ON"),
        c("HSET crh a 1"), c("HGETALL crh"),
    ],
    "blocking": [
        c("BLPOP bl 0", blocks=True), c("RPUSH bl v1 v2", conn="b"), c("BLPOP bl 0"),
        c("BLPOP bl 0.1", wait=0.3), c("BZPOPMIN bz 0.1", wait=0.3),
        c("XREAD BLOCK 100 STREAMS bx $", wait=0.3), c("WAIT 0 0"),
        c("BLMOVE bl2 bl3 LEFT RIGHT 0", blocks=True), c("LPUSH bl2 moved", conn="b"),
        c("BLMPOP 0 1 bl3 LEFT", v7=True),
    ],
    "monitor": [
        c("MONITOR"), c("SET mk 1", conn="b"), c("GET mk", conn="b"),
        c("PING"), c("RESET"), c("SET mk 2", conn="b"), c("PING"),
    ],
    "tracking": [
        c("HELLO 3", volatile=True), c("CLIENT TRACKING ON"), c("SET tk 1"), c("GET tk"),
        c("SET tk 2", conn="b"), c("PING"), c("GET tk"), c("FLUSHALL", conn="b"),
        c("CLIENT TRACKING OFF"), c("PING"),
    ],
    "reset": [
        c("HELLO 3", volatile=True), c("SUBSCRIBE rc"), c("CLIENT REPLY SKIP"), c("RESET"),
        c("GET rk"), c("MULTI"), c("SET rk 1"), c("RESET"), c("GET rk"), c("QUIT"),
    ],
    "inline": [
        raw(b"PING\r\n"), raw(b"SET il \"a b\\x41\"\r\n"), raw(b"GET il\n"),
        raw(b"ECHO 'it\\'s'\r\n"), raw(b"  ECHO   spaced  \r\n"), raw(b"EXISTS il\r\n"),
    ],
    "command": [
        c("COMMAND COUNT", volatile=True), c("COMMAND INFO get set client|setname"),
        c("COMMAND GETKEYS SET a b"), c("COMMAND GETKEYS EVAL x 0"),
    ],
}

# Requests whose keys the server's COMMAND GETKEYS names (and which the codec must find).
GETKEYS = [
    "GET k", "SET k v", "MSET a 1 b 2", "MGET a b c", "DEL a b", "BLPOP a b 0", "BRPOP a 5",
    "BLMOVE a b LEFT RIGHT 0", "BRPOPLPUSH a b 0", "BZPOPMIN a b 0", "LMPOP 2 a b LEFT",
    "BLMPOP 0 2 a b LEFT", "ZMPOP 1 z MIN", "BZMPOP 0 2 z1 z2 MAX", "EVAL s 2 k1 k2 a1",
    "EVAL s 0 a", "EVALSHA s 1 k", "EVAL_RO s 1 k", "FCALL f 2 k1 k2", "FCALL_RO f 1 k",
    "ZUNIONSTORE d 2 a b", "ZINTERSTORE d 1 a WEIGHTS 2", "ZDIFFSTORE d 2 a b",
    "ZUNION 2 a b", "ZINTER 2 a b WITHSCORES", "ZDIFF 1 a", "ZINTERCARD 2 a b",
    "SINTERCARD 3 a b c LIMIT 1", "SINTERSTORE d a b", "XREAD COUNT 2 STREAMS s1 s2 0 0",
    "XREAD BLOCK 0 STREAMS s $", "XREADGROUP GROUP g c STREAMS s >",
    "XREADGROUP GROUP g c COUNT 1 NOACK STREAMS s1 s2 > >", "SORT k", "SORT k STORE d",
    "SORT k BY w_* GET # STORE d", "SORT_RO k", "MIGRATE h 6379 k 0 100",
    "MIGRATE h 6379 \"\" 0 100 KEYS a b", "MIGRATE h 6379 \"\" 0 100 COPY AUTH pw KEYS a",
    "GEORADIUS g 0 0 1 km STORE d", "GEORADIUS g 0 0 1 km STOREDIST d2",
    "GEORADIUSBYMEMBER g m 1 km STORE d", "GEORADIUS_RO g 0 0 1 km",
    "GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km",
    "OBJECT ENCODING k", "MEMORY USAGE k", "XINFO STREAM s", "XGROUP CREATE s g $",
    "RENAME a b", "COPY a b", "SMOVE a b m", "LMOVE a b LEFT RIGHT", "BITOP AND d a b",
    "PFMERGE d a b", "WATCH a b", "SPUBLISH ch m", "PUBLISH ch m", "EXISTS a b",
    "LCS a b", "HSET h f v", "XADD s * f v", "TOUCH a b", "UNLINK a", "GETEX k PERSIST",
    "STRALGO LCS KEYS a b", "PING", "FLUSHALL", "KEYS *", "CLIENT SETNAME x",
]

# Malformed (or odd) requests, each on a fresh connection: what the server makes of them. Each is
# a list of (bytes, times) segments, so that the long ones stay short in the JSON file.
PROTOCOL_INPUTS: list[list[tuple[bytes, int]]] = [
    [(x, 1)] for x in [
        b"*1\r\nx4\r\nPING\r\n", b"*1\r\n\r\n", b"*01\r\n", b"*+1\r\n", b"* 1\r\n", b"*-0\r\n",
        b"*abc\r\n", b"*2000000\r\n", b"*1\r\n$-1\r\n", b"*1\r\n$01\r\nx\r\n",
        b"*1\r\n$abc\r\n", b"*1\r\n$999999999999\r\n", b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n",
        b"*1\rx$4\rxPING\r\n", b"*-5\r\n*0\r\nPING\r\n", b"PING\x00\nPING\r\n",
        b"*1\x00\r\n$4\r\nPING\r\n", b"ECHO \"unbalanced\r\n", b"ECHO 'a\r\n", b"ECHO \"a\"b\r\n",
        b"ECHO \"a\\x4\"\r\n", b"ECHO a\x0bb\r\n", b"$3\r\nabc\r\n", b"\r\n\n  \r\nPING\r\n",
        b"*1\r\n$1\r\n", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n", b"*1\r\n$4\r\nPING\r\n\r\n",
    ]
] + [
    [(b"x", 70000)], [(b"EXISTS ", 1), (b"x", 60000), (b"\r\n", 1)],
    [(b"*", 1), (b"1", 70000)], [(b"*1\r\n$", 1), (b"1", 70000)],
]


def expand(segments: list[tuple[bytes, int]]) -> bytes:
    return b"".join(text * times for text, times in segments)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    return s


def drain(conns: dict[str, socket.socket], quiet: float) -> dict[str, bytes]:
    """Everything the connections receive until none got a byte for ``quiet`` seconds."""
    got = {name: b"" for name in conns}
    last = time.monotonic()
    while time.monotonic() - last < quiet:
        time.sleep(0.005)
        for name, s in conns.items():
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            if data:
                got[name] += data
                last = time.monotonic()
    return got


def hiredis_split(data: bytes) -> list[tuple[int, Any]]:
    """(end offset, value) of each reply in ``data``, cut by hiredis fed one byte at a time.

    A RESP3 attribute (which hiredis hands over as a reply of its own) is merged with the reply
    it belongs to.
    """
    missing = object()
    reader = hiredis.Reader(notEnoughData=missing)
    out: list[tuple[int, Any]] = []
    attribute = None
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        value = reader.gets()
        if value is missing:
            continue
        start = out[-1][0] if out else 0
        if attribute is None and data[start : start + 1] == b"|":
            attribute = value
            continue
        if attribute is not None:
            value = {"attribute": to_json(attribute), "value": to_json(value)}
            attribute = None
            out.append((i + 1, value))
        else:
            out.append((i + 1, to_json(value)))
    return out


def to_json(value: Any) -> Any:
    """A hiredis value as JSON: bytes as latin-1 strings, the rest tagged."""
    if isinstance(value, dict) and set(value) == {"attribute", "value"}:
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, hiredis.ReplyError):
        return {"error": str(value)}
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return {"double": repr(value)}
    if isinstance(value, hiredis.PushNotification):
        return {"push": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {"map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    raise TypeError(f"no JSON form for {type(value).__name__}")


def push_kind(value: Any) -> str | None:
    if isinstance(value, dict) and "push" in value and value["push"]:
        return value["push"][0] if isinstance(value["push"][0], str) else ""
    return None


def answers(value: Any, step: dict, conn: str, here: bool, blocked: list[int],
            index: int) -> Any:
    """What a reply on ``conn`` during step ``index`` answers: a step index or "push"."""
    kind = push_kind(value)
    words = step["request"].split(b"\r\n")
    name = words[2].decode().lower() if len(words) > 2 else ""
    if kind is not None:
        return index if here and kind in CONFIRMS and kind == name else "push"
    if isinstance(value, list) and value and value[0] in ("message", "pmessage", "smessage"):
        return "push"
    if isinstance(value, str) and MONITOR_LINE.match(value.encode("latin-1")):
        return "push"
    if here:
        return index
    return blocked.pop(0) if blocked else "unpaired"


def record_sessions(version: str) -> dict:
    out = {}
    for name, steps in SESSIONS.items():
        extra = ["--enable-debug-command", "yes"] if version == "7.0" else []
        with servers.redis_server(VERSIONS[version], *extra) as srv:
            conns: dict[str, socket.socket] = {}
            blocked: dict[str, list[int]] = {}
            recorded = []
            for step in steps:
                if step.get("v7") and version != "7.0":
                    continue
                conn = step["conn"]
                if conn not in conns:
                    conns[conn] = connect(srv.port)
                    blocked[conn] = []
                conns[conn].sendall(step["request"])
                got = drain(conns, step.get("wait", QUIET))
                replies = []
                for where, data in got.items():
                    start = 0
                    for end, value in hiredis_split(data):
                        here = where == conn
                        what = answers(value, step, where, here, blocked[where], len(recorded))
                        replies.append({"conn": where, "raw": data[start:end].decode("latin-1"),
                                        "value": value, "answers": what})
                        start = end
                    if start != len(data):
                        raise RuntimeError(f"{name}: bytes hiredis did not take: {data[start:]!r}")
                if step.get("blocks"):
                    blocked[conn].append(len(recorded))
                recorded.append({
                    "conn": conn, "request": step["request"].decode("latin-1"),
                    "volatile": bool(step.get("volatile")), "replies": replies,
                })
            for s in conns.values():
                s.close()
        out[name] = recorded
    return out


def call(port: int, data: bytes, quiet: float = QUIET) -> bytes:
    s = connect(port)
    s.sendall(data)
    got = drain({"x": s}, quiet)["x"]
    s.close()
    return got


def record_server_facts(version: str) -> tuple[dict, bytes]:
    with servers.redis_server(VERSIONS[version]) as srv:
        command = call(srv.port, cmd("COMMAND"), quiet=0.3)
        getkeys = {}
        for text in GETKEYS:
            args = [a if a != '""' else "" for a in text.split(" ")]
            reply = call(srv.port, cmd("COMMAND", "GETKEYS", *args))
            getkeys[text] = hiredis_split(reply)[0][1]
        protocol = []
        for segments in PROTOCOL_INPUTS:
            s = connect(srv.port)
            s.sendall(expand(segments))
            got = drain({"x": s}, 0.2)["x"]
            try:
                closed = s.recv(1) == b""
            except BlockingIOError:
                closed = False
            s.close()
            protocol.append({
                "input": [[text.decode("latin-1"), times] for text, times in segments],
                "output": got.decode("latin-1"), "closed": closed,
            })
    return {"getkeys": getkeys, "protocol_errors": protocol}, command


def builtin_table() -> None:
    """Rewrite the built-in command table module from the recorded 7.0 COMMAND reply."""
    missing = object()
    reader = hiredis.Reader(notEnoughData=missing)
    reader.feed((OUT / "7.0.command.resp").read_bytes())
    entries = reader.gets()

    def line(e: list) -> str:
        flags = ",".join(f.decode() for f in e[2]) or "-"
        first, last, step = e[3:6]
        specs = [dict(zip(spec[0::2], spec[1::2], strict=True)) for spec in e[8]]
        if specs and all(b"not_key" in spec[b"flags"] for spec in specs):
            first = last = step = 0  # shard channels: keys only for cluster routing
        return f"{e[0].decode()} {e[1]} {first} {last} {step} {flags}"

    lines = []
    for e in sorted(entries):
        lines.append(line(e))
        lines.extend(line(sub) for sub in sorted(e[9]))
    body = "\n".join(lines)
    DATA_MODULE.write_text(
        '"""The built-in command table: redis-server 7.0.15\'s ``COMMAND`` reply, reduced to what\n'
        ":func:`twinproxy.protocols.redis.commands.describe` needs when no server table is given."
        "\n\nOne command per line: name, arity, first key, last key, key step, flags (``-`` for "
        "none);\nsubcommands are named ``parent|sub``. Generated from the recorded reply in\n"
        "``tests/golden/redis/`` by ``python tests/golden/record_redis.py --builtin-table``; do "
        'not edit.\n"""\n\nTABLE = """\\\n' + body + '\n"""\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builtin-table", action="store_true",
                        help="only regenerate the built-in command table module")
    if parser.parse_args().builtin_table:
        builtin_table()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for version in VERSIONS:
        facts, command = record_server_facts(version)
        data = {"version": version, "sessions": record_sessions(version), **facts}
        (OUT / f"{version}.command.resp").write_bytes(command)
        with open(OUT / f"{version}.json", "w") as f:
            json.dump(data, f, indent=1, ensure_ascii=True)
            f.write("\n")
        print(f"{version}: {len(data['sessions'])} sessions, {len(command)} bytes of COMMAND")


if __name__ == "__main__":
    main()
