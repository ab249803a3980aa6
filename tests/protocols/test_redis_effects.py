"""The built-in rules for Redis's own non-determinism (``protocols/redis/effects.py``).

The effects (SPOP becomes SREM, SRANDMEMBER a membership check ...) are tried on real servers:
the leader's reply comes from one redis-server, the plan's words run on a second one that holds
the same data, and the second must end in the first's state with the plan's check passing; a
follower that holds other data must fail the check. Replies that differ between any two servers
(INFO, CLIENT ID, CONFIG GET port ...) are taken from two real servers too. Tolerances are
checked on numbers, where the edge is the subject.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.servers import redis_server
from twinproxy.protocols.redis import CODEC, encode_command, fast
from twinproxy.protocols.redis.checks import IDLE_SLACK, STREAM_TIME_SLACK_MS
from twinproxy.protocols.redis.effects import (
    SKIP,
    follower_plan,
    transaction_plan,
)
from twinproxy.protocols.redis.types import RespError


class Conn:
    """A raw connection to a redis-server; replies in the codec's canonical form."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.replies = CODEC.reply_reader()

    def __call__(self, *words: bytes | str | int) -> Any:
        return self.send(encode_command(*words))

    def send(self, raw: bytes) -> Any:
        [req] = CODEC.request_reader().receive(raw)
        self.replies.expect(req)
        self.sock.sendall(raw)
        while True:
            reply = self.replies.next_reply()
            if reply is not None and reply.request is not None and reply.final:
                return CODEC.canonical(reply)
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.replies.feed(data)


def request(*words: bytes | str | int):
    [req] = CODEC.request_reader().receive(encode_command(*words))
    return CODEC.describe(req)


@pytest.fixture
def pair() -> Iterator[tuple[Conn, Conn]]:
    """A leader and a follower: two redis-server 7.0 with the same options."""
    with redis_server("7") as a, \
            redis_server("7") as b:
        leader, follower = Conn(a.port), Conn(b.port)
        yield leader, follower
        leader.sock.close()
        follower.sock.close()


def both(pair: tuple[Conn, Conn], *words: bytes | str | int) -> None:
    for conn in pair:
        conn(*words)


def effect(pair: tuple[Conn, Conn], *words: bytes | str | int):
    """Run ``words`` on the leader, then the plan on the follower: (plan, whether its check
    passed)."""
    leader, follower = pair
    value = leader(*words)
    plan = follower_plan(request(*words), value, in_multi=False)
    assert plan is not None and plan.words is not None, plan
    got = follower(*plan.words)
    return plan, plan.check(value, got, 0.0)


@pytest.mark.parametrize("count", [None, 3])
def test_spop_gives_the_follower_the_members_the_leader_popped(pair, count) -> None:
    both(pair, "SADD", "s", *range(20))
    words = ("SPOP", "s") if count is None else ("SPOP", "s", count)
    plan, ok = effect(pair, *words)
    assert plan.words[0] == b"SREM" and plan.rule == "builtin:random-effect" and ok
    leader, follower = pair
    assert leader("SCARD", "s") == follower("SCARD", "s") == 20 - (count or 1)
    assert sorted(leader("SMEMBERS", "s")) == sorted(follower("SMEMBERS", "s"))
    # A follower that did not hold what the leader popped removes less: the check fails.
    value = leader(*words)
    follower("SREM", "s", *(value if isinstance(value, tuple) else (value,)))
    plan = follower_plan(request(*words), value, in_multi=False)
    assert not plan.check(value, follower(*plan.words), 0.0)


def test_spop_of_an_empty_set_is_sent_as_it_is() -> None:
    assert follower_plan(request("SPOP", "nosuch"), None, in_multi=False) is None


@pytest.mark.parametrize("count", [None, 5, -30])
def test_srandmember_checks_the_leaders_choice_on_the_follower(pair, count) -> None:
    both(pair, "SADD", "s", *range(10))
    words = ("SRANDMEMBER", "s") if count is None else ("SRANDMEMBER", "s", count)
    plan, ok = effect(pair, *words)
    assert plan.words[0] == b"SMISMEMBER" and plan.rule == "builtin:random-check" and ok
    leader, follower = pair
    value = leader(*words)
    follower("DEL", "s")
    follower("SADD", "s", "other")
    plan = follower_plan(request(*words), value, in_multi=False)
    assert not plan.check(value, follower(*plan.words), 0.0)


def test_randomkey_checks_that_the_key_exists_on_the_follower(pair) -> None:
    both(pair, "MSET", "a", 1, "b", 2, "c", 3)
    plan, ok = effect(pair, "RANDOMKEY")
    assert plan.words[0] == b"EXISTS" and ok
    leader, follower = pair
    value = leader("RANDOMKEY")
    follower("DEL", value)
    plan = follower_plan(request("RANDOMKEY"), value, in_multi=False)
    assert not plan.check(value, follower(*plan.words), 0.0)
    assert follower_plan(request("RANDOMKEY"), None, in_multi=False) is None  # empty database


