"""What the engine's tests drive it with: an engine built for Redis, and a model server.

:class:`ModelServer` is a fake Redis, named as such: a dict that executes GET, SET, INCR, DEL,
SELECT (16 databases for GET, SET, INCR and DEL), PING, CLIENT NO-EVICT, MULTI/EXEC, list pushes
and pops, DEBUG RELOAD (``-LOADING`` to everything until the test ends the load), AUTH to the
users a test gives it (``-NOAUTH`` until then, ``-NOPERM`` for a command the user may not run),
and blocking pops that block as Redis's do (served in the order they blocked, right after the
push that made their key ready; a served client's reply is written before the pusher's, as
redis-server 7.0 writes them), for the engine's scripts and random interleavings, with no socket.
The test decides when it executes which connection's next request, so it can try every order a
real server might choose; it records, per key, which requests touched it in which order, which is
what the engine promises to keep equal on both versions.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twinproxy.compare import Comparator, Rules
from twinproxy.config import UpdateConfig
from twinproxy.engine import Engine
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.protocols.messages import Limits, Request
from twinproxy.protocols.redis import CODEC, encode_command

NAMES = ("old", "new")


def request(*words: bytes | str) -> Request:
    """A Redis request as a client's reader frames it."""
    raw = encode_command(*[w.encode() if isinstance(w, str) else w for w in words])
    [parsed] = CODEC.request_reader().receive(raw)
    return parsed


def whole(data: bytes | list[bytes]) -> bytes:
    """A command's bytes, given as a list of buffers where they were large (Engine._flush)."""
    return b"".join(data) if type(data) is list else data


def raw(*words: bytes | str) -> bytes:
    return request(*words).raw


# A session that keeps its client on its own connections for the whole update: the connection
# the server may not evict for memory is the client's own, so its requests must run there. (A
# SELECT does not: a client in another database shares too.)
OWN = request("CLIENT", "NO-EVICT", "on")


class MemoryStore:
    """The backlog's store, in memory (the relay gives a file)."""

    def __init__(self) -> None:
        self.kept: dict[int, list[bytes]] = {}
        self.records = 0
        self.bytes = 0
        self.fail = False

    def put(self, parts: list[bytes]) -> tuple[int, int]:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.records += 1
        self.bytes += sum(map(len, parts))
        self.kept[self.records] = list(parts)
        return self.records, 0

    def take(self, where: tuple[int, int]) -> list[bytes]:
        return self.kept.pop(where[0])

    def close(self) -> None:
        self.kept.clear()


def new_engine(rules: tuple = (), logins: tuple = (None, None), **settings: Any) -> Engine:
    """An engine for a Redis update from ``old`` to ``new``. Its clients may use the shared
    connection from their first request (``shared_after = 0``) unless a test says otherwise:
    the scripts are about the paths, not about when a client may take the shared one.
    ``logins``: each version's own login (``VersionConfig.login``)."""
    settings.setdefault("shared_after", 0)
    config = UpdateConfig(sync="none", **settings)
    comparator = Comparator(CODEC, Rules(rules, *NAMES))
    return Engine(CODEC, Limits(), config, comparator, NAMES, table=None, new_store=MemoryStore,
                  logins=logins)


def attach(client: int, conn: int, session: tuple[Request, ...] = (),
           blocked: tuple[Request, ...] = (), connected: bool = True,
           replies: Any = None) -> ev.Attach:
    """``replies``: the connection's reply reader, which saw its session (default: a new one)."""
    return ev.Attach(client, f"127.0.0.1:{client}", conn, replies or CODEC.reply_reader(),
                     session, blocked, connected)


