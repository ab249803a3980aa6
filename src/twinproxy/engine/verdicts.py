"""Comparing the follower's replies with the leader's, and what a difference leads to.

The comparison itself is :class:`twinproxy.compare.Comparator` (the config's rules and the
protocol's canonical form); this module adds what only the engine knows: which check the
follower's *plan* asked for (the follower was sent the leader's effect instead of the request,
so its reply answers another request), a transaction's reply compared part by part, a run's
replies compared as bytes first, and pushes matched in order. Every difference becomes a
:class:`~twinproxy.engine.commands.Diverged` notice; an unexpected one also fails the update
when the config says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twinproxy import digests
from twinproxy.compare import EQUAL, Comparator, Verdict
from twinproxy.engine.commands import Command, Diverged
from twinproxy.protocols.messages import Request

if TYPE_CHECKING:
    from twinproxy.engine.records import Client, Exchange
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Reply

FOLLOWER_REFUSED = "builtin:follower-refused-for-now"
MAX_PUSHES = 10000  # pushes waiting to be matched, per connection
LARGE_REPLY = 64 * 1024
"""A leader reply larger than this waits for the follower's as its size and digest, not its
bytes: a follower that runs seconds behind under huge values must not make the proxy hold them
(10 MB values to 50 clients would be gigabytes). Only where no rule needs the value (see
:meth:`Verdicts.by_digest`); such replies are compared byte for byte, by digest, and a
difference is explained by an ``ignore`` rule or not at all."""


def shown(kept: tuple[int, bytes]) -> bytes:
    """How a large reply kept as a digest shows in a divergence record."""
    size, hashed = kept
    return b"(%d bytes, %s %s)" % (size, digests.NAME.encode(), hashed.hex().encode())


def digest(raw: bytes) -> tuple[int, bytes]:
    """What is kept of a large reply: its size and a 16-byte digest (:mod:`twinproxy.digests`)."""
    return len(raw), digests.digest(raw)


class Verdicts:
    """Compares, counts and reports; one per update (the comparator changes when the roles
    swap)."""

    def __init__(self, codec: Codec, comparator: Comparator, table: Any,
                 emit: Callable[[Command], None], fail: Callable[[str], None],
                 rollback_on_divergence: bool):
        self.codec = codec
        self.comparator = comparator
        self.table = table
        self.emit = emit
        self.fail = fail
        self.rollback_on_divergence = rollback_on_divergence
        self.compared = 0
        self.unexpected = 0
        self.expected = 0
        self.expected_rules: dict[str, int] = {}  # expected divergences per rule that explained
        self._runs_by_digest = not comparator.rules.read_values()
        # The leader's name of a thing -> the follower's (Redis: a connection's id; memcached:
        # an item version's CAS token), as the protocol reports them (Codec.server_ids).
        self.ids: dict[Any, Any] = {}

    def by_digest(self, exchange: Exchange) -> bool:
        """Whether a large leader reply to ``exchange`` (a request, or a run) may wait for the
        follower's as its digest: not when a built-in check or a rule that reads values
        applies to it (to one of a run's requests: ``Codec.loose_run``). Those replies are kept
        whole, and count in the backlog's bytes, whose bound fails the update rather than
        letting memory grow."""
        if exchange.run:
            return self._runs_by_digest and not self.codec.loose_run(exchange.request.raw)
        return exchange.plan is None and not self.comparator.rules.read_values(exchange.request)

    def reply(self, client: Client, exchange: Exchange, reply: Reply, elapsed: float) -> None:
        """Compare the follower's reply to ``exchange`` with the leader's and record the
        outcome: a difference a built-in or a config rule explains is kept as expected, with
        that rule."""
        self.compared += 1
        request = exchange.request
        if exchange.leader_digest is not None:
            self.large(client, request, exchange.leader_digest, reply.raw)
            return
        plan = exchange.plan
        leader = exchange.leader_reply
        if plan is not None and plan.check is not None:
            value = self.codec.canonical(reply)
            self.ids.update(self.codec.server_ids(request, exchange.leader_value, value))
            if plan.check(exchange.leader_value, value, elapsed):
                # Sent the leader's effect instead (plan.words), the follower's reply answers
                # another request: its difference is no divergence. A check that only looks
                # past the servers' own names (plan.same) finds the replies the same.
                if leader.raw != reply.raw and plan.words is None and not plan.same:
                    self.record(client, request, leader.raw, reply.raw,
                                Verdict(False, True, plan.rule, (plan.rule,)))
                return
            verdict = self.comparator.compare(request, leader, reply)
            if not verdict.unexpected:
                self.record(client, request, leader.raw, reply.raw, verdict)
                return
            verdict = Verdict(False, False, None, (plan.rule, *verdict.tried))
        else:
            verdict = self.comparator.compare(request, leader, reply)
            if verdict.equal:
                return
            if verdict.unexpected and exchange.queue:
                verdict = self._transaction(exchange.queue, exchange.leader_value, plan, reply,
                                            verdict, elapsed)
        self.record(client, request, leader.raw, reply.raw, verdict)

    def _transaction(self, queue: tuple[Request, ...], a: Any, plan: Any, reply: Reply,
                     verdict: Verdict, elapsed: float) -> Verdict:
        """EXEC's replies, one per queued request, each under that request's own rules (a TTL,
        an INFO or a HELLO inside a transaction differ as they do outside one).

        A request that the follower got as the leader's effect (``effects`` of the EXEC's
        transaction plan: SREM for SPOP) is compared by that effect's check, as outside a
        transaction; when only such requests differ, the replies are equal in effect and
        nothing is recorded. A request with such a rule that ran on both as it was (no plan:
        the leader aborted it, or it joined mid-transaction) must reply the same.
        """
        b = self.codec.canonical(reply)
        if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == len(queue)):
            return verdict
        effects = plan.effects if plan is not None else {}
        used = []
        for i, (request, la, fb) in enumerate(zip(queue, a, b, strict=True)):
            if la == fb:
                continue
            effect = effects.get(i)
            if effect is not None:
                if effect.check is not None and effect.check(la, fb, elapsed):
                    continue
                return Verdict(False, False, None, (*verdict.tried, effect.rule))
            part_plan = self.codec.follower_plan(request, la, False)
            if part_plan is not None and part_plan.check is not None and \
                    part_plan.words is None and part_plan.check(la, fb, elapsed):
                used.append(part_plan.rule)
                continue
            part = self.comparator.compare_values(request, la, fb)
            if part.unexpected:
                return Verdict(False, False, None, (*verdict.tried, *part.tried))
            used.append(part.rule)
        if effects and not used:
            return EQUAL
        return Verdict(False, True, used[0] if used else None, verdict.tried)

    def large(self, client: Client, request: Request, leader: tuple[int, bytes],
              follower: bytes | tuple[int, bytes]) -> None:
        """Replies compared by size and digest (see :data:`LARGE_REPLY`): the follower's given
        as its bytes, or kept as a digest too."""
        kept = follower if isinstance(follower, tuple) else digest(follower)
        if kept == leader:
            return
        rules = self.comparator.rules.matching(request)
        ignore = next((r.name for r in rules if r.action == "ignore"), None)
        verdict = Verdict(False, ignore is not None, ignore, tuple(r.name for r in rules))
        self.record(client, request, shown(leader),
                    shown(follower) if isinstance(follower, tuple) else follower[:200], verdict,
                    "large replies differ")

    def run(self, client: Client, run: Exchange, follower_raw: bytes) -> None:
        """A run whose replies differ as bytes: frame both and compare request by request (a
        transaction's EXEC, part by part: see :meth:`_transaction`)."""
        codec = self.codec
        requests = codec.request_reader().receive(run.request.raw)
        leader, follower = codec.shared_parser(), codec.shared_parser()
        leader.feed(run.leader_raw)
        follower.feed(follower_raw)
        order = codec.order_state(None, self.table)  # (what an EXEC in the run ran)
        for request in requests:
            queue = order.view(request)[4]  # (it describes the request)
            lreply, lraw = codec.run_reply(leader, request)
            freply, fraw = codec.run_reply(follower, request)
            self.compared += 1
            verdict = self.comparator.compare(request, lreply, freply)
            if verdict.unexpected and queue:
                verdict = self._transaction(queue, codec.canonical(lreply), None, freply,
                                            verdict, 0.0)
            elif verdict.unexpected:
                verdict = self._checked(request, lreply, freply, verdict)
            self.record(client, request, lraw, fraw, verdict)

    def _checked(self, request: Request, leader: Reply, follower: Reply,
                 verdict: Verdict) -> Verdict:
        """A run's request whose replies the protocol compares its own way (the check of its
        ``follower_plan``: SMEMBERS's members in any order, HGETALL's pairs): that check's
        verdict, as the request alone would get it (see :meth:`reply`)."""
        a = self.codec.canonical(leader)
        plan = self.codec.follower_plan(request, a, False)
        if plan is None or plan.check is None or plan.words is not None:
            return verdict
        if plan.check(a, self.codec.canonical(follower), 0.0):
            return EQUAL if plan.same else Verdict(False, True, plan.rule, (plan.rule,))
        return Verdict(False, False, None, (plan.rule, *verdict.tried))

    def push(self, client: Client, value: Any, role: int) -> None:
        """Pushes (pub/sub messages, invalidations) are matched in order, never delivered."""
        mine, theirs = client.lanes[role].pushes, client.lanes[1 - role].pushes
        if theirs:
            other = theirs.popleft()
            a, b = (value, other) if role == 0 else (other, value)
            self.compared += 1
            if a != b and not self.codec.same_push(a, b, self.ids):
                self.record(client, Request(b"", "(push)", []), repr(a).encode(),
                            repr(b).encode(), Verdict(False), "push messages differ")
        elif len(mine) < MAX_PUSHES:
            mine.append(value)
        else:
            self.fail(f"client {client.peer}: {MAX_PUSHES} push messages unmatched")

    def record(self, client: Client, request: Request, leader: bytes, follower: bytes,
               verdict: Verdict, reason: str = "replies differ") -> None:
        """Report a difference (nothing for an equal verdict), count it, and fail the update
        on an unexpected one when the config says so."""
        if verdict.equal:
            return
        if verdict.unexpected and not (request.keys or request.is_global or request.write) \
                and self.codec.refused_for_now(follower) and not self.codec.refused_for_now(leader):
            # A request the order does not track (a PING), sent to the follower just before a
            # quiescing request (DEBUG RELOAD) reached it and read by it just after: it was
            # refused there for the moment, and touches no data, so nothing differs but that.
            verdict = Verdict(False, True, FOLLOWER_REFUSED, (FOLLOWER_REFUSED,))
        self.emit(Diverged(client.peer, request, leader, follower, verdict, reason))
        if verdict.expected:
            self.expected += 1
            rule = verdict.rule or "?"
            self.expected_rules[rule] = self.expected_rules.get(rule, 0) + 1
            return
        self.unexpected += 1
        if self.rollback_on_divergence:
            self.fail(f"unexpected divergence on {request.name}: leader replied "
                      f"{leader[:60]!r}, follower {follower[:60]!r}")
