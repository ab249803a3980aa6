"""Deterministic order: which request may go to a server now, and which must wait.

Two versions stay in the same state only if they execute conflicting requests in the same order.
Requests from different client connections reach a server in any interleaving, so during an
update the proxy decides that order itself, one :class:`Sequencer` per side (leader, follower).
A request is admitted in the order the side is to see it and waits until every earlier request it
conflicts with has been answered on that side. The rules, kept by :meth:`Sequencer.admit`:

* A read of a key waits for the last earlier write of it.
* A write of a key waits for the last earlier write of it and for every read since.
* A global write (FLUSHALL, a script with no declared keys) waits for every earlier request;
  a global read (KEYS, SCAN, DBSIZE) for every earlier write.
* Every request waits for the last earlier global write; a write also for the global reads since.
* Requests of one connection never wait for each other: the server executes them in the order
  they arrive on that connection, which is the order the proxy sends them in. But on the one
  connection whose requests are not sent in the order they were placed (``unordered``: the
  leader's shared connection, which sends each client's requests as that client's turn comes),
  a request waits for an earlier one that is itself waiting: it would otherwise go first, and
  overtake what that one waits for on another connection as well.
* A *quiescing* global write (one that makes the server refuse every other request while it
  runs: Redis's DEBUG RELOAD, which reloads the dataset) is waited for by every later request,
  tracked or not: a PING sent meanwhile would get ``-LOADING``.

Depending on the last conflicting request is enough, because it in turn depended on the ones
before it (and a connection's later reply implies its earlier ones). A request with no keys that
is not global (PING, CLIENT SETNAME) is not tracked at all. Every dependency points to a request
admitted earlier, so waiting never forms a cycle.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class Ticket:
    """One request's place in one side's order."""

    __slots__ = ("conn", "dependents", "done", "is_global", "item", "keys", "quiesce",
                 "waiting", "write")

    def __init__(self, item: object, conn: Hashable, keys: Iterable[bytes] = (),
                 write: bool = False, is_global: bool = False, quiesce: bool = False):
        self.item = item
        self.conn = conn
        self.keys = tuple(keys)
        self.quiesce = quiesce  # a global write that every later request waits for
        self.write = write or quiesce
        self.is_global = is_global or quiesce
        self.waiting = 0  # earlier conflicting requests not yet answered on this side
        self.dependents: list[Ticket] = []
        self.done = False

    @property
    def tracked(self) -> bool:
        return bool(self.keys) or self.is_global

    def __repr__(self) -> str:
        kind = ("global " if self.is_global else "") + ("write" if self.write else "read")
        return f"<Ticket {self.item!r} {kind} {self.keys!r} waiting={self.waiting}>"


class Sequencer:
    """The order of conflicting requests on one side; see the module docstring for the rules."""

    def __init__(self, unordered: Hashable = None) -> None:
        self._unordered = unordered  # (see the module docstring; None: every one is ordered)
        self._writer: dict[bytes, Ticket] = {}
        self._readers: dict[bytes, dict[Ticket, None]] = {}
        self._global_writer: Ticket | None = None
        self._quiescing: Ticket | None = None  # the last quiescing write not answered yet
        self._global_readers: dict[Ticket, None] = {}
        self._writes: dict[Ticket, None] = {}  # every write not answered yet
        self._active: dict[Ticket, None] = {}  # every tracked request not answered yet

    def __len__(self) -> int:
        """Tracked requests admitted and not answered yet."""
        return len(self._active)

    def admit(self, ticket: Ticket) -> bool:
        """Place ``ticket`` after everything admitted before; True when it may go at once."""
        conn = ticket.conn
        if not ticket.tracked:
            quiescing = self._quiescing
            if quiescing is None or quiescing.conn == conn:
                return True
            self._depend(ticket, quiescing)
            return ticket.waiting == 0
        write = ticket.write
        unordered = conn == self._unordered  # (it waits for an earlier one of its own that waits)
        gw = self._global_writer
        if gw is not None and (gw.conn != conn or (unordered and gw.waiting)):
            self._depend(ticket, gw)
        if ticket.is_global:
            for other in (self._active if write else self._writes):
                if other.conn != conn or (unordered and other.waiting):
                    self._depend(ticket, other)
            if write:
                self._global_writer = ticket
                if ticket.quiesce:
                    self._quiescing = ticket
                self._global_readers = {}
                self._writer.clear()
                self._readers.clear()
            else:
                self._global_readers[ticket] = None
        else:
            if write:
                for other in self._global_readers:
                    if other.conn != conn or (unordered and other.waiting):
                        self._depend(ticket, other)
            for key in ticket.keys:
                last = self._writer.get(key)
                if last is not None and (last.conn != conn or (unordered and last.waiting)) and \
                        last is not ticket:  # (a key named twice: MSET k 1 k 2)
                    self._depend(ticket, last)
                if write:
                    readers = self._readers.pop(key, None)
                    if readers:
                        for other in readers:
                            if other.conn != conn or (unordered and other.waiting):
                                self._depend(ticket, other)
                    self._writer[key] = ticket
                else:
                    self._readers.setdefault(key, {})[ticket] = None
        self._active[ticket] = None
        if write:
            self._writes[ticket] = None
        return ticket.waiting == 0

    def done(self, ticket: Ticket) -> list[Ticket]:
        """``ticket``'s request was answered on this side; returns the tickets now free to go."""
        if ticket.done or not ticket.tracked:
            ticket.done = True
            return []
        ticket.done = True
        self._active.pop(ticket, None)
        self._writes.pop(ticket, None)
        if ticket.is_global:
            if self._global_writer is ticket:
                self._global_writer = None
            if self._quiescing is ticket:
                self._quiescing = None
            self._global_readers.pop(ticket, None)
        else:
            for key in ticket.keys:
                if self._writer.get(key) is ticket:
                    del self._writer[key]
                readers = self._readers.get(key)
                if readers is not None:
                    readers.pop(ticket, None)
                    if not readers:
                        del self._readers[key]
        free = []
        for dependent in ticket.dependents:
            dependent.waiting -= 1
            if dependent.waiting == 0:
                free.append(dependent)
        ticket.dependents = []
        return free

    def _depend(self, ticket: Ticket, on: Ticket) -> None:
        if not on.done:
            ticket.waiting += 1
            on.dependents.append(ticket)
