"""What the proxy knows of Redis command names: which change the connection, which may block
or hold the server, which SINGLE mode may forward without looking (ordinary), and which the MVE
engine may send in a run and what their replies are.

Clients spell command names in any case; the sets of names as sent that were found to be in a
class (``SEEN_*``) let a read's names be checked with one set comparison, the common case.
They are bounded (``SEEN_MAX``) so that a client sending made-up names cannot grow them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twinproxy.protocols.redis import fast
from twinproxy.protocols.redis.command_data import TABLE
from twinproxy.protocols.redis.scripts import GIVING

# Commands whose effect on the connection (not the data) a later update must replay.
SESSION_COMMANDS = frozenset(
    {
        "SELECT", "AUTH", "HELLO", "READONLY", "READWRITE", "MULTI", "EXEC", "DISCARD", "WATCH",
        "UNWATCH", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "PUNSUBSCRIBE", "SSUBSCRIBE",
        "SUNSUBSCRIBE", "RESET", "MONITOR", "QUIT",
    }
)  # fmt: skip
# CLIENT subcommands that change the connection (CACHING: the next command's tracking).
SESSION_CLIENT = frozenset(
    {b"SETNAME", b"TRACKING", b"REPLY", b"NO-EVICT", b"NO-TOUCH", b"SETINFO", b"CACHING"}
)

# Commands that always may wait for another client's write (XREAD/XREADGROUP only with BLOCK).
ALWAYS_BLOCKING = frozenset(
    {"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT",
     "WAITAOF"}
)  # fmt: skip
# Requests that may make the server refuse others while they run (a script past its time limit
# gets every other connection -BUSY): count() takes them, and notes them (``holds``).
HOLDING = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "EXEC"})
HOLDING_SPELLED: set[bytes] = {spelling for name in HOLDING
                               for spelling in (name.encode(), name.lower().encode())}
SEEN_NOT_HOLDING: set[bytes] = set()  # command names as sent, known not to be in HOLDING
# What SINGLE mode's count() must not take: requests the proxy has to look at (a session to
# record, a client that may block) rather than only forward. XREAD/XREADGROUP block with BLOCK.
# INFO and CONFIG (RESETSTAT): their reply shows counts the proxy's own requests are taken out
# of (see ownstats.py). SCRIPT: the proxy learns the scripts SCRIPT LOAD gives (scripts.py);
# those EVAL gives it learns from the read count() takes (``gives_script``).
NOT_ORDINARY = SESSION_COMMANDS | ALWAYS_BLOCKING | {"CLIENT", "XREAD", "XREADGROUP", "INFO",
                                                     "CONFIG", "SCRIPT"}
SEEN_ORDINARY: set[bytes] = set()  # command names as clients spell them, known to be ordinary
SEEN_MAX = 4096
if fast.c_bind is not None:  # (the names RespRequestReader.forward sends on, in C)
    fast.c_bind(SEEN_ORDINARY, SEEN_NOT_HOLDING)


# A transaction's bounds: a read that opens and ends its transactions (MULTI, ordinary requests,
# then EXEC or DISCARD: redis-py's default pipeline is one write of that) leaves the connection
# as it found it, so SINGLE mode's count takes it as it takes ordinary requests.
TRANSACTION_BOUNDS = frozenset({"MULTI", "EXEC", "DISCARD"})


def without_bounds(names: set[bytes]) -> set[bytes]:
    """The command names (as sent) but a transaction's bounds."""
    return {name for name in names if name.upper().decode("latin-1") not in TRANSACTION_BOUNDS}


def taken(names: set[bytes], seen: set[bytes], accepts: Callable[[set[bytes]], bool],
          data: bytes, end: int) -> set[bytes] | None:
    """For the complete requests of ``data[:end]`` (their command names as sent: ``names``):
    ``names`` when ``accepts`` takes them all (``seen``: names known to be taken); else the
    names but a transaction's bounds, when ``accepts`` takes those and the read opens and ends
    its transactions (MULTI, then those, then EXEC or DISCARD; none nested, none left open:
    ``_scan.c``'s ``whole_transactions``); else None. SINGLE mode's count and the MVE run take
    such a read: it leaves the connection as it found it, and EXEC runs only what was taken."""
    if names <= seen or accepts(names):
        return names
    inner = without_bounds(names)
    if len(inner) == len(names) or not accepts(inner) or \
            fast.c_whole_transactions is None or not fast.c_whole_transactions(data, end):
        return None
    return inner


