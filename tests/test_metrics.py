"""The metrics collector: every documented counters() key becomes the documented metric, an
undescribed key is still exported, and the running service's keys are all described."""

from __future__ import annotations

import logging

import prometheus_client
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.proxyrun import MEMCACHED, REDIS7, poll_until, running, write_config
from tests.test_control import api
from twinproxy import __version__
from twinproxy.metrics import FAMILIES, ServiceCollector, undescribed

STATUS = {
    "state": "mve", "protocol": "redis", "uptime": 12.5,
    "leader": {"version": "v6", "pid": 10, "address": "127.0.0.1:1", "up": True},
    "follower": {"version": "v7", "pid": 11, "address": "127.0.0.1:2", "up": False},
}

COUNTERS = {
    "connections": 3, "connections_accepted": 40,
    "requests_leader": 1000, "requests_follower": 990,
    "bytes_sent_leader": 5000, "bytes_received_leader": 7000,
    "bytes_sent_follower": 4900, "bytes_received_follower": 6800,
    "client_bytes_received": 5000, "client_bytes_sent": 7000,
    "follower_backlog_requests": 10, "follower_backlog_bytes": 640,
    "replies_compared": 980,
    "divergences_expected": 4, "divergences_unexpected": 0,
    "updates_started": 2, "updates_cutover": 1, "updates_rolled_back": 1,
    "update_sync_seconds": 0.8, "update_mve_seconds": 30.1,
    "backend_restarts_leader": 0, "backend_restarts_follower": 1,
}


class FakeService:
    def __init__(self, counters: dict) -> None:
        self._counters = counters

    def status(self) -> dict:
        return STATUS

    def counters(self) -> dict:
        return self._counters


def scrape(counters: dict) -> dict:
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(FakeService(counters)))
    text = prometheus_client.generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples
            if not s.name.endswith("_created")}


def test_every_documented_key_maps_to_its_metric() -> None:
    assert undescribed(COUNTERS) == []
    m = scrape(COUNTERS)
    assert samples(m["twinproxy_requests"]) == {(("role", "leader"),): 1000,
                                                (("role", "follower"),): 990}
    assert m["twinproxy_requests"].type == "counter"
    assert samples(m["twinproxy_backend_bytes"])[(("direction", "sent"), ("role", "follower"))] \
        == 4900
    assert samples(m["twinproxy_divergences"]) == {(("outcome", "expected"),): 4,
                                                   (("outcome", "unexpected"),): 0}
    assert samples(m["twinproxy_updates"]) == {(("outcome", "cutover"),): 1,
                                               (("outcome", "rolled_back"),): 1}
    assert samples(m["twinproxy_update_phase_seconds"]) == {(("phase", "sync"),): 0.8,
                                                            (("phase", "mve"),): 30.1}
    assert m["twinproxy_update_phase_seconds"].type == "gauge"
    assert m["twinproxy_follower_backlog_requests"].type == "gauge"
    assert samples(m["twinproxy_replies_compared"]) == {(): 980}


def test_status_metrics() -> None:
    m = scrape({})
    assert samples(m["twinproxy_info"]) == {
        (("protocol", "redis"), ("version", __version__)): 1}
    assert samples(m["twinproxy_state"])[(("state", "mve"),)] == 1
    assert sum(samples(m["twinproxy_state"]).values()) == 1
    assert samples(m["twinproxy_version_up"]) == {
        (("role", "leader"), ("version", "v6")): 1, (("role", "follower"), ("version", "v7")): 0}
    assert samples(m["twinproxy_uptime_seconds"]) == {(): 12.5}
    assert m["twinproxy_start_time_seconds"].samples[0].value > 1.6e9


def test_undescribed_keys_are_exported_untyped_and_non_numbers_skipped(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="twinproxy.metrics")
    counters = {"fancy_new_thing": 7, "state_name": "mve", "flag": True}
    assert undescribed(counters) == list(counters)
    m = scrape(counters)
    assert m["twinproxy_fancy_new_thing"].type == "unknown"
    assert samples(m["twinproxy_fancy_new_thing"]) == {(): 7}
    assert "twinproxy_state_name" not in m and "twinproxy_flag" not in m
    assert "not described in twinproxy.metrics.FAMILIES" in caplog.text


def test_family_names_are_unique_and_well_formed() -> None:
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    for family in FAMILIES:
        assert family.kind in ("counter", "gauge")
        assert not family.name.endswith("_total"), "counters get _total in the exposition"
        assert family.help.endswith(".")


def test_the_running_services_counters_are_all_described(tmp_path) -> None:
    with running(write_config(tmp_path / "m.toml", "memcache", {"v1": MEMCACHED})) as p:
        keys = p.call(p.service.counters)
    assert undescribed(keys) == [], (
        "Service.counters() has keys that twinproxy.metrics.FAMILIES does not describe: add a "
        "line for each (name, type, help) so that it is exported as a proper metric")



def metrics(sock: str) -> dict:
    """The scraped counters, by (sample name, labels), parsed with prometheus_client's parser."""
    r = api(sock, "GET", "/metrics")
    assert r.status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.body.decode()) for s in f.samples
            if f.type == "counter" and s.name.endswith("_total")}


def update_with_traffic(proxy, sock: str, to: str, n: int) -> dict:
    """An update to ``to`` carrying ``n`` SETs and GETs of new keys and one DBSIZE (which
    differs: with sync "none" the version started for this update is empty; only logged
    here), promoted; the metrics after it."""
    assert api(sock, "POST", "/update", json_body={"to": to}).status == 202
    poll_until(lambda: api(sock, "GET", "/status").json(), lambda d: d["state"] == "mve", 30,
               "MVE")
    client = redis.Redis(*proxy.address, socket_timeout=10)
    try:
        for i in range(n):
            client.set(f"{to}:{i}", "v")
            assert client.get(f"{to}:{i}") == b"v"
        client.dbsize()
    finally:
        client.close()
    poll_until(lambda: api(sock, "GET", "/status").json(),
               lambda d: d["compared"] >= 2 * n + 1, 30, "the comparisons")
    r = api(sock, "POST", "/promote")
    assert r.status == 200 and r.json()["leader"]["version"] == to, r.json()
    return metrics(sock)


def test_counters_are_monotonic_over_updates(tmp_path) -> None:
    """Prometheus counters never go down in a process's life: a second update's engine starts
    counting from 0, but what the first one counted stays in the totals."""
    config = write_config(tmp_path / "m.toml", "redis", {"a": REDIS7, "b": REDIS7},
                          update='sync = "none"\nwarmup_seconds = 600\n'
                                 'warmup_requests = 1000000000\non_divergence = "log"')
    with running(config) as p:
        sock = p.service.config.proxy.control
        redis.Redis(*p.address).set("only-on-a", "1")  # so that DBSIZE differs in update 1
        first = update_with_traffic(p, sock, "b", 200)
        second = update_with_traffic(p, sock, "a", 20)  # fewer: a reset would show
    requests = ("twinproxy_requests_total", (("role", "leader"),))
    compared = ("twinproxy_replies_compared_total", ())
    unexpected = ("twinproxy_divergences_total", (("outcome", "unexpected"),))
    assert first[requests] >= 400 and first[compared] >= 400 and first[unexpected] >= 1
    assert second[requests] >= first[requests] + 40
    assert second[compared] >= first[compared] + 40
    assert second[unexpected] >= first[unexpected] + 1
    for key, value in first.items():
        assert second[key] >= value, key
