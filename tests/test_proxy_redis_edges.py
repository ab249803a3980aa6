"""Redis through twinproxy in SINGLE mode at the edges of the protocol, each case compared with a
real redis-server 7.0 spoken to directly.

A valid request followed by garbage in one read gets its reply, then redis-server's protocol
error, then the close (before, the proxy forwarded the valid request and waited for more bytes,
and the client hung); a request with more arguments than redis-server 6.2's limit of 1M is taken
as 7.0 takes it, with the proxy's memory bounded by the request's size.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests import servers
from tests.cli import serve_process
from tests.proxyrun import external, running, write_config
from twinproxy.protocols.redis import encode_command


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """``(direct, proxied)`` addresses: a redis-server 7.0, and the proxy in front of another."""
    tmp = tmp_path_factory.mktemp("redis-edges")
    with servers.redis_server("7") as direct, servers.redis_server("7") as behind:
        config = write_config(tmp / "r.toml", "redis", {"v7": external(behind.address)})
        with running(config) as proxy:
            yield ("127.0.0.1", direct.port), proxy.address


def talk(address, data: bytes, timeout: float = 1.0) -> tuple[bytes, bool]:
    """Send ``data``; what comes back until the peer closes or is quiet for ``timeout`` seconds,
    and whether it closed."""
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(data)
        s.settimeout(timeout)
        out = b""
        while True:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk


PING = encode_command("PING")
PIPELINE = b"".join(encode_command("SET", f"k{i}", "v") for i in range(80))  # over 1 KB
GARBAGE = [
    b"*x\r\n", b"*1\r\n$x\r\n", b"*1\r\nx\r\n", b"*2147483648\r\n", b"*1\r\n$-1\r\n",
    b"*-\r\n", b"\xff garbage\r\n", b"$3\r\n",
]


@pytest.mark.parametrize("before", [PING, PIPELINE, b"PING\r\n"], ids=["one", "pipeline", "inline"])
@pytest.mark.parametrize("garbage", GARBAGE, ids=[g.decode(errors="replace") for g in GARBAGE])
def test_a_valid_request_then_garbage_in_one_read_is_answered_as_redis_server_answers(
        pair, before, garbage) -> None:
    direct, proxied = pair
    want = talk(direct, before + garbage)
    assert want[0].endswith(b"\r\n") and b"-ERR" in want[0]
    assert talk(proxied, before + garbage) == want


def test_the_start_of_a_request_after_valid_ones_waits_for_its_end(pair) -> None:
    """What is only the start of a request is held, not refused: the rest comes later."""
    for address in pair:
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(PING + b"*2\r\n$4\r\nECHO\r\n$2\r\nh")
            assert servers.recv_until(s, b"+PONG\r\n") == b"+PONG\r\n"
            s.sendall(b"i\r\n")
            assert servers.recv_until(s, b"\r\n") == b"$2\r\nhi\r\n"


ARGS = 1_100_000  # over redis-server 6.2's limit of 1M arguments, within 7.0's (INT_MAX)


def rpush(key: bytes) -> bytes:
    head = b"*%d\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n" % (ARGS + 2, len(key), key)
    return head + b"$1\r\nx\r\n" * ARGS


def test_rpush_with_more_than_a_million_arguments_is_taken_as_redis_server_7_takes_it(
        pair) -> None:
    direct, proxied = pair
    request = rpush(b"big") + encode_command("LLEN", "big")
    want = b":%d\r\n:%d\r\n" % (ARGS, ARGS)
    for address in (direct, proxied):
        with socket.create_connection(address, timeout=60) as s:
            s.sendall(encode_command("DEL", "big") + request)
            assert servers.recv_until(s, want) == b":0\r\n" + want


def vm(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def test_a_request_of_a_million_arguments_costs_memory_bounded_by_its_size(tmp_path) -> None:
    """The proxy as its own process: its peak memory for three such requests in a row grows by a
    few times one request's size (measured: about 4 times, 32 MB for 7.7 MB), not with their
    number, and the request does not hold other clients for long."""
    request = rpush(b"big")
    with servers.redis_server("7") as behind:
        config = write_config(tmp_path / "r.toml", "redis", {"v7": external(behind.address)})
        with serve_process(config) as proc:
            address = ("127.0.0.1", int(config.read_text().split('listen = "127.0.0.1:')[1]
                                        .split('"')[0]))
            with socket.create_connection(address, timeout=30) as s:
                s.sendall(PING)
                assert servers.recv_until(s, b"\r\n") == b"+PONG\r\n"
            rested = vm(proc.pid, "VmHWM")
            for i in range(3):
                with socket.create_connection(address, timeout=60) as s:
                    started = time.monotonic()
                    s.sendall(request)
                    assert servers.recv_until(s, b"\r\n") == b":%d\r\n" % (ARGS * (i + 1))
                    assert time.monotonic() - started < 20
            grown = vm(proc.pid, "VmHWM") - rested
            assert grown < 8 * len(request), (grown, len(request))
