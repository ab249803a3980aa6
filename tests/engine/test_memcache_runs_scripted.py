"""memcached runs as pymemcache and caches send them, driven as scripts: events in, commands out,
against :class:`FakeMemcached`, a fake memcached named as such (a dict that runs get, set,
delete, incr, mn and their ``noreply`` forms, and answers a ``noreply`` request with nothing at
all, errors included, as memcached does; it keeps no expiries, only the bytes it ran).

A run counts its replies, one per request but those that say ``noreply`` (pymemcache's default
stores). Such a request last in a run has run only once the bytes of a later reply come on the
shared connection: the proxy's own ``mn`` at the end of the batch when nothing follows it there.
Where replies differ, or the leader refuses one, the run is framed request by request with each
silent store in its place. A store with an expiry in seconds from now (a cache's time to live)
reaches the follower with the leader's moment as a unix time.
"""

from __future__ import annotations

from collections import deque

from tests.engine.harness import NAMES, MemoryStore, World
from twinproxy.compare import Comparator, Rules
from twinproxy.config import UpdateConfig
from twinproxy.engine import FOLLOWER, LEADER, Engine
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.memcache import CODEC
from twinproxy.protocols.messages import Limits, Request

NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"


class FakeMemcached:
    """A fake memcached for these scripts, with the interface of the harness's model server."""

    def __init__(self, name: str):
        self.name = name
        self.data: dict[bytes, bytes] = {}
        self.readers: dict[int, object] = {}
        self.pending: dict[int, deque[Request]] = {}
        self.log: list[tuple[int, bytes]] = []  # every request run: (conn, its bytes)
        self.served: list = []  # (no blocking requests in memcached)

    def connect(self, conn: int) -> None:
        self.readers[conn] = CODEC.request_reader()
        self.pending[conn] = deque()

    def receive(self, conn: int, data: bytes) -> None:
        self.pending[conn].extend(CODEC.describe(r) for r in self.readers[conn].receive(data))

    def ready(self) -> list[int]:
        return [conn for conn, queue in self.pending.items() if queue]

    def execute(self, conn: int) -> bytes | None:
        """Run ``conn``'s next request: its reply, or None for a ``noreply`` one."""
        req = self.pending[conn].popleft()
        self.log.append((conn, req.raw))
        reply = self._run(req.name, req.args, req.data)
        return None if req.replies == 0 else reply

    def _run(self, name: str, args: list[bytes], data: bytes | None) -> bytes:
        if name == "get":
            return b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(self.data[k]), self.data[k])
                            for k in args if k in self.data) + b"END\r\n"
        if name == "set":
            self.data[args[0]] = data
            return b"STORED\r\n"
        if name == "delete":
            return b"DELETED\r\n" if self.data.pop(args[0], None) is not None else \
                b"NOT_FOUND\r\n"
        if name == "incr":
            if args[0] not in self.data:
                return b"NOT_FOUND\r\n"
            if not self.data[args[0]].isdigit():
                return NON_NUMERIC
            self.data[args[0]] = b"%d" % (int(self.data[args[0]]) + int(args[1]))
            return self.data[args[0]] + b"\r\n"
        if name == "mn":
            return b"MN\r\n"
        if name == "version":
            return b"VERSION 1.6.18\r\n"
        raise AssertionError(f"the fake memcached does not run {name}")


class MemcachedWorld(World):
    """The harness's world, with an engine for a memcached update and two fake memcached."""

    def __init__(self, shared_after: int = 0) -> None:
        config = UpdateConfig(sync="none", shared_after=shared_after)
        engine = Engine(CODEC, Limits(), config, Comparator(CODEC, Rules((), *NAMES)), NAMES,
                        table=None, new_store=MemoryStore)
        super().__init__(engine)
        self.servers = (FakeMemcached("leader"), FakeMemcached("follower"))

    def attach(self, client: int, conn: int, session: tuple[Request, ...] = ()) -> None:
        self.leader_conns[client] = conn
        self.role[conn] = LEADER
        self.servers[LEADER].connect(conn)
        self.feed(ev.Attach(client, f"127.0.0.1:{client}", conn, CODEC.reply_reader(), (),
                            (), True))

    def shared(self, role: int) -> int:
        return self.engine.sides[role].shared.conn.id

    def ran(self, role: int) -> list[bytes]:
        """What the shared connection of ``role`` ran, in order."""
        shared = self.shared(role)
        return [raw for conn, raw in self.servers[role].log if conn == shared]


