"""Data-connection addresses in FTP commands and replies, parsed and built.

The proxy rewrites these so that data connections go through it: a server's 227/229 reply
becomes one naming the proxy's own listener, and a client's PORT/EPRT argument becomes one
naming a listener the proxy opened towards the server.

Formats:
    PASV reply  ``227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)``  (RFC 959; RFC 1123 4.1.2.6
                asks clients to find the six numbers anywhere in the text, so parsing does that)
    EPSV reply  ``229 Entering Extended Passive Mode (|||port|)``  (RFC 2428; any delimiter in
                ASCII 33-126, the same all through; host and protocol are left empty)
    PORT arg    ``h1,h2,h3,h4,p1,p2``
    EPRT arg    ``|1|132.235.1.2|6275|`` or ``|2|1080::8:800:200C:417A|5282|``  (RFC 2428)

Every parser returns ``(host, port)`` (EPSV: the port alone, the host being the control
connection's peer) or raises :class:`AddressError`, whose ``reply`` is the 501 a server gives a
bad argument. Ports must be 1-65535: port 0 cannot be connected to.
"""

from __future__ import annotations

import ipaddress
import re

from twinproxy.protocols.messages import RemoteProtocolError

_SIX_NUMBERS = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV = re.compile(rb"\(([\x21-\x7e])\1\1(\d{1,5})\1\)")
_BAD_ARGUMENT = b"501 Syntax error in parameters or arguments.\r\n"


class AddressError(RemoteProtocolError, ValueError):
    """A data-connection address that does not parse or cannot be carried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reply=_BAD_ARGUMENT)


def _port(value: int, what: bytes) -> int:
    if not 0 < value < 65536:
        raise AddressError(f"port {value} out of range 1-65535 in {what[:80]!r}")
    return value


def _six(numbers: tuple[bytes, ...], what: bytes) -> tuple[str, int]:
    values = [int(n) for n in numbers]
    if any(v > 255 for v in values):
        raise AddressError(f"a number above 255 in {what[:80]!r}")
    host = ".".join(str(v) for v in values[:4])
    return host, _port(values[4] * 256 + values[5], what)


def _ipv4(host: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise AddressError(f"{host!r} is not an IPv4 address") from None


def parse_pasv(text: bytes) -> tuple[str, int]:
    """The address in a 227 reply (its raw bytes or its text)."""
    found = _SIX_NUMBERS.search(text)
    if found is None:
        raise AddressError(f"no h1,h2,h3,h4,p1,p2 address in {text[:80]!r}")
    return _six(found.groups(), text)


def format_pasv(host: str, port: int) -> bytes:
    """A 227 reply line naming ``host`` (IPv4 only: PASV cannot carry IPv6) and ``port``."""
    return b"227 Entering Passive Mode (%s).\r\n" % format_port(host, port)


def parse_epsv(text: bytes) -> int:
    """The port in a 229 reply (its raw bytes or its text)."""
    found = _EPSV.search(text)
    if found is None:
        raise AddressError(f"no (|||port|) in {text[:80]!r}")
    return _port(int(found.group(2)), text)


def format_epsv(port: int) -> bytes:
    """A 229 reply line naming ``port`` (the host is the control connection's)."""
    return b"229 Entering Extended Passive Mode (|||%d|)\r\n" % _port(port, b"EPSV")


def parse_port(arg: bytes) -> tuple[str, int]:
    """The address in a PORT argument: exactly six numbers, spaces around them allowed."""
    found = _SIX_NUMBERS.fullmatch(arg.strip())
    if found is None:
        raise AddressError(f"PORT argument {arg[:80]!r} is not h1,h2,h3,h4,p1,p2")
    return _six(found.groups(), arg)


def format_port(host: str, port: int) -> bytes:
    """A PORT argument (no verb, no CRLF)."""
    packed = _ipv4(host).packed
    _port(port, b"PORT")
    return b"%d,%d,%d,%d,%d,%d" % (*packed, port >> 8, port & 0xFF)


def parse_eprt(arg: bytes) -> tuple[str, int]:
    """The address in an EPRT argument; the host comes back in its canonical text form."""
    if len(arg) < 2 or not 0x21 <= arg[0] <= 0x7E:
        raise AddressError(f"EPRT argument {arg[:80]!r} does not start with a delimiter")
    fields = arg.split(arg[:1])
    if len(fields) != 5 or fields[0] or fields[4]:
        raise AddressError(f"EPRT argument {arg[:80]!r} is not <d>proto<d>addr<d>port<d>")
    proto, addr, port = fields[1], fields[2], fields[3]
    if not port.isdigit() or len(port) > 5:
        raise AddressError(f"EPRT port {port[:20]!r} is not a number")
    try:
        text = addr.decode("ascii")
        host = {b"1": ipaddress.IPv4Address, b"2": ipaddress.IPv6Address}[proto](text)
    except KeyError:
        raise AddressError(f"EPRT network protocol {proto[:20]!r} is not 1 or 2") from None
    except ValueError:
        raise AddressError(f"EPRT address {addr[:80]!r} does not fit protocol {proto!r}") from None
    return str(host), _port(int(port), arg)


def format_eprt(host: str, port: int) -> bytes:
    """An EPRT argument for an IPv4 or IPv6 host (no verb, no CRLF)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"{host!r} is not an IP address") from None
    _port(port, b"EPRT")
    return b"|%d|%s|%d|" % (1 if address.version == 4 else 2, str(address).encode(), port)


def rewrite_pasv(reply: bytes, host: str, port: int) -> bytes:
    """``reply`` (a 227) with its address replaced by ``host`` and ``port``, the rest of the
    server's text kept.

    Raises:
        AddressError: the reply holds no address, or ``host`` is not IPv4.
    """
    found = _SIX_NUMBERS.search(reply)
    if found is None:
        raise AddressError(f"no h1,h2,h3,h4,p1,p2 address in {reply[:80]!r}")
    return reply[:found.start()] + format_port(host, port) + reply[found.end():]


def rewrite_epsv(reply: bytes, port: int) -> bytes:
    """``reply`` (a 229) with its port replaced by ``port``, the rest of the text kept.

    Raises:
        AddressError: the reply holds no ``(|||port|)``.
    """
    found = _EPSV.search(reply)
    if found is None:
        raise AddressError(f"no (|||port|) in {reply[:80]!r}")
    return reply[:found.start(2)] + b"%d" % _port(port, b"EPSV") + reply[found.end(2):]
