"""The state sync registry and the refusals it gives, without servers or sockets.

What an update does with a method end to end is in ``test_mve_redis.py`` (redis-fork and none
against real servers); here: the registry agrees with the config loader, every method it says
is built loads, a method that is not built is refused with the words the control API answers,
redis-fork refuses a version it cannot start, redis-fork's release of clients blocked at the
sync point asks the sync point and the server in the order its docstring promises, and a server's
refusal of its INFO is told in the server's words, and files copies a directory as it was at the
sync point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import trio

from twinproxy.config import DEFAULT_SYNC, PROTOCOLS, SYNC_METHODS, VersionConfig
from twinproxy.protocols.redis.types import RespError
from twinproxy.statesync import METHODS, Method, StateSync, SyncError, SyncJob, SyncPoint
from twinproxy.statesync.cooperative import Cooperative
from twinproxy.statesync.files import FilesSync
from twinproxy.statesync.none import NoSync
from twinproxy.statesync.redis_fork import RedisControl, RedisFork

MANAGED = VersionConfig(name="v2", command=("redis-server", "--port", "{port}"))
EXTERNAL = VersionConfig(name="ext", address=("127.0.0.1", 7001))
FORKED = VersionConfig(name="v3", forked=True)
LEADER = VersionConfig(name="v1", command=("redis-server", "--port", "{port}"))


def test_the_config_accepts_exactly_the_registrys_names_in_its_order() -> None:
    assert SYNC_METHODS == tuple(METHODS) == (
        "redis-fork", "memcache-copy", "files", "cooperative", "none")
    assert all(name == method.name for name, method in METHODS.items())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_protocols_default_method_works_with_it(protocol: str) -> None:
    assert METHODS[DEFAULT_SYNC[protocol]].works_with(protocol)


def test_which_protocols_each_method_works_with() -> None:
    works = {name: [p for p in PROTOCOLS if m.works_with(p)] for name, m in METHODS.items()}
    assert works == {"redis-fork": ["redis"], "memcache-copy": ["memcache"], "files": ["ftp"],
                     "cooperative": list(PROTOCOLS), "none": list(PROTOCOLS)}


def test_built_methods_load_their_class() -> None:
    assert METHODS["redis-fork"].load() is RedisFork
    assert METHODS["none"].load() is NoSync
    assert METHODS["cooperative"].load() is Cooperative
    for method in METHODS.values():
        if method.module is not None:
            assert issubclass(method.load(), StateSync)


def test_a_method_the_config_names_but_not_built_is_refused_when_the_update_starts() -> None:
    """Every method of the registry is built now; the mechanism stays for the next one."""
    method = Method("planned", None, protocols=("redis",))
    assert method.refusal("redis", LEADER, MANAGED) == (
        "sync method 'planned' is not available for redis yet")
    with pytest.raises(LookupError, match="not built yet"):
        method.load()
    assert all(m.module is not None for m in METHODS.values())


def test_redis_fork_needs_a_managed_version_to_start_on_the_snapshot() -> None:
    method = METHODS["redis-fork"]
    assert method.refusal("redis", LEADER, MANAGED) is None
    assert method.refusal("redis", LEADER, EXTERNAL) == (
        "sync redis-fork starts the new version on the snapshot, so ext must be a managed "
        "version (with a command), not an address")


def test_files_needs_both_versions_managed() -> None:
    method = METHODS["files"]
    assert method.load() is FilesSync
    assert method.refusal("ftp", LEADER, MANAGED) is None
    assert method.refusal("ftp", LEADER, EXTERNAL) == (
        "sync files copies the old version's directory into the new one's, so ext must be a "
        "managed version (with a command), not an address")
    assert method.refusal("ftp", EXTERNAL, MANAGED).startswith("sync files copies")


async def test_files_copies_the_directory_as_at_the_sync_point(tmp_path) -> None:
    """The copy is taken at the sync point (later writes to the old directory are not in it),
    with modes, links and empty directories, without the proxy's server.log; after_release
    places it in the new version's directory; aclose leaves no staging behind."""
    old = tmp_path / "old"
    (old / "root" / "pub" / "empty").mkdir(parents=True)
    (old / "root" / "pub" / "a.bin").write_bytes(bytes(range(256)) * 100)
    (old / "root" / "pub" / "a.bin").chmod(0o640)
    (old / "root" / "link").symlink_to("pub/a.bin")
    (old / "server.log").write_text("the old version's log")
    new = tmp_path / "new"
    new.mkdir()
    sync = FilesSync(SyncJob(1, ("127.0.0.1", 1), MANAGED, 5.0, leader_dir=str(old)))
    try:
        await sync.prepare()
        await sync.at_sync_point(None)
        (old / "root" / "pub" / "later.txt").write_text("after the sync point")
        await sync.after_release(str(new))
    finally:
        staging = sync._staging
        await sync.aclose()
    assert (new / "root" / "pub" / "a.bin").read_bytes() == bytes(range(256)) * 100
    assert (new / "root" / "pub" / "a.bin").stat().st_mode & 0o777 == 0o640
    assert (new / "root" / "pub" / "empty").is_dir()
    assert os.readlink(new / "root" / "link") == "pub/a.bin"
    assert not (new / "root" / "pub" / "later.txt").exists()
    assert not (new / "server.log").exists()
    assert staging is not None and not os.path.exists(staging)


