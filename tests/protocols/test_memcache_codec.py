"""The memcached codec around its readers: parsed view, canonical form, builders, probe, errors."""

from __future__ import annotations

import pytest

from twinproxy.protocols.memcache import (
    CODEC,
    Item,
    Meta,
    Stats,
    Values,
    encode_reply,
    encode_request,
    make_request,
)
from twinproxy.protocols.messages import LocalProtocolError, Reply

# (request bytes, keys, write, is_global)
DESCRIBED = [
    (b"get a\r\n", (b"a",), False, False),
    (b"gets a b a\r\n", (b"a", b"b", b"a"), False, False),
    (b"gat 10 a b\r\n", (b"a", b"b"), True, False),
    (b"gats 10 a\r\n", (b"a",), True, False),
    (b"set a 0 0 1\r\nx\r\n", (b"a",), True, False),
    (b"add a 0 0 1 noreply\r\nx\r\n", (b"a",), True, False),
    (b"replace a 0 0 1\r\nx\r\n", (b"a",), True, False),
    (b"append a 0 0 1\r\nx\r\n", (b"a",), True, False),
    (b"prepend a 0 0 1\r\nx\r\n", (b"a",), True, False),
    (b"cas a 0 0 1 5\r\nx\r\n", (b"a",), True, False),
    (b"incr a 1\r\n", (b"a",), True, False),
    (b"decr a 1\r\n", (b"a",), True, False),
    (b"touch a 1\r\n", (b"a",), True, False),
    (b"delete a\r\n", (b"a",), True, False),
    (b"flush_all\r\n", (), True, True),
    (b"stats\r\n", (), False, False),
    (b"stats reset\r\n", (), False, False),
    (b"version\r\n", (), False, False),
    (b"verbosity 1\r\n", (), False, False),
    (b"quit\r\n", (), False, False),
    (b"mg a v\r\n", (b"a",), False, False),
    (b"mg a v k O5 q s f h l c\r\n", (b"a",), False, False),
    (b"mg a v T30\r\n", (b"a",), True, False),
    (b"mg a N30 v\r\n", (b"a",), True, False),
    (b"mg a R30 v\r\n", (b"a",), True, False),
    (b"mg a E77 v\r\n", (b"a",), True, False),
    (b"mg YQ== b v\r\n", (b"a",), False, False),
    (b"mg !!!! b v\r\n", (b"!!!!",), False, False),
    (b"ms a 1\r\nx\r\n", (b"a",), True, False),
    (b"ms YWJj 1 b q\r\nx\r\n", (b"abc",), True, False),
    (b"md a q\r\n", (b"a",), True, False),
    (b"ma a v\r\n", (b"a",), True, False),
    (b"mn\r\n", (), False, False),
    (b"me a\r\n", (b"a",), False, False),
]


@pytest.mark.parametrize(("data", "keys", "write", "is_global"), DESCRIBED)
def test_describe(data: bytes, keys: tuple, write: bool, is_global: bool) -> None:
    (request,) = CODEC.request_reader().receive(data)
    assert CODEC.describe(request) is request
    assert (request.keys, request.write, request.is_global, request.blocking, request.session) == \
        (keys, write, is_global, False, False)


def reply(value: object, raw: bytes = b"x") -> Reply:
    return Reply(raw, value)


def test_canonical_forms() -> None:
    canon = CODEC.canonical
    assert canon(reply(b"STORED")) == ("line", b"STORED")
    assert canon(reply(b"VERSION 1.6.18")) == ("line", b"VERSION 1.6.18")
    assert canon(reply(b"42")) == ("number", 42)
    assert canon(reply(b"ERROR")) == ("error", b"ERROR", b"")
    assert canon(reply(b"CLIENT_ERROR bad data chunk")) == (
        "error", b"CLIENT_ERROR", b"bad data chunk")
    got = canon(reply(Values((Item(b"a", 5, b"xy", 77), Item(b"b", 0, b"")))))
    assert got == ("values", ((b"a", 5, b"xy", 77), (b"b", 0, b"", None)), ("line", b"END"))
    assert got[1][0].cas == 77 and got[1][0].data == b"xy"
    assert canon(reply(Values((), b"SERVER_ERROR out of memory"))) == (
        "values", (), ("error", b"SERVER_ERROR", b"out of memory"))
    assert canon(reply(Meta(b"VA", (b"t-1", b"c7", b"ka", b"O1"), b"hi"))) == (
        "meta", b"VA", (("O", b"1"), ("c", b"7"), ("k", b"a"), ("t", b"-1")), b"hi")
    assert canon(reply(Meta(b"EN"), b"")) == ("meta", b"EN", (), None)
    assert canon(reply(Meta(b"ME", (b"a", b"exp=-1", b"la=0", b"cas=3")))) == (
        "debug", b"a", ((b"exp", b"-1"), (b"la", b"0"), (b"cas", b"3")))
    assert canon(reply(Stats((b"STAT pid 1", b"STAT libevent 2.1 stable", b"ITEM a [1 b; 0 s]")))) \
        == ("stats", ((b"pid", b"1"), (b"libevent", b"2.1 stable"), b"ITEM a [1 b; 0 s]"),
            ("line", b"END"))
    assert canon(reply(None, b"")) is None


