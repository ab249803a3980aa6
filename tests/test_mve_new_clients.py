"""Clients that connect during an update, against real redis-server processes.

Such a client's plain requests go on the connections all plain clients share, so it gets a
connection of its own to the new version only when a request of its needs one, and before the
cutover. What an operator checks: those clients are served throughout, they go on with the new
version on the same connection after a cutover or a take-over, and only the clients that need
one hold a connection on the new version meanwhile.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.proxyrun import REDIS7, poll_until, running
from tests.servers import recv_until
from tests.test_mve_redis import caught_up, ended, port_of, unexpected, update_config, wait_for
from twinproxy.protocols.redis import encode_command

pytestmark = pytest.mark.slow

CLIENTS = 20


def ask(sock: socket.socket, *words: str) -> bytes:
    sock.sendall(encode_command(*words))
    return recv_until(sock, b"\r\n")


def info_field(sock: socket.socket, field: str) -> str:
    """A field of INFO SERVER, asked on ``sock``: which server the connection is on."""
    sock.sendall(encode_command("INFO", "server"))
    first, _, text = recv_until(sock, b"\r\n").partition(b"\r\n")
    size = int(first[1:])
    while len(text) < size + 2:
        text += sock.recv(65536)
    return dict(line.split(":", 1) for line in text.decode().splitlines()
                if ":" in line)[field]


def connected(port: int) -> int:
    return redis.Redis(port=port).info("clients")["connected_clients"]


def plain_clients(port: int) -> list[socket.socket]:
    """CLIENTS connections that write and read their own key (no session command: as
    redis-benchmark's, or a client library's without CLIENT SETINFO)."""
    socks = []
    for i in range(CLIENTS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert ask(sock, "SET", f"new:{i}", str(i)) == b"+OK\r\n"
        assert ask(sock, "GET", f"new:{i}") == f"${len(str(i))}\r\n{i}\r\n".encode()
        socks.append(sock)
    return socks


def test_clients_that_connect_during_mve_go_on_with_the_new_version_after_the_cutover(
        tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        new_port = port_of(st["follower"]["address"])
        before = connected(new_port)
        socks = plain_clients(proxy.port)
        # redis-py names its connection (CLIENT SETINFO, and SETNAME here): the name waits
        # for the connection the client opens on the new version when it needs one. (RESP2:
        # redis-py 8 asks RESP3 by default, a session the shared connection does not have.)
        # No retries: a connection closed under it would fail the test, not open again.
        named = redis.Redis(port=proxy.port, client_name="late", single_connection_client=True,
                            protocol=2, retry=Retry(NoBackoff(), 0))
        named.set("late", "1")
        # Their requests went to the new version on the shared connection: none holds one of
        # its own there (the count may move for a moment with the proxy's own probes).
        poll_until(lambda: connected(new_port), lambda n: n == before, 5,
                   "the new version's connections")
        assert redis.Redis(port=new_port).get(f"new:{CLIENTS - 1}") == str(CLIENTS - 1).encode()
        # A SELECT goes on the client's own connection there (as a HELLO or an AUTH): it gets
        # one.
        assert ask(socks[0], "SELECT", "0") == b"+OK\r\n"
        poll_until(lambda: connected(new_port), lambda n: n == before + 1, 5,
                   "the new version's connections")
        wait_for(proxy, caught_up, what="the follower to catch up")
        new_run_id = redis.Redis(port=new_port).info("server")["run_id"]
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, ended, what="the cutover")
        assert st["serving"] == "new" and st["last_update"]["outcome"] == "cutover"
        for i, sock in enumerate(socks):  # the same connections, now on the new version
            assert ask(sock, "INCR", f"new:{i}") == f":{i + 1}\r\n".encode()
            assert info_field(sock, "run_id") == new_run_id
            sock.close()
        assert named.client_getname() == "late" and named.get("late") == b"1"
        assert named.info("server")["run_id"] == new_run_id
        named.close()
        assert unexpected(proxy) == []


def test_clients_that_connect_during_mve_survive_a_take_over(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        new_port = port_of(st["follower"]["address"])
        socks = plain_clients(proxy.port)
        wait_for(proxy, caught_up, what="the follower to catch up")
        os.kill(st["leader"]["pid"], signal.SIGKILL)
        st = wait_for(proxy, ended, what="the take-over", timeout=30)
        assert st["serving"] == "new" and "failed" in st["last_update"]["reason"]
        new_run_id = redis.Redis(port=new_port).info("server")["run_id"]
        for i, sock in enumerate(socks):
            assert ask(sock, "GET", f"new:{i}") == f"${len(str(i))}\r\n{i}\r\n".encode()
            assert info_field(sock, "run_id") == new_run_id
            sock.close()
