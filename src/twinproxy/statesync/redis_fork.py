"""State sync ``redis-fork``: the new version starts on a snapshot the old one forks at the
sync point.

The proxy holds every client at a request boundary (the barrier), then sends ``BGSAVE`` on a
connection of its own: Redis forks when it executes it, so the snapshot holds exactly what was
executed before the sync point. Clients go on as soon as the reply says the fork happened; they
never wait for the snapshot to be written or loaded. What they send after the sync point is kept
for the new version by the MVE engine, which replays it once the new version has loaded the
snapshot (placed as ``dump.rdb``, or the name its command gives, in its private directory).

Three things Redis needs around the fork, besides the snapshot itself: its own command table
for the engine (:meth:`RedisFork.prepare`); clients blocked in it at the sync point (a ``BLPOP``
waiting for data) released and sent again (:meth:`RedisFork.release_blocked`); and its scripts,
which the snapshot does not hold, loaded into the new version before anything is replayed
(:meth:`RedisFork.after_start`, from those the proxy learned: protocols/redis/scripts.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any

import hiredis
import trio

from twinproxy.protocols.redis import CODEC, CommandTable, RespError, encode_command
from twinproxy.protocols.redis.ownstats import tally
from twinproxy.protocols.redis.scripts import Scripts
from twinproxy.statesync.base import Blocked, StateSync, SyncError, SyncPoint, Version
from twinproxy.statesync.control import READ, ServerControl

__all__ = ["METHOD", "RedisControl", "RedisFork", "SyncError"]

# The update's own logger: these lines tell the update's story beside the lifecycle's.
log = logging.getLogger("twinproxy.update")

POLL = 0.002  # seconds between looks at requests being released from the leader


class RedisFork(StateSync):
    """``BGSAVE`` at the sync point; the snapshot placed in the new version's directory."""

    after_release_step = "writing the snapshot"
    after_start_step = "loading the scripts"

    _control: RedisControl | None = None

    def __init__(self, job: Any):
        super().__init__(job)
        self._own: dict[bytes, tuple[int, int, int]] = {}
        self._scripts: list[tuple[bytes, bytes]] = []  # (SHA1, body) the leader has

    def own_requests(self) -> dict[bytes, tuple[int, int, int]]:
        """COMMAND, INFO persistence, CLIENT LIST, CLIENT UNBLOCK, BGSAVE and CONFIG GET, as
        the old version counts them (see protocols/redis/ownstats.py)."""
        return self._own

    @classmethod
    def check(cls, leader: Version, target: Version) -> str | None:
        if not target.managed:
            return (f"sync redis-fork starts the new version on the snapshot, so {target.name} "
                    "must be a managed version (with a command), not an address")
        return None

    async def prepare(self) -> CommandTable | None:
        """The leader's command table for the engine; then wait until no snapshot or AOF
        rewrite runs, since Redis would refuse the ``BGSAVE`` at the sync point."""
        table = await command_table(self.job.leader, self.job.leader_login, self._own)
        self._control = await RedisControl.open(self.job.leader, self.job.leader_login,
                                                own=self._own)
        await wait_no_save(self._control, self.job.barrier_timeout)
        return table

    async def at_sync_point(self, point: SyncPoint) -> None:
        assert self._control is not None
        await self.release_blocked(self._control, point)
        await fork_snapshot(self._control)
        self._scripts = await scripts_present(self._control, self.job.learned, self.job.number)

    async def release_blocked(self, control: RedisControl, point: SyncPoint) -> None:
        """Clients blocked in the leader at the sync point (a BLPOP waiting for data) are
        released from it with CLIENT UNBLOCK, and the engine sends them again once the
        snapshot is taken: a pop in between would be in the leader's state and not in the
        snapshot's, with no place in the follower's order.

        A blocking request may still be on its way to the server (CLIENT UNBLOCK then finds
        the client not blocked and returns 0): it is tried again until the request came back,
        with data or with the null the unblocking gives. A client's next UNBLOCK goes only
        once the request the last one released came back, so that it releases the next."""
        blocked = point.blocked()
        if not blocked:
            return
        ids = await client_ids(control)
        by_client: dict[str, list[Blocked]] = {}
        for request in blocked:
            host, port = request.local_address
            client_id = ids.get(f"{host}:{port}")
            if client_id is not None and point.release(request):
                by_client.setdefault(client_id, []).append(request)
        released: dict[str, int] = {}  # client id: its requests still out when one was released
        with trio.move_on_after(self.job.barrier_timeout):
            while by_client:
                for client_id, requests in list(by_client.items()):
                    out = sum(1 for r in requests if point.still_out(r))
                    if not out:
                        del by_client[client_id]
                        continue
                    if client_id in released and released[client_id] <= out:
                        continue  # what the last UNBLOCK released has not come back yet
                    released.pop(client_id, None)
                    if await control.call("CLIENT", "UNBLOCK", client_id) == 1:
                        released[client_id] = out
                await trio.sleep(POLL)

    async def after_release(self, workdir: str) -> None:
        assert self._control is not None
        # Of the clients' pause at the sync point, the part Redis spent forking (sync_stats).
        fork_usec = (await self._control.info("stats")).get("latest_fork_usec", "")
        if fork_usec.isdigit():
            self.stats["fork_ms"] = int(fork_usec) / 1000
        path = await snapshot_path(self._control)
        target = self.job.target
        size = place_snapshot(path, workdir, dbfilename(target.command))
        log.info("update %d: snapshot of %d bytes ready for %s", self.job.number, size,
                 target.name)

    async def after_start(self, follower: tuple[str, int]) -> None:
        """The scripts the old version had at the sync point, loaded into the new one before
        anything is replayed: its snapshot does not carry them (protocols/redis/scripts.py)."""
        if not self._scripts:
            return None
        try:
            login = self.job.target.login()
        except LookupError as exc:  # password_env unset since serve checked it
            raise SyncError(f"{self.job.target.name}'s login: {exc}") from None
        # (Redis compiles each: about 50 us for a small one, seconds for 8 MB of them)
        await load_scripts(follower, login, self._scripts, self.job.barrier_timeout + 60)
        self.stats["scripts"] = len(self._scripts)
        log.info("update %d: %d scripts loaded into %s", self.job.number, len(self._scripts),
                 self.job.target.name)
        return None

    async def aclose(self) -> None:
        if self._control is not None:
            await self._control.aclose()
            self._control = None