def test_canonical_forms_are_hashable_and_ignore_flag_order() -> None:
    a = CODEC.canonical(reply(Meta(b"HD", (b"ka", b"O1"))))
    b = CODEC.canonical(reply(Meta(b"HD", (b"O1", b"ka"))))
    assert a == b and hash(a) == hash(b)
    hash(CODEC.canonical(reply(Values((Item(b"a", 0, b"x", 1),)))))


def test_error_reply_probe() -> None:
    assert CODEC.error_reply("backend down") == b"SERVER_ERROR backend down\r\n"
    assert CODEC.error_reply("two\r\nlines") == b"SERVER_ERROR two lines\r\n"
    assert CODEC.probe() == b"version\r\n"
    assert CODEC.probe_ok(reply(b"VERSION 1.6.18"))
    assert not CODEC.probe_ok(reply(b"ERROR"))
    assert not CODEC.probe_ok(reply(Meta(b"MN")))


def test_request_builders() -> None:
    assert encode_request("get", b"a", "b") == b"get a b\r\n"
    assert encode_request("set", "k", 0, 0, 2, data=b"hi") == b"set k 0 0 2\r\nhi\r\n"
    request = make_request("ms", b"k", 2, "T0", data=b"hi")
    assert (request.raw, request.name, request.args, request.data) == (
        b"ms k 2 T0\r\nhi\r\n", "ms", [b"k", b"2", b"T0"], b"hi")
    for bad in (b"a b", b"", b"a\r\n", b"a\0"):
        with pytest.raises(LocalProtocolError):
            encode_request("get", bad)
    with pytest.raises(LocalProtocolError, match="exactly one"):
        make_request("set", "k", 0, 0, 3, data=b"hi")  # the size says 3
    with pytest.raises(LocalProtocolError, match="valid"):
        make_request("set", "k", 0, 0, 1, data=b"hi")  # the size says 1
    with pytest.raises(LocalProtocolError, match="valid"):
        make_request("nosuch", "k")
    with pytest.raises(LocalProtocolError, match="exactly one"):
        make_request("set", "k", 0, 0, 1)  # no data: the reader waits for it


def test_reply_builder_round_trips() -> None:
    cases = [
        ("get a b", Values((Item(b"a", 5, b"x\r\ny"), Item(b"b", 0, b"")))),
        ("gets a", Values((Item(b"a", 1, b"v", 99),))),
        ("get a", Values(())),
        ("set a 0 0 1", b"STORED"),
        ("incr a 1", b"17"),
        ("mg a v k", Meta(b"VA", (b"ka",), b"data")),
        ("mg a", Meta(b"HD")),
        ("me a", Meta(b"ME", (b"a", b"exp=-1"))),
        ("stats", Stats((b"STAT pid 1",))),
        ("stats reset", b"RESET"),
    ]
    for line, value in cases:
        name, *args = line.split()
        data = b"x" if name == "set" else None
        request = make_request(name, *args, data=data)
        reader = CODEC.reply_reader()
        reader.expect(request)
        (got,) = reader.receive(encode_reply(value))
        assert got.value == value and got.request is request
    assert encode_reply(None) == b""
    with pytest.raises(LocalProtocolError):
        encode_reply(Meta(b"VA"))
    with pytest.raises(LocalProtocolError):
        encode_reply(3)


@pytest.mark.parametrize(
    ("line", "replies"),
    [
        (b"get a b c\r\n", 1),
        (b"set a 0 0 1 noreply\r\nx\r\n", 0),
        (b"delete noreply\r\n", 1),  # the key is "noreply"
        (b"incr a 1 noreply\r\n", 0),
        (b"flush_all noreply\r\n", 0),
        (b"quit\r\n", 0),
        (b"mg a v q\r\n", 0),
        (b"mg q v\r\n", 1),  # the key is "q"
        (b"ms a 1 q\r\nx\r\n", 0),
        (b"mn\r\n", 1),
    ],
)
def test_reply_counts_in_the_parsed_view(line: bytes, replies: int) -> None:
    [request] = CODEC.request_reader().receive(line)
    assert CODEC.describe(request).replies == replies