@pytest.mark.parametrize("extra", [(), (3,), (3, "WITHVALUES"), (-6, "WITHVALUES")])
def test_hrandfield_checks_fields_and_values_on_the_follower(pair, extra) -> None:
    both(pair, "HSET", "h", *[x for i in range(8) for x in (f"f{i}", i)])
    words = ("HRANDFIELD", "h", *extra)
    plan, ok = effect(pair, *words)
    assert plan.words[0] in (b"HEXISTS", b"HMGET") and ok
    leader, follower = pair
    value = leader(*words)
    # The follower holds the same fields with other values: only WITHVALUES can tell, and it
    # must; without values a missing field must be told.
    for i in range(8):
        follower("HSET", "h", f"f{i}", 100 + i)
    plan = follower_plan(request(*words), value, in_multi=False)
    assert plan.check(value, follower(*plan.words), 0.0) == ("WITHVALUES" not in extra)
    follower("DEL", "h")
    assert not plan.check(value, follower(*plan.words), 0.0)


@pytest.mark.parametrize("extra", [(), (3,), (3, "WITHSCORES"), (-6, "WITHSCORES")])
def test_zrandmember_checks_members_and_scores_on_the_follower(pair, extra) -> None:
    both(pair, "ZADD", "z", *[x for i in range(8) for x in (i * 1.5, f"m{i}")])
    words = ("ZRANDMEMBER", "z", *extra)
    plan, ok = effect(pair, *words)
    assert plan.words[0] in (b"ZSCORE", b"ZMSCORE") and ok
    leader, follower = pair
    value = leader(*words)
    for i in range(8):
        follower("ZADD", "z", 100 + i, f"m{i}")
    plan = follower_plan(request(*words), value, in_multi=False)
    assert plan.check(value, follower(*plan.words), 0.0) == ("WITHSCORES" not in extra)
    follower("DEL", "z")
    assert not plan.check(value, follower(*plan.words), 0.0)


@pytest.mark.parametrize("words", [("SCAN", 0), ("SSCAN", "s", 0), ("HSCAN", "h", 0),
                                   ("ZSCAN", "z", 0, "COUNT", 5)])
def test_scan_cursors_are_not_sent(words) -> None:
    """A cursor is the server's hash-table position: it differs, and reading changes nothing."""
    assert follower_plan(request(*words), (b"17", (b"a",)), in_multi=False) is SKIP


KILLED_62 = (b"ERR Error running script (call to f_694a5fe1ddb97a4c6a1bf299d9537c7d3d0f84e7): "
             b"@user_script:1: Script killed by user with SCRIPT KILL...")
KILLED_70 = (b"ERR Script killed by user with SCRIPT KILL... script: "
             b"694a5fe1ddb97a4c6a1bf299d9537c7d3d0f84e7, on @user_script:1.")


@pytest.mark.parametrize("words", [("SCRIPT", "KILL"), ("function", "kill")])
def test_a_kill_of_the_leaders_script_goes_on_its_own_and_not_to_the_follower(words) -> None:
    """It must not wait behind the script it stops (on the shared connection), and the
    follower never runs a script the leader was stopped in (below)."""
    assert CODEC.route(request(*words)) == "own"
    assert follower_plan(request(*words), b"OK", in_multi=False) is SKIP
    assert CODEC.route(request("SCRIPT", "LOAD", "return 1")) == "shared"


@pytest.mark.parametrize("message", [KILLED_62, KILLED_70])
def test_a_script_the_leader_was_stopped_in_is_withheld(message) -> None:
    """Redis stops only a script that wrote nothing (-UNKILLABLE otherwise), as 6.2 and 7.0
    word it; any other error of a script reaches the follower, which may have run part of it."""
    for words in (("EVAL", "while true do end", 0), ("FCALL", "spin", 0)):
        plan = follower_plan(request(*words), RespError(message), in_multi=False)
        assert plan is not None and plan.rule == "builtin:withheld"
    other = RespError(b"ERR user_script:1: Script attempted to access nonexistent global")
    assert follower_plan(request("EVAL", "x = 1", 0), other, in_multi=False) is None


@pytest.mark.parametrize("name, unit", [("TTL", 1.0), ("PTTL", 0.001)])
def test_ttl_within_the_time_between_the_two_executions(name, unit) -> None:
    plan = follower_plan(request(name, "k"), 1, in_multi=False)
    assert plan.rule == "builtin:ttl"
    check = plan.check
    second = round(1 / unit)
    assert check(100 * second, 100 * second, 0.0)
    assert check(100 * second, 99 * second, 1.0)  # the follower ran a second later
    assert check(100 * second, 98 * second, 2.0)
    assert not check(100 * second, 95 * second, 2.0)
    assert not check(100 * second, 105 * second, 2.0)
    assert not check(-1, 100 * second, 0.0)  # no expiry against an expiry: exact
    assert not check(-2, -1, 10.0)


