"""The proxy's own requests, taken out of the counts INFO shows a client.

The proxy sends requests of its own to the server that serves: in SINGLE mode the *sentinel*,
an ``ECHO`` of a random token, where a connection's replies must be framed from a point on (a
blocking request, HELLO, MULTI ..., the settling of a drain) and once when a version comes up
(``backends.sentinel_works``); during an update, PINGs (the fences' probes of
:mod:`twinproxy.engine.waits`). redis-server counts them like any command: in ``INFO
commandstats`` (``cmdstat_echo``, ``cmdstat_ping``) and ``latencystats``, in
``total_commands_processed`` and in the network byte totals. A client that compares those
before and after its own requests would see more than it sent, which it would not directly.
So the reply to a client's INFO is given without them.

How exact that is:

* **During an update** (the probes): exact. The engine knows how many probes the server had
  run before that INFO, since it lets no probe be in flight while an INFO is (see
  ``Codec.counts_requests``).
* **In SINGLE mode** (the sentinels): the sentinels whose reply the proxy had read when it reads
  the INFO's reply. Exact for the client's own connection, whose sentinel runs before its INFO,
  and whenever no other connection's sentinel is out at the same moment; a sentinel of another
  connection that the server runs in the same turn of its loop as the INFO may be counted on
  the wrong side of it (one call too many or too few). Holding the INFO until no sentinel is
  out would let other connections' later requests pass it (docs/design.md, "Arrival order").

What changes, per request taken out: its ``cmdstat_`` line one call fewer (the line goes when no
call is left, as redis-server leaves out a command never called, and with it the command's
``latency_percentiles_usec_`` line; its ``usec`` shrinks in proportion, the one figure that is
an estimate), ``total_commands_processed`` one fewer, ``total_net_input_bytes`` and
``total_net_output_bytes`` by the request's and its reply's bytes. CONFIG RESETSTAT sets all of
those to 0, so the proxy's counts start again from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.types import encode_command

PROBE = encode_command(b"PING")
PROBE_REPLY = b"+PONG\r\n"

_TOTALS = (b"total_commands_processed", b"total_net_input_bytes", b"total_net_output_bytes")
_TOTAL = re.compile(rb"^(%s):(\d+)" % b"|".join(_TOTALS), re.M)


def counts_requests(request: Request) -> bool:
    """INFO (any section: the default one has ``total_commands_processed``) and CONFIG
    RESETSTAT."""
    return request.name == "INFO" or resets_counts(request)


def resets_counts(request: Request) -> bool:
    """CONFIG RESETSTAT."""
    args = request.args
    return request.name == "CONFIG" and bool(args) and args[0].upper() == b"RESETSTAT"


def without_own(raw: bytes, own: Mapping[bytes, tuple[int, int, int]]) -> bytes:
    """INFO's reply ``raw`` (a RESP2 bulk string or a RESP3 verbatim one) as it would be had
    the server not run the proxy's requests ``own``: command name (lower case) -> (calls,
    bytes of those requests, bytes of their replies). Any other reply as it is."""
    own = {name: counts for name, counts in own.items() if counts[0] > 0}
    if not own or raw[:1] not in (b"$", b"=") or not raw.endswith(b"\r\n"):
        return raw
    head, sep, rest = raw.partition(b"\r\n")
    try:
        size = int(head[1:])
    except ValueError:
        return raw
    if not sep or size < 0 or len(rest) != size + 2:
        return raw
    less = [sum(c[i] for c in own.values()) for i in range(3)]
    text = _TOTAL.sub(lambda m: b"%s:%d" % (m[1], max(0, int(m[2]) - less[_TOTALS.index(m[1])])),
                      rest[:-2])
    for name, (calls, _, _) in own.items():
        match = _cmdstat_line(name, text)
        if match is None and b"|" in name:  # (6.2: the command's line)
            name = name.partition(b"|")[0]
            match = _cmdstat_line(name, text)
        if match is None:
            continue
        line = _cmdstat(name, match, calls)
        text = text[:match.start()] + line + text[match.end():]
        if not line:
            text = re.sub(rb"^latency_percentiles_usec_%s:[^\r\n]*\r\n" % re.escape(name), b"",
                          text, flags=re.M)
    return b"%c%d\r\n%s\r\n" % (raw[0], len(text), text)


def without_probes(raw: bytes, probes: int, sentinels: int = 0, sentinel: int = 0,
                   sentinel_reply: int = 0,
                   own: Mapping[bytes, tuple[int, int, int]] | None = None) -> bytes:
    """INFO's reply ``raw`` without ``probes`` PINGs, ``sentinels`` ECHOs of ``sentinel``
    bytes answered with ``sentinel_reply`` bytes, and the requests ``own`` (see
    :func:`tally`)."""
    counts = dict(own or {})
    for name, (calls, sent, got) in ((b"ping", (probes, len(PROBE), len(PROBE_REPLY))),
                                     (b"echo", (sentinels, sentinel, sentinel_reply))):
        before = counts.get(name, (0, 0, 0))
        counts[name] = (before[0] + calls, before[1] + calls * sent, before[2] + calls * got)
    return without_own(raw, counts)


# Commands whose subcommands redis-server 7.0 counts apart (``cmdstat_client|list``); 6.2
# counts them under the command (``cmdstat_client``), which without_own falls back to.
_CONTAINERS = frozenset({b"client", b"config", b"acl", b"command", b"object", b"memory",
                         b"script", b"function", b"slowlog", b"latency", b"module", b"xinfo"})


def tally(own: dict[bytes, tuple[int, int, int]], words: list[bytes], sent: int,
          got: int) -> None:
    """Count in ``own`` one request of the proxy's own (``words``, ``sent`` bytes, answered
    with ``got`` bytes) under the name redis-server's INFO gives it: ``own`` is then what
    :func:`without_own` takes out."""
    name = words[0].lower()
    if name in _CONTAINERS and len(words) > 1:
        name += b"|" + words[1].lower()
    calls, before, after = own.get(name, (0, 0, 0))
    own[name] = (calls + 1, before + sent, after + got)


def _cmdstat_line(name: bytes, text: bytes) -> re.Match[bytes] | None:
    return re.search(rb"^cmdstat_%s:calls=(\d+),usec=(\d+),usec_per_call=[\d.]+([^\r\n]*)"
                     rb"\r\n" % re.escape(name), text, re.M)


def _cmdstat(name: bytes, match: re.Match[bytes], fewer: int) -> bytes:
    """A ``cmdstat_`` line with ``fewer`` calls (none when no call is left and nothing else of
    it counts: redis-server shows no line for such a command)."""
    calls, usec, rest = int(match[1]), int(match[2]), match[3]
    left = max(0, calls - fewer)
    if left == 0 and all(v == b"0" for v in re.findall(rb"=(\d+)", rest)):
        return b""
    usec = usec * left // calls if calls else 0
    per_call = usec / left if left else 0.0
    return b"cmdstat_%s:calls=%d,usec=%d,usec_per_call=%.2f%s\r\n" % (
        name, left, usec, per_call, rest)
