"""The reply reader: replies framed by :mod:`.replies`, paired by :mod:`.session`.

Most replies on a busy connection are plain replies to plain requests (GET, SET ...) in a plain
state (RESP2 or RESP3, no subscriptions, replies on, no MULTI): those are paired in runs, without
a look at the connection state; everything else goes through the pairing rules one reply at a
time.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, Reply, Request
from twinproxy.protocols.reader import ReplyReader
from twinproxy.protocols.redis.replies import RespReplyParser
from twinproxy.protocols.redis.session import SPECIAL, ConnectionState, Pairing
from twinproxy.protocols.redis.types import NO_REPLY, Attributed, Push, RespError, SimpleString


class RespReplyReader(ReplyReader):
    """Frames one server connection's replies and pairs each with the request it answers.

    Keeps the :class:`~twinproxy.protocols.reader.ReplyReader` contract; the pairing rules are in
    :mod:`twinproxy.protocols.redis.session`. What the proxy core must know beyond the contract:

    * Every request passed to :meth:`expect` gets exactly one final reply, in order. A request
      the server answers with nothing (under CLIENT REPLY OFF or SKIP) gets a synthetic one:
      ``raw`` ``b""``, ``value`` :data:`~twinproxy.protocols.redis.types.NO_REPLY`. It can be
      ready as soon as :meth:`expect` is called, with no byte from the server: call
      :meth:`next_reply` after :meth:`expect` to collect it. (One exception: when a CLIENT
      REPLY OFF/SKIP fails in a way that cannot be foreseen, NOAUTH or NOPERM, the requests
      taken as silent after it get their real replies after their synthetic ones.)
    * Subscribe confirmations are replies to their (UN)SUBSCRIBE (``final`` false but for the
      last); RESP2 messages, RESP3 pushes and MONITOR lines have ``request`` None and ``push``
      true. A reply with ``request`` None and ``push`` false is one no request was waiting for
      (counted in :attr:`unpaired`): the pairing is lost, close the connection.
    * On a protocol error :meth:`receive` raises at once; the replies completed before it in
      that same call are on the exception as ``messages`` (the reader base's contract).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self._parser = RespReplyParser(limits)
        self._pairing = Pairing()
        # Replies framed but not returned yet: next_reply() returns one at a time, and one
        # reply can settle several requests (the silent ones before it).
        self._ready: deque[Reply] = deque()

    @property
    def state(self) -> ConnectionState:
        """The connection state the pairing tracks (RESP3, subscriptions, reply mode ...)."""
        return self._pairing.state

    @property
    def watching(self) -> bool:  # type: ignore[override]
        """In MONITOR mode: a line for each request any connection sends."""
        return self._pairing.state.monitor

    @property
    def pending(self) -> int:
        """Requests expected whose final reply has not arrived yet."""
        return self._pairing.pending

    @property
    def unpaired(self) -> int:
        """Replies that came when no request was waiting for one."""
        return self._pairing.unpaired

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete reply held."""
        return self._parser.buffered

    def expect(self, request: Request) -> None:
        """The proxy has sent ``request`` on this server connection (in this order)."""
        self._pairing.expect(request)

    def feed(self, data: bytes) -> None:
        """Add bytes from the server; ``b""`` means the server closed its side."""
        self._parser.feed(data)

    def _next(self) -> Reply | None:
        ready = self._ready
        if not ready:
            self._collect(ready, one=True)
        return ready.popleft() if ready else None

    def _drain(self, out: list[Reply]) -> None:
        ready = self._ready
        if ready:
            out += ready
            ready.clear()
        self._collect(out, one=False)

    def _collect(self, out: list[Reply] | deque[Reply], one: bool) -> None:
        """Frame and pair replies onto ``out`` (until there is one, if ``one``)."""
        p = self._pairing
        st = p.state
        queue = p.queue
        special = SPECIAL
        append = out.append
        parser = self._parser
        next_value = parser.next
        while not (one and out):
            if p.silent:
                self._flush(out)
                continue
            # Fast path: a run of plain replies to plain requests in a plain state.
            if (
                not one and p.active is None and queue and p.tentative is None
                and st.reply == 0 and not st.in_multi and not st.monitor
            ):  # fmt: skip
                plain = 0
                for req in islice(queue, 64):
                    if req.name in special:
                        break
                    plain += 1
                run = parser.flat_run(plain) if plain else None
                if run:
                    popleft = queue.popleft
                    for value, raw in run:
                        append(Reply(raw, value, request=popleft()))
                    if queue and queue[0].name in special:
                        p.settle()
                    continue
            got = next_value()
            if got is None:
                return
            value, raw = got
            t = type(value)
            # Fast path: the plain reply to a plain request in a plain state.
            if (
                (t is bytes or t is int or (t is SimpleString and not st.monitor))
                and p.active is None and queue and queue[0].name not in special
                and st.reply == 0 and not st.in_multi and p.tentative is None
            ):  # fmt: skip
                append(Reply(raw, value, request=queue.popleft()))
                if queue and (queue[0].name in special or st.reply):
                    p.settle()
                continue
            v = value.value if t is Attributed else value
            if type(v) is RespError:
                req, final = p.pair(value)
                reply = Reply(raw, value, request=req, final=final, error=True)
            elif (t is Push or t is Attributed or t is list or t is SimpleString) and (
                p.out_of_band(value)
            ):
                reply = Reply(raw, value, push=True)
            else:
                req, final = p.pair(value)
                reply = Reply(raw, value, request=req, final=final)
            if p.silent:  # requests settled before this reply, which get none
                self._flush(out)
            append(reply)
            p.settle()

    def _flush(self, out: list[Reply] | deque[Reply]) -> None:
        silent = self._pairing.silent
        for req in silent:
            out.append(Reply(b"", NO_REPLY, request=req))
        silent.clear()