def ordinary(names: set[bytes]) -> bool:
    """Whether every command name (as sent, any case) is an ordinary one."""
    return _none_in(names, SEEN_ORDINARY, NOT_ORDINARY)


SEEN_NOT_GIVING: set[bytes] = set()  # command names as sent, known not to be in GIVING


def gives_script(names: set[bytes]) -> bool:
    """Whether a command name (as sent, any case) is one that gives the server a script with
    the request (EVAL, EVAL_RO: ``scripts.GIVING``)."""
    return not _none_in(names, SEEN_NOT_GIVING, GIVING)


def holds(names: set[bytes]) -> bool:
    """Whether a command name (as sent, any case) is one in HOLDING."""
    if not names.isdisjoint(HOLDING_SPELLED):
        return True
    if names <= SEEN_NOT_HOLDING:
        return False
    found = False
    for name in names - SEEN_NOT_HOLDING:
        cache = HOLDING_SPELLED if name.upper().decode("latin-1") in HOLDING else SEEN_NOT_HOLDING
        found = found or cache is HOLDING_SPELLED
        if len(cache) < SEEN_MAX:
            cache.add(name)
    return found


# An EX or PX argument (any case), wherever it is: a run must not carry a relative expiry.
EXPIRY_OPTION = re.compile(rb"\r\n\$2\r\n[EePp][Xx]\r\n")
_EXPIRY_WORDS = frozenset({b"EX", b"PX"})

# From this many bytes in at most _WALK_MAX requests (SETs of large values), the arguments are
# found by walking the requests' headers, skipping the values, rather than by searching every
# byte: a search of 100 KB takes about 28 us here, more than the rest of its framing.
_WALK_FROM = 16 * 1024
_WALK_MAX = 8


def relative_expiry(data: bytes, end: int, count: int) -> bool:
    """Whether one of the ``count`` complete canonical requests in ``data[:end]`` has an EX or
    PX argument."""
    return _has_argument(data, end, count, EXPIRY_OPTION, 2, _EXPIRY_WORDS)


def _has_argument(data: bytes, end: int, count: int, pattern: re.Pattern[bytes], size: int,
                  words: frozenset[bytes]) -> bool:
    """Whether an argument of ``size`` bytes in ``words`` (any case) is among those of the
    ``count`` complete canonical requests in ``data[:end]`` (``pattern`` finds one)."""
    if end < _WALK_FROM or count > _WALK_MAX:
        return pattern.search(data, 0, end) is not None
    at = 0
    for _ in range(count):
        nl = data.index(b"\r", at)
        elements = int(data[at + 1 : nl])
        at = nl + 2
        for _ in range(elements):
            nl = data.index(b"\r", at)
            length = int(data[at + 1 : nl])
            at = nl + 2
            if length == size and data[at : at + size].upper() in words:
                return True
            at += length + 2
    return False