class ModelServer:
    """A fake Redis for the engine's tests (see the module docstring)."""

    def __init__(self, name: str):
        self.name = name
        self.data: dict[bytes, bytes] = {}
        self.readers: dict[int, Any] = {}
        self.pending: dict[int, deque[Request]] = {}
        self.history: dict[bytes, list[tuple[int, bytes]]] = {}  # key: (conn, request) in order
        self.multi: dict[int, list[Request] | None] = {}
        self.aborting: set[int] = set()  # connections whose transaction had a request refused
        self.refused: set[str] = set()  # commands nobody may run (as an ACL may deny them)
        self.lists: dict[bytes, list[bytes]] = {}
        self.blocked: dict[int, Request] = {}  # conn: its blocking pop, in the order they blocked
        self.served: list[tuple[int, bytes]] = []  # blocked clients served by the last request
        self.log: list[tuple[int, bytes]] = []  # every request executed: (conn, its bytes)
        self.reset_at = 0  # where in the log CONFIG RESETSTAT set the counts INFO shows to 0
        self.reloading: int | None = None  # the connection whose DEBUG RELOAD is loading
        self.resp3: set[int] = set()  # connections that said HELLO 3
        # The database each connection SELECTed, where not 0: its string keys are the ones
        # stored under "<db>/<key>" (the lists are database 0's only).
        self.selected: dict[int, int] = {}
        self.hello = True  # it knows HELLO (False: a server older than Redis 6)
        # Users and their passwords, and the commands each may run (None: all); empty: no
        # login wanted. The user each connection logged in as.
        self.users: dict[bytes, tuple[bytes, frozenset[str] | None]] = {}
        self.logged_in: dict[int, bytes] = {}

    def connect(self, conn: int) -> None:
        self.readers[conn] = CODEC.request_reader()
        self.pending[conn] = deque()

    def receive(self, conn: int, data: bytes) -> None:
        self.pending[conn].extend(self.readers[conn].receive(data))

    def ready(self) -> list[int]:
        return [conn for conn, queue in self.pending.items()
                if queue and conn not in self.blocked and conn != self.reloading]

    def loaded(self) -> tuple[int, bytes]:
        """The DEBUG RELOAD under way ends: its connection and its reply."""
        conn, self.reloading = self.reloading, None
        assert conn is not None
        return conn, b"+OK\r\n"

    def time_out(self, conn: int) -> bytes:
        """A blocked client's timeout (or CLIENT UNBLOCK): its null."""
        del self.blocked[conn]
        return b"*-1\r\n"

    def execute(self, conn: int) -> bytes | None:
        """Run ``conn``'s next request; its reply's bytes (None: it blocked). Blocked clients it
        served are in :attr:`served`."""
        self.served = []
        req = self.pending[conn].popleft()
        self.log.append((conn, req.raw))
        name = req.name
        if self.reloading is not None:  # (it runs nothing while it loads, as Redis with PING)
            return b"-LOADING Redis is loading the dataset in memory\r\n"
        if name == "DEBUG" and req.args[:1] == [b"RELOAD"]:
            self.reloading = conn  # it answers once loaded() says so
            return None
        if name in self.refused:
            return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % \
                name.lower().encode()
        multi = self.multi.get(conn)
        if multi is None and name in ("EXEC", "DISCARD"):
            return b"-ERR %s without MULTI\r\n" % name.encode()
        if multi is not None and name not in ("EXEC", "DISCARD"):
            if name == "SET" and len(req.args) < 2:  # refused: the transaction will abort
                self.aborting.add(conn)
                return b"-ERR wrong number of arguments for 'set' command\r\n"
            multi.append(req)
            return b"+QUEUED\r\n"
        if name == "MULTI":
            self.multi[conn] = []
            return b"+OK\r\n"
        if name == "EXEC" and conn in self.aborting:
            self.aborting.discard(conn)
            self.multi[conn] = None
            return b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        if name == "EXEC":
            queued, self.multi[conn] = self.multi.get(conn) or [], None
            replies = [self._run(conn, r) for r in queued]
            return b"*%d\r\n" % len(replies) + b"".join(replies)
        if name == "DISCARD":
            self.multi[conn] = None
            self.aborting.discard(conn)
            return b"+OK\r\n"
        return self._run(conn, req)

    def _run(self, conn: int, req: Request) -> bytes:
        name, args = req.name, req.args
        if self.users:
            refused = self._login(conn, req)
            if refused is not None:
                return refused
        if name in ("LPUSH", "RPUSH", "LPOP", "RPOP", "BLPOP", "BRPOP"):
            return self._list(conn, req)
        db = self.selected.get(conn)
        if db and name in ("GET", "SET", "INCR", "DEL"):
            args = [b"%d/%s" % (db, args[0]), *args[1:]]
        if name == "SELECT":
            if len(args) != 1 or not args[0].isdigit() or int(args[0]) >= 16:
                return b"-ERR DB index is out of range\r\n"
            self.selected[conn] = int(args[0])
            return b"+OK\r\n"
        if name == "INCR" and not self.data.get(args[0], b"0").isdigit():
            return b"-ERR value is not an integer or out of range\r\n"  # no effect: no trace
        for key in args[:1] if name in ("GET", "SET", "INCR", "DEL") else ():
            self.history.setdefault(key, []).append((conn, req.raw))
        if name == "PING" or (name == "CLIENT" and args[0].upper() == b"NO-EVICT"):
            return b"+PONG\r\n" if name == "PING" else b"+OK\r\n"
        if name == "INFO":
            return self._info()
        if name == "CONFIG" and args[:1] == [b"RESETSTAT"]:
            self.reset_at = len(self.log)
            return b"+OK\r\n"
        if name == "HELLO" and self.hello:
            return self._hello(conn, args[0] if args else None)
        if name == "GET":
            value = self.data.get(args[0])
            if value is None:
                return b"_\r\n" if conn in self.resp3 else b"$-1\r\n"
            return b"$%d\r\n%s\r\n" % (len(value), value)
        if name == "SET":
            self.data[args[0]] = args[1]
            return b"+OK\r\n"
        if name == "INCR":
            value = int(self.data.get(args[0], b"0")) + 1
            self.data[args[0]] = b"%d" % value
            return b":%d\r\n" % value
        if name == "DEL":
            return b":%d\r\n" % (self.data.pop(args[0], None) is not None)
        return b"-ERR unknown command\r\n"

    def _login(self, conn: int, req: Request) -> bytes | None:
        """AUTH and HELLO's AUTH, and what a connection may run (None: go on with ``req``)."""
        args = req.args
        words = [a.upper() for a in args]
        if req.name == "AUTH" or (req.name == "HELLO" and b"AUTH" in words):
            user, password = (args[0], args[1]) if req.name == "AUTH" and len(args) == 2 \
                else (b"default", args[0]) if req.name == "AUTH" \
                else (args[words.index(b"AUTH") + 1], args[words.index(b"AUTH") + 2])
            if self.users.get(user, (None,))[0] != password:
                return b"-WRONGPASS invalid username-password pair\r\n"
            self.logged_in[conn] = user
            return b"+OK\r\n" if req.name == "AUTH" else None
        user = self.logged_in.get(conn)
        if user is None:
            return b"-NOAUTH Authentication required.\r\n"
        allowed = self.users[user][1]
        if allowed is not None and req.name not in allowed:
            return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % \
                req.name.lower().encode()
        return None

    def _hello(self, conn: int, version: bytes | None) -> bytes:
        """HELLO: the connection's protocol from now on, and a part of what Redis tells."""
        if version not in (None, b"2", b"3"):
            return b"-NOPROTO unsupported protocol version\r\n"
        if version is not None:
            (self.resp3.add if version == b"3" else self.resp3.discard)(conn)
        proto = b"3" if conn in self.resp3 else b"2"
        fields = b"$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:%s\r\n" % proto
        return (b"%2\r\n" if proto == b"3" else b"*4\r\n") + fields

    def _info(self) -> bytes:
        """INFO's counts, as redis-server shows them: every request run since the last CONFIG
        RESETSTAT (this INFO too), and PING's and HELLO's calls."""
        log = self.log[self.reset_at:]
        text = b"# Stats\r\ntotal_commands_processed:%d\r\n\r\n# Commandstats\r\n" % len(log)
        for name in (b"PING", b"HELLO"):
            calls = sum(1 for _, raw in log if CODEC.request_reader().receive(raw)[0].name ==
                        name.decode())
            if calls:
                text += (b"cmdstat_%s:calls=%d,usec=%d,usec_per_call=1.00,rejected_calls=0,"
                         b"failed_calls=0\r\n" % (name.lower(), calls, calls))
        return b"$%d\r\n%s\r\n" % (len(text), text)

    def _list(self, conn: int, req: Request) -> bytes | None:
        """Lists, and blocking pops (which block while all their keys are empty)."""
        name, args = req.name, req.args
        if name in ("BLPOP", "BRPOP"):
            reply = self._pop_any(conn, req)
            if reply is None:
                self.blocked[conn] = req
            return reply
        key = args[0]
        self.history.setdefault(key, []).append((conn, req.raw))
        items = self.lists.setdefault(key, [])
        if name in ("LPUSH", "RPUSH"):
            for value in args[1:]:
                items.insert(0, value) if name == "LPUSH" else items.append(value)
            length = len(items)
            for waiter, blocked in list(self.blocked.items()):
                if key in blocked.args[:-1] and self.lists.get(key):
                    del self.blocked[waiter]
                    self.served.append((waiter, self._pop_any(waiter, blocked)))
            return b":%d\r\n" % length
        if not items:
            return b"$-1\r\n"
        value = items.pop(0) if name == "LPOP" else items.pop()
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def _pop_any(self, conn: int, req: Request) -> bytes | None:
        for key in req.args[:-1]:
            items = self.lists.get(key)
            if items:
                value = items.pop(0) if req.name == "BLPOP" else items.pop()
                self.history.setdefault(key, []).append((conn, req.raw))
                return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value),
                                                                   value)
        return None


