"""What the admin API drives (:class:`Controlled`), and how it says no (:class:`Refused`).

Declared apart from the HTTP code so that a reader of the service sees the whole contract the
admin API holds it to in one short file, and so that the control package imports nothing of the
service (the service imports the package to serve the API: the other way round would be a
circle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twinproxy.metrics import Counted

if TYPE_CHECKING:
    from twinproxy.config import Config
    from twinproxy.divergences import DivergenceLog

__all__ = ["Controlled", "Refused", "Transition"]


class Refused(Exception):
    """A control request that cannot be done now or as asked.

    ``status`` is the HTTP status the admin API answers with: 409 for a transition that is not
    allowed in the current state (promote in SINGLE, update during an update), 400 for a bad
    request (an unknown version).
    """

    def __init__(self, reason: str, status: int = 409):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Transition(Protocol):
    """An update as the admin API sees it (:class:`twinproxy.lifecycle.Update`)."""

    @property
    def following(self) -> bool:
        """After a keep-old cutover: the old version follows the new one."""


class Controlled(Counted, Protocol):
    """What the admin API drives: :class:`twinproxy.service.Service` is the one. Declared here
    so that this package imports nothing of the service, which imports it to serve the API.

    A transition that cannot be done raises :class:`Refused`; the API answers with its status
    and reason.
    """

    config: Config
    divergences: DivergenceLog

    @property
    def updating(self) -> Transition | None:
        """The update in progress, if any."""

    async def update(self, to: str) -> None:
        """Start an update to version ``to``."""

    def promote(self) -> None:
        """Cut over now (or stop the old version's following)."""

    def rollback(self) -> None:
        """Drop the new version and keep the old one."""

    async def settle(self, update: Transition, was_following: bool,
                     timeout: float | None = None) -> bool:
        """Wait until the transition just asked of ``update`` is done; False if it is not
        within the config's bounds."""
