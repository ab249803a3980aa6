"""Shared pieces of the Redis codec tests (no tests here): feeding readers every way, value
strategies, the hypothesis profile.

Hypothesis example counts are modest for CI; ``RESP_PROFILE=deep`` runs them long.
"""

from __future__ import annotations

import itertools
import os
import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from twinproxy.protocols.messages import Limits, RemoteProtocolError
from twinproxy.protocols.redis import (
    Attributed,
    BigNumber,
    Double,
    Map,
    Push,
    RespError,
    RespReplyParser,
    RespRequestReader,
    RespSet,
    SimpleString,
    Verbatim,
    format_double,
)

DEEP = os.environ.get("RESP_PROFILE") == "deep"
SETTINGS = settings(
    max_examples=3000 if DEEP else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def requests_of(data: bytes, chunks: list[bytes] | None = None, limits: Limits | None = None,
                fast: bool = True) -> tuple[list[tuple], Any]:
    """(raw, name, args) of each request framed from ``data`` (fed as ``chunks`` if given), and
    the error raised (its reply) or the bytes left buffered."""
    reader = RespRequestReader(limits or Limits())
    if not fast:
        reader._fast = False
    out: list[tuple] = []
    try:
        for chunk in chunks if chunks is not None else [data]:
            out += [(r.raw, r.name, r.args) for r in reader.receive(chunk)]
    except RemoteProtocolError as exc:
        out += [(r.raw, r.name, r.args) for r in exc.messages]
        return out, ("error", exc.reply)
    return out, ("buffered", reader.buffered)


def replies_of(data: bytes, chunks: list[bytes] | None = None,
               limits: Limits | None = None) -> tuple[list[tuple], Any]:
    """(value, raw) of each reply framed by the parser, and the error or what is buffered."""
    parser = RespReplyParser(limits or Limits())
    out: list[tuple] = []
    try:
        for chunk in chunks if chunks is not None else [data]:
            parser.feed(chunk)
            got = parser.next()
            while got is not None:
                out.append(got)
                got = parser.next()
    except RemoteProtocolError as exc:
        return out, ("error", str(exc).split(" at byte")[0])
    return out, ("buffered", parser.buffered)


def splits(data: bytes) -> list[list[bytes]]:
    """The input whole, one byte at a time, and in a few uneven chunkings."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for size in (2, 3, 7, 64):
        out.append([data[i : i + size] for i in range(0, len(data), size)])
    return out


def cut_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def same_every_way(framer: Callable[..., tuple], data: bytes) -> tuple:
    """Frame ``data`` whole, byte by byte and in chunks; all must agree. Returns the result."""
    whole = framer(data)
    for chunks in splits(data)[1:]:
        assert framer(data, chunks) == whole, chunks[:5]
    return whole


# -- strategies ---------------------------------------------------------------------------------

args_ = st.binary(max_size=12)
commands = st.lists(args_, min_size=1, max_size=6)
line_bytes = st.binary(max_size=10).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
doubles = st.floats(allow_nan=True, allow_infinity=True).map(lambda f: Double(format_double(f)))
scalars = st.one_of(
    st.binary(max_size=10),
    line_bytes.map(SimpleString),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(10**30), 10**30).map(BigNumber),
    st.booleans(),
    st.none(),
    doubles,
    line_bytes.map(RespError),
    st.binary(max_size=10).map(lambda b: RespError(b, blob=True)),
    st.tuples(st.binary(max_size=8), st.sampled_from([b"txt", b"mkd"])).map(
        lambda t: Verbatim(*t)),
)


def _aggregates(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(RespSet),
        st.lists(children, max_size=4).map(Push),
        st.lists(st.tuples(children, children), max_size=3).map(
            lambda kv: Map(x for pair in kv for x in pair)),
        st.tuples(st.lists(st.tuples(scalars, scalars), min_size=1, max_size=2), children).map(
            lambda t: Attributed(Map(x for pair in t[0] for x in pair), t[1])),
    )


values = st.recursive(scalars, _aggregates, max_leaves=12)


def same(a: Any, b: Any) -> bool:
    """Equal with the same RESP types all the way down (Verbatim formats, blob errors ...)."""
    if type(a) is not type(b):
        return False
    if type(a) is Verbatim:
        return a == b and a.format == b.format
    if type(a) is RespError:
        return a == b and a.blob == b.blob
    if type(a) is Attributed:
        return same(a.attributes, b.attributes) and same(a.value, b.value)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# Random bytes spliced with headers that announce the most the default limits allow: a reader
# that sized anything by what a header announces, before the bytes came, would show it.
_BIG_HEADERS = [b"*1000000\r\n", b"$536870912\r\n", b"%1000000\r\n", b"~1000000\r\n",
                b">1000000\r\n", b"|1000000\r\n", b"=536870912\r\n", b"!536870912\r\n",
                b"*1\r\n", b"$3\r\nGET\r\n", b"\r\n", b"PING ", b'"a\\x', b"*2\r\n$1\r\n"]
hostile = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(_BIG_HEADERS), st.binary(max_size=8)), max_size=24)
    .map(b"".join),
)


def python_peak(run: Callable[[], object]) -> int:
    """The most Python memory ``run`` held at once, in bytes."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
