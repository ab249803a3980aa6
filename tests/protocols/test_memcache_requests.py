"""The memcached request reader: framing of every command family, fed whole, byte by byte and
with trailing bytes; what it refuses, with memcached's own reply; limits; binary clients; end of
stream."""

from __future__ import annotations

import struct

import pytest

from twinproxy.protocols.base import Limits, RemoteProtocolError
from twinproxy.protocols.memcache import CODEC

# (input, [(name, args, data)]) for streams of complete requests
FRAMED = [
    (b"get a\r\n", [("get", [b"a"], None)]),
    (b"gets a b c\r\n", [("gets", [b"a", b"b", b"c"], None)]),
    (b"gat 10 a b\r\ngats 0 a\r\n",
     [("gat", [b"10", b"a", b"b"], None), ("gats", [b"0", b"a"], None)]),
    (b"gat 10\r\n", [("gat", [b"10"], None)]),
    (b"set k 5 0 3\r\nabc\r\n", [("set", [b"k", b"5", b"0", b"3"], b"abc")]),
    (b"add k 0 0 0\r\n\r\n", [("add", [b"k", b"0", b"0", b"0"], b"")]),
    (b"replace k 0 0 2 noreply\r\nhi\r\n",
     [("replace", [b"k", b"0", b"0", b"2", b"noreply"], b"hi")]),
    (b"append k 0 0 4\r\n\r\n\r\n\r\n", [("append", [b"k", b"0", b"0", b"4"], b"\r\n\r\n")]),
    (b"prepend k 0 0 1\r\n\0\r\n", [("prepend", [b"k", b"0", b"0", b"1"], b"\0")]),
    (b"cas k 0 0 1 99\r\nx\r\n", [("cas", [b"k", b"0", b"0", b"1", b"99"], b"x")]),
    (b"cas k 0 0 1 99 noreply\r\nx\r\n",
     [("cas", [b"k", b"0", b"0", b"1", b"99", b"noreply"], b"x")]),
    (b"set k +1 -5 +1\r\nx\r\n", [("set", [b"k", b"+1", b"-5", b"+1"], b"x")]),
    (b"incr n 5\r\ndecr n 1 noreply\r\n",
     [("incr", [b"n", b"5"], None), ("decr", [b"n", b"1", b"noreply"], None)]),
    (b"touch k 10\r\ndelete k\r\ndelete k 0 noreply\r\n",
     [("touch", [b"k", b"10"], None), ("delete", [b"k"], None),
      ("delete", [b"k", b"0", b"noreply"], None)]),
    (b"flush_all\r\nflush_all 0 noreply\r\nversion\r\nverbosity 1\r\n",
     [("flush_all", [], None), ("flush_all", [b"0", b"noreply"], None), ("version", [], None),
      ("verbosity", [b"1"], None)]),
    (b"stats\r\nstats items\r\nstats cachedump 1 10\r\nstats detail dump\r\n",
     [("stats", [], None), ("stats", [b"items"], None),
      ("stats", [b"cachedump", b"1", b"10"], None), ("stats", [b"detail", b"dump"], None)]),
    (b"mg k v t f q k O12\r\n", [("mg", [b"k", b"v", b"t", b"f", b"q", b"k", b"O12"], None)]),
    (b"ms k 3 T0 F5 q\r\nabc\r\n", [("ms", [b"k", b"3", b"T0", b"F5", b"q"], b"abc")]),
    (b"ms YQ== 1 b\r\nx\r\n", [("ms", [b"YQ==", b"1", b"b"], b"x")]),
    (b"md k q\r\nma k MD D3 v\r\nmn\r\nme k\r\n",
     [("md", [b"k", b"q"], None), ("ma", [b"k", b"MD", b"D3", b"v"], None), ("mn", [], None),
      ("me", [b"k"], None)]),
    # memcached's tolerance: bare LF, runs of spaces, leading and trailing spaces, odd flags left
    # for the server to refuse
    (b"get a\nget  a  b \r\n  mg a v\n", [("get", [b"a"], None), ("get", [b"a", b"b"], None),
                                          ("mg", [b"a", b"v"], None)]),
    (b"mg a !\r\nincr n x\r\ntouch k x\r\ndelete k 5\r\n",
     [("mg", [b"a", b"!"], None), ("incr", [b"n", b"x"], None), ("touch", [b"k", b"x"], None),
      ("delete", [b"k", b"5"], None)]),
    (b"get a\tb\r\n", [("get", [b"a\tb"], None)]),
    (b"get a\r\r\n", [("get", [b"a\r"], None)]),
]


def frame_whole(data: bytes, limits: Limits | None = None) -> tuple[list, int]:
    reader = CODEC.request_reader(limits) if limits else CODEC.request_reader()
    got = reader.receive(data)
    return got, reader.buffered


def frame_bytewise(data: bytes) -> tuple[list, int]:
    reader = CODEC.request_reader()
    got = []
    for i in range(len(data)):
        got += reader.receive(data[i:i + 1])
    return got, reader.buffered


