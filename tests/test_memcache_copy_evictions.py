"""memcache-copy's steps against two real memcached, without the proxy: an item memcached evicts
by itself between the copy's read of it and the sync point is no client's write, so only
memcached's log of evictions tells the copy to read it again; the new version must not keep it.
"""

from __future__ import annotations

import pytest
from pymemcache.client.base import Client

from tests.servers import memcached_server
from twinproxy.config import VersionConfig
from twinproxy.statesync.base import SyncError, SyncJob
from twinproxy.statesync.memcache_copy import MemcacheCopy

SMALL = ("-m", "2", "-I", "512k")  # 2 MB: a few hundred 5 kB items, then evictions
VALUE = b"v" * 5000


async def test_items_evicted_during_the_copy_are_not_copied() -> None:
    with memcached_server(*SMALL) as leader, memcached_server(*SMALL) as follower:
        old = ("127.0.0.1", leader.port)
        direct = Client(old, timeout=10)
        for i in range(200):
            assert direct.set(f"a{i}", VALUE + b"%d" % i, noreply=False)
        target = VersionConfig(name="v2", command=("memcached", "-p", "{port}", *SMALL))
        method = MemcacheCopy(SyncJob(1, old, target, 10.0))
        try:
            await method.prepare()
            assert method.records.records == 200
            # memcached makes room for other items (as if written by clients the proxy had
            # already counted): most of the a-items go, no client write names them.
            for i in range(250):
                assert direct.set(f"b{i}", VALUE, noreply=False)
            await method.at_sync_point(None)  # type: ignore[arg-type]
            assert method.stats["sync_point_reread"] > 0
            await method.after_start(("127.0.0.1", follower.port))
        finally:
            await method.aclose()
        new = Client(("127.0.0.1", follower.port), timeout=10)
        keys = [f"a{i}" for i in range(200)]
        on_leader = direct.get_many(keys)
        assert 0 < len(on_leader) < 200, len(on_leader)  # some evicted, some kept
        assert new.get_many(keys) == on_leader


async def test_a_new_version_with_another_memory_limit_given_by_its_address_is_refused() -> None:
    """For versions given by their address the config holds no ``-m``: the servers are asked,
    before any item is written into the new version and before MVE begins."""
    with memcached_server("-m", "64") as leader, memcached_server("-m", "32") as follower:
        old = ("127.0.0.1", leader.port)
        assert Client(old, timeout=10).set("k", b"v", noreply=False)
        target = VersionConfig(name="v2", address=("127.0.0.1", follower.port))
        assert MemcacheCopy.check(VersionConfig(name="v1", address=old), target) is None
        method = MemcacheCopy(SyncJob(1, old, target, 10.0))
        try:
            await method.prepare()
            with pytest.raises(SyncError, match=r"v2's memory limit \(32 MB.*differs from the "
                                                r"running version's \(64 MB.*same -m"):
                await method.after_start(("127.0.0.1", follower.port))
        finally:
            await method.aclose()
        assert Client(("127.0.0.1", follower.port), timeout=10).get("k") is None
