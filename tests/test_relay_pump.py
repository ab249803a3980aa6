"""SINGLE mode's reads sent on in one call to C (``relay/_pump.c``, memcached's ``forward`` in
``protocols/memcache/_scan.c``), on real non-blocking sockets: what the peer gets, what stays in
the buffer for Python when the peer does not take it all or the read must be framed, and the
codes for nothing to read and the end of the stream."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from select import EPOLLIN
from types import SimpleNamespace

import pytest

from tests.protocols.test_memcache_count import started
from twinproxy.protocols.compiled import IO_AGAIN, IO_HELD, IO_RAISED
from twinproxy.protocols.memcache import CODEC as CODEC_MEMCACHE
from twinproxy.protocols.memcache import requests as memcache_requests
from twinproxy.protocols.messages import DEFAULT_LIMITS
from twinproxy.protocols.redis import CODEC as CODEC_REDIS
from twinproxy.protocols.redis import names as redis_names
from twinproxy.relay import single
from twinproxy.relay.connections import ClientConn, ServerConn

pump = single.pump
pytestmark = pytest.mark.skipif(pump is None or memcache_requests.c_forward is None,
                                reason="the C parts are not built (setup.py found no compiler)")


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(writer, source, destination, reader): bytes written to ``writer`` arrive at ``source``;
    what is sent to ``destination`` arrives at ``reader``."""
    writer, source = socket.socketpair()
    destination, reader = socket.socketpair()
    for s in (source, destination, reader):
        s.setblocking(False)
    yield writer, source, destination, reader
    for s in (writer, source, destination, reader):
        s.close()


def test_a_read_is_sent_on_whole(pairs) -> None:
    writer, source, destination, reader = pairs
    buffer = bytearray(1024)
    assert pump(source.fileno(), destination.fileno(), buffer) == (IO_AGAIN, 0)
    writer.sendall(b"VALUE k 0 1\r\nx\r\nEND\r\n")
    assert pump(source.fileno(), destination.fileno(), buffer) == (21, 21)
    assert reader.recv(100) == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    writer.close()
    assert pump(source.fileno(), destination.fileno(), buffer) == (0, 0)


def test_what_the_peer_does_not_take_stays_in_the_buffer(pairs) -> None:
    writer, source, destination, _ = pairs
    destination.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buffer = bytearray(256 * 1024)
    data = bytes(range(256)) * 1024
    got = sent = 0
    while sent == got:  # until the destination's buffers are full
        writer.sendall(data[:32768])
        got, sent = pump(source.fileno(), destination.fileno(), buffer)
        assert 0 <= sent <= got
    assert bytes(buffer[:got]) == data[:got]  # the read, its unsent end included


def test_memcached_forward_sends_only_complete_ordinary_requests(pairs) -> None:
    writer, source, destination, reader = pairs
    buffer = bytearray(1024)
    client = started(DEFAULT_LIMITS)
    forward = client.forward
    whole = b"set k 0 0 5\r\nhello\r\nget k\r\n"
    writer.sendall(whole)
    assert forward(source.fileno(), destination.fileno(), buffer) == (len(whole), len(whole))
    assert reader.recv(100) == whole
    # Half a data block: held for the exact parser, nothing sent, the read in the buffer.
    writer.sendall(b"set k 0 0 5\r\nhel")
    assert forward(source.fileno(), destination.fileno(), buffer) == (16, IO_HELD)
    assert bytes(buffer[:16]) == b"set k 0 0 5\r\nhel"
    with pytest.raises(BlockingIOError):
        reader.recv(100)
    assert client.receive(bytes(buffer[:16])) == []  # the exact parser takes it from there
    # Once it holds part of a request, the reader leaves the reads to Python.
    assert forward(source.fileno(), destination.fileno(), buffer) is None
    assert [r.name for r in client.receive(b"lo\r\n")] == ["set"]


