"""memcached through twinproxy in SINGLE mode, with pymemcache and raw sockets."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError, MemcacheServerError

from tests.proxyrun import MEMCACHED, poll_until, running, write_config
from tests.servers import recv_until


@pytest.fixture
def proxy(tmp_path):
    with running(write_config(tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED})) as p:
        yield p


def raw(proxy, data: bytes, expect_end: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(proxy.address, timeout=timeout) as s:
        s.sendall(data)
        return recv_until(s, expect_end)


def test_get_set_many_keys_and_big_values(proxy) -> None:
    client = Client(proxy.address)
    values = {f"k{i}": f"value-{i}".encode() * (i + 1) for i in range(100)}
    client.set_many(values)
    assert client.get_many(list(values)) == values
    big = b"x" * 900_000
    client.set("big", big)
    assert client.get("big") == big
    assert client.incr("n", 1) is None
    client.set("n", "41")
    assert client.incr("n", 1) == 42


def test_noreply_and_quiet_meta(proxy) -> None:
    out = raw(proxy, b"set a 0 0 1 noreply\r\nx\r\nmg a v q\r\nmg missing v q\r\nmn\r\n", b"MN\r\n")
    assert out == b"VA 1\r\nx\r\nMN\r\n"


def test_client_closing_after_quiet_requests_does_not_hang(proxy) -> None:
    with socket.create_connection(proxy.address, timeout=5) as s:
        s.sendall(b"mg missing v q\r\n")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""  # the proxy closes: nothing more is owed
    assert Client(proxy.address).version()


def test_binary_protocol_client_gets_an_error_and_is_closed(proxy) -> None:
    request = bytes([0x80, 0x0A]) + bytes(22)  # a binary "noop" header
    with socket.create_connection(proxy.address, timeout=5) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(100):
            reply += chunk
    assert reply[0] == 0x81  # a binary response, so a binary client can read it
    assert reply[6:8] == b"\x00\x83"  # status: not supported
    assert Client(proxy.address).version()


def test_malformed_request_is_answered_and_closed_others_unaffected(proxy) -> None:
    other = Client(proxy.address)
    other.set("kept", "yes")
    out = raw(proxy, b"set a 0 0 5\r\ntoolongdata\r\n", b"\r\n")
    assert out.startswith(b"CLIENT_ERROR")
    assert other.get("kept") == b"yes"


def test_memcached_killed_gives_server_error_then_recovery(tmp_path) -> None:
    """A client connected when memcached dies sees its connection closed (as memcached's death
    would close it: an error nobody asked for would answer its next request), then, reconnecting,
    SERVER_ERROR; a new client SERVER_ERROR for each request while it is down; all are served
    after the restart (back-off 5 s: room to see it down first)."""
    config = write_config(tmp_path / "mc.toml", "memcache",
                          {"v1": MEMCACHED + "\nrestart_backoff = 5"})
    with running(config) as proxy:
        connected = Client(proxy.address, timeout=10, connect_timeout=10)
        connected.set("a", "1")
        sock = socket.create_connection(proxy.address, timeout=10)
        sock.sendall(b"version\r\n")
        assert sock.recv(100).startswith(b"VERSION")
        backend = proxy.service.serving
        old_pid = backend.pid
        os.kill(old_pid, signal.SIGKILL)
        poll_until(lambda: backend.up, lambda up: not up, 10, "v1 to be seen down")
        assert sock.recv(200) == b""  # owed nothing: closed, not left hanging
        sock.close()
        errors = []
        for _ in range(2):  # pymemcache reports the closed connection, then reconnects
            try:
                connected.get("a")
            except (MemcacheError, OSError) as exc:
                errors.append(exc)
                if "unavailable" in str(exc):
                    break
        assert isinstance(errors[-1], MemcacheServerError), errors
        assert "twinproxy: v1 is unavailable, try again later" in str(errors[-1])
        unavailable = b"SERVER_ERROR twinproxy: v1 is unavailable, try again later\r\n"
        assert raw(proxy, b"get a\r\nversion\r\n", unavailable * 2) == unavailable * 2

        def served(client: Client) -> bool:
            try:
                return client.version().startswith(b"1.6")
            except (MemcacheError, OSError):
                return False

        poll_until(lambda: served(connected), bool, 60, "memcached to be back", interval=0.2)
        assert connected.get("a") is None  # a new memcached: empty
        assert backend.pid not in (None, old_pid) and backend.restarts == 1
        connected.close()


def _links_framed(proxy) -> list[bool]:
    return [client.link.replies is not None for client in proxy.service.relay.clients
            if client.link is not None]


def test_ordinary_requests_go_unframed_and_a_request_answered_by_the_proxy_still_in_place(
        proxy) -> None:
    """SINGLE mode's fast path for memcached: Debian's memcached answers the codec's sentinel,
    so replies go unframed (what makes the proxy cheap per request); a request the proxy
    answers itself after a pipeline of ordinary ones still gets its answer in its place, and
    quiet and noreply requests before it are settled as memcached settles them."""
    assert proxy.call(lambda: proxy.service.relay.backend.sentinel_ok)
    with socket.create_connection(proxy.address, timeout=5) as s:
        s.sendall(b"set a 0 0 1\r\n1\r\nget a\r\nmg a v\r\n")
        assert recv_until(s, b"VA 1\r\n1\r\n") == \
            b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\nVA 1\r\n1\r\n"
        assert proxy.call(_links_framed, proxy) == [False]
        s.sendall(b"set b 0 0 1 noreply\r\n2\r\nms c 1 q\r\n3\r\nget " + b"k" * 300
                  + b"\r\nget b c\r\n")
        assert recv_until(s, b"VALUE c 0 1\r\n3\r\nEND\r\n") == (
            b"CLIENT_ERROR bad command line format\r\n"
            b"VALUE b 0 1\r\n2\r\nVALUE c 0 1\r\n3\r\nEND\r\n")
        s.sendall(b"get a\r\n")
        assert recv_until(s, b"END\r\n") == b"VALUE a 0 1\r\n1\r\nEND\r\n"
        # Once nothing is owed, the connection is back on the unframed path.
        poll_until(lambda: proxy.call(_links_framed, proxy), lambda v: v == [False], 5,
                   "the connection unframed again")