def test_object_idletime_within_the_time_between_the_two_executions() -> None:
    plan = follower_plan(request("OBJECT", "IDLETIME", "k"), 10, in_multi=False)
    assert plan is not None and plan.words is None and plan.rule == "builtin:idletime"
    assert plan.check(10, 10, 0.0)
    assert plan.check(10, 10 + int(IDLE_SLACK), 0.0)  # the LRU clock's resolution
    assert plan.check(10, 7, 1.5)
    assert not plan.check(10, 20, 1.0)
    assert not plan.check(30, 10, 1.0)
    assert not plan.check(10, None, 0.0)  # no such key on one side only
    # OBJECT FREQ stays server-specific (an LFU counter decays with each server's clock).
    assert follower_plan(request("OBJECT", "FREQ", "k"), 3, in_multi=False).rule == \
        "builtin:server-specific"


def test_object_idletime_of_real_servers(pair) -> None:
    both(pair, "SET", "k", "v")
    leader, follower = pair
    a, b = leader("OBJECT", "IDLETIME", "k"), follower("OBJECT", "IDLETIME", "k")
    plan = follower_plan(request("OBJECT", "IDLETIME", "k"), a, in_multi=False)
    assert plan.check(a, b, 0.0)


def test_time_is_server_specific() -> None:
    a, b = (b"1700000000", b"123"), (b"1700000001", b"999")
    plan = follower_plan(request("TIME"), a, in_multi=False)
    assert plan.words is None and plan.rule == "builtin:server-specific" and plan.check(a, b, 0)


def test_hello_compares_only_whether_and_how_it_was_refused(pair) -> None:
    """Two servers' HELLO replies differ (the connection's id) and pass; a login one of them
    refuses does not: the client's later commands would run there as another user."""
    leader, follower = pair
    a, b = leader("HELLO", "2"), follower("HELLO", "2")
    plan = follower_plan(request("HELLO", "2"), a, in_multi=False)
    assert plan.words is None and plan.rule == "builtin:server-specific" and plan.check(a, b, 0)
    both(pair, "ACL", "SETUSER", "u", "on", ">pw", "+@all")
    a = leader("HELLO", "2", "AUTH", "u", "pw")
    b = follower("HELLO", "2", "AUTH", "u", "wrong")
    assert isinstance(b, RespError) and not isinstance(a, RespError)
    assert not plan.check(a, b, 0.0)
    assert plan.check(b, b, 0.0)


@pytest.mark.parametrize("words", [
    ("INFO",), ("INFO", "server"), ("CLIENT", "LIST"), ("CLIENT", "ID"),
    ("MEMORY", "USAGE", "k"), ("MEMORY", "STATS"), ("DEBUG", "OBJECT", "k"),
    ("SLOWLOG", "GET"), ("LASTSAVE",), ("LATENCY", "LATEST"),
])
def test_server_specific_replies_of_two_real_servers(pair, words) -> None:
    """Replies that differ between any two servers (ports, ids, addresses, clocks) pass, and
    nothing is sent instead of them."""
    both(pair, "SET", "k", "v" * 100)
    both(pair, "CONFIG", "SET", "slowlog-log-slower-than", 0)
    leader, follower = pair
    a, b = leader(*words), follower(*words)
    assert not isinstance(a, RespError), a
    plan = follower_plan(request(*words), a, in_multi=False)
    assert plan is not None and plan.words is None and plan.rule == "builtin:server-specific"
    assert plan.check(a, b, 0.0)


def test_client_info_and_list_id_compare_the_session_not_the_process(pair) -> None:
    """CLIENT INFO teaches the two ids of a connection; CLIENT LIST ID with the follower's ids
    (from those) is compared on name, db, user, resp and subscriptions, not on ids, addresses,
    ages or buffers."""
    port = pair[0].sock.getpeername()[1]
    for _ in range(3):  # the two servers' ids of the connection below differ
        socket.create_connection(("127.0.0.1", port)).close()
    leader, follower = pair = Conn(port), pair[1]
    both(pair, "CLIENT", "SETNAME", "a")
    both(pair, "SELECT", "3")
    words = ("CLIENT", "INFO")
    a, b = leader(*words), follower(*words)
    plan = follower_plan(request(*words), a, in_multi=False)
    assert plan.rule == "builtin:client-fields" and plan.check(a, b, 0.0) and a != b
    [(ours, theirs)] = CODEC.server_ids(request(*words), a, b)
    assert ours != theirs and b"id=%d " % ours in a and b"id=%d " % theirs in b
    listed = request("CLIENT", "LIST", "ID", ours)
    assert CODEC.follower_ids(listed, {}) is None  # (not learned: as it is)
    words = CODEC.follower_ids(listed, {ours: theirs})
    assert words == [b"CLIENT", b"LIST", b"ID", b"%d" % theirs]
    a, b = leader("CLIENT", "LIST", "ID", ours), follower(*words)
    plan = CODEC.renamed_plan(listed, follower_plan(listed, a, in_multi=False))
    assert plan.rule == "builtin:client-fields" and plan.check(a, b, 0.0)
    follower("CLIENT", "SETNAME", "b")
    assert not plan.check(a, follower(*words), 0.0)
    assert not plan.check(a, follower("CLIENT", "LIST", "ID", ours + 1000), 0.0)  # none there
    assert follower_plan(listed, a, in_multi=False).check(a, b"", 0.0)  # (ids not learned)
    leader("CLIENT", "TRACKING", "ON", "REDIRECT", ours)
    follower("CLIENT", "TRACKING", "ON", "REDIRECT", theirs)
    for words in (("CLIENT", "GETREDIR"), ("CLIENT", "TRACKINGINFO")):
        a, b = leader(*words), follower(*words)
        plan = follower_plan(request(*words), a, in_multi=False)
        assert a != b and plan.rule == "builtin:client-fields" and plan.check(a, b, 0.0)
    follower("CLIENT", "TRACKING", "OFF")
    assert not plan.check(a, follower(*words), 0.0)


