"""What the proxy sends on its own during an update does not show in the counts a client reads
(issue 10): the fences' PINGs (engine/waits.py) are taken out of INFO's reply
(protocols/redis/ownstats.py), exactly, while other clients block and wake all the time."""

from __future__ import annotations

import threading

import pytest
import redis

from tests.proxyrun import REDIS7, running
from tests.test_mve_redis import port_of, status, unexpected, update_config, wait_for
from tests.test_mve_redis_blocking import LOGGED, in_mve
from twinproxy.engine.waits import PROBES_AFTER_WAITER

pytestmark = pytest.mark.slow


def _pings(client: redis.Redis) -> tuple[int, int]:
    info = client.info("everything")
    return info.get("cmdstat_ping", {}).get("calls", 0), info["total_commands_processed"]


def test_commandstats_during_an_update_count_only_what_clients_sent(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        leader = redis.Redis(port=port_of(in_mve(proxy)["leader"]["address"]))
        stop = threading.Event()
        popped: list = []

        def busy() -> None:  # a waiter and a pusher: every cycle fences the key with probes
            waiter = redis.Redis(port=proxy.port, socket_timeout=30)
            pusher = redis.Redis(port=proxy.port, socket_timeout=30)
            while not stop.is_set():
                # (a pop that gets nothing in 20 s lost its push: the rpush is sent at once)
                thread = threading.Thread(target=lambda: popped.append(
                    waiter.blpop(["q"], timeout=20)))
                thread.start()
                pusher.rpush("q", "x")
                thread.join(30)

        thread = threading.Thread(target=busy)
        thread.start()
        client = redis.Redis(port=proxy.port, socket_timeout=10)
        try:
            # 20 rounds at least, and on until the others blocked and woke 5 times meanwhile
            # (on a loaded machine their thread may get few turns while this one runs)
            n = 0
            while n < 20 or (len(popped) < 5 and n < 2000):
                (pings, total) = _pings(client)
                for _ in range(n % 4):
                    assert client.ping()
                (after, after_total) = _pings(client)
                assert after - pings == n % 4  # as directly: only its own PINGs
                assert after_total - total >= n % 4 + 1  # its own, the INFO, the others'
                n += 1
        finally:
            stop.set()
            thread.join(40)
        assert len(popped) >= 5 and all(popped)
        direct, _ = _pings(leader)
        # the server did run the proxy's probes: at least PROBES_AFTER_WAITER for each pop
        assert direct - _pings(client)[0] >= PROBES_AFTER_WAITER * len(popped)
        client.config_resetstat()  # counts start again: so does the proxy's
        client.ping()
        assert _pings(client)[0] == 1
        assert status(proxy)["state"] == "mve" and unexpected(proxy) == []


def test_the_sentinels_and_the_sync_point_stay_out_of_info_during_an_update(tmp_path) -> None:
    """SINGLE mode's sentinels (ECHOs before each BLPOP here, and the one that checks the
    version as it comes up, after the PING that found it ready) are taken out of INFO before
    the update (test_proxy_redis_ownstats)
    and still during it: the leader counts them until CONFIG RESETSTAT. So are the requests of
    the update's own to the leader (COMMAND, INFO persistence, BGSAVE, CONFIG GET), also after
    a rollback."""
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        client = redis.Redis(port=proxy.port, protocol=2, socket_timeout=10)
        for _ in range(5):
            client.set("k", 1)
            assert client.blpop(["q"], timeout=0.01) is None
        assert "cmdstat_echo" not in client.info("commandstats")
        leader = redis.Redis(port=port_of(in_mve(proxy)["leader"]["address"]), protocol=2)
        direct = leader.info("commandstats")
        assert direct["cmdstat_echo"]["calls"] >= 6 and direct["cmdstat_bgsave"]["calls"] == 1
        assert direct["cmdstat_info"]["calls"] >= 3  # (the client's, the update's ...)
        assert client.echo("x") == b"x"
        info = client.info("everything")
        assert info["cmdstat_echo"]["calls"] == 1, info["cmdstat_echo"]
        # the client's own, and the look at the leader above (not the update's)
        assert info["cmdstat_info"]["calls"] == 2, info["cmdstat_info"]
        shown = {key for key in info if key.startswith("cmdstat_")}
        assert shown == {"cmdstat_echo", "cmdstat_info", "cmdstat_set", "cmdstat_blpop"}, shown
        assert status(proxy)["state"] == "mve" and unexpected(proxy) == []
        proxy.call(proxy.service.rollback)  # SINGLE mode again: still without them
        wait_for(proxy, lambda s: s["state"] == "single", what="the rollback")
        info = client.info("everything")
        assert {key for key in info if key.startswith("cmdstat_")} == shown
        assert info["cmdstat_echo"]["calls"] == 1 and info["cmdstat_info"]["calls"] == 3
        client.close()
        leader.close()
