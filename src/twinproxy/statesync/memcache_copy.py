"""State sync ``memcache-copy``: the new memcached gets a copy of the old one's items as they
were at the sync point, through memcached's own protocol.

memcached has no snapshot, so the copy is read from the running server while clients write, and
the proxy, which sees every request, tells which items those writes may have changed (see
``docs/design.md``, "State sync", for why this is exact):

0. :meth:`MemcacheCopy.watch`, from before the first read until the sync point: the relay shows
   the method every request it sends to the leader, and the method notes the keys of the writes
   (``touch`` and ``gat`` too: they change the expiry). memcached's own log of evictions
   (``watch evictions``) adds the keys it drops by itself.
1. :meth:`MemcacheCopy.prepare`, clients flowing: ``lru_crawler metadump hash`` lists every item
   (key, absolute expiry, CAS token), read as it streams; ``mg <key> v f t c``, pipelined, reads
   each batch of keys, and the items go to a file (:class:`Records`), never all in memory. Then
   the keys written meanwhile are read again (and the ones written during that, until few are),
   so that step 2 has only the last moments' writes to read. A write still in flight when its
   key is read keeps its key for the next read; ``noreply`` and quiet writes (whose end no
   reply shows) are read again at the sync point.
2. :meth:`MemcacheCopy.at_sync_point`, clients held at the barrier, nothing in flight: only the
   keys written (or evicted) since they were last read are read again; clients wait for those
   alone, not for a dump of every item (and for memcached's eviction log to catch up).
3. :meth:`MemcacheCopy.after_start`, clients flowing, the new version up and nothing replayed to
   it yet: the file, batch by batch, as ``ms <key> <size> F<flags> T<absolute expiry> c`` (and
   ``md`` for a key read again and gone); the last record of a key is its state at the sync
   point. ``c`` returns the new version's token, so the leader's token of each item maps to the
   follower's (:mod:`twinproxy.protocols.memcache.tokens`).

Then the engine replays what clients sent after the sync point, each request once.
"""

from __future__ import annotations

import binascii
import gc
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO
from urllib.parse import unquote_to_bytes

import msgpack
import trio

from twinproxy.protocols.memcache import CODEC, Meta
from twinproxy.protocols.memcache.tokens import name
from twinproxy.protocols.messages import LocalProtocolError, Reply, Request
from twinproxy.statesync.base import Address, StateSync, SyncError, SyncJob, SyncPoint, Version
from twinproxy.statesync.control import ServerControl

__all__ = ["METHOD", "MemcacheCopy", "Records", "memory_limit"]

log = logging.getLogger("twinproxy.update")

BATCH = 4000  # requests per pipelined exchange; the most items in memory at once
BUSY_RETRY = 0.02  # seconds between tries when memcached's crawler is busy with another dump
REFRESH_UNTIL = 500  # before the barrier, keys written are read again until fewer are left
REFRESH_ROUNDS = 4  # ... or this many rounds were made
EVICTION_LOG_WAIT = 2.0  # seconds the sync point waits for memcached's log of evictions
# What the reply reader needs of the copy's requests (all of one shape, none quiet).
_MG = Request(b"", "mg", [b"-", b"v", b"f", b"t", b"c"])
_MS = Request(b"", "ms", [b"-", b"0", b"c"])
_MD = Request(b"", "md", [b"-"])
_STATS = Request(b"", "stats", [])
_SETTINGS = Request(b"", "stats", [b"settings"])
NEVER = b"-1"  # metadump's exp of an item without expiry

Record = tuple  # (key, flags, exp, cas, data) for an item; (key,) for a key the leader lacks


def memory_limit(command: tuple[str, ...] | None) -> str:
    """The ``-m`` (``--memory-limit``) a memcached command gives, as written (memcached's
    default, 64 MB, when none)."""
    words = list(command or ())
    value = "64"
    for i, word in enumerate(words):
        if word in ("-m", "--memory-limit") and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith("--memory-limit="):
            value = word.partition("=")[2]
        elif word.startswith("-m") and len(word) > 2 and not word.startswith("--"):
            value = word[2:]
    return value