def test_config_get_ignores_only_the_volatile_fields(pair) -> None:
    leader, follower = pair
    for pattern in ("*", "port", "dir", "maxmemory"):
        a, b = leader("CONFIG", "GET", pattern), follower("CONFIG", "GET", pattern)
        plan = follower_plan(request("CONFIG", "GET", pattern), a, in_multi=False)
        assert plan.rule == "builtin:config-volatile" and plan.check(a, b, 0.0), pattern
    assert leader("CONFIG", "GET", "port") != follower("CONFIG", "GET", "port")
    # A setting that is not where a server runs but how it behaves must be equal.
    follower("CONFIG", "SET", "maxmemory", "1000000")
    for pattern in ("*", "maxmemory"):
        a, b = leader("CONFIG", "GET", pattern), follower("CONFIG", "GET", pattern)
        plan = follower_plan(request("CONFIG", "GET", pattern), a, in_multi=False)
        assert not plan.check(a, b, 0.0), pattern


def test_in_a_transaction_a_command_goes_as_it_is() -> None:
    assert follower_plan(request("SPOP", "s"), b"QUEUED", in_multi=True) is None


TRANSACTION = [("SADD", "s", "x", "y"), ("SPOP", "s", 2), ("SRANDMEMBER", "s"),
               ("HRANDFIELD", "h", 2, "WITHVALUES"), ("ZRANDMEMBER", "z", 2, "WITHSCORES"),
               ("RANDOMKEY",), ("XADD", "st", "*", "a", "1"), ("INCR", "n"), ("SPOP", "h"),
               ("SPOP", "empty")]


def replay(pair: tuple[Conn, Conn], commands: list[tuple]) -> tuple[Any, Any]:
    """A transaction queued on both as it is, run by the leader; the follower then gets the
    transaction plan's requests and EXEC. Returns both EXEC replies."""
    leader, follower = pair
    for conn in pair:
        assert conn("MULTI") == b"OK"
        for words in commands:
            assert conn(*words) == b"QUEUED"
    value = leader("EXEC")
    plan = transaction_plan([request(*words) for words in commands], value)
    assert plan is not None and plan.words is None and plan.check is None
    assert plan.before[:2] == [[b"DISCARD"], [b"MULTI"]]
    for item in plan.before:
        words = commands[item] if isinstance(item, int) else item
        follower(*words)
    return value, plan, follower("EXEC")


@pytest.mark.parametrize("resp", [2, 3])
def test_a_transaction_is_replayed_with_the_leaders_effects(pair, resp) -> None:
    """The follower ends in the leader's state, and each replaced command's check passes on
    its EXEC reply element; the others reply the same. In RESP3 too, where HRANDFIELD
    WITHVALUES and ZRANDMEMBER WITHSCORES reply nested pairs."""
    both(pair, "HELLO", resp)
    both(pair, "SADD", "s", *range(20))
    both(pair, "HSET", "h", *[x for i in range(8) for x in (f"f{i}", i)])
    both(pair, "ZADD", "z", *[x for i in range(8) for x in (i, f"m{i}")])
    leader, follower = pair
    for _ in range(5):  # random choices: several rounds, so that some differ from the follower's
        a, plan, b = replay(pair, TRANSACTION)
        assert sorted(plan.effects) == [1, 2, 3, 4, 5, 6]
        assert plan.before[2:] == [0, *(plan.effects[i].words for i in range(1, 7)), 7, 8, 9]
        assert len(a) == len(b) == len(TRANSACTION)
        for i, (la, fb) in enumerate(zip(a, b, strict=True)):
            effect = plan.effects.get(i)
            if effect is not None and effect.check is not None:
                assert effect.check(la, fb, 0.0), (TRANSACTION[i], la, fb)
            else:
                assert la == fb, (TRANSACTION[i], la, fb)
        assert isinstance(a[8], RespError) and a[8].message.startswith(b"WRONGTYPE")
        for words in (("SMEMBERS", "s"), ("HGETALL", "h"), ("ZRANGE", "z", 0, -1, "WITHSCORES"),
                      ("XRANGE", "st", "-", "+"), ("GET", "n"), ("DBSIZE",)):
            x, y = leader(*words), follower(*words)
            assert (sorted(x) if words[0] == "SMEMBERS" else x) == \
                (sorted(y) if words[0] == "SMEMBERS" else y), words
    # Had the follower run SPOP itself, the sets would differ (the test can fail).
    for conn in pair:
        conn("SADD", "s", *range(100, 140))
    assert sorted(leader("SPOP", "s", 10)) != sorted(follower("SPOP", "s", 10))


