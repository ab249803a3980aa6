"""Administrative commands during an update (issue 10): a client that pauses clients, changes the
configuration, loads functions, swaps or flushes databases while an update runs gets the replies it
gets from redis-server directly, the update goes on with no unexpected divergence, and both
versions end in the same state (keys of every database touched, functions, configuration)."""

from __future__ import annotations

import redis

from tests.proxyrun import REDIS7, poll_until, running, write_config
from tests.redisdump import differences, dump
from tests.test_mve_redis import caught_up, port_of, unexpected, update_config, wait_for

LIBRARY = ("#!lua name=adminlib\nredis.register_function('bump', "
           "function(keys, args) return redis.call('INCR', keys[1]) end)")

SEQUENCE = [
    ["SET", "gone", "1"], ["FLUSHALL"], ["SET", "x", "1"], ["FLUSHDB"], ["DBSIZE"],
    ["SET", "a", "1"], ["SET", "b", "2"], ["RPUSH", "l", "1", "2", "3"],
    ["CLIENT", "PAUSE", "100", "WRITE"], ["SET", "c", "3"], ["CLIENT", "UNPAUSE"],
    ["CLIENT", "PAUSE", "50"], ["GET", "a"],
    ["CLIENT", "NO-EVICT", "ON"], ["CLIENT", "NO-EVICT", "OFF"],
    ["CLIENT", "SETNAME", "admin"], ["CLIENT", "GETNAME"],
    ["CLIENT", "TRACKING", "ON"], ["GET", "b"], ["CLIENT", "TRACKING", "OFF"],
    ["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"], ["CONFIG", "GET", "maxmemory-policy"],
    ["CONFIG", "SET", "list-max-listpack-size", "4"], ["CONFIG", "SET", "no-such-thing", "1"],
    ["FUNCTION", "LOAD", LIBRARY], ["FCALL", "bump", "1", "f"], ["FUNCTION", "LIST"],
    ["FUNCTION", "DELETE", "adminlib"], ["FUNCTION", "LOAD", LIBRARY],
    ["FCALL", "bump", "1", "f"],
    ["SCRIPT", "LOAD", "return 1"], ["SCRIPT", "KILL"], ["SCRIPT", "FLUSH"],
    ["DEBUG", "SLEEP", "0"], ["OBJECT", "ENCODING", "l"],
    ["ACL", "SETUSER", "reader", "on", ">secret", "+get", "~*"], ["ACL", "GETUSER", "reader"],
    ["ACL", "DELUSER", "nobody-here"],
    ["SWAPDB", "0", "1"], ["SELECT", "1"], ["GET", "a"], ["SET", "in1", "x"], ["SELECT", "0"],
    ["SET", "in0", "y"], ["MOVE", "in0", "2"], ["MOVE", "missing", "2"],
    ["CONFIG", "RESETSTAT"], ["LATENCY", "RESET"], ["SLOWLOG", "RESET"], ["MEMORY", "PURGE"],
]


def run(port: int) -> list:
    """Each request's reply (an error as its text), on one connection."""
    r = redis.Redis(port=port, socket_timeout=10)
    out = []
    for words in SEQUENCE:
        try:
            out.append(r.execute_command(*words))
        except redis.ResponseError as exc:
            out.append(f"error: {exc}")
    r.close()
    return out


def state(port: int) -> tuple:
    """What the sequence leaves in a server: keys of databases 0 to 2, the functions, the
    settings it changed, the users."""
    r = redis.Redis(port=port)
    config = r.config_get("maxmemory-policy") | r.config_get("list-max-listpack-size")
    return ([dump(port, db) for db in range(3)], r.function_list(), config,
            sorted(r.acl_users()))


def test_administrative_commands_during_an_update_answer_as_directly(tmp_path, redis7) -> None:
    direct = run(redis7.port)
    config = write_config(tmp_path / "r.toml", "redis", {"old": REDIS7, "new": REDIS7},
                          start="old", update='warmup_seconds = 600\nwarmup_requests = 0\n'
                                              'on_divergence = "log"')
    with running(config) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        proxy.call_async(proxy.service.update, "new")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        got = run(proxy.port)
        differ = [(words[:2], a, b) for words, a, b in zip(SEQUENCE, direct, got, strict=True)
                  if a != b]
        assert differ == []
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve", st["last_update"]
        unexpected = [d.request for d in proxy.service.divergences.since(0, 1000)
                      if not d.expected]
        assert unexpected == []
        leader, follower = (int(st[side]["address"].rsplit(":", 1)[1])
                            for side in ("leader", "follower"))
        a, b = state(leader), state(follower)
        for db in range(3):
            assert differences(a[0][db], b[0][db]) == [], db
        assert a[0][1] and a[0][2]  # the swap and the move left keys there
        assert a[1:] == b[1:]


def get_runs_on(port: int) -> list[str]:
    """The flags of the connections of the server at ``port`` whose last command was a GET."""
    return [c["flags"] for c in redis.Redis(port=port).client_list() if c["cmd"] == "get"]


def test_a_client_that_asks_no_evict_during_an_update_is_served_where_it_holds(tmp_path) -> None:
    """CLIENT NO-EVICT ON protects the connection it is sent on from the server's client
    eviction (``maxmemory-clients``). During an update a plain client's requests go on the
    connection all plain clients share; after NO-EVICT they must run on the client's own
    connections, where the flag is set, on both versions (``e`` in CLIENT LIST's flags)."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        ports = [port_of(st[side]["address"]) for side in ("leader", "follower")]
        r = redis.Redis(port=proxy.port, protocol=2, single_connection_client=True)
        r.set("k", "v")
        assert r.execute_command("CLIENT", "NO-EVICT", "ON") == b"OK"
        assert r.get("k") == b"v"
        wait_for(proxy, caught_up, what="the follower to catch up")
        for port in ports:  # one connection ran the GET, and it is the one that has the flag
            flags = get_runs_on(port)
            assert len(flags) == 1 and "e" in flags[0], (port, flags)
        r.close()
        assert unexpected(proxy) == []
