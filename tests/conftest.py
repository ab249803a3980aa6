"""Fixtures that start real servers on loopback ports picked per test."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests import servers

# No property test asserts how fast an example runs (speed is measured under loadtests/): with
# hypothesis's default deadline of 200 ms, an example slowed by a busy machine would fail the
# run as flaky.
settings.register_profile("twinproxy", deadline=None)
settings.load_profile("twinproxy")


@pytest.fixture
def redis7():
    with servers.redis_server("7") as s:
        yield s


@pytest.fixture
def redis6():
    with servers.redis_server("6") as s:
        yield s


@pytest.fixture
def memcached():
    with servers.memcached_server() as s:
        yield s


@pytest.fixture
def vsftpd():
    with servers.vsftpd_server() as s:
        yield s
