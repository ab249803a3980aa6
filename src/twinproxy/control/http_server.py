"""The admin API's HTTP side: HTTP/1.1 (h11) with JSON bodies, one task per connection.

How this works. :func:`~twinproxy.control.serve.serve_control` hands each listener to
:meth:`HttpServer.accept_loop`; each connection is one task that reads a request with h11, checks
the token, hands the request to the endpoints (:mod:`~twinproxy.control.endpoints`), writes the
response, and reads the next one until the peer closes or a limit is hit. The service is only
ever called from these tasks, in the proxy's trio thread, so handlers need no locks.

What an operator can rely on here:

* The bearer token, where there is one, is compared in constant time, before anything else is
  looked at: a client without it learns nothing, not even which paths exist.
* Limits (:class:`Limits`): request headers, request body, open connections, and a deadline
  for receiving each request whole, so a client that trickles bytes (slowloris) is cut off and
  cannot hold a connection for long. Malformed HTTP is answered with 400 (or 413, 431) and the
  connection is closed; nothing else is affected.
* The operator is never locked out by connections that do nothing. Every connection is accepted
  at once; past ``max_connections`` the one that has waited longest for its client (no request
  yet, a request still arriving, a response the client does not read) is closed to make room.
  Only a connection whose request is being handled (a rollback in progress) is kept, so a flood
  of idle connections, even from clients without the token, costs the operator's ``status`` at
  most the time to accept them. Queueing them instead (in the kernel's accept queue, as this
  did before) let 1,000 idle connections hold ``status`` off for 30 seconds.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from twinproxy.config import format_address
from twinproxy.descriptors import Reserve, describe
from twinproxy.ratelog import RateLimitedLog

__all__ = [
    "DEFAULT_LIMITS",
    "Handle",
    "HttpServer",
    "Limits",
    "Reply",
    "Request",
    "Response",
    "error_response",
    "json_response",
]

log = logging.getLogger("twinproxy.control")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client of the admin API can make the proxy hold.

    ``max_connections`` bounds the connections open at once (and so the file descriptors the
    API can take); past it the one that has waited longest for its client is closed (see the
    module docstring). ``request_timeout`` runs from the moment the server waits for a request
    (a new connection, or the end of the previous response) until the request's last byte,
    headers and body: trickling bytes does not extend it. The time a handler takes
    (``POST /update`` may wait for a server to start) is not counted.
    """

    max_connections: int = 64
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    request_timeout: float = 10.0
    send_timeout: float = 10.0
    max_requests_per_connection: int = 100


DEFAULT_LIMITS = Limits()


# ---- what a handler is given and answers with -----------------------------------------------


class Reply(Exception):
    """An error answer decided where the problem is found: while a request is read, or in a
    handler (:mod:`~twinproxy.control.endpoints`) instead of its response; closes the
    connection when ``close``."""

    def __init__(self, status: int, error: str, *, headers: tuple[tuple[str, str], ...] = (),
                 close: bool = False):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers
        self.close = close


@dataclass
class Request:
    """One whole request, its body read within the limits; ``peer`` says who sent it, for the
    log."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass
class Response:
    """What is sent back; ``close`` ends the connection after it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    head: bool = False  # answering HEAD: the headers of the body, without it


def json_response(status: int, payload: Any) -> Response:
    """``payload`` as the JSON body, one line."""
    return Response(status, json.dumps(payload).encode() + b"\n")


def error_response(status: int, message: str, *, headers: tuple[tuple[str, str], ...] = (),
                   close: bool = False) -> Response:
    """``{"error": message}``: every refusal of the admin API has this one shape."""
    response = json_response(status, {"error": message})
    response.headers = headers
    response.close = close
    return response


# ---- connections ----------------------------------------------------------------------------


_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

Handle = Callable[[Request], Awaitable[Response]]
"""What answers an authorized request (:meth:`~twinproxy.control.endpoints.Endpoints.dispatch`)."""


