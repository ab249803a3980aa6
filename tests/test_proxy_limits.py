"""What a client sees at the proxy's limits: max_connections, idle_timeout, connect_timeout.

Real redis-server behind the proxy, real sockets and redis-py in front of it. The expectations are
those of a load balancer's user (HAProxy, twemproxy): a connection over the limit is refused
cleanly, with the error redis-server itself gives past its ``maxclients``, and the others go on;
an idle client is closed, an active one or one blocked in a request is not; a server that accepts
no connection in time gives the protocol's error, never a hang.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator

import redis

from tests import servers
from tests.proxyrun import REDIS6, external, poll_until, running, write_config

UNAVAILABLE = b"-ERR twinproxy: v7 is unavailable, try again later\r\n"


def read_line(sock: socket.socket) -> bytes:
    """One reply line, or what came before the connection closed."""
    return servers.recv_until(sock, b"\r\n")


def test_a_connection_over_the_limit_gets_an_error_and_is_closed(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6},
                          proxy="max_connections = 3")
    with running(config) as proxy:
        kept = [redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)
                for _ in range(3)]
        for i, r in enumerate(kept):
            assert r.set(f"k{i}", i)
        with socket.create_connection(proxy.address, timeout=10) as extra:
            # What redis-server sends past its maxclients, unasked, and then it closes.
            assert read_line(extra) == b"-ERR max number of clients reached\r\n"
            assert extra.recv(100) == b""
        refused = redis.Redis(port=proxy.port, socket_timeout=10)
        try:
            refused.ping()
            raise AssertionError("a fourth client was served")
        except redis.RedisError as exc:
            assert "max number of clients reached" in str(exc)
        finally:
            refused.close()
        # The three are unaffected.
        assert [r.get(f"k{i}") for i, r in enumerate(kept)] == [b"0", b"1", b"2"]
        # Once one leaves, a newcomer is served.
        kept.pop().close()
        newcomer = redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)

        def ping() -> bool:
            try:
                return newcomer.ping()
            except redis.RedisError:
                newcomer.connection.disconnect()
                return False

        poll_until(ping, bool, 10, "a free slot")
        for r in [*kept, newcomer]:
            r.close()


def test_an_idle_client_is_closed_after_idle_timeout_an_active_one_is_not(tmp_path) -> None:
    idle_timeout = 1.5
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6},
                          proxy=f"idle_timeout = {idle_timeout}")
    with running(config) as proxy:
        idle = socket.create_connection(proxy.address, timeout=30)
        blocked = socket.create_connection(proxy.address, timeout=30)
        active = redis.Redis(port=proxy.port, socket_timeout=10, single_connection_client=True)
        try:
            idle.sendall(b"PING\r\n")
            assert read_line(idle) == b"+PONG\r\n"
            quiet_since = time.monotonic()
            blocked.sendall(b"BLPOP jobs 0\r\n")  # waits for a reply: not idle
            closed = threading.Event()

            def watch() -> None:
                with contextlib.suppress(OSError):
                    if idle.recv(100) == b"":
                        closed.set()

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            # Active: a request every 0.2 s, for longer than idle_timeout, always answered.
            while not closed.is_set():
                assert active.ping()
                assert time.monotonic() - quiet_since < 30, "the idle client was never closed"
                time.sleep(0.2)
            # A little less than idle_timeout: the proxy's clock started before ours did.
            assert time.monotonic() - quiet_since >= idle_timeout - 0.5
            for _ in range(int(idle_timeout / 0.2) + 5):  # more than idle_timeout more
                assert active.ping()
                time.sleep(0.2)
            # The client blocked in BLPOP all that time is still there, and gets its reply.
            assert active.rpush("jobs", "j1") == 1
            blocked.settimeout(10)
            reply = servers.recv_until(blocked, b"j1\r\n")
            assert reply == b"*2\r\n$4\r\njobs\r\n$2\r\nj1\r\n"
            watcher.join(5)
        finally:
            idle.close()
            blocked.close()
            active.close()


@contextlib.contextmanager
def backlog_filled(port: int) -> Iterator[None]:
    """Connect to ``port`` until connections no longer complete: the listener's accept queue
    is full (its process does not accept), so the kernel drops new SYNs and connects hang."""
    socks: list[socket.socket] = []
    try:
        for _ in range(20):
            s = socket.socket()
            socks.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            _, writable, _ = select.select([], [s], [], 1.0)
            if not writable:
                break
        else:
            raise AssertionError("the accept queue never filled")
        yield
    finally:
        for s in socks:
            s.close()


def test_a_server_that_accepts_no_connection_in_time_gives_the_error(tmp_path) -> None:
    """The server is stopped (SIGSTOP) with its accept queue full: connecting to it neither
    succeeds nor fails. After connect_timeout the client gets -ERR, then is served again once the
    server accepts again."""
    with servers.redis_server("7", "--tcp-backlog", "1") as server:
        config = write_config(tmp_path / "r.toml", "redis", {"v7": external(server.address)},
                              proxy="connect_timeout = 1.0")
        with running(config) as proxy:
            assert redis.Redis(port=proxy.port, socket_timeout=10).ping()
            server.kill(signal.SIGSTOP)
            try:
                with backlog_filled(server.port), socket.create_connection(
                        proxy.address, timeout=30) as s:
                    s.sendall(b"PING\r\n")
                    assert read_line(s) == UNAVAILABLE
                    # Marked down: a further request is answered at once, with no new attempt.
                    s.sendall(b"GET x\r\n")
                    assert read_line(s) == UNAVAILABLE
                    server.kill(signal.SIGCONT)

                    def ping() -> bytes:
                        s.sendall(b"PING\r\n")
                        return read_line(s)

                    assert poll_until(ping, lambda r: r != UNAVAILABLE, 30,
                                      "the server to be back", interval=0.2) == b"+PONG\r\n"
            finally:
                server.kill(signal.SIGCONT)
