"""A new client's first read: one request on its own connection, the rest after its reply.

A client goes on the shared connection only once it has had small replies on its own
(``[update] shared_after``), so that a client reading large values never puts them ahead of
everyone else's. Until then each of its requests goes alone, ordered and compared one by one:
about 30 us each. When a thousand clients connect during an update and each pipelines sixteen
GETs, that was most of the proxy's time, and the last client waited half a second.

So when a read could travel as a run but for that rule, only its first request goes now; the rest
of the read, and whatever the client sends after it, is held until that request is answered.
By then the client has had a small reply (its rest goes as a run) or a large one (request by
request, as before). It costs the client's first read one round trip, once per client; a
client whose first reply was large is not held again.

Held input is the client's, in its order: requests, runs, its errors and its end of input. Nothing
of it has reached a server, so holding it only makes the client seem to have sent it later.
It is let go of at once when it grows past :data:`HOLD_LIMIT` bytes, when the client closes
(as directly, what it sent before closing still runs), and before any control event (a mode
changes with nothing of a client kept back from it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinproxy.engine import events as ev
from twinproxy.engine.commands import LEADER

if TYPE_CHECKING:
    from twinproxy.engine.records import Client
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Limits

HOLD_LIMIT = 256 * 1024
"""Bytes of a client's held input past which it is let go of at once (memory stays bounded)."""

HELD_KINDS = (ev.Requests, ev.Run, ev.Leave, ev.ClientError, ev.ClientEof)
"""The events that are a client's input, held in its order while its first request is out."""


class Held:
    """One client's input held while its first request is out."""

    __slots__ = ("events", "size")

    def __init__(self, event: ev.Run):
        self.events: list[ev.Event] = [event]
        self.size = len(event.raw)


class FirstRead:
    """Part of :class:`~twinproxy.engine.Engine`: the first reads of new clients."""

    clients: dict[int, Client]
    shared_after: int
    _handlers: dict[type[ev.Event], Any]
    _requests: Any  # (engine)
    codec: Codec
    limits: Limits
    # Clients whose input is held, by id, and those whose first request was answered.
    held: dict[int, Held]
    held_done: list[int]

    def _init_first_read(self) -> None:
        self.held = {}
        self.held_done = []

    def _first_alone(self, client: Client, event: ev.Run) -> bool:
        """``event`` could go as a run but for ``shared_after``: send its first request alone
        and hold the rest (True), unless the client's first read was split before or the run
        holds a single request (False: its requests go one by one).

        Only the first request is framed: the rest is held as the bytes that follow it, a run
        again. A thousand new clients that each pipeline sixteen GETs had all sixteen framed
        for one to be sent: 14% of the engine's time for a new client."""
        if client.probed or event.count < 2:
            return False
        reader = self.codec.request_reader(self.limits)
        reader.feed(event.raw)
        first = reader.next_request()
        raw = first.raw if first is not None else None
        if type(raw) is not bytes or not event.raw.startswith(raw):
            return False  # (not a prefix of the read: the caller frames it whole)
        client.probed = True
        self._requests(ev.Requests(client.id, [first]))
        lane = client.lanes[LEADER]
        if not lane.flight and not lane.queue:  # (answered at once after all: nothing to wait for)
            self._requests(ev.Requests(client.id, list(iter(reader.next_request, None))))
            return True
        self.held[client.id] = Held(ev.Run(client.id, event.raw[len(raw):], event.count - 1,
                                           event.small, event.reads,
                                           event.silent - (first.replies == 0),
                                           event.silent_last, event.expiring))
        return True

    def _hold(self, event: Any) -> bool:
        """Hold ``event`` if it is input of a client whose input is held (True)."""
        kind = type(event)
        if kind not in HELD_KINDS:
            if kind is ev.ClientClosed:
                self._let_go(event.client)  # what it sent before it closed runs, as directly
            return False
        held = self.held.get(event.client)
        if held is None:
            return False
        held.events.append(event)
        held.size += _size(event)
        if held.size > HOLD_LIMIT:
            self._let_go(event.client)
        return True

    def _first_answered(self, client: Client) -> None:
        """A reply came on the client's own leader connection: if its input is held and its
        first request was answered, its input goes on once this event is handled."""
        lane = client.lanes[LEADER]
        if client.id in self.held and not lane.flight and not lane.queue:
            self.held_done.append(client.id)

    def _let_go_of_answered(self) -> None:
        done, self.held_done = self.held_done, []
        for client_id in done:
            self._let_go(client_id)

    def _let_go(self, client_id: int) -> None:
        """Hand the client's held input on, in its order, as if it came now."""
        held = self.held.pop(client_id, None)
        if held is None:
            return
        handlers = self._handlers
        for event in held.events:
            handlers[type(event)](event)

    def _let_go_of_all(self) -> None:
        """Before a control event: every client's held input goes on."""
        self.held_done.clear()
        for client_id in list(self.held):
            self._let_go(client_id)


def _size(event: ev.Event) -> int:
    if type(event) is ev.Run:
        return len(event.raw)
    if type(event) is ev.Requests:
        return sum(len(request.raw) for request in event.requests)
    return 0
