"""Scripts loaded before an update, called by their SHA1 during it, on real Redis 7.0 servers.

Redis's snapshot does not hold its script cache, so a new version started on it answered
-NOSCRIPT where the old one ran the script, and every update of a service whose clients call
scripts that way (redis-py's ``register_script``, job queues, rate limiters) rolled back. The
proxy now loads the scripts it saw clients give the old version into the new one."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
import redis
import trio

from tests.proxyrun import REDIS7, poll_until, running
from tests.servers import redis_server
from tests.test_mve_redis import port_of, unexpected, update_config
from tests.test_mve_redis_transactions import connected_then_updated
from twinproxy.statesync.redis_fork import SyncError, load_scripts

INCR = "return redis.call('INCR', KEYS[1])"
INCRBY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
GET = "return redis.call('GET', KEYS[1])"


def test_scripts_loaded_before_two_updates_run_on_each_new_version(tmp_path) -> None:
    """A script loaded with SCRIPT LOAD, one redis-py registered (EVALSHA, then SCRIPT LOAD on
    its first -NOSCRIPT) and one called with EVAL (in a pipeline, which SINGLE mode only counts)
    before the update are called by their SHA1 during it: no divergence, both versions end with
    the same counts, and the new version has the three scripts. After the cutover, the next
    update (to a new server again) still finds them."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        loader = redis.Redis(port=proxy.port, socket_timeout=10)
        sha = loader.script_load(INCR)
        incrby = loader.register_script(INCRBY)
        assert incrby(keys=["by"], args=[2]) == 2
        with loader.pipeline(transaction=False) as pipe:
            assert pipe.get("by").eval(GET, 1, "by").execute() == [b"2", b"2"]
        get = hashlib.sha1(GET.encode()).hexdigest()
        clients, status, st = connected_then_updated(proxy, 3)
        for i in range(20):
            for client in clients:
                assert client.evalsha(sha, 1, "n") == 3 * i + clients.index(client) + 1
            assert incrby(keys=["by"], args=[2], client=clients[i % 3]) == 2 * i + 4
            assert clients[i % 3].evalsha(get, 1, "by") == str(2 * i + 4).encode()
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0 and unexpected(proxy) == [], st
        assert st["update"]["sync_stats"]["scripts"] == 3
        old, new = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        for port in (old, new):
            assert redis.Redis(port=port).mget("n", "by") == [b"60", b"42"]
            assert redis.Redis(port=port).script_exists(sha, incrby.sha, get) == [True] * 3

        proxy.call(proxy.service.promote)
        st = poll_until(status, lambda s: s["state"] == "single", 30, "the cutover")
        assert st["serving"] == "new", st
        proxy.call_async(proxy.service.update, "old")
        st = poll_until(status, lambda s: s["state"] == "mve", 30, "MVE again")
        for client in clients:
            assert client.evalsha(sha, 1, "n") > 60
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0 and unexpected(proxy) == [], st
        new = port_of(st["follower"]["address"])
        assert redis.Redis(port=new).script_exists(sha, incrby.sha, get) == [True] * 3
        for client in [*clients, loader]:
            client.close()


def test_a_script_the_old_version_forgot_is_not_loaded_into_the_new_one(tmp_path) -> None:
    """A script flushed from the old version behind the proxy's back (SCRIPT FLUSH on a
    connection of its own) is not loaded into the new one: both versions answer -NOSCRIPT to
    its EVALSHA, as the old one did alone, and the update goes on with no divergence. (Loaded
    anyway, the new version would run it, and hold a count the old one does not.)"""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)
        kept, flushed = client.script_load(INCRBY), client.script_load(INCR)
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        old = redis.Redis(port=port_of(status()["leader"]["address"]))
        old.script_flush()
        kept = old.script_load(INCRBY)
        proxy.call_async(proxy.service.update, "new")
        st = poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        try:
            client.evalsha(flushed, 1, "n")
            raise AssertionError("the script ran")
        except redis.exceptions.NoScriptError:
            pass
        assert client.evalsha(kept, 1, "by", 5) == 5
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0 and unexpected(proxy) == [], st
        new = redis.Redis(port=port_of(st["follower"]["address"]))
        assert new.script_exists(kept, flushed) == [True, False]
        assert new.get("n") is None and new.get("by") == b"5"
        client.close()


