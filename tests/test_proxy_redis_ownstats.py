"""What SINGLE mode sends on its own does not show in the counts a client reads (issue 10):
the sentinel, an ECHO the proxy sends where a connection's replies must be framed from a point
on (here before each BLPOP), is taken out of INFO's reply (protocols/redis/ownstats.py), as
the fences' PINGs are during an update (test_mve_redis_ownstats.py)."""

from __future__ import annotations

import redis

from tests import servers
from tests.proxyrun import external, running, write_config


def _counts(client: redis.Redis) -> tuple[int, int, int]:
    info = client.info("everything")
    return (info.get("cmdstat_echo", {}).get("calls", 0), info["total_commands_processed"],
            int("latency_percentiles_usec_echo" in info))


def test_the_sentinels_are_not_in_info(tmp_path) -> None:
    with servers.redis_server("7") as behind:
        config = write_config(tmp_path / "r.toml", "redis", {"v7": external(behind.address)})
        with running(config) as proxy:
            direct = redis.Redis(port=behind.port, socket_timeout=10)
            client = redis.Redis(port=proxy.port, protocol=2, socket_timeout=10)
            other = redis.Redis(port=proxy.port, protocol=2, socket_timeout=10)
            for n in range(6):
                echoes, total, _ = _counts(client)
                for _ in range(3):  # each: a sentinel before the BLPOP
                    client.set("k", n)
                    assert client.blpop(["q"], timeout=0.01) is None
                    other.get("k")
                    assert other.blpop(["q"], timeout=0.01) is None
                if n % 2:
                    assert client.echo("mine") == b"mine"
                after, after_total, latency = _counts(client)
                assert after - echoes == n % 2  # as directly: only the client's own
                assert after_total - total == 12 + n % 2 + 1  # its own, the other's, the INFO
                assert latency == int(after > 0)
            assert _counts(direct)[0] > 30  # the server did run the proxy's sentinels
            resp3 = redis.Redis(port=proxy.port, protocol=3, socket_timeout=10)
            assert _counts(resp3)[0] == 3  # (a RESP3 INFO: a verbatim string)
            assert client.config_resetstat()
            assert _counts(client)[:2] == (0, 1)  # (the INFO itself)
            client.set("k", 1)
            assert client.blpop(["q"], timeout=0.01) is None
            assert _counts(client)[:2] == (0, 4)
            for c in (direct, client, other, resp3):
                c.close()
