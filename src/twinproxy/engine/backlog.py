"""What the follower still owes: counted, bounded, and past a size kept out of memory.

The follower runs behind the leader; everything released to it and not answered yet is its
backlog, with the leader's reply it will be compared with. Past ``max_backlog_requests`` or
``max_backlog_bytes`` the update fails (a follower that cannot keep up is no candidate).

While the new version loads its snapshot, clients go on, and a large data set under a
write-heavy load piles up a backlog of hundreds of megabytes. Past ``spill_bytes`` its bytes move
to a :class:`Store` (the relay gives a file-backed one, :class:`twinproxy.spill.Spill`; tests an
in-memory one) and are read back, and parsed again by the codec, when their request is sent. A
store that fails (a full disk) fails the update: the bytes stay in memory and no client notices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twinproxy.engine.large import Spooled

if TYPE_CHECKING:
    from twinproxy.config import UpdateConfig
    from twinproxy.engine.records import Exchange
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Limits


class Store(Protocol):
    """Where spilled bytes wait: records written once and read back once, in any order."""

    records: int
    bytes: int

    def put(self, parts: list[bytes]) -> tuple[int, int]:
        """Keep ``parts``; returns where they are. Raises OSError when it cannot."""

    def take(self, where: tuple[int, int]) -> list[bytes]:
        """The parts kept at ``where``. Raises OSError when it cannot."""

    def close(self) -> None:
        """Drop everything kept."""


class Backlog:
    """The follower's backlog of one update."""

    def __init__(self, codec: Codec, limits: Limits, settings: UpdateConfig,
                 new_store: Callable[[], Store], fail: Callable[[str], None]):
        self.codec = codec
        self.limits = limits
        self.settings = settings
        self.new_store = new_store
        self.fail = fail
        self.requests = 0  # released, follower reply not in yet
        self.bytes = 0
        self.store: Store | None = None
        self.store_failed = False

    def add(self, count: int, size: int) -> None:
        """Requests released to the follower; fails the update past a bound."""
        self.requests += count
        self.bytes += size
        settings = self.settings
        if self.requests > settings.max_backlog_requests:
            self.fail(f"the follower fell {self.requests} requests behind "
                      f"(max_backlog_requests = {settings.max_backlog_requests})")
        elif self.bytes > settings.max_backlog_bytes:
            self.fail(f"the follower fell {self.bytes} bytes behind "
                      f"(max_backlog_bytes = {settings.max_backlog_bytes})")

    def done(self, count: int, size: int) -> None:
        """The follower answered these."""
        self.requests -= count
        self.bytes -= size

    @property
    def over_memory(self) -> bool:
        """Whether what waits for a follower that is not live yet should go to the store."""
        return self.bytes > self.settings.spill_bytes and not self.store_failed

    def spill(self, exchange: Exchange) -> None:
        """Move the bytes an exchange waits with (its request, the leader's reply) to the
        store, until the follower is live."""
        if exchange.run:
            if exchange.parts is not None:
                return  # the leader's reply is still coming in
            where = self._put([exchange.request.raw, exchange.leader_raw])
            if where is not None:
                exchange.spilled = where
                exchange.request.raw = exchange.leader_raw = b""
            return
        request, reply = exchange.follower_request, exchange.leader_reply
        if (reply is None or request is None or exchange.queue or exchange.internal
                or exchange.wait is not None or exchange.block_seq):
            return  # rare, small or shared with other state: it stays in memory
        if type(request.raw) is Spooled or type(exchange.request.raw) is Spooled:
            return  # a large request, on disk already (twinproxy.engine.large)
        original = exchange.request
        parts = [request.raw, reply.raw]  # empty for a large reply: only its digest is kept
        if original is not request:
            parts.append(original.raw)
        where = self._put(parts)
        if where is None:
            return
        exchange.spilled = where
        if original is not request:
            original.raw, original.args, original.data = b"", [], None
        request.raw, request.args, request.data = b"", [], None
        reply.raw, reply.value = b"", None
        exchange.leader_value = None

    def unspill(self, exchange: Exchange) -> bool:
        """Read back what :meth:`spill` moved, parsed again by the codec. False when the store
        failed (the update fails; the exchange is not sent)."""
        assert self.store is not None and exchange.spilled is not None
        try:
            parts = self.store.take(exchange.spilled)
        except OSError as exc:
            self.store_failed = True
            self.fail(f"the sync backlog could not be read back from disk: {exc}")
            return False
        exchange.spilled = None
        if exchange.run:
            exchange.request.raw, exchange.leader_raw = parts
            return True
        request, reply = exchange.follower_request, exchange.leader_reply
        assert request is not None and reply is not None
        codec, limits = self.codec, self.limits
        for target, raw in ((request, parts[0]),
                            (exchange.request, parts[2] if len(parts) > 2 else None)):
            if raw is not None:
                [parsed] = codec.request_reader(limits).receive(raw)
                target.raw, target.args, target.data = raw, parsed.args, parsed.data
        if exchange.leader_digest is None:
            replies = codec.reply_reader(limits)
            replies.expect(exchange.request)
            [parsed] = replies.receive(parts[1])
            reply.raw, reply.value = parsed.raw, parsed.value
            exchange.leader_value = codec.canonical(reply)
        return True

    def _put(self, parts: list[bytes]) -> tuple[int, int] | None:
        try:
            if self.store is None:
                self.store = self.new_store()
            return self.store.put(parts)
        except OSError as exc:
            # A full disk, say: the backlog stays in memory (its bounds still hold) and the
            # update fails; no client is touched.
            self.store_failed = True
            self.fail(f"the sync backlog could not be spilled to disk: {exc}")
            return None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def status(self) -> dict[str, int]:
        store = self.store
        return {"backlog": self.requests, "backlog_bytes": self.bytes,
                "spilled": store.records if store is not None else 0,
                "spilled_bytes": store.bytes if store is not None else 0}