def test_memcached_forward_leaves_a_command_to_frame_in_the_buffer(pairs) -> None:
    writer, source, destination, reader = pairs
    buffer = bytearray(1024)
    client = started(DEFAULT_LIMITS)
    writer.sendall(b"get a\r\nwatch\r\n")
    assert client.forward(source.fileno(), destination.fileno(), buffer) == (14, IO_HELD)
    with pytest.raises(BlockingIOError):
        reader.recv(100)
    assert [r.name for r in client.receive(bytes(buffer[:14]))] == ["get", "watch"]


# Each state of a memcached reader in which its count() frames in Python, and so forward()
# reads nothing: a request begun, requests framed and not taken, an error met or raised, after
# quit, a data block being skipped, before the first read.
READER_NOT_PLAIN = [
    ("_chunks", [b"get"]),
    ("_ready", [object()]),
    ("_failure", ValueError("x")),
    ("_error", ValueError("x")),
    ("_quit", True),
    ("_skip", 5),
    ("_started", False),
]


@pytest.mark.parametrize(("slot", "value"), READER_NOT_PLAIN)
def test_memcached_forward_reads_nothing_while_the_reader_holds_something(pairs, slot,
                                                                          value) -> None:
    """In C as in the method, and in the batch: the read stays for Python, unread."""
    writer, source, destination, reader = pairs
    client = started(DEFAULT_LIMITS)
    setattr(client, slot, value)
    writer.sendall(b"get k\r\n")
    buffer = bytearray(1024)
    assert client.forward(source.fileno(), destination.fileno(), buffer) is None
    conn = ClientConn(source, client, "peer")
    conn.link = ServerConn(destination, conn, backend=None,  # type: ignore[arg-type]
                           replies=None)
    relay = _relay()
    assert single.serve(relay, {conn.fd: conn}, [(conn.fd, EPOLLIN)], 0, buffer) == \
        (0, None, None)
    assert source.recv(100) == b"get k\r\n"
    with pytest.raises(BlockingIOError):
        reader.recv(100)
    assert client._base == 4 and relay.client_received == 0  # (past "mn\r\n" only)


def test_a_batch_forwards_memcached_requests_through_the_readers_c_function(
        two_clients) -> None:
    """A memcached client's reader has its forward in C (``c_forward``), as Redis's does: the
    batch calls it without Python, with the method's results: complete ordinary requests held
    to the batch's end and sent, the reader's stream offset moved past them; a read to frame
    left at the buffer's start, its offset unmoved."""
    a_peer, a_sock, a_server, a_server_peer, b_peer, b_sock, b_server, b_server_peer = two_clients
    a, a_link = _plain_client(a_sock, a_server)
    b, b_link = _plain_client(b_sock, b_server)
    assert a.reader.c_forward is memcache_requests.c_forward_capsule is not None
    fds = {s.fd: s for s in (a, a_link, b, b_link)}
    whole = b"set k 0 0 5\r\nhello\r\nget k\r\n"
    a_peer.sendall(whole)
    b_peer.sendall(b"stats\r\n")
    buffer = bytearray(256 * 1024)
    ready = [(a.fd, EPOLLIN), (b.fd, EPOLLIN)]
    assert single.serve(_relay(), fds, ready, 0, buffer, []) == (1, 7, IO_HELD)
    assert a_server_peer.recv(100) == whole
    assert bytes(buffer[:7]) == b"stats\r\n"
    with pytest.raises(BlockingIOError):
        b_server_peer.recv(100)
    assert (a.reader._base, b.reader._base) == (4 + len(whole), 4)


def test_redis_forward_sends_reads_of_names_count_has_seen(pairs) -> None:
    writer, source, destination, reader = pairs
    buffer = bytearray(1024)
    client = CODEC_REDIS.request_reader(DEFAULT_LIMITS)
    get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert client.count(get) == len(get)  # (GET is now known ordinary, and no script)
    writer.sendall(get * 3)
    assert client.forward(source.fileno(), destination.fileno(), buffer) == (3 * len(get),) * 2
    assert reader.recv(1000) == get * 3
    # A name it must look at (a session change), a script, half a request: left to Python.
    for read in (b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n",
                 b"*3\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n0\r\n",
                 get + get[:7], b"PING\r\n"):
        writer.sendall(read)
        assert client.forward(source.fileno(), destination.fileno(), buffer) == \
            (len(read), IO_HELD)
        assert bytes(buffer[:len(read)]) == read
        with pytest.raises(BlockingIOError):
            reader.recv(100)


