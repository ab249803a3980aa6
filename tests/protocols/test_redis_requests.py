"""The Redis request reader: framing exactly as redis-server does, any split, errors, limits.

What redis-server itself does with the odd inputs is in the golden tests
(``test_redis_golden.py``, recorded from 6.2 and 7.0); what every reader does (whole, byte by
byte, trailing bytes, staying broken, limits, random bytes) in the codec contract suite
(``test_contract.py``); here what the Redis reader does on its own.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocols.redis_support import (
    SETTINGS,
    args_,
    commands,
    cut_at,
    hostile,
    python_peak,
    requests_of,
    same_every_way,
)
from twinproxy.protocols.messages import Limits, RemoteProtocolError
from twinproxy.protocols.redis import CODEC, encode_command, fast, split_inline
from twinproxy.protocols.redis.checks import PAIRS_UNORDERED, UNORDERED
from twinproxy.protocols.redis.names import (
    LOOSE,
    READ_ONLY,
    RUNNABLE,
    relative_expiry,
    small_replies,
)


@pytest.fixture(params=["c", "python"])
def count_path(request, monkeypatch) -> str:
    """count() both ways: the C scan (_scan.c) and the hiredis proof it replaces where no
    compiler built it."""
    if request.param == "python":
        monkeypatch.setattr(fast, "c_scan", None)
    elif fast.c_scan is None:
        pytest.skip("the C scan is not built (setup.py found no compiler)")
    return request.param


def test_one_request_in_one_chunk_is_that_chunk() -> None:
    data = encode_command("SET", "key", "value")
    [req] = CODEC.request_reader().receive(data)
    assert req.raw is data
    assert (req.name, req.args, req.session) == ("SET", [b"key", b"value"], False)


def test_names_upper_case_ascii_only_and_keep_every_byte() -> None:
    [req] = CODEC.request_reader().receive(encode_command(b"g\xe9t\xff", "a"))
    assert req.name == "G\xe9T\xff"  # latin-1, only ASCII letters upper-cased
    assert req.name.encode("latin-1") == b"G\xe9T\xff"


@pytest.mark.parametrize(("command", "session"), [
    ("SELECT 1", True), ("AUTH pw", True), ("HELLO 3", True), ("CLIENT SETNAME x", True),
    ("CLIENT TRACKING ON", True), ("client reply off", True), ("CLIENT NO-EVICT on", True),
    ("CLIENT NO-TOUCH on", True), ("CLIENT SETINFO lib-name x", True), ("CLIENT LIST", False),
    ("CLIENT ID", False), ("CLIENT", False), ("READONLY", True), ("READWRITE", True),
    ("MULTI", True), ("EXEC", True), ("DISCARD", True), ("WATCH k", True), ("UNWATCH", True),
    ("SUBSCRIBE a", True), ("UNSUBSCRIBE", True), ("PSUBSCRIBE p*", True),
    ("PUNSUBSCRIBE", True), ("SSUBSCRIBE s", True), ("SUNSUBSCRIBE", True), ("RESET", True),
    ("MONITOR", True), ("QUIT", True), ("GET k", False), ("PUBLISH c m", False),
])
def test_session_flag(command: str, session: bool) -> None:
    for data in (encode_command(*command.split()), command.encode() + b"\r\n"):
        [req] = CODEC.request_reader().receive(data)
        assert req.session is session, data


@pytest.mark.parametrize(("line", "args"), [
    (b"SET a b", [b"SET", b"a", b"b"]),
    (b"  SET   a\tb  ", [b"SET", b"a", b"b"]),
    (b'SET a "b c"', [b"SET", b"a", b"b c"]),
    (b'SET a "\\x41\\n\\r\\t\\b\\a\\"\\\\q"', [b"SET", b"a", b'A\n\r\t\b\a"\\q']),
    (b'SET a "\\x4"', [b"SET", b"a", b"x4"]),
    (b"SET a 'it\\'s' 'a\\nb'", [b"SET", b"a", b"it's", b"a\\nb"]),
    (b'ab"cd" x', [b"abcd", b"x"]),
    (b"a\vb \vc", [b"a\vb", b"c"]),
    (b'"" \'\'', [b"", b""]),
    (b'"a"\v', [b"a"]),
    (b"", []),
    (b" \t ", []),
    (b"a\rb", [b"a", b"b"]),
])
def test_inline_splitting(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


@pytest.mark.parametrize("line", [b'"abc', b"'abc", b'"a"b', b"'a'b", b'x "a\\"', b'"a\\'])
def test_inline_unbalanced_quotes(line: bytes) -> None:
    assert split_inline(line) is None


def test_inline_lines_end_at_lf_with_optional_cr_and_blank_lines_are_skipped() -> None:
    reqs, rest = same_every_way(requests_of, b"\r\n\n  \r\nPING\nECHO a\r\r\n\r\n")
    assert [(raw, args) for raw, _, args in reqs] == [(b"PING\n", []),
                                                       (b"ECHO a\r\r\n", [b"a"])]
    assert rest == ("buffered", 0)


def test_empty_multibulk_counts_are_consumed() -> None:
    reqs, rest = same_every_way(requests_of, b"*0\r\n*-1\r\n*-7\r\nPING\r\n")
    assert [name for _, name, _ in reqs] == ["PING"] and rest == ("buffered", 0)


def test_a_nul_before_a_line_end_waits_like_redis_server() -> None:
    # strchr stops at the NUL: redis-server sees no end to the line and waits for more.
    for data in (b"PING\x00\nPING\r\n", b"*1\x00\r\n$4\r\nPING\r\n", b"*1\r\n$4\x00\r\nPING\r\n"):
        reqs, rest = same_every_way(requests_of, data)
        assert reqs == [] and rest == ("buffered", len(data))


def test_lax_line_ends_that_redis_server_accepts() -> None:
    # A header ends at its first CR and the byte after it is skipped; so are 2 bytes after a bulk.
    data = b"*1\rx$4\rxPINGxx*2\r\n$4\r\nECHO\r\n$1\r\nz\r\n"
    reqs, _ = same_every_way(requests_of, data)
    assert [(raw, args) for raw, _, args in reqs] == [
        (b"*1\rx$4\rxPINGxx", []), (b"*2\r\n$4\r\nECHO\r\n$1\r\nz\r\n", [b"z"])]


def test_a_lax_ending_and_an_unfinished_request_do_not_fool_the_fast_path() -> None:
    # One CRLF short after "p*", one too many from the header at the end: hiredis holds that
    # header inside an unfinished array, with no byte left unread.
    data = (encode_command("HELLO", "3") + b"*2\r\n$10\r\nPSUBSCRIBE\r\n$2\r\np*\r\xdb"
            + encode_command("PUBLISH", "c", "m") + b"*2\r\n")
    reqs, rest = same_every_way(requests_of, data)
    assert [raw for raw, _, _ in reqs] == [
        encode_command("HELLO", "3"), b"*2\r\n$10\r\nPSUBSCRIBE\r\n$2\r\np*\r\xdb",
        encode_command("PUBLISH", "c", "m")]
    assert rest == ("buffered", 4) and requests_of(data, fast=False) == (reqs, rest)


ERRORS = [
    (b"*1\r\nx4\r\nPING\r\n", "expected '$', got 'x'"),
    (b"*1\r\n\r\n", "expected '$', got ' '"),
    (b"*1\r\n\n\r\n", "expected '$', got ' '"),
    (b"*01\r\n", "invalid multibulk length"),
    (b"*+1\r\n", "invalid multibulk length"),
    (b"* 1\r\n", "invalid multibulk length"),
    (b"*-0\r\n", "invalid multibulk length"),
    (b"*1_0\r\n", "invalid multibulk length"),
    (b"*99999999999999999999\r\n", "invalid multibulk length"),
    (b"*2147483648\r\n", "invalid multibulk length"),  # past redis-server 7.0's INT_MAX
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n$01\r\n", "invalid bulk length"),
    (b"*1\r\n$\r\n", "invalid bulk length"),
    (b"*1\r\n$999999999999\r\n", "invalid bulk length"),
    (b'ECHO "a\r\n', "unbalanced quotes in request"),
    (b"ECHO 'a\r\n", "unbalanced quotes in request"),
    (b"x" * 65537, "too big inline request"),
    (b"*" + b"1" * 65537, "too big mbulk count string"),
    (b"*1\r\n$" + b"1" * 65537, "too big bulk count string"),
    (b"PING\x00" + b"x" * 65533, "too big inline request"),
]


@pytest.mark.parametrize(("data", "message"), ERRORS)
def test_errors_carry_redis_servers_reply(data: bytes, message: str) -> None:
    reqs, result = same_every_way(requests_of, encode_command("PING") + data)
    assert [name for _, name, _ in reqs] == ["PING"]
    assert result == ("error", b"-ERR Protocol error: " + message.encode() + b"\r\n")



PIPELINE = encode_command("SET", "k", "v") * 80  # over 1 KB: the hiredis count, not the one-request
TAILS = [
    # what redis-server answers at once with a protocol error
    (b"*x\r\n", "error"), (b"*1\r\n$x\r\n", "error"), (b"*1\r\nx\r\n", "error"),
    (b"*2147483648\r\n", "error"), (b"*1\r\n$-1\r\n", "error"),
    # a whole request: inline, not ordinary, or in a spelling only the exact parser follows
    (b"$3\r\n", "framed"), (b"x\r\n", "framed"), (encode_command("SUBSCRIBE", "c"), "framed"),
    (b"*1\r\n$4\r\nPINGxx", "framed"),
    # the start of a request, but not one the fast count proves canonical: receive() holds it
    (b"*1\r\nx", "wait"), (b"*1\r\n$4\r\nPINGx", "wait"), (b"PING", "wait"),
    # the start of a canonical request: count() takes what is before it and holds it
    (b"*2\r\n$3\r\nGET\r\n$1", "start"), (b"*2\r\n$3\r\nGE", "start"), (b"*1", "start"),
    (b"*1\r", "start"), (b"*1\r\n$4\r\nPING\r", "start"),
]


@pytest.mark.parametrize("before", [encode_command("PING"), PIPELINE])
@pytest.mark.parametrize(("tail", "kind"), TAILS)
def test_count_takes_ordinary_requests_only_when_what_follows_is_the_start_of_one(
        before, tail, kind, count_path) -> None:
    """SINGLE mode forwards what count() takes and waits for more bytes: so the bytes after the
    requests it takes must be the start of one request and nothing else. Garbage (the error
    redis-server answers at once), a whole request, an inline line: count() takes nothing, and
    receive() frames it all now, since the client may be waiting for the reply."""
    data = before + tail
    reader = CODEC.request_reader()
    used = reader.count(data)
    if kind == "start":
        assert used == len(before) and reader.buffered == len(tail)
        got = reader.receive(b"\r\n" if tail.endswith(b"\r") else b"")
        assert got == [] or got[0].raw.startswith(tail)
        return
    assert used is None
    requests = before.count(b"*")
    if kind == "error":
        with pytest.raises(RemoteProtocolError) as info:
            reader.receive(data)
        assert len(info.value.messages) == requests
    else:
        assert len(reader.receive(data)) == requests + (kind == "framed")


def test_the_line_limit_is_the_line_not_the_chunk() -> None:
    ok = b"x" * 65536 + b"\n"
    assert requests_of(ok)[0][0][2] == []
    assert requests_of(ok, cut_at(ok, [65536]))[0][0][1] == "X" * 65536
    reqs, rest = requests_of(b"x" * 65536)
    assert reqs == [] and rest == ("buffered", 65536)


def test_a_100_mb_value_in_64_kib_chunks_is_linear() -> None:
    value = b"v" * (100 * 1024 * 1024)
    data = encode_command("SET", "big", value)
    reader = CODEC.request_reader()
    tracemalloc.start()
    start = time.process_time()
    got = []
    for i in range(0, len(data), 65536):
        got += reader.receive(data[i : i + 65536])
    seconds = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [len(r.args[1]) for r in got] == [len(value)]
    assert got[0].raw == data
    assert seconds < 10  # a copy per chunk would be ~1600 chunks x 50 MB on average
    assert peak < 5 * len(data)


# -- properties ---------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(commands, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=6))
def test_property_any_split_frames_the_same(cmds: list[list[bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_command(*c) for c in cmds)
    reqs, rest = requests_of(data, cut_at(data, cuts))
    assert [raw for raw, _, _ in reqs] == [encode_command(*c) for c in cmds]
    assert [[name.encode("latin-1"), *args] for _, name, args in reqs] == [
        [c[0].upper(), *c[1:]] for c in cmds]
    assert rest == ("buffered", 0)
    assert requests_of(data, fast=False) == (reqs, rest)


MUTATIONS = [b"*", b"$", b"\r", b"\n", b"\r\n", b"\r\n*", b"\r\n$", b"0", b"1", b"-", b"+", b"=",
             b"~", b"|", b"\x00", b" ", b'"', b"'", b"*1\r\n", b"$1\r\n", b"\r\n=", b"*99999",
             b"*2\r\n", b"\r\n*2\r\n"]
EDITS = st.tuples(st.sampled_from(["insert", "lax", "cut", "append"]), st.integers(0, 10**6),
                  st.sampled_from(MUTATIONS))


def mutated(cmds: list[list[bytes]], edits: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(b"".join(encode_command(*c) for c in cmds))
    for op, at, text in edits:
        at %= len(data) + 1
        if op == "insert":
            data[at:at] = text
        elif op == "lax":  # a line end redis-server takes too: CR and any byte
            lf = data.find(b"\n", at)
            if lf >= 0:
                data[lf] = 0xDB
        elif op == "cut":
            del data[at:]
        else:
            data += text
    return bytes(data)


@SETTINGS
@given(st.lists(commands, min_size=1, max_size=6), st.lists(EDITS, max_size=4),
       st.lists(st.integers(0, 10**6), max_size=4))
def test_property_mutated_streams_frame_the_same_fast_exact_and_split(
    cmds: list[list[bytes]], edits: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    data = mutated(cmds, edits)
    exact = requests_of(data, fast=False)
    for result in (requests_of(data), requests_of(data, cut_at(data, cuts)),
                   requests_of(data, [data[i : i + 1] for i in range(len(data))])):
        assert result == exact


def _counted(data: bytes) -> tuple[int | None, bool, list[tuple], Any]:
    """count()'s answer on ``data``, whether it noted a script, and the stream framed: what
    count() took then the rest, each by the exact parser, or all by receive() when it took
    nothing; with the bytes left buffered or the error."""
    reader = CODEC.request_reader()
    used = reader.count(data)
    if not used:
        reqs, rest = requests_of(data)
        return used, reader.holds, reqs, rest
    taken, rest = requests_of(data[:used], fast=False)
    assert rest == ("buffered", 0)  # whole requests as redis-server frames them
    after, rest = requests_of(data[used:], fast=False)
    assert reader.buffered == len(data) - used
    return used, reader.holds, taken + after, rest


@SETTINGS
@given(st.lists(commands, min_size=1, max_size=6), st.lists(EDITS, max_size=4))
def test_property_the_c_count_takes_what_the_exact_parser_frames(
    cmds: list[list[bytes]], edits: list[tuple[str, int, bytes]]
) -> None:
    """What the C count takes is whole requests as redis-server frames them (the exact parser,
    fast path off), and the stream is framed as with the hiredis proof it replaces, which takes
    the same or, where it cannot prove a chunk canonical (a "\r\n|" in it, say), nothing."""
    data = mutated(cmds, edits)
    if fast.c_scan is None:
        pytest.skip("the C scan is not built")
    used, holds, framed, rest = _counted(data)
    c_scan, fast.c_scan = fast.c_scan, None
    try:
        py_used, py_holds, py_framed, py_rest = _counted(data)
    finally:
        fast.c_scan = c_scan
    assert (framed, rest) == (py_framed, py_rest)
    assert py_used in (used, None)
    if py_used is not None:
        assert holds == py_holds


many_args = st.lists(args_, min_size=16, max_size=40)


def _without_c_elements(frame: Callable[[], Any]) -> Any:
    """``frame()`` with the parser's own loop over every element (no _scan.c elements())."""
    c_elements, fast.c_elements = fast.c_elements, None
    try:
        return frame()
    finally:
        fast.c_elements = c_elements