def _no_cas(command: tuple[str, ...] | None) -> bool:
    return any(w in ("-C", "--disable-cas") for w in command or ())


def _key_token(key: bytes) -> tuple[bytes, bytes]:
    """The key as a meta request names it, and the flag that says how (``b``: base64, for a key
    with bytes a text token cannot hold)."""
    if all(32 < c < 127 for c in key):
        return key, b""
    return binascii.b2a_base64(key, newline=False), b" b"


class Records:
    """The items read from the leader, in the order read, in an unlinked temporary file (nothing
    is left behind whatever happens): a later record of a key replaces an earlier one. Written
    and read a batch at a time, so memory holds one batch, whatever the item count."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.records = 0
        self.bytes = 0

    def put(self, batch: list[Record]) -> None:
        if batch:
            data = msgpack.packb(batch, use_bin_type=True)
            self._file.write(data)
            self.records += len(batch)
            self.bytes += len(data)

    def batches(self) -> Iterator[Sequence[Record]]:
        """Every batch put, in order (once :meth:`put` is done)."""
        self._file.flush()
        self._file.seek(0)
        # Tuples of bytes, not lists: the collector stops tracking them at its first pass,
        # so a batch held across the copy's awaits is not promoted to the oldest generation
        # (whose full passes, each over every client request held for the replay, are what
        # clients wait for during the copy; see loadtests/reports/memcache_update.md).
        yield from msgpack.Unpacker(self._file, raw=False, use_list=False,
                                    max_buffer_size=1 << 31)

    def close(self) -> None:
        self._file.close()


class MemcacheCopy(StateSync):
    """Items read from the leader before and at the sync point, written into the new version
    once it is up."""

    after_start_step = "copying the items"

    def __init__(self, job: SyncJob):
        super().__init__(job)
        self.records = Records()
        self.written: set[bytes] = set()  # keys written (or evicted) since they were last read
        self.sticky: set[bytes] = set()  # keys written by requests no reply shows the end of
        self._in_flight: Callable[[], Iterable[Request]] = tuple
        self.flushed: str | None = None  # a request that wrote everything during the copy
        self._leader: ServerControl | None = None
        self._evictions: Evictions | None = None
        self._evicted_at_start = 0
        self.stats: dict[str, float] = {}
        # The leader's clock: how its absolute expiries count relative to stats' time (seen:
        # one second more), and to the proxy's clock (seen: 1.5 s behind; it ticks once a
        # second), from the items whose expiry the dump gave.
        self._frames: dict[int, tuple[int, float]] = {}  # frame -> (items, clock ahead)

    @classmethod
    def check(cls, leader: Version, target: Version) -> str | None:
        """Refuse what would make the copy wrong or the update roll back: memcached without
        CAS (``ms ... c`` maps each item's tokens), and a memory limit that differs (the two
        would evict different items, and every read of one diverges)."""
        for version in (leader, target):
            if _no_cas(version.command):
                return (f"sync memcache-copy needs CAS tokens, but {version.name} runs with -C "
                        "(--disable-cas)")
        if leader.managed and target.managed:
            a, b = memory_limit(leader.command), memory_limit(target.command)
            if a != b:
                return (f"{target.name}'s memory limit (-m {b}) differs from {leader.name}'s "
                        f"(-m {a}): the two would evict different items and the update would "
                        "roll back on the first read of one; give both the same -m")
        return None

    # ---- the steps ----------------------------------------------------------------------------

    def watch(self, in_flight: Callable[[], Iterable[Request]]) -> Callable[[Request], object]:
        """Note the keys of the writes the relay sends the leader (see the module's doc)."""
        self._in_flight = in_flight
        return self._note

    def _note(self, request: Request) -> None:
        try:
            CODEC.describe(request)
        except LocalProtocolError:  # not a command it knows: memcached refuses it too
            return
        if request.write:
            if request.is_global:
                self.flushed = request.name
            else:
                self.written.update(request.keys)
                if request.replies == 0:
                    # noreply, or quiet: the proxy does not see when it took effect (a later
                    # reply on its connection counts it as answered): read it again at the
                    # sync point, when the barrier settled every one.
                    self.sticky.update(request.keys)

    async def prepare(self) -> None:
        """The bulk of the copy, while clients flow: every item once, then the keys written
        meanwhile until few are left."""
        start = time.monotonic()
        self._evictions = await Evictions.open(self.job.leader, self.job.barrier_timeout + 60)
        self._leader = await ServerControl.open(CODEC, self.job.leader)
        self._evicted_at_start = await self._evicted()  # after the log began: none missed
        listed = 0
        for batch in await self._dump():
            _spare_the_collector()
            listed += len(batch)
            await self._read(batch)
        self.stats["precopy_listed"] = listed
        if self._frames:  # else no item had an expiry: the proxy's clock, as before
            frames = self._frames
            self.leader_clock = frames[max(frames, key=lambda f: frames[f][0])][1]
        rounds = 0
        while rounds < REFRESH_ROUNDS and len(self.written) >= REFRESH_UNTIL:
            await self._read_again()
            rounds += 1
        self._refused()
        self.stats["precopy_s"] = time.monotonic() - start
        self.stats["precopy_items"] = self.records.records
        log.info("update %d: %d items read before the sync point in %.2fs (%d keys read again "
                 "in %d rounds; the leader's clock %+.2fs from ours)", self.job.number, listed,
                 self.stats["precopy_s"], self.records.records - listed, rounds,
                 self.leader_clock)
        return None

    async def at_sync_point(self, point: SyncPoint) -> None:
        """Clients held: the keys written since they were last read, read again."""
        start = time.monotonic()
        self.stats["sync_point_reread"] = await self._read_again(held=True)
        self._refused()
        self.stats["sync_point_s"] = time.monotonic() - start
        log.info("update %d: at the sync point, %d keys written since they were read, "
                 "read again in %.3fs", self.job.number, self.stats["sync_point_reread"],
                 self.stats["sync_point_s"])

    async def after_start(self, follower: Address) -> dict[int, int]:
        """Write every item into the new version; the leader's name of each version (its key
        and token, :func:`~twinproxy.protocols.memcache.tokens.name`) to the new version's."""
        start = time.monotonic()
        control = await ServerControl.open(CODEC, follower)
        ids: dict[int, int] = {}
        written = 0
        try:
            await self._same_memory_limit(control)
            for batch in self.records.batches():
                _spare_the_collector()
                now = time.time()
                raw = []
                shapes = []
                for record in batch:
                    key, flag = _key_token(record[0])
                    if len(record) == 1 or (record[2] != NEVER and int(record[2]) <= now):
                        # Gone from the leader (or expired since): an earlier record of the
                        # key must not stay.
                        raw.append(b"md %s%s\r\n" % (key, flag))
                        shapes.append(_MD)
                        continue
                    _, flags, exp, _, data = record
                    raw.append(b"ms %s %d F%s%s%s c\r\n%s\r\n" % (
                        key, len(data), flags, b"" if exp == NEVER else b" T" + exp, flag, data))
                    shapes.append(_MS)
                replies = await control.exchange(b"".join(raw), self.job.barrier_timeout + 60,
                                                 shapes)
                for record, reply in zip(batch, replies, strict=True):
                    value = reply.value
                    if not isinstance(value, Meta) or value.code not in (b"HD", b"NF"):
                        raise SyncError(f"the new version refused item {record[0][:60]!r}: "
                                        f"{reply.raw[:80]!r}")
                    for flag in value.flags:
                        if flag[:1] == b"c":
                            key = record[0]
                            ids[name(key, int(record[3]))] = name(key, int(flag[1:]))
                            written += 1
        finally:
            await control.aclose()
            self.records.close()
        self.stats["copy_s"] = time.monotonic() - start
        self.stats["copied"] = written
        log.info("update %d: %d items copied into %s in %.2fs", self.job.number, written,
                 self.job.target.name, self.stats["copy_s"])
        return ids

    async def _same_memory_limit(self, follower: ServerControl) -> None:
        """Refuse a new version with another memory limit than the leader's, as :meth:`check`
        does from the commands: asked of the servers themselves (``stats settings``), for
        versions given by their address, whose commands the config does not hold. Here, before
        any item is written and before MVE, it fails the update with the reason instead of
        rolling it back on the first read of an item one of them evicted."""
        assert self._leader is not None
        timeout = self.job.barrier_timeout + 60
        limits = []
        for server in (self._leader, follower):
            (settings,) = await server.exchange(b"stats settings\r\n", timeout, [_SETTINGS])
            limits.append(_stat(settings, b"maxbytes"))
        if limits[0] != limits[1]:
            mb = [f"{n / 2**20:g} MB" for n in limits]
            raise SyncError(f"{self.job.target.name}'s memory limit ({mb[1]}, stats settings "
                            f"maxbytes {limits[1]}) differs from the running version's ({mb[0]}, "
                            f"maxbytes {limits[0]}): the two would evict different items; give "
                            "both the same -m")

    async def aclose(self) -> None:
        gc.unfreeze()  # what the copy froze goes back to the collector (its oldest generation)
        self.records.close()
        for connection in (self._leader, self._evictions):
            if connection is not None:
                await connection.aclose()
        self._leader = self._evictions = None

    # ---- reading the leader -------------------------------------------------------------------

    def _refused(self) -> None:
        """A write to every item during the copy (``flush_all``; memory moved by ``slabs`` or
        ``cache_memlimit``) could have changed items the copy does not know of: refuse."""
        if self.flushed is not None:
            raise SyncError(f"a client sent {self.flushed!r} during the copy, which changes "
                            "every item; the update rolls back: ask for it again")

    async def _read_again(self, held: bool = False) -> int:
        """Read again the keys written (or evicted) since they were last read; how many.
        ``held``: at the sync point, where every write the relay sent has taken effect."""
        assert self._evictions is not None
        self.written.update(await self._evictions.keys())
        keys, self.written = self.written, set()
        # A write sent before this and not answered yet may take effect after the read below:
        # its key stays for the next read. (No await between: the relay does not run.)
        for request in self._in_flight():
            self._note(request)
        if held:
            keys |= self.sticky | await self._last_evictions()
        ordered = list(keys)
        for i in range(0, len(ordered), BATCH):
            await self._read({key: None for key in ordered[i:i + BATCH]})
        return len(ordered)

    async def _evicted(self) -> int:
        """``stats``' count of evictions on the leader."""
        assert self._leader is not None
        (stats,) = await self._leader.exchange(b"stats\r\n", self.job.barrier_timeout + 60,
                                               [_STATS])
        return _stat(stats, b"evictions")

    async def _last_evictions(self) -> set[bytes]:
        """At the sync point: the evictions memcached's log has not shown yet (its logger
        thread writes a moment later), waited for until the log has as many as ``stats``
        counts since the watch began."""
        assert self._evictions is not None
        want = await self._evicted() - self._evicted_at_start
        keys: set[bytes] = set()
        with trio.move_on_after(EVICTION_LOG_WAIT):
            while self._evictions.lines < want:
                keys.update(await self._evictions.keys())
            return keys
        raise SyncError(f"memcached counted {want} evictions during the copy but logged "
                        f"{self._evictions.lines} within {EVICTION_LOG_WAIT:g}s: evicted items "
                        "may not be known; the update rolls back")

    async def _read(self, batch: dict[bytes, tuple[bytes, bytes] | None]) -> None:
        """Read ``batch``'s keys from the leader into :attr:`records`; a key the leader no
        longer has gets a record that says so. ``batch``: key -> (exp, token) as the dump
        listed it, or None."""
        assert self._leader is not None
        keys = list(batch)
        raw = b"".join(b"mg %s v f t c%s\r\n" % _key_token(key) for key in keys)
        # The seconds left that mg shows count on the leader's clock, which ticks once a
        # second on its own: its time, not the proxy's, makes them an absolute expiry.
        stats, *replies = await self._leader.exchange(
            b"stats\r\n" + raw, self.job.barrier_timeout + 60, [_STATS] + [_MG] * len(keys))
        stats_now, read_at = _server_time(stats), time.time()
        frames = self._frames
        now = stats_now + (max(frames, key=lambda f: frames[f][0]) if frames else 0)
        out: list[Record] = []
        for key, reply in zip(keys, replies, strict=True):
            value = reply.value
            if not isinstance(value, Meta) or value.code not in (b"VA", b"EN"):
                raise SyncError(f"mg {key[:60]!r} answered {reply.raw[:80]!r}")
            if value.code == b"EN":
                out.append((key,))
                continue
            fields = {f[:1]: f[1:] for f in value.flags}
            cas = fields[b"c"]
            listed = batch[key]
            if listed is not None and listed[1] == cas:
                exp = listed[0]
                if exp != NEVER:  # the leader's clock, as it counts absolute expiries
                    leader_now = int(exp) - int(fields[b"t"])
                    frame = leader_now - stats_now
                    # A touch since the dump moves an item's expiry without a new token: such
                    # an item says nothing of the clock. The most common frame is the clock's.
                    count, ahead = frames.get(frame, (0, -3600.0))
                    frames[frame] = (count + 1, max(ahead, leader_now - read_at))
            else:  # not listed, or written since: its TTL as mg says, to the second
                ttl = int(fields[b"t"])
                exp = NEVER if ttl < 0 else b"%d" % (now + ttl)
            out.append((key, fields[b"f"], exp, cas, value.data or b""))
        self.records.put(out)
        if self._evictions is not None:
            self.written.update(await self._evictions.keys())

    async def _dump(self) -> Iterator[dict[bytes, tuple[bytes, bytes]]]:
        """``lru_crawler metadump hash``: batches of key -> (exp, token).

        The dump is read to its end into a file before any key is read with ``mg``: memcached's
        crawler holds the lock of the items it is at while it waits for the dump's reader, so
        an ``mg`` sent meanwhile can wait for the dump, which waits for the ``mg``."""
        timeout = self.job.barrier_timeout + 60
        with trio.move_on_after(timeout):
            while True:
                spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _batches)
                try:
                    first = await _metadump(self.job.leader, timeout, spool)
                except BaseException:
                    spool.close()
                    raise
                if first.startswith(b"key=") or first.startswith(b"END"):
                    return _batches(spool)
                spool.close()
                if not first.startswith(b"BUSY"):
                    raise SyncError(f"lru_crawler metadump hash refused: {first[:120]!r} (a "
                                    "memcached before 1.6.x without the hash walk, or the LRU "
                                    "crawler disabled with -o no_lru_crawler?)")
                await trio.sleep(BUSY_RETRY)  # another crawl runs (a client's, or automove)
        raise SyncError(f"the LRU crawler stayed busy for {timeout:g}s")


