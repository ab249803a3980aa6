"""How the two versions' replies to a Redis request are compared, where they legitimately differ.

Two servers in the same state still answer some requests differently: collections in the order of
each server's hash tables, times measured from each one's clock (TTLs, idle times, stream
delivery times), fields about the process rather than the data (ports, ids, passwords it drew).
Each such request gets a check instead of the byte-for-byte comparison, with a ``builtin:`` name
that is recorded with a divergence it explains. What the follower is *sent* is
:mod:`.effects`'s.

A check is ``(leader value, follower value, elapsed) -> bool``, on canonical values
(:func:`~.types.canonical`); ``elapsed`` is the seconds between the two executions.
"""

from __future__ import annotations

from typing import Any

from twinproxy.protocols.base import Check, Plan
from twinproxy.protocols.redis.types import RespError


def _always(a: Any, b: Any, elapsed: float) -> bool:
    return True


def _hello(a: Any, b: Any, elapsed: float) -> bool:
    """HELLO's reply describes the server (its version, its id for the connection): only
    whether it refused, and how, is compared. A login one server refuses (WRONGPASS, NOPROTO)
    is a divergence: the client's later commands run there as another user."""
    if type(a) is RespError or type(b) is RespError:
        return a == b
    return True


def _sorted(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(sorted(value, key=repr))
    return value


def _unordered(a: Any, b: Any, elapsed: float) -> bool:
    return _sorted(a) == _sorted(b)


def _pairs(value: tuple) -> list[tuple[Any, Any]]:
    return sorted(zip(value[::2], value[1::2], strict=False), key=repr)


def _pairs_unordered(a: Any, b: Any, elapsed: float) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and _pairs(a) == _pairs(b)
    return a == b


# Fields of CONFIG GET that differ between any two instances (where they run, not what they do).
VOLATILE_CONFIG = {b"port", b"dir", b"dbfilename", b"pidfile", b"logfile", b"unixsocket",
                   b"bind", b"daemonize", b"tls-port", b"appenddirname", b"appendfilename"}


def _config_get(a: Any, b: Any, elapsed: float) -> bool:
    if not (isinstance(a, tuple) and isinstance(b, tuple)):
        return a == b
    return ([p for p in _pairs(a) if p[0] not in VOLATILE_CONFIG]
            == [p for p in _pairs(b) if p[0] not in VOLATILE_CONFIG])


def _ttl(unit: float) -> Check:
    """Remaining time to live: equal within the time between the two executions."""
    slack = max(1.0, 0.05 / unit)

    def check(a: Any, b: Any, elapsed: float) -> bool:
        if not (isinstance(a, int) and isinstance(b, int)):
            return a == b
        if a < 0 or b < 0:  # -1 no expiry, -2 no key: exact
            return a == b
        return abs(a - b) <= elapsed / unit + slack
    return check


IDLE_SLACK = 2.0
"""Seconds OBJECT IDLETIME may differ by beyond the time between the two executions: Redis
reads idle times off a clock of 1 s resolution that its cron refreshes (``LRU_CLOCK``)."""


def _idle(a: Any, b: Any, elapsed: float) -> bool:
    """OBJECT IDLETIME, in seconds: equal within the time between the two executions and the
    LRU clock's resolution.

    Not a one-sided bound: the follower ran the key's last access later than the leader, but it
    also asks later, so its idle time is near the leader's either way. A key not touched since
    the new version loaded the snapshot idles from the load there (an RDB file keeps idle times
    only under an LRU ``maxmemory-policy``): such a difference is not explained, and a rule
    from the config may still explain it.
    """
    if not (isinstance(a, int) and isinstance(b, int)):
        return a == b
    return abs(a - b) <= elapsed + IDLE_SLACK


STREAM_TIME_SLACK_MS = 10_000
"""How far XINFO STREAM FULL's times (a consumer's seen-time and active-time, a pending entry's
delivery time: milliseconds of each server's clock) may be apart: the follower ran the read
that set them later than the leader, by its lag, which the update bounds (follower_timeout)."""


def _pending_idle(a: Any, b: Any, elapsed: float) -> bool:
    """XPENDING's extended form: ``[id, consumer, idle ms, deliveries]`` per entry, the same on
    both but for the idle time: the time since the entry's delivery, which each server measures
    from when it ran the read that delivered it, so it may differ by the follower's lag then
    (see :data:`STREAM_TIME_SLACK_MS`) and the time between the two executions now."""
    if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)):
        return a == b
    for x, y in zip(a, b, strict=True):
        if not (isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y) == 4):
            return False
        if x[0] != y[0] or x[1] != y[1] or x[3] != y[3] or not isinstance(x[2], int) or \
                not isinstance(y[2], int) or \
                abs(x[2] - y[2]) > elapsed * 1000 + STREAM_TIME_SLACK_MS:
            return False
    return True


# CLIENT LIST and CLIENT INFO fields that describe a connection's session, the same for a
# client's connection and its pair on the other version (the proxy replays the session there);
# the rest are each process's own (id, addr, laddr, fd, age, idle, buffers, the last command:
# a pair opened by the proxy ran the session's replay, not the client's own history) or depend
# on when each server looks (flags, multi: a transaction's queue).
CLIENT_FIELDS = (b"name", b"db", b"user", b"resp", b"sub", b"psub", b"ssub")