@SETTINGS
@given(st.lists(many_args, min_size=1, max_size=3), st.lists(EDITS, max_size=4),
       st.lists(st.integers(0, 10**6), max_size=4), st.sampled_from([None, 0, 5]))
def test_property_the_elements_of_a_request_of_many_are_framed_in_c_as_by_the_parser(
    cmds: list[list[bytes]], edits: list[tuple[str, int, bytes]], cuts: list[int],
    max_bulk: int | None,
) -> None:
    """Requests of 16 or more elements, mutated, whole and split, under a bulk limit or not:
    the same requests, the same error or the same bytes held as the parser's own loop."""
    if fast.c_elements is None:
        pytest.skip("_scan.c is not built")
    data = mutated(cmds, edits)
    limits = Limits() if max_bulk is None else Limits(max_bulk=max_bulk)
    for chunks in (None, cut_at(data, cuts)):
        assert requests_of(data, chunks, limits, fast=False) == _without_c_elements(
            lambda chunks=chunks: requests_of(data, chunks, limits, fast=False))


# Values of 4 to 40 KB, of any bytes (CR, LF, "*" and "$" among them) repeated.
large_values = st.tuples(st.binary(min_size=1, max_size=8), st.integers(4096, 40_000)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]])
large_commands = st.lists(st.one_of(args_, large_values), min_size=1, max_size=3)


