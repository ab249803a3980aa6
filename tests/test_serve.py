"""``twinproxy serve`` as a process: it serves, stops cleanly, and leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.proxyrun import REDIS6, serve_process, write_config
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
    # A stop twinproxy ordered is not the server failing.
    assert "is down" not in log and "WARNING" not in log, log
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
    config = write_config(tmp_path / "r.toml", "redis",
                          {"v6": 'command = ["/bin/sh", "-c", "sleep 30 & exit 3", "{port}"]'
                                 "\nready_timeout = 5"})
    result = subprocess.run([sys.executable, "-m", "twinproxy.cli", "serve", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "exited with status 3 before it was ready" in result.stderr
    assert "Traceback" not in result.stderr
    leftovers = subprocess.run(["pgrep", "-f", "sleep 30"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def test_a_busy_listen_address_exits_1_with_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "r.toml", "redis", {"v6": REDIS6})
        config.write_text(re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"',
                                 config.read_text()))
        result = subprocess.run([sys.executable, "-m", "twinproxy.cli", "serve", str(config)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


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
    result = subprocess.run([sys.executable, "-m", "twinproxy.cli", "serve", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{config}: proxy.listne: " in result.stderr
    assert os.path.basename(str(config)) in result.stderr
