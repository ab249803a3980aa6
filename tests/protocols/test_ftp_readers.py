"""FTP readers: framing under any split, pairing, limits, and the error contract."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinproxy.protocols import Limits, LocalProtocolError, RemoteProtocolError, get_codec
from twinproxy.protocols.ftp import CODEC, encode_reply, encode_request

FEW = settings(max_examples=150, deadline=None)

REQUESTS = (
    b"USER anonymous\r\n"
    b"PASS guest@\n"  # bare LF, as vsftpd accepts
    b"\r\n\r\n"  # empty lines: vsftpd ignores them, they ride on the next request
    b"cwd  pub\r\n"  # lower case verb, argument with a leading space
    b"\xff\xf4\xff\xf2ABOR\r\n"  # Telnet IP + DM before ABOR
    b"SITE UMASK 022\r\n"
    b"RNFR a\rb\r\n"  # a CR inside the argument stays
    b"NOOP\r\n"
)
EXPECTED_REQUESTS = [
    ("USER", [b"anonymous"], True),
    ("PASS", [b"guest@"], True),
    ("CWD", [b" pub"], True),
    ("ABOR", [], False),
    ("SITE", [b"UMASK 022"], True),
    ("RNFR", [b"a\rb"], True),
    ("NOOP", [], False),
]

GREETING = b"220-Welcome\r\n to the test\r\n220 (vsFTPd 3.0.3)\r\n"
REPLIES = (
    GREETING
    + b"331 Please specify the password.\r\n"  # USER
    + b"230 Login successful.\r\n"  # PASS
    + b"211-Features:\r\n EPRT\r\n211-EPSV\r\n211 End\r\n"  # FEAT: inner line with 211- too
    + b"150 Here comes the directory listing.\r\n226 Directory send OK.\n"  # LIST, bare LF
    + b"550 Failed to open file.\r\n"  # RETR
    + b"221 Goodbye.\r\n"  # QUIT
)
REPLY_REQUESTS = [b"USER anonymous\r\n", b"PASS x\r\n", b"FEAT\r\n", b"LIST\r\n", b"RETR x\r\n",
                  b"QUIT\r\n"]
EXPECTED_REPLIES = [
    (None, 220, ("Welcome", " to the test", "(vsFTPd 3.0.3)"), True, False),
    ("USER", 331, ("Please specify the password.",), True, False),
    ("PASS", 230, ("Login successful.",), True, False),
    ("FEAT", 211, ("Features:", " EPRT", "EPSV", "End"), True, False),
    ("LIST", 150, ("Here comes the directory listing.",), False, False),
    ("LIST", 226, ("Directory send OK.",), True, False),
    ("RETR", 550, ("Failed to open file.",), True, True),
    ("QUIT", 221, ("Goodbye.",), True, False),
]


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


def test_requests_whole_and_byte_by_byte():
    whole, reader = requests_of(REQUESTS)
    assert _view(whole) == EXPECTED_REQUESTS
    assert reader.buffered == 0
    assert whole[2].raw == b"\r\n\r\ncwd  pub\r\n"
    assert b"".join(r.raw for r in whole) == REQUESTS
    bytewise, _ = requests_of(REQUESTS, list(range(len(REQUESTS))))
    assert [r.raw for r in bytewise] == [r.raw for r in whole]


def test_trailing_bytes_stay_buffered():
    reader = CODEC.request_reader()
    assert _view(reader.receive(b"NOOP\r\nSTOR fi")) == [("NOOP", [], False)]
    assert reader.buffered == len(b"STOR fi")
    assert reader.receive(b"le\r") == []
    (stor,) = reader.receive(b"\nPW")
    assert (stor.raw, stor.args) == (b"STOR file\r\n", [b"file"])
    assert reader.buffered == 2


def test_get_codec_finds_ftp():
    assert get_codec("ftp") is CODEC and CODEC.name == "ftp"


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


def test_request_line_limit():
    limits = Limits(max_line=16)
    with pytest.raises(RemoteProtocolError) as info:
        requests_of(b"NOOP\r\nSTOR 0123456789\r\n", limits=limits)  # 17 bytes
    assert info.value.reply == b"500 Input line too long.\r\n"
    assert [r.name for r in info.value.messages] == ["NOOP"]
    fits, _ = requests_of(b"STOR 012345678\r\n", limits=limits)  # exactly 16
    assert fits[0].args == [b"012345678"]
    # A partial line at the limit fails at once: waiting for more could only make it longer.
    reader = CODEC.request_reader(limits)
    with pytest.raises(RemoteProtocolError):
        reader.receive(b"x" * 16)
    with pytest.raises(RemoteProtocolError):  # broken for good
        reader.next_request()
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


def test_replies_whole_and_byte_by_byte():
    whole, reader = replies_of(REPLIES, REPLY_REQUESTS)
    assert _reply_view(whole) == EXPECTED_REPLIES
    assert reader.pending == 0 and reader.buffered == 0 and reader.closing
    assert b"".join(r.raw for r in whole) == REPLIES
    bytewise, _ = replies_of(REPLIES, REPLY_REQUESTS, list(range(len(REPLIES))))
    assert [r.raw for r in bytewise] == [r.raw for r in whole]
    assert _reply_view(bytewise) == EXPECTED_REPLIES


def test_reply_trailing_bytes_and_pending():
    out, reader = replies_of(GREETING + b"331 Please\r\n230-Lo", [b"USER a\r\n", b"PASS b\r\n"])
    assert [r.value[0] for r in out] == [220, 331]
    assert reader.pending == 1 and reader.buffered == len(b"230-Lo")
    (done,) = reader.receive(b"gin\r\n230 ok\r\n")
    assert done.value == (230, ("Login", "ok")) and done.request.name == "PASS"
    assert reader.pending == 0


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
    tight = Limits(max_line=20, max_elements=3, max_bulk=40)
    out, _ = replies_of(b"211-a\r\nb\r\n211 c\r\n", [], limits=tight)
    assert out[0].value == (211, ("a", "b", "c"))
    with pytest.raises(RemoteProtocolError, match="too many lines"):
        replies_of(b"211-a\r\nb\r\nc\r\n", [], limits=tight)
    with pytest.raises(RemoteProtocolError, match="line too long"):
        replies_of(b"220 " + b"x" * 20, [], limits=tight)
    with pytest.raises(RemoteProtocolError, match="reply too long"):
        replies_of(b"211-" + b"x" * 14 + b"\r\n" + b"y" * 15 + b"\r\n211 z\r\n", [],
                   limits=Limits(max_line=20, max_bulk=40))


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


noise = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"220", b"-", b" ", b"\r", b"\n", b"\xff", b"211", b"x"]),
             max_size=60).map(b"".join),
)


@FEW
@given(noise, cuts)
def test_random_bytes_give_messages_or_a_remote_error(data, points):
    limits = Limits(max_line=32, max_elements=4, max_bulk=64)
    started = time.process_time()  # CPU time: a busy machine does not make it fail
    for frame in (requests_of, lambda d, c, limits: replies_of(d, [b"NOOP\r\n"] * 3, c, limits)):
        try:
            messages, reader = frame(data, points, limits=limits)
        except RemoteProtocolError as exc:
            assert exc.reply[:1] in (b"4", b"5")
            continue
        assert reader.buffered <= max(limits.max_line, limits.max_bulk)
        consumed = b"".join(m.raw for m in messages)
        assert data.startswith(consumed)
    assert time.process_time() - started < 1.0
