"""When the follower counts as hung: the check made at the engine's clock ticks.

Kept apart from :mod:`.engine` because it is one question about the whole state (every client's
follower lane and the shared connection), asked on a timer, as :mod:`.conditions` asks the
lifecycle's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinproxy.engine.commands import FOLLOWER, LEADER

if TYPE_CHECKING:
    from twinproxy.config import UpdateConfig
    from twinproxy.engine.modes import Mode
    from twinproxy.engine.records import Client, Exchange
    from twinproxy.engine.sides import Side

HEALTH_EVERY = 0.5  # seconds between checks of the follower's oldest unanswered request


class Health:
    """The follower's health (a part of :class:`twinproxy.engine.Engine`)."""

    clients: dict[int, Client]
    sides: list[Side]
    settings: UpdateConfig
    mode: Mode
    failure: str | None
    follower_answered: float
    fail: Any

    def _check_health(self, now: float) -> None:
        """A follower hangs when it owes replies and has given none for ``follower_timeout``.
        Progress, not each request's time, is what counts: a server answers a pipeline of huge
        values all at once after building them, the leader no sooner than the follower, and a
        follower as slow as the leader under the same load is no reason to give up an update.
        A follower that is slower and slower falls behind, which the backlog's bounds catch.
        For the same reason a request the leader took long to answer (Redis's DEBUG RELOAD or
        DEBUG SLEEP) gives the follower that long more for it."""
        if not self.mode.live or self.failure is not None or self.mode.took_over:
            return
        timeout = self.settings.follower_timeout
        oldest = [_owed_since(c.lanes[FOLLOWER].flight[0])
                  for c in self.clients.values() if c.lanes[FOLLOWER].flight]
        shared = self.sides[FOLLOWER].shared
        if shared is not None and shared.flight:
            oldest.append(_owed_since(shared.flight[0]))
        if oldest and now - max(min(oldest), self.follower_answered) > timeout:
            self.fail(f"the follower {self.sides[FOLLOWER].name} did not answer within "
                      f"{timeout:g}s (follower_timeout)")


def _owed_since(exchange: Exchange) -> float:
    """When the follower's reply to ``exchange`` (sent to it) became late: its sending, plus
    the time the leader took to answer it, if the leader did."""
    sent = exchange.legs[LEADER].sent
    took = exchange.leader_at - sent if sent and exchange.leader_at > sent else 0.0
    return exchange.legs[FOLLOWER].sent + took