def _spare_the_collector() -> None:
    """Between two batches of the copy: set every object alive aside from the collector's
    passes (``gc.freeze``) until :meth:`MemcacheCopy.aclose` gives them back. A batch's replies
    outlive the awaits of its exchange and reach the oldest generation, and CPython makes a full
    pass each time that generation grows by a quarter: a pass over every client request held
    for the replay, which grows with the copy, and for which every client waits (up to 1.3 s at
    1,000,000 items, loadtests/reports/memcache_update.md). Frozen objects still go when
    nothing refers to them; only cycles among them wait for the unfreeze."""
    gc.freeze()


def _stat(reply: Reply, name: bytes) -> int:
    """One number of a ``stats`` reply."""
    head = b"STAT " + name + b" "
    for line in getattr(reply.value, "lines", ()):
        if line.startswith(head):
            return int(line[len(head):])
    raise SyncError(f"stats answered without {name.decode()}: {reply.raw[:120]!r}")


def _server_time(reply: Reply) -> int:
    """``stats``' ``time``: the server's clock now, which its expiries count by."""
    return _stat(reply, b"time")


async def _open(address: Address, timeout: float) -> trio.SocketStream:
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(*address)
    except (OSError, trio.TooSlowError) as exc:
        raise SyncError(f"cannot connect to the leader {address[0]}:{address[1]}: {exc}") from exc


