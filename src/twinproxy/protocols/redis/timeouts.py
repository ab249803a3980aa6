"""A blocking command's timeout, as it stands when the proxy sends the command again.

During an update a client may wait in a blocking command (BLPOP, BLMOVE, XREAD BLOCK ...) that
the proxy takes back from a server and sends again: at the sync point (released from the leader
so that the snapshot holds no half-served pop), and at the cutover (the old version stops, the
new one serves). Directly, the client's timeout runs from when it sent the command; sent again
as it was, it would start over, and a client that asked to wait 2 s could wait 2 s more. So the
command goes again with what is left of its timeout.

What is left is rounded up (to the millisecond): never a shorter wait than the client asked.
A timeout of 0 (wait for ever) stays 0; one already spent becomes the shortest wait the server
knows (1 ms), never 0, which would mean for ever. Timeouts in seconds may be decimals since
Redis 6.0, the versions twinproxy updates; XREAD's and XREADGROUP's ``BLOCK`` and WAIT's and
WAITAOF's timeout are whole milliseconds.
"""

from __future__ import annotations

import math

from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.types import encode_command

# Where each blocking command carries its timeout, among its arguments (after the name):
# -1 the last, 0 the first.
_SECONDS_AT = {
    "BLPOP": -1, "BRPOP": -1, "BRPOPLPUSH": -1, "BLMOVE": -1, "BZPOPMIN": -1, "BZPOPMAX": -1,
    "BLMPOP": 0, "BZMPOP": 0,
}
_MS_AT = {"WAIT": -1, "WAITAOF": -1}  # (milliseconds)
_BLOCK_MS = frozenset({"XREAD", "XREADGROUP"})


def time_left(request: Request, elapsed: float) -> None:
    """Rewrite ``request`` in place, ``elapsed`` seconds after the client sent it, with what
    is left of its timeout; a request without one (or with 0) is left as it is."""
    at = _SECONDS_AT.get(request.name)
    args = request.args
    if at is not None:
        if not args:
            return
        index = at % len(args)
        left = _left(args[index], elapsed, 1.0)
    elif request.name in _MS_AT:
        if not args:
            return
        index = _MS_AT[request.name] % len(args)
        left = _left(args[index], elapsed, 1000.0)
    elif request.name in _BLOCK_MS:
        index = _block_index(args, 3 if request.name == "XREADGROUP" else 0)
        if index is None:
            return
        left = _left(args[index], elapsed, 1000.0)
    else:
        return
    if left is None:
        return
    args = list(args)
    args[index] = left
    request.args = args
    request.raw = encode_command(request.name, *args)


def _left(word: bytes, elapsed: float, unit: float) -> bytes | None:
    """What is left of the timeout ``word`` (in seconds when ``unit`` is 1, milliseconds when
    1000, a whole number); None when it is 0 or not such a number (the server answers that
    as it would have)."""
    if unit == 1000.0 and not word.isdigit():
        return None
    try:
        timeout = float(word)
    except ValueError:
        return None
    if not timeout > 0 or math.isinf(timeout):
        return None
    # (rounded to the nanosecond before the ceiling: 8.117 s is 8117.000000000001 ms in
    # binary floating point, which must not become 8118)
    left_ms = max(1, math.ceil(round(timeout * 1000 / unit - elapsed * 1000, 6)))
    if unit == 1000.0:
        return b"%d" % left_ms
    return b"%d.%03d" % divmod(left_ms, 1000)


def _block_index(args: list[bytes], start: int) -> int | None:
    """The index of XREAD's ``BLOCK`` value, before ``STREAMS`` (from ``start``: after
    XREADGROUP's ``GROUP group consumer``)."""
    for i in range(start, len(args) - 1):
        upper = args[i].upper()
        if upper == b"STREAMS":
            return None
        if upper == b"BLOCK":
            return i + 1
    return None
