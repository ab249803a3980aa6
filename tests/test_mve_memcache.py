"""A live update of memcached (sync "none": a cache that starts empty) under pymemcache's default
``noreply`` sets: every request, answered or not, must be paired on both versions in order, or
the follower's backlog grows until the update rolls back."""

from __future__ import annotations

import time

from pymemcache.client.base import Client

from tests.proxyrun import MEMCACHED, poll_until, running, write_config


def test_update_with_noreply_sets_pairs_every_request_and_cuts_over(tmp_path) -> None:
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
        update='sync = "none"\nwarmup_seconds = 1.0\nwarmup_requests = 1500\n'
               "follower_timeout = 5.0\n",
    )
    with running(config) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        client = Client(proxy.address, no_delay=True, default_noreply=True)
        proxy.call_async(proxy.service.update, "v2")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        for i in range(400):
            key = f"k{i % 40}"
            client.set(key, f"v{i}")  # noreply: memcached answers nothing
            assert client.get(key) == f"v{i}".encode()
            client.delete(f"gone{i}")  # noreply
            assert client.get_many([key, f"gone{i}"]) == {key: f"v{i}".encode()}
        # The cutover waits until the follower answered everything it was sent: a request
        # left unpaired would hold it until follower_timeout, and the update would roll back.
        done = poll_until(status, lambda s: s["state"] == "single", 30, "the cutover")
        assert done["last_update"]["outcome"] == "cutover", done
        assert done["serving"] == "v2" and done["divergences"] == 0
        assert client.get("k39") == b"v399"  # written during MVE, now read from v2
        client.set("after", "1", noreply=False)
        assert client.get("after") == b"1"
        time.sleep(0.1)
        assert status()["state"] == "single"