async def _metadump(address: Address, timeout: float, spool: IO[bytes]) -> bytes:
    """``lru_crawler metadump hash`` on a connection of its own (memcached refuses one
    pipelined after other requests), written to ``spool`` up to its ``END``; returns the
    start of what came (the one line memcached answered instead: BUSY, an error)."""
    stream = await _open(address, timeout)
    try:
        with trio.fail_after(timeout):
            await stream.send_all(b"lru_crawler metadump hash\r\n")
            first = b""
            tail = b""
            while True:
                data = await stream.receive_some(1 << 18)
                if not data:
                    raise SyncError("the leader closed the connection during its metadump")
                if not first:
                    first = data[:200]
                    if not (first.startswith(b"key=") or first.startswith(b"END")):
                        while b"\r\n" not in first:  # the one line, whole
                            more = await stream.receive_some(200)
                            if not more:
                                break
                            first += more
                        return first
                spool.write(data)
                tail = (tail + data)[-8:]
                if tail.endswith(b"END\r\n"):
                    return first
    except trio.TooSlowError as exc:
        raise SyncError(f"the leader's metadump took longer than {timeout:g}s") from exc
    except OSError as exc:
        raise SyncError(f"the leader's metadump failed: {exc}") from exc
    finally:
        await stream.aclose()