def client_entries(value: Any) -> list[dict[bytes, bytes]] | None:
    """CLIENT LIST's or CLIENT INFO's reply as one dict of fields per connection (None: not
    such a reply). A field a version does not have (``resp`` and ``ssub`` came with 7.0) is
    absent."""
    if type(value) is not bytes:
        return None
    entries = []
    for line in value.splitlines():
        if line:
            entries.append(dict(f.partition(b"=")[::2] for f in line.split(b" ")))
    return entries


def _same_session(x: dict[bytes, bytes], y: dict[bytes, bytes]) -> bool:
    return all(x[f] == y[f] for f in CLIENT_FIELDS if f in x and f in y)


def _client_fields(a: Any, b: Any, elapsed: float) -> bool:
    """CLIENT INFO, and CLIENT LIST ID with the follower's ids: a refusal compared as it is;
    else each connection the leader lists is listed by the follower, in order, with the same
    :data:`CLIENT_FIELDS`. The follower may list more: a pair whose client has left already
    on the leader, which the proxy closes once the follower has answered that client."""
    x, y = client_entries(a), client_entries(b)
    if x is None or y is None:
        return a == b
    left = iter(y)
    return all(any(_same_session(entry, other) for other in left) for entry in x)


def _redirect_kind(value: Any) -> Any:
    """A tracking redirect as both servers mean it: -1 (tracking off), 0 (no redirect), or
    a connection, each server naming it by its own id."""
    return 1 if type(value) is int and value > 0 else value


def _redirect(a: Any, b: Any, elapsed: float) -> bool:
    """CLIENT GETREDIR."""
    return _redirect_kind(a) == _redirect_kind(b)


def _tracking_info(a: Any, b: Any, elapsed: float) -> bool:
    """CLIENT TRACKINGINFO: flags and prefixes as they are, the redirect as in
    :func:`_redirect`."""
    if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)):
        return a == b
    return all(x == y or (k == b"redirect" and _redirect_kind(x) == _redirect_kind(y))
               for k, x, y in zip(a[::2], a[1::2], b[1::2], strict=True)) and a[::2] == b[::2]


def _refusal(a: Any, b: Any, elapsed: float) -> bool:
    """Only whether, and how, it was refused: what it lists is each server's own."""
    if type(a) is RespError or type(b) is RespError:
        return a == b
    return True


IGNORE = {
    "INFO", "TIME", "LASTSAVE", "MEMORY", "DEBUG", "SLOWLOG", "LATENCY", "LOLWUT", "COMMAND",
    "MONITOR", "ROLE",
}  # fmt: skip
IGNORE_SUB = {
    "CLIENT": {b"ID", b"GETNAME"},
    "OBJECT": {b"FREQ"},
    "FUNCTION": {b"STATS"},
    # A random password; the log of each server's own refusals (the proxy's replays of a
    # session are not refused, so the follower's log is shorter).
    "ACL": {b"GENPASS", b"LOG"},
}
# Lists whose order is the server's hash table's.
UNORDERED_SUB = {"ACL": {b"CAT"}, "PUBSUB": {b"CHANNELS", b"SHARDCHANNELS"}}
UNORDERED = {"SMEMBERS", "SUNION", "SINTER", "SDIFF", "KEYS", "HKEYS", "HVALS", "SMISMEMBER"}
PAIRS_UNORDERED = {"HGETALL"}
_IGNORE_PLAN = Plan(check=_always, rule="builtin:server-specific")
_HELLO_PLAN = Plan(check=_hello, rule="builtin:server-specific")
_CLIENT_LIST_PLAN = Plan(check=_refusal, rule="builtin:server-specific")
CLIENT_FIELDS_PLAN = Plan(check=_client_fields, rule="builtin:client-fields")
_CLIENT_SUB = {b"INFO": CLIENT_FIELDS_PLAN,
               b"GETREDIR": Plan(check=_redirect, rule="builtin:client-fields"),
               b"TRACKINGINFO": Plan(check=_tracking_info, rule="builtin:client-fields")}
_UNORDERED_PLAN = Plan(check=_unordered, rule="builtin:unordered")
_PAIRS_PLAN = Plan(check=_pairs_unordered, rule="builtin:unordered")
_TTL_PLAN = Plan(check=_ttl(1.0), rule="builtin:ttl")
_PTTL_PLAN = Plan(check=_ttl(0.001), rule="builtin:ttl")
_IDLE_PLAN = Plan(check=_idle, rule="builtin:idletime")
_CONFIG_PLAN = Plan(check=_config_get, rule="builtin:config-volatile")
_PENDING_PLAN = Plan(check=_pending_idle, rule="builtin:idletime")


def _unsubscribe_all(a: Any, b: Any, elapsed: float) -> bool:
    """UNSUBSCRIBE with no argument confirms each channel in the server's hash-table order:
    compare the kind and the count left, not which channel came last."""
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == 3:
        return a[0] == b[0] and a[2] == b[2]
    return a == b


