"""FTP data addresses (PASV, EPSV, PORT, EPRT) and the parsed view for ordering (describe)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinproxy.protocols import RemoteProtocolError
from twinproxy.protocols.ftp import (
    CODEC,
    AddressError,
    FtpSession,
    encode_reply,
    format_eprt,
    format_epsv,
    format_pasv,
    format_port,
    parse_eprt,
    parse_epsv,
    parse_pasv,
    parse_port,
)
from twinproxy.protocols.ftp.syntax import parse_request
from twinproxy.protocols.messages import Reply

FEW = settings(max_examples=200, deadline=None)

# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, address",
    [
        (b"227 Entering Passive Mode (127,0,0,1,169,216).\r\n", ("127.0.0.1", 43480)),
        (b"227 =10,0,0,7,4,1", ("10.0.0.7", 1025)),  # RFC 1123: no parentheses
        (b"227 Entering Passive Mode 192,168,1,2,0,21", ("192.168.1.2", 21)),
    ],
)
def test_parse_pasv(text, address):
    assert parse_pasv(text) == address


@pytest.mark.parametrize(
    "text",
    [b"227 Entering Passive Mode", b"227 (127,0,0,1,1)", b"227 (256,0,0,1,4,1)",
     b"227 (127,0,0,1,0,0)", b"227 (127,0,0,1,300,1)"],
)
def test_parse_pasv_errors(text):
    with pytest.raises(AddressError) as info:
        parse_pasv(text)
    assert isinstance(info.value, RemoteProtocolError) and isinstance(info.value, ValueError)
    assert info.value.reply.startswith(b"501 ")


def test_epsv():
    assert parse_epsv(b"229 Entering Extended Passive Mode (|||43503|)\r\n") == 43503
    assert parse_epsv(b"229 ok (!!!21!)") == 21  # any delimiter, the same throughout
    assert format_epsv(6446) == b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    for bad in (b"229 (|||0|)", b"229 (|||70000|)", b"229 (||1|)", b"229 (|!|5|)", b"229 x"):
        with pytest.raises(AddressError):
            parse_epsv(bad)


def test_port_and_eprt():
    assert parse_port(b"127,0,0,1,4,1") == ("127.0.0.1", 1025)
    assert parse_port(b" 10,1,2,3,0,80 ") == ("10.1.2.3", 80)
    assert format_port("127.0.0.1", 1025) == b"127,0,0,1,4,1"
    assert parse_eprt(b"|1|132.235.1.2|6275|") == ("132.235.1.2", 6275)
    assert parse_eprt(b"|2|1080::8:800:200C:417A|5282|") == ("1080::8:800:200c:417a", 5282)
    assert parse_eprt(b"#1#10.0.0.1#21#") == ("10.0.0.1", 21)
    assert format_eprt("::1", 2121) == b"|2|::1|2121|"
    assert format_eprt("127.0.0.1", 21) == b"|1|127.0.0.1|21|"
    assert format_pasv("127.0.0.1", 43480) == b"227 Entering Passive Mode (127,0,0,1,169,216).\r\n"


@pytest.mark.parametrize(
    "arg",
    [b"", b"|", b"|1|127.0.0.1|21", b"|3|127.0.0.1|21|", b"|1|::1|21|", b"|2|127.0.0.1|21|",
     b"|1|127.0.0.1|0|", b"|1|127.0.0.1|x|", b"|1|127.0.0.1|21|extra|", b" |1|1.2.3.4|5|",
     b"|1|1.2.3.04|5|", b"|1|\xff|5|"],
)
def test_eprt_errors(arg):
    with pytest.raises(AddressError):
        parse_eprt(arg)


@pytest.mark.parametrize("arg", [b"1,2", b"1,2,3,4,5,6,7", b"a,b,c,d,e,f", b"1,2,3,4,256,1"])
def test_port_errors(arg):
    with pytest.raises(AddressError):
        parse_port(arg)


def test_formats_refuse_what_they_cannot_carry():
    with pytest.raises(AddressError):
        format_port("::1", 21)  # PORT and PASV are IPv4 only
    with pytest.raises(AddressError):
        format_pasv("127.0.0.1", 0)
    with pytest.raises(AddressError):
        format_eprt("localhost", 21)


ports = st.integers(min_value=1, max_value=65535)


@FEW
@given(st.ip_addresses(v=4), ports)
def test_ipv4_round_trips(host, port):
    host = str(host)
    assert parse_port(format_port(host, port)) == (host, port)
    assert parse_pasv(format_pasv(host, port)) == (host, port)
    assert parse_eprt(format_eprt(host, port)) == (host, port)
    assert parse_epsv(format_epsv(port)) == port


@FEW
@given(st.ip_addresses(v=6), ports)
def test_ipv6_round_trips(host, port):
    assert parse_eprt(format_eprt(str(host), port)) == (str(ipaddress.ip_address(host)), port)


@FEW
@given(st.binary(max_size=60))
def test_parsers_raise_only_address_errors(data):
    for parse in (parse_pasv, parse_epsv, parse_port, parse_eprt):
        with contextlib.suppress(AddressError):
            parse(data)


# -- describe ----------------------------------------------------------------------------------


def described(line: bytes, session: FtpSession | None = None):
    request = CODEC.describe(parse_request(line), session)
    assert not request.is_global and not request.blocking
    return request.keys, request.write


@pytest.mark.parametrize(
    "line, keys, write",
    [
        (b"RETR pub/a.txt\r\n", (b"pub/a.txt",), False),
        (b"SIZE a\r\n", (b"a",), False),
        (b"MDTM a\r\n", (b"a",), False),
        (b"RNFR a\r\n", (b"a",), False),
        (b"LIST -la pub\r\n", (b"pub",), False),
        (b"LIST\r\n", (b".",), False),
        (b"NLST pub//x/\r\n", (b"pub/x",), False),
        (b"MLSD /pub\r\n", (b"/pub",), False),
        (b"MLST /pub/a\r\n", (b"/pub/a",), False),
        (b"STAT pub\r\n", (b"pub",), False),
        (b"STAT\r\n", (), False),
        (b"STOR /pub/a\r\n", (b"/pub/a", b"/pub"), True),
        (b"APPE a\r\n", (b"a", b"."), True),
        (b"DELE /a\r\n", (b"/a", b"/"), True),
        (b"RNTO /pub/b\r\n", (b"/pub/b", b"/pub"), True),
        (b"MKD /pub/d\r\n", (b"/pub/d", b"/pub"), True),
        (b"RMD /pub/d\r\n", (b"/pub/d", b"/pub"), True),
        (b"XMKD d\r\n", (b"d", b"."), True),
        (b"STOU\r\n", (b".",), True),
        (b"SITE CHMOD 644 /pub/my file\r\n", (b"/pub/my file", b"/pub"), True),
        (b"SITE HELP\r\n", (), False),
        (b"CWD pub\r\n", (), False),
        (b"NOOP\r\n", (), False),
        (b"PASV\r\n", (), False),
    ],
)
def test_describe(line, keys, write):
    assert described(line) == (keys, write)


def test_describe_with_the_session_resolves_paths_and_gives_rnto_its_source():
    s = FtpSession(greeted=True)
    for line, code, text in [(b"USER a\r\n", 230, "ok"), (b"CWD /pub\r\n", 250, "ok"),
                             (b"CWD sub\r\n", 250, "ok"), (b"RNFR ../old\r\n", 350, "ok")]:
        s.on_reply(Reply(encode_reply(code, [text]), (code, (text,)),
                         request=parse_request(line)))
    assert described(b"RETR a.txt\r\n", s) == ((b"/pub/sub/a.txt",), False)
    assert described(b"LIST\r\n", s) == ((b"/pub/sub",), False)
    assert described(b"STOU\r\n", s) == ((b"/pub/sub",), True)
    assert described(b"RNTO new\r\n", s) == (
        (b"/pub/sub/new", b"/pub/sub", b"/pub/old", b"/pub"), True)


def test_replay_comes_from_the_session_the_reply_reader_followed() -> None:
    """What a new version's connection is sent to rebuild a client's session: only what the
    server accepted (the failed PASS and CWD are not replayed), login first, then the settings,
    the directory, and a pending RNFR last."""
    from twinproxy.protocols.ftp import CODEC as FTP

    replies = FTP.reply_reader()
    script = [
        (None, b"220 hello\r\n"),
        (b"USER anonymous\r\n", b"331 Please specify the password.\r\n"),
        (b"PASS wrong\r\n", b"530 Login incorrect.\r\n"),
        (b"USER anonymous\r\n", b"331 Please specify the password.\r\n"),
        (b"PASS x\r\n", b"230 Login successful.\r\n"),
        (b"TYPE I\r\n", b"200 Switching to Binary mode.\r\n"),
        (b"CWD /missing\r\n", b"550 Failed to change directory.\r\n"),
        (b"CWD /pub\r\n", b"250 Directory successfully changed.\r\n"),
        (b"CWD sub\r\n", b"250 Directory successfully changed.\r\n"),
        (b"RNFR a\r\n", b"350 Ready for RNTO.\r\n"),
    ]
    for line, raw in script:
        if line is not None:
            (req,) = FTP.request_reader().receive(line)
            replies.expect(req)
        replies.receive(raw)
    assert FTP.replay([], replies) == [b"USER anonymous\r\n", b"PASS x\r\n", b"TYPE I\r\n",
                                       b"CWD /pub\r\n", b"CWD sub\r\n", b"RNFR a\r\n"]
    # A reply no table allows (a 350 to PWD) leaves the session unknown: nothing to replay.
    (req,) = FTP.request_reader().receive(b"PWD\r\n")
    replies.expect(req)
    replies.receive(b"350 what?\r\n")
    assert replies.session is None and FTP.replay([], replies) == []
    assert FTP.replay([], None) == []
