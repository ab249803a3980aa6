"""How SINGLE mode reaches a reply boundary on a connection whose replies it does not frame.

A connection in the plain state (:mod:`.single`) has its server's replies forwarded as they come,
unframed, so the proxy does not know where one reply ends. When it must (a drain, a bad
request's error, the start of an update, a switch to full reply framing), it sends the codec's
*sentinel* (an ``ECHO`` of a random token, say) after what went out, and waits for its reply,
which it strips from the stream: everything owed before it has then been delivered. This module
holds that machinery: choosing the sentinel (the refused form while a script may make the
server refuse others), stripping it, going back to the unframed path, and the waiters that
want a boundary (:meth:`Settling.settle`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twinproxy.relay.connections import ClientConn, ServerConn
from twinproxy.relay.loop import Loop

if TYPE_CHECKING:
    from twinproxy.protocols.base import Carry, Codec
    from twinproxy.protocols.messages import Limits, Request
    from twinproxy.protocols.reader import ReplyReader

# A sentinel not answered in this long (a server stuck in a script, say) ends the connection.
SETTLE_TIMEOUT = 60.0


class Settling(Loop):
    """Sentinels, and the waits for a reply boundary (a part of :class:`~.relay.Relay`)."""

    codec: Codec
    limits: Limits
    driver: object | None
    holding: set[ServerConn]  # connections that sent a request that may_hold, maybe not over
    carry: Carry | None
    watch: Callable[[Request], object] | None

    def forward(self, client: ClientConn, requests: list[Request], noted: bool = False,
                passed: bool = False) -> None:
        """Send ``requests`` on ``client``'s connection (:class:`~.single.SingleMode`'s; here
        for :meth:`settle`, which may forward the codec's settle request)."""
        raise NotImplementedError

    def frameless(self) -> bool:
        """Whether a connection's replies may go unframed now (as far as the relay as a whole
        is concerned): not while the old version's names are translated (:attr:`carry`, which
        sees every reply) or a state sync is shown every request (:attr:`watch`, which asks
        for the requests not answered yet), nor during an update."""
        return self.carry is None and self.watch is None and self.driver is None

    def _holding(self, link: ServerConn) -> None:
        """``link`` sent a request that may make its server refuse others (see may_hold)."""
        link.scripts += 1
        self.holding.add(link)

    def _held(self, link: ServerConn) -> None:
        """What ``link`` sent that may make its server refuse others is over."""
        link.scripts = link.scripts_before = 0
        self.holding.discard(link)

    def _sentinel(self, link: ServerConn) -> bytes:
        """A sentinel request for ``link``, whose reply is then awaited (``link.sentinel``).

        While a request that may make the server refuse others (a script) is out on any of the
        version's connections, it is the refused form (see ``Codec.refused_sentinel``): the
        plain sentinel would get the refusal, which the proxy cannot tell from a reply of the
        client's, and the client would get one reply too many. Else the plain one, which the
        server does not count as an error."""
        backend = link.backend
        form = backend.refused
        link.scripts_before = link.scripts
        if form is not None and self._may_refuse(backend):
            sentinel = self.codec.refused_sentinel()
            assert sentinel is not None
            request, token = sentinel
            link.sentinel = form[0] + token + form[1]
            link.counted = False  # (refused before it runs: counted as an error only)
            return request
        sentinel = self.codec.sentinel()
        assert sentinel is not None
        request, link.sentinel = sentinel
        link.counted = True
        return request

    def _may_refuse(self, backend: object) -> bool:
        """Whether a request that may make ``backend`` refuse others is out (see may_hold)."""
        holding = self.holding
        for link in list(holding):
            if link.closed or link.engine:
                holding.discard(link)  # what it held is over, or the engine's now
            elif link.backend is backend:
                return True
        return False

    def _unframe(self, link: ServerConn) -> None:
        """Back to the unframed fast path, once a framed connection owes nothing and is in the
        plain state again (after a blocking request, a transaction, a script ...)."""
        replies = link.replies
        if (replies is not None and not replies.buffered and not link.answering
                and not link.counting and not link.sentinel and self.sentinel_works(link)
                and self.frameless() and self.codec.plain_state(replies)):
            self.unframed(link)
            link.client.forwarded = False
            link.client.blocking = False
            if link.scripts:
                self._held(link)

    def sentinel_works(self, link: ServerConn) -> bool:
        """Whether the sentinel is answered exactly on ``link`` (framed now): on a connection
        nobody logged in on, where a fresh one answers it (a version that wants no password);
        on one its client logged in as the user the proxy's own login showed may run it
        (``Backend.sentinel_user``). Not on one logged in as another user, even where no
        password is wanted: an ACL user may not be allowed the sentinel's ECHO, and its
        refusal would go to the client as the reply to its own request."""
        backend = link.backend
        user = self.codec.logged_in_user(link.replies) if link.replies is not None else None
        if user is None:
            return backend.sentinel_ok
        return user == backend.sentinel_user

    def unframed(self, link: ServerConn) -> None:
        """``link``'s replies go unframed from now on; what a reader must know of it when
        framing resumes is kept (see :meth:`framed`)."""
        link.kept = self.codec.framing_kept(link.replies)
        link.replies = None

    def framed(self, link: ServerConn) -> ReplyReader:
        """Frame ``link``'s replies again, with a reader that knows what the last one did."""
        link.replies = replies = self.codec.reply_reader(self.limits)
        if link.kept is not None:
            self.codec.resume_framing(replies, link.kept)
            link.kept = None
        return replies

    def _strip_sentinel(self, link: ServerConn, data: bytes) -> bytes:
        """Forward what precedes the awaited sentinel reply, holding back only a tail that may
        begin it; once it came, strip it, tell the waiters, and return what follows it (the
        replies to what went out after the sentinel, which the link frames)."""
        data = link.carry + data if link.carry else data
        sentinel = link.sentinel
        client = link.client
        at = data.find(sentinel)
        if at < 0:
            link.carry = _tail_starting(data, sentinel)
            if len(data) > len(link.carry):
                self.send(client, data[: len(data) - len(link.carry)])
            return b""
        link.sentinel = link.carry = b""
        if link.counted:
            link.backend.sentinels += 1
        client.forwarded = False
        if link.scripts and link.scripts == link.scripts_before:
            self._held(link)  # what it sent before the sentinel is answered
        if at:
            self.send(client, data[:at])
        rest = data[at + len(sentinel):]
        if not rest:
            self.settled(client)
        return rest

    def settle(self, client: ClientConn, then: Callable[[], object]) -> None:
        """Call ``then`` once every reply owed for what was forwarded has gone to the client
        (after the end of a request whose large value is passing through: nothing of the
        proxy's may go to the server in the middle of it)."""
        if client.reader.mid_request():
            paused = client.paused  # (the caller stopped reading: not before the value's end)

            def later() -> None:
                if paused:
                    client.paused = True
                    self.refresh(client)
                self.settle(client, then)

            client.after_value.append(later)
            if paused:
                client.paused = False
                self.refresh(client)
            return
        link = client.link
        if link is None or not link.connected or client.opaque:
            then()  # (an opaque stream has no boundary the proxy could see)
            return
        if link.replies is not None:
            def done() -> bool:
                if link.sentinel or (link.replies is not None and link.replies.pending):
                    return False
                then()
                return True

            if not done():
                client.waiters.append(done)
                request = self.codec.settle_request()
                if request is not None:  # replies that may never come on their own
                    self.forward(client, [request])
            return
        if not client.forwarded:
            then()
            return

        def answered() -> bool:
            then()
            return True

        client.waiters.append(answered)
        if not link.sentinel:
            request = self._sentinel(link)
            link.deadline = self.now + SETTLE_TIMEOUT
            self.send(link, request)

    def settled(self, client: ClientConn) -> None:
        """Give each waiter its look at the replies that came; keep those still waiting."""
        waiters, client.waiters = client.waiters, []
        for waiter in waiters:
            if not client.closed and not waiter():
                client.waiters.append(waiter)


def _tail_starting(data: bytes, sentinel: bytes) -> bytes:
    """The longest end of ``data`` that ``sentinel`` starts with: what may be its beginning."""
    first = sentinel[:1]
    at = data.find(first, max(0, len(data) - len(sentinel) + 1))
    while at >= 0:
        if sentinel.startswith(data[at:]):
            return data[at:]
        at = data.find(first, at + 1)
    return b""
