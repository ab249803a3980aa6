"""memcached through twinproxy in SINGLE mode, with pymemcache and raw sockets."""

from __future__ import annotations

import socket

import pytest
from pymemcache.client.base import Client

from tests.proxyrun import MEMCACHED, running, write_config


@pytest.fixture
def proxy(tmp_path):
    with running(write_config(tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED})) as p:
        yield p


def raw(proxy, data: bytes, expect_end: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(proxy.address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while not out.endswith(expect_end):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


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
