"""While clients are held the cyclic collector is off, and it is back however the pause ends;
while the state sync runs only its full passes are; ``serve`` starts young collections less
often than CPython does (no server needed)."""

from __future__ import annotations

import gc

import pytest

from twinproxy.held import collector_paused, full_collections_deferred
from twinproxy.lifecycle import Failed
from twinproxy.service import collect_less_often, set_aside_start_up


def test_the_collector_is_off_in_a_pause_and_back_after_a_failure():
    assert gc.isenabled()
    with pytest.raises(Failed), collector_paused():
        assert not gc.isenabled()
        raise Failed("the barrier was not reached")
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def _generations_collected(work) -> list[int]:
    seen: list[int] = []

    def note(phase: str, info: dict) -> None:
        if phase == "stop":
            seen.append(info["generation"])

    gc.callbacks.append(note)
    try:
        work()
    finally:
        gc.callbacks.remove(note)
    return seen


def _backlog() -> list[list[int]]:
    """Many containers that live on, as the requests kept for the follower do, or what a
    thousand clients keep while they are connected (their connections, readers and the
    engine's records, with requests in flight)."""
    return [[i] for i in range(300_000)]


def test_no_full_collection_while_the_state_sync_runs_and_thresholds_back_after_a_failure():
    assert 2 in _generations_collected(_backlog)  # what the same work costs otherwise
    before = gc.get_threshold()

    def sync() -> None:
        with pytest.raises(Failed), full_collections_deferred():
            _backlog()
            raise Failed("the follower did not start")

    seen = _generations_collected(sync)
    assert 2 not in seen and 0 in seen  # young collections went on
    assert gc.get_threshold() == before


def test_serve_sets_the_start_up_objects_aside_from_the_collector():
    try:
        set_aside_start_up()
        assert gc.get_freeze_count() > 10_000  # twinproxy's, trio's, pytest's modules
    finally:
        gc.unfreeze()


def test_clients_that_connect_start_fewer_collections_and_no_full_one_under_serve():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's own
        gc.collect()
        default = _generations_collected(_backlog)
        assert 2 in default
        collect_less_often()
        gc.collect()
        seen = _generations_collected(_backlog)
        assert 2 not in seen
        assert len(seen) * 5 <= len(default)
    finally:
        gc.set_threshold(*before)
