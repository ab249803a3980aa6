"""The admin API's HTTP side: HTTP/1.1 (h11) with JSON bodies, one task per connection.

How this works. :func:`~twinproxy.control.serve.serve_control` hands each listener to
:meth:`ControlServer.accept_loop`; each connection is one task that reads a request with h11,
routes it to a handler (a method of :class:`ControlServer`), writes the response, and reads the
next one until the peer closes or a limit is hit. The service is only ever called from these
tasks, in the proxy's trio thread, so handlers need no locks.

What an operator can rely on here:

* The bearer token, where there is one, is compared in constant time, before routing: a client
  without it learns nothing, not even which paths exist.
* Limits (:class:`Limits`): request headers, request body, concurrent connections (further
  connections wait in the kernel's accept queue, as with HAProxy's ``maxconn``), and a deadline
  for receiving each request, so a client that trickles bytes (slowloris) is cut off and cannot
  hold a connection slot for long. Malformed HTTP is answered with 400 (or 413, 431) and the
  connection is closed; nothing else is affected.

Endpoints and statuses are listed in :data:`ROUTES` and described in ``docs/control-api.md``.
"""

from __future__ import annotations

import errno
import hmac
import inspect
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import prometheus_client
import trio
from prometheus_client.exposition import choose_encoder

from twinproxy.config import format_address
from twinproxy.control.controlled import Controlled, Refused
from twinproxy.metrics import ServiceCollector

__all__ = [
    "DEFAULT_LIMITS",
    "ControlServer",
    "Limits",
]

log = logging.getLogger("twinproxy.control")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client of the admin API can make the proxy hold.

    ``request_timeout`` runs from the moment the server waits for a request (a new connection,
    or the end of the previous response) until the request's last byte: trickling bytes does
    not extend it. The time a handler takes (``POST /update`` may wait for a server to start)
    is not counted.
    """

    max_connections: int = 64
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    request_timeout: float = 10.0
    send_timeout: float = 10.0
    max_requests_per_connection: int = 100


DEFAULT_LIMITS = Limits()

DIVERGENCES_DEFAULT_LIMIT = 100
DIVERGENCES_MAX_LIMIT = 1000


# ---- HTTP -----------------------------------------------------------------------------------


class _Reply(Exception):
    """A response decided before the handler ran (or instead of it); closes the connection
    when ``close``."""

    def __init__(self, status: int, error: str, *, headers: tuple[tuple[str, str], ...] = (),
                 close: bool = False):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers
        self.close = close


@dataclass
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    head: bool = False  # answering HEAD: the headers of the body, without it


_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

Handler = Callable[["ControlServer", _Request], Awaitable[_Response]]


class ControlServer:
    """Connections and routing of the admin API for one service."""

    def __init__(self, service: Controlled, *, token: str | None,
                 limits: Limits = DEFAULT_LIMITS):
        self.service = service
        self.token = token.encode() if token else None
        self.limits = limits
        self._slots = trio.Semaphore(limits.max_connections)
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            # Take a slot before accepting: past the limit, clients wait in the accept queue
            # instead of holding a file descriptor and a task each.
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                self._slots.release()
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("control API: cannot accept (%s); retrying in 0.1s", exc.strerror)
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._slots.release()
                raise
            nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream, _peer(stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            self._slots.release()
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SocketStream, peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        for served in range(1, self.limits.max_requests_per_connection + 1):
            try:
                with trio.fail_after(self.limits.request_timeout):
                    request = await self._receive(conn, stream, peer)
            except trio.TooSlowError:
                if conn.their_state is not h11.IDLE or conn.trailing_data[0]:
                    await self._send(conn, stream, _error(408, "request not received in time",
                                                          close=True))
                return
            except _Reply as reply:
                await self._send(conn, stream, _error(reply.status, reply.error,
                                                      headers=reply.headers, close=True))
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                await self._send(conn, stream, _error(status, f"bad request: {exc}", close=True))
                return
            if request is None:
                return
            response = await self._dispatch(request)
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
                       ) -> _Request | None:
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
                    raise _Reply(431, f"request head larger than {self.limits.max_header_bytes} "
                                      "bytes")
                length = _header(event.headers, b"content-length")
                if length is not None and length.isdigit() \
                        and int(length) > self.limits.max_body_bytes:
                    raise _Reply(413, f"request body larger than {self.limits.max_body_bytes} "
                                      "bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    raise _Reply(413, f"request body larger than {self.limits.max_body_bytes} "
                                      "bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                target = urlsplit(request.target.decode("latin-1"))
                return _Request(
                    method=request.method.decode("latin-1"), path=target.path,
                    query=target.query, body=bytes(body), peer=peer,
                    headers={k.decode("latin-1"): v.decode("latin-1")
                             for k, v in request.headers})
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream,
                    response: _Response) -> None:
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

    # ---- routing ----------------------------------------------------------------------------

    async def _dispatch(self, request: _Request) -> _Response:
        # The token first, so that a client without one learns nothing, not even which paths
        # exist; /healthz is open so that load balancers and probes need no secret.
        if request.path != "/healthz" and not self._authorized(request):
            log.warning("control API: %s %s from %s: missing or wrong token", request.method,
                        request.path, request.peer)
            return _error(401, "a valid bearer token is required "
                               "(Authorization: Bearer <token>)",
                          headers=(("WWW-Authenticate", 'Bearer realm="twinproxy"'),))
        methods = ROUTES.get(request.path)
        if methods is None:
            return _error(404, f"no endpoint {request.path} (endpoints: "
                               f"{', '.join(sorted(ROUTES))})")
        # HEAD is GET without the body (h11 leaves the body out when sending).
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return _error(405, f"{request.path} takes {allowed}, not {request.method}",
                          headers=(("Allow", allowed),))
        try:
            response = await handler(self, request)
        except _Reply as reply:
            return _error(reply.status, reply.error, headers=reply.headers)
        except Exception as exc:
            log.exception("control API: %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")
        return response

    def _authorized(self, request: _Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("latin-1"), self.token)

    async def status(self, request: _Request) -> _Response:
        return _json(200, self.service.status())

    async def healthz(self, request: _Request) -> _Response:
        status = self.service.status()
        leader = status.get("leader") or {}
        if leader.get("up", True):
            return _json(200, {"ok": True, "state": status.get("state")})
        return _json(503, {"ok": False, "state": status.get("state"),
                           "error": f"version {leader.get('version')} is down"})

    async def update(self, request: _Request) -> _Response:
        try:
            body = json.loads(request.body)
        except ValueError as exc:
            raise _Reply(400, f'the body must be JSON such as {{"to": "v7"}}: {exc}') from None
        if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]:
            raise _Reply(400, 'the body must be a JSON object with "to", the version to '
                              'update to, such as {"to": "v7"}')
        unknown = sorted(set(body) - {"to"})
        if unknown:
            raise _Reply(400, f"unknown field {unknown[0]!r} (known: to)")
        await self._call(self.service.update, body["to"])
        return _json(202, self.service.status())

    async def promote(self, request: _Request) -> _Response:
        return await self._transition(self.service.promote)

    async def rollback(self, request: _Request) -> _Response:
        return await self._transition(self.service.rollback)

    async def _transition(self, fn: Callable[[], None]) -> _Response:
        """Ask for a promote or rollback and answer with the state it led to: 200 once it is
        done, or 202 with the state so far if it takes longer than the config's own bounds
        (:meth:`~twinproxy.service.Service.transition_timeout`)."""
        update = self.service.updating
        was_following = update.following if update is not None else False
        await self._call(fn)
        assert update is not None  # fn refuses (409) when no update is in progress
        done = await self.service.settle(update, was_following)
        return _json(200 if done else 202, self.service.status())

    async def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call a transition, sync or async, turning :class:`Refused` into its status."""
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Refused as exc:
            raise _Reply(exc.status, exc.reason) from None

    async def divergences(self, request: _Request) -> _Response:
        since = _int_param(request.query, "since", 0, 0, None)
        limit = _int_param(request.query, "limit", DIVERGENCES_DEFAULT_LIMIT, 1,
                           DIVERGENCES_MAX_LIMIT)
        found = self.service.divergences.since(since, limit)
        items = [d.to_json() for d in found]
        next_since = items[-1]["id"] if items else since
        return _json(200, {"divergences": items, "next": next_since})

    async def metrics(self, request: _Request) -> _Response:
        # The format the scraper asks for: OpenMetrics for Prometheus, else text 0.0.4.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return _Response(200, encoder(self.registry), content_type=content_type)


