"""Where the proxy's data endpoints listen, and the address they are announced at.

A data channel's endpoint (:mod:`.pipes` in SINGLE mode, :mod:`.mirror` during an update)
listens on the proxy's own address on the side that will connect to it. Two settings of the
``[proxy]`` section change that for the passive endpoints, those a client connects to, as
vsftpd's own settings do for its passive ports:

* ``data_address``: the address written in the ``227`` reply instead of the one the client
  reached the proxy at (a proxy behind NAT: the clients reach it at a public address its
  sockets never see). The endpoint still listens on the local address.
* ``data_port_min``/``data_port_max``: the ports it listens on (a firewall that opens only a
  range). Ports are tried in turn from after the last one given out, so a port just closed is
  the last one tried again; ``SO_REUSEADDR`` lets a port whose last data connection is still
  open, or in TIME-WAIT, listen again (each connection is its own four-tuple). When every port
  of the range listens already, the endpoint cannot be opened and the client gets the
  protocol's refusal (FTP: ``425``); other clients' channels are not touched.

Active endpoints (toward the server) listen on any port, on the proxy's address toward it.
"""

from __future__ import annotations

import errno
import socket

from twinproxy.protocols.channels import Toward, unmapped


class Endpoints:
    """The policy for the data endpoints of one relay.

    Args:
        address: the IPv4 address passive endpoints are announced at (None: the local one).
        ports: the lowest and highest port passive endpoints listen on (None: any).
    """

    __slots__ = ("address", "next", "ports")

    def __init__(self, address: str | None = None, ports: tuple[int, int] | None = None):
        self.address = address
        self.ports = ports
        self.next = ports[0] if ports else 0  # the port tried first next time

    def listen(self, side: socket.socket, toward: Toward) -> tuple[socket.socket, str, int]:
        """A non-blocking socket listening for one connection on the local address of
        ``side`` (the control connection toward the peer that will connect), and the host and
        port to name in the message that announces it.

        Raises:
            OSError: no socket, or no port (``EADDRINUSE`` when the range is all taken).
            ValueError: ``side``'s local address is not an IP address.
        """
        host = unmapped(side.getsockname()[0])
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            passive = toward is Toward.CLIENT
            if passive and self.ports is not None:
                self._bind_in_range(sock, host)
            else:
                sock.bind((host, 0))
            sock.listen(1)
            port = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise
        return sock, (self.address if passive and self.address else host), port

    def _bind_in_range(self, sock: socket.socket, host: str) -> None:
        low, high = self.ports
        count = high - low + 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first = self.next - low
        for i in range(count):
            port = low + (first + i) % count
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self.next = low + (port - low + 1) % count
            return
        raise OSError(errno.EADDRINUSE,
                      f"every data port from {low} to {high} is listening already "
                      "(data_port_min, data_port_max)")
