"""The state sync registry and the refusals it gives, without servers or sockets.

What an update does with a method end to end is in ``test_mve_redis.py`` (redis-fork and none
against real servers); here: the registry agrees with the config loader, every method it says
is built loads, a method that is not built is refused with the words the control API answers,
redis-fork refuses a version it cannot start, redis-fork's release of clients blocked at the
sync point asks the sync point and the server in the order its docstring promises, and a server's
refusal of its INFO is told in the server's words.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio

from twinproxy.config import DEFAULT_SYNC, PROTOCOLS, SYNC_METHODS, VersionConfig
from twinproxy.protocols.redis.types import RespError
from twinproxy.statesync import METHODS, Method, StateSync, SyncError, SyncJob, SyncPoint
from twinproxy.statesync.none import NoSync
from twinproxy.statesync.redis_fork import RedisControl, RedisFork

MANAGED = VersionConfig(name="v2", command=("redis-server", "--port", "{port}"))
EXTERNAL = VersionConfig(name="ext", address=("127.0.0.1", 7001))
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
    for method in METHODS.values():
        if method.module is not None:
            assert issubclass(method.load(), StateSync)


@pytest.mark.parametrize(("name", "protocol"), [("files", "ftp"),
                                                ("cooperative", "redis")])
def test_a_known_method_not_built_yet_is_refused_when_the_update_starts(
        name: str, protocol: str) -> None:
    method = METHODS[name]
    assert method.module is None
    assert method.refusal(protocol, LEADER, MANAGED) == (
        f"sync method '{name}' is not available for {protocol} yet")
    with pytest.raises(LookupError, match="not built yet"):
        method.load()


def test_redis_fork_needs_a_managed_version_to_start_on_the_snapshot() -> None:
    method = METHODS["redis-fork"]
    assert method.refusal("redis", LEADER, MANAGED) is None
    assert method.refusal("redis", LEADER, EXTERNAL) == (
        "sync redis-fork starts the new version on the snapshot, so ext must be a managed "
        "version (with a command), not an address")


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
