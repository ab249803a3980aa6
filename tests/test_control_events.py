"""Lifecycle events: one line each, the event name in the JSON record, fields in the text."""

from __future__ import annotations

import io
import json
import logging

import pytest

from twinproxy.events import log_event
from twinproxy.service import JsonFormatter


@pytest.fixture
def json_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("twinproxy")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old)


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
    assert rollback["event"] == "rollback"
    assert rollback["level"] == "warning"
    assert rollback["message"] == \
        "rolled back to v6 reason='GET k: replies differ at line 2' seconds=1.235"


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
