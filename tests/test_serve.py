"""``twinproxy serve`` as a process: it serves, stops cleanly, and leaves no process behind."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.cli import serve_process, twinproxy
from tests.proxyrun import MEMCACHED, REDIS6, poll_until, write_config
from tests.servers import recv_until
from twinproxy import keeper
from twinproxy.backends import descendants
from twinproxy.config import load_config


def managed_pids(log: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \S+: pid (\d+)", log.read_text())]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "processes left behind"


FAKE_REDIS = Path(__file__).with_name("fake_redis_server.py")


def fake_redis(*args: str) -> str:
    """A managed version running tests/fake_redis_server.py (it answers PING and nothing else)."""
    return "command = " + json.dumps([sys.executable, str(FAKE_REDIS), "{port}", *args])


def with_marker(marker: str, keepers: bool = False) -> list[int]:
    """Live processes whose command line holds ``marker`` (unique to one test); without the
    keepers (:mod:`twinproxy.keeper`, whose command line holds their server's) unless
    ``keepers``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline and alive(int(entry)) \
                and (keepers or keeper.__file__ not in cmdline):
            found.append(int(entry))
    return found


@contextlib.contextmanager
def reaped(marker: str) -> Iterator[None]:
    """Whatever the test asserts, no process carrying ``marker`` survives it."""
    try:
        yield
    finally:
        for pid in with_marker(marker, keepers=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def server_port(log: Path) -> int:
    found = re.search(r"started \S+: pid \d+ on 127\.0\.0\.1:(\d+)", log.read_text())
    assert found, log.read_text()
    return int(found.group(1))


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(100)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_on_signal_and_leaves_nothing(tmp_path, sig) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6})
    port = load_config(config).proxy.listen[1]
    with serve_process(config) as proc:
        assert ping(port) == b"+PONG\r\n"
        servers = managed_pids(proc.log)
        assert servers and all(alive(p) for p in servers)
        below = [d for p in servers for d in descendants(p)]
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        wait_gone(servers + below)
    log = proc.log.read_text()
    assert "stopping" in log and "stopped" in log
    # A stop twinproxy ordered is not the server failing. (The open-files line is a warning
    # wherever the hard limit allows fewer clients than configured: the machine's, not the stop's.)
    warnings = [line for line in log.splitlines()
                if "WARNING" in line and "open files:" not in line]
    assert "is down" not in log and not warnings, log
    assert not Path(load_config(config).proxy.control).exists()


def test_drains_a_waiting_client_within_the_bound(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6},
                          proxy="shutdown_timeout = 1.0")
    port = load_config(config).proxy.listen[1]
    with serve_process(config) as proc:
        waiting = socket.create_connection(("127.0.0.1", port), timeout=10)
        waiting.sendall(b"BLPOP never 0\r\n")
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert 0.9 < time.monotonic() - started < 8
        assert waiting.recv(100) == b""  # closed after the bound, not left hanging
        wait_gone(managed_pids(proc.log))


def test_a_start_version_that_fails_exits_1_and_leaves_nothing(tmp_path) -> None:
    """The command leaves a child behind (a background sleep) as it fails: it goes too."""
    # GNU sleep adds up its arguments: the second one makes this test's sleep unique.
    marker = f"sleep 30 0.{secrets.randbelow(10**9):09d}"
    config = write_config(tmp_path / "r.toml", "redis",
                          {"v6": f'command = ["/bin/sh", "-c", "{marker} & exit 3", "{{port}}"]'
                                 "\nready_timeout = 5"})
    with reaped(marker):
        result = twinproxy("serve", str(config))
        assert result.returncode == 1
        assert "exited with status 3 before it was ready" in result.stderr
        assert "Traceback" not in result.stderr
        assert with_marker(marker) == []