def started(*clients: int, shared_after: int = 0) -> MemcachedWorld:
    world = MemcachedWorld(shared_after)
    world.feed(ev.Begin())
    for client in clients:
        world.attach(client, new_id())
    world.feed(ev.Release())
    world.feed(ev.StartFollower())
    world.settle()
    return world


def run(world: MemcachedWorld, client: int, data: bytes) -> None:
    """One read of ``client``'s, as the relay hands it over: a run, counted by the reader."""
    reader = CODEC.request_reader()
    reader.receive(b"version\r\n")  # (the reader's first read is framed: see count_run)
    used, count = reader.count_run(data)
    assert used == len(data)
    assert world.engine.runs_allowed(client, True, reader.reads_only)
    world.feed(ev.Run(client, data, count, reader.small_replies, reader.reads_only,
                      reader.silent, reader.silent_last, reader.expiring))


SET_A = b"set a 0 0 1 noreply\r\nx\r\n"


def test_a_run_of_one_noreply_store_is_settled_by_the_proxys_mn_and_the_client_gets_nothing():
    world = started(1)
    run(world, 1, SET_A)
    world.feed(ev.Flush())
    assert world.servers[LEADER].pending[world.shared(LEADER)] and \
        [r.raw for r in world.servers[LEADER].pending[world.shared(LEADER)]] == \
        [SET_A, b"mn\r\n"]
    world.settle()
    assert world.ran(FOLLOWER) == [SET_A, b"mn\r\n"]  # the follower settles it the same way
    assert bytes(world.delivered.get(1, b"")) == b""  # as directly: no reply, not the MN
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"a": b"x"}
    assert world.engine.backlog.requests == 0
    assert world.failures() == [] and world.divergences() == []
    assert world.engine.verdicts.compared == 1


def test_a_run_ending_in_a_noreply_store_is_answered_once_a_later_reply_comes():
    """No ``mn`` where another client's request follows it on the shared connection: that
    request's reply settles it. Until then it is not answered, so the follower has not got it;
    the client has its get's reply as it came."""
    world = started(1, 2)
    world.servers[LEADER].data[b"a"] = world.servers[FOLLOWER].data[b"a"] = b"1"
    run(world, 1, b"get a\r\nset b 0 0 1 noreply\r\n2\r\n")
    run(world, 2, b"get b\r\n")
    world.feed(ev.Flush())
    leader = world.shared(LEADER)
    world.run(LEADER, leader)  # get a
    world.feed(ev.Flush())
    assert bytes(world.delivered[1]) == b"VALUE a 0 1\r\n1\r\nEND\r\n"
    world.run(LEADER, leader)  # set b: no reply
    world.feed(ev.Flush())
    assert not world.servers[FOLLOWER].ready()  # not answered yet: not released
    world.run(LEADER, leader)  # get b: its bytes show that set b ran
    world.feed(ev.Flush())
    assert bytes(world.delivered[2]) == b"VALUE b 0 1\r\n2\r\nEND\r\n"
    assert [r.raw for r in world.servers[FOLLOWER].pending[world.shared(FOLLOWER)]] == \
        [b"get a\r\n", b"set b 0 0 1 noreply\r\n2\r\n", b"get b\r\n"]
    world.settle()
    assert b"mn\r\n" not in world.ran(LEADER) + world.ran(FOLLOWER)
    assert bytes(world.delivered[1]) == b"VALUE a 0 1\r\n1\r\nEND\r\n"
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data
    assert world.engine.backlog.requests == 0
    assert world.failures() == [] and world.divergences() == []


