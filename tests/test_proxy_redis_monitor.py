"""MONITOR through twinproxy (issue 10): in SINGLE mode and during an update, a client in
MONITOR sees the commands another client sends, in the order it sent them, as it would
directly; the other client is served as usual, and the update stays in MVE with no unexpected
divergence (a MONITOR connection is its own session: its stream comes from the leader alone).

What MONITOR cannot show as directly: every command arrives from the proxy's address, as behind
any proxy, and while a client blocks in the leader during an update the proxy's own PINGs after
writes on its keys show in the stream (README, "Known limits")."""

from __future__ import annotations

import socket
import threading

import pytest
import redis

from tests.proxyrun import REDIS7, running
from tests.servers import recv_until
from tests.test_mve_redis import status, unexpected, update_config, wait_for

LOGGED = 'warmup_seconds = 600\nwarmup_requests = 0\non_divergence = "log"'


def _watched(port: int, send) -> list[str]:
    """The commands a MONITOR client on ``port`` sees while ``send`` runs, up to the ``SET
    stop`` that ``send`` ends with (redis-py's own HELLO on connecting is left out). MONITOR
    has answered +OK when ``monitor()`` returns: nothing sent after it is missed."""
    seen: list[str] = []
    with redis.Redis(port=port, socket_timeout=10).monitor() as monitor:
        def read() -> None:
            for entry in monitor.listen():
                seen.append(entry["command"])
                if entry["command"] == "SET stop 1":
                    return
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        send()
        reader.join(10)
        assert not reader.is_alive(), seen
    return [c for c in seen if not c.startswith("HELLO")]


def _traffic(port: int) -> list[str]:
    client = redis.Redis(port=port, socket_timeout=10)
    sent = []
    for i in range(20):
        client.set(f"k{i}", i)
        assert client.get(f"k{i}") == str(i).encode()
        client.lpush("list", i)
        sent += [f"SET k{i} {i}", f"GET k{i}", f"LPUSH list {i}"]
    # A transaction after plain requests, from a client that sends nothing else first (no
    # HELLO): SINGLE mode switches to framing this connection's replies there, with a request
    # of its own on it, which MONITOR must not show.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"SET plain 1\r\n")
        assert recv_until(raw, b"\r\n") == b"+OK\r\n"
        raw.sendall(b"MULTI\r\nINCR counter\r\nINCR counter\r\nEXEC\r\n")
        assert recv_until(raw, b"*2\r\n:1\r\n:2\r\n").endswith(b"*2\r\n:1\r\n:2\r\n")
    sent += ["SET plain 1", "MULTI", "INCR counter", "INCR counter", "EXEC"]
    client.set("stop", 1)
    return [*sent, "SET stop 1"]


@pytest.mark.parametrize("mode", ["single", "mve"])
def test_monitor_sees_another_clients_commands_in_order(tmp_path, mode: str) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        if mode == "mve":
            proxy.call_async(proxy.service.update, "new")
            wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        sent: list[str] = []
        seen = _watched(proxy.port, lambda: sent.extend(_traffic(proxy.port)))
        assert seen == sent
        # The MONITOR client left; others go on, and the update did not notice.
        assert redis.Redis(port=proxy.port).get("k7") == b"7"
        st = status(proxy)
        assert st["state"] == mode, st
        if mode == "mve":
            assert unexpected(proxy) == [], unexpected(proxy)