# What the MVE engine may send in a *run* (a client's read of requests it forwards, and compares,
# as bytes): deterministic commands whose replies are the same bytes on two servers holding the
# same data, or the same in another order (SMEMBERS, HGETALL: a run whose replies differ is
# compared request by request, each by its own check, Verdicts.run). Random, time-dependent or
# server-specific ones (SPOP, TTL, INFO ...) take the per-request path. Relative expiries (SET
# ... EX, EXPIRE, SETEX, GETEX ... EX: effects.RELATIVE_EXPIRY) travel in runs, which the
# follower gets with the leader's moment (``expiring``, RespCodec.follower_run). Script and
# function calls by name (EVALSHA, FCALL) travel in runs too: on the request-by-request path
# they go to each version as they came, and so they do in a run; but there fifty clients'
# calls that write one key went one at a time, each after the last one's reply (0.02 of SINGLE
# mode at -P 16). EVAL, which gives its script, does not: the proxy learns scripts from framed
# requests during an update (scripts.py).
RUNNABLE = frozenset({
    "GET", "SET", "SETNX", "MGET", "MSET", "MSETNX", "GETSET", "GETDEL", "APPEND", "STRLEN",
    "GETRANGE", "SETRANGE", "INCR", "DECR", "INCRBY", "DECRBY", "INCRBYFLOAT", "EXISTS", "DEL",
    "UNLINK", "TYPE", "EXPIREAT", "PEXPIREAT", "PERSIST", "HSET", "HSETNX", "HGET", "HMGET",
    "HMSET", "HDEL", "HLEN", "HEXISTS", "HINCRBY", "HINCRBYFLOAT", "HSTRLEN", "LPUSH", "RPUSH",
    "LPUSHX", "RPUSHX", "LPOP", "RPOP", "LLEN", "LRANGE", "LINDEX", "LSET", "LREM", "LTRIM",
    "LINSERT", "LPOS", "RPOPLPUSH", "LMOVE", "SADD", "SREM", "SISMEMBER", "SMISMEMBER", "SCARD",
    "SMOVE", "ZADD", "ZREM", "ZSCORE", "ZMSCORE", "ZINCRBY", "ZCARD", "ZCOUNT", "ZRANGE",
    "ZREVRANGE", "ZRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZRANK", "ZREVRANK", "ZLEXCOUNT",
    "ZRANGEBYLEX", "ZPOPMIN", "ZPOPMAX", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "PING", "ECHO",
    "SETBIT", "GETBIT", "BITCOUNT", "PFADD", "EXPIRE", "PEXPIRE", "SETEX", "PSETEX", "GETEX",
    "HGETALL", "HKEYS", "HVALS", "SMEMBERS", "SINTER", "SUNION", "SDIFF", "EVALSHA",
    "EVALSHA_RO", "FCALL", "FCALL_RO",
})  # fmt: skip
# Runnable commands whose replies each server may give in its own order (checks.py compares
# them as sets): a run with one keeps its large replies whole for the comparison.
LOOSE = frozenset({"HGETALL", "HKEYS", "HVALS", "SMEMBERS", "SINTER", "SUNION", "SDIFF",
                   "SMISMEMBER"})
SEEN_RUNNABLE: set[bytes] = set()

# Runnable commands that set an expiry relative to when they run by their name alone (SET and
# GETEX do with an EX or PX argument): a run with one goes to the follower rewritten.
RELATIVE_NAMES = frozenset({"EXPIRE", "PEXPIRE", "SETEX", "PSETEX"})
SEEN_NOT_RELATIVE: set[bytes] = set()

# Runnable commands whose reply is small whatever the data (a status, an integer, a number as a
# bulk): a client whose read holds only these may take the connection plain clients share
# before it has had small replies on its own (``[update] shared_after``), since nothing in it
# can put a large reply ahead of the others' there. SET is one unless it has the GET option
# (its reply is then the old value): a read with "GET" as any whole argument is not.
SMALL_REPLY = frozenset({
    "SET", "SETNX", "MSET", "MSETNX", "APPEND", "STRLEN", "SETRANGE", "INCR", "DECR", "INCRBY",
    "DECRBY", "INCRBYFLOAT", "EXISTS", "DEL", "UNLINK", "TYPE", "EXPIREAT", "PEXPIREAT",
    "PERSIST", "HSET", "HSETNX", "HMSET", "HDEL", "HLEN", "HEXISTS", "HINCRBY", "HINCRBYFLOAT",
    "HSTRLEN", "LPUSH", "RPUSH", "LPUSHX", "RPUSHX", "LLEN", "LSET", "LREM", "LTRIM", "LINSERT",
    "SADD", "SREM", "SISMEMBER", "SCARD", "SMOVE", "ZADD", "ZREM", "ZCARD", "ZCOUNT",
    "ZLEXCOUNT", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "ZINCRBY", "ZSCORE", "SETBIT", "GETBIT",
    "BITCOUNT", "PFADD", "EXPIRE", "PEXPIRE", "SETEX", "PSETEX",
})  # fmt: skip
SEEN_SMALL_REPLY: set[bytes] = set()
_GET_ARGUMENT = re.compile(rb"\r\n\$3\r\n[Gg][Ee][Tt]\r\n")
_GET_WORDS = frozenset({b"GET"})

