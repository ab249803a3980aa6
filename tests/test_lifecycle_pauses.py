"""While clients are held the cyclic collector is off, and it is back however the pause ends
(no server needed)."""

from __future__ import annotations

import gc

import pytest

from twinproxy.held import collector_paused
from twinproxy.lifecycle import Failed


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
