"""The memcached request reader: what it refuses, with memcached's own reply; limits; binary
clients; end of stream. Framing of every command family, fed whole, byte by byte and with
trailing bytes, is in the codec contract suite (``test_contract.py``, inputs in ``samples.py``)."""

from __future__ import annotations

import struct

import pytest

from twinproxy.protocols.memcache import CODEC
from twinproxy.protocols.memcache.requests import BAD_FORMAT
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
    (b"set a 18446744073709551616 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n",
     "unreadable"),
    (b"set a 0 99999999999999999999 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n",
     "unreadable"),
    # a size memcached reads as negative (2147483648 is -2**31 in 32 bits), or past INT_MAX - 2
    (b"set a 0 0 2147483648\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable"),
    (b"set a 0 0 2147483646\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable"),
    (b"ms a 2147483646\r\n", b"CLIENT_ERROR bad command line format\r\n", "unreadable"),
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
    # a storage request's key over the limit: memcached would run the data block as a command
    (b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n",
     "251 bytes"),
    (b"ms " + b"k" * 251 + b" 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n",
     "251 bytes"),
    (b"set a\0 0 0 1\r\nx\r\n", b"ERROR\r\n", "NUL"),
    # memcached closes without a word on what looks like an HTTP request
    (b"GET / HTTP/1.1\r\n", b"", "unknown command"),
    # after noreply memcached says nothing about a bad line either (then the connection closes)
    (b"set " + b"k" * 251 + b" 0 0 1 noreply\r\nx\r\n", b"", "251 bytes"),
    (b"set a 0 0 1x noreply\r\nx\r\n", b"", "unreadable number"),
    (b"set a 0 0 1 noreply\r\nxyz\r\n", b"", "does not end with CRLF"),
    (b"ms a 1 q\r\nxyz\r\n", b"CLIENT_ERROR bad data chunk\r\n", "does not end with CRLF"),
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
    assert reader.receive(b"delete " + b"a" * 50) == []
    with pytest.raises(RemoteProtocolError, match="longer than 100") as info:
        reader.receive(b"a" * 60)
    assert info.value.reply == b""  # memcached closes such a connection without a word
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
    line = b"mg " + b"a" * 97
    for end in (b"\r\n", b"\n"):
        assert len(CODEC.request_reader(limits).receive(line + end)) == 1


def test_a_multi_get_line_may_be_as_long_as_memcached_reads_it() -> None:
    """memcached reads a line that starts with "get " or "gets " (after at most 100 spaces)
    whole however long it is; such a line's limit is max_bulk, not max_line."""
    keys = [b"k%04d" % i for i in range(200)]
    limits = Limits(max_line=100, max_bulk=2000)
    for name in (b"get", b"gets", b" " * 100 + b"get"):
        line = name + b" " + b" ".join(keys) + b"\r\n"
        for feed in ([line], [line[i:i + 7] for i in range(0, len(line), 7)]):
            reader = CODEC.request_reader(limits)
            got = [r for chunk in feed for r in reader.receive(chunk)]
            assert [r.args for r in got] == [keys] and reader.buffered == 0
    for line in (b"get " + b"k " * 1000 + b"\r\n", b" " * 101 + b"get " + b"k " * 100 + b"\r\n",
                 b"gat 0 " + b"k " * 100 + b"\r\n"):
        with pytest.raises(RemoteProtocolError, match="longer than") as info:
            CODEC.request_reader(limits).receive(line)
        assert info.value.reply == b""



LONG = b"k" * 251

# A request without a data block naming a key over max_key: memcached answers CLIENT_ERROR (nothing
# after noreply) and reads on; the reader gives an mn answered with the error in its place.
LONG_KEYS = [
    (b"get a " + LONG + b" b", [BAD_FORMAT]),
    (b"gets " + LONG, [BAD_FORMAT]),
    (b"gat 0 a " + LONG, [BAD_FORMAT]),
    (b"incr " + LONG + b" 1", [BAD_FORMAT]),
    (b"incr " + LONG + b" 1 noreply", []),
    (b"delete " + LONG + b" noreply", []),
    (b"touch " + LONG + b" 1", [BAD_FORMAT]),
    (b"mg " + LONG + b" v", [BAD_FORMAT]),
    (b"mg " + LONG + b" v q", [BAD_FORMAT]),  # errors show in quiet mode
    (b"md " + LONG + b" q", [BAD_FORMAT]),
]