LIBRARY = ("#!lua name=counters\n"
           "redis.register_function('bump', function(keys, args) "
           "return redis.call('INCRBY', keys[1], args[1]) end)")


def test_script_and_function_calls_travel_as_runs_during_an_update(tmp_path) -> None:
    """Four clients connected before the update pipeline EVALSHA and FCALL calls that all
    write one key during it, which travel as runs on the shared connections (what makes them
    runs: test_redis_requests.py; what it is worth: loadtests/bench_scripts.py --mve). Their
    replies are right, both versions end with the same count, and one connection to the old
    version ran them: the shared one."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        loader = redis.Redis(port=proxy.port, socket_timeout=10)
        sha = loader.script_load(INCR)
        loader.function_load(LIBRARY)  # (functions are in the snapshot: 7.0 saves them)
        clients, status, st = connected_then_updated(proxy, 4)
        old, new = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        total = 0
        for _ in range(30):
            for client in clients:
                with client.pipeline(transaction=False) as pipe:
                    pipe.evalsha(sha, 1, "hot").fcall("bump", 1, "hot", 10)
                    got = pipe.execute()
                assert got == [total + 1, total + 11]
                total += 11
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0 and unexpected(proxy) == [], st
        assert [c["cmd"] for c in redis.Redis(port=old).client_list()].count("fcall") == 1
        leader, follower = redis.Redis(port=old), redis.Redis(port=new)
        assert leader.get("hot") == follower.get("hot") == str(total).encode()
        stats = follower.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] >= 120 and stats["cmdstat_fcall"]["calls"] >= 120
        for client in [*clients, loader]:
            client.close()


def test_a_script_the_new_version_refuses_fails_the_update_naming_it() -> None:
    """What the sync does when the new version will not load a script the old one has (a
    script that only the old version compiles): SyncError, naming the script, so the update
    fails before any request reaches the new version, rather than diverge on its first call."""
    bad = b"return (  -- (as only another Lua would compile it)"
    scripts = [(hashlib.sha1(INCR.encode()).hexdigest().encode(), INCR.encode()),
               (hashlib.sha1(bad).hexdigest().encode(), bad)]
    with redis_server("7") as server:
        address = ("127.0.0.1", server.port)
        with pytest.raises(SyncError) as failed:
            trio.run(load_scripts, address, None, scripts, 10.0)
        assert f"did not load script {scripts[1][0].decode()}" in str(failed.value)
        assert "Error compiling script" in str(failed.value)
        assert redis.Redis(port=server.port).script_exists(scripts[0][0].decode()) == [True]


def test_script_kill_stops_a_runaway_script_during_an_update(tmp_path) -> None:
    """A script that never ends (a bug in it) holds the old version: every other client gets
    -BUSY once busy-reply-threshold passed, and SCRIPT KILL is what an operator sends. Through
    the proxy it reaches the old version at once, from a client that shares the update's
    connection too (before, it waited there behind the script it was to kill, for ever): the
    script's caller gets Redis's "killed" error, as directly. The new version never runs the
    script (it had written nothing: Redis kills no other), so the update goes on, with no
    divergence (before, it rolled back on SCRIPT KILL's reply, or hung in the script)."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        (caller, operator), status, st = connected_then_updated(proxy, 2)
        old, new = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        for port in (old, new):
            redis.Redis(port=port).config_set("busy-reply-threshold", 100)
        for client in (caller, operator):  # (small replies: both share the connection now)
            assert client.get("before") is None and client.get("before") is None
        outcome: list[object] = []

        def run_away() -> None:
            try:
                outcome.append(caller.eval("while true do end", 0))
            except redis.RedisError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run_away)
        thread.start()
        time.sleep(0.5)
        assert operator.script_kill() is True
        thread.join(10)
        assert not thread.is_alive()
        assert isinstance(outcome[0], redis.ResponseError) and "killed" in str(outcome[0])
        assert caller.set("after", 1) and operator.get("after") == b"1"
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0 and unexpected(proxy) == [], st
        assert redis.Redis(port=new, socket_timeout=5).get("after") == b"1"
        for client in (caller, operator):
            client.close()