def test_redis_forward_sends_whole_transactions_and_leaves_open_ones_to_python(pairs) -> None:
    """redis-py's default pipeline is one write of MULTI, its commands, EXEC: the connection is
    as it was after it, so the read goes on unframed. A transaction the read leaves open (the
    client sends EXEC later), nested, or with a request that must be looked at inside, goes to
    Python's framing, as before."""
    writer, source, destination, reader = pairs
    buffer = bytearray(1024)
    client = CODEC_REDIS.request_reader(DEFAULT_LIMITS)
    get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    multi, exec_, discard = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nexec\r\n", \
        b"*1\r\n$7\r\nDISCARD\r\n"
    assert client.count(get) == len(get)  # (GET is now known ordinary, and no script)
    for read in (multi + get * 2 + exec_, get + multi + get + exec_ + multi + discard,
                 multi + exec_):
        writer.sendall(read)
        assert client.forward(source.fileno(), destination.fileno(), buffer) == (len(read),) * 2
        assert reader.recv(1000) == read
    select = b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n"
    for read in (multi + get, exec_, multi + multi + get + exec_, multi + select + exec_,
                 get + discard):
        writer.sendall(read)
        assert client.forward(source.fileno(), destination.fileno(), buffer) == \
            (len(read), IO_HELD)
        with pytest.raises(BlockingIOError):
            reader.recv(100)


def test_a_batch_is_served_until_a_socket_needs_python() -> None:
    """``serve`` forwards a client's ordinary requests and a server's unframed replies itself,
    counting their bytes, and stops at the first ready socket it must leave to Python (here a
    server connection whose replies are framed), with that socket's index."""
    client_peer, client_sock = socket.socketpair()
    server_sock, server_peer = socket.socketpair()
    framed_sock, framed_peer = socket.socketpair()
    socks = (client_peer, client_sock, server_sock, server_peer, framed_sock, framed_peer)
    for s in socks:
        s.setblocking(False)
    try:
        client = ClientConn(client_sock, started(DEFAULT_LIMITS), "peer")
        link = ServerConn(server_sock, client, backend=None, replies=None)  # type: ignore[arg-type]
        client.link = link
        framed = ServerConn(framed_sock, client, backend=None,  # type: ignore[arg-type]
                            replies=CODEC_MEMCACHE.reply_reader(DEFAULT_LIMITS))
        relay = SimpleNamespace(carry=None, watch=None, now=5.0, client_received=0,
                                client_sent=0, server_received=[0, 0], server_sent=[0, 0])
        fds = {s.fd: s for s in (client, link, framed)}
        client_peer.sendall(b"get k\r\n")
        server_peer.sendall(b"END\r\n")
        framed_peer.sendall(b"END\r\n")
        ready = [(client.fd, EPOLLIN), (link.fd, EPOLLIN), (framed.fd, EPOLLIN)]
        assert single.serve(relay, fds, ready, 0, bytearray(1024)) == (2, None, None)
        assert server_peer.recv(100) == b"get k\r\n"
        assert client_peer.recv(100) == b"END\r\n"
        assert (relay.client_received, relay.server_sent, relay.server_received,
                relay.client_sent) == (7, [7, 0], [5, 0], 5)
        assert client.forwarded and client.last_active == 5.0
        assert framed_sock.recv(100) == b"END\r\n"  # (the framed read is Python's)
        # A server's end of stream: read here, finished in Python.
        server_peer.close()
        assert single.serve(relay, fds, ready, 1, bytearray(1024)) == (1, 0, 0)
    finally:
        for s in socks:
            s.close()