@SETTINGS
@given(st.lists(large_commands, min_size=1, max_size=5), st.lists(EDITS, max_size=3),
       st.lists(st.integers(0, 10**6), max_size=4))
def test_property_large_requests_are_framed_in_c_as_by_the_parser(
    cmds: list[list[bytes]], edits: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    """A chunk of large requests (SETs of 100 KB values) is framed request by request by the C
    scan and elements (_took_large), not by the hiredis proof: mutated, whole and split, the
    same requests, the same error or the same bytes held as the exact parser."""
    if fast.c_scan is None:
        pytest.skip("_scan.c is not built")
    data = mutated(cmds, edits)
    exact = requests_of(data, fast=False)
    for chunks in (None, cut_at(data, cuts)):
        assert requests_of(data, chunks) == exact


def test_a_chunk_of_large_requests_is_not_read_through_by_the_proof(monkeypatch) -> None:
    """Three SETs of 50 KB values and a GET in one read: framed without the hiredis proof,
    which reads every byte several times (two thirds of the proxy's time at -P 16); a chunk
    of small requests still goes to it."""
    if fast.c_scan is None:
        pytest.skip("_scan.c is not built")
    import twinproxy.protocols.redis.requests as module

    proved = []
    real = module.fast_requests
    monkeypatch.setattr(module, "fast_requests",
                        lambda data, *rest: proved.append(len(data)) or real(data, *rest))
    cmds = [("SET", f"k{i}", b"v" * 50_000) for i in range(3)] + [("GET", "k0")]
    data = b"".join(encode_command(*c) for c in cmds)
    got = CODEC.request_reader().receive(data)
    assert [(r.raw, r.name, r.args) for r in got] == [
        (encode_command(*c), c[0], [a if isinstance(a, bytes) else a.encode() for a in c[1:]])
        for c in cmds]
    assert proved == []
    small = b"".join(encode_command("SET", f"k{i}", "v") for i in range(1000))
    assert len(CODEC.request_reader().receive(small)) == 1000
    assert proved == [len(small)]


def test_a_million_arguments_in_64_kib_chunks_are_framed_in_c() -> None:
    """RPUSH of 1.1 million values (7.7 MB): every value, as the parser's own loop frames them,
    in about a tenth of its time (generous here: a shared machine)."""
    if fast.c_elements is None:
        pytest.skip("_scan.c is not built")
    values = [b"%d" % (i % 10) for i in range(1_100_000)]
    data = encode_command("RPUSH", "many", *values)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]

    def frame() -> tuple[float, list]:
        start = time.process_time()
        got = requests_of(data, chunks)
        return time.process_time() - start, got

    c_seconds, got = frame()
    py_seconds, py_got = _without_c_elements(frame)
    assert got == py_got
    [(raw, name, args)] = got[0]
    assert (raw, name, args[0], args[1:]) == (data, "RPUSH", b"many", values)
    assert c_seconds < py_seconds / 3, (c_seconds, py_seconds)


