"""The operator is never locked out of ``twinproxy serve``'s control API: not by a flood of idle
connections (on the unix socket, or on a TCP address before any token is checked), not by
clients that trickle their requests, not by a body it cannot parse. Each test runs the real
``serve`` and the real ``twinproxy`` commands, as an operator would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.cli import serve_process, twinproxy
from tests.proxyrun import REDIS7, write_config
from tests.servers import free_port
from twinproxy import httpclient
from twinproxy.control import DEFAULT_LIMITS

TOKEN = "lockout-token"
FLOOD = 1000


def served_config(tmp_path: Path, tcp: bool) -> tuple[Path, list[str]]:
    """Two Redis 7.0 versions, no state sync, a warm-up that never ends by itself; and the
    arguments that point a command at its control API."""
    control = f"127.0.0.1:{free_port()}" if tcp else str(tmp_path / "t.sock")
    path = write_config(tmp_path / "t.toml", "redis", {"a": REDIS7, "b": REDIS7},
                        proxy=f'control_token = "{TOKEN}"' if tcp else "",
                        update='sync = "none"\nwarmup_seconds = 600\n'
                               'warmup_requests = 1000000000')
    text = "\n".join(f'control = "{control}"' if line.startswith("control = ") else line
                     for line in path.read_text().splitlines())
    path.write_text(text + "\n")
    args = ["--control", control] + (["--token", TOKEN] if tcp else [])
    return path, args


def connect(control: str, blocking: bool = True) -> socket.socket:
    if "/" in control:
        s = socket.socket(socket.AF_UNIX)
        target: str | tuple[str, int] = control
    else:
        host, port = control.rsplit(":", 1)
        s = socket.socket()
        target = (host, int(port))
    s.settimeout(10 if blocking else 0)
    with contextlib.suppress(BlockingIOError):
        s.connect(target)
    return s


@contextlib.contextmanager
def idle_connections(control: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections to the control API that never send a byte (made as fast as the
    kernel takes them, without waiting for the proxy to accept them)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(connect(control, blocking=False))
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_proxy(s: socket.socket) -> bool:
    s.settimeout(0)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def timed(*args: str) -> tuple[float, object]:
    started = time.monotonic()
    result = twinproxy(*args, timeout=60)
    return time.monotonic() - started, result


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp-before-token"])
def test_a_thousand_idle_connections_do_not_hold_off_status_or_rollback(tmp_path, tcp) -> None:
    """Before: `status` failed for 30 s (the idle connections queued it behind them, 64 at a
    time for 10 s each). Now the idle ones are closed, oldest first, to make room."""
    path, control = served_config(tmp_path, tcp)
    with serve_process(path) as proc:
        update = twinproxy("update", "--to", "b", *control)
        assert update.returncode == 0, update.stderr
        baseline, _ = timed("status", *control)  # the command's own start-up, for scale
        with idle_connections(control[1], FLOOD) as idle:
            seconds, status = timed("status", *control)
            assert status.returncode == 0, status.stderr
            assert "update to b" in status.stdout
            assert seconds < baseline + 3, (seconds, baseline)
            seconds, rollback = timed("rollback", *control)
            assert rollback.returncode == 0, rollback.stderr
            assert "rolled-back" in rollback.stdout
            assert seconds < baseline + 5, (seconds, baseline)
            # The oldest idle connections were closed; at most the limit stayed open.
            still_open = [s for s in idle if not closed_by_proxy(s)]
            assert len(still_open) <= DEFAULT_LIMITS.max_connections
            assert closed_by_proxy(idle[0])
        log = proc.log.read_text()
    # One warning for the whole flood, not a line per closed connection.
    assert log.count("closed the one that waited longest") == 1, log
    assert "Traceback" not in log


def test_requests_that_trickle_in_are_cut_off_at_the_request_timeout(tmp_path) -> None:
    """Slowloris: a byte every 0.3 s never completes a request; each such connection gets 408
    once the request timeout has passed since it connected, however many bytes it sent, and
    the operator is served meanwhile."""
    path, control = served_config(tmp_path, tcp=False)
    limit = DEFAULT_LIMITS.request_timeout
    with serve_process(path):
        slow = [connect(control[1]) for _ in range(5)]
        started = time.monotonic()
        stop = threading.Event()

        def trickle() -> None:
            for byte in b"POST /rollback HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" \
                        + b"x" * 100:
                if stop.wait(0.3):
                    return
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.send(bytes([byte]))

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            status = twinproxy("status", *control, timeout=30)
            assert status.returncode == 0, status.stderr
            assert time.monotonic() - started < 5
            for s in slow:
                s.settimeout(limit + 5)
                reply = s.recv(1000)
                took = time.monotonic() - started
                assert reply.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout", reply
                assert limit - 0.5 < took < limit + 2, took
        finally:
            stop.set()
            thread.join()
            for s in slow:
                s.close()
        # Nothing of theirs ran.
        status = twinproxy("status", "--json", *control)
        assert '"last_update": null' in status.stdout


def test_a_body_nested_too_deeply_is_400_with_one_log_line(tmp_path) -> None:
    """20,000 nested arrays: before, a 500 and a traceback in the log."""
    path, control = served_config(tmp_path, tcp=False)
    body = b'{"to": ' + b"[" * 20000 + b"]" * 20000 + b"}"
    with serve_process(path) as proc:
        with connect(control[1]) as s:
            s.sendall(b"POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.endswith(b"}\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 Bad Request"), reply[:200]
        assert b"nested too deeply" in reply
        status = twinproxy("status", *control)
        assert status.returncode == 0 and "update" not in status.stdout, status.stdout
        log = proc.log.read_text()
    lines = [line for line in log.splitlines() if "POST /update" in line]
    assert len(lines) == 1 and ": 400 " in lines[0], log
    assert "Traceback" not in log and "ERROR" not in log, log


def full_backlog(path: str) -> tuple[socket.socket, list[socket.socket]]:
    """A unix listener at ``path`` that accepts nothing, and the connections that fill its
    backlog (a fault injected on purpose, not the proxy)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    queued: list[socket.socket] = []
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return listener, queued
        queued.append(s)