def _batches(spool: IO[bytes]) -> Iterator[dict[bytes, tuple[bytes, bytes]]]:
    """The dump in ``spool``, parsed a batch of keys at a time; closes it at the end."""
    try:
        spool.seek(0)
        pending = b""
        batch: dict[bytes, tuple[bytes, bytes]] = {}
        while True:
            data = spool.read(1 << 18)
            pending += data
            cut = pending.rfind(b"\n") if data else len(pending)
            if cut >= 0:
                batch.update(_parse_dump(pending[:cut + 1]))
                pending = pending[cut + 1:]
            if len(batch) >= BATCH or (not data and batch):
                yield batch
                batch = {}
            if not data:
                return
    finally:
        spool.close()


_DUMP_LINE = re.compile(rb"key=(\S+) exp=(\S+) la=\S+ cas=(\S+)")


def _parse_dump(text: bytes) -> dict[bytes, tuple[bytes, bytes]]:
    """metadump's ``key=<url-encoded> exp=<absolute or -1> la=<n> cas=<n> ...`` lines: key ->
    (exp, cas), both as written."""
    return {unquote_to_bytes(key) if b"%" in key else key: (exp, cas)
            for key, exp, cas in _DUMP_LINE.findall(text)}


_EVICTED = re.compile(rb"type=eviction key=(\S+)")