@SETTINGS
@given(hostile, st.lists(st.integers(0, 10**6), max_size=4))
def test_property_announced_sizes_take_no_memory_before_their_bytes(data: bytes,
                                                                    cuts: list[int]) -> None:
    """Under the default limits (512 MB bulks, 1M elements), what a request holds is what came."""
    peak = python_peak(lambda: requests_of(data, cut_at(data, cuts)))
    assert peak < 32 * 1024 + 16 * len(data)


def _relay_with_passing(stream: bytes, cuts: list[int], size: int):
    """Read ``stream`` in the pieces ``cuts`` makes, as SINGLE mode does with values of
    ``size`` bytes or more passing through: (the bytes forwarded, the requests completed, the
    most bytes the reader held at once)."""
    reader = CODEC.request_reader()
    reader.pass_values(size)
    out, done, held = [], [], 0
    for piece in cut_at(stream, cuts):
        if reader.value_left:
            took, request = reader.pass_through(piece)
            out.append(piece[:took])
            if request is not None:
                done.append(request)
                out.append(request.raw)
            piece = piece[took:]
            if not piece:
                continue
        got = reader.receive(piece)
        done += got
        out += [r.raw for r in got]
        if reader.value_left:
            out.append(reader.passing())
        held = max(held, reader.buffered)
    return b"".join(out), done, held


