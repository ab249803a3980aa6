"""FTP readers: request lines, pairing, limits, end of stream, and framing under any split.

Whole, byte by byte, trailing bytes, errors and the fuzz contract are in the codec contract
suite (``test_contract.py``, inputs in ``samples.py``)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinproxy.protocols import Limits, LocalProtocolError, RemoteProtocolError
from twinproxy.protocols.ftp import CODEC, encode_reply, encode_request

FEW = settings(max_examples=150, deadline=None)

GREETING = b"220-Welcome\r\n to the test\r\n220 (vsFTPd 3.0.3)\r\n"
DEFAULT = Limits()


def requests_of(data: bytes, chunks: list[int] | None = None, limits: Limits = DEFAULT):
    reader = CODEC.request_reader(limits)
    out = []
    for piece in _pieces(data, chunks):
        out += reader.receive(piece)
    return out, reader


def replies_of(data: bytes, requests: list[bytes], chunks: list[int] | None = None,
               limits: Limits = DEFAULT, greeted: bool = False):
    reader = CODEC.reply_reader(limits, greeted=greeted)
    for line in requests:
        reader.expect(_request(line))
    out = []
    for piece in _pieces(data, chunks):
        out += reader.receive(piece)
    return out, reader


def _request(line: bytes):
    (request,) = CODEC.request_reader().receive(line)
    return request


def _pieces(data: bytes, cuts: list[int] | None):
    if cuts is None:
        return [data]
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _view(requests):
    return [(r.name, r.args, r.session) for r in requests]


def _reply_view(replies):
    return [(r.request.name if r.request else None, *r.value, r.final, r.error) for r in replies]


# -- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, name, args",
    [
        (b"\xff\xf4\xffABOR\r\n", "ABOR", []),  # DM taken out of band by the kernel
        (b"\xff\xfb\x01\xff\xf1NOOP\r\n", "NOOP", []),  # WILL ECHO, then NOP
        (b"\xff\xffX\r\n", "\xff\xffX", []),  # IAC IAC is a data byte: part of the verb
        (b"   \r\n", "", [b"  "]),  # vsftpd answers 500 to this one, so it is a request
        (b"NOOP \r\n", "NOOP", []),
        (b"LIST -la /pub\r\n", "LIST", [b"-la /pub"]),
        (b"noop\t\r\n", "NOOP\t", []),
        (b"\xff\r\n", "", []),
    ],
)
def test_request_lines(line, name, args):
    (request,) = CODEC.request_reader().receive(line)
    assert (request.name, request.args, request.raw) == (name, args, line)


def test_session_flag():
    for verb in ("USER", "PASS", "ACCT", "CWD", "CDUP", "TYPE", "MODE", "STRU", "REST", "RNFR",
                 "OPTS", "PORT", "EPRT", "PASV", "EPSV", "REIN"):
        assert _request(verb.encode() + b" x\r\n").session, verb
    for verb in ("RETR", "STOR", "LIST", "NOOP", "RNTO", "DELE", "QUIT", "SITE", "FEAT"):
        assert not _request(verb.encode() + b" x\r\n").session, verb
    assert _request(b"site umask 077\r\n").session


def test_empty_lines_ride_on_the_next_request():
    got, reader = requests_of(b"NOOP\r\n\r\n\n\r\ncwd  pub\r\n")
    assert [(r.raw, r.name) for r in got] == [(b"NOOP\r\n", "NOOP"),
                                              (b"\r\n\n\r\ncwd  pub\r\n", "CWD")]
    assert reader.buffered == 0


def test_request_line_limit():
    # Past the limit (17 bytes) is in the contract suite (tests/protocols/test_contract.py).
    limits = Limits(max_line=16)
    fits, _ = requests_of(b"STOR 012345678\r\n", limits=limits)  # exactly 16
    assert fits[0].args == [b"012345678"]
    # Empty lines count towards the request they ride on.
    with pytest.raises(RemoteProtocolError):
        requests_of(b"\r\n" * 8 + b"NOOP\r\n", limits=limits)


def test_request_end_of_stream():
    reader = CODEC.request_reader()
    assert reader.receive(b"NOOP\r\n\r\n") and reader.receive(b"") == []  # empty lines: fine
    reader = CODEC.request_reader()
    with pytest.raises(RemoteProtocolError, match="middle"):
        reader.receive(b"NOOP\r\nQU")
        reader.receive(b"")
    with pytest.raises(LocalProtocolError):
        reader.feed(b"more")


# -- replies -----------------------------------------------------------------------------------


def test_greeting_comes_first_even_when_commands_were_sent_before_it():
    out, _ = replies_of(b"120 in 1 minute\r\n220 ready\r\n331 pw\r\n", [b"USER a\r\n"])
    assert [(r.request, r.final, r.value[0]) for r in out[:2]] == [(None, False, 120),
                                                                   (None, True, 220)]
    assert out[2].request.name == "USER"
    assert CODEC.probe() == b"" and CODEC.probe_ok(out[1]) and not CODEC.probe_ok(out[0])
    greeted, _ = replies_of(b"331 pw\r\n", [b"USER a\r\n"], greeted=True)
    assert greeted[0].request.name == "USER"


def test_unsolicited_421_and_421_as_an_answer():
    out, reader = replies_of(GREETING + b"421 Timeout.\r\n", [])
    assert out[1].request is None and out[1].error and reader.closing
    out, reader = replies_of(GREETING + b"421 Data timeout.\r\n", [b"RETR x\r\n"])
    assert out[1].request.name == "RETR" and reader.pending == 0 and reader.closing


def test_abort_during_a_transfer_pairs_in_order():
    out, _ = replies_of(
        GREETING + b"150 Opening\r\n426 Failure writing network stream.\r\n226 ABOR ok\r\n",
        [b"RETR big\r\n", b"\xff\xf4\xffABOR\r\n"],
    )
    assert [(r.request.name, r.value[0], r.final) for r in out[1:]] == [
        ("RETR", 150, False), ("RETR", 426, True), ("ABOR", 226, True)]


@pytest.mark.parametrize(
    "data",
    [b"22 short\r\n", b"abc def\r\n", b"220x\r\n", b"720 seven\r\n", b"\r\n", b"099 x\r\n"],
)
def test_malformed_replies(data):
    with pytest.raises(RemoteProtocolError) as info:
        replies_of(GREETING + data, [b"NOOP\r\n"])
    assert info.value.reply.startswith(b"421 ")
    assert [r.value[0] for r in info.value.messages] == [220]


def test_reply_forms_accepted():
    out, _ = replies_of(b"220\r\n631 protected\r\n123-a\r\n123\r\n", [b"X\r\n", b"Y\r\n"])
    assert [r.value for r in out] == [(220, ("",)), (631, ("protected",)), (123, ("a", ""))]
    # Inside a multi-line reply a line may start with anything, even another code.
    out, _ = replies_of(b"214-a\r\n200 not the end\r\n214-b\r\n 214 c\r\n214 end\r\n", [])
    assert out[0].value == (214, ("a", "200 not the end", "b", " 214 c", "end"))


def test_reply_limits():
    # Past the limits is in the contract suite; here a reply just within them.
    tight = Limits(max_line=20, max_elements=3, max_bulk=40)
    out, _ = replies_of(b"211-a\r\nb\r\n211 c\r\n", [], limits=tight)
    assert out[0].value == (211, ("a", "b", "c"))


def test_the_reply_to_quit_closes():
    out, reader = replies_of(GREETING + b"221 Goodbye.\r\n", [b"QUIT\r\n"])
    assert out[1].request.name == "QUIT" and reader.closing and reader.pending == 0


@pytest.mark.parametrize("cut", [1, 30, 45, 60, 75])
def test_reply_limit_errors_do_not_depend_on_the_split(cut):
    # Found by the fuzzer: the second line crosses the reply limit (40 bytes) before the line
    # limit (30 bytes from its start); whatever the reads, the reply limit is what is reported.
    data = b"211-" + b"x" * 20 + b"\r\n" + b"y" * 40 + b"\r\n211 z\r\n"
    reader = CODEC.reply_reader(Limits(max_line=30, max_bulk=40))
    with pytest.raises(RemoteProtocolError, match="reply too long"):
        reader.receive(data[:cut])
        reader.receive(data[cut:])


def test_reply_end_of_stream():
    _, reader = replies_of(GREETING, [b"NOOP\r\n"])
    assert reader.receive(b"") == [] and reader.pending == 1
    reader = CODEC.reply_reader()
    assert reader.receive(GREETING + b"200-x\r\n")
    with pytest.raises(RemoteProtocolError, match="middle"):
        reader.receive(b"")


def test_error_reply_and_canonical():
    assert CODEC.error_reply("proxy shutting down") == b"421 proxy shutting down\r\n"
    assert CODEC.error_reply("two\r\nlines") == b"421 two lines\r\n"
    single, _ = replies_of(b"211 End\r\n", [])
    multi, _ = replies_of(b"211-End\r\n211 x\r\n", [])
    assert CODEC.canonical(single[0]) == (211, ("End",))
    assert CODEC.canonical(multi[0]) != CODEC.canonical(single[0])
    assert hash(CODEC.canonical(multi[0])) == hash((211, ("End", "x")))


# -- properties --------------------------------------------------------------------------------

verbs = st.sampled_from(["USER", "PASS", "RETR", "STOR", "LIST", "CWD", "noop", "Rnfr", "SITE"])
args = st.binary(max_size=30).filter(lambda a: b"\n" not in a and not a.endswith(b"\r"))
request_lines = st.builds(
    lambda blank, verb, arg, eol: blank + verb.encode() + (b" " + arg if arg else b"") + eol,
    st.sampled_from([b"", b"\r\n", b"\n\r\n"]), verbs, args, st.sampled_from([b"\r\n", b"\n"]),
)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@FEW
@given(st.lists(request_lines, max_size=10), cuts, st.binary(max_size=8))
def test_any_split_of_requests(lines, points, tail):
    tail = tail.replace(b"\n", b"")
    data = b"".join(lines) + tail
    whole, reader = requests_of(data)
    split, reader2 = requests_of(data, points)
    assert [r.raw for r in split] == [r.raw for r in whole] == lines
    assert _view(split) == _view(whole)
    assert reader.buffered == reader2.buffered == len(tail)


@FEW
@given(st.sampled_from(["USER", "RETR", "X"]), args.filter(lambda a: b"\r" not in a))
def test_request_round_trip(name, arg):
    (request,) = CODEC.request_reader().receive(encode_request(name, arg))
    assert request.name == name and request.args == ([arg] if arg else [])


@st.composite
def reply_texts(draw):
    code = draw(st.integers(min_value=100, max_value=599))
    text = st.text(max_size=20).filter(lambda t: "\r" not in t and "\n" not in t)
    lines = draw(st.lists(text, min_size=1, max_size=5))
    inner_ok = all(not (t[:3] == str(code) and t[3:4] in (" ", "-", "")) for t in lines[1:-1])
    return code, lines if inner_ok else [lines[0]]


@FEW
@given(st.lists(reply_texts(), max_size=8), cuts)
def test_reply_round_trip_under_any_split(replies, points):
    data = b"220 hi\r\n" + b"".join(encode_reply(code, lines) for code, lines in replies)
    requests = [b"NOOP\r\n"] * len(replies)
    whole, reader = replies_of(data, requests)
    split, _ = replies_of(data, requests, points)
    assert [r.value for r in whole[1:]] == [(c, tuple(lines)) for c, lines in replies]
    assert [r.raw for r in split] == [r.raw for r in whole]
    assert b"".join(r.raw for r in whole) == data
    assert reader.pending == sum(1 for code, _ in replies if code < 200)


