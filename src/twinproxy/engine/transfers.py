"""Data channels during an update: which transfer a request used on each version, and the
comparison of what each version sent on it.

How this works. A protocol with data channels (FTP) sets each transfer up with a message on the
control connection (:mod:`twinproxy.protocols.channels`): a ``227``/``229`` reply or a
PORT/EPRT request. The engine reads those messages here and gives every transfer an id
(``channel``) shared by its two halves: the leader's (opened by the leader's reply, or by the
request as sent to the leader) and the follower's (the follower's reply to the same request,
or the same request as sent to the follower). :class:`~twinproxy.engine.commands.OpenData`
asks the relay (:mod:`twinproxy.relay.mirror`) to carry both halves: the client's data goes
to the leader and, kept aside, to the follower; the leader's to the client, the follower's
only into a running digest.

A request that transfers data (``Request.preliminary``: a ``1xx`` mark comes before its final
reply) used the channel opened last on a version if that version sent the mark. When the
follower's final reply comes, the two replies are compared as for every request, and the two
halves' data once each has ended (:class:`~twinproxy.engine.events.Transferred`, which may come
before or after the final reply: two sockets): byte for byte by size and digest, or, when both
are small (a listing), line by line under the request's rules, so that ``normalize`` rules
(dates) apply to a listing as to a reply. Until then the follower is not caught up, so a
cutover waits for the comparison.

Rules this module keeps:

* The engine opens no socket: the relay picks the endpoints, rewrites the message and reports
  each half's end; the engine only pairs halves and compares.
* What the client sends on a channel is not compared: the follower gets the same bytes.
* A transfer that one version made and the other did not shows in the final replies (``226``
  against ``425``), which are compared anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinproxy.compare import Verdict
from twinproxy.engine.commands import FOLLOWER, LEADER, Deliver, OpenData, Send
from twinproxy.engine.events import new_id
from twinproxy.engine.records import Exchange
from twinproxy.engine.verdicts import shown
from twinproxy.protocols.channels import OpenChannel

if TYPE_CHECKING:
    from twinproxy.engine.events import Transferred
    from twinproxy.engine.records import Client, Conn
    from twinproxy.engine.verdicts import Verdicts
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Limits, Reply, Request

SHOWN = 200  # bytes of a transfer shown in a divergence record
CUT = "builtin:transfer-cut"  # the rule of a transfer the client cut short on the leader
ABORTED = "builtin:transfer-aborted"  # of a transfer the client aborted, and of its abort
# Halves' results kept for a comparison. A channel used by no transfer (a client connected,
# then its command failed: no 1xx) still reports its halves, which nothing takes: past this
# many, the oldest go.
MAX_KEPT = 10000


class TransferFlow:
    """Data channels (a part of :class:`twinproxy.engine.Engine`)."""

    codec: Codec
    limits: Limits
    now: float
    verdicts: Verdicts
    outbox: dict[Client, list[bytes]]
    emit: Any
    # (channel, role) -> that half's result; exchanges whose comparison waits for results.
    transferred: dict[tuple[int, int], Transferred]
    awaiting: dict[Exchange, tuple[Reply, float]]  # with the follower's final reply
    transfers_compared: int  # data channels whose two halves were compared

    def _channel_request(self, client: Client, request: Request) -> tuple[Request, Any]:
        """A client's request as it is admitted: a refused one (a bounce PORT) replaced by its
        stand-in, and the :class:`OpenChannel` of one that opens a channel (else None)."""
        decision = client.channels.request(request, client.host)
        if isinstance(decision, OpenChannel):
            return request, decision
        if decision is not None:
            return decision, None
        return request, None

    def _note_abort(self, client: Client, exchange: Exchange) -> None:
        """A transfer is the one an abort that follows would end; an abort (ABOR) marks it
        and itself ``aborted``, so that neither is compared as if it ran the same on both
        versions (each sees the abort at another moment of its transfer)."""
        if exchange.request.preliminary:
            client.transfer = exchange
        elif client.transfer is not None and client.channels.aborts(exchange.request):
            client.transfer.aborted = exchange.aborted = True
            client.transfer = None

    def _send_channel(self, role: int, conn: Conn, exchange: Exchange) -> None:
        """A request that opens a channel goes on ``conn`` as the relay rewrites it. It is the
        channel of the transfers after it once it is answered (:meth:`_port_answered`): the
        follower may have been sent the next one already."""
        client = exchange.client
        if role == LEADER or not exchange.channel:
            exchange.channel = new_id()
        self.emit(OpenData(client.id, conn.id, role, exchange.channel, exchange.opening))

    def _channel_reply(self, client: Client, exchange: Exchange, reply: Reply, role: int,
                       conn: Conn) -> bool:
        """A final reply that may open a channel (a ``227``): for the leader, delivered as the
        relay rewrites it; for the follower, its half's target. Whether it opened one."""
        decision = client.channels.reply(reply, "")
        if decision is None:
            return False
        if role == LEADER:
            box = self.outbox.pop(client, None)
            if box:  # what goes before it
                self.emit(Deliver(client.id, b"".join(box)))
            exchange.channel = new_id()
        elif not exchange.channel:
            exchange.channel = new_id()  # (a half with no pair: no transfer will match it)
        client.data[role] = exchange.channel
        self.emit(OpenData(client.id, conn.id, role, exchange.channel, decision))
        return True

    def _set_up_channel(self, client: Client, conn: Conn) -> None:
        """The client's data channel set up before the sync point and not used yet: its setup
        (PASV, PORT ...) goes to the follower after the session replay, as the proxy's own
        request (not compared), so that a transfer asked for after the sync point runs on the
        follower too."""
        channel, setup = client.setup
        client.setup = None
        [request] = self.codec.request_reader(self.limits).receive(setup)
        exchange = Exchange(client, request)
        exchange.internal = True
        exchange.follower_request = request
        exchange.channel = channel
        decision = client.channels.request(request, client.host)
        exchange.opening = decision if isinstance(decision, OpenChannel) else None
        exchange.legs[FOLLOWER].sent = self.now
        conn.replies.expect(request)
        client.lanes[FOLLOWER].flight.append(exchange)
        if exchange.opening is not None:
            self.emit(OpenData(client.id, conn.id, FOLLOWER, channel, exchange.opening))
        else:
            self.emit(Send(conn.id, request.raw))

    def _followed_setup(self, client: Client, exchange: Exchange, reply: Reply,
                        conn: Conn) -> None:
        if exchange.opening is not None:
            self._port_answered(client, exchange, FOLLOWER)
        else:
            self._channel_reply(client, exchange, reply, FOLLOWER, conn)

    def _followed_channels(self, client: Client, exchange: Exchange, reply: Reply) -> None:
        """The follower's final reply, for a client with data channels: a channel it opens, and
        the comparison (a transfer's waits for its data)."""
        if exchange.opening is not None:
            self._port_answered(client, exchange, FOLLOWER)
        else:
            self._channel_reply(client, exchange, reply, FOLLOWER, client.lanes[FOLLOWER].conn)
        elapsed = self.now - exchange.leader_at
        if exchange.data is not None:
            self._await_data(exchange, reply, elapsed)
        elif exchange.aborted:
            self._aborted(client, exchange, reply, elapsed)
        else:
            self.verdicts.reply(client, exchange, reply, elapsed)

    def _port_answered(self, client: Client, exchange: Exchange, role: int) -> None:
        """The final reply to a request that opened a channel: the next transfer on that side
        uses it."""
        client.data[role] = exchange.channel

    def _marked(self, client: Client, exchange: Exchange, role: int) -> None:
        """A ``1xx`` mark: the request transfers on the channel opened last on that side."""
        if client.channels is not None and exchange.request.preliminary:
            if exchange.data is None:
                exchange.data = [0, 0]
            exchange.data[role] = client.data[role]

    def _transferred(self, event: Transferred) -> None:
        kept = self.transferred
        kept[(event.channel, event.role)] = event
        if len(kept) > MAX_KEPT:
            del kept[next(iter(kept))]
        for exchange in list(self.awaiting):
            self._compare_data(exchange)

    def _await_data(self, exchange: Exchange, reply: Reply, elapsed: float) -> None:
        """The follower's final reply to a request that transferred on either side: compared
        with the leader's, with the data, once both halves ended."""
        self.awaiting[exchange] = (reply, elapsed)
        self._compare_data(exchange)

    def _compare_data(self, exchange: Exchange) -> None:
        lead, follow = exchange.data
        verdicts = self.verdicts
        client = exchange.client
        if not (lead and follow):
            # One side transferred, the other did not: the final replies differ; the half
            # that ran is dropped.
            reply, elapsed = self.awaiting.pop(exchange)
            self.transferred.pop((lead, LEADER), None)
            self.transferred.pop((follow, FOLLOWER), None)
            if exchange.aborted:
                self._aborted(client, exchange, reply, elapsed)
            else:
                verdicts.reply(client, exchange, reply, elapsed)
            return
        a = self.transferred.get((lead, LEADER))
        b = self.transferred.get((follow, FOLLOWER))
        if a is None or b is None:
            return
        del self.transferred[(lead, LEADER)], self.transferred[(follow, FOLLOWER)]
        reply, elapsed = self.awaiting.pop(exchange)
        self.transfers_compared += 1
        if exchange.aborted:  # how much each version sent depends on when it saw the abort
            self._aborted(client, exchange, reply, elapsed)
            return
        request = exchange.request
        same = (a.size, a.digest) == (b.size, b.digest)
        if a.cut:
            # The client broke the leader's data connection (or the leader did): the follower
            # ran the transfer whole, so its reply and data may differ, as expected.
            verdicts.compared += 1
            if not same or exchange.leader_reply.raw != reply.raw:
                verdicts.record(client, request, exchange.leader_reply.raw, reply.raw,
                                Verdict(False, True, CUT, (CUT,)), "transfer cut short")
            return
        verdicts.reply(client, exchange, reply, elapsed)
        if same:
            return
        if a.head is not None and b.head is not None:
            verdict = verdicts.comparator.compare_values(request, _lines(a.head), _lines(b.head))
            verdicts.record(client, request, a.head[:SHOWN], b.head[:SHOWN], verdict,
                            "transferred data differ")
            return
        rules = verdicts.comparator.rules.matching(request)
        ignore = next((r.name for r in rules if r.action == "ignore"), None)
        verdicts.record(client, request, shown((a.size, a.digest)), shown((b.size, b.digest)),
                        Verdict(False, ignore is not None, ignore, tuple(r.name for r in rules)),
                        "transferred data differ")

    def _aborted(self, client: Client, exchange: Exchange, reply: Reply, elapsed: float
                 ) -> None:
        """The follower's final reply to an aborted transfer, or to the abort: a transfer may
        have completed on one version and been cut on the other (``226`` against ``426``), an
        abort may have found a transfer to end or none (``226`` against ``225``). Such a
        difference is expected (``builtin:transfer-aborted``); any other reply (a refusal, an
        unknown command) is compared as usual."""
        leader = exchange.leader_reply
        channels = client.channels
        if leader is None or leader.raw == reply.raw or not (
                channels.abort_outcome(leader) and channels.abort_outcome(reply)):
            self.verdicts.reply(client, exchange, reply, elapsed)
            return
        self.verdicts.compared += 1
        self.verdicts.record(client, exchange.request, leader.raw, reply.raw,
                             Verdict(False, True, ABORTED, (ABORTED,)), "transfer aborted")


def _lines(head: bytes) -> tuple[str, ...]:
    """A small transfer as text lines, for the rules (decoded as the codec's reply lines are,
    every byte kept)."""
    return tuple(head.decode("utf-8", "surrogateescape").splitlines())