ROUTES: dict[str, dict[str, Handler]] = {
    "/status": {"GET": ControlServer.status},
    "/healthz": {"GET": ControlServer.healthz},
    "/update": {"POST": ControlServer.update},
    "/promote": {"POST": ControlServer.promote},
    "/rollback": {"POST": ControlServer.rollback},
    "/divergences": {"GET": ControlServer.divergences},
    "/metrics": {"GET": ControlServer.metrics},
}


def _int_param(query: str, name: str, default: int, low: int, high: int | None) -> int:
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                          max_num_fields=10)
    except ValueError as exc:
        raise _Reply(400, f"bad query string {query!r}: {exc}") from None
    unknown = sorted(set(params) - {"since", "limit"})
    if unknown:
        raise _Reply(400, f"unknown query parameter {unknown[0]!r} (known: since, limit)")
    values = params.get(name)
    if not values:
        return default
    if len(values) > 1:
        raise _Reply(400, f"query parameter {name} given more than once")
    text = values[0]
    if not (text.isascii() and text.isdigit()) or int(text) < low \
            or (high is not None and int(text) > high):
        upper = f" to {high}" if high is not None else " or more"
        raise _Reply(400, f"query parameter {name} must be an integer from {low}{upper}, "
                          f"got {text!r}")
    return int(text)


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


def _summary(response: _Response) -> str:
    """The error of a refused request, for the log line; empty for a success."""
    if response.status < 400:
        return ""
    try:
        return str(json.loads(response.body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


def _json(status: int, payload: Any) -> _Response:
    return _Response(status, json.dumps(payload).encode() + b"\n")


def _error(status: int, message: str, *, headers: tuple[tuple[str, str], ...] = (),
           close: bool = False) -> _Response:
    response = _json(status, {"error": message})
    response.headers = headers
    response.close = close
    return response


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
