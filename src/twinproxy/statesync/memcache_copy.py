"""State sync ``memcache-copy``: the new memcached gets a copy of the old one's items as they
were at the sync point, through memcached's own protocol.

memcached has no snapshot, so the copy is read from the running server in two passes and the
second one is taken while clients are held (see ``docs/design.md``, "State sync", for why this
is exact):

1. :meth:`MemcacheCopy.prepare`, clients flowing: ``lru_crawler metadump hash`` lists every item
   (key, absolute expiry, CAS token); ``mg <key> v f t c``, pipelined, reads each one's value,
   flags and token. This is the bulk of the work. Then once more what step 2 does, so that
   step 2 finds only the changes of the last moments.
2. :meth:`MemcacheCopy.at_sync_point`, clients held at the barrier, nothing in flight: a second
   metadump. memcached gives every stored item version a new token from one counter, so an item
   whose token is the one the first pass read still holds the value read then; only the items
   whose token changed, the new ones, and the first pass's items the dump no longer lists are
   read again. The expiry of every item comes from this dump (``touch`` keeps the token).
3. :meth:`MemcacheCopy.after_start`, clients flowing, the new version up and nothing replayed to
   it yet: ``ms <key> <size> F<flags> T<absolute expiry> c`` for every item, pipelined. The
   absolute expiry makes both servers expire it in the same second; ``c`` returns the new
   version's token, so the leader's token of each item maps to the follower's
   (:mod:`twinproxy.protocols.memcache.tokens`).

Then the engine replays what clients sent after the sync point, each request once.
"""

from __future__ import annotations

import binascii
import logging
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import trio

from twinproxy.protocols.memcache import CODEC, Meta
from twinproxy.protocols.messages import Request
from twinproxy.statesync.base import Address, StateSync, SyncError, SyncJob, SyncPoint, Version
from twinproxy.statesync.control import ServerControl

__all__ = ["METHOD", "Item", "MemcacheCopy", "memory_limit"]

log = logging.getLogger("twinproxy.update")

BATCH = 4000  # requests per pipelined exchange
BUSY_RETRY = 0.02  # seconds between tries when memcached's crawler is busy with another dump
# What the reply reader needs of the copy's requests (all of one shape, none quiet).
_MG = Request(b"", "mg", [b"-", b"v", b"f", b"t", b"c"])
_MS = Request(b"", "ms", [b"-", b"0", b"c"])
NEVER = b"-1"  # metadump's exp of an item without expiry


@dataclass(slots=True)
class Item:
    """One item as read from the leader."""

    flags: bytes
    data: bytes
    cas: bytes  # the token, as memcached wrote it: compared, never computed with
    exp: bytes  # absolute unix time; NEVER for none


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


