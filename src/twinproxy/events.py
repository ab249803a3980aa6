"""Lifecycle events: one log line per step of an update, named so that machines can find it.

An operator reads the text log; a log shipper reads ``--log-format json``, where the record's
``event`` attribute becomes the ``"event"`` field (see :class:`twinproxy.service.JsonFormatter`).
Searching for ``"event": "rollback"`` is then enough to alert on every rollback, whatever the
wording of the message. This is for lifecycle steps only, never for single requests: the hot path
logs nothing.

Event names in use (add a name here when the engine grows a step):

============== ==================================================================
update_started  an update to a version was asked for and accepted
sync_point      the point of the request stream the new version's state is taken at
synced          the new version holds the leader's state at the sync point
mve             both versions receive every request; warm-up begins
divergence      a reply differed and no rule explained it
cutover         the new version now leads
rollback        the new version was dropped (the ``reason`` field says why)
============== ==================================================================
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["EVENTS", "log_event"]

EVENTS = ("update_started", "sync_point", "synced", "mve", "divergence", "cutover", "rollback")

# Problems an operator should notice even with the log filtered to warnings.
_WARNING = frozenset({"divergence", "rollback"})

log = logging.getLogger("twinproxy.events")


def log_event(name: str, message: str, *, level: int | None = None, **fields: Any) -> None:
    """Log one lifecycle event as one line.

    ``fields`` are appended to the text as ``key=value`` (so the text log carries them too) and
    kept on the record as ``fields`` for a formatter that wants them apart. The level is INFO,
    or WARNING for ``divergence`` and ``rollback``, unless ``level`` is given.

    Args:
        name: the event name, one of :data:`EVENTS` (others are logged as given).
        message: the sentence for a human reader, without the fields.
        level: a :mod:`logging` level overriding the default.
        fields: values worth searching for (``to="v7"``, ``reason="..."``, ``seconds=1.5``).
    """
    if level is None:
        level = logging.WARNING if name in _WARNING else logging.INFO
    if fields:
        message = f"{message} " + " ".join(f"{key}={_shown(value)}"
                                            for key, value in fields.items())
    log.log(level, "%s", message, extra={"event": name, "fields": fields})


def _shown(value: Any) -> str:
    """A field value that stays one token in a text line: quoted when it has spaces."""
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    text = " ".join(text.splitlines())
    return repr(text) if not text or any(c.isspace() or c in "'\"=" for c in text) else text
