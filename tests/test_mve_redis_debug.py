"""DEBUG during an update (issue 10), with redis-server 7.0 to 7.0 behind twinproxy.

A client's ``DEBUG RELOAD`` reloads the old version (its reply goes to the client) and then the
new one; while a version loads it answers ``-LOADING``. Other clients get from the old version
what they would get directly (``-LOADING`` while it loads, a reply before and after); what it
refused is never sent to the new version, and nothing the old version ran meets the new one's
loading (the new version runs the reload with nothing else there). The update stays in MVE
with no unexpected divergence, and both versions hold the same data. ``DEBUG SLEEP`` longer
than ``follower_timeout`` does not count as a hung new version, and a cutover asked for while
a version loads waits for the load, with the clients served, and then happens.
"""

from __future__ import annotations

import socket
import threading
import time

import redis

from tests.proxyrun import REDIS7, poll_until, running
from tests.redisdump import differences, dump
from tests.servers import recv_until
from tests.test_mve_redis import (
    caught_up,
    ended,
    port_of,
    start_load,
    status,
    stop_load,
    unexpected,
    update_config,
    wait_for,
)

KEYS = 20_000
LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"
UPDATE = 'warmup_seconds = 600\nwarmup_requests = 0\non_divergence = "log"\n'


def _loading(port: int) -> bool:
    return bool(redis.Redis(port=port, socket_timeout=10).info("persistence")["loading"])


def _slow_loads(proxy_port: int) -> redis.Redis:
    """A client of the proxy that made both versions load slowly (seconds for KEYS keys) and
    serve others meanwhile; the keys were loaded into the old version before the update."""
    admin = redis.Redis(port=proxy_port, socket_timeout=120)
    admin.config_set("loading-process-events-interval-bytes", 1024)
    admin.config_set("key-load-delay", 50)  # µs a key
    return admin


def _in_mve(proxy) -> tuple[int, int]:
    leader = port_of(status(proxy)["leader"]["address"])
    redis.Redis(port=leader, socket_timeout=60).execute_command("DEBUG", "POPULATE", KEYS)
    proxy.call_async(proxy.service.update, "new")
    st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
    return leader, port_of(st["follower"]["address"])


def _gets(port: int, stop: threading.Event, seen: list[bytes]) -> None:
    """GET key:1 on one connection until ``stop``, each reply kept."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        while not stop.is_set():
            sock.sendall(b"GET key:1\r\n")
            reply = recv_until(sock, b"\r\n")
            while reply.startswith(b"$") and reply.count(b"\r\n") < 2:
                reply += recv_until(sock, b"\r\n")
            seen.append(reply)
            time.sleep(0.005)


def test_debug_reload_during_an_update_with_clients_running(tmp_path) -> None:
    config = update_config(tmp_path, REDIS7, REDIS7, update=UPDATE)
    with running(config) as proxy:
        leader, follower = _in_mve(proxy)
        admin = _slow_loads(proxy.port)
        load = start_load(proxy.port, tmp_path, clients=10)
        stop, seen = threading.Event(), []
        getter = threading.Thread(target=_gets, args=(proxy.port, stop, seen))
        getter.start()
        reply: list = []
        reload = threading.Thread(
            target=lambda: reply.append(admin.execute_command("DEBUG", "RELOAD")))
        reload.start()
        loaded = False
        while reload.is_alive():
            loaded = loaded or _loading(leader)
            time.sleep(0.01)
        assert loaded and reply == [b"OK"]  # +OK, after the old version's load
        time.sleep(1)  # the new version reloads now, behind
        stop.set()
        getter.join(30)
        result = stop_load(load)
        # Through the proxy, as directly: -LOADING while the old version loads, else the value.
        assert set(seen) == {b"$7\r\nvalue:1\r\n", LOADING}, set(seen)
        assert result["ops"] > 100
        assert all("loading" in s.lower() for s in result["samples"]), result["samples"]
        st = wait_for(proxy, lambda s: caught_up(s) or s["state"] != "mve", what="caught up")
        assert st["state"] == "mve", st["last_update"]
        assert unexpected(proxy) == []
        # Nothing met the new version loading (the reload waited for what was out there).
        assert "builtin:follower-refused-for-now" not in st["update"]["expected_by_rule"]
        assert differences(dump(leader), dump(follower)) == []
        for port, calls in ((leader, 2), (follower, 1)):  # POPULATE before the update; RELOAD
            assert redis.Redis(port=port).info("commandstats")["cmdstat_debug"]["calls"] == calls


def test_debug_sleep_and_other_debug_commands_during_an_update(tmp_path) -> None:
    config = update_config(tmp_path, REDIS7, REDIS7, update=UPDATE + "follower_timeout = 1")
    with running(config) as proxy:
        leader, follower = _in_mve(proxy)
        r = redis.Redis(port=proxy.port, socket_timeout=30)
        other = redis.Redis(port=proxy.port, socket_timeout=30)
        got: list = []
        sleeper = threading.Thread(
            target=lambda: got.append(r.execute_command("DEBUG", "SLEEP", "1.5")))
        started = time.monotonic()
        sleeper.start()
        time.sleep(0.2)
        assert other.set("during", "1")  # served once the old version wakes, as directly
        sleeper.join(30)
        assert got == [b"OK"] and time.monotonic() - started >= 1.5
        assert r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0") == b"OK"
        r.set("obj", "v", px=200)
        time.sleep(0.3)  # expired, but no active expiry takes it away on either version
        described = r.execute_command("DEBUG", "OBJECT", "key:1")
        assert b"encoding:" in described and b"serializedlength:" in described
        assert r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "1") == b"OK"
        st = wait_for(proxy, lambda s: caught_up(s) or s["state"] != "mve", what="caught up")
        assert st["state"] == "mve", st["last_update"]  # the follower's sleep was no hang
        assert unexpected(proxy) == []
        assert differences(dump(leader), dump(follower)) == []
        for port in (leader, follower):
            stats = redis.Redis(port=port).info("commandstats")["cmdstat_debug"]
            assert stats["calls"] >= 4, (port, stats)  # each version ran them


def _promote_while_loading(tmp_path, which: str) -> None:
    """The cutover waits for the loads with the clients served (a client's GET meanwhile is
    answered at once: ``-LOADING`` from the old version while it loads, the value while the new
    one loads), then holds them for its barrier as usual. ``barrier_timeout`` leaves room for
    slow loads on a busy machine."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=UPDATE + "barrier_timeout = 20")
    with running(config) as proxy:
        leader, follower = _in_mve(proxy)
        admin = _slow_loads(proxy.port)
        client = redis.Redis(port=proxy.port, socket_timeout=60)
        reload = threading.Thread(target=admin.execute_command, args=("DEBUG", "RELOAD"))
        reload.start()
        port = leader if which == "old" else follower
        deadline = time.monotonic() + 60
        while not _loading(port):
            assert time.monotonic() < deadline, f"the {which} version never loaded"
            time.sleep(0.005)
        proxy.call(proxy.service.promote)
        time.sleep(0.1)  # the cutover has begun
        asked = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
            sock.sendall(b"GET key:2\r\n")
            reply = recv_until(sock, b"\r\n")
            while reply.startswith(b"$") and reply.count(b"\r\n") < 2:
                reply += recv_until(sock, b"\r\n")
        assert time.monotonic() - asked < 1.0  # not held
        assert reply == (LOADING if which == "old" else b"$7\r\nvalue:2\r\n")
        assert _loading(port)  # all that while it loads
        reload.join(120)
        st = wait_for(proxy, ended, what="the cutover")
        assert st["last_update"]["outcome"] == "cutover", st["last_update"]
        assert port_of(st["leader"]["address"]) == follower
        assert client.get("key:1") == b"value:1" and client.dbsize() == KEYS
        assert unexpected(proxy) == []


