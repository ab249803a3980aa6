"""Data channels: connections a protocol sets up from inside its control connection.

Some protocols name, inside a request or a reply, an address the other side must connect to
for a second connection (FTP: a ``227``/``229`` reply names the server's passive data port, a
``PORT``/``EPRT`` command names the client's active one). A proxy that passed those through
would send the client straight to the server (or the server to the client), around the proxy,
which works only where both can reach each other and lets the proxy see nothing of what the
second connection carries. So the relay opens its own endpoint instead, and the address in the
message is rewritten to name it.

This module is the declared interface between the two halves, sans-IO like the codecs:

* the protocol's :class:`DataChannels` (one per client connection, from
  :meth:`twinproxy.protocols.base.Codec.data_channels`) reads each request and each reply and
  says what it needs: nothing, a request the proxy refuses itself, or an :class:`OpenChannel`;
* the relay (:mod:`twinproxy.relay.pipes`) does the I/O: it listens on the side named, writes
  the message that names its listener (``rewrite``), accepts one connection from the expected
  peer host, connects to ``target`` and relays bytes both ways with bounded memory.

The relay knows no protocol's messages; the protocol opens no socket.
"""

from __future__ import annotations

import abc
import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from twinproxy.protocols.messages import Reply, Request


class Toward(enum.Enum):
    """Which peer connects to the endpoint the proxy opens."""

    CLIENT = "client"  # passive mode: the client connects, the proxy connects on to the server
    SERVER = "server"  # active mode: the server connects, the proxy connects on to the client


@dataclass(frozen=True)
class OpenChannel:
    """Open an endpoint that the peer ``toward`` connects to, and connect it on to ``target``.

    ``rewrite(host, port)`` is the message (request or reply bytes) that replaces the one that
    asked for the channel, naming the proxy's endpoint instead of ``target``. ``failed`` is the
    reply the client gets instead when the proxy cannot open an endpoint.
    """

    toward: Toward
    target: tuple[str, int]
    rewrite: Callable[[str, int], bytes]
    failed: bytes


def same_host(a: str, b: str) -> bool:
    """Whether two host addresses name the same host (an IPv4-mapped IPv6 address is its IPv4
    address); False when either is not an IP address."""
    try:
        return unmapped(a) == unmapped(b)
    except ValueError:
        return False


def unmapped(host: str) -> str:
    """``host`` in canonical form, an IPv4-mapped IPv6 address as its IPv4 address.

    Raises:
        ValueError: ``host`` is not an IP address.
    """
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class DataChannels(abc.ABC):
    """What one control connection's messages ask of the relay for its data channels.

    Attributes:
        passthrough: a session may turn into a stream the proxy cannot read (FTP's
            ``AUTH TLS``) and go on as opaque bytes to the version serving, its data
            connections going to the server directly (the config asks for it); else the
            command that would turn it is refused.
        updating: the channels of a client an update drives (both versions compared): no
            session may turn opaque there, whatever ``passthrough`` says (the relay takes a
            session that would, with passthrough, out of the update first: ``leaves``).
    """

    passthrough = False
    updating = False

    def leaves(self, request: Request) -> bool:
        """Whether ``request`` would turn the session opaque if its server accepts it (FTP's
        ``AUTH``): during an update such a session cannot go on in both versions, so from this
        request on it is served by the leader alone. Only asked when ``passthrough`` is set.
        The default: never."""
        return False

    def opaque_after(self, reply: Reply) -> bool:
        """Whether the connection's bytes become unreadable to the proxy after ``reply`` (FTP:
        a ``234`` to ``AUTH``, after which client and server speak TLS). Only asked when
        ``passthrough`` let the command through. The default: never."""
        return False

    @abc.abstractmethod
    def request(self, request: Request, client_host: str) -> Request | OpenChannel | None:
        """What ``request`` (from the client at ``client_host``) needs before it is forwarded:
        None (nothing: it goes as it is), an :class:`OpenChannel` (then it goes rewritten), or
        a stand-in request from :meth:`refuse` to forward in its place (the client gets the
        stand-in's ``answer``: a refused bounce, a command the proxy cannot carry)."""

    @abc.abstractmethod
    def reply(self, reply: Reply, server_host: str) -> OpenChannel | None:
        """What ``reply`` (from the server at ``server_host``) needs before it is delivered:
        None, or an :class:`OpenChannel` (then it is delivered rewritten)."""

    def aborts(self, request: Request) -> bool:
        """Whether ``request`` aborts the client's transfer under way (FTP's ABOR). How each
        server ends an aborted transfer, and answers the abort, depends on the moment it saw
        it, so during an update those replies are compared by :meth:`abort_outcome` and the
        transfer's data not at all. The default: no request does."""
        return False

    def abort_outcome(self, reply: Reply) -> bool:
        """Whether ``reply`` is one of the replies an aborted transfer, or the abort, may end
        with (FTP: the transfer's ``226`` or ``426``, the abort's ``225`` or ``226``)."""
        return False

    @abc.abstractmethod
    def refuse(self, answer: bytes) -> Request:
        """A request with no effect on the server, to forward in place of one the proxy
        answers itself with ``answer``, so that the answer keeps its place among the replies."""

