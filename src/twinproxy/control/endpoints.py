"""The admin API's endpoints: what each path does with the service, and with which status.

Apart from the HTTP server (:mod:`~twinproxy.control.http_server`), which knows nothing of
paths but the ones open without a token: a reader looking for what ``POST /promote`` answers
reads this file alone. Every handler is a method of :class:`Endpoints` and is listed in
:data:`ROUTES`; the statuses are described in ``docs/control-api.md``.

A handler answers with a :class:`~twinproxy.control.http_server.Response`, or raises
:class:`~twinproxy.control.http_server.Reply` for a refusal; the service's own refusals
(:class:`~twinproxy.control.controlled.Refused`) become their status the same way.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import prometheus_client
from prometheus_client.exposition import choose_encoder

from twinproxy.control.controlled import Controlled, Refused
from twinproxy.control.http_server import (
    Reply,
    Request,
    Response,
    error_response,
    json_response,
)
from twinproxy.metrics import ServiceCollector

__all__ = ["OPEN_PATHS", "ROUTES", "Endpoints"]

log = logging.getLogger("twinproxy.control")

# Open without a token, so that load balancers and probes need no secret.
OPEN_PATHS = frozenset({"/healthz"})

DIVERGENCES_DEFAULT_LIMIT = 100
DIVERGENCES_MAX_LIMIT = 1000


class Endpoints:
    """The admin API's handlers for one service, and the metrics registry ``/metrics`` reads."""

    def __init__(self, service: Controlled) -> None:
        self.service = service
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))

    async def dispatch(self, request: Request) -> Response:
        """The response to an authorized request: the endpoint's, or 404, 405, 500 (a handler
        that failed), or the status a handler raised with :class:`Reply`."""
        methods = ROUTES.get(request.path)
        if methods is None:
            return error_response(404, f"no endpoint {request.path} (endpoints: "
                                       f"{', '.join(sorted(ROUTES))})")
        # HEAD is GET without the body (h11 leaves the body out when sending).
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return error_response(405, f"{request.path} takes {allowed}, not {request.method}",
                                  headers=(("Allow", allowed),))
        try:
            response = await handler(self, request)
        except Reply as reply:
            return error_response(reply.status, reply.error, headers=reply.headers)
        except Exception as exc:
            log.exception("control API: %s %s failed", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        return response

    async def status(self, request: Request) -> Response:
        return json_response(200, self.service.status())

    async def healthz(self, request: Request) -> Response:
        status = self.service.status()
        leader = status.get("leader") or {}
        if leader.get("up", True):
            return json_response(200, {"ok": True, "state": status.get("state")})
        return json_response(503, {"ok": False, "state": status.get("state"),
                                   "error": f"version {leader.get('version')} is down"})

    async def update(self, request: Request) -> Response:
        body = _json_body(request, '{"to": "v7"}')
        if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]:
            raise Reply(400, 'the body must be a JSON object with "to", the version to '
                             'update to, such as {"to": "v7"}')
        unknown = sorted(set(body) - {"to"})
        if unknown:
            raise Reply(400, f"unknown field {unknown[0]!r} (known: to)")
        await self._call(self.service.update, body["to"])
        return json_response(202, self.service.status())

    async def promote(self, request: Request) -> Response:
        return await self._transition(self.service.promote)

    async def rollback(self, request: Request) -> Response:
        return await self._transition(self.service.rollback)

    async def _transition(self, fn: Callable[[], None]) -> Response:
        """Ask for a promote or rollback and answer with the state it led to: 200 once it is
        done, or 202 with the state so far if it takes longer than the config's own bounds
        (:meth:`~twinproxy.service.Service.transition_timeout`)."""
        update = self.service.updating
        was_following = update.following if update is not None else False
        await self._call(fn)
        assert update is not None  # fn refuses (409) when no update is in progress
        done = await self.service.settle(update, was_following)
        return json_response(200 if done else 202, self.service.status())

    async def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call a transition, sync or async, turning :class:`Refused` into its status."""
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Refused as exc:
            raise Reply(exc.status, exc.reason) from None

    async def divergences(self, request: Request) -> Response:
        since = _int_param(request.query, "since", 0, 0, None)
        limit = _int_param(request.query, "limit", DIVERGENCES_DEFAULT_LIMIT, 1,
                           DIVERGENCES_MAX_LIMIT)
        found = self.service.divergences.since(since, limit)
        items = [d.to_json() for d in found]
        next_since = items[-1]["id"] if items else since
        return json_response(200, {"divergences": items, "next": next_since})

    async def metrics(self, request: Request) -> Response:
        # The format the scraper asks for: OpenMetrics for Prometheus, else text 0.0.4.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(200, encoder(self.registry), content_type=content_type)


Handler = Callable[[Endpoints, Request], Awaitable[Response]]

ROUTES: dict[str, dict[str, Handler]] = {
    "/status": {"GET": Endpoints.status},
    "/healthz": {"GET": Endpoints.healthz},
    "/update": {"POST": Endpoints.update},
    "/promote": {"POST": Endpoints.promote},
    "/rollback": {"POST": Endpoints.rollback},
    "/divergences": {"GET": Endpoints.divergences},
    "/metrics": {"GET": Endpoints.metrics},
}


def _json_body(request: Request, example: str) -> Any:
    """The request's body as JSON, or a 400 naming what is wrong with it.

    A body nested deeper than the JSON decoder goes (about 1,000 levels) is a client's mistake
    like any other bad JSON: a 400 (the endpoint's one log line says so), not a 500 with a
    traceback, which is what its ``RecursionError`` gave before.
    """
    try:
        return json.loads(request.body)
    except RecursionError:
        raise Reply(400, f"the body must be JSON such as {example}: it is nested too "
                         "deeply") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise Reply(400, f"the body must be JSON such as {example}: {exc}") from None


def _int_param(query: str, name: str, default: int, low: int, high: int | None) -> int:
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                          max_num_fields=10)
    except ValueError as exc:
        raise Reply(400, f"bad query string {query!r}: {exc}") from None
    unknown = sorted(set(params) - {"since", "limit"})
    if unknown:
        raise Reply(400, f"unknown query parameter {unknown[0]!r} (known: since, limit)")
    values = params.get(name)
    if not values:
        return default
    if len(values) > 1:
        raise Reply(400, f"query parameter {name} given more than once")
    text = values[0]
    if not (text.isascii() and text.isdigit()) or int(text) < low \
            or (high is not None and int(text) > high):
        upper = f" to {high}" if high is not None else " or more"
        raise Reply(400, f"query parameter {name} must be an integer from {low}{upper}, "
                         f"got {text!r}")
    return int(text)
