"""The proxy's own probes, taken out of the counts INFO shows a client.

During an update the proxy sends PINGs of its own to the leader (the fences' probes of
:mod:`twinproxy.engine.waits`). redis-server counts them like any command: in ``INFO
commandstats`` (``cmdstat_ping``), in ``total_commands_processed`` and in the network byte
totals. A client that compares those before and after its own requests would see more than it
sent, which it would not directly. So the reply to a client's INFO during an update is given
without the probes, when the engine knows exactly how many of them the server had run before
that INFO: it lets no probe be in flight while an INFO is (see ``Codec.counts_requests``).

What changes, per probe: ``cmdstat_ping`` one call fewer (the line goes when no call is left,
as redis-server leaves out a command never called; its ``usec`` shrinks in proportion, the one
figure that is an estimate), ``total_commands_processed`` one fewer, ``total_net_input_bytes``
by the 14 bytes of the PING and ``total_net_output_bytes`` by the 7 of ``+PONG``. CONFIG
RESETSTAT sets all of those to 0, so the proxy's count starts again from it.
"""

from __future__ import annotations

import re

from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.types import encode_command

PROBE = encode_command(b"PING")
PROBE_REPLY = b"+PONG\r\n"

_CMDSTAT = re.compile(rb"^cmdstat_ping:calls=(\d+),usec=(\d+),usec_per_call=[\d.]+([^\r\n]*)\r\n",
                      re.M)
_TOTALS = {
    b"total_commands_processed": 1,
    b"total_net_input_bytes": len(PROBE),
    b"total_net_output_bytes": len(PROBE_REPLY),
}
_TOTAL = re.compile(rb"^(%s):(\d+)" % b"|".join(_TOTALS), re.M)


def counts_requests(request: Request) -> bool:
    """INFO (any section: the default one has ``total_commands_processed``) and CONFIG
    RESETSTAT."""
    return request.name == "INFO" or resets_counts(request)


def resets_counts(request: Request) -> bool:
    """CONFIG RESETSTAT."""
    args = request.args
    return request.name == "CONFIG" and bool(args) and args[0].upper() == b"RESETSTAT"


def without_probes(raw: bytes, probes: int) -> bytes:
    """INFO's reply ``raw`` (a RESP2 bulk string or a RESP3 verbatim one) as it would be had
    the server not run ``probes`` PINGs of the proxy's; any other reply as it is."""
    if probes <= 0 or raw[:1] not in (b"$", b"=") or not raw.endswith(b"\r\n"):
        return raw
    head, sep, rest = raw.partition(b"\r\n")
    try:
        size = int(head[1:])
    except ValueError:
        return raw
    if not sep or size < 0 or len(rest) != size + 2:
        return raw
    text = _TOTAL.sub(lambda m: b"%s:%d" % (m[1], max(0, int(m[2]) - probes * _TOTALS[m[1]])),
                      rest[:-2])
    text = _CMDSTAT.sub(lambda m: _cmdstat(m, probes), text)
    return b"%c%d\r\n%s\r\n" % (raw[0], len(text), text)


def _cmdstat(match: re.Match[bytes], probes: int) -> bytes:
    """``cmdstat_ping``'s line with ``probes`` calls fewer (none when no call is left and
    nothing else of it counts: redis-server shows no line for such a command)."""
    calls, usec, rest = int(match[1]), int(match[2]), match[3]
    left = max(0, calls - probes)
    if left == 0 and all(v == b"0" for v in re.findall(rb"=(\d+)", rest)):
        return b""
    usec = usec * left // calls if calls else 0
    per_call = usec / left if left else 0.0
    return b"cmdstat_ping:calls=%d,usec=%d,usec_per_call=%.2f%s\r\n" % (
        left, usec, per_call, rest)