def test_an_error_after_the_server_is_up_exits_1_and_stops_it(tmp_path) -> None:
    """The control address is taken by another socket: found only after the start version is
    up, so that server must be stopped on the way out."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6})
        config.write_text(re.sub(r'control = "[^"]*"', f'control = "127.0.0.1:{port}"',
                                 config.read_text()))
        result = twinproxy("serve", str(config))
    servers = [int(pid) for pid in re.findall(r"started \S+: pid (\d+)", result.stderr)]
    try:
        assert servers, result.stderr  # the error did come after the server was up
        assert result.returncode == 1
        assert f"cannot listen on control address 127.0.0.1:{port}" in result.stderr
        assert "Traceback" not in result.stderr
        wait_gone(servers)
    finally:
        for pid in servers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_server_that_ignores_sigterm_is_killed_after_stop_timeout(tmp_path) -> None:
    marker = f"twinproxy-test-{secrets.token_hex(8)}"
    version = fake_redis("--ignore-sigterm", "--marker", marker) + "\nstop_timeout = 1.5"
    config = write_config(tmp_path / "r.toml", "redis", {"v6": version})
    port = load_config(config).proxy.listen[1]
    with reaped(marker), serve_process(config) as proc:
        assert ping(port) == b"+PONG\r\n"
        servers = managed_pids(proc.log)
        assert servers == with_marker(marker)
        os.kill(servers[0], signal.SIGTERM)  # it does ignore SIGTERM
        time.sleep(0.5)
        assert alive(servers[0])
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started >= 1.5  # it was given its grace period
        wait_gone(servers)
        assert with_marker(marker, keepers=True) == []
    assert f"v6 (pid {servers[0]}) ignored SIGTERM for 1.5s: killing it" in proc.log.read_text()


def test_graceful_stop_refuses_new_clients_and_answers_in_flight_requests(tmp_path) -> None:
    """After SIGTERM the listener is closed, while a request already sent still gets its
    reply (here a BLPOP, answered by a push made directly on the server during the drain)."""
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6},
                          proxy="shutdown_timeout = 60")
    port = load_config(config).proxy.listen[1]
    with serve_process(config) as proc:
        direct = redis.Redis(port=server_port(proc.log), socket_timeout=10)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as waiting:
            waiting.sendall(b"BLPOP jobs 0\r\n")
            poll_until(direct.client_list, lambda c: any(x["cmd"] == "blpop" for x in c), 10,
                       "the BLPOP to reach the server")
            proc.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                except ConnectionRefusedError:
                    return True
                return False

            poll_until(refused, bool, 15, "new connections to be refused")
            assert proc.poll() is None  # still draining: a reply is owed
            direct.rpush("jobs", "last")
            reply = recv_until(waiting, b"last\r\n")
            assert reply == b"*2\r\n$4\r\njobs\r\n$4\r\nlast\r\n"
            assert waiting.recv(100) == b""  # then closed
        # Well before shutdown_timeout: nothing else was owed.
        assert proc.wait(30) == 0
        wait_gone(managed_pids(proc.log))


def test_a_busy_listen_address_exits_1_with_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6})
        config.write_text(re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"',
                                 config.read_text()))
        result = twinproxy("serve", str(config))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "started" not in result.stderr  # the address is bound before any server starts


def test_servers_die_with_a_killed_twinproxy(tmp_path) -> None:
    """Even SIGKILL, which no cleanup code sees, takes the managed servers with it."""
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6})
    with serve_process(config) as proc:
        time.sleep(12)  # longer than trio keeps idle worker threads: they must not matter
        servers = managed_pids(proc.log)
        assert all(alive(p) for p in servers)
        proc.kill()
        proc.wait()
        wait_gone(servers)


def uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[2])


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_a_server_that_changes_user_dies_with_a_killed_twinproxy(tmp_path) -> None:
    """memcached -u nobody, as configs/memcached.toml runs it: changing user clears the
    parent-death signal, and before the keeper it outlived a SIGKILLed twinproxy for good,
    holding its port."""
    config = write_config(tmp_path / "m.toml", "memcache", {"v1": MEMCACHED})
    with serve_process(config) as proc:
        servers = managed_pids(proc.log)
        port = server_port(proc.log)
        everything = descendants(proc.pid)
        assert servers and all(uid(p) == pwd.getpwnam("nobody").pw_uid for p in servers)
        proc.kill()
        proc.wait()
        started = time.monotonic()
        wait_gone(everything, timeout=5)
    assert time.monotonic() - started < 5
    with socket.socket() as s:  # its port is free again
        s.bind(("127.0.0.1", port))
    # The server's log says why it stopped.
    logs = [p.read_text() for p in (tmp_path / "m-tmp").glob("twinproxy-v1-*/server.log")]
    assert any("twinproxy is gone" in text for text in logs), logs


def test_what_a_server_daemonized_dies_with_a_killed_twinproxy(tmp_path) -> None:
    """A process the server left as a daemon (double fork, setsid, another user when root)
    is no longer below the server, nor in its group, nor given a parent-death signal: it
    still dies with twinproxy."""
    marker = f"twinproxy-test-{secrets.token_hex(8)}"
    version = fake_redis("--daemon-child", "--marker", marker)
    config = write_config(tmp_path / "r.toml", "redis", {"v6": version})
    with reaped(marker), serve_process(config) as proc:
        servers = managed_pids(proc.log)
        daemons = poll_until(lambda: [p for p in with_marker(marker) if p not in servers],
                             bool, 10, "the daemon")
        assert all(os.getpgid(p) != os.getpgid(servers[0]) for p in daemons)
        proc.kill()
        proc.wait()
        wait_gone(with_marker(marker, keepers=True), timeout=5)


def test_a_stopped_server_leaves_no_daemon_behind(tmp_path) -> None:
    marker = f"twinproxy-test-{secrets.token_hex(8)}"
    version = fake_redis("--daemon-child", "--marker", marker)
    config = write_config(tmp_path / "r.toml", "redis", {"v6": version})
    with reaped(marker), serve_process(config) as proc:
        poll_until(lambda: len(with_marker(marker)), lambda n: n == 2, 10, "the daemon")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        wait_gone(with_marker(marker, keepers=True), timeout=5)


def test_json_logs(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6})
    with serve_process(config, "--log-format", "json") as proc:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    lines = [json.loads(line) for line in proc.log.read_text().splitlines() if line]
    assert {"time", "level", "message"} <= set(lines[0])
    assert any("serving redis" in line["message"] for line in lines)


def test_a_bad_config_exits_2_naming_file_key_and_reason(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6})
    config.write_text(config.read_text().replace('protocol = "redis"', 'protocol = "redis"\n'
                                                                      'listne = "x"'))
    result = twinproxy("serve", str(config))
    assert result.returncode == 2
    assert f"{config}: proxy.listne: " in result.stderr
    assert os.path.basename(str(config)) in result.stderr


def test_restart_back_off_doubles_up_to_restart_backoff_max(tmp_path) -> None:
    """A server that keeps failing to start is retried after 0.1, 0.2, 0.4, then 0.4 s ... (not
    0.8, 1.6 ...), and serves again once it can start."""
    fail, starts = tmp_path / "fail", tmp_path / "starts"
    version = (fake_redis("--fail-if", str(fail), "--starts", str(starts), "--marker", str(fail))
               + "\nrestart_backoff = 0.1\nrestart_backoff_max = 0.4\nready_timeout = 10")
    config = write_config(tmp_path / "r.toml", "redis", {"v6": version})
    port = load_config(config).proxy.listen[1]
    with reaped(str(fail)), serve_process(config) as proc:
        assert ping(port) == b"+PONG\r\n"
        fail.touch()
        os.kill(managed_pids(proc.log)[0], signal.SIGKILL)
        attempts = 7
        poll_until(lambda: starts.read_text().split(), lambda t: len(t) > attempts, 60,
                   f"{attempts} failed starts")
        fail.unlink()
        poll_until(lambda: proc.log.read_text().count("v6 serves at"), lambda n: n == 2, 60,
                   "v6 to serve again")
        assert ping(port) == b"+PONG\r\n"
        delays = [float(d) for d in re.findall(r"restarting v6 in ([\d.]+)s",
                                                proc.log.read_text())]
        assert delays[:attempts] == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]
        # And it did wait that long: each attempt (the first start is times[0]) came at least
        # its delay after the one before it.
        times = [float(t) for t in starts.read_text().split()]
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert all(gap >= delay for gap, delay in zip(gaps, delays[1:], strict=False)), gaps