@pytest.mark.parametrize("words", [("HRANDFIELD", "h", 3, "WITHVALUES"),
                                   ("ZRANDMEMBER", "h", 3, "WITHSCORES")])
def test_pairs_in_resp3_give_the_same_effect(pair, words) -> None:
    """RESP3 nests each field with its value (member with its score): the effect names the
    fields, and checks the values, as in RESP2."""
    both(pair, "HELLO", 3)
    if words[0] == "HRANDFIELD":
        both(pair, "HSET", "h", *[x for i in range(8) for x in (f"f{i}", i)])
    else:
        both(pair, "ZADD", "h", *[x for i in range(8) for x in (i * 1.5, f"m{i}")])
    plan, ok = effect(pair, *words)
    assert len(plan.words) == 5 and ok
    assert all(isinstance(w, bytes) for w in plan.words)
    leader, follower = pair
    value = leader(*words)
    assert isinstance(value[0], tuple)  # nested pairs: what this test is about
    follower("DEL", "h")
    follower(*(("HSET", "h") if words[0] == "HRANDFIELD" else ("ZADD", "h")),
             *[x for pair_ in value for x in (pair_ if words[0] == "HRANDFIELD"
                                              else (100, pair_[0]))])
    plan = follower_plan(request(*words), value, in_multi=False)
    assert plan.check(value, follower(*plan.words), 0.0) == (words[0] == "HRANDFIELD")


def test_a_replaced_commands_check_fails_on_a_follower_that_differs(pair) -> None:
    leader, follower = pair
    leader("SADD", "s", *range(10))
    follower("SADD", "s", *range(100, 110))
    a, plan, b = replay(pair, [("SPOP", "s", 3)])
    assert not plan.effects[0].check(a[0], b[0], 0.0)


def test_a_transaction_with_nothing_the_leader_decides_goes_as_it_is() -> None:
    queue = [request("SADD", "s", "x"), request("SPOP", "empty"), request("XADD", "st", "1-1",
                                                                          "a", "1")]
    assert transaction_plan(queue, (1, None, b"1-1")) is None
    assert transaction_plan(queue[:1], (1,)) is None


@pytest.mark.parametrize("leader", [None, RespError(b"EXECABORT Transaction discarded"),
                                    (b"a",), (b"a", b"b", b"c")])
def test_an_exec_that_did_not_run_the_queue_goes_as_it_is(leader) -> None:
    """Aborted (nil: the follower gets DISCARD instead), refused, or not this queue."""
    queue = [request("SPOP", "s"), request("INCR", "n")]
    assert transaction_plan(queue, leader) is None


def test_a_write_the_leader_refused_is_withheld() -> None:
    error = RespError(b"WRONGTYPE Operation against a key holding the wrong kind of value")
    assert follower_plan(request("SADD", "k", "x"), error, in_multi=False).rule == \
        "builtin:withheld"


def test_acl_and_pubsub_replies_in_the_servers_own_order_or_random(pair) -> None:
    """Found by running redis-py's tests during an update: ACL CAT and PUBSUB CHANNELS list in
    hash-table order, ACL GENPASS is random, ACL LOG lists each server's own refusals. Each
    passes between two real servers; a follower missing a channel still fails."""
    leader, follower = pair
    subscribers = []
    for conn in pair:
        sub = Conn(conn.sock.getpeername()[1])
        for i in range(40):
            sub("SUBSCRIBE", f"channel-{i}" if conn is leader else f"channel-{39 - i}")
        subscribers.append(sub)
    leader("AUTH", "nobody", "wrong")  # one refusal in the leader's log only
    for words in [("ACL", "CAT"), ("ACL", "CAT", "keyspace"), ("ACL", "GENPASS"),
                  ("ACL", "LOG"), ("PUBSUB", "CHANNELS")]:
        a, b = leader(*words), follower(*words)
        plan = follower_plan(request(*words), a, in_multi=False)
        assert plan is not None and plan.words is None and plan.check(a, b, 0.0), words
    subscribers[1]("UNSUBSCRIBE", "channel-7")
    a, b = leader("PUBSUB", "CHANNELS"), follower("PUBSUB", "CHANNELS")
    assert not follower_plan(request("PUBSUB", "CHANNELS"), a, in_multi=False).check(a, b, 0.0)
    for sub in subscribers:
        sub.sock.close()