@SETTINGS
@given(st.lists(st.integers(0, 3000), max_size=8), st.integers(0, 2))
def test_a_large_value_passes_through_as_it_comes_and_the_requests_stay_whole(cuts, where):
    """The bytes forwarded are the client's bytes, in order; every request still completes once
    (the one with the large value with its other arguments and an empty value), so replies are
    paired as before; the reader never holds the value."""
    big = b"v" * 5000
    middle = [[b"SET", b"k", big], [b"SET", b"k", big, b"EX", b"100"],
              [b"MSET", b"a", big, b"b", big]][where]
    commands = [[b"SET", b"a", b"1"], middle, [b"GET", b"a"]]
    stream = b"".join(encode_command(*c) for c in commands)
    forwarded, done, held = _relay_with_passing(stream, cuts, 1000)
    assert forwarded == stream
    got = [[r.name.encode(), *r.args] for r in done]
    assert got[0] == commands[0] and got[2] == commands[2] and len(got) == 3
    # A value that came whole in one read is framed whole; one that did not passed through.
    assert all(g == w or (w is big and g == b"") for g, w in zip(got[1], middle, strict=True))
    assert held < 1000


def test_a_value_under_the_size_or_a_command_that_is_not_ordinary_is_held_whole():
    small = encode_command(b"SET", b"k", b"x" * 999)
    forwarded, done, _ = _relay_with_passing(small, [10, 500], 1000)
    assert forwarded == small and [r.raw for r in done] == [small]
    publish = encode_command(b"SUBSCRIBE", b"x" * 5000)  # it changes the connection's session
    forwarded, done, _ = _relay_with_passing(publish, [10, 500], 1000)
    assert [r.raw for r in done] == [publish]


