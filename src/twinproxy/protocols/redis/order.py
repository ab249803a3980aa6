"""How a Redis client's requests are ordered during an update.

The engine orders a request by the keys it touches and whether it writes them
(:mod:`twinproxy.engine.ordering`). For most Redis commands that is what ``describe`` finds from
the server's command table; four things need the connection's history:

* **MULTI ... EXEC**: a queued command does nothing until EXEC, so it touches nothing itself;
  EXEC touches the union of its queue's keys and the keys the connection WATCHes, and writes if
  any of them does. The queue travels with EXEC, so that the follower can be given the leader's
  effects for the whole transaction.
* **Pub/sub**: PUBLISH's reply counts the subscribers, so publishing and (un)subscribing are all
  ordered on one pseudo-key, as writes, and PUBSUB (NUMSUB, NUMPAT, CHANNELS: counts of the
  subscriptions) as a read of it.
* **Scripts** (EVAL, EVALSHA, FCALL) are writes on their declared keys.
* **MONITOR** turns the connection into a stream of the server's own (times, addresses): it is
  served by the leader only and never compared (``solo``).

A client that is in the middle of MULTI when the update begins resumes its transaction here: what
it queued before is part of its EXEC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinproxy.protocols.base import OrderState

if TYPE_CHECKING:
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Request
    from twinproxy.protocols.redis.session import ConnectionState

PUBSUB = b"\x00pubsub"  # the pseudo-key every publish and subscription is ordered on
SCRIPTS = frozenset({"EVAL", "EVALSHA", "FCALL"})
PUBSUB_COMMANDS = frozenset({"PUBLISH", "SPUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE",
                             "PUNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE"})
TRANSACTION = frozenset({"EXEC", "DISCARD", "MULTI", "WATCH", "RESET"})
ENDS_WATCH = frozenset({"DISCARD", "UNWATCH", "RESET"})
NOTHING: tuple[tuple[bytes, ...], bool, bool, bool, tuple] = ((), False, False, False, ())


class RedisOrderState(OrderState):
    """One Redis client's transaction and watched keys, as the order sees them."""

    def __init__(self, codec: Codec, table: Any, state: ConnectionState | None):
        super().__init__(codec, table)
        self.solo = state is not None and state.monitor
        self.watch: set[bytes] = set()
        self.keys: set[bytes] = set()
        self.queue: list[Request] = []
        self.write = False
        self.is_global = False
        if state is not None and state.in_multi:
            self._begin()
            for request in state.queued:
                self._queue(codec.describe(request, table))

    def _begin(self) -> None:
        self.in_transaction = True
        self.keys, self.queue, self.write, self.is_global = set(), [], False, False

    def _queue(self, request: Request) -> None:
        self.queue.append(request)
        self.keys.update(request.keys)
        self.write = self.write or request.write or request.name in SCRIPTS
        self.is_global = self.is_global or request.is_global

    def view(self, request: Request) -> tuple[tuple[bytes, ...], bool, bool, bool,
                                                tuple[Request, ...]]:
        request = self.describe(request, self.table)
        name = request.name
        if name == "MONITOR":
            self.solo = True
        if self.in_transaction and name not in TRANSACTION:
            self._queue(request)
            return (), False, False, True, ()
        if name == "MULTI":
            self._begin()
            return NOTHING
        if name == "EXEC":
            queue = tuple(self.queue)
            keys = tuple(self.keys | self.watch)
            write, is_global = self.write, self.is_global
            self.in_transaction, self.watch, self.queue = False, set(), []
            return keys, write, is_global, False, queue
        if name in ENDS_WATCH:
            self.in_transaction, self.watch = False, set()
            return NOTHING
        if name == "WATCH":
            self.watch.update(request.keys)
            return request.keys, False, False, False, ()
        if name in PUBSUB_COMMANDS:
            return (PUBSUB,), True, False, False, ()
        if name == "PUBSUB":  # (its counts read the subscriptions)
            return (PUBSUB,), False, False, False, ()
        return (request.keys, request.write or name in SCRIPTS, request.is_global, False, ())
