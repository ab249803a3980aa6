"""Expiry times during an update: the follower gets the leader's moment, not its own.

memcached reads an expiry of up to 30 days as seconds from now, and anything larger as a unix
time. The follower runs a request later than the leader (after the replay of what came after the
sync point, by seconds), so ``touch k 600`` would expire the item later there: the follower gets
the same expiry as a unix time, counted from when the leader answered (:func:`absolute_expiry`).
Both servers then expire the item in the same second, as the copy's items do.
"""

from __future__ import annotations

from twinproxy.protocols.memcache.commands import BY_NAME, number
from twinproxy.protocols.messages import Request

__all__ = ["absolute_expiry"]

RELATIVE_MAX = 60 * 60 * 24 * 30  # memcached's REALTIME_MAXDELTA: larger is a unix time

# Where a text command's expiry is, in its arguments.
_TEXT_AT = {"set": 2, "add": 2, "replace": 2, "append": 2, "prepend": 2, "cas": 2,
            "touch": 1, "gat": 0, "gats": 0}
_META = frozenset(("ms", "mg", "ma"))
_META_FLAGS = frozenset(b"TN")  # T: the new TTL; N: the TTL of an item made on a miss


def _absolute(token: bytes, at: int) -> bytes | None:
    seconds = number(token)
    if seconds is None or seconds <= 0 or seconds > RELATIVE_MAX:
        return None  # never, already expired, or a unix time already
    return b"%d" % (at + seconds)


def absolute_expiry(request: Request, at: float) -> list[bytes] | None:
    """The follower's words for ``request`` with a relative expiry made a unix time counted
    from ``at`` (when the leader answered; 0: unknown), the data block last; None when it has
    none to change."""
    if not at:
        return None
    name = request.name
    args = request.args
    moment = int(at)
    where = _TEXT_AT.get(name)
    if where is not None:
        if len(args) <= where:
            return None
        new = _absolute(args[where], moment)
        if new is None:
            return None
        words = [name.encode(), *args[:where], new, *args[where + 1:]]
    elif name in _META:
        start = 2 if name == "ms" else 1
        changed = list(args)
        found = False
        for i in range(start, len(args)):
            flag = args[i]
            if flag[:1] and flag[0] in _META_FLAGS:
                new = _absolute(flag[1:], moment)
                if new is not None:
                    changed[i] = flag[:1] + new
                    found = True
        if not found:
            return None
        words = [name.encode(), *changed]
    else:
        return None
    if BY_NAME[name].size_at is not None:
        words.append(request.data or b"")
    return words
