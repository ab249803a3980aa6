"""A new version started on a prepared directory (an update's snapshot) loads it at idle CPU
priority and then serves at normal priority; a version started afresh is not touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile

import pytest
import trio

from tests.servers import recv_until, redis7_binary, redis_server
from twinproxy.backends import Backend, descendants
from twinproxy.config.model import VersionConfig
from twinproxy.protocols import get_codec

KEYS = 300_000


def _snapshot(directory: str) -> None:
    """A dump.rdb of KEYS keys in ``directory`` (about 0.2 s to load)."""
    with redis_server("7") as server:
        sock = socket.create_connection((server.host, server.port))
        sock.sendall(f"DEBUG POPULATE {KEYS}\r\nSAVE\r\n".encode())
        recv_until(sock, b"+OK\r\n+OK\r\n")
        sock.close()
        shutil.copy(server.dir / "dump.rdb", os.path.join(directory, "dump.rdb"))


def _policies() -> set[int]:
    """The scheduling policies of the processes below this one (the keeper, the server)."""
    seen = set()
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):  # exited meanwhile
            seen.add(os.sched_getscheduler(pid))
    return seen


async def _start(workdir: str | None) -> tuple[set[int], int, int]:
    """Run the version; return the policies seen while it started, its policy once it serves,
    and its DBSIZE."""
    version = VersionConfig(name="v2", command=(
        redis7_binary(), "--port", "{port}", "--bind", "127.0.0.1", "--save", "",
        "--dir", "{dir}"), ready_timeout=20.0)
    backend = Backend(version, get_codec("redis"))
    seen: set[int] = set()
    async with trio.open_nursery() as nursery:
        ready = trio.Event()

        async def watch() -> None:
            while not ready.is_set():
                seen.update(_policies())
                await trio.sleep(0.005)

        nursery.start_soon(watch)
        await nursery.start(backend.run, workdir)
        ready.set()
        assert backend.server is not None
        after = os.sched_getscheduler(backend.server.pid)
        stream = await trio.open_tcp_stream(*backend.address)
        await stream.send_all(b"DBSIZE\r\n")
        size = int((await stream.receive_some(100)).strip()[1:])
        await stream.aclose()
        await backend.stop()
    return seen, after, size


@pytest.mark.skipif(os.geteuid() != 0, reason="leaving SCHED_IDLE needs CAP_SYS_NICE")
def test_snapshot_loads_at_idle_priority_then_serves_at_normal() -> None:
    workdir = tempfile.mkdtemp(prefix="twinproxy-test-")  # the backend removes it when stopped
    _snapshot(workdir)
    seen, after, size = trio.run(_start, workdir)
    assert size == KEYS  # the load completed under SCHED_IDLE
    assert os.SCHED_IDLE in seen
    assert after == os.SCHED_OTHER


def test_a_fresh_start_keeps_normal_priority() -> None:
    seen, after, size = trio.run(_start, None)
    assert size == 0
    assert seen <= {os.SCHED_OTHER}
    assert after == os.SCHED_OTHER