@dataclass(eq=False)
class _Connection:
    """One open control connection, as the eviction sees it."""

    stream: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Since when it waits for its client (trio's clock); None while its request is handled.
    waiting_since: float | None = field(default_factory=trio.current_time)

    def wait_for_client(self) -> None:
        self.waiting_since = trio.current_time()


class HttpServer:
    """The admin API's connections: HTTP/1.1 over h11, within :class:`Limits`, behind the token.

    Knows nothing of what a path does: every request that passes the token check goes to
    ``handle``. Does not open listeners (:func:`~twinproxy.control.serve.serve_control` does) and
    does not close the nursery it is given.
    """

    def __init__(self, handle: Handle, *, token: str | None, open_paths: frozenset[str],
                 limits: Limits = DEFAULT_LIMITS, reserve: Reserve | None = None):
        self.handle = handle
        self.reserve = reserve
        self.token = token.encode() if token else None
        self.open_paths = open_paths
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.evicted = RateLimitedLog(
            log, logging.WARNING, f"control API: {limits.max_connections} connections open: "
            "closed the one that waited longest for its client")
        self.refused = RateLimitedLog(
            log, logging.WARNING, f"control API: all {limits.max_connections} connections "
            "are handling requests: refused a new one with 503")
        self.accept_failed = RateLimitedLog(log, logging.ERROR, "control API: cannot accept")

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections on ``listener`` until cancelled, each served by a task in
        ``nursery``. Past ``max_connections``, the connection that has waited longest for its
        client is closed to make room; when every one is handling a request, the new one is
        answered 503. Running out of file descriptors or buffers is logged (at most once per
        10 s, with a count); out of descriptors, a descriptor of the ``reserve`` is given up so
        that the connection (the operator's, most likely) can be accepted, and is taken back
        when a connection closes; with none left, accepting is retried every 0.1 s. Any other
        error from ``accept`` propagates."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                self.accept_failed.note(describe(exc))
                if not (exc.errno == errno.EMFILE and self.reserve is not None
                        and self.reserve.release()):
                    await trio.sleep(0.1)
                continue
            if len(self.connections) >= self.limits.max_connections and not self._make_room():
                self.refused.note()
                nursery.start_soon(self._refuse, stream)
                continue
            connection = _Connection(stream)
            self.connections.add(connection)
            nursery.start_soon(self._connection, connection)

    async def report(self) -> None:
        """Until cancelled: write the counts of evictions, refusals and failed accepts that
        the rate-limited lines have not written yet, once their period has passed."""
        while True:
            await trio.sleep(1.0)
            for counted in (self.evicted, self.refused, self.accept_failed):
                counted.flush()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for its client; False when every one
        is handling a request."""
        waiting = [c for c in self.connections if c.waiting_since is not None]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.waiting_since)
        self.connections.discard(oldest)
        oldest.scope.cancel()
        # Its descriptor is freed now, not when its task next runs: a flood must not make
        # the API hold more than max_connections of them.
        oldest.stream.socket.close()
        self.evicted.note()
        return True

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """503 to a connection there is no room for, without reading its request (h11 cannot
        answer before a request, so the response is written out here)."""
        body = json.dumps({"error": f"the control API is handling {self.limits.max_connections} "
                                    "requests; try again"}).encode() + b"\n"
        data = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nCache-Control: no-store\r\nRetry-After: 1\r\n"
                b"Connection: close\r\n\r\n" % len(body)) + body
        with trio.move_on_after(1.0), \
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(data)
            await _linger(stream, 0.5)
        await trio.aclose_forcefully(stream)
        self._refill()

    async def _connection(self, connection: _Connection) -> None:
        stream = connection.stream
        try:
            with connection.scope:
                await self._serve_connection(connection, _peer(stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away, or was closed to make room; nothing to tell it
        finally:
            self.connections.discard(connection)
            await trio.aclose_forcefully(stream)
            self._refill()

    def _refill(self) -> None:
        """Take back the reserve's descriptors given up: a connection's, closed just now, or
        another freed since."""
        if self.reserve is not None and len(self.reserve) < self.reserve.size:
            self.reserve.refill()

    async def _serve_connection(self, connection: _Connection, peer: str) -> None:
        stream = connection.stream
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        for served in range(1, self.limits.max_requests_per_connection + 1):
            connection.wait_for_client()
            try:
                with trio.fail_after(self.limits.request_timeout):
                    request = await self._receive(conn, stream, peer)
            except trio.TooSlowError:
                if conn.their_state is not h11.IDLE or conn.trailing_data[0]:
                    await self._send(conn, stream, error_response(
                        408, "request not received in time", close=True))
                return
            except Reply as reply:
                await self._send(conn, stream, error_response(reply.status, reply.error,
                                                              headers=reply.headers, close=True))
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                await self._send(conn, stream, error_response(status, f"bad request: {exc}",
                                                              close=True))
                return
            if request is None:
                return
            connection.waiting_since = None  # handled: never closed to make room
            response = await self._answer(request)
            connection.wait_for_client()  # the client must read the response
            response.head = request.method == "HEAD"
            if request.method == "POST":  # who changed what, or tried to: one line each
                log.info("control API: %s %s from %s: %d %s", request.method, request.path,
                         request.peer, response.status, _summary(response))
            if served == self.limits.max_requests_per_connection:
                response.close = True  # a busy client cannot keep its slot for ever
            await self._send(conn, stream, response)
            if response.close or conn.our_state is not h11.DONE \
                    or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _receive(self, conn: h11.Connection, stream: trio.SocketStream, peer: str
                       ) -> Request | None:
        """The next whole request, or ``None`` when the client closed between requests."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(16384))
            elif isinstance(event, h11.Request):
                request = event
                # h11 bounds only the part of a head it has not parsed yet; a head that arrives
                # whole in one read can be larger, so measure it here as well.
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self.limits.max_header_bytes:
                    raise Reply(431, f"request head larger than {self.limits.max_header_bytes} "
                                     "bytes")
                length = _header(event.headers, b"content-length")
                if length is not None and length.isdigit() \
                        and int(length) > self.limits.max_body_bytes:
                    raise Reply(413, f"request body larger than {self.limits.max_body_bytes} "
                                     "bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    raise Reply(413, f"request body larger than {self.limits.max_body_bytes} "
                                     "bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                target = urlsplit(request.target.decode("latin-1"))
                return Request(
                    method=request.method.decode("latin-1"), path=target.path,
                    query=target.query, body=bytes(body), peer=peer,
                    headers={k.decode("latin-1"): v.decode("latin-1")
                             for k, v in request.headers})
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream,
                    response: Response) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(response.body))),
                   ("Cache-Control", "no-store"), *response.headers]
        if response.close:
            headers.append(("Connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=response.status, headers=headers,
                                          reason=HTTPStatus(response.status).phrase))
            if not response.head:
                data += conn.send(h11.Data(data=response.body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # A request h11 could not frame a reply to (e.g. HTTP/1.0 oddities): just close.
            return
        with trio.move_on_after(self.limits.send_timeout):
            await stream.send_all(data)
            if response.close and conn.their_state is not h11.DONE:
                await _linger(stream)

    async def _answer(self, request: Request) -> Response:
        # The token first, so that a client without one learns nothing, not even which paths
        # exist.
        if request.path not in self.open_paths and not self._authorized(request):
            log.warning("control API: %s %s from %s: missing or wrong token", request.method,
                        request.path, request.peer)
            return error_response(401, "a valid bearer token is required "
                                       "(Authorization: Bearer <token>)",
                                  headers=(("WWW-Authenticate", 'Bearer realm="twinproxy"'),))
        return await self.handle(request)

    def _authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("latin-1"), self.token)


async def _linger(stream: trio.SocketStream, seconds: float = 1.0, limit: int = 1 << 20
                  ) -> None:
    """Close our side, then read and drop what the client still sends, for a moment.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    error response before the client reads it (a 413 for a body the client is still sending).
    """
    await stream.send_eof()
    dropped = 0
    with trio.move_on_after(seconds):
        while dropped < limit:
            data = await stream.receive_some(65536)
            if not data:
                return
            dropped += len(data)


def _summary(response: Response) -> str:
    """The error of a refused request, for the log line; empty for a success."""
    if response.status < 400:
        return ""
    try:
        return str(json.loads(response.body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _peer(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(peer, tuple):
        return format_address((peer[0], peer[1]))
    # On a unix socket, who is asking is the process at the other end: log its pid and uid.
    try:
        creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                         struct.calcsize("3i"))
    except OSError:
        return "unix socket"
    pid, uid, _ = struct.unpack("3i", creds)
    return f"pid {pid} uid {uid}"
