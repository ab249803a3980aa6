"""The log of ``twinproxy serve`` through two updates driven from the command line: one line per
lifecycle event, in JSON lines (each event's fields as keys) and in the default text format
(the event name in brackets, the fields as ``key=value``).

The updates are real: Redis 6.2 to 7.0 with the shipped rules, cut over with ``twinproxy
promote``; then 7.0 to a faulty 7.0 (LRANGE renamed away), which diverges on the first LRANGE
and rolls back.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import redis

from tests.cli import serve_process, started, twinproxy
from tests.proxyrun import REDIS6, REDIS7, shipped_rules, write_config
from tests.test_cli_update import listen_address, wait_for

pytestmark = pytest.mark.slow

FAULTY = REDIS7.replace('"{dir}"]', '"{dir}", "--rename-command", "LRANGE", ""]')


def run_two_updates(tmp_path: Path, *serve_args: str) -> str:
    """Update 1 (v6 -> v7) cut over by promote, update 2 (v7 -> bad) rolled back by a
    divergence; the serve process's log once it stopped."""
    config = write_config(tmp_path / "e.toml", "redis", {"v6": REDIS6, "v7": REDIS7, "bad": FAULTY},
                          update="warmup_seconds = 600\nwarmup_requests = 1000000000",
                          rules=shipped_rules())
    with serve_process(config, *serve_args) as proc:
        client = redis.Redis(*listen_address(config), socket_timeout=10)
        client.rpush("l", "a", "b")
        assert twinproxy("update", "--to", "v7", "-c", str(config)).returncode == 0
        wait_for(config, lambda d: d["state"] == "mve")
        assert client.lrange("l", 0, -1) == [b"a", b"b"]  # compared, equal
        promoted = twinproxy("promote", "-c", str(config))
        assert promoted.returncode == 0, promoted.stderr
        with started("update", "--to", "bad", "--wait", "-c", str(config)) as waiting:
            wait_for(config, lambda d: d["state"] == "mve")
            assert client.lrange("l", 0, -1) == [b"a", b"b"]  # the leader's reply
            done = waiting.finish(60)
        assert done.returncode == 1, done.stdout + done.stderr
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    return proc.log.read_text()


def test_json_log_has_a_line_with_its_fields_for_every_lifecycle_event(tmp_path) -> None:
    lines = [json.loads(line) for line in run_two_updates(tmp_path, "--log-format", "json")
             .splitlines() if line.strip()]  # every line is one JSON object
    events: dict[str, list[dict]] = {}
    for line in lines:
        if "event" in line:
            events.setdefault(line["event"], []).append(line)

    def one(name: str, **fields) -> dict:
        found = [e for e in events.get(name, [])
                 if all(e.get(k) == v for k, v in fields.items())]
        assert len(found) == 1, (name, fields, events.get(name))
        return found[0]

    started = one("update_started", update=1, source="v6", to="v7")
    assert started["level"] == "info" and started["logger"] == "twinproxy.events"
    one("update_started", update=2, source="v7", to="bad")
    for update, to in ((1, "v7"), (2, "bad")):
        assert isinstance(one("sync_point", update=update, to=to)["pause_ms"], float)
        assert isinstance(one("synced", update=update, to=to)["backlog"], int)
        assert one("mve", update=update, to=to)["warmup_seconds"] == 600
    cutover = one("cutover", update=1, to="v7")
    assert isinstance(cutover["pause_ms"], float)
    divergence = one("divergence", update=2, request="LRANGE")
    assert divergence["level"] == "warning" and isinstance(divergence["id"], int)
    assert divergence["leader"].startswith("b'*2\\r\\n$1\\r\\na")  # what the client got
    assert "unknown command" in divergence["follower"]
    rollback = one("rollback", update=2, to="bad")
    assert rollback["level"] == "warning"
    assert rollback["reason"].startswith("unexpected divergence on LRANGE")
    assert [e["update"] for e in events["cutover"]] == [1]
    assert [e["update"] for e in events["rollback"]] == [2]


def test_text_log_has_one_readable_line_for_every_lifecycle_event(tmp_path) -> None:
    log = run_two_updates(tmp_path)
    assert not log.lstrip().startswith("{")

    def line(event: str, *parts: str) -> str:
        found = [x for x in log.splitlines() if f" [{event}] " in x and all(p in x for p in parts)]
        assert len(found) == 1, (event, parts, log)
        return found[0]

    assert "INFO" in line("update_started", "update=1", "source=v6", "to=v7")
    line("update_started", "update=2", "source=v7", "to=bad")
    for update, to in (("update=1", "to=v7"), ("update=2", "to=bad")):
        assert "pause_ms=" in line("sync_point", update, to)
        assert "backlog=" in line("synced", update, to)
        line("mve", update, to, "warmup_seconds=600")
    line("cutover", "update=1", "to=v7", "pause_ms=")
    assert "WARNING" in line("divergence", "update=2", "request=LRANGE", "unknown command")
    assert "WARNING" in line("rollback", "update=2", "to=bad",
                             "reason='unexpected divergence on LRANGE")