@pytest.mark.parametrize("words", [
    ("EXPIRE", "k", 300), ("EXPIRE", "k", 300, "GT"), ("PEXPIRE", "k", 300000),
    ("SETEX", "k", 300, "v2"), ("PSETEX", "k", 300000, "v2"), ("SET", "k", "v2", "EX", 300),
    ("SET", "k", "v2", "px", 300000, "GET"), ("SET", "k", "EX", "XX", "EX", 300),
    ("GETEX", "k", "EX", 300),
])
def test_a_relative_expiry_reaches_the_follower_as_the_leaders_moment(pair, words) -> None:
    """The follower runs a request later than the leader (seconds, on a loaded machine): an
    expiry relative to it (EX 300) would keep the key longer there. It gets the leader's moment
    instead (PXAT, PEXPIREAT), as Redis's own replication does: both keys expire together."""
    both(pair, "SET", "k", "v")
    both(pair, "EXPIRE", "k", 100)
    leader, follower = pair
    value = leader(*words)
    at = 1_800_000_000.0  # when the leader answered, on the wall clock (a future moment here)
    plan = follower_plan(request(*words), value, in_multi=False, at=at)
    assert plan is not None and plan.words is not None and plan.check is None, plan
    assert follower(*plan.words) == value
    assert follower("PEXPIRETIME", "k") == int(at * 1000) + 300_000
    assert follower("GET", "k") == leader("GET", "k")
    # Without the leader's moment (an engine that does not know it), the request goes as it is.
    assert follower_plan(request(*words), value, in_multi=False) is None


def framed(data: bytes) -> list[tuple[bytes, list[bytes]]]:
    """Requests as (name upper-cased, arguments): how a server reads them."""
    return [(r.name.encode(), r.args) for r in CODEC.request_reader().receive(data)]


seconds = st.integers(-5, 10**9).map(b"%d".__mod__)
expiry_option = st.one_of(
    st.tuples(st.sampled_from([b"EX", b"ex", b"Px", b"PX", b"EXAT", b"PXAT"]),
              st.integers(1, 10**9).map(b"%d".__mod__)).map(list),
    st.sampled_from([[b"NX"], [b"XX"], [b"GET"], [b"KEEPTTL"]]))
run_request = st.one_of(
    st.tuples(st.just(b"SET"), st.binary(min_size=1, max_size=4), st.binary(max_size=4),
              st.lists(expiry_option, max_size=3)).map(
        lambda t: [t[0], t[1], t[2], *(w for option in t[3] for w in option)]),
    st.tuples(st.sampled_from([b"GET", b"INCR", b"DEL"]), st.binary(min_size=1, max_size=4)).map(
        list),
    st.tuples(st.just(b"HSET"), st.binary(min_size=1, max_size=3), st.sampled_from([b"EX", b"f"]),
              st.binary(max_size=3)).map(list),
    st.tuples(st.sampled_from([b"EXPIRE", b"pexpire"]), st.binary(min_size=1, max_size=3),
              seconds, st.lists(st.sampled_from([b"NX", b"XX", b"GT", b"LT"]), max_size=1)).map(
        lambda t: [t[0], t[1], t[2], *t[3]]),
    st.tuples(st.sampled_from([b"SETEX", b"psetex"]), st.binary(min_size=1, max_size=3), seconds,
              st.binary(max_size=3)).map(list),
    st.tuples(st.just(b"GETEX"), st.binary(min_size=1, max_size=3),
              st.lists(expiry_option, max_size=2)).map(
        lambda t: [t[0], t[1], *(w for option in t[2] for w in option)]))


@settings(max_examples=300, deadline=None)
@given(st.lists(run_request, min_size=1, max_size=6), st.floats(1e9, 3e9))
def test_property_a_runs_follower_requests_are_what_each_request_alone_would_get(
        requests: list[list[bytes]], at: float) -> None:
    """Whatever the run, the follower's copy reads, request by request, as what the follower
    gets for each request alone (``follower_plan``: an EX or PX made PXAT from ``at``,
    EXPIRE made PEXPIREAT, SETEX made SET ... PXAT), and the reader says ``expiring`` exactly
    when that changes something."""
    data = b"".join(encode_command(*words) for words in requests)
    reader = CODEC.request_reader()
    assert reader.count_run(data) == (len(data), len(requests))
    alone = [CODEC.follower_plan(r, b"OK", False, at) for r in CODEC.request_reader().receive(data)]
    assert framed(CODEC.follower_run(data, at)) == [
        framed(encode_command(*(plan.words if plan else words)))[0]
        for plan, words in zip(alone, requests, strict=True)]
    if any(plan is not None for plan in alone):
        assert reader.expiring


def test_without_the_c_rewrite_a_run_is_framed_again_to_the_same_requests(monkeypatch) -> None:
    run = b"".join(encode_command(*w) for w in [
        ("SET", "a", "1", "ex", "5"), ("GET", "a"), ("set", "b", "2", "NX", "PX", "70"),
        ("SETEX", "c", "5", "3"), ("PEXPIRE", "a", "30", "GT"), ("PEXPIRE", "b", "-1")])
    with_c = CODEC.follower_run(run, 1_796_000_000.25)
    monkeypatch.setattr(fast, "c_absolute", None)
    assert framed(CODEC.follower_run(run, 1_796_000_000.25)) == framed(with_c) == [
        (b"SET", [b"a", b"1", b"PXAT", b"1796000005250"]), (b"GET", [b"a"]),
        (b"SET", [b"b", b"2", b"NX", b"PXAT", b"1796000000320"]),
        (b"SET", [b"c", b"3", b"PXAT", b"1796000005250"]),
        (b"PEXPIREAT", [b"a", b"1796000000280", b"GT"]),
        (b"PEXPIREAT", [b"b", b"1796000000249"])]  # (-1 was once taken for "no time" in C)