def test_replies_that_differ_are_compared_request_by_request_with_silent_stores_in_place():
    world = started(1)
    world.servers[LEADER].data[b"a"] = b"x"
    world.servers[FOLLOWER].data[b"a"] = b"y"  # (what the update must find)
    run(world, 1, b"set b 0 0 1 noreply\r\nz\r\nget a\r\ndelete c noreply\r\nget b\r\n")
    world.settle()
    assert bytes(world.delivered[1]) == b"VALUE a 0 1\r\nx\r\nEND\r\nVALUE b 0 1\r\nz\r\nEND\r\n"
    [diverged] = world.divergences()
    assert (diverged.request.name, diverged.request.args) == ("get", [b"a"])
    assert (diverged.leader, diverged.follower) == \
        (b"VALUE a 0 1\r\nx\r\nEND\r\n", b"VALUE a 0 1\r\ny\r\nEND\r\n")
    assert world.engine.verdicts.compared == 4


def test_a_run_the_leader_refuses_part_of_goes_to_the_follower_request_by_request():
    """An error in a run's replies releases it to the follower one request at a time (so that
    a refused one can be withheld there): its ``noreply`` store goes in its place, settled by
    the reply after it."""
    world = started(1)
    run(world, 1, b"set n 0 0 3 noreply\r\nabc\r\nincr n 1\r\n")
    world.settle()
    assert bytes(world.delivered[1]) == NON_NUMERIC
    assert world.ran(FOLLOWER) == [b"set n 0 0 3 noreply\r\nabc\r\n", b"incr n 1\r\n"]
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"n": b"abc"}
    assert world.engine.backlog.requests == 0
    assert world.failures() == [] and world.divergences() == []


def test_a_new_clients_first_read_sends_its_noreply_store_alone_and_the_rest_after_it_ran():
    """A new client's first read, under ``shared_after``: its first request goes alone and the
    rest waits until it is answered (engine.first_read). A ``noreply`` store first is answered
    once a reply after it shows it ran: the proxy's ``mn``."""
    world = started(1, shared_after=1)
    run(world, 1, SET_A + b"get a\r\n")
    world.feed(ev.Flush())
    shared = world.shared(LEADER)
    assert [r.raw for r in world.servers[LEADER].pending[shared]] == [SET_A, b"mn\r\n"]
    world.run(LEADER, shared)
    world.feed(ev.Flush())
    assert [r.raw for r in world.servers[LEADER].pending[shared]] == [b"mn\r\n"]
    world.settle()
    assert bytes(world.delivered[1]) == b"VALUE a 0 1\r\nx\r\nEND\r\n"
    own = world.leader_conns[1]  # (its get's reply is not small: it goes on its own)
    assert world.servers[LEADER].log[-3:] == \
        [(shared, SET_A), (shared, b"mn\r\n"), (own, b"get a\r\n")]
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data == {b"a": b"x"}
    assert world.engine.backlog.requests == 0 and world.engine.verdicts.compared == 2
    assert world.failures() == [] and world.divergences() == []


def test_a_runs_expiries_in_seconds_from_now_reach_the_follower_as_the_leaders_moment():
    world = started(1)
    world.feed(ev.Tick(100.0, 1_796_000_000.0))
    run(world, 1, b"set a 0 300 1 noreply\r\nx\r\nget a\r\nset b 0 0 1\r\ny\r\n")
    world.settle()
    assert bytes(world.delivered[1]) == b"VALUE a 0 1\r\nx\r\nEND\r\nSTORED\r\n"
    assert world.ran(LEADER) == [b"set a 0 300 1 noreply\r\nx\r\n", b"get a\r\n",
                                 b"set b 0 0 1\r\ny\r\n"]
    assert world.ran(FOLLOWER) == [b"set a 0 1796000300 1 noreply\r\nx\r\n", b"get a\r\n",
                                   b"set b 0 0 1\r\ny\r\n"]
    assert world.servers[LEADER].data == world.servers[FOLLOWER].data
    assert world.failures() == [] and world.divergences() == []
    assert world.engine.verdicts.compared == 3