class RedisControl(ServerControl):
    """A connection of the proxy's own to a Redis server: one request at a time."""

    def __init__(self, stream: trio.SocketStream, address: tuple[str, int],
                 own: dict[bytes, tuple[int, int, int]] | None = None):
        super().__init__(CODEC, stream, address)
        self.own = {} if own is None else own  # what it sent, as the server counts it

    @classmethod
    async def open(cls, address: tuple[str, int],  # type: ignore[override]
                   login: tuple[str, ...] | None = None, timeout: float = 5.0,
                   own: dict[bytes, tuple[int, int, int]] | None = None) -> RedisControl:
        """A connection to ``address``, logged in with ``AUTH *login`` when given; what it
        sends is counted in ``own``.

        Raises:
            SyncError: it cannot connect, or the server refuses the login (the reason names the
                user, never the password).
        """
        control = cls((await ServerControl.open(CODEC, address, timeout)).stream, address, own)
        if login is not None:
            refused = await control.call("AUTH", *login)
            if isinstance(refused, RespError):
                await control.aclose()
                user = login[0] if len(login) == 2 else "default"
                raise SyncError(f"{address[0]}:{address[1]} refused the proxy's login as user "
                                f"{user!r} (the version's username and password): "
                                f"{refused.message.decode('latin-1')}")
        return control

    async def call(self, *words: bytes | str, timeout: float = 10.0) -> Any:
        """Send one command; its reply in canonical form (an error reply is returned, as a
        ``RespError``, not raised). Counted in :attr:`own` once answered."""
        request = encode_command(*words)
        (reply,) = await self.exchange(request, timeout)
        tally(self.own, [w.encode() if isinstance(w, str) else w for w in words[:2]],
              len(request), len(reply.raw))
        return CODEC.canonical(reply)

    async def call_parsed_in_c(self, *words: bytes | str, timeout: float = 10.0) -> Any:
        """Send one command whose reply is large, and return the reply as hiredis parses it
        (RESP2 arrays as lists, an error reply as a ``hiredis.ReplyError``), as it comes: for
        COMMAND's 90 KB on Redis 7.0, the codec's reply reader and :func:`canonical` took 9
        and 2 ms of CPU in the proxy's loop, a wait for every client
        (loadtests/trace_update.py); hiredis takes 2 to 3. Counted in :attr:`own`. Only for
        a connection with nothing else in flight: the codec's reader does not see this reply.

        Raises:
            SyncError: the server closed, or took longer than ``timeout``.
        """
        request = encode_command(*words)
        reader = hiredis.Reader()
        size = 0
        try:
            with trio.fail_after(timeout):
                await self.stream.send_all(request)
                while (value := reader.gets()) is False:
                    data = await self.stream.receive_some(READ)
                    if not data:
                        raise SyncError(f"{self.address[0]}:{self.address[1]} closed the "
                                        f"connection during {words[0]!r}")
                    reader.feed(data)
                    size += len(data)
        except trio.TooSlowError as exc:
            raise SyncError(f"no reply to {words[0]!r} within {timeout:g}s") from exc
        except (OSError, trio.BrokenResourceError, hiredis.ProtocolError) as exc:
            raise SyncError(f"{words[0]!r} failed: {exc}") from exc
        tally(self.own, [w.encode() if isinstance(w, str) else w for w in words[:2]],
              len(request), size)
        return value

    async def info(self, section: str) -> dict[str, str]:
        text = await self.call("INFO", section)
        if isinstance(text, RespError):  # a server at its maxclients, say
            hint = ("; give the proxy its login: password (or password_env) in the version's "
                    "[versions] table" if text.code == b"NOAUTH" else "")
            raise SyncError(f"INFO {section} refused: {text.message.decode('latin-1')}{hint}")
        if not isinstance(text, bytes):
            raise SyncError(f"INFO {section} answered {text!r}")
        fields = {}
        for line in text.decode("latin-1").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key] = value.strip()
        return fields


