"""PUBSUB's counts during an update, on real Redis 7.0 servers: a chat or a socket.io adapter
asks ``PUBSUB NUMSUB`` and ``NUMPAT`` while clients subscribe, and the new version, behind,
must answer each at the same point among the subscriptions as the old one did."""

from __future__ import annotations

import redis

from tests import servers
from tests.proxyrun import REDIS7, poll_until, running
from tests.test_mve_redis import unexpected, update_config


def test_pubsub_counts_match_while_the_new_version_runs_behind(tmp_path) -> None:
    """The new version is paused while three clients subscribe, one channel or pattern at a
    time, and another asks PUBSUB's counts after each. Once it runs again it gets all of them
    at once; it must run each count after the subscriptions the old version had when it
    answered, and before the later ones: no divergence."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        proxy.call_async(proxy.service.update, "new")
        st = poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        asker = redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)
        assert asker.ping()
        subscribers = [redis.Redis(port=proxy.port, socket_timeout=10).pubsub()
                       for _ in range(3)]
        counts = []
        with servers.paused(st["follower"]["pid"]):
            for i in range(4):
                for s, sub in enumerate(subscribers):
                    sub.psubscribe(f"p{s}-{i}*")
                    sub.subscribe(f"c{s}-{i}")
                    assert sub.get_message(timeout=5)["type"] == "psubscribe"
                    assert sub.get_message(timeout=5)["type"] == "subscribe"
                    counts.append((asker.pubsub_numpat(),
                                   asker.pubsub_numsub(f"c{s}-{i}", "c0-0")))
        assert counts[-1] == (12, [(b"c2-3", 1), (b"c0-0", 1)])
        assert [n for n, _ in counts] == list(range(1, 13))
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the new version")
        assert st["state"] == "mve" and unexpected(proxy) == [], unexpected(proxy)
        assert st["compared"] >= 24
        for sub in subscribers:
            sub.close()
        asker.close()
