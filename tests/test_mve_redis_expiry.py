"""Writes with a time to live during an update (a cache's ``SET k v EX 300``, a session's
``SETEX`` or ``SET`` then ``EXPIRE``), on real Redis 7.0 servers: they travel in runs like other
writes, and the follower gets each with the leader's moment (``PXAT``, ``PEXPIREAT``), so that
both versions expire the key in the same millisecond however far behind the follower runs."""

from __future__ import annotations

import time

import redis

from tests import servers
from tests.proxyrun import REDIS7, poll_until, running
from tests.test_mve_redis import port_of, unexpected, update_config


def test_sets_with_a_time_to_live_expire_at_the_leaders_moment_on_the_follower(tmp_path) -> None:
    """The follower is paused for 3 s while two clients write keys with EX, PX, SETEX and
    EXPIRE, alone and pipelined, so it runs those writes 3 s after the leader did; each key
    still expires at the same moment on both versions (PEXPIRETIME, within the time the leader
    took to answer)."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        proxy.call_async(proxy.service.update, "new")
        st = poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        old, new = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        clients = [redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)
                   for _ in range(2)]
        for client in clients:
            assert client.ping()  # (a new client's first read goes alone: first_read)
        keys = []
        with servers.paused(st["follower"]["pid"]):
            for i in range(30):
                client = clients[i % 2]
                assert client.set(f"ex{i}", i, ex=600)
                with client.pipeline(transaction=False) as pipe:
                    pipe.set(f"px{i}", i, px=600_000).get(f"ex{i}").set(f"plain{i}", i)
                    pipe.set(f"later{i}", i).expire(f"later{i}", 900).pexpire(f"px{i}", 700_000)
                    assert pipe.execute() == [True, b"%d" % i, True, True, True, True]
                assert client.setex(f"setex{i}", 300 + i, i)
                keys += [f"ex{i}", f"px{i}", f"later{i}", f"setex{i}"]
            time.sleep(3)
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0 and unexpected(proxy) == [], st
        assert st["update"]["shared_clients"] == 4  # (each client's, and its pipeline's)
        leader, follower = redis.Redis(port=old), redis.Redis(port=new)
        apart = {key: follower.execute_command("PEXPIRETIME", key) -
                 leader.execute_command("PEXPIRETIME", key) for key in keys}
        assert all(abs(ms) < 1000 for ms in apart.values()), apart  # (3000 if taken as sent)
        assert leader.execute_command("PEXPIRETIME", "plain7") == \
            follower.execute_command("PEXPIRETIME", "plain7") == -1
        assert leader.mget(keys) == follower.mget(keys)
        for client in clients:
            client.close()