def test_a_cutover_asked_for_while_the_old_version_loads(tmp_path) -> None:
    _promote_while_loading(tmp_path, "old")


def test_a_cutover_asked_for_while_the_new_version_loads(tmp_path) -> None:
    _promote_while_loading(tmp_path, "new")


def test_debug_reload_with_options_rolls_the_update_back_saying_why(tmp_path) -> None:
    """NOSAVE loads the dump file in the old version's directory, which the new version does
    not have: the two states can no longer be kept equal."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=UPDATE)
    with running(config) as proxy:
        leader, _ = _in_mve(proxy)
        redis.Redis(port=leader).save()  # the file NOSAVE loads
        r = redis.Redis(port=proxy.port, socket_timeout=60)
        assert r.execute_command("DEBUG", "RELOAD", "NOSAVE") == b"OK"
        st = wait_for(proxy, ended, what="the rollback")
        assert st["last_update"]["outcome"] == "rolled-back"
        assert "DEBUG RELOAD with options" in st["last_update"]["reason"]
        assert port_of(st["leader"]["address"]) == leader
        assert r.get("key:1") == b"value:1"  # the clients go on with the old version


def test_debug_reload_while_the_snapshot_is_written_waits_for_the_new_version(tmp_path) -> None:
    """The old version writes the sync point's snapshot slowly (``rdb-key-save-delay``) when a
    client sends DEBUG RELOAD: run then, its own save would replace the dump file before the
    proxy places it for the new version, which would start from a later state and get the
    writes after the sync point twice. It goes once the new version serves instead."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=UPDATE)
    with running(config) as proxy:
        leader = port_of(status(proxy)["leader"]["address"])
        direct = redis.Redis(port=leader, socket_timeout=60)
        direct.execute_command("DEBUG", "POPULATE", KEYS)
        direct.config_set("rdb-key-save-delay", 50)  # µs a key: about a second a snapshot
        r = redis.Redis(port=proxy.port, socket_timeout=60)
        stop, counted = threading.Event(), []

        def count() -> None:
            counter = redis.Redis(port=proxy.port, socket_timeout=60)
            # A steady stream of writes, paced: unpaced, a busy machine's slower sync left the
            # follower 100,000 writes behind, and the update was rolled back, as it should be.
            while not stop.is_set():
                counted.append(counter.incr("counter"))
                time.sleep(0.001)

        counting = threading.Thread(target=count)
        counting.start()
        proxy.call_async(proxy.service.update, "new")
        poll_until(lambda: direct.info("persistence")["rdb_bgsave_in_progress"], bool, 30,
                   "the snapshot")
        assert r.execute_command("DEBUG", "RELOAD") == b"OK"
        st = wait_for(proxy, lambda s: s["state"] != "syncing", what="MVE")
        stop.set()
        counting.join(30)
        assert st["state"] == "mve", st["last_update"]
        st = wait_for(proxy, lambda s: caught_up(s) or s["state"] != "mve", what="caught up")
        assert st["state"] == "mve", st["last_update"]
        assert unexpected(proxy) == []
        follower = port_of(st["follower"]["address"])
        assert differences(dump(leader), dump(follower)) == []
        assert r.get("counter") == str(counted[-1]).encode()
