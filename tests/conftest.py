"""Fixtures that start real servers on loopback ports picked per test."""

from __future__ import annotations

import pytest

from tests import servers


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