async def command_table(address: tuple[str, int], login: tuple[str, ...] | None = None,
                        own: dict[bytes, tuple[int, int, int]] | None = None
                        ) -> CommandTable | None:
    """The server's own command table (key positions, flags), or None if it will not say;
    the COMMAND (and the login) counted in ``own``."""
    try:
        control = await RedisControl.open(address, login, own=own)
    except SyncError:
        return None
    try:
        value = await control.call_parsed_in_c("COMMAND")
        if isinstance(value, hiredis.ReplyError):
            return None
        # (in a worker thread: 4 to 5 ms of CPU for Redis 7.0's table, which the proxy's loop
        # would otherwise wait for in one piece; there it gets the interpreter back at least
        # every switch interval, 5 ms)
        return await trio.to_thread.run_sync(CommandTable.from_command_reply, value)
    except Exception:  # an odd table: the built-in one will do
        return None
    finally:
        await control.aclose()


async def client_ids(control: RedisControl) -> dict[str, str]:
    """The server's id of each of its client connections, by the client's address."""
    text = await control.call("CLIENT", "LIST")
    ids = {}
    if isinstance(text, bytes):
        for line in text.decode("latin-1").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "addr" in fields and "id" in fields:
                ids[fields["addr"]] = fields["id"]
    return ids


async def wait_no_save(control: RedisControl, timeout: float) -> None:
    """Wait until the leader neither loads its dataset nor runs a snapshot or AOF rewrite:
    it would refuse the BGSAVE at the sync point (``-LOADING``, or busy saving), after the
    clients were held for it, and the update would roll back for a state that passes."""
    busy = ["the old version did not answer INFO"]
    with trio.move_on_after(timeout):
        while True:
            info = await control.info("persistence")
            busy = list(dict.fromkeys(what for what, field in _BUSY
                                      if info.get(field, "0") != "0"))
            if not busy:
                return
            await trio.sleep(0.02)
    raise SyncError(f"{' and '.join(busy)} after {timeout:g}s")


# What makes Redis refuse a BGSAVE, by its INFO persistence field: named in the update's reason.
_BUSY = (("the old version was still loading its dataset", "loading"),
         ("the old version was still loading its dataset", "async_loading"),
         ("a snapshot was still running", "rdb_bgsave_in_progress"),
         ("an AOF rewrite was still running", "aof_rewrite_in_progress"))


async def fork_snapshot(control: RedisControl) -> None:
    """Pin the sync point: BGSAVE, and return once Redis says it forked.

    Clients must be held (no request in flight but blocked ones) when this is called.

    Raises:
        SyncError: Redis refused the BGSAVE (the reason is Redis's own).
    """
    value = await control.call("BGSAVE")
    if isinstance(value, RespError):
        raise SyncError(f"BGSAVE refused: {value.message.decode('latin-1')}")


