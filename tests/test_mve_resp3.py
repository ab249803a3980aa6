"""RESP3 clients across an update, against real redis-server processes.

redis-py 8 asks RESP3 (``HELLO 3``) on every connection. In SINGLE mode such a connection's
replies go unframed between its session commands, as a RESP2 connection's do; when they are
framed again, for an update's start or a SUBSCRIBE, the reader must know the connection speaks
RESP3. What an operator checks: an update starts with such clients connected, they get RESP3
replies throughout (a map for HGETALL, not the RESP2 array a RESP2 client gets), and after the
cutover they are served by the new version on the same connection. During the update they share
the connection plain clients share, which the proxy puts in each client's protocol; a client's
INFO does not count the proxy's HELLOs.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.proxyrun import REDIS7, running
from tests.servers import recv_until
from tests.test_mve_new_clients import info_field
from tests.test_mve_redis import caught_up, ended, port_of, unexpected, update_config, wait_for
from twinproxy.protocols.redis import encode_command

pytestmark = pytest.mark.slow

MAP = b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"


def ask(sock: socket.socket, until: bytes, *words: str) -> bytes:
    sock.sendall(encode_command(*words))
    return recv_until(sock, until)


def test_a_resp3_client_is_served_in_resp3_through_an_update(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        assert b"proto" in ask(sock, b"*0\r\n", "HELLO", "3")
        assert ask(sock, b"\r\n", "SET", "k", "1") == b"+OK\r\n"  # unframed from here
        assert ask(sock, b"\r\n", "RPUSH", "l", "a") == b":1\r\n"
        # Framed again: subscribed, a command still gets its ordinary reply in RESP3.
        assert ask(sock, b":1\r\n", "SUBSCRIBE", "ch").startswith(b">3\r\n")
        assert ask(sock, b"a\r\n", "LRANGE", "l", "0", "-1") == b"*1\r\n$1\r\na\r\n"
        assert ask(sock, b":0\r\n", "UNSUBSCRIBE", "ch").startswith(b">3\r\n")
        assert ask(sock, b"\r\n", "HSET", "h", "f", "v") == b":1\r\n"
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE", timeout=30)
        new_port = port_of(st["follower"]["address"])
        assert ask(sock, MAP, "HGETALL", "h") == MAP
        assert ask(sock, b"\r\n", "INCR", "k") == b":2\r\n"
        wait_for(proxy, caught_up, what="the follower to catch up")
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, ended, what="the cutover")
        assert st["last_update"]["outcome"] == "cutover"
        assert ask(sock, MAP, "HGETALL", "h") == MAP
        assert ask(sock, b"\r\n", "INCR", "k") == b":3\r\n"
        sock.sendall(encode_command("INFO", "server"))
        first = recv_until(sock, b"\r\n")
        assert first.startswith(b"="), first  # a verbatim string: RESP3's INFO
        sock.close()
        probe = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        assert info_field(probe, "tcp_port") == str(new_port)
        probe.close()
        assert unexpected(proxy) == []


def test_resp3_and_resp2_clients_share_the_update_each_in_its_protocol(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        resp3 = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        resp2 = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        assert b"proto" in ask(resp3, b"*0\r\n", "HELLO", "3")
        assert ask(resp2, b"\r\n", "HSET", "h", "f", "v") == b":1\r\n"
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE", timeout=30)
        late = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)  # (a new one)
        assert b"proto" in ask(late, b"*0\r\n", "HELLO", "3")
        for _ in range(3):  # (the first requests of each go alone: shared_after)
            assert ask(resp3, b"\r\n", "GET", "none") == b"_\r\n"
            assert ask(resp2, b"\r\n", "GET", "none") == b"$-1\r\n"
            assert ask(late, b"\r\n", "GET", "none") == b"_\r\n"
            assert ask(resp3, MAP, "HGETALL", "h") == MAP
            assert ask(resp2, b"v\r\n", "HGETALL", "h") == b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
            assert ask(late, MAP, "HGETALL", "h") == MAP
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        assert st["update"]["shared_clients"] == 3
        assert st["update"]["dialect_switches"] >= 4  # to RESP3 and back, on both versions
        resp3.sendall(encode_command("INFO", "commandstats"))
        text = recv_until(resp3, b"\r\n\r\n")
        # The two clients' own HELLOs, as directly; not the proxy's switches.
        assert re.findall(rb"cmdstat_hello:calls=(\d+)", text) == [b"2"]
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, ended, what="the cutover")
        assert st["last_update"]["outcome"] == "cutover"
        assert ask(resp3, b"\r\n", "GET", "none") == b"_\r\n"
        assert ask(resp2, b"\r\n", "GET", "none") == b"$-1\r\n"
        assert ask(late, MAP, "HGETALL", "h") == MAP
        for sock in (resp3, resp2, late):
            sock.close()
        assert unexpected(proxy) == []