def test_without_the_c_scan_no_run_sets_a_relative_expiry(monkeypatch) -> None:
    """Without the C scan runs are counted in Python, which notes no expiry: a read that sets
    one goes request by request, as before runs took them."""
    monkeypatch.setattr(fast, "c_scan", None)
    for words in [("SETEX", "a", "5", "1"), ("SET", "a", "1", "EX", "5"), ("EXPIRE", "a", "5")]:
        assert CODEC.request_reader().count_run(encode_command(*words)) is None, words
        assert CODEC.request_reader().count_run(encode_command(*words) * 2) is None, words
    assert CODEC.request_reader().count_run(encode_command("SET", "a", "1")) is not None


def test_a_run_carries_a_sets_relative_expiry_to_the_follower_as_the_leaders_moment() -> None:
    """A SET with EX or PX may be in a run (the reader says ``expiring``), and the follower
    gets the run with it as PXAT, as the SET alone would get it (``follower_plan``); the
    other relative expiries (SETEX, EXPIRE) still go request by request."""
    at = 1_796_000_000.25
    for words, runnable, expiring in [
            (("SET", "a", "1"), True, False), (("SET", "a", "1", "ex", "5"), True, True),
            (("set", "a", "1", "NX", "Px", "70"), True, True),
            (("HSET", "h", "EX", "1"), True, True),
            (("SETEX", "a", 5, "1"), True, True), (("expire", "a", 5, "NX"), True, True),
            (("PSETEX", "a", 5, "1"), True, True), (("GETEX", "a", "PX", 9), True, True),
            (("PEXPIREAT", "a", 5), True, False)]:
        data = encode_command(b"GET", b"x") + encode_command(*words)
        reader = CODEC.request_reader()
        assert (reader.count_run(data) is not None) is runnable, words
        if not runnable:
            continue
        assert reader.expiring is expiring, words  # (a field named EX: left as it is)
        alone = CODEC.follower_plan(request(*words), b"OK", False, at)
        assert framed(CODEC.follower_run(data, at)) == [
            (b"GET", [b"x"]), framed(encode_command(*(alone.words if alone else words)))[0]]
    assert CODEC.follower_run(encode_command("SET", "a", "1", "EX", "5"), 0.0) == \
        encode_command("SET", "a", "1", "EX", "5")  # (the moment not known: as it came)


def test_client_tracking_redirect_names_the_followers_own_connection(pair) -> None:
    """A connection's id differs between the two servers. CLIENT ID on both gives the pair, and
    the follower's CLIENT TRACKING ... REDIRECT gets its own id for the same connection: both
    servers then accept it (the follower refused the leader's id as unknown)."""
    leader, follower = pair
    Conn(follower.sock.getpeername()[1]).sock.close()  # the servers now number differently
    target = Conn(leader.sock.getpeername()[1]), Conn(follower.sock.getpeername()[1])
    (ids,) = CODEC.server_ids(request("CLIENT", "ID"), target[0]("CLIENT", "ID"),
                              target[1]("CLIENT", "ID"))
    assert ids[0] != ids[1]
    words = ("CLIENT", "TRACKING", "on", "REDIRECT", ids[0], "BCAST", "PREFIX", "a")
    assert leader(*words) == b"OK"
    translated = CODEC.follower_ids(request(*words), dict([ids]))
    assert translated == [b"CLIENT", b"TRACKING", b"on", b"REDIRECT", b"%d" % ids[1],
                          b"BCAST", b"PREFIX", b"a"]
    assert follower(*translated) == b"OK"
    assert isinstance(follower(*words), RespError)  # the leader's id, as it was
    assert CODEC.follower_ids(request("CLIENT", "TRACKING", "on", "REDIRECT", 999), {}) is None
    for conn in target:
        conn.sock.close()


def test_xpending_entries_compare_idle_times_within_the_time_between_executions(pair) -> None:
    """XPENDING's extended form carries each entry's idle time in milliseconds, which the
    follower, asking later, reads larger: equal within the time between the two executions and
    the follower's lag when it delivered the entry (STREAM_TIME_SLACK_MS), and a different
    consumer or delivery count is still a difference."""
    both(pair, "XADD", "s", "1-1", "f", "v")
    both(pair, "XGROUP", "CREATE", "s", "g", "0")
    both(pair, "XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", ">")
    leader, follower = pair
    words = ("XPENDING", "s", "g", "-", "+", 10)
    a = leader(*words)
    time.sleep(0.05)
    b = follower(*words)
    plan = follower_plan(request(*words), a, in_multi=False)
    assert plan is not None and plan.words is None and plan.rule == "builtin:idletime"
    assert a[0][2] != b[0][2] and plan.check(a, b, 0.06)
    late = ((b[0][0], b[0][1], a[0][2] + STREAM_TIME_SLACK_MS + 100, b[0][3]),)
    assert not plan.check(a, late, 0.06)
    other = ((b[0][0], b"bob", b[0][2], b[0][3]),)
    assert not plan.check(a, other, 0.06)


