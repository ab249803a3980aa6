"""What the lifecycle waits for during an update, and when each of those conditions holds.

The lifecycle takes its steps (hold the clients, cut over, hand back ...) only once the engine's
state allows them: it sends a ``Watch`` for a set of :data:`CONDITIONS`, and the engine answers
``Reached`` once they all hold at the same time, checked at once and then at the end of every
batch (``Engine._flush``), so the lifecycle never polls the engine's records. Kept apart from
:mod:`.engine` because these are questions about the whole state (every client's lanes, the
fences, the backlog), asked from outside, where the rest of the engine moves requests along.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinproxy.engine.commands import LEADER, Reached

if TYPE_CHECKING:
    from twinproxy.engine import events as ev
    from twinproxy.engine.backlog import Backlog
    from twinproxy.engine.records import Client, Exchange
    from twinproxy.engine.sides import Side

CONDITIONS = ("quiet", "caught-up", "joined", "connected", "unblocked", "drained", "loaded",
              "prior-ended")
"""What the lifecycle may ``Watch`` for:

* ``quiet``: nothing but blocked requests is in the leader, and no fence is open;
* ``caught-up``: the follower answered everything released to it, every push matched;
* ``joined``: every client's follower connection has its session, and the follower is less
  than 1,000 requests behind (a client that needs none yet has none: see
  :meth:`FollowerFlow._open_follower_later`);
* ``connected``: the follower connections ``OpenFollowers`` opened (those no request had
  needed yet) are up, with their sessions. A client that connected since, whose connection is
  still being opened, is not waited for: under a steady stream of new clients there would
  always be one, and the cutover closes it as it did before (it has no session there yet);
* ``unblocked``: no client waits for the leader, except requests blocked in it since the update
  (those are handed back with the client, to be sent again: see :meth:`Handover._end`);
* ``drained``: nothing is on the leader's shared connection, and no client's own leader
  connection has replies that are not its own (a released request's null) on the way;
* ``loaded``: no request that quiesces a server (``Codec.quiesces``: Redis's DEBUG RELOAD)
  is still to be answered by either version;
* ``prior-ended``: no request blocked in the leader since before the update still waits
  (:meth:`Waits.blocked_at_sync_point`: one that does is released at the sync point, a round
  trip of the pause each).
"""


class Conditions:
    """The watched conditions (a part of :class:`twinproxy.engine.Engine`)."""

    clients: dict[int, Client]
    sides: list[Side]
    backlog: Backlog
    fences: dict[Any, None]
    served: list[Exchange]
    blocked: dict[Exchange, None]
    loading: dict[Exchange, None]
    opening: dict[Client, None]
    _watches: list[frozenset[str]]
    _caught_up: Any  # (follower)
    blocked_at_sync_point: Any  # (waits)
    emit: Any

    def _watch(self, event: ev.Watch) -> None:
        """The lifecycle waits for ``event.conditions`` to hold at once: say so (``Reached``)
        now, or at the end of the batch in which they first do."""
        unknown = set(event.conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown conditions: {sorted(unknown)}")
        self._watches.append(event.conditions)
        self._check_watches()

    def _unwatch(self, event: ev.Unwatch) -> None:
        """The lifecycle no longer waits for ``event.conditions``: one watch of them ends."""
        if event.conditions in self._watches:
            self._watches.remove(event.conditions)

    def _check_watches(self) -> None:
        """Say which watched sets of conditions hold now, and keep watching the others."""
        still = []
        for conditions in self._watches:
            if all(self._holds(c) for c in conditions):
                self.emit(Reached(conditions))
            else:
                still.append(conditions)
        self._watches = still

    def _prune_loading(self) -> None:
        """Forget the quiescing requests both versions answered (or never will)."""
        for exchange in [e for e in self.loading if not _pending(e)]:
            del self.loading[exchange]

    def _holds(self, condition: str) -> bool:
        """Whether ``condition`` (one of :data:`CONDITIONS`) holds now."""
        clients = self.clients.values()
        if condition == "quiet":
            return not self.fences and not self.served and all(
                e.request.blocking for c in clients for e in c.lanes[LEADER].flight)
        if condition == "caught-up":
            return self._caught_up()
        if condition == "joined":
            return self.backlog.requests < 1000 and all(
                c.joined or c.lazy for c in clients if not c.solo and not c.gone)
        if condition == "connected":
            return all(c.gone for c in self.opening)
        if condition == "loaded":
            self._prune_loading()
            return not self.loading
        if condition == "prior-ended":
            return not self.blocked_at_sync_point()
        if condition == "unblocked":
            blocked = self.blocked
            return not any(e not in blocked for c in clients for e in c.lanes[LEADER].flight)
        # drained
        shared = self.sides[LEADER].shared
        if shared is not None and shared.flight:
            return False
        return not any(c.lanes[LEADER].conn is not None and c.lanes[LEADER].conn.intercept
                       and not c.gone for c in clients)


def _pending(exchange: Exchange) -> bool:
    """Whether a version has still to answer ``exchange`` (it waits for one, or is out there)."""
    client = exchange.client
    return client is not None and not client.gone and any(
        exchange in lane.queue or exchange in lane.flight for lane in client.lanes)