def shape(requests: list) -> list:
    return [(r.name, r.args, r.data) for r in requests]


@pytest.mark.parametrize(("data", "expected"), FRAMED)
def test_frames_whole_bytewise_and_with_trailing_bytes(data: bytes, expected: list) -> None:
    got, held = frame_whole(data)
    assert shape(got) == expected
    assert b"".join(r.raw for r in got) == data
    assert held == 0
    one, held = frame_bytewise(data)
    assert shape(one) == expected and [r.raw for r in one] == [r.raw for r in got] and held == 0
    for tail in (b"g", b"get a", b"set k 0 0 5\r\nab", b"ms k 2\r\nx"):
        got, held = frame_whole(data + tail)
        assert shape(got) == expected
        assert held == len(tail)


def test_a_read_that_is_one_request_is_its_raw() -> None:
    data = b"set k 0 0 3\r\nabc\r\n"
    (request,) = CODEC.request_reader().receive(data)
    assert request.raw is data


def test_feed_and_next_request_give_what_receive_gives() -> None:
    reader = CODEC.request_reader()
    reader.feed(b"get a\r\nset b 0 0 1\r")
    reader.feed(b"\nx\r\nmn\r")
    assert reader.next_request().name == "get"
    assert reader.next_request().data == b"x"
    assert reader.next_request() is None
    assert reader.buffered == 3
    reader.feed(b"\n")
    assert reader.next_request().name == "mn"
    assert reader.next_request() is None


def test_large_value_split_into_many_reads_is_joined_once() -> None:
    value = bytes(range(256)) * 4000
    data = b"set big 0 0 %d\r\n" % len(value) + value + b"\r\nget big\r\n"
    reader = CODEC.request_reader()
    got = []
    for i in range(0, len(data), 1000):
        got += reader.receive(data[i:i + 1000])
        assert reader.buffered <= len(data)
    assert [r.name for r in got] == ["set", "get"] and got[0].data == value


def test_quit_ends_the_stream() -> None:
    reader = CODEC.request_reader()
    got = reader.receive(b"version\r\nquit\r\nget a\r\n")
    assert [r.name for r in got] == ["version", "quit"]
    assert reader.receive(b"get b\r\n") == [] and reader.buffered == 0


