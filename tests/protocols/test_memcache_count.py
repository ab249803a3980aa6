"""SINGLE mode's memcached count (``MemcacheRequestReader.count``, the C scan in ``_scan.c``)
against the exact parser: what it takes is whole requests the exact parser lets through as they
are, it never leaves a complete request held, and the stream after it frames as if the exact
parser had read it all."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocols.test_memcache_properties import EXAMPLES, SETTINGS
from twinproxy.protocols.memcache import CODEC
from twinproxy.protocols.memcache import requests as memcache_requests
from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, RemoteProtocolError

pytestmark = pytest.mark.skipif(memcache_requests.c_scan is None,
                                reason="the C scan is not built (setup.py found no compiler)")

# The commands count() takes (the rest goes to the exact parser).
ORDINARY = {"get", "gets", "gat", "gats", "set", "add", "replace", "append", "prepend", "cas",
            "incr", "decr", "touch", "delete", "mg", "md", "ma", "me", "ms", "mn", "version"}

SMALL = Limits(max_line=60, max_key=6, max_value=20)

key = st.one_of(st.sampled_from([b"a", b"key", b"k" * 7, b"\xe9t\xe9"]),
                st.binary(min_size=1, max_size=9))
digits = st.integers(0, 40).map(b"%d".__mod__)
number = st.one_of(digits, digits, digits,
                   st.sampled_from([b"-1", b"007", b"4294967297", b"x", b"9" * 19, b"1" * 10]))
value = st.binary(max_size=30)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """One request as a client could spell it, mostly well formed."""
    kind = draw(st.sampled_from(["get", "gat", "store", "cas", "line", "mg", "ms", "mn"] * 3
                                + ["other"]))
    if kind == "get":
        name = draw(st.sampled_from([b"get", b"gets"]))
        return b" ".join([name, *draw(st.lists(key, min_size=1, max_size=4))]) + b"\r\n"
    if kind == "gat":
        name = draw(st.sampled_from([b"gat", b"gats"]))
        words = [name, draw(number), *draw(st.lists(key, max_size=3))]
        return b" ".join(words) + b"\r\n"
    if kind in ("store", "cas"):
        data = draw(value)
        size = b"%d" % len(data) if draw(st.integers(0, 3)) else draw(number)
        words = [draw(st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend"]))
                 if kind == "store" else b"cas", draw(key), draw(number), draw(number), size]
        if kind == "cas":
            words.append(draw(number))
        if draw(st.booleans()):
            words.append(b"noreply")
        return b" ".join(words) + b"\r\n" + data + b"\r\n"
    if kind == "line":
        name = draw(st.sampled_from([b"incr", b"decr", b"touch", b"delete"]))
        words = [name, draw(key),
                 *draw(st.lists(st.one_of(number, st.just(b"noreply")), max_size=2))]
        return b" ".join(words) + b"\r\n"
    if kind == "mg":
        name = draw(st.sampled_from([b"mg", b"md", b"ma", b"me"]))
        flags = draw(st.lists(st.sampled_from([b"v", b"q", b"k", b"O12", b"T30", b"b", b"N5"]),
                              max_size=4))
        return b" ".join([name, draw(key), *flags]) + b"\r\n"
    if kind == "ms":
        data = draw(value)
        size = b"%d" % len(data) if draw(st.integers(0, 3)) else draw(number)
        flags = draw(st.lists(st.sampled_from([b"q", b"T0", b"F5", b"I", b"MA", b"b"]),
                              max_size=20))
        return b" ".join([b"ms", draw(key), size, *flags]) + b"\r\n" + data + b"\r\n"
    if kind == "mn":
        return draw(st.sampled_from([b"mn\r\n", b"version\r\n", b"mn\n"]))
    return draw(st.sampled_from([b"quit\r\n", b"stats\r\n", b"flush_all\r\n", b"watch\r\n",
                                 b"verbosity 1\r\n", b"GET a\r\n", b"bget a\r\n",
                                 b"shutdown\r\n", b"\x80\x00\r\n"]))


EDITS = st.tuples(st.sampled_from(["insert", "cut", "drop"]), st.integers(0, 10**6),
                  st.sampled_from([b" ", b"  ", b"\r", b"\n", b"\r\n", b"\0", b"\t", b"get ",
                                   b"0", b"x"]))


def stream(reqs: list[bytes], edits: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(b"".join(reqs))
    for op, at, text in edits:
        at %= len(data) + 1
        if op == "insert":
            data[at:at] = text
        elif op == "cut":
            del data[at:]
        else:
            del data[at:at + 1]
    return bytes(data)


def started(limits: Limits) -> Any:
    """A reader past its connection's first request (count() leaves that one to receive())."""
    reader = CODEC.request_reader(limits)
    assert [r.name for r in reader.receive(b"mn\r\n")] == ["mn"]
    return reader