def test_the_client_waits_while_the_sockets_backlog_is_full(tmp_path) -> None:
    """A unix socket whose listen backlog is full refuses a non-blocking connect at once with
    EAGAIN, as it is right after a burst of idle connections to the control API. Before, the
    client (what ``twinproxy status`` and ``rollback`` use) took that socket for connected and
    failed on its first read: ``status`` failed five times in six while a client kept opening
    idle connections. Now it waits for room, as a blocking client does."""
    path = str(tmp_path / "busy.sock")
    listener, queued = full_backlog(path)

    def accept_late() -> None:
        time.sleep(0.3)
        for _ in queued:  # in the order they came: the client's connection is after them
            listener.accept()[0].close()
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 17\r\nConnection: close\r\n\r\n"
                         b'{"state": "mve"}\n')

    server = threading.Thread(target=accept_late, daemon=True)
    server.start()
    started = time.monotonic()
    try:
        reply = trio.run(lambda: httpclient.request(path, "GET", "/status", timeout=10))
    finally:
        server.join(10)
        for s in queued:
            s.close()
        listener.close()
    assert reply.status == 200 and reply.json() == {"state": "mve"}
    assert time.monotonic() - started >= 0.25  # it waited for room


def test_a_backlog_that_stays_full_fails_at_the_deadline_saying_so(tmp_path) -> None:
    """The wait for room is bounded by the request's timeout, and says what happened."""
    path = str(tmp_path / "stuck.sock")
    listener, queued = full_backlog(path)
    started = time.monotonic()
    try:
        with pytest.raises(httpclient.Unreachable, match="backlog stayed full"):
            trio.run(lambda: httpclient.request(path, "GET", "/status", timeout=0.5))
    finally:
        for s in queued:
            s.close()
        listener.close()
    assert 0.4 < time.monotonic() - started < 3
