"""The real servers the suite runs on: each fixture starts the version it promises."""

import ftplib

import redis
from pymemcache.client.base import Client


def test_redis_7_and_6_2(redis7, redis6) -> None:
    assert redis.Redis(port=redis7.port).info()["redis_version"].startswith("7.0")
    assert redis.Redis(port=redis6.port).info()["redis_version"].startswith("6.2")


def test_memcached(memcached) -> None:
    client = Client(("127.0.0.1", memcached.port))
    client.set("a", "b")
    assert client.get("a") == b"b"
    assert client.version().startswith(b"1.6")


def test_vsftpd(vsftpd) -> None:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", vsftpd.port)
    ftp.login()
    assert ftp.nlst() == ["pub"]
    ftp.quit()
