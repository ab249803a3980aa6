"""A small HTTP/1.1 client (h11 over trio streams) for the two places twinproxy is a client.

The command line talks to a proxy's control API with it, and the cooperative update client talks
to a service's update endpoint. Both need one request per connection, a hard deadline, a bound on
what they read, and errors that say which of "nobody there", "too slow" and "not a sensible
answer" happened, because callers map those to different exit statuses and messages. It does not
follow redirects, retry, pool connections or speak TLS: neither peer needs it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11
import trio

__all__ = [
    "Address",
    "BadResponse",
    "ClosedEarly",
    "HTTPError",
    "Response",
    "TimedOut",
    "Unreachable",
    "format_target",
    "parse_address",
    "request",
]

Address = str | tuple[str, int]
"""A unix socket path (a ``str``) or a TCP ``(host, port)``, as in ``proxy.control``."""

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024


class HTTPError(Exception):
    """A request that got no usable response; ``str()`` is one line naming the peer."""


class Unreachable(HTTPError):
    """Nothing accepted the connection (refused, no such socket, unknown host)."""


class TimedOut(HTTPError):
    """The peer accepted but did not answer in time."""


class BadResponse(HTTPError):
    """The peer answered something that is not a complete HTTP response within the limits."""


class ClosedEarly(BadResponse):
    """The connection ended (closed or reset) before a complete response."""


@dataclass(frozen=True)
class Response:
    """A complete response; header names are lower case."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON.

        Raises:
            BadResponse: the body is not JSON.
        """
        try:
            return json.loads(self.body)
        except ValueError as exc:
            shown = self.body[:80].decode("utf-8", "replace")
            raise BadResponse(f"expected JSON, got {shown!r} ({exc})") from None


def parse_address(value: str) -> Address:
    """``host:port`` (``[::1]:8080`` for IPv6) to a tuple; anything with a ``/`` is a unix path.

    Raises:
        ValueError: neither a path nor ``host:port`` with a port from 1 to 65535.
    """
    if "/" in value:
        return value
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit()) \
            or not 1 <= int(port) <= 65535:
        raise ValueError(f'expected a unix socket path (with a "/") or host:port, got {value!r}')
    return host, int(port)


def format_target(address: Address) -> str:
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _open_unix(path: str) -> trio.SocketStream:
    """A connection to the unix socket ``path``, waiting while its listen backlog is full.

    A non-blocking ``connect()`` to a unix socket whose backlog is full fails at once with
    EAGAIN: unlike TCP, the kernel keeps no connection in progress. ``trio.open_unix_socket``
    takes that for one in progress and returns a socket that is not connected, whose first read
    fails ("connection lost"). A flood of idle connections to the control API keeps the backlog
    full while the proxy closes them, and ``twinproxy status`` failed five times in six during
    one. A blocking ``connect()`` waits in the kernel until there is room, and is woken as soon
    as there is; trying again every 10 ms instead loses races to the client that floods
    (``status`` took 0.7 to 3.7 s that way, median 2.2, against 0.7 to 2.1 s, median 1.4, the
    command's own start-up about 1 s of each). So it runs in a thread, bounded by the caller's
    deadline through ``SO_SNDTIMEO`` (which bounds a unix socket's blocking connect), since a
    thread's connect cannot be cancelled."""
    deadline = trio.current_effective_deadline()
    wait = min(max(deadline - trio.current_time(), 0.001), 3600.0)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", int(wait), int(wait % 1 * 1_000_000)))
        await trio.to_thread.run_sync(sock.connect, path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def _connect(address: Address) -> trio.abc.Stream:
    where = format_target(address)
    try:
        if isinstance(address, str):
            return await _open_unix(address)
        return await trio.open_tcp_stream(*address)
    except OSError as exc:
        reason = exc.strerror or _first_reason(exc)
        if isinstance(address, str) and exc.errno == errno.ENOENT:
            reason = "no such socket (is the proxy running?)"
        elif isinstance(address, str) and exc.errno == errno.ECONNREFUSED:
            reason = "nothing listens on this socket (a stale socket file?)"
        elif isinstance(address, str) and exc.errno == errno.EAGAIN:
            reason = "its backlog stayed full (nothing accepted the connection in time)"
        raise Unreachable(f"cannot connect to {where}: {reason}") from None


def _first_reason(exc: OSError) -> str:
    """trio tries every address of a host and raises one error whose cause groups them all."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        for error in cause.exceptions:
            if isinstance(error, OSError) and error.errno:
                return os.strerror(error.errno)
    return str(exc)


async def request(address: Address, method: str, target: str, *, body: bytes | None = None,
                  json_body: Any = None, headers: Iterable[tuple[str, str]] = (),
                  host: str | None = None, timeout: float = 10.0) -> Response:
    """Send one request on a new connection and read the whole response.

    ``json_body`` (when not ``None``) is sent as ``application/json``. The whole exchange,
    connecting included, must finish within ``timeout`` seconds. Any status is a response:
    turning 4xx and 5xx into errors is the caller's business.

    Raises:
        Unreachable: the connection could not be made.
        TimedOut: no complete response within ``timeout``.
        BadResponse: the peer closed early or sent something that is not HTTP, or more than
            :data:`MAX_RESPONSE_BYTES`.
    """
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers = [*headers, ("Content-Type", "application/json")]
    where = format_target(address)
    if host is None:
        host = "localhost" if isinstance(address, str) else where
    all_headers = [("Host", host), ("Connection", "close"), ("Accept", "application/json"),
                   *headers]
    if body is not None:
        all_headers.append(("Content-Length", str(len(body))))
    with trio.move_on_after(timeout) as scope:
        stream = await _connect(address)
        async with stream:
            return await _exchange(stream, where, method, target, all_headers, body)
    assert scope.cancelled_caught
    raise TimedOut(f"{where} did not answer {method} {target} within {timeout:g}s")


async def _exchange(stream: trio.abc.Stream, where: str, method: str, target: str,
                    headers: list[tuple[str, str]], body: bytes | None) -> Response:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    out = conn.send(h11.Request(method=method, target=target, headers=headers))
    if body:
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    try:
        await stream.send_all(out)
    except (trio.BrokenResourceError, OSError) as exc:
        # The peer may have answered (and closed) before reading everything: read on.
        if not isinstance(exc, trio.BrokenResourceError):
            raise ClosedEarly(f"{where}: connection lost while sending: {exc}") from None
    response: h11.Response | None = None
    chunks: list[bytes] = []
    size = 0
    closed = False
    start = b""  # the first bytes received, to tell "not HTTP" from "cut short"
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if closed:
                raise ClosedEarly(f"{where} closed the connection before a complete response"
                                  ) from None
            raise BadResponse(f"{where} did not answer in HTTP/1.1: {exc}") from None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, OSError) as exc:
                raise ClosedEarly(f"{where}: connection lost while reading: {exc}") from None
            closed = not data
            if len(start) < 40:
                start += data[: 40 - len(start)]
                if not b"HTTP/".startswith(start[:5]):
                    # No status line can start this way: say so now, not at the deadline.
                    raise BadResponse(f"{where} did not answer in HTTP/1.1: got {start!r}")
            conn.receive_data(data)
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_RESPONSE_BYTES:
                raise BadResponse(f"{where}: response larger than {MAX_RESPONSE_BYTES} bytes")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return Response(
                status=response.status_code,
                reason=response.reason.decode("latin-1"),
                headers={k.decode("latin-1").lower(): v.decode("latin-1")
                         for k, v in response.headers},
                body=b"".join(chunks))
        elif isinstance(event, h11.ConnectionClosed):
            raise ClosedEarly(f"{where} closed the connection before a complete response")
