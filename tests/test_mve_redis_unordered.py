"""Replies each server gives in its own order (HGETALL, SMEMBERS ...) during an update, on real
Redis 7.0 servers: they travel in runs, and a run whose replies then differ as bytes is compared
request by request, each as a set, however large (a large reply is not cut to a digest)."""

from __future__ import annotations

import redis

from tests.proxyrun import REDIS7, poll_until, running
from tests.test_mve_redis import port_of, unexpected, update_config
from tests.test_mve_redis_transactions import connected_then_updated


def test_members_in_another_order_are_no_divergence_in_runs(tmp_path) -> None:
    """A hash of 3,000 fields and a set of 3,000 members (HGETALL's reply about 100 KB), made
    before the update: the new version, loaded from the old one's snapshot, lists them in
    another order. Four clients read them in pipelines with other requests: the replies are
    the old version's, the update sees only expected divergences, and one connection of the
    old version's ran the HGETALLs (the shared one: they went in runs)."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        direct = redis.Redis(port=port_of(status()["leader"]["address"]))
        fields = {f"field-{i}": f"value-{i}" * 3 for i in range(3000)}
        direct.hset("h", mapping=fields)
        direct.sadd("s", *(f"member-{i}" for i in range(3000)))
        clients, _, st = connected_then_updated(proxy, 4)
        old, new = (redis.Redis(port=port_of(st[r]["address"])) for r in ("leader", "follower"))
        assert old.hkeys("h") != new.hkeys("h") and old.smembers("s") == new.smembers("s")
        for _ in range(5):
            for client in clients:
                with client.pipeline(transaction=False) as pipe:
                    pipe.hgetall("h").smembers("s").hkeys("h").get("x").hlen("h")
                    got = pipe.execute()
                assert got[0] == {k.encode(): v.encode() for k, v in fields.items()}
                assert len(got[1]) == 3000 and got[2] == old.hkeys("h") and got[4] == 3000
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the new version")
        assert st["state"] == "mve" and unexpected(proxy) == [], unexpected(proxy)[:1]
        by_rule = st["update"]["expected_by_rule"]
        assert by_rule.get("builtin:unordered", 0) >= 20, by_rule
        assert [c["cmd"] for c in old.client_list()].count("hlen") == 1
        for client in clients:
            client.close()
