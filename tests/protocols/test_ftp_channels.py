"""FTP data channels, sans-IO: which messages open one, how they are rewritten, what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twinproxy.protocols.channels import OpenChannel, Toward, same_host, unmapped
from twinproxy.protocols.ftp import CODEC, AddressError, parse_eprt, parse_epsv, parse_pasv
from twinproxy.protocols.ftp.address import rewrite_epsv, rewrite_pasv
from twinproxy.protocols.ftp.channels import AUTH_REFUSED, BOUNCE_REFUSED, NO_DATA_ENDPOINT

CLIENT = "192.0.2.7"
SERVER = "10.1.2.3"


def request(line: bytes):
    (parsed,) = CODEC.request_reader().receive(line)
    return parsed


def reply_to(command: bytes, line: bytes):
    reader = CODEC.reply_reader(greeted=True)
    reader.expect(request(command))
    (parsed,) = reader.receive(line)
    return parsed


def channels():
    return CODEC.data_channels()


def test_pasv_reply_names_the_proxy_and_keeps_the_servers_text() -> None:
    decision = channels().reply(reply_to(b"PASV\r\n",
                                         b"227 Entering Passive Mode (10,1,2,3,195,80).\r\n"),
                                SERVER)
    assert isinstance(decision, OpenChannel)
    assert decision.toward is Toward.CLIENT
    assert decision.target == (SERVER, 195 * 256 + 80)
    assert decision.rewrite("127.0.0.1", 40001) == \
        b"227 Entering Passive Mode (127,0,0,1,156,65).\r\n"
    assert decision.failed == NO_DATA_ENDPOINT


def test_pasv_target_is_the_control_connections_host_not_the_replys() -> None:
    """A server cannot send the proxy to another host by writing one in its 227."""
    decision = channels().reply(reply_to(b"PASV\r\n", b"227 =192,168,9,9,4,1\r\n"), SERVER)
    assert decision.target == (SERVER, 1025)
    assert decision.rewrite("127.0.0.1", 2000) == b"227 =127,0,0,1,7,208\r\n"


def test_epsv_reply() -> None:
    decision = channels().reply(
        reply_to(b"EPSV\r\n", b"229 Entering Extended Passive Mode (|||50123|)\r\n"), SERVER)
    assert decision.toward is Toward.CLIENT and decision.target == (SERVER, 50123)
    assert decision.rewrite("::1", 7) == b"229 Entering Extended Passive Mode (|||7|)\r\n"


@pytest.mark.parametrize(("command", "line"), [
    (b"PASV\r\n", b"500 no passive here\r\n"),
    (b"PASV\r\n", b"227 but no address\r\n"),  # goes as it is: the client cannot use it either
    (b"EPSV\r\n", b"229 (|||0|)\r\n"),
    (b"NOOP\r\n", b"227 Entering Passive Mode (10,1,2,3,195,80).\r\n"),  # not an answer to PASV
    (b"PWD\r\n", b'257 "/"\r\n'),
])
def test_replies_that_open_nothing(command: bytes, line: bytes) -> None:
    assert channels().reply(reply_to(command, line), SERVER) is None


@pytest.mark.parametrize(("line", "verb"), [
    (b"PORT 192,0,2,7,19,137\r\n", b"PORT"),
    (b"port 192,0,2,7,19,137\r\n", b"PORT"),
    (b"EPRT |1|192.0.2.7|5001|\r\n", b"EPRT"),
])
def test_port_and_eprt_to_the_clients_own_host(line: bytes, verb: bytes) -> None:
    decision = channels().request(request(line), CLIENT)
    assert isinstance(decision, OpenChannel)
    assert decision.toward is Toward.SERVER
    assert decision.target == (CLIENT, 5001)
    rewritten = decision.rewrite("10.0.0.1", 40001)
    assert rewritten == {b"PORT": b"PORT 10,0,0,1,156,65\r\n",
                         b"EPRT": b"EPRT |1|10.0.0.1|40001|\r\n"}[verb]


def test_eprt_ipv6_and_mapped_client_address() -> None:
    decision = channels().request(request(b"EPRT |2|::1|6000|\r\n"), "::1")
    assert decision.target == ("::1", 6000)
    assert decision.rewrite("::1", 7000) == b"EPRT |2|::1|7000|\r\n"
    decision = channels().request(request(b"PORT 127,0,0,1,23,112\r\n"), "::ffff:127.0.0.1")
    assert isinstance(decision, OpenChannel)


@pytest.mark.parametrize("line", [
    b"PORT 192,0,2,8,19,137\r\n",  # another host: the bounce of RFC 2577
    b"PORT 192,0,2,7,0,25\r\n",  # the client's host, a privileged port (SMTP)
    b"PORT 192,0,2,7,3,255\r\n",  # 1023
    b"EPRT |1|10.1.2.3|5000|\r\n",
    b"EPRT |2|::1|5000|\r\n",
])
def test_bounce_refused(line: bytes) -> None:
    stand_in = channels().request(request(line), CLIENT)
    assert stand_in.raw == b"NOOP\r\n" and stand_in.answer == BOUNCE_REFUSED


@pytest.mark.parametrize("line", [b"PORT 1,2,3\r\n", b"PORT 300,0,0,1,1,1\r\n",
                                  b"EPRT |3|x|1|\r\n", b"EPRT\r\n", b"PORT\r\n"])
def test_bad_address_refused_with_501(line: bytes) -> None:
    stand_in = channels().request(request(line), CLIENT)
    assert stand_in.raw == b"NOOP\r\n" and stand_in.answer.startswith(b"501 ")


@pytest.mark.parametrize("line", [b"AUTH TLS\r\n", b"AUTH SSL\r\n", b"auth tls-c\r\n"])
def test_auth_refused(line: bytes) -> None:
    stand_in = channels().request(request(line), CLIENT)
    assert stand_in.raw == b"NOOP\r\n" and stand_in.answer == AUTH_REFUSED
    assert stand_in.answer.startswith(b"534 ")


@pytest.mark.parametrize("line", [b"USER anonymous\r\n", b"RETR a\r\n", b"PASV\r\n",
                                  b"EPSV\r\n", b"LIST\r\n", b"STOR x\r\n"])
def test_other_requests_go_as_they_are(line: bytes) -> None:
    assert channels().request(request(line), CLIENT) is None


def test_same_host() -> None:
    assert same_host("127.0.0.1", "::ffff:127.0.0.1")
    assert same_host("::1", "0:0::1")
    assert not same_host("127.0.0.1", "127.0.0.2")
    assert not same_host("127.0.0.1", "localhost")
    assert unmapped("::ffff:10.0.0.1") == "10.0.0.1"


@given(st.ip_addresses(v=4), st.integers(1, 65535), st.ip_addresses(v=4), st.integers(1, 65535))
def test_rewrite_pasv_round_trip(host, port, new_host, new_port) -> None:
    a, b, c, d = host.packed
    raw = b"227 Entering Passive Mode (%d,%d,%d,%d,%d,%d).\r\n" % (a, b, c, d, port >> 8,
                                                                   port & 255)
    assert parse_pasv(raw) == (str(host), port)
    out = rewrite_pasv(raw, str(new_host), new_port)
    assert parse_pasv(out) == (str(new_host), new_port)
    assert out.startswith(b"227 Entering Passive Mode (") and out.endswith(b").\r\n")


@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from("|!#"))
def test_rewrite_epsv_round_trip(port, new_port, delimiter) -> None:
    d = delimiter.encode()
    raw = b"229 Extended (%s%s%s%d%s)\r\n" % (d, d, d, port, d)
    assert parse_epsv(raw) == port
    assert parse_epsv(rewrite_epsv(raw, new_port)) == new_port


def test_rewrite_errors() -> None:
    with pytest.raises(AddressError):
        rewrite_pasv(b"227 nothing\r\n", "127.0.0.1", 1)
    with pytest.raises(AddressError):
        rewrite_pasv(b"227 (1,2,3,4,5,6)\r\n", "::1", 1)  # PASV cannot carry IPv6
    with pytest.raises(AddressError):
        rewrite_epsv(b"229 (|||1|)\r\n", 0)
    assert parse_eprt(b"|1|1.2.3.4|5|") == ("1.2.3.4", 5)