# (input, reply memcached gives, words the message must hold)
REFUSED = [
    (b"foo bar\r\n", b"ERROR\r\n", "unknown command"),
    (b"\r\n", b"ERROR\r\n", "empty"),
    (b"   \r\n", b"ERROR\r\n", "empty"),
    (b"GET a\r\n", b"ERROR\r\n", "unknown command"),
    (b"get\r\n", b"ERROR\r\n", "at least 1"),
    (b"set a 0 0\r\nx\r\n", b"ERROR\r\n", "at least 4"),
    (b"set a 0 0 1 noreply x\r\nx\r\n", b"ERROR\r\n", "at most 5"),
    (b"incr a\r\n", b"ERROR\r\n", "at least 2"),
    (b"delete a 0 noreply x\r\n", b"ERROR\r\n", "at most 3"),
    (b"mg\r\n", b"ERROR\r\n", "at least 1"),
    (b"ms\r\n", b"ERROR\r\n", "at least 2"),
    (b"ms a\r\n", b"CLIENT_ERROR bad command line format\r\n", "at least 2"),
    (b"me\r\n", b"CLIENT_ERROR bad command line format\r\n", "at least 1"),
    (b"set a x 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"set a -1 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"set a 4294967296 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable"),
    (b"set a 0 x 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"set a 0 0 -1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"set a 0 0 1x\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"set a 0 0 " + b"9" * 30 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n",
     "unreadable"),
    (b"cas a 0 0 1 -5\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"cas a 0 0 1 18446744073709551616\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n",
     "unreadable number"),
    (b"ms a x\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"ms a -1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable number"),
    (b"ms a 1 " + b" ".join(b"O%d" % i for i in range(17)) + b"\r\nx\r\n",
     b"CLIENT_ERROR options flags too long\r\n", "at most 18"),
    (b"set a 0 0 1\r\nxyz\r\n", b"CLIENT_ERROR bad data chunk\r\n", "does not end with CRLF"),
    (b"set a 0 0 1\r\nx\nget a\r\n", b"CLIENT_ERROR bad data chunk\r\n", "does not end with CRLF"),
    (b"ms a 2\r\nxyz\r\n", b"CLIENT_ERROR bad data chunk\r\n", "does not end with CRLF"),
    (b"get a " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n", "251 bytes"),
    (b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n",
     "251 bytes"),
    (b"mg " + b"k" * 251 + b" v\r\n", b"CLIENT_ERROR bad command line format\r\n", "251 bytes"),
    (b"set a 0 0 1048577\r\n", b"SERVER_ERROR object too large for cache\r\n", "1048577 bytes"),
    (b"ms a 1048577\r\n", b"SERVER_ERROR object too large for cache\r\n", "1048577 bytes"),
    (b"set a\0 0 0 1\r\nx\r\n", b"ERROR\r\n", "NUL"),
]


@pytest.mark.parametrize(("data", "reply", "words"), REFUSED)
def test_refuses_with_memcacheds_reply(data: bytes, reply: bytes, words: str) -> None:
    for feed in (frame_whole, frame_bytewise):
        with pytest.raises(RemoteProtocolError) as info:
            feed(data)
        assert info.value.reply == reply
        assert words in str(info.value)


def test_error_names_where_in_the_stream() -> None:
    reader = CODEC.request_reader()
    assert len(reader.receive(b"get a\r\n")) == 1
    with pytest.raises(RemoteProtocolError, match="at byte 7"):
        reader.receive(b"bogus\r\n")


def test_requests_before_an_error_come_with_it_and_the_reader_stays_broken() -> None:
    reader = CODEC.request_reader()
    with pytest.raises(RemoteProtocolError) as info:
        reader.receive(b"get a\r\nset b 0 0 1\r\nx\r\nbogus\r\nget c\r\n")
    assert [r.name for r in info.value.messages] == ["get", "set"]
    with pytest.raises(RemoteProtocolError) as again:
        reader.receive(b"get d\r\n")
    assert again.value.messages == []
    reader = CODEC.request_reader()
    reader.feed(b"get a\r\nbogus\r\n")
    assert reader.next_request().name == "get"
    with pytest.raises(RemoteProtocolError):
        reader.next_request()


def test_line_limit_without_a_line_end_is_found_before_it_arrives() -> None:
    limits = Limits(max_line=100)
    reader = CODEC.request_reader(limits)
    assert reader.receive(b"get " + b"a" * 50) == []
    with pytest.raises(RemoteProtocolError, match="longer than 100") as info:
        reader.receive(b"a" * 60)
    assert info.value.reply == b"CLIENT_ERROR line too long\r\n"
    reader = CODEC.request_reader(limits)
    with pytest.raises(RemoteProtocolError, match="longer than 100"):
        for _ in range(200):
            reader.receive(b"a")
    with pytest.raises(RemoteProtocolError, match="longer than 100"):
        reader.receive(b"\r\n")  # the reader stays broken
    reader = CODEC.request_reader(limits)
    for _ in range(200):
        reader.feed(b"a")  # feed() holds the error for next_request()
    with pytest.raises(RemoteProtocolError, match="longer than 100"):
        reader.next_request()
    # exactly at the limit is fine, with either line end
    line = b"get " + b"a" * 96
    for end in (b"\r\n", b"\n"):
        assert len(CODEC.request_reader(limits).receive(line + end)) == 1


def test_key_and_value_limits_follow_the_configured_limits() -> None:
    limits = Limits(max_key=4, max_value=10)
    reader = CODEC.request_reader(limits)
    assert len(reader.receive(b"get abcd\r\nset abcd 0 0 10\r\n0123456789\r\n")) == 2
    with pytest.raises(RemoteProtocolError, match="5 bytes"):
        CODEC.request_reader(limits).receive(b"get abcde\r\n")
    with pytest.raises(RemoteProtocolError, match="11 bytes") as info:
        CODEC.request_reader(limits).receive(b"set a 0 0 11\r\n")
    assert info.value.reply == b"SERVER_ERROR object too large for cache\r\n"


def test_binary_client_gets_a_binary_error_packet() -> None:
    header = struct.pack(">BBHBBHII8s", 0x80, 0x00, 1, 0, 0, 0, 1, 0xCAFEBABE, bytes(8)) + b"k"
    for feed in (frame_whole, frame_bytewise):
        with pytest.raises(RemoteProtocolError, match="binary protocol") as info:
            feed(header)
        packet = info.value.reply
        magic, opcode, keylen, extlen, dtype, status, bodylen, opaque, cas = struct.unpack(
            ">BBHBBHII8s", packet[:24])
        assert (magic, opcode, keylen, extlen, dtype) == (0x81, 0x00, 0, 0, 0)
        assert status == 0x0083 and opaque == 0xCAFEBABE and cas == bytes(8)
        assert packet[24:] == packet[24:24 + bodylen] and b"binary" in packet[24:]
    # a binary header cut short by the end of the stream still gets the packet
    reader = CODEC.request_reader()
    assert reader.receive(b"\x80\x01") == [] and reader.buffered == 2
    with pytest.raises(RemoteProtocolError) as info:
        reader.receive(b"")
    assert info.value.reply[:2] == b"\x81\x01"


def test_0x80_after_the_first_request_is_just_an_unknown_command() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown command") as info:
        CODEC.request_reader().receive(b"mn\r\n\x80\x00\r\n")
    assert info.value.reply == b"ERROR\r\n"


def test_end_of_stream() -> None:
    reader = CODEC.request_reader()
    assert reader.receive(b"get a\r\n") != []
    assert reader.receive(b"") == []
    reader = CODEC.request_reader()
    assert reader.receive(b"set a 0 0 5\r\nab") == []
    with pytest.raises(RemoteProtocolError, match="middle of a request") as info:
        reader.receive(b"")
    assert info.value.reply == b""
