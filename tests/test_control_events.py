"""Lifecycle events: one line each, the event name and fields as keys of the JSON record, the
name in brackets and the fields as ``key=value`` in the text line; one list of names."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinproxy.events import EVENTS, log_event
from twinproxy.service import JsonFormatter, TextFormatter

SRC = Path(__file__).resolve().parent.parent / "src" / "twinproxy"


def captured(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """What the twinproxy loggers write at INFO and above, formatted by ``formatter``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("twinproxy")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture
def json_log():
    yield from captured(JsonFormatter())


@pytest.fixture
def text_log():
    yield from captured(TextFormatter())


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_event_name_is_in_the_json_record(json_log) -> None:
    log_event("update_started", "update to v7 started", to="v7")
    log_event("rollback", "rolled back to v6", reason="GET k: replies differ\nat line 2",
              seconds=1.23456)
    started, rollback = records(json_log)
    assert started["event"] == "update_started"
    assert started["level"] == "info"
    assert started["message"] == "update to v7 started to=v7"
    assert started["to"] == "v7"
    assert rollback["event"] == "rollback"
    assert rollback["level"] == "warning"
    assert rollback["message"] == \
        "rolled back to v6 reason='GET k: replies differ at line 2' seconds=1.235"
    # The fields as keys, with their JSON types: no parsing of the message needed.
    assert rollback["reason"] == "GET k: replies differ\nat line 2"
    assert rollback["seconds"] == 1.23456


def test_level_can_be_given(json_log) -> None:
    log_event("divergence", "an expected difference", level=logging.INFO, rule="version")
    (record,) = records(json_log)
    assert (record["event"], record["level"]) == ("divergence", "info")


def test_fields_stay_on_the_record(caplog) -> None:
    caplog.set_level(logging.INFO, logger="twinproxy")
    log_event("cutover", "v7 leads", to="v7", compared=1000)
    (record,) = caplog.records
    assert record.event == "cutover"
    assert record.fields == {"to": "v7", "compared": 1000}


def test_fields_are_json_keys_and_never_replace_the_base_keys(json_log) -> None:
    log_event("divergence", "differs", update=3, id=17, request="GET", expected=False,
              leader=repr(b"$1\r\na\r\n"), extra=None, where=Path("/x"))
    (record,) = records(json_log)
    assert record["update"] == 3 and record["id"] == 17 and record["expected"] is False
    assert record["leader"] == "b'$1\\r\\na\\r\\n'" and record["extra"] is None
    assert record["where"] == "/x"  # not JSON: written as text, the line still parses
    with pytest.raises(ValueError, match="clashes"):
        log_event("cutover", "v7 leads", time="x")


def test_text_line_names_the_event_and_stays_one_line(text_log) -> None:
    log_event("rollback", "update 2 rolled back: the follower\ncrashed", reason="a\nb",
              to="v7")
    logging.getLogger("twinproxy.relay").info("not an event")
    event_line, plain_line = text_log.getvalue().splitlines()
    assert "WARNING [rollback] update 2 rolled back: the follower crashed reason='a b' to=v7" \
        in event_line
    assert plain_line.endswith("INFO    not an event") and "[" not in plain_line


def test_unknown_event_names_are_refused() -> None:
    for name in ("update-started", "sync-point", "Rollback", "leader-failed"):
        with pytest.raises(ValueError, match="unknown lifecycle event"):
            log_event(name, "x")


def test_every_event_logged_in_the_package_is_in_the_list() -> None:
    """The names are checked where they are written, not only when that code path runs."""
    used = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "log_event":
                first = node.args[0]
                assert isinstance(first, ast.Constant), f"{path}:{node.lineno}: a literal name"
                used[first.value] = f"{path.name}:{node.lineno}"
    assert set(used) <= set(EVENTS), {n: where for n, where in used.items() if n not in EVENTS}
    # Every step the issue names is logged somewhere (not only listed).
    assert {"update_started", "sync_point", "synced", "mve", "divergence", "cutover",
            "rollback"} <= set(used)


def test_the_documented_events_are_the_listed_ones() -> None:
    doc = (SRC.parent.parent / "docs" / "control-api.md").read_text()
    section = doc.split("## Log lines", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines()
                  if line.startswith("| `")}
    assert documented == set(EVENTS)