def test_a_batch_hands_back_what_a_reader_raised() -> None:
    """A bug in a reader's forward ends the batch at that socket with the exception (the relay
    then closes that connection, as for any error serving it), not the whole loop."""

    class Broken:
        value_left = 0

        def forward(self, src: int, dst: int, buffer: bytearray) -> None:
            raise ValueError("a bug")

    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        client = ClientConn(a, Broken(), "peer")  # type: ignore[arg-type]
        client.link = ServerConn(c, client, backend=None, replies=None)  # type: ignore[arg-type]
        relay = SimpleNamespace(carry=None, watch=None, now=0.0, client_received=0,
                                client_sent=0, server_received=[0, 0], server_sent=[0, 0])
        at, code, exc = single.serve(relay, {client.fd: client}, [(client.fd, EPOLLIN)], 0,
                                     bytearray(64))
        assert (at, code) == (0, IO_RAISED) and isinstance(exc, ValueError)
    finally:
        for s in (a, b, c, d):
            s.close()


# Each state the Python path (SingleMode._client_readable, _server_readable) does not forward in
# one call to C: (which socket is ready, what is changed from the plain state).
NOT_PLAIN = [
    ("client", lambda relay, client, link: setattr(client, "link", None)),
    ("client", lambda relay, client, link: setattr(
        link, "replies", CODEC_MEMCACHE.reply_reader(DEFAULT_LIMITS))),
    ("client", lambda relay, client, link: link.out.append(b"x")),
    ("client", lambda relay, client, link: setattr(link, "closed", True)),
    ("client", lambda relay, client, link: setattr(relay, "carry", object())),
    ("client", lambda relay, client, link: setattr(relay, "watch", object())),
    ("client", lambda relay, client, link: client.after_value.append(print)),
    ("client", lambda relay, client, link: setattr(  # (a large value passing through)
        client, "reader", SimpleNamespace(value_left=5))),
    ("client", lambda relay, client, link: setattr(client, "closed", True)),
    ("server", lambda relay, client, link: setattr(
        link, "replies", CODEC_MEMCACHE.reply_reader(DEFAULT_LIMITS))),
    ("server", lambda relay, client, link: setattr(link, "sentinel", b"x")),
    ("server", lambda relay, client, link: setattr(link, "engine", True)),
    ("server", lambda relay, client, link: setattr(link, "client", None)),
    ("server", lambda relay, client, link: client.out.append(b"x")),
    ("server", lambda relay, client, link: setattr(client, "closed", True)),
    ("server", lambda relay, client, link: setattr(link, "closed", True)),
]


@pytest.mark.parametrize(("ready_side", "change"), NOT_PLAIN)
def test_a_batch_leaves_every_state_the_python_path_frames_to_python(ready_side, change) -> None:
    """``serve`` makes the same plain-state checks as the Python path: a socket in any other
    state goes to Python untouched, its bytes still unread (and none counted)."""
    client_peer, client_sock = socket.socketpair()
    server_sock, server_peer = socket.socketpair()
    socks = (client_peer, client_sock, server_sock, server_peer)
    for s in socks:
        s.setblocking(False)
    try:
        client = ClientConn(client_sock, started(DEFAULT_LIMITS), "peer")
        link = ServerConn(server_sock, client, backend=None, replies=None)  # type: ignore[arg-type]
        client.link = link
        relay = SimpleNamespace(carry=None, watch=None, now=5.0, client_received=0,
                                client_sent=0, server_received=[0, 0], server_sent=[0, 0])
        change(relay, client, link)
        side, peer = (client, client_peer) if ready_side == "client" else (link, server_peer)
        peer.sendall(b"get k\r\n" if ready_side == "client" else b"END\r\n")
        assert single.serve(relay, {side.fd: side}, [(side.fd, EPOLLIN)], 0,
                            bytearray(64)) == (0, None, None)
        assert side.sock.recv(100)  # (still there for Python)
        assert (relay.client_received, relay.client_sent) == (0, 0)
    finally:
        for s in socks:
            s.close()


def _plain_client(peer_sock: socket.socket, server_sock: socket.socket
                  ) -> tuple[ClientConn, ServerConn]:
    client = ClientConn(peer_sock, started(DEFAULT_LIMITS), "peer")
    link = ServerConn(server_sock, client, backend=None, replies=None)  # type: ignore[arg-type]
    client.link = link
    return client, link