@pytest.mark.parametrize(("data", "holds"), [
    (encode_command("EVALSHA", "abc", "0"), True),
    (encode_command("fcall", "f", "0"), True),
    (encode_command("EvAl", "return 1", "0"), True),
    (encode_command("GET", "k"), False),
    (encode_command("SET", "k", "v") + encode_command("evalsha", "abc", "0") * 3, True),
    (encode_command("SET", "k", "v") + encode_command("GET", "k") * 3, False),
])
def test_count_takes_script_calls_and_notes_them(data: bytes, holds: bool, count_path) -> None:
    """A script may keep the server refusing others (-BUSY) while it runs: count() still takes
    it (the fast path), and says so, so that SINGLE mode's sentinel is one the server answers
    even then."""
    reader = CODEC.request_reader()
    assert reader.count(data) == len(data)
    assert reader.holds is holds


MULTI, EXEC = encode_command("MULTI"), encode_command("exec")


@pytest.mark.parametrize(("data", "taken", "holds"), [
    (MULTI + encode_command("SET", "k", "v") + encode_command("GET", "k") + EXEC, True, False),
    (MULTI + EXEC + encode_command("GET", "k") + MULTI + encode_command("discard"), True, False),
    (MULTI + encode_command("EVALSHA", "abc", "0") + EXEC, True, True),  # (EXEC runs a script)
    (MULTI + encode_command("GET", "k"), False, False),  # left open: EXEC comes later
    (EXEC, False, False),
    (MULTI + MULTI + EXEC, False, False),
    (MULTI + encode_command("SELECT", "1") + EXEC, False, False),  # a session change inside
    (encode_command("WATCH", "k") + MULTI + EXEC, False, False),
])
def test_count_takes_whole_transactions_as_ordinary_requests(data: bytes, taken: bool,
                                                             holds: bool) -> None:
    """redis-py's default pipeline is one write of MULTI, its commands, EXEC: the connection is
    as it was after it, so SINGLE mode's count takes it (with the C scan; without it, the
    transaction is framed, as before)."""
    if fast.c_scan is None:
        pytest.skip("the C scan is not built (setup.py found no compiler)")
    reader = CODEC.request_reader()
    assert reader.count(data) == (len(data) if taken else None)
    assert reader.holds is holds


@pytest.mark.parametrize(("data", "taken", "small", "reads", "expiring"), [
    (MULTI + encode_command("SET", "k", "v") + encode_command("INCR", "n") + EXEC, True, True,
     False, False),
    (encode_command("GET", "k") + MULTI + encode_command("GET", "k") + EXEC + MULTI +
     encode_command("discard"), True, False, True, False),
    (MULTI + encode_command("SET", "k", "v", "EX", "9") + EXEC, True, True, False, True),
    (MULTI + encode_command("SPOP", "s") + EXEC, False, False, False, False),  # (not runnable)
    (MULTI + encode_command("SET", "k", "v"), False, False, False, False),  # left open
    (MULTI + MULTI + EXEC, False, False, False, False),
    (encode_command("WATCH", "k") + MULTI + EXEC, False, False, False, False),
    (encode_command("SET", "k", "v") + EXEC, False, False, False, False),  # none opened
])
def test_count_run_takes_whole_transactions_of_runnable_requests(data: bytes, taken: bool,
                                                                 small: bool, reads: bool,
                                                                 expiring: bool) -> None:
    """During an update, redis-py's default pipeline travels as a run too: its transaction
    opens and ends in the one read, and runs only what a run may hold (with the C scan;
    without it, request by request, as before)."""
    if fast.c_scan is None:
        pytest.skip("the C scan is not built (setup.py found no compiler)")
    reader = CODEC.request_reader()
    got = reader.count_run(data)
    assert got == ((len(data), len(CODEC.request_reader().receive(data))) if taken else None)
    if taken:
        assert (reader.small_replies, reader.reads_only, reader.expiring) == (
            small, reads, expiring)


