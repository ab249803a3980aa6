"""File descriptors, as an operator meets them: ``twinproxy serve`` raises its open-files limit
and says at start how many clients it allows.

Each test runs the real ``serve`` as a process, in front of real redis-servers, and changes its
limit from outside (``prlimit`` at start).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tests.cli import PYTHON_M, serve_process, twinproxy
from tests.proxyrun import REDIS7, poll_until, write_config
from tests.servers import recv_until

MAX_CLIENTS = b"-ERR max number of clients reached\r\n"


# ---- a client, as raw RESP over a socket --------------------------------------------------

def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def ask(s: socket.socket, *args: str, reply_end: bytes = b"\r\n") -> bytes:
    """One request, and its reply up to ``reply_end``."""
    parts = [a.encode() for a in args]
    s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
    return recv_until(s, reply_end)


def set_get(s: socket.socket, key: str) -> None:
    """The client is served: its write is acknowledged and read back."""
    value = f"{key}-{time.monotonic_ns()}".encode()
    assert ask(s, "SET", key, value.decode()) == b"+OK\r\n"
    expected = b"$%d\r\n%s\r\n" % (len(value), value)
    assert ask(s, "GET", key, reply_end=expected) == expected


def first_reply(port: int) -> tuple[socket.socket, bytes]:
    """A new client's answer to PING: ``+PONG`` (served) or the error the proxy refuses it with;
    b"" if the proxy closed it without a word. Never waits longer than the socket's timeout."""
    s = connect(port)
    try:
        return s, ask(s, "PING")
    except ConnectionResetError:
        return s, b""


# ---- what the proxy says -------------------------------------------------------------------

def log_lines(proc, text: str) -> list[str]:
    return [line for line in proc.log.read_text().splitlines() if text in line]


def status(config: Path) -> dict:
    r = twinproxy("status", "--json", "-c", str(config))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@contextlib.contextmanager
def clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` clients connected through the proxy, each served once; closed at the end."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            socks.append(connect(port))
            set_get(socks[-1], f"k{i}")
        yield socks
    finally:
        for s in socks:
            s.close()


def listen_port(config: Path) -> int:
    return int(re.search(r'listen = "127\.0\.0\.1:(\d+)"', config.read_text()).group(1))


# ---- the tests -------------------------------------------------------------------------------

def test_serve_raises_the_limit_and_caps_clients_at_what_an_update_needs(tmp_path) -> None:
    """Started under ``ulimit -n 256`` (hard 400): the soft limit is raised to 400 and the log
    says what that allows; the clients past it are refused with Redis's own error, and an
    update with every allowed client connected opens all their connections."""
    config = write_config(tmp_path / "r.toml", "redis", {"a": REDIS7, "b": REDIS7},
                          update='warmup_seconds = 600\nwarmup_requests = 1000000000')
    limited = ("prlimit", "--nofile=256:400", "--", *PYTHON_M)
    with serve_process(config, program=limited) as proc:
        assert "Max open files            400                  400" in \
            Path(f"/proc/{proc.pid}/limits").read_text()
        [line] = log_lines(proc, "open files:")
        found = re.search(r"WARNING open files: limit 400 \(raised from 256\) allows "
                          r"max_connections (\d+) \(3 per client during an update, (\d+) kept .*"
                          r"not the 10000 configured", line)
        assert found, line
        allowed, kept = int(found.group(1)), int(found.group(2))
        assert allowed == (400 - kept) // 3 and allowed > 10, line
        port = listen_port(config)
        with clients(port, allowed) as served:
            refused = [first_reply(port) for _ in range(5)]
            for s, reply in refused:
                s.close()
                assert reply == MAX_CLIENTS
            update = twinproxy("update", "--to", "b", "-c", str(config))
            assert update.returncode == 0, update.stderr
            doc = poll_until(lambda: status(config), lambda d: d["state"] == "mve", 30,
                             "the update", interval=0.2)
            for i, s in enumerate(served):
                set_get(s, f"k{i}")
            rollback = twinproxy("rollback", "-c", str(config))
            assert rollback.returncode == 0, rollback.stderr
            for i, s in enumerate(served):
                set_get(s, f"k{i}")
        assert doc["follower"]["version"] == "b"
        log = proc.log.read_text()
    assert "Traceback" not in log, log
