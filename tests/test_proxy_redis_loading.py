"""A server that answers ``-LOADING`` (issue 10): while redis-server loads its dataset (here
``DEBUG RELOAD``, slowed by ``key-load-delay``, with ``loading-process-events-interval-bytes``
small so that it serves others meanwhile), a client through twinproxy in SINGLE mode gets the
same replies, byte for byte, as a client connected directly in the same moment: ``-LOADING``
for what the server refuses, an answer for what it serves while loading (ECHO, SELECT, CLIENT
SETNAME, SUBSCRIBE, MULTI ... EXEC's abort). The proxy's own sentinel (an ECHO, allowed while
loading) adds or takes away nothing, and the connections work as usual once loading is over."""

from __future__ import annotations

import socket
import threading
import time

import redis

from tests.proxyrun import REDIS7, running, write_config
from tests.servers import recv_until
from tests.test_mve_redis import port_of, status, unexpected, update_config, wait_for

KEYS = 20_000

# Requests on a connection opened before loading began, and on one opened while it goes on;
# each ends with an ECHO so that the reader knows where the replies end.
EXISTING = [b"GET key:1", b"PING", b"ECHO hi", b"MULTI", b"GET key:1", b"EXEC", b"BLPOP l 1",
            b"SET x 1", b"ECHO end1"]
FRESH = [b"CLIENT SETNAME n", b"SELECT 1", b"GET key:1", b"MULTI", b"SET x 1", b"DISCARD",
         b"SUBSCRIBE ch", b"UNSUBSCRIBE ch", b"PING", b"ECHO end2"]


def _exchange(sock: socket.socket, requests: list[bytes], end: bytes) -> bytes:
    sock.sendall(b"".join(r + b"\r\n" for r in requests))
    return recv_until(sock, end)


def _loading(port: int) -> bool:
    info = redis.Redis(port=port, socket_timeout=10).info("persistence")
    return bool(info["loading"])




def _slow_reload(port: int) -> threading.Thread:
    """``DEBUG RELOAD`` of :data:`KEYS` keys on the server at ``port``, slowed to seconds, in a
    thread; returns once the server says it is loading."""
    admin = redis.Redis(port=port, socket_timeout=120)
    admin.execute_command("DEBUG", "POPULATE", KEYS)
    admin.config_set("loading-process-events-interval-bytes", 1024)
    admin.config_set("key-load-delay", 50)  # µs a key: seconds for the whole dataset
    reload = threading.Thread(target=admin.execute_command, args=("DEBUG", "RELOAD"))
    reload.start()
    deadline = time.monotonic() + 10
    while not _loading(port):
        assert time.monotonic() < deadline, "the server never started loading"
        time.sleep(0.01)
    return reload


def test_clients_see_loading_as_they_would_directly(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"v": REDIS7})
    with running(config) as proxy:
        server = port_of(status(proxy)["leader"]["address"])
        existing = {port: socket.create_connection(("127.0.0.1", port), timeout=30)
                    for port in (server, proxy.port)}
        for sock in existing.values():
            assert _exchange(sock, [b"PING"], b"\r\n") == b"+PONG\r\n"
        reload = _slow_reload(server)
        try:
            seen = {}
            for port, sock in existing.items():  # directly, then through the proxy
                with socket.create_connection(("127.0.0.1", port), timeout=30) as fresh:
                    seen[port] = (_exchange(sock, EXISTING, b"end1\r\n"),
                                  _exchange(fresh, FRESH, b"end2\r\n"))
            assert _loading(server), "loading ended too soon for the comparison to mean anything"
        finally:
            reload.join(120)
        assert b"-LOADING" in seen[server][0] and b"-EXECABORT" in seen[server][0]
        assert seen[proxy.port] == seen[server]
        for sock in existing.values():  # loaded: the same connections are served as usual
            assert _exchange(sock, [b"GET key:1"], b"\r\n") == b"$7\r\nvalue:1\r\n"
            sock.close()
        assert redis.Redis(port=proxy.port).get("key:2") == b"value:2"


def test_an_update_asked_for_while_the_old_version_loads_waits_for_it(tmp_path) -> None:
    config = update_config(tmp_path, REDIS7, REDIS7,
                           update='warmup_seconds = 600\nwarmup_requests = 0\n'
                                  'on_divergence = "log"\nbarrier_timeout = 30')
    with running(config) as proxy:
        server = port_of(status(proxy)["leader"]["address"])
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        reload = _slow_reload(server)
        try:
            proxy.call_async(proxy.service.update, "new")
            assert _exchange(client, [b"GET key:1"], b"\r\n").startswith(b"-LOADING")
            assert _loading(server) and status(proxy)["state"] in ("single", "syncing")
        finally:
            reload.join(120)
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE", timeout=60)
        assert _exchange(client, [b"GET key:1", b"SET x 1"], b"+OK\r\n") == \
            b"$7\r\nvalue:1\r\n+OK\r\n"
        client.close()
        assert redis.Redis(port=proxy.port).dbsize() == KEYS + 1
        assert unexpected(proxy) == []