@pytest.mark.parametrize(("words", "small"), [
    ([[b"SET", b"k", b"v"]] * 3, True),
    ([[b"set", b"k", b"v"], [b"incr", b"n"], [b"DEL", b"a", b"b"]], True),
    ([[b"SET", b"k", b"v", b"GET"]], False),  # the old value
    ([[b"SET", b"k", b"get"]], False),  # (a whole argument "get": taken as the option)
    ([[b"GET", b"k"]], False),
    ([[b"SET", b"k", b"v"], [b"LRANGE", b"l", b"0", b"-1"]], False),
])
def test_count_run_says_whether_every_reply_is_small_whatever_the_data(words, small) -> None:
    """What lets a new client's first writes take the shared connection during an update."""
    reader = CODEC.request_reader()
    data = b"".join(encode_command(*w) for w in words)
    assert reader.count_run(data) == (len(data), len(words))
    assert reader.small_replies is small
    # Request by request, the same answer (Codec.small_reply: a new client's request framed
    # alone takes the shared connection as its run would).
    assert all(CODEC.small_reply(r) for r in CODEC.request_reader().receive(data)) is small


@pytest.mark.parametrize(("words", "reads"), [
    ([[b"GET", b"k"]] * 3, True),
    ([[b"get", b"k"], [b"MGET", b"a", b"b"], [b"lrange", b"l", b"0", b"-1"], [b"PING"]], True),
    ([[b"GET", b"k"], [b"SET", b"k", b"v"]], False),
    ([[b"INCR", b"n"]], False),
    ([[b"GETDEL", b"k"]], False),  # (it reads, and deletes)
    # Script and function calls by name travel in runs; their scripts may write, unless the
    # call says _RO (the server refuses a write then).
    ([[b"EVALSHA", b"0" * 40, b"1", b"k"], [b"fcall", b"f", b"0"]], False),
    ([[b"evalsha_ro", b"0" * 40, b"1", b"k"], [b"FCALL_RO", b"f", b"0"]], True),
])
def test_count_run_says_whether_the_run_only_reads(words, reads) -> None:
    """What lets a run go while reads are out on clients' own connections during an update."""
    reader = CODEC.request_reader()
    data = b"".join(encode_command(*w) for w in words)
    assert reader.count_run(data) == (len(data), len(words))
    assert reader.reads_only is reads


def test_the_commands_a_run_may_only_read_with_are_runnable_and_change_nothing() -> None:
    """Taken from redis-server's own flags (no "write"), not written by hand."""
    assert READ_ONLY < RUNNABLE
    assert {"GET", "MGET", "LRANGE", "ZSCORE", "PING"} <= READ_ONLY
    assert not READ_ONLY & {"SET", "GETDEL", "GETSET", "LPOP", "INCR", "DEL", "PFADD",
                            "EVALSHA", "FCALL"}


def test_a_call_that_gives_its_script_is_no_run() -> None:
    """EVAL goes request by request during an update: the proxy learns its script from the
    framed request (protocols/redis/scripts.py), for the next update's new version."""
    data = encode_command("GET", "k") + encode_command("EVAL", "return 1", "0")
    assert CODEC.request_reader().count_run(data) is None


def _as_the_driver_frames(reader, chunks: list[bytes]) -> tuple[list[bytes], int]:
    """What ``UpdateDriver.client_data`` makes of ``chunks`` while runs are allowed: the bytes
    of each request in order (a run's cut into its requests), and how many requests went in
    runs completed by ``continue_run``."""
    out: list[bytes] = []
    continued = 0

    def take(data: bytes) -> None:
        nonlocal continued
        got = reader.count_run(data)
        if got is not None:
            used, count = got
            requests = CODEC.request_reader().receive(data[:used]) if count else []
            assert len(requests) == count
            out.extend(r.raw for r in requests)
            return
        more = reader.continue_run(data)
        if more is not None:
            request, rest = more
            if request:
                (whole,) = CODEC.request_reader().receive(request)
                assert whole.raw == request
                out.append(request)
                continued += 1
            if rest:
                take(rest)
            return
        out.extend(r.raw for r in reader.receive(data))

    for chunk in chunks:
        take(chunk)
    return out, continued


