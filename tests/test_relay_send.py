"""Output.send with a list of buffers (a batch's large replies, not joined: Engine._flush): one
sendmsg, what the socket does not take queued after the part it took, in order, counted once."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from tests.protocols.test_memcache_count import started
from twinproxy.engine.large import Spooled
from twinproxy.protocols.messages import DEFAULT_LIMITS
from twinproxy.relay.connections import ClientConn
from twinproxy.relay.loop import Loop
from twinproxy.relay.output import MAX_BUFFERS
from twinproxy.spool import Reading


@pytest.fixture
def client() -> Iterator[tuple[Loop, ClientConn, socket.socket]]:
    """A loop, a client connection on it whose socket takes little at a time, and its peer."""
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    peer.setblocking(False)
    loop = Loop()
    conn = ClientConn(ours, started(DEFAULT_LIMITS), "peer")
    loop._register(conn)
    yield loop, conn, peer
    loop._ep.close()
    ours.close()
    peer.close()


def _drain(loop: Loop, conn: ClientConn, peer: socket.socket, size: int) -> bytes:
    """What the peer reads while the loop writes what waits, as it does when the socket is
    writable."""
    got = bytearray()
    while len(got) < size:
        with contextlib.suppress(BlockingIOError):
            got += peer.recv(1 << 20)
        loop._writable(conn)
    return bytes(got)


def test_a_list_of_buffers_arrives_whole_and_in_order(client) -> None:
    loop, conn, peer = client
    buffers = [bytes([65 + i]) * 100_000 for i in range(16)]
    whole = b"".join(buffers)
    loop.send(conn, buffers)
    assert loop.client_sent == len(whole)
    assert 0 < conn.out_size < len(whole)  # the socket took some: the rest waits
    assert conn.out_size == loop.client_output
    assert _drain(loop, conn, peer, len(whole)) == whole
    assert conn.out_size == 0 and not conn.out and loop.client_output == 0


def test_a_list_sent_behind_waiting_output_goes_after_it(client) -> None:
    loop, conn, peer = client
    first = b"1" * 300_000
    loop.send(conn, first)
    buffers = [b"", b"2" * 70_000, b"3" * 70_000]
    loop.send(conn, buffers)
    assert loop.client_sent == 440_000
    assert _drain(loop, conn, peer, 440_000) == first + b"".join(buffers)


def test_more_buffers_than_one_sendmsg_takes_still_arrive_in_order(client) -> None:
    loop, conn, peer = client
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    buffers = [b"%06d" % i for i in range(MAX_BUFFERS * 2 + 7)]
    whole = b"".join(buffers)
    loop.send(conn, buffers)
    assert _drain(loop, conn, peer, len(whole)) == whole


def test_pieces_written_together_stop_at_a_large_request_read_from_its_spool(client) -> None:
    """A large request waits in ``out`` as a reader of its spool (send_large): the buffers
    before it go together, it goes piece by piece in its place, then the buffers after it."""
    loop, conn, peer = client
    before = [b"a" * 200_000, b"b" * 50_000]
    spooled = b"c" * 700_000
    after = [b"d" * 60_000, b"e" * 90_000]
    loop.send(conn, before)
    conn.out.append(Reading(Spooled([spooled], None, b"")))  # as Output.send_large queues it
    conn.out_size += len(spooled)
    loop.send(conn, after)
    whole = b"".join(before) + spooled + b"".join(after)
    assert _drain(loop, conn, peer, len(whole)) == whole
    assert conn.out_size == 0 and not conn.out
