"""File descriptors, as an operator meets them: ``twinproxy serve`` raises its open-files limit
and says at start how many clients it allows; when descriptors run out while it runs (the limit
lowered with ``prlimit``, as a leak elsewhere would do), the clients already connected keep
being served, new ones are refused at once with the protocol's error (never left hanging), an
update that cannot open the follower's connections fails with the reason instead of any client,
the log says why in one line, and new clients are served again once descriptors are free.

Each test runs the real ``serve`` as a process, in front of real redis-servers, and changes its
limit from outside (``prlimit`` at start, :func:`resource.prlimit` while it runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tests.cli import PYTHON_M, serve_process, twinproxy
from tests.proxyrun import REDIS7, external, poll_until, write_config
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


# ---- the proxy's descriptors, seen from outside ------------------------------------------

def open_fds(pid: int) -> list[int]:
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def leave_free(pid: int, count: int) -> int:
    """Lower the process's soft open-files limit so that ``count`` more descriptors can be
    opened (a new descriptor takes the lowest free number, which must be below the limit); the
    new limit. The hard limit is left, so that the soft one can be raised again."""
    fds = set(open_fds(pid))
    free = [n for n in range(max(fds) + count + 1) if n not in fds][:count]
    limit = free[-1] + 1
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    return limit


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
        assert len(log_lines(proc, "refused a client: max number of clients reached")) == 1
        log = proc.log.read_text()
    assert "Traceback" not in log and "cannot open a socket" not in log, log


def test_out_of_descriptors_refuses_new_clients_and_serves_the_others(tmp_path) -> None:
    """The limit lowered while the proxy runs, to leave a few descriptors: the clients already
    connected keep being served, the new ones past what is left get Redis's "max number of
    clients reached" at once, the operator still gets ``status``, one log line says why, the
    proxy does not spin; once clients close, new ones are served again."""
    config = write_config(tmp_path / "r.toml", "redis", {"a": REDIS7})
    with serve_process(config) as proc:
        port = listen_port(config)
        with clients(port, 5) as existing:
            limit = leave_free(proc.pid, 6)  # three clients' worth
            replies = [first_reply(port) for _ in range(12)]
            served = [s for s, reply in replies if reply == b"+PONG\r\n"]
            refused = [reply for _, reply in replies if reply != b"+PONG\r\n"]
            assert 1 <= len(served) <= 3 and len(refused) >= 9, replies
            assert set(refused) == {MAX_CLIENTS}, refused
            for i, s in enumerate(existing):
                set_get(s, f"k{i}")
            operator = twinproxy("status", "-c", str(config))
            assert operator.returncode == 0, operator.stderr
            busy = cpu_seconds(proc.pid)
            time.sleep(2)
            assert cpu_seconds(proc.pid) - busy < 0.3, "the proxy spins"
            for s, _ in replies:
                s.close()
            # The refused clients' and the served ones' descriptors are free again.
            again = poll_until(lambda: first_reply(port), lambda r: r[1] == b"+PONG\r\n", 5,
                               "a new client served")
            set_get(again[0], "again")
            again[0].close()
            for i, s in enumerate(existing):
                set_get(s, f"k{i}")
        lines = log_lines(proc, "cannot open a socket")
        log = proc.log.read_text()
    assert len(lines) == 1, log
    assert f"Too many open files (open files limit {limit})" in lines[0], lines
    assert "ERROR" in lines[0] and "new clients are refused, or wait" in lines[0]
    assert "Traceback" not in log, log


def test_an_update_that_cannot_open_the_followers_connections_fails_not_the_clients(
        tmp_path, redis7) -> None:
    """20 clients, a follower they cannot all get a connection to: the update rolls back and
    says why; no client sees an error, and the update goes through once the limit is back."""
    versions = {"a": REDIS7, "b": external(redis7.address)}
    config = write_config(tmp_path / "r.toml", "redis", versions,
                          update='sync = "none"\nwarmup_seconds = 600\n'
                                 'warmup_requests = 1000000000')
    with serve_process(config) as proc:
        port = listen_port(config)
        before = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        with clients(port, 20) as existing:
            leave_free(proc.pid, 6)
            update = twinproxy("update", "--to", "b", "--wait", "-c", str(config), timeout=60)
            assert update.returncode != 0, update.stdout
            doc = status(config)
            assert doc["state"] == "single" and doc["leader"]["version"] == "a"
            last = doc["last_update"]
            assert last["outcome"] == "rolled-back", last
            assert "cannot connect to b: Too many open files" in json.dumps(last)
            for i, s in enumerate(existing):
                set_get(s, f"k{i}")
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, before)
            update = twinproxy("update", "--to", "b", "-c", str(config))
            assert update.returncode == 0, update.stderr
            poll_until(lambda: status(config), lambda d: d["state"] == "mve", 30, "the update",
                       interval=0.2)
            for i, s in enumerate(existing):
                set_get(s, f"k{i}")
            assert twinproxy("rollback", "-c", str(config)).returncode == 0
        log = proc.log.read_text()
    assert "Traceback" not in log, log
    assert len(log_lines(proc, "cannot open a socket")) == 1, log


def test_with_no_descriptor_left_at_all_accepting_pauses_and_resumes(tmp_path) -> None:
    """A soft limit below every descriptor the proxy holds, its reserve's too: a new client
    waits in the accept queue (as with HAProxy) while the others are served and the proxy does
    not spin on its listener; once the limit is back, the waiting client is served."""
    config = write_config(tmp_path / "r.toml", "redis", {"a": REDIS7})
    with serve_process(config) as proc:
        port = listen_port(config)
        with clients(port, 3) as existing:
            before = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (3, before[1]))
            waiting = connect(port)  # the kernel completes the handshake; the proxy waits
            waiting.sendall(b"PING\r\n")
            poll_until(lambda: log_lines(proc, "cannot open a socket"), bool, 5, "the log line")
            busy = cpu_seconds(proc.pid)
            time.sleep(2)
            assert cpu_seconds(proc.pid) - busy < 0.3, "the proxy spins"
            for i, s in enumerate(existing):
                set_get(s, f"k{i}")
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, before)
            assert recv_until(waiting, b"\r\n") == b"+PONG\r\n"
            set_get(waiting, "waited")
            waiting.close()
        log = proc.log.read_text()
    assert len(log_lines(proc, "cannot open a socket")) == 1, log
    assert "Traceback" not in log, log
