"""FTP's data connections through the proxy: which messages open one, and how they are rewritten.

Rules this module keeps (RFC 959, RFC 2428, RFC 2577):

* Passive mode: a ``227`` answering PASV or a ``229`` answering EPSV names the server's data port.
  The proxy listens toward the client instead and the reply names that listener; the rest of
  the server's text is kept. The proxy connects on to the port the server named *at the host of
  the control connection*, never to a host written in the reply, as curl and Python's ftplib
  do by default: a server cannot send the proxy elsewhere. A reply whose address does not parse
  goes as it is (the client could not use it either).
* Active mode: PORT and EPRT name the client's data port. The proxy listens toward the server
  and forwards the command naming that listener; when the server connects, the proxy connects on
  to the client's port.
* No bounce (RFC 2577 section 3): a PORT or EPRT naming a host other than the client's own, or a
  port below 1024, is refused with vsftpd's own reply, ``500 Illegal PORT command.``, and never
  reaches the server. (A passive data connection from another host than the client's is refused
  by the relay, which alone sees it.)
* ``AUTH`` (TLS or SSL, RFC 2228/4217) is refused with ``534``: once the control channel is
  encrypted the proxy can neither frame it nor rewrite the data addresses. Clients that try TLS
  when they may (curl ``--ssl``) go on in plain FTP; those that require it stop with a clear
  error. Unless the config asks for passthrough (``[proxy] tls = "passthrough"``): then
  ``AUTH`` goes to the server, and once it answers ``234`` the session is opaque bytes between
  client and server (``opaque_after``); its data connections, whose addresses travel
  encrypted, go to the server directly. During an update such a session cannot be compared:
  with passthrough its ``AUTH`` takes it out of the update (``leaves``) and the leader alone
  serves it from then on; without, it is refused as in SINGLE mode.

Refused commands go to the server as ``NOOP`` (no effect on the session), answered by the proxy
in the NOOP reply's place, so replies stay in order even when the client pipelines.
"""

from __future__ import annotations

from twinproxy.protocols.channels import DataChannels, OpenChannel, Toward, same_host
from twinproxy.protocols.ftp.address import (
    AddressError,
    format_eprt,
    format_port,
    parse_eprt,
    parse_epsv,
    parse_pasv,
    parse_port,
    rewrite_epsv,
    rewrite_pasv,
)
from twinproxy.protocols.ftp.syntax import parse_request
from twinproxy.protocols.messages import Reply, Request

BOUNCE_REFUSED = b"500 Illegal PORT command.\r\n"
AUTH_REFUSED = (b"534 twinproxy: AUTH is refused, this proxy carries plain FTP only "
                b"(TLS would hide the data addresses it must rewrite).\r\n")
NO_DATA_ENDPOINT = b"425 twinproxy: cannot open a data connection.\r\n"
# How an aborted transfer ends (RFC 959 4.1.3, ABOR): completed (226), or cut (426, or 451 for
# an upload vsftpd could not read whole); how ABOR is answered: 226 when it closed a data
# connection, 225 when there was none left.
ABORT_OUTCOMES = frozenset({225, 226, 426, 451})
LOWEST_PORT = 1024  # below: a privileged service, the target of a bounce (RFC 2577)


def _port_command(verb: bytes, host: str, port: int) -> bytes:
    arg = format_port(host, port) if verb == b"PORT" else format_eprt(host, port)
    return verb + b" " + arg + b"\r\n"


class FtpDataChannels(DataChannels):
    """One control connection's data channels (stateless: each message stands alone)."""

    __slots__ = ()

    def request(self, request: Request, client_host: str) -> Request | OpenChannel | None:
        name = request.name
        if name == "PORT" or name == "EPRT":
            arg = request.args[0] if request.args else b""
            try:
                host, port = parse_port(arg) if name == "PORT" else parse_eprt(arg)
            except AddressError as exc:
                return self.refuse(exc.reply)
            if port < LOWEST_PORT or not same_host(host, client_host):
                return self.refuse(BOUNCE_REFUSED)
            verb = name.encode()
            return OpenChannel(Toward.SERVER, (host, port),
                               lambda h, p: _port_command(verb, h, p), NO_DATA_ENDPOINT)
        if name == "AUTH":
            return None if self.passthrough and not self.updating else self.refuse(AUTH_REFUSED)
        return None

    def reply(self, reply: Reply, server_host: str) -> OpenChannel | None:
        request = reply.request
        if request is None:
            return None
        code = reply.value[0]
        raw = reply.raw
        try:
            if code == 227 and request.name == "PASV":
                port = parse_pasv(raw)[1]
                return OpenChannel(Toward.CLIENT, (server_host, port),
                                   lambda h, p: rewrite_pasv(raw, h, p), NO_DATA_ENDPOINT)
            if code == 229 and request.name == "EPSV":
                port = parse_epsv(raw)
                return OpenChannel(Toward.CLIENT, (server_host, port),
                                   lambda h, p: rewrite_epsv(raw, p), NO_DATA_ENDPOINT)
        except AddressError:
            return None
        return None

    def leaves(self, request: Request) -> bool:
        return request.name == "AUTH"

    def opaque_after(self, reply: Reply) -> bool:
        request = reply.request
        return request is not None and request.name == "AUTH" and reply.value[0] == 234

    def aborts(self, request: Request) -> bool:
        return request.name == "ABOR"

    def abort_outcome(self, reply: Reply) -> bool:
        return reply.value[0] in ABORT_OUTCOMES

    def refuse(self, answer: bytes) -> Request:
        stand_in = parse_request(b"NOOP\r\n")
        stand_in.answer = answer
        return stand_in