@pytest.mark.parametrize(("line", "answers"), LONG_KEYS)
def test_a_key_over_the_limit_is_answered_in_place_and_the_stream_goes_on(line, answers) -> None:
    data = b"get a\r\n" + line + b"\r\nget b\r\n"
    for step in (len(data), 1):
        reader = CODEC.request_reader()
        got = []
        for i in range(0, len(data), step):
            got += reader.receive(data[i:i + step], answers=True)
        assert [(r.raw, r.answer) for r in got] == [
            (b"get a\r\n", None), *((b"mn\r\n", a) for a in answers), (b"get b\r\n", None)]
    # a caller that cannot answer: refused with the answer as the reply, or, where memcached
    # says nothing, passed over as memcached passes over it
    reader = CODEC.request_reader()
    if not answers:
        assert [r.raw for r in reader.receive(data)] == [b"get a\r\n", b"get b\r\n"]
        return
    with pytest.raises(RemoteProtocolError, match="answers itself") as info:
        reader.receive(data)
    assert info.value.reply == BAD_FORMAT


def test_key_and_value_limits_follow_the_configured_limits() -> None:
    limits = Limits(max_key=4, max_value=10)
    reader = CODEC.request_reader(limits)
    assert len(reader.receive(b"get abcd\r\nset abcd 0 0 10\r\n0123456789\r\n")) == 2
    with pytest.raises(RemoteProtocolError, match="5 bytes"):
        CODEC.request_reader(limits).receive(b"set abcde 0 0 1\r\nx\r\n")
    (request,) = CODEC.request_reader(limits).receive(b"get abcde\r\n", answers=True)
    assert request.answer == BAD_FORMAT
    # past max_value: answered as memcached answers an item over its own item size
    (request,) = CODEC.request_reader(limits).receive(b"add a 0 0 11\r\n", answers=True)
    assert request.answer == b"SERVER_ERROR object too large for cache\r\n"


TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"

# A storage request over max_value (10 here): (request line, [(raw sent to the server, answer)])
OVER_SIZE = [
    # set: memcached also deletes the key's old value
    (b"set k 0 0 11", [(b"delete k noreply\r\n", b""), (b"mn\r\n", TOO_LARGE)]),
    (b"set k 0 0 11 noreply", [(b"delete k noreply\r\n", b"")]),
    (b"add k 0 0 11", [(b"mn\r\n", TOO_LARGE)]),
    (b"replace k 0 0 11", [(b"mn\r\n", TOO_LARGE)]),
    (b"append k 0 0 11 noreply", []),
    (b"cas k 0 0 11 7", [(b"mn\r\n", TOO_LARGE)]),
    (b"cas k 0 0 11 7 noreply", []),
    # a size memcached reads as 11 (the low 32 bits of 4294967307)
    (b"prepend k 0 0 4294967307", [(b"mn\r\n", TOO_LARGE)]),
    # ms: the key deleted in every mode, the error shown even when quiet
    (b"ms k 11 T0", [(b"md k q\r\n", b""), (b"mn\r\n", TOO_LARGE)]),
    (b"ms k 11 q MA O5 k", [(b"md k q\r\n", b""), (b"mn\r\n", TOO_LARGE)]),
    (b"ms a2V5 11 b q", [(b"md a2V5 b q\r\n", b""), (b"mn\r\n", TOO_LARGE)]),
]


@pytest.mark.parametrize(("line", "sent"), OVER_SIZE)
def test_a_value_over_the_limit_is_skipped_and_answered_as_memcached_answers(line, sent) -> None:
    limits = Limits(max_value=10)
    data = b"get a\r\n" + line + b"\r\n" + b"v" * 11 + b"\r\nget b\r\n"
    for size in (len(data), 1, 3, 16):
        reader = CODEC.request_reader(limits)
        got = []
        for i in range(0, len(data), size):
            got += reader.receive(data[i:i + size], answers=True)
            assert reader.buffered <= len(line) + 2  # the value is skipped, never held
        assert [(r.raw, r.answer) for r in got] == [(b"get a\r\n", None), *sent,
                                                    (b"get b\r\n", None)]
        assert reader.buffered == 0
    # the block's last two bytes are skipped unread, as memcached skips them
    reader = CODEC.request_reader(limits)
    got = reader.receive(line + b"\r\n" + b"v" * 13 + b"mn\r\n", answers=True)
    assert got[-1].raw == b"mn\r\n" and got[-1].answer is None


@pytest.mark.parametrize(("line", "sent"), OVER_SIZE)
def test_a_caller_that_cannot_answer_gets_the_answer_as_a_protocol_error(line, sent) -> None:
    limits = Limits(max_value=10)
    data = b"get a\r\n" + line + b"\r\n" + b"v" * 11 + b"\r\nget b\r\n"
    reader = CODEC.request_reader(limits)
    if not sent:  # nothing goes to the server, nothing to answer: the connection goes on
        assert [r.raw for r in reader.receive(data)] == [b"get a\r\n", b"get b\r\n"]
        return
    with pytest.raises(RemoteProtocolError, match="answers itself") as info:
        reader.receive(data)
    assert [r.raw for r in info.value.messages] == [b"get a\r\n"]
    assert info.value.reply == b"".join(answer for _, answer in sent)
    with pytest.raises(RemoteProtocolError):
        reader.receive(b"get c\r\n")  # broken, as after any protocol error


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