def test_a_command_the_leader_refused_to_queue_makes_the_followers_transaction_abort() -> None:
    """Inside MULTI the leader answered -BUSY (a script ran past its time limit there): its EXEC
    will abort, so the follower gets a command every version refuses to queue, and the two EXEC
    aborts compare equal whatever reason each names."""
    busy = RespError(b"BUSY Redis is busy running a script.")
    plan = follower_plan(request("SET", "k", "v"), busy, in_multi=True)
    assert plan is not None and plan.words == [b"GET"]
    assert plan.check(busy, RespError(b"ERR wrong number of arguments for 'get' command"), 0)
    assert not plan.check(busy, "QUEUED", 0)
    assert follower_plan(request("SET", "k", "v"), "QUEUED", in_multi=True) is None
    assert follower_plan(request("WATCH", "k"), busy, in_multi=True) is None  # run, not queued
    aborted = follower_plan(request("EXEC"), RespError(b"EXECABORT Transaction discarded because"
                                                       b" of: BUSY Redis is busy"), False)
    assert aborted is not None and aborted.words is None
    assert aborted.check(None, RespError(b"EXECABORT Transaction discarded because of previous"
                                         b" errors."), 0)
    assert not aborted.check(None, ("OK",), 0)


def test_acl_getuser_is_compared_with_the_single_commands_in_any_order() -> None:
    """Each server lists a user's single-command rules in its own command table's order (seen
    between two redis-server 7.0 processes); the categories' order, and everything else, must
    still be equal."""
    def user(commands: bytes, flags: tuple = (b"on",)) -> tuple:
        return (b"flags", flags, b"passwords", (), b"commands", commands, b"keys", b"~a*",
                b"channels", b"", b"selectors", ((b"commands", commands, b"keys", b""),))
    plan = follower_plan(request("ACL", "GETUSER", "u"), user(b"x"), in_multi=False)
    assert plan is not None and plan.words is None
    a = user(b"-@all +@set +@hash +mget -hset +get")
    assert plan.check(a, user(b"-@all +@set +@hash +mget +get -hset"), 0)
    assert not plan.check(a, user(b"-@all +@hash +@set +mget -hset +get"), 0)  # categories
    assert not plan.check(a, user(b"-@all +@set +@hash +mget +hset +get"), 0)
    assert not plan.check(a, user(b"-@all +@set +@hash +mget -hset +get", (b"off",)), 0)


def test_xinfo_stream_full_is_compared_with_its_times_near() -> None:
    """A consumer's seen-time and a pending entry's delivery time are each server's clock when
    it ran the read: they may be apart by the follower's lag; nothing else may differ."""
    def info(t: int, count: int = 1) -> tuple:
        return (b"length", 1, b"groups", ((b"name", b"g", b"pel", ((b"1-0", b"c", t, count),),
                                           b"consumers", ((b"seen-time", t),)),))
    plan = follower_plan(request("XINFO", "STREAM", "s", "FULL"), info(0), in_multi=False)
    assert plan is not None and plan.words is None
    now = 1_796_221_689_833
    assert plan.check(info(now), info(now + 40), 0)
    assert not plan.check(info(now), info(now + 60_000), 0)
    assert not plan.check(info(now), info(now, count=2), 0)
    assert follower_plan(request("XINFO", "STREAM", "s"), info(0), in_multi=False) is None


@pytest.mark.parametrize("words", [
    ("BLPOP", "l", "m", "0"), ("BRPOP", "m", "l", "0"), ("BRPOPLPUSH", "l", "dst", "0"),
    ("BLMOVE", "l", "dst", "RIGHT", "LEFT", "0"), ("BLMPOP", "0", "2", "m", "l", "LEFT"),
    ("BLMPOP", "0", "1", "l", "RIGHT", "COUNT", "2"), ("BZPOPMIN", "z", "0"),
    ("BZPOPMAX", "z", "0"), ("BZMPOP", "0", "1", "z", "MIN", "COUNT", "2"),
    ("BZMPOP", "0", "1", "z", "MAX")])
def test_a_blocking_pop_the_leader_served_is_its_effect_on_the_follower(pair, words) -> None:
    """What the follower runs in place of a blocking pop (it never blocks there) takes what
    the leader took, whatever the reply's shape."""
    both(pair, "RPUSH", "l", "a", "b", "c")
    both(pair, "ZADD", "z", "1", "x", "2", "y", "3", "w")
    plan, ok = effect(pair, *words)
    assert plan.rule == "builtin:blocking-effect" and ok, plan.words
    leader, follower = pair
    for key in ("l", "dst"):
        assert leader("LRANGE", key, 0, -1) == follower("LRANGE", key, 0, -1)
    assert leader("ZRANGE", "z", 0, -1) == follower("ZRANGE", "z", 0, -1)