class World:
    """An engine with a model leader and follower wired to it: the commands it emits are
    carried out as the relay would (bytes to the servers, replies to the clients)."""

    def __init__(self, engine: Engine | None = None):
        self.engine = engine or new_engine()
        self.servers = (ModelServer("leader"), ModelServer("follower"))
        self.role: dict[int, int] = {}  # conn id -> the server it goes to
        self.delivered: dict[int, bytearray] = {}
        self.closed_clients: set[int] = set()
        self.notices: list[cmd.Command] = []
        self.handbacks: list[cmd.Handback] = []
        self.leader_conns: dict[int, int] = {}  # client: its leader connection at the start
        self.ended: set[int] = set()  # connections shut or closed: nothing may be sent on them

    def feed(self, event: ev.Event) -> None:
        queue = deque([event])
        while queue:
            for command in self.engine.handle(queue.popleft()):
                follow = self._do(command)
                if follow is not None:
                    queue.append(follow)

    def _do(self, command: cmd.Command) -> ev.Event | None:
        kind = type(command)
        if kind is cmd.Send:
            assert command.conn not in self.ended, f"a send on {command.conn} after its end"
            self.servers[self.role[command.conn]].receive(command.conn, whole(command.data))
        elif kind is cmd.Deliver:
            self.delivered.setdefault(command.client, bytearray()).extend(command.data)
        elif kind is cmd.DeliverAll:
            for client, data in command.replies.items():
                self.delivered.setdefault(client, bytearray()).extend(whole(data))
        elif kind is cmd.Open:
            self.role[command.conn] = command.role
            self.servers[command.role].connect(command.conn)
            return ev.Connected(command.conn)
        elif kind is cmd.SetRole:
            pass
        elif kind is cmd.CloseClient:
            self.closed_clients.add(command.client)
        elif kind is cmd.Handback:
            self.handbacks.append(command)
        elif kind is cmd.Close or kind is cmd.Shutdown:
            self.ended.add(command.conn)
        elif kind is cmd.Log:
            pass
        else:
            self.notices.append(command)
        return None

    def attach(self, client: int, conn: int, session: tuple[Request, ...] = ()) -> None:
        self.leader_conns[client] = conn
        self.role[conn] = 0
        self.servers[0].connect(conn)
        replies = CODEC.reply_reader()
        for req in session:  # what SINGLE mode sent before the update, answered already
            self.servers[0].receive(conn, req.raw)
            replies.expect(req)
            replies.receive(self.servers[0].execute(conn))
        self.feed(attach(client, conn, session, replies=replies))

    def run(self, role: int, conn: int, served_first: bool = True) -> None:
        """The server of ``role`` executes ``conn``'s next request and replies; the blocked
        clients it served reply too, before it (as redis-server 7.0 writes them) or after."""
        server = self.servers[role]
        reply = server.execute(conn)
        served = [ev.Data(waiter, raw) for waiter, raw in reversed(server.served)]
        if served_first:
            for event in served:
                self.feed(event)
        if reply is not None:
            self.feed(ev.Data(conn, reply))
        if not served_first:
            for event in served:
                self.feed(event)

    def loaded(self, role: int) -> None:
        """The server of ``role`` has loaded its dataset: its DEBUG RELOAD is answered."""
        self.feed(ev.Data(*self.servers[role].loaded()))

    def time_out(self, role: int, conn: int) -> None:
        """A blocked client of the server of ``role`` times out."""
        self.feed(ev.Data(conn, self.servers[role].time_out(conn)))

    def settle(self, limit: int = 10000) -> None:
        """Let both servers answer everything (leader first), flushing after each reply."""
        for _ in range(limit):
            self.feed(ev.Flush())
            progressed = False
            for role in (0, 1):
                for conn in self.servers[role].ready():
                    self.run(role, conn)
                    progressed = True
            if not progressed:
                self.feed(ev.Flush())
                if not any(s.ready() for s in self.servers):
                    return
        raise AssertionError("the servers never settled")

    def failures(self) -> list[str]:
        return [n.reason for n in self.notices if isinstance(n, cmd.Failed)]

    def divergences(self) -> list[cmd.Diverged]:
        return [n for n in self.notices if isinstance(n, cmd.Diverged)]