# Runnable commands that change no data (redis-server does not flag them "write"; nor does it
# flag EVALSHA and FCALL, whose scripts write as they will): a run of only these commutes with
# reads on other connections, so it may go while requests that only read are out on clients'
# own connections (see ``Engine.runs_allowed``).
READ_ONLY = frozenset(
    name for name, flags in (
        (line.split()[0].upper(), line.split()[-1].split(",")) for line in TABLE.splitlines())
    if name in RUNNABLE and "write" not in flags and name not in ("EVALSHA", "FCALL"))
SEEN_READ_ONLY: set[bytes] = set()


def _none_in(names: set[bytes], seen: set[bytes], excluded: frozenset[str]) -> bool:
    """Whether no command name (as sent, any case) is in ``excluded``; ``seen`` learns the
    spellings that are not."""
    if names <= seen:
        return True
    for name in names - seen:
        if name.upper().decode("latin-1") in excluded:
            return False
        if len(seen) < SEEN_MAX:
            seen.add(name)
    return True


def _all_in(names: set[bytes], seen: set[bytes], known: frozenset[str]) -> bool:
    """Whether every command name (as sent, any case) is in ``known``; ``seen`` learns the
    spellings that are."""
    if names <= seen:
        return True
    for name in names - seen:
        if name.upper().decode("latin-1") not in known:
            return False
        if len(seen) < SEEN_MAX:
            seen.add(name)
    return True


def small_replies(names: set[bytes], data: bytes, end: int, count: int) -> bool:
    """Whether every one of the ``count`` requests of ``data[:end]`` (their command names as
    sent: ``names``) gets a small reply (see ``SMALL_REPLY``)."""
    return _all_in(names, SEEN_SMALL_REPLY, SMALL_REPLY) and \
        not _has_argument(data, end, count, _GET_ARGUMENT, 3, _GET_WORDS)


def small_reply(name: str, args: list[bytes]) -> bool:
    """:func:`small_replies` for one request already framed (its name upper-cased, its
    arguments): the same rule, a GET argument included."""
    return name in SMALL_REPLY and \
        not any(len(arg) == 3 and arg.upper() in _GET_WORDS for arg in args)


def runnable(names: set[bytes]) -> bool:
    """Whether every command name (as sent) may travel in an MVE run."""
    return _all_in(names, SEEN_RUNNABLE, RUNNABLE)


def expiring(names: set[bytes], data: bytes, end: int, count: int) -> bool:
    """Whether one of the ``count`` requests of ``data[:end]`` (their command names as sent:
    ``names``) sets an expiry relative to when it runs: one of ``RELATIVE_NAMES``, or an EX or
    PX argument. The follower must get such a run rewritten (RespCodec.follower_run)."""
    return _relative_name(names) or relative_expiry(data, end, count)


def runnable_as_sent(names: set[bytes]) -> bool:
    """Whether every command name (as sent) may travel in a run that reaches the follower as it
    came: :func:`runnable`, and none of ``RELATIVE_NAMES``. For the paths that take no
    expiring run (without the C scan; a large request's run of one)."""
    return runnable(names) and not _relative_name(names)


def _relative_name(names: set[bytes]) -> bool:
    """Whether a command name (as sent) is one of ``RELATIVE_NAMES``; ``SEEN_NOT_RELATIVE``
    learns the spellings that are not."""
    return not _none_in(names, SEEN_NOT_RELATIVE, RELATIVE_NAMES)


def reads_only(names: set[bytes]) -> bool:
    """Whether every command name (as sent) of a run changes no data (see ``READ_ONLY``)."""
    return _all_in(names, SEEN_READ_ONLY, READ_ONLY)