async def test_files_refuses_a_leader_without_a_directory(tmp_path) -> None:
    sync = FilesSync(SyncJob(1, ("127.0.0.1", 1), MANAGED, 5.0, leader_dir=None))
    with pytest.raises(SyncError, match="no directory to copy"):
        await sync.prepare()
    await sync.aclose()


def test_cooperative_needs_a_version_the_service_forks() -> None:
    method = METHODS["cooperative"]
    assert method.refusal("redis", EXTERNAL, FORKED) is None
    for target in (MANAGED, EXTERNAL):
        assert method.refusal("redis", EXTERNAL, target) == (
            f"sync cooperative has the running service fork the new version, so {target.name} "
            "must be a forked version (forked = true), not one with a command or an address")


def test_none_starts_any_version() -> None:
    for target in (MANAGED, EXTERNAL):
        assert METHODS["none"].refusal("memcache", LEADER, target) is None


def test_a_new_method_is_one_registry_line() -> None:
    """What ``docs/design.md`` promises: the line names the module, and the rest follows."""
    line = Method("none-again", "none", protocols=("ftp",))
    assert line.load() is NoSync
    assert line.works_with("ftp") and not line.works_with("redis")
    assert line.refusal("ftp", LEADER, EXTERNAL) is None


async def test_every_step_of_the_base_does_nothing() -> None:
    sync = NoSync(SyncJob(number=1, leader=("127.0.0.1", 1), target=MANAGED,
                          barrier_timeout=1.0))
    assert NoSync.after_release_step is None
    assert await sync.prepare() is None
    await sync.at_sync_point(FakePoint([]))
    await sync.after_release("/nonexistent")
    await sync.aclose()


# ---- redis-fork's release of clients blocked at the sync point --------------------------------


@dataclass(eq=False)
class FakeBlocked:
    local_address: tuple[str, int]
    out: bool = False  # released and not come back yet
    refuse: bool = False  # came back with data before it could be released
    back_in: int = 0  # once unblocked: how many more looks before its reply comes back


class FakePoint(SyncPoint):
    def __init__(self, blocked: list[FakeBlocked]):
        self._blocked = blocked
        self.released: list[FakeBlocked] = []

    def blocked(self) -> list[FakeBlocked]:
        return list(self._blocked)

    def release(self, request) -> bool:
        if request.refuse:
            return False
        request.out = True
        request.back_in = -1  # still blocked in the server
        self.released.append(request)
        return True

    def still_out(self, request) -> bool:
        if request.back_in == 0:
            request.out = False
        elif request.back_in > 0:
            request.back_in -= 1
        return request.out