def _relay() -> SimpleNamespace:
    return SimpleNamespace(carry=None, watch=None, now=5.0, client_received=0, client_sent=0,
                           server_received=[0, 0], server_sent=[0, 0])


@pytest.fixture
def two_clients() -> Iterator[list[socket.socket]]:
    """Two clients and their server connections on socket pairs: (client peer, client socket,
    server socket, server peer) for each."""
    socks = [s for _ in range(4) for s in socket.socketpair()]
    for s in socks:
        s.setblocking(False)
    yield socks
    for s in socks:
        s.close()


def test_a_batch_holds_clients_requests_to_its_end_and_sends_them_in_order(two_clients) -> None:
    """With ``shorts``, each client's requests go to its server when the batch ends, in the
    order they were read, counted as forwarded; before then the server has nothing."""
    a_peer, a_sock, a_server, a_server_peer, b_peer, b_sock, b_server, b_server_peer = two_clients
    a, a_link = _plain_client(a_sock, a_server)
    b, b_link = _plain_client(b_sock, b_server)
    relay = _relay()
    fds = {s.fd: s for s in (a, a_link, b, b_link)}
    a_peer.sendall(b"get a\r\n")
    b_peer.sendall(b"set b 0 0 1\r\nx\r\n")
    shorts: list = []
    ready = [(a.fd, EPOLLIN), (b.fd, EPOLLIN)]
    assert single.serve(relay, fds, ready, 0, bytearray(256 * 1024), shorts) is None
    assert a_server_peer.recv(100) == b"get a\r\n"
    assert b_server_peer.recv(100) == b"set b 0 0 1\r\nx\r\n"
    assert shorts == []
    assert (relay.client_received, relay.server_sent) == (23, [23, 0])
    assert a.forwarded and b.forwarded and a.last_active == 5.0


def test_a_read_python_must_finish_after_held_requests_is_at_the_buffers_start(
        two_clients) -> None:
    """A read handed back to Python (here one to frame: ``stats``) after a held request: the
    held request is sent first, and the read is at the start of the buffer, as Python reads it."""
    a_peer, a_sock, a_server, a_server_peer, b_peer, b_sock, b_server, b_server_peer = two_clients
    a, a_link = _plain_client(a_sock, a_server)
    b, b_link = _plain_client(b_sock, b_server)
    fds = {s.fd: s for s in (a, a_link, b, b_link)}
    a_peer.sendall(b"get a\r\n")
    b_peer.sendall(b"stats\r\n")
    buffer = bytearray(256 * 1024)
    shorts: list = []
    ready = [(a.fd, EPOLLIN), (b.fd, EPOLLIN)]
    assert single.serve(_relay(), fds, ready, 0, buffer, shorts) == (1, 7, IO_HELD)
    assert a_server_peer.recv(100) == b"get a\r\n"
    assert bytes(buffer[:7]) == b"stats\r\n"
    with pytest.raises(BlockingIOError):
        b_server_peer.recv(100)


def test_a_held_request_its_server_did_not_take_whole_comes_back_in_shorts(two_clients) -> None:
    """A server connection whose socket is full takes part of a held request or none: the
    rest comes back with the link, for its queue."""
    a_peer, a_sock, a_server, _, *_ = two_clients
    a, a_link = _plain_client(a_sock, a_server)
    with contextlib.suppress(BlockingIOError):
        while True:
            a_server.send(b"x" * 65536)  # (its peer reads nothing: the socket fills)
    a_peer.sendall(b"get a\r\n")
    shorts: list = []
    relay = _relay()
    assert single.serve(relay, {a.fd: a, a_link.fd: a_link}, [(a.fd, EPOLLIN)], 0,
                        bytearray(256 * 1024), shorts) is None
    assert shorts == [(a_link, b"get a\r\n")]
    assert relay.server_sent == [7, 0]  # (as pump counts a short send: the caller's send again)