class Evictions:
    """memcached's log of the items it evicts (``watch evictions``), read without waiting: the
    keys the copy must read again, since no client's write named them."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.pending = b""
        self.lines = 0  # evictions logged so far

    @classmethod
    async def open(cls, address: Address, timeout: float) -> Evictions:
        stream = await _open(address, timeout)
        try:
            with trio.fail_after(timeout):
                await stream.send_all(b"watch evictions\r\n")
                answer = b""
                while not answer.endswith(b"\r\n"):
                    data = await stream.receive_some(64)
                    if not data:
                        break
                    answer += data
        except (OSError, trio.TooSlowError) as exc:
            await stream.aclose()
            raise SyncError(f"watch evictions failed: {exc}") from exc
        if answer != b"OK\r\n":
            await stream.aclose()
            raise SyncError(f"watch evictions refused: {answer[:120]!r}")
        return cls(stream)

    async def keys(self) -> Iterable[bytes]:
        """The keys evicted since the last call (as logged, and url-decoded: both are read).

        Raises:
            SyncError: memcached dropped log lines (the proxy read them too slowly), so some
                evictions are not known.
        """
        while True:
            with trio.move_on_after(0.002):  # what is there now; never a real wait
                data = await self.stream.receive_some(1 << 18)
                if not data:
                    raise SyncError("the leader closed its eviction log")
                self.pending += data
                continue
            break
        cut = self.pending.rfind(b"\n")
        if cut < 0:
            return ()
        lines, self.pending = self.pending[:cut + 1], self.pending[cut + 1:]
        if b"skipped" in lines:
            raise SyncError("memcached skipped lines of its eviction log during the copy: "
                            "evicted items may not be known; the update rolls back")
        found = _EVICTED.findall(lines)
        self.lines += len(found)
        keys = set(found)
        return keys | {unquote_to_bytes(key) for key in keys if b"%" in key}

    async def aclose(self) -> None:
        await self.stream.aclose()


METHOD = MemcacheCopy