async def scripts_present(control: RedisControl, learned: Scripts | None, number: int
                          ) -> list[tuple[bytes, bytes]]:
    """Of the scripts the proxy learned, those the leader has now, (SHA1, body) each: ``SCRIPT
    EXISTS``, at the sync point (a ``SCRIPT FLUSH`` or a restart may have forgotten some, and a
    new version that ran what the old one refuses with -NOSCRIPT would diverge)."""
    if learned is None:
        return []
    if learned.missed:
        log.warning("update %d: %d scripts were not kept (past the %d bytes the proxy keeps): "
                    "an EVALSHA of one will diverge on the new version", number,
                    learned.missed, learned.max_bytes)
    if not learned.shas:
        return []
    scripts = list(learned.bodies.items())
    found = await control.call("SCRIPT", "EXISTS", *(sha for sha, _ in scripts))
    if not isinstance(found, (list, tuple)) or len(found) != len(scripts):
        # (an ACL that denies the proxy's user SCRIPT: an EVALSHA of one diverges, and says so)
        log.warning("update %d: the old version answered SCRIPT EXISTS with %.100r: no script "
                    "is loaded into the new version", number, found)
        return []
    return [script for script, there in zip(scripts, found, strict=True) if there == 1]


async def load_scripts(address: tuple[str, int], login: tuple[str, ...] | None,
                       scripts: list[tuple[bytes, bytes]], timeout: float) -> None:
    """``SCRIPT LOAD`` each script's body into the server at ``address``, in one write.

    Raises:
        SyncError: the server refused one (a script the new version cannot compile), or did
            not answer.
    """
    control = await RedisControl.open(address, login)
    try:
        raw = b"".join(encode_command(b"SCRIPT", b"LOAD", body) for _, body in scripts)
        replies = await control.exchange(raw, timeout)
        for (sha, _), reply in zip(scripts, replies, strict=True):
            value = CODEC.canonical(reply)
            if value != sha:
                why = value.message.decode("latin-1") if isinstance(value, RespError) \
                    else repr(value)
                raise SyncError(f"the new version did not load script {sha.decode()}, which "
                                f"the old one has: {why}")
    finally:
        await control.aclose()


async def snapshot_path(control: RedisControl, timeout: float = 600.0) -> str:
    """Wait until the BGSAVE just started is written; the file's path.

    Raises:
        SyncError: the save failed or took longer than ``timeout``.
    """
    with trio.move_on_after(timeout) as waiting:
        while True:
            info = await control.info("persistence")
            if info.get("rdb_bgsave_in_progress") == "0":
                break
            await trio.sleep(0.02)
    if waiting.cancelled_caught:
        raise SyncError(f"the snapshot was not written after {timeout:g}s")
    if info.get("rdb_last_bgsave_status") != "ok":
        raise SyncError("the snapshot failed (rdb_last_bgsave_status:"
                        f"{info.get('rdb_last_bgsave_status')}); see the old version's log")
    directory = await control.call("CONFIG", "GET", "dir")
    name = await control.call("CONFIG", "GET", "dbfilename")
    try:
        return os.path.join(directory[1].decode(), name[1].decode())
    except (TypeError, IndexError, AttributeError) as exc:
        raise SyncError(f"cannot tell where the snapshot is ({directory!r}, {name!r})") from exc


def dbfilename(command: tuple[str, ...] | None) -> str:
    """The RDB file name a version's command makes Redis load (``dump.rdb`` by default)."""
    words = list(command or ())
    for i, word in enumerate(words[:-1]):
        if word == "--dbfilename":
            return words[i + 1]
    return "dump.rdb"


def place_snapshot(path: str, workdir: str, name: str = "dump.rdb") -> int:
    """Put the snapshot where the new version loads it from; returns its size in bytes."""
    target = os.path.join(workdir, name)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        try:
            os.link(path, target)  # Redis replaces its dump by rename: the link stays ours
        except OSError:
            shutil.copyfile(path, target)
        return os.path.getsize(target)
    except OSError as exc:
        raise SyncError(f"cannot place the snapshot {path} in {workdir}: {exc}") from exc


METHOD = RedisFork
