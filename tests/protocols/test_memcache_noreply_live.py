"""Whether memcached answers a request, against what the codec expects, on a real memcached 1.6.

The relay and the MVE engine pair every reply with its request by the codec's count of replies
(``CODEC.describe(request).replies``): a request the codec expects an answer to and memcached
leaves silent shifts every later reply on that connection onto the wrong request (it closed the
client during an update, for ``incr k noreply``). The golden recordings hold chosen lines; here
hypothesis writes lines of the data commands with ``noreply`` and odd arguments anywhere, and
each line the request reader accepts is sent, followed by ``mn``, to a memcached: a reply came
before ``MN`` exactly when the codec expects one.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import servers
from twinproxy.protocols.memcache import CODEC
from twinproxy.protocols.messages import RemoteProtocolError

COMMANDS = ["get", "gets", "gat", "gats", "touch", "incr", "decr", "delete", "version",
            "verbosity", "set", "add", "replace", "append", "prepend", "cas"]
STORAGE = {"set", "add", "replace", "append", "prepend", "cas"}
TOKENS = st.sampled_from([b"k", b"n", b"0", b"1", b"5", b"60", b"-1", b"x", b"noreply",
                          b"18446744073709551616"])


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(COMMANDS)).encode()
    args = draw(st.lists(TOKENS, max_size=6))
    if name.decode() in STORAGE:
        # A key, numbers memcached reads (a size of 1), then a noreply or not: a storage line
        # whose numbers memcached cannot read loses the stream's framing, and the request
        # reader refuses it before anything is sent (the golden recordings show those).
        args = [b"k", draw(st.sampled_from([b"0", b"5"])), b"0", b"1"]
        if name == b"cas":
            args.append(draw(st.sampled_from([b"1", b"99"])))
        args += draw(st.lists(st.just(b"noreply"), max_size=1))
        return b" ".join([name, *args]) + b"\r\nv\r\n"
    return b" ".join([name, *args]) + b"\r\n"


@pytest.fixture(scope="module")
def memcached() -> Iterator[socket.socket]:
    with servers.memcached_server() as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"set n 0 0 1\r\n7\r\n")
        assert sock.recv(100) == b"STORED\r\n"
        yield sock


def answered(sock: socket.socket, data: bytes) -> bytes:
    """What memcached sends back to ``data`` before the ``MN`` of the ``mn`` sent after it."""
    sock.sendall(data + b"mn\r\n")
    out = b""
    while not out.endswith(b"MN\r\n"):
        chunk = sock.recv(1 << 16)
        assert chunk, out
        out += chunk
    return out[:-4]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=lines())
def test_the_codec_expects_a_reply_exactly_when_memcached_sends_one(
        memcached: socket.socket, line: bytes) -> None:
    try:
        requests = CODEC.request_reader().receive(line)
    except RemoteProtocolError:
        return  # refused before anything is sent: the proxy answers it itself
    assert len(requests) == 1, line
    expected = CODEC.describe(requests[0]).replies
    got = answered(memcached, line)
    assert (expected != 0) == (got != b""), (line, got, expected)


def test_incr_and_touch_with_a_last_noreply_are_silent(memcached: socket.socket) -> None:
    for line in (b"incr n noreply\r\n", b"decr n noreply\r\n", b"touch n noreply\r\n"):
        assert answered(memcached, line) == b""
        assert CODEC.describe(CODEC.request_reader().receive(line)[0]).replies == 0
    assert answered(memcached, b"delete noreply\r\n") == b"NOT_FOUND\r\n"  # the key "noreply"
