"""Clients in a database other than 0 (redis-py's ``db=``, redis-cli's ``-n``), against real
redis-server processes.

In SINGLE mode a client's SELECT is framed, so that the proxy knows which database the server
says the client is in; its replies go unframed again after it. During an update such a client
shares the update's connections, which the proxy puts in the client's database before its
requests (a SELECT of its own, on both versions), as it puts them in the client's protocol.
Before, a client that had sent SELECT kept connections of its own on both versions for the
whole update: 0.2 of SINGLE mode's throughput (``loadtests/cpu_split.py --db 1``).
"""

from __future__ import annotations

import pytest
import redis

from tests.proxyrun import REDIS7, poll_until, running, write_config
from tests.redisdump import dump
from tests.test_mve_redis import ended, port_of, unexpected, update_config

pytestmark = pytest.mark.slow


def _framed(proxy) -> list[bool]:
    """Whether each client's server connection has its replies framed, in no order."""
    return [client.link.replies is not None for client in proxy.service.relay.clients
            if client.link is not None]


def test_single_mode_frames_a_select_and_then_unframes_the_client(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"a": REDIS7})
    with running(config) as proxy:
        client = redis.Redis(port=proxy.port, db=3, socket_timeout=10,
                             single_connection_client=True)
        client.set("k", "in 3")
        assert client.get("k") == b"in 3"
        assert proxy.call(_framed, proxy) == [False]
        # A SELECT the server refuses leaves the client where it was, as directly.
        with pytest.raises(redis.ResponseError, match="DB index is out of range"):
            client.execute_command("SELECT", "99")
        assert client.get("k") == b"in 3"
        assert proxy.call(_framed, proxy) == [False]
        direct = redis.Redis(*proxy.call(lambda: proxy.service.relay.backend.address), db=3)
        assert direct.get("k") == b"in 3" and direct.dbsize() == 1
        assert redis.Redis(port=proxy.port).get("k") is None  # (database 0)


def test_during_an_update_clients_of_each_database_share_and_stay_in_theirs(tmp_path) -> None:
    """Clients in databases 0, 1 and 2, from before the update and from during it, pipelined
    and not: each reads and writes its own database on both versions, all of them share, no
    reply differs, and after the cutover each is still in its database on the new version."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        before = {db: redis.Redis(port=proxy.port, db=db, socket_timeout=10,
                                  single_connection_client=True) for db in (0, 1)}
        for db, client in before.items():
            client.set("name", f"db{db}")
        with pytest.raises(redis.ResponseError, match="DB index is out of range"):
            before[1].execute_command("SELECT", "99")  # (refused: it stays in database 1)
        proxy.call_async(proxy.service.update, "new")
        st = poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        old, new = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        clients = {**before, 2: redis.Redis(port=proxy.port, db=2, socket_timeout=10,
                                            single_connection_client=True)}
        for round_ in range(20):
            for db, client in clients.items():
                client.incr("n")
                with client.pipeline(transaction=False) as pipe:
                    pipe.incrby("n", db).get("name").rpush("log", round_)
                    assert pipe.execute()[1] == (f"db{db}".encode() if db < 2 else None)
        # Every connection shares: each client's, and its pipeline's (redis-py takes that one
        # from its pool).
        assert status()["update"]["shared_clients"] == 6
        # INFO shows the clients' own SELECTs (two of the client in database 1, one for each
        # connection in database 2 and for the pipeline's in 1), not the proxy's switches.
        stats = clients[0].info("commandstats")["cmdstat_select"]
        assert (stats["calls"], stats["failed_calls"]) == (5, 1)
        assert redis.Redis(port=old).info("commandstats")["cmdstat_select"]["calls"] > 5
        poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower caught up")
        for db in (0, 1, 2):
            assert redis.Redis(port=old, db=db).get("n") == str(20 * (1 + db)).encode()
            assert dump(old, db) == dump(new, db)
        assert status()["update"]["divergences"] == 0 and unexpected(proxy) == []
        proxy.call(proxy.service.promote)
        assert poll_until(status, ended, 30, "the cutover")["last_update"]["outcome"] == \
            "cutover"
        for db, client in clients.items():
            assert client.get("n") == str(20 * (1 + db)).encode()
            assert client.lrange("log", 0, -1)[-1] == b"19"
            assert client.info("server")["tcp_port"] == new