class FakeRedis:
    """Answers CLIENT LIST with ``clients`` (address: id) and CLIENT UNBLOCK by waking the
    oldest request of that client still blocked, after ``late`` UNBLOCKs that find nothing
    (the request not yet in the server); its null reply comes back ``delay`` looks later."""

    def __init__(self, clients: dict[str, str], point: FakePoint, late: int = 0,
                 delay: int = 0):
        self.clients = clients
        self.point = point
        self.late = late
        self.delay = delay
        self.calls: list[tuple[str, ...]] = []

    async def call(self, *words: str):
        self.calls.append(words)
        if words[:2] == ("CLIENT", "LIST"):
            return "".join(f"id={i} addr={a} fd=8\n" for a, i in self.clients.items()).encode()
        assert words[:2] == ("CLIENT", "UNBLOCK")
        if self.late:
            self.late -= 1
            return 0
        address = next(a for a, i in self.clients.items() if i == words[2])
        for request in self.point.released:
            if request.out and request.back_in < 0 \
                    and f"{request.local_address[0]}:{request.local_address[1]}" == address:
                request.back_in = self.delay  # the null the unblocking gives is on its way
                return 1
        return 0


def release(blocked: list[FakeBlocked], clients: dict[str, str], late: int = 0,
            delay: int = 0) -> tuple[FakePoint, FakeRedis]:
    point = FakePoint(blocked)
    server = FakeRedis(clients, point, late, delay)
    job = SyncJob(number=1, leader=("127.0.0.1", 1), target=MANAGED, barrier_timeout=5.0)
    trio.run(RedisFork(job).release_blocked, server, point)
    return point, server


def test_nothing_blocked_asks_the_server_nothing() -> None:
    _, server = release([], {})
    assert server.calls == []


def test_each_blocked_request_is_unblocked_once_by_its_client_id() -> None:
    a, b = FakeBlocked(("127.0.0.1", 5001)), FakeBlocked(("127.0.0.1", 5002))
    point, server = release([a, b], {"127.0.0.1:5001": "7", "127.0.0.1:5002": "9"})
    assert point.released == [a, b] and not a.out and not b.out
    assert sorted(server.calls[1:]) == [("CLIENT", "UNBLOCK", "7"), ("CLIENT", "UNBLOCK", "9")]


def test_an_unblock_that_finds_nothing_is_tried_again() -> None:
    a = FakeBlocked(("127.0.0.1", 5001))
    _, server = release([a], {"127.0.0.1:5001": "7"}, late=2)
    assert not a.out
    assert server.calls[1:] == [("CLIENT", "UNBLOCK", "7")] * 3


def test_a_clients_next_unblock_waits_until_what_the_last_one_released_came_back() -> None:
    """Two requests of one connection blocked in the leader: a second UNBLOCK sent before the
    first one's null came back would find the same request still blocked, and release it
    twice; so exactly one UNBLOCK per request, however long the replies take."""
    a, b = FakeBlocked(("127.0.0.1", 5001)), FakeBlocked(("127.0.0.1", 5001))
    point, server = release([a, b], {"127.0.0.1:5001": "7"}, delay=5)
    assert point.released == [a, b] and not a.out and not b.out
    assert server.calls[1:] == [("CLIENT", "UNBLOCK", "7")] * 2


def test_requests_the_point_will_not_release_or_the_server_does_not_know_are_left_alone(
        ) -> None:
    came_back = FakeBlocked(("127.0.0.1", 5001), refuse=True)
    unknown = FakeBlocked(("127.0.0.1", 5003))
    point, server = release([came_back, unknown], {"127.0.0.1:5001": "7"})
    assert point.released == []
    assert server.calls == [("CLIENT", "LIST")]


class RefusingRedis(RedisControl):
    """A server that answers every command with an error, as one at its ``maxclients`` does on
    a new connection."""

    def __init__(self) -> None:
        pass

    async def call(self, *words: bytes | str, timeout: float = 10.0):
        return RespError(b"ERR max number of clients reached")


def test_an_info_the_server_refuses_names_the_servers_error() -> None:
    """The update's reason says what the server said (it showed ``RespError(message=b'...',
    blob=False)``: seen in the fault matrix's leader at maxclients)."""
    with pytest.raises(SyncError) as caught:
        trio.run(RefusingRedis().info, "persistence")
    assert str(caught.value) == "INFO persistence refused: ERR max number of clients reached"
