"""The Redis reply parser: every RESP2/RESP3 type, nested, any split, strictness and limits;
values, their canonical form and the encoders."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

import twinproxy.protocols.redis.replies as reply_module
from tests.protocols.redis_support import (
    SETTINGS,
    cut_at,
    hostile,
    python_peak,
    replies_of,
    same,
    same_every_way,
    values,
)
from twinproxy.protocols import compiled
from twinproxy.protocols.messages import Limits, LocalProtocolError, RemoteProtocolError, Reply
from twinproxy.protocols.redis import (
    CODEC,
    NO_REPLY,
    Attributed,
    BigNumber,
    Double,
    Map,
    Push,
    RespError,
    RespSet,
    SimpleString,
    Verbatim,
    canonical,
    encode_command,
    encode_reply,
)

TYPES = [
    (b"+OK\r\n", SimpleString(b"OK")),
    (b"+\r\n", SimpleString(b"")),
    (b"-ERR no\r\n", RespError(b"ERR no")),
    (b":0\r\n", 0),
    (b":-9223372036854775808\r\n", -(2**63)),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*2\r\n:1\r\n*1\r\n+x\r\n", [1, [SimpleString(b"x")]]),
    (b"_\r\n", None),
    (b",1.5\r\n", Double(b"1.5")),
    (b",-inf\r\n", Double(b"-inf")),
    (b",nan\r\n", Double(b"nan")),
    (b",1e+300\r\n", Double(b"1e+300")),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (b"(3492890328409238509324850943850943825024385\r\n",
     BigNumber(3492890328409238509324850943850943825024385)),
    (b"=15\r\ntxt:Some string\r\n", Verbatim(b"Some string", b"txt")),
    (b"!21\r\nSYNTAX invalid syntax\r\n", RespError(b"SYNTAX invalid syntax", blob=True)),
    (b"%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n", Map([SimpleString(b"a"), 1, SimpleString(b"b"), 2])),
    (b"~2\r\n:1\r\n:2\r\n", RespSet([1, 2])),
    (b">2\r\n+invalidate\r\n_\r\n", Push([SimpleString(b"invalidate"), None])),
    (b"|1\r\n+ttl\r\n:3600\r\n+v\r\n",
     Attributed(Map([SimpleString(b"ttl"), 3600]), SimpleString(b"v"))),
    (b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n", [Attributed(Map([SimpleString(b"a"),
                                                               SimpleString(b"b")]), 1), 2]),
    (b"|0\r\n:5\r\n", Attributed(Map(), 5)),
    (b"%0\r\n", Map()), (b"~0\r\n", RespSet()), (b">0\r\n", Push()),
]


@pytest.mark.parametrize(("data", "value"), TYPES)
def test_every_type(data: bytes, value: object) -> None:
    replies, rest = same_every_way(replies_of, data + b"+next\r\n:1")
    assert len(replies) == 2 and same(replies[0][0], value) and replies[0][1] == data
    assert rest == ("buffered", 2)


BAD = [
    (b":01\r\n", "bad integer"), (b":+1\r\n", "bad integer"), (b": 1\r\n", "bad integer"),
    (b":99999999999999999999\r\n", "bad integer"), (b"$-2\r\n", "bulk length -2"),
    (b"$01\r\n0\r\n", "bad length"), (b"$3\r\nabcd\r\n", "not followed by CRLF"),
    (b"*-2\r\n", "aggregate length -2"), (b"|-1\r\n", "aggregate length -1"),
    (b"?\r\n", "unknown reply type"), (b",1.5x\r\n", "bad double"), (b",\r\n", "bad double"),
    (b"#x\r\n", "bad boolean"), (b"_x\r\n", "a null with content"), (b"(1a\r\n", "bad big"),
    (b"=3\r\ntxt\r\n", "verbatim"), (b"=4\r\ntxt_\r\n", "verbatim"), (b"$?\r\n", "bad length"),
    (b"\r\n", "unknown reply type"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_malformed_replies_are_protocol_errors(data: bytes, message: str) -> None:
    replies, (kind, text) = same_every_way(replies_of, b"+ok\r\n" + data)
    assert len(replies) == 1 and kind == "error" and message in text, text


def test_a_line_at_the_limit_is_fine() -> None:
    # Past the limits is in the contract suite (tests/protocols/test_contract.py).
    ok = b"+" + b"x" * 10 + b"\r\n"
    assert replies_of(ok, limits=Limits(max_line=10))[0][0][0] == b"x" * 10


def test_a_100_mb_bulk_reply_in_64_kib_chunks_is_linear() -> None:
    data = b"$%d\r\n%s\r\n" % (100 * 1024 * 1024, b"v" * (100 * 1024 * 1024))
    reader = CODEC.reply_reader()
    reader.expect(CODEC.request_reader().receive(encode_command("GET", "big"))[0])
    tracemalloc.start()
    start = time.process_time()
    got: list[Reply] = []
    for i in range(0, len(data), 65536):
        got += reader.receive(data[i : i + 65536])
    seconds = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(got) == 1 and got[0].raw == data and len(got[0].value) == 100 * 1024 * 1024
    assert seconds < 10 and peak < 5 * len(data)


def test_a_large_array_arriving_in_small_chunks_is_parsed_once() -> None:
    n = 200_000
    data = b"*%d\r\n" % n + b":1\r\n" * n
    start = time.process_time()
    [(value, raw)], _ = replies_of(data, [data[i : i + 1000] for i in range(0, len(data), 1000)])
    assert len(value) == n and raw == data
    assert time.process_time() - start < 10


# -- canonical form ---------------------------------------------------------------------------


@pytest.mark.parametrize(("resp2", "resp3"), [
    (b"+OK\r\n", b"$2\r\nOK\r\n"),
    (b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (b"$3\r\ninf\r\n", b",inf\r\n"),
    (b":1\r\n", b"#t\r\n"),
    (b":0\r\n", b"#f\r\n"),
    (b"$-1\r\n", b"_\r\n"),
    (b"*-1\r\n", b"_\r\n"),
    (b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n", b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n"),
    (b"*2\r\n:1\r\n:2\r\n", b"~2\r\n:1\r\n:2\r\n"),
    (b"$3\r\nabc\r\n", b"=7\r\ntxt:abc\r\n"),
    (b"-ERR x\r\n", b"!5\r\nERR x\r\n"),
    (b"$1\r\nv\r\n", b"|1\r\n+k\r\n+v\r\n$1\r\nv\r\n"),
    (b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
     b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"),
    (b":12\r\n", b"(12\r\n"),
])
def test_resp2_and_resp3_spellings_are_canonically_equal(resp2: bytes, resp3: bytes) -> None:
    [(v2, _)], _ = replies_of(resp2)
    [(v3, _)], _ = replies_of(resp3)
    assert canonical(v2) == canonical(v3)
    hash(canonical(v3))


def test_canonical_errors_are_not_bytes_and_no_reply_is_itself() -> None:
    assert canonical(RespError(b"ERR x")) != b"ERR x"
    assert canonical(RespError(b"ERR x")) == RespError(b"ERR x", blob=True)
    assert RespError(b"WRONGTYPE x").code == b"WRONGTYPE"
    assert canonical(NO_REPLY) is NO_REPLY
    assert CODEC.canonical(Reply(b"", NO_REPLY)) != CODEC.canonical(Reply(b"$-1\r\n", None))


def test_encode_command() -> None:
    assert encode_command("SET", b"k", 12) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    with pytest.raises(LocalProtocolError):
        encode_command()
    with pytest.raises(LocalProtocolError):
        encode_command("SET", object())  # type: ignore[arg-type]


def test_encode_reply_refuses_what_resp_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply(SimpleString(b"a\r\nb"))
    with pytest.raises(LocalProtocolError):
        encode_reply(RespError(b"a\nb"))
    assert encode_reply(RespError(b"a\nb"), resp3=True) == b"!3\r\na\nb\r\n"
    with pytest.raises(LocalProtocolError):
        encode_reply(object())
    assert encode_reply({b"a": 1}, resp3=True) == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert encode_reply(1.5) == b"$3\r\n1.5\r\n"


# -- properties -------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(values, min_size=1, max_size=4), st.lists(st.integers(0, 10**6), max_size=5))
def test_property_resp3_round_trip_any_split(items: list, cuts: list[int]) -> None:
    data = b"".join(encode_reply(v, resp3=True) for v in items)
    replies, rest = replies_of(data, cut_at(data, cuts))
    assert rest == ("buffered", 0)
    assert [raw for _, raw in replies] == [encode_reply(v, resp3=True) for v in items]
    for (got, _), want in zip(replies, items, strict=True):
        assert same(got, want), (got, want)


def _resp2(value: object) -> bytes | None:
    try:
        return encode_reply(value)
    except LocalProtocolError:
        return None


def _has_big_number(value: object) -> bool:
    if type(value) is BigNumber:
        return True
    if type(value) is Attributed:
        return _has_big_number(value.value)
    return isinstance(value, list) and any(map(_has_big_number, value))


@SETTINGS
@given(values)
def test_property_resp2_and_resp3_encodings_are_canonically_equal(value: object) -> None:
    resp2 = _resp2(value)
    if resp2 is None or _has_big_number(value):  # RESP2 sends big numbers as bulk strings
        return
    [(v2, _)], _ = replies_of(resp2)
    [(v3, _)], _ = replies_of(encode_reply(value, resp3=True))
    assert canonical(v2) == canonical(v3) == canonical(value)


@SETTINGS
@given(st.lists(values, min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=3)), max_size=3))
def test_property_mutated_replies_frame_the_same_whole_and_byte_by_byte(items: list,
                                                                        edits: list) -> None:
    data = bytearray(b"".join(encode_reply(v, resp3=True) for v in items))
    for at, text in edits:
        at %= len(data) + 1
        data[at:at] = text
    data = bytes(data)
    whole = replies_of(data)
    assert replies_of(data, [data[i : i + 1] for i in range(len(data))]) == whole


@SETTINGS
@given(hostile, st.lists(st.integers(0, 10**6), max_size=4))
def test_property_announced_sizes_take_no_memory_before_their_bytes(data: bytes,
                                                                    cuts: list[int]) -> None:
    """Under the default limits (512 MB bulks, 1M elements, a map of 1M pairs), what a reply
    holds is what came."""
    peak = python_peak(lambda: replies_of(data, cut_at(data, cuts)))
    assert peak < 32 * 1024 + 16 * len(data)


def _taken(data: bytes, chunks: list[bytes], limits: list[int], walk: object) -> tuple:
    """What ``take`` gives for ``data`` fed in ``chunks``, asked for ``limits`` replies in turn:
    the bytes of each reply as ``next`` frames them, grouped as taken, with the error flags."""
    saved, reply_module._c_replies = reply_module._c_replies, walk
    try:
        parser = reply_module.RespReplyParser(Limits())
        out: list[tuple] = []
        asks = iter(limits * 100)
        try:
            for chunk in chunks:
                parser.feed(chunk)
                while (got := parser.take(next(asks, 3)))[0]:
                    out.append(got)
        except RemoteProtocolError as exc:
            return out, ("error", str(exc).split(" at byte")[0])
        return out, ("buffered", parser.buffered)
    finally:
        reply_module._c_replies = saved


@SETTINGS
@given(st.lists(values, min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=3)), max_size=3),
       st.lists(st.integers(0, 10**6), max_size=4), st.lists(st.integers(1, 4), min_size=1,
                                                              max_size=3))
def test_property_take_frames_as_next_does_with_the_c_walk_and_without(
        items: list, edits: list, cuts: list[int], limits: list[int]) -> None:
    """The MVE engine's ``take`` (replies as bytes, in C where built) agrees with the exact
    parser on what each reply is, where the stream fails, and which replies are errors."""
    data = bytearray(b"".join(encode_reply(v, resp3=True) for v in items))
    for at, text in edits:
        at %= len(data) + 1
        data[at:at] = text
    data = bytes(data)
    chunks = cut_at(data, cuts)
    framed, end = replies_of(data, chunks)
    walks = [None, compiled.load("redis").replies]
    for walk in walks:
        taken, taken_end = _taken(data, chunks, limits, walk)
        assert taken_end == end
        if end[0] == "error":  # (a take that meets the error gives nothing of that call)
            assert b"".join(r for _, r in framed).startswith(b"".join(r for _, r, _ in taken))
            continue
        assert b"".join(raw for _, raw, _ in taken) == b"".join(raw for _, raw in framed)
        assert sum(n for n, _, _ in taken) == len(framed)
        at = 0
        for n, _, error in taken:
            assert error == any(type(v) is RespError for v, _ in framed[at : at + n])
            at += n


def test_take_walks_plain_replies_and_arrays_in_one_step() -> None:
    walk = compiled.load("redis").replies
    if walk is None:
        pytest.skip("_scan.c was not built (tests/test_packaging.py says so)")
    data = b"+OK\r\n$3\r\nabc\r\n-ERR x\r\n*2\r\n:1\r\n$-1\r\n:-12\r\n*-1\r\n*0\r\n,1.5\r\n"
    limits = Limits()
    assert walk(data, 0, 100, limits.max_bulk, limits.max_line, limits.max_depth,
                limits.max_elements) == (7, len(data) - len(b",1.5\r\n"), True)
    # (RESP3's types, an incomplete reply, a number in another spelling: the parser's)
    for other in (b":012\r\n", b":-0\r\n", b"$01\r\nx\r\n", b"$3\r\nabcd\r\n", b"*1\r\n", b"+OK"):
        assert walk(b"+OK\r\n" + other, 0, 100, limits.max_bulk, limits.max_line,
                    limits.max_depth, limits.max_elements)[:2] == (1, 5)