def test_a_batchs_replies_go_to_their_clients_in_one_call(two_clients) -> None:
    """``deliver`` (an update's replies at the end of a batch, DeliverAll): each client gets
    its bytes, counted in ``client_sent``; a client with output already waiting, or closed, is
    handed back untouched for Output.send, one that does not take its replies whole with the part
    it took, and a client no longer known is left out."""
    a_peer, a_sock, b_peer, b_sock, c_peer, c_sock, d_peer, d_sock = two_clients
    a, b, c, d = (ClientConn(s, started(DEFAULT_LIMITS), "peer")
                  for s in (a_sock, b_sock, c_sock, d_sock))
    b.out.append(b"earlier")
    c.closed = True
    d_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = b"x" * (4 << 20)
    relay = _relay()
    left = single.deliver(relay, {1: a, 2: b, 3: c, 4: d},
                          {1: b"STORED\r\n", 2: b"END\r\n", 3: b"END\r\n", 4: big, 5: b"END\r\n"})
    assert a_peer.recv(100) == b"STORED\r\n"
    assert left[:2] == [(b, b"END\r\n", 0), (c, b"END\r\n", 0)]
    [(client, data, took)] = left[2:]
    assert client is d and data is big and 0 < took < len(big)
    assert relay.client_sent == 8 + took
    got = b""
    with contextlib.suppress(BlockingIOError):
        while len(got) < took + 1:
            got += d_peer.recv(1 << 20)
    assert got == big[:took]
    for peer in (b_peer, c_peer):
        with pytest.raises(BlockingIOError):
            peer.recv(100)


def test_deliver_hands_back_a_failed_send_and_leaves_what_it_cannot_send_itself(
        two_clients) -> None:
    """``deliver``'s other cases: a client whose peer has gone (the send fails: handed back
    with nothing taken, for Output.send to meet the error and close it), empty replies (nothing
    to send, nothing handed back), and what is not a plain client connection or not bytes
    (handed back untouched, as Output.send takes anything)."""
    a_peer, a_sock, b_peer, b_sock, c_peer, c_sock, d_peer, d_sock = two_clients
    a, b, c = (ClientConn(s, started(DEFAULT_LIMITS), "peer") for s in (a_sock, b_sock, c_sock))
    a_peer.close()  # (the send fails: EPIPE)
    other = SimpleNamespace(out=[], closed=False, fd=d_sock.fileno())
    relay = _relay()
    left = single.deliver(relay, {1: a, 2: b, 3: c, 4: other},
                          {1: b"END\r\n", 2: b"", 3: bytearray(b"END\r\n"), 4: b"END\r\n"})
    assert left == [(a, b"END\r\n", 0), (c, bytearray(b"END\r\n"), 0), (other, b"END\r\n", 0)]
    assert relay.client_sent == 0
    for peer in (b_peer, c_peer, d_peer):
        with pytest.raises(BlockingIOError):
            peer.recv(100)


def _redis_client(peer_sock: socket.socket, server_sock: socket.socket
                  ) -> tuple[ClientConn, ServerConn]:
    client = ClientConn(peer_sock, CODEC_REDIS.request_reader(DEFAULT_LIMITS), "peer")
    link = ServerConn(server_sock, client, backend=None, replies=None)  # type: ignore[arg-type]
    client.link = link
    return client, link


GET = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
SET = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"


def test_a_batch_forwards_redis_requests_through_the_readers_c_function(two_clients) -> None:
    """A Redis client's reader has its forward in C (``c_forward``): the batch calls it without
    Python, with the same results as the method: reads of known ordinary names held to the
    batch's end and sent in order, counted, the reader's stream offset moved past them."""
    a_peer, a_sock, a_server, a_server_peer, b_peer, b_sock, b_server, b_server_peer = two_clients
    a, a_link = _redis_client(a_sock, a_server)
    b, b_link = _redis_client(b_sock, b_server)
    assert a.reader.c_forward is not None
    assert a.reader.count(GET + SET) == len(GET + SET)  # (GET and SET now known)
    a_peer.sendall(SET + GET * 15)
    b_peer.sendall(GET)
    relay = _relay()
    shorts: list = []
    ready = [(a.fd, EPOLLIN), (b.fd, EPOLLIN)]
    fds = {s.fd: s for s in (a, a_link, b, b_link)}
    assert single.serve(relay, fds, ready, 0, bytearray(256 * 1024), shorts) is None
    assert a_server_peer.recv(1000) == SET + GET * 15
    assert b_server_peer.recv(1000) == GET
    assert shorts == []
    sent = len(SET) + 16 * len(GET)
    assert (relay.client_received, relay.server_sent) == (sent, [sent, 0])
    assert a.reader._offset == len(GET + SET) + len(SET) + 15 * len(GET)
    assert b.reader._offset == len(GET)
    assert a.forwarded and b.forwarded and b.last_active == 5.0


