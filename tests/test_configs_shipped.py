"""The configs under configs/ serve in SINGLE mode, each in front of its real server.

Each is run as shipped, but on a free listen port and a private control socket, so that the test
never takes a fixed port another test or a running proxy may hold.
"""

from __future__ import annotations

import ftplib
import io
import re
from pathlib import Path

import pytest
import redis
from pymemcache.client.base import Client

from tests.kvstore import config as kvstore_config
from tests.kvstore import kvstore
from tests.proxyrun import running
from tests.servers import free_port

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def relocated(name: str, tmp_path: Path, start: str | None = None) -> Path:
    text = (CONFIGS / name).read_text()
    text = re.sub(r'(?m)^listen = "[^"]*"', f'listen = "127.0.0.1:{free_port()}"', text)
    text = re.sub(r'(?m)^control = "[^"]*"', f'control = "{tmp_path / "control.sock"}"', text)
    if start:
        text = re.sub(r'(?m)^start = "[^"]*"', f'start = "{start}"', text)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("start", "version"), [(None, "6.2"), ("v7", "7.0")])
def test_redis_toml(tmp_path, start, version) -> None:
    with running(relocated("redis.toml", tmp_path, start)) as proxy:
        r = redis.Redis(port=proxy.port)
        assert r.ping()
        assert r.info("server")["redis_version"].startswith(version)
        r.set("k", "v")
        assert r.get("k") == b"v"


def test_memcached_toml(tmp_path) -> None:
    with running(relocated("memcached.toml", tmp_path)) as proxy:
        c = Client(proxy.address)
        c.set("k", "v")
        assert c.get("k") == b"v"
        assert c.version().startswith(b"1.6")


def test_ftp_toml(tmp_path) -> None:
    with running(relocated("ftp.toml", tmp_path)) as proxy:
        ftp = ftplib.FTP()
        assert ftp.connect("127.0.0.1", proxy.port).startswith("220")
        ftp.login()
        assert ftp.nlst() == ["pub"]
        ftp.cwd("pub")
        ftp.storbinary("STOR hello.txt", io.BytesIO(b"hello through twinproxy"))
        out = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", out.write)
        assert out.getvalue() == b"hello through twinproxy"
        ftp.quit()


def test_kvstore_toml(tmp_path) -> None:
    """In front of the example service it was written for (examples/kvstore), v1 serving."""
    with kvstore(keys=3) as store, running(kvstore_config(tmp_path / "kv.toml", store)) as proxy:
        r = redis.Redis(port=proxy.port)
        assert r.ping()
        assert r.execute_command("GET", "key:2") == b"value:2"
        assert r.execute_command("PUT", "k", "v") == b"OK"
        assert r.execute_command("GET", "k") == b"v"
        assert r.execute_command("DEL", "k") == 1