class MemcacheCopy(StateSync):
    """Items read from the leader before and at the sync point, written into the new version
    once it is up."""

    after_start_step = "copying the items"

    def __init__(self, job: SyncJob):
        super().__init__(job)
        self.items: dict[bytes, Item] = {}
        self._leader: ServerControl | None = None
        self.stats: dict[str, float] = {}

    @classmethod
    def check(cls, leader: Version, target: Version) -> str | None:
        """Refuse what would make the copy wrong or the update roll back: memcached without
        CAS (the second pass tells changed items by their token), and a memory limit that
        differs (the two would evict different items, and every read of one diverges)."""
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

    async def prepare(self) -> None:
        """The first pass, while clients flow."""
        start = time.monotonic()
        self._leader = await ServerControl.open(CODEC, self.job.leader)
        listed = await self._dump()
        await self._fetch(list(listed), listed)
        # Once more, for what changed during that read: the pass with clients held then has
        # only the changes of the last moments to read again.
        await self._refresh()
        self.stats["precopy_s"] = time.monotonic() - start
        self.stats["precopy_items"] = len(self.items)
        log.info("update %d: %d items read before the sync point in %.2fs", self.job.number,
                 len(self.items), self.stats["precopy_s"])
        return None

    async def at_sync_point(self, point: SyncPoint) -> None:
        """The second pass, while clients are held: only what changed since the first."""
        start = time.monotonic()
        self.stats["sync_point_reread"] = await self._refresh()
        self.stats["sync_point_s"] = time.monotonic() - start
        log.info("update %d: at the sync point, %d items listed and %d read again in %.3fs",
                 self.job.number, len(self.items), self.stats["sync_point_reread"],
                 self.stats["sync_point_s"])

    async def _refresh(self) -> int:
        """A metadump, and the items whose token changed since they were read (or that are new,
        or that the dump no longer lists) read again; how many were."""
        listed = await self._dump()
        items = self.items
        again = []
        for key, (exp, cas) in listed.items():
            item = items.get(key)
            if item is None or item.cas != cas:
                again.append(key)
            else:
                item.exp = exp
        # Not listed: deleted or expired, or passed over by the crawler while the LRU
        # maintainer moved it; asking decides.
        again.extend(key for key in items if key not in listed)
        await self._fetch(again, listed)
        return len(again)

    async def after_start(self, follower: Address) -> dict[int, int]:
        """Write every item into the new version; the leader's token of each to the new
        version's."""
        start = time.monotonic()
        control = await ServerControl.open(CODEC, follower)
        ids: dict[int, int] = {}
        now = time.time()
        try:
            entries = [(key, item) for key, item in self.items.items()
                       if item.exp == NEVER or int(item.exp) > now]
            for i in range(0, len(entries), BATCH):
                batch = entries[i:i + BATCH]
                raw = b"".join(
                    b"ms %s %d F%s%s%s c\r\n%s\r\n" % (
                        *_key_token(key)[:1], len(item.data), item.flags,
                        b"" if item.exp == NEVER else b" T" + item.exp, _key_token(key)[1],
                        item.data)
                    for key, item in batch)
                replies = await control.exchange(raw, self.job.barrier_timeout + 60,
                                                 [_MS] * len(batch))
                for (key, item), reply in zip(batch, replies, strict=True):
                    value = reply.value
                    if not isinstance(value, Meta) or value.code != b"HD":
                        raise SyncError(f"the new version refused item {key[:60]!r}: "
                                        f"{reply.raw[:80]!r}")
                    for flag in value.flags:
                        if flag[:1] == b"c":
                            ids[key, int(item.cas)] = (key, int(flag[1:]))
        finally:
            await control.aclose()
        self.stats["copy_s"] = time.monotonic() - start
        self.stats["copied"] = len(ids)
        log.info("update %d: %d items copied into %s in %.2fs", self.job.number, len(ids),
                 self.job.target.name, self.stats["copy_s"])
        self.items = {}
        return ids

    async def aclose(self) -> None:
        if self._leader is not None:
            await self._leader.aclose()
            self._leader = None

    # ---- reading the leader -------------------------------------------------------------------

    async def _dump(self) -> dict[bytes, tuple[bytes, bytes]]:
        """Every item the crawler lists: key -> (absolute expiry, token).

        A dump needs a connection of its own (memcached refuses one pipelined after other
        requests), and its lines are read here as they are rather than framed by the codec's
        reply reader: they are most of the clients' pause at the sync point."""
        timeout = self.job.barrier_timeout + 60
        with trio.move_on_after(timeout):
            how = b"hash"
            while True:
                text = await _metadump(self.job.leader, timeout, how)
                if text.startswith(b"key=") or text.startswith(b"END"):
                    return _parse_dump(text)
                if text.startswith(b"ERROR") and how == b"hash":
                    how = b"all"  # an older memcached, that walks only the LRUs
                    continue
                if not text.startswith(b"BUSY"):
                    raise SyncError(f"lru_crawler metadump refused: {text[:120]!r} "
                                    "(is the LRU crawler disabled, -o no_lru_crawler?)")
                await trio.sleep(BUSY_RETRY)  # another crawl runs (a client's, or automove)
        raise SyncError(f"the LRU crawler stayed busy for {timeout:g}s")

    async def _fetch(self, keys: list[bytes], listed: dict[bytes, tuple[bytes, bytes]]) -> None:
        """Read ``keys`` from the leader into :attr:`items` (a key it no longer has leaves)."""
        assert self._leader is not None
        items = self.items
        now = int(time.time())
        for i in range(0, len(keys), BATCH):
            batch = keys[i:i + BATCH]
            raw = b"".join(b"mg %s v f t c%s\r\n" % _key_token(key) for key in batch)
            replies = await self._leader.exchange(raw, self.job.barrier_timeout + 60,
                                                  [_MG] * len(batch))
            for key, reply in zip(batch, replies, strict=True):
                value = reply.value
                if not isinstance(value, Meta) or value.code not in (b"VA", b"EN"):
                    raise SyncError(f"mg {key[:60]!r} answered {reply.raw[:80]!r}")
                if value.code == b"EN":
                    items.pop(key, None)
                    continue
                fields = {f[:1]: f[1:] for f in value.flags}
                cas = fields[b"c"]
                known = listed.get(key)
                if known is not None and known[1] == cas:
                    exp = known[0]
                else:  # written since it was listed: its TTL as mg says, to the second
                    ttl = int(fields[b"t"])
                    exp = NEVER if ttl < 0 else b"%d" % (now + ttl)
                items[key] = Item(fields[b"f"], value.data or b"", cas, exp)


async def _metadump(address: Address, timeout: float, how: bytes = b"hash") -> bytes:
    """``lru_crawler metadump hash`` on a connection of its own: the dump's bytes up to its
    ``END``, or the one line memcached answered instead (BUSY, an error).

    ``hash`` walks the hash table, where every item is once; ``all`` walks the LRUs, where
    the LRU maintainer moves items from one to another while the crawl goes, so that one can
    be passed over (seen with 2 of 100,000 items)."""
    stream = None
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(*address)
            await stream.send_all(b"lru_crawler metadump %s\r\n" % how)
            chunks: list[bytes] = []
            tail = b""
            while True:
                data = await stream.receive_some(1 << 18)
                if not data:
                    raise SyncError("the leader closed the connection during its metadump")
                chunks.append(data)
                tail = (tail + data)[-8:]
                if tail.endswith(b"END\r\n") or (not chunks[0].startswith(b"key=") and
                                                  b"\r\n" in b"".join(chunks)):
                    return b"".join(chunks)
    except trio.TooSlowError as exc:
        raise SyncError(f"the leader's metadump took longer than {timeout:g}s") from exc
    except OSError as exc:
        raise SyncError(f"the leader's metadump failed: {exc}") from exc
    finally:
        if stream is not None:
            await stream.aclose()


_DUMP_LINE = re.compile(rb"key=(\S+) exp=(\S+) la=\S+ cas=(\S+)")


def _parse_dump(text: bytes) -> dict[bytes, tuple[bytes, bytes]]:
    """metadump's ``key=<url-encoded> exp=<absolute or -1> la=<n> cas=<n> ...`` lines: key ->
    (exp, cas), both as written (no number is made: this runs while clients are held)."""
    return {unquote_to_bytes(key) if b"%" in key else key: (exp, cas)
            for key, exp, cas in _DUMP_LINE.findall(text)}


METHOD = MemcacheCopy
