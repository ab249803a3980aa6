"""redis-py's default pipeline in SINGLE mode, against a real redis-server: MULTI, its commands
and EXEC in one write. Such a read leaves the connection as it found it, so the proxy forwards
it unframed, as it forwards ordinary requests; before, every transaction made the proxy frame
the connection (a sentinel, then each reply framed in Python until EXEC's), at 0.43 of the
speed of the same pipeline without a transaction (``loadtests/redispy_pipelines.py``). A
transaction the client ends in a later write, or one WATCH guards, is framed as before."""

from __future__ import annotations

import pytest
import redis

from tests.proxyrun import REDIS7, running, write_config

pytestmark = pytest.mark.slow


def _framed(proxy) -> list[bool]:
    """Whether each client's server connection has its replies framed."""
    return [client.link.replies is not None for client in proxy.service.relay.clients
            if client.link is not None]


def _sentinels(server: redis.Redis) -> int:
    """The proxy's sentinels the server ran (ECHO: the clients here send none)."""
    return server.info("commandstats").get("cmdstat_echo", {}).get("calls", 0)


def test_whole_transactions_go_on_unframed_and_answer_as_directly(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"a": REDIS7})
    with running(config) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=10)
        server = redis.Redis(*proxy.call(lambda: proxy.service.relay.backend.address))
        assert client.set("n", 0)
        before = _sentinels(server)
        for i in range(50):
            with client.pipeline() as pipe:  # (transaction=True: redis-py's default)
                pipe.incr("n").set(f"k{i}", i).get(f"k{i}").rpush("log", i)
                assert pipe.execute() == [i + 1, True, b"%d" % i, i + 1]
        assert _sentinels(server) == before  # each went on unframed: no sentinel
        assert not any(proxy.call(_framed, proxy))
        # A queued command the server refuses aborts the transaction, as directly.
        with client.pipeline() as pipe:
            pipe.incr("n").execute_command("SET", "only-a-key")
            with pytest.raises(redis.ResponseError, match=r"EXECABORT|wrong number"):
                pipe.execute()
        assert client.get("n") == b"50"

        # WATCH (redis-py's transaction(): optimistic locking) and a MULTI sent alone, its EXEC
        # in a later write: framed, as before, and as directly.
        def add_two(pipe: redis.client.Pipeline) -> None:
            value = int(pipe.get("n"))
            pipe.multi()
            pipe.set("n", value + 2)
        assert client.transaction(add_two, "n") == [True]
        with client.client() as alone:  # (one connection for the three writes)
            assert alone.execute_command("MULTI") == b"OK"
            assert alone.execute_command("INCR", "n") == b"QUEUED"
            assert alone.execute_command("EXEC") == [53]
        assert _sentinels(server) > before
        assert server.get("n") == b"53" and server.llen("log") == 50
        assert not any(proxy.call(_framed, proxy))  # plain again afterwards