def framed(reader: Any, chunks: list[bytes]) -> tuple[list[tuple], Any]:
    """The requests ``reader`` frames from ``chunks`` (each as one read), and how it ends: the
    bytes it holds, or the error's reply."""
    out: list[tuple] = []
    for chunk in chunks:
        try:
            got = reader.receive(chunk)
        except RemoteProtocolError as exc:
            out += [(r.name, r.args, r.data, r.raw, r.answer) for r in exc.messages]
            return out, ("error", exc.reply)
        out += [(r.name, r.args, r.data, r.raw, r.answer) for r in got]
    return out, ("held", reader.buffered)


@settings(SETTINGS, max_examples=max(EXAMPLES, 400))
@given(st.lists(request(), min_size=1, max_size=6), st.lists(EDITS, max_size=2), value,
       st.booleans())
def test_property_the_count_takes_what_the_exact_parser_lets_through(
        reqs: list[bytes], edits: list[tuple[str, int, bytes]], more: bytes, small: bool
) -> None:
    limits = SMALL if small else DEFAULT_LIMITS
    data = stream(reqs, edits)
    exact, end = framed(started(limits), [data, more])
    alone, _ = framed(started(limits), [data])

    reader = started(limits)
    used = reader.count(data)
    if used is None:  # nothing taken: the relay frames the read with receive()
        assert reader.buffered == 0
        assert framed(reader, [data, more]) == (exact, end)
        return
    assert 0 < used <= len(data)
    taken, rest = framed(started(limits), [data[:used]])
    # Whole requests, of the ordinary commands, that the exact parser lets through as they are.
    assert rest == ("held", 0) and taken
    assert all(name in ORDINARY and answer is None for name, *_, answer in taken)
    # Nothing complete is left held: what the exact parser frames of the read is what was taken.
    assert alone == taken
    assert reader.buffered == len(data) - used
    # And the stream goes on as if the exact parser had read it all.
    after, after_end = framed(reader, [more])
    assert (taken + after, after_end) == (exact, end)


@pytest.mark.parametrize(("data", "whole", "end", "last"), [
    (b"get a b\r\nset k 0 0 3\r\nabc\r\nmg k v\r\n", 3, b"", None),
    (b"set k 0 0 5\r\nabcde\r\nset k2 0 0 10\r\nabc", 1, b"defghij\r\n", "set"),
    (b"ms k 2 T0\r\nab\r\nmn\r\nget k\r\nget", 3, b"s k\r\n", "gets"),
])
def test_pipelined_ordinary_requests_are_counted_whole(data: bytes, whole: int, end: bytes,
                                                       last: str | None) -> None:
    reader = started(DEFAULT_LIMITS)
    used = reader.count(data)
    assert used is not None
    taken, rest = framed(started(DEFAULT_LIMITS), [data[:used]])
    assert len(taken) == whole and rest == ("held", 0)
    assert reader.buffered == len(data) - used
    assert [r.name for r in reader.receive(end)] == ([last] if last else [])


@pytest.mark.parametrize("data", [
    b"get a\r\nquit\r\n",  # quit: the reader stops reading there
    b"get a\r\nset k 0 0 2000000\r\n",  # over max_value: the proxy answers it itself
    b"get a\r\nget " + b"k" * 300 + b"\r\n",  # a key over max_key: answered too
    b"get a\r\nset k 0 0 1\r\nab\r\n",  # a bad data chunk: an error, now
    b"get a  b\r\n",  # a spacing only the exact parser follows
])
def test_what_must_be_framed_now_is_not_counted(data: bytes) -> None:
    reader = started(DEFAULT_LIMITS)
    assert reader.count(data) is None
    assert reader.buffered == 0