def test_a_batch_leaves_redis_reads_to_frame_to_python(two_clients) -> None:
    """What the Redis reader's C function does not send: a reader holding half a request goes
    to Python unread; a read of a name to look at (a session change) is read and handed back,
    at the buffer's start, after the held requests went."""
    a_peer, a_sock, a_server, a_server_peer, b_peer, b_sock, b_server, b_server_peer = two_clients
    a, a_link = _redis_client(a_sock, a_server)
    b, b_link = _redis_client(b_sock, b_server)
    assert a.reader.count(GET) == len(GET)
    fds = {s.fd: s for s in (a, a_link, b, b_link)}
    select = b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n"
    a_peer.sendall(GET)
    b_peer.sendall(select)
    buffer = bytearray(256 * 1024)
    ready = [(a.fd, EPOLLIN), (b.fd, EPOLLIN)]
    assert single.serve(_relay(), fds, ready, 0, buffer, []) == (1, len(select), IO_HELD)
    assert a_server_peer.recv(100) == GET
    assert bytes(buffer[:len(select)]) == select
    assert b.reader._offset == 0  # (Python frames it: the offset is the framing's)
    with pytest.raises(BlockingIOError):
        b_server_peer.recv(100)
    # Half a request held by the reader: nothing read.
    assert a.reader.receive(GET[:7]) == []
    a_peer.sendall(GET[7:])
    assert single.serve(_relay(), fds, [(a.fd, EPOLLIN)], 0, buffer, []) == (0, None, None)
    assert a.sock.recv(100) == GET[7:]


def test_the_redis_c_forward_asks_the_sets_of_names_every_time(pairs) -> None:
    """The C function keeps the names it found lately, but asks ``count``'s sets each time:
    a name no longer in them is held for Python."""
    writer, source, destination, reader = pairs
    client = CODEC_REDIS.request_reader(DEFAULT_LIMITS)
    buffer = bytearray(1024)
    assert client.count(GET) == len(GET)
    writer.sendall(GET)
    assert client.forward(source.fileno(), destination.fileno(), buffer) == (len(GET),) * 2
    assert reader.recv(100) == GET
    redis_names.SEEN_NOT_HOLDING.discard(b"GET")
    try:
        writer.sendall(GET)
        assert client.forward(source.fileno(), destination.fileno(), buffer) == \
            (len(GET), IO_HELD)
    finally:
        redis_names.SEEN_NOT_HOLDING.add(b"GET")


def test_a_batch_reads_the_sockets_attributes_as_their_classes_say_now(two_clients) -> None:
    """``serve`` reads the sockets' slots at their offsets, taken from the classes; a class
    changed since (here ``closed`` made a property of ClientConn) has them taken again, so the
    batch sees what Python sees."""
    client_peer, client_sock, server_sock, server_peer = two_clients[:4]
    client, link = _plain_client(client_sock, server_sock)
    client_peer.sendall(b"get k\r\n")
    ClientConn.closed = property(lambda self: True)  # type: ignore[assignment]
    try:
        assert client.closed
        assert single.serve(_relay(), {client.fd: client}, [(client.fd, EPOLLIN)], 0,
                            bytearray(64)) == (0, None, None)
    finally:
        del ClientConn.closed
    assert not client.closed
    assert single.serve(_relay(), {client.fd: client, link.fd: link},
                        [(client.fd, EPOLLIN)], 0, bytearray(64)) is None
    assert server_peer.recv(100) == b"get k\r\n"
