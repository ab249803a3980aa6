"""redis-py's default pipeline (MULTI, its commands, EXEC, in one write) during an update, on
real Redis 7.0 servers: it travels on the shared connections as one run, its transaction
whole, and a transaction the leader aborted reaches the follower not at all."""

from __future__ import annotations

from collections.abc import Callable

import redis

from tests.proxyrun import REDIS7, poll_until, running
from tests.test_mve_redis import port_of, unexpected, update_config


def connected_then_updated(proxy, count: int) -> tuple[list[redis.Redis], Callable, dict]:
    """``count`` redis-py clients of one connection each, connected before the update starts;
    then the update, in MVE: the clients, the proxy's status, and that status in MVE."""
    status = lambda: proxy.call(proxy.service.status)  # noqa: E731
    clients = [redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)
               for _ in range(count)]
    for client in clients:
        assert client.ping()
    proxy.call_async(proxy.service.update, "new")
    return clients, status, poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")


def test_transactional_pipelines_travel_as_runs_during_an_update(tmp_path) -> None:
    """Four clients connected before the update send 40 transactional pipelines each during
    it. Their replies are right, both versions end with the same data, and only one connection
    to the old version ran EXEC: every transaction went whole on the shared connection."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        clients, status, st = connected_then_updated(proxy, 4)
        old, new = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        for i in range(40):
            for c, client in enumerate(clients):
                with client.pipeline() as pipe:  # (transaction=True: redis-py's default)
                    pipe.incr("counter").set(f"k{c}", i).rpush(f"l{c}", i).expire(f"k{c}", 900)
                    got = pipe.execute()
                assert got[0] == 4 * i + c + 1 and got[1:] == [True, i + 1, True]
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0 and unexpected(proxy) == [], st
        assert st["compared"] >= 4 * 40 * 6
        # One connection of the old version's ran the EXECs: the shared one. (Request by
        # request, each client's transaction went on a connection of its own: four.)
        assert [c["cmd"] for c in redis.Redis(port=old).client_list()].count("exec") == 1
        leader, follower = redis.Redis(port=old), redis.Redis(port=new)
        assert follower.info("commandstats")["cmdstat_exec"]["calls"] >= 160
        keys = ["counter", *(f"k{c}" for c in range(4))]
        assert leader.mget(keys) == follower.mget(keys) == [b"160", *[b"39"] * 4]
        for c in range(4):
            assert leader.lrange(f"l{c}", 0, -1) == follower.lrange(f"l{c}", 0, -1)
            assert abs(leader.ttl(f"k{c}") - follower.ttl(f"k{c}")) <= 1
        for client in clients:
            client.close()


def test_a_transaction_the_leader_aborted_is_not_run_by_the_follower(tmp_path) -> None:
    """A pipeline whose transaction holds a request the server refuses to queue (SET with no
    value) aborts (EXECABORT), and redis-py raises the same error through the proxy as
    directly; it changed nothing on either version, and the pipelines after it go on."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        client = redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)
        assert client.ping()
        proxy.call_async(proxy.service.update, "new")
        st = poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        old, new = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        direct = redis.Redis(port=old)
        errors = []
        for target in (client, direct):
            with target.pipeline() as pipe:
                pipe.incr("n").execute_command("SET", "only-a-key")
                try:
                    pipe.execute()
                except redis.ResponseError as exc:
                    errors.append(str(exc))
        assert len(errors) == 2 and errors[0] == errors[1], errors
        assert "SET only-a-key" in errors[0] and "wrong number of arguments" in errors[0]
        with client.pipeline() as pipe:
            assert pipe.incr("m").set("after", 1).execute() == [1, True]
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["divergences"] == 0 and unexpected(proxy) == [], st
        assert st["update"]["withheld"] >= 4  # MULTI, INCR, the SET, EXEC
        follower = redis.Redis(port=new)
        assert direct.mget("n", "m", "after") == follower.mget("n", "m", "after") == [
            None, b"1", b"1"]
        client.close()