LARGE_RUN_COMMANDS = st.one_of(
    st.builds(lambda n, size: encode_command(b"SET", b"k%d" % n, b"v" * size),
              st.integers(0, 3), st.integers(0, 120_000)),
    st.builds(lambda n: encode_command(b"GET", b"k%d" % n), st.integers(0, 3)),
    st.builds(lambda size: encode_command(b"SET", b"k", b"v" * size, b"EX", b"10"),
              st.integers(0, 70_000)),
    st.builds(lambda size: encode_command(b"LPUSH", b"l", b"x" * size, b"y"),
              st.integers(0, 70_000)),
    st.just(encode_command(b"BLPOP", b"l", b"0")),  # (not runnable)
)


@given(st.lists(LARGE_RUN_COMMANDS, min_size=1, max_size=8), st.data())
def test_runs_of_large_requests_cut_anywhere_give_every_request_once_in_order(
        commands: list[bytes], data: st.DataObject) -> None:
    """During an update a SET of a 100 KB value spans reads: the read that completes it sends
    it as a run of one (``continue_run``), whatever the cuts, and anything it cannot complete
    goes to ``receive`` as before; either way each request comes out once, whole, in order."""
    stream = b"".join(commands)
    cuts = sorted(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12),
                            label="cuts")) if len(stream) > 1 else []
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)
              if a < b]
    got, _ = _as_the_driver_frames(CODEC.request_reader(), chunks)
    assert got == commands


def test_a_large_set_cut_inside_its_value_is_completed_as_a_run_of_one() -> None:
    value = b"v" * 100_000
    stream = encode_command(b"SET", b"a", value) + encode_command(b"SET", b"b", value) + \
        encode_command(b"GET", b"a")
    chunks = [stream[i : i + 65_536] for i in range(0, len(stream), 65_536)]
    reader = CODEC.request_reader()
    got, continued = _as_the_driver_frames(reader, chunks)
    assert got == [encode_command(b"SET", b"a", value), encode_command(b"SET", b"b", value),
                   encode_command(b"GET", b"a")]
    assert continued == 2
    assert reader.small_replies is False and reader.reads_only is True  # (the GET's run)


def test_a_large_request_with_a_relative_expiry_is_left_to_receive() -> None:
    """``SET ... EX`` goes request by request (the follower gets the leader's moment)."""
    request = encode_command(b"SET", b"a", b"v" * 100_000, b"EX", b"10")
    got, continued = _as_the_driver_frames(CODEC.request_reader(),
                                           [request[:70_000], request[70_000:]])
    assert got == [request] and continued == 0


ARGUMENTS = st.one_of(st.sampled_from([b"EX", b"px", b"Ex", b"GET", b"get", b"k", b"EXX", b""]),
                      st.builds(lambda n: b"\r\n$2\r\nEX\r\n$3\r\nGET\r\n" * n + b"v" * 20_000,
                                st.integers(0, 2)))


@given(st.lists(st.lists(ARGUMENTS, min_size=1, max_size=4), min_size=1, max_size=10))
def test_the_options_a_run_looks_for_are_arguments_never_bytes_of_a_value(requests) -> None:
    """A read of large values has its requests' headers walked for EX, PX and GET (a search of
    every byte costs more than the rest of its framing): what it finds must be exactly the
    arguments, the same as the search finds where there is no value that spells one."""
    data = b"".join(encode_command(b"SET", *args) for args in requests)
    expiry = any(a.upper() in (b"EX", b"PX") for args in requests for a in args)
    get = any(a.upper() == b"GET" for args in requests for a in args)
    spelled = any(b"\r\n" in a for args in requests for a in args)
    if not spelled:
        assert relative_expiry(data, len(data), len(requests)) is expiry
        assert small_replies({b"SET"}, data, len(data), len(requests)) is (not get)
    assert all(CODEC.small_reply(r) for r in CODEC.request_reader().receive(data)) is (not get)
    if len(data) >= 16 * 1024 and len(requests) <= 8:  # (walked: a value spells nothing)
        assert relative_expiry(data, len(data), len(requests)) is expiry
        assert small_replies({b"SET"}, data, len(data), len(requests)) is (not get)


def test_the_runnable_commands_compared_in_any_order_are_the_loose_ones() -> None:
    """A run with one of them keeps its large replies whole (``Codec.loose_run``): they are the
    runnable commands that checks.py compares as sets, no fewer."""
    assert LOOSE == (UNORDERED | PAIRS_UNORDERED) & RUNNABLE
    assert CODEC.loose_run(encode_command("GET", "a") + encode_command("hgetall", "h"))
    assert not CODEC.loose_run(encode_command("GET", "a") + encode_command("HGET", "h", "f"))
