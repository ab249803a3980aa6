"""Lifecycle events: one log line per step of an update, named so that machines can find it.

An operator reads the text log; a log shipper reads ``--log-format json``, where the record's
``event`` attribute becomes the ``"event"`` key and each field a key of its own (see
:class:`twinproxy.service.JsonFormatter`). Searching for ``"event": "rollback"`` is then enough to
alert on every rollback, whatever the wording of the message. This is for lifecycle steps only,
never for single requests: the hot path logs nothing (a ``divergence`` is logged only when no
rule explains it, and by default that ends the update).

This module is the one list of event names: :func:`log_event` refuses any other, so a name
cannot drift between the code that logs it, the documentation (``docs/control-api.md``) and
the searches operators write.

================= ===============================================================================
update_started    an update to a version was asked for and accepted
sync_point        the point of the request stream the new version's state is taken at
synced            the new version holds the leader's state at the sync point
mve               both versions receive every request; warm-up begins
divergence        a reply differed and no rule explained it
cutover           the new version now leads
following         after a keep-old cutover: the old version follows the new one
stopped_following after a keep-old cutover: the old version no longer follows (``reason``)
leader_failed     the leader died during MVE; the follower takes over
rollback          the new version was dropped (the ``reason`` field says why)
================= ===============================================================================
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["EVENTS", "RESERVED", "log_event"]

EVENTS = ("update_started", "sync_point", "synced", "mve", "divergence", "cutover", "following",
          "stopped_following", "leader_failed", "rollback")

# Keys every JSON line has; a field may not take one of these names.
RESERVED = frozenset({"time", "level", "logger", "message", "event", "error"})

# Problems an operator should notice even with the log filtered to warnings.
_WARNING = frozenset({"divergence", "rollback", "stopped_following", "leader_failed"})

log = logging.getLogger("twinproxy.events")


def log_event(name: str, message: str, *, level: int | None = None, **fields: Any) -> None:
    """Log one lifecycle event as one line.

    ``fields`` are appended to the text as ``key=value`` (so the text log carries them too) and
    kept on the record as ``fields``, which the JSON formatter writes as keys of their own. The
    level is INFO, or WARNING for the events that mean trouble (``divergence``, ``rollback``,
    ``stopped_following``, ``leader_failed``), unless ``level`` is given.

    Args:
        name: the event name, one of :data:`EVENTS`.
        message: the sentence for a human reader, without the fields.
        level: a :mod:`logging` level overriding the default.
        fields: values worth searching for (``to="v7"``, ``reason="..."``, ``seconds=1.5``);
            JSON-friendly values (str, int, float, bool, None) stay as they are in JSON lines.

    Raises:
        ValueError: ``name`` is not in :data:`EVENTS`, or a field is named like one of the
            keys every JSON line has (:data:`RESERVED`). Both are bugs in the caller, caught
            by the tests rather than shipped as a name nobody searches for.
    """
    if name not in EVENTS:
        raise ValueError(f"unknown lifecycle event {name!r}: add it to twinproxy.events.EVENTS")
    clash = RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"event field {sorted(clash)[0]!r} clashes with a JSON log key")
    if level is None:
        level = logging.WARNING if name in _WARNING else logging.INFO
    message = " ".join(message.splitlines())
    if fields:
        message = f"{message} " + " ".join(f"{key}={_shown(value)}"
                                            for key, value in fields.items())
    log.log(level, "%s", message, extra={"event": name, "fields": fields})


def _shown(value: Any) -> str:
    """A field value that stays one token in a text line: quoted when it has spaces."""
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    text = " ".join(text.splitlines())
    return repr(text) if not text or any(c.isspace() or c in "'\"=" for c in text) else text