_UNSUBSCRIBE_ALL_PLAN = Plan(check=_unsubscribe_all, rule="builtin:unsubscribe-order")


def _same_rules(a: Any, b: Any) -> bool:
    """An ACL rule string: the category rules in their order, then the single commands, which
    each server lists in its command table's order (a hash table's, seeded per process). A
    command appears once there, so its place does not change what the rules allow."""
    if not (isinstance(a, bytes) and isinstance(b, bytes)):
        return a == b
    x, y = a.split(), b.split()
    return ([w for w in x if b"@" in w] == [w for w in y if b"@" in w]
            and sorted(w for w in x if b"@" not in w) == sorted(w for w in y if b"@" not in w))


def _acl_user(a: Any, b: Any, elapsed: float) -> bool:
    """ACL GETUSER: field by field, the ``commands`` rules (also in each selector) compared with
    :func:`_same_rules`."""
    if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)):
        return a == b
    for field, x, y in zip(a[::2], a[1::2], b[1::2], strict=True):
        if field == b"commands":
            if not _same_rules(x, y):
                return False
        elif field == b"selectors" and isinstance(x, tuple) and isinstance(y, tuple):
            if len(x) != len(y) or not all(map(_acl_user, x, y, (elapsed,) * len(x))):
                return False
        elif x != y:
            return False
    return a[::2] == b[::2]


def _near_times(a: Any, b: Any) -> bool:
    """Equal, but for integers that are both times in Unix milliseconds (from 2001 on), which
    may be :data:`STREAM_TIME_SLACK_MS` apart."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(_near_times, a, b))
    if type(a) is int and type(b) is int and a >= 10**12 and b >= 10**12:
        return abs(a - b) <= STREAM_TIME_SLACK_MS
    return a == b


def _stream_full(a: Any, b: Any, elapsed: float) -> bool:
    return _near_times(a, b)


_ACL_USER_PLAN = Plan(check=_acl_user, rule="builtin:acl-command-order")
_STREAM_FULL_PLAN = Plan(check=_stream_full, rule="builtin:stream-times")


# DEBUG OBJECT's fields that describe the process, not the value: its address, its LRU clock,
# and the length the value would take in an RDB file (compression may differ per version).
_DEBUG_OBJECT_VOLATILE = frozenset({b"at", b"lru", b"lru_seconds_idle", b"serializedlength"})


def _debug_fields(value: bytes) -> list[tuple[bytes, bytes]]:
    pairs = (word.partition(b":") for word in value.split())
    return [(k, v) for k, colon, v in pairs if colon and k not in _DEBUG_OBJECT_VOLATILE]


def _debug_object(a: Any, b: Any, elapsed: float) -> bool:
    """DEBUG OBJECT: the same error (no such key), or the same fields but the volatile ones
    (refcount, encoding, a quicklist's shape)."""
    if type(a) is RespError or type(b) is RespError or not (
            isinstance(a, bytes) and isinstance(b, bytes)):
        return a == b
    return _debug_fields(a) == _debug_fields(b)


_DEBUG_OBJECT_PLAN = Plan(check=_debug_object, rule="builtin:server-specific")


def reply_plan(name: str, args: list[bytes]) -> Plan | None:
    """The check for a request whose replies may legitimately differ (no words: the request
    goes as it is), or None: compared as they are."""
    if name in IGNORE:
        if name == "DEBUG" and args and args[0].upper() == b"OBJECT":
            return _DEBUG_OBJECT_PLAN
        return _IGNORE_PLAN
    if name == "HELLO":
        return _HELLO_PLAN
    sub = args[0].upper() if args else b""
    if sub in IGNORE_SUB.get(name, ()):
        return _IGNORE_PLAN
    if name == "CLIENT" and sub in _CLIENT_SUB:
        return _CLIENT_SUB[sub]
    if name == "CLIENT" and sub == b"LIST":
        # Each server's own connections (the proxy's among them), or with ID the leader's
        # ids: compared closely only once the follower is given its own (Codec.renamed_plan).
        return _CLIENT_LIST_PLAN
    if name == "CONFIG" and sub == b"GET":
        return _CONFIG_PLAN
    if name == "OBJECT" and sub == b"IDLETIME":
        return _IDLE_PLAN
    if name == "XPENDING" and len(args) >= 5:  # the extended form: entries with idle times
        return _PENDING_PLAN
    if name in UNORDERED or sub in UNORDERED_SUB.get(name, ()):
        return _UNORDERED_PLAN
    if name in PAIRS_UNORDERED:
        return _PAIRS_PLAN
    if name in ("UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE") and not args:
        return _UNSUBSCRIBE_ALL_PLAN
    if name == "TTL":
        return _TTL_PLAN
    if name == "PTTL":
        return _PTTL_PLAN
    if name == "ACL" and sub == b"GETUSER":
        return _ACL_USER_PLAN
    if name == "XINFO" and sub == b"STREAM" and any(a.upper() == b"FULL" for a in args[2:]):
        return _STREAM_FULL_PLAN
    return None
