"""The memcached request reader: what it refuses, with memcached's own reply; limits; binary
clients; end of stream. Framing of every command family, fed whole, byte by byte and with
trailing bytes, is in the codec contract suite (``test_contract.py``, inputs in ``samples.py``)."""

from __future__ import annotations

import struct

import pytest

from twinproxy.protocols.memcache import CODEC
from twinproxy.protocols.messages import Limits, RemoteProtocolError


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


def test_a_read_that_is_one_request_is_its_raw() -> None:
    data = b"set k 0 0 3\r\nabc\r\n"
    (request,) = CODEC.request_reader().receive(data)
    assert request.raw is data


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
