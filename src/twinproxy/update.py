"""The cooperative update client: ask a running service to start its new version itself.

In the cooperative sync method (DESIGN.md, "State sync") the service, not the proxy, knows where
it is safe to update: the proxy sends one HTTP request to the service's update endpoint
(``update.cooperative_endpoint``), the service reaches a safe point, forks, transforms its state
in the child and starts the new version there, and answers with the child's address and pid.
The wire format is specified in ``docs/update-endpoint.md`` so that services in any language can
implement it; this module is its client and checks every reply against it.

It does not retry: a retry is the caller's decision, and it is safe when made with the same
``request_id`` (the endpoint must answer a repeated id with the first answer, without forking
again). It does not start, watch or stop the new instance either: that is the engine's job once
it has the address.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twinproxy import httpclient
from twinproxy.config import Address, format_address

__all__ = ["PROTOCOL", "Forked", "UpdateFailed", "UpdateResult", "request_fork",
           "request_update"]

_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")

PROTOCOL = "twinproxy-update/1"
"""The ``protocol`` field of every request; a service refuses one it does not implement."""


class UpdateFailed(Exception):
    """The service did not start the new version; ``str()`` is one line saying why.

    Attributes:
        reason: what happened, for logs and ``last_update.reason``.
        kind: ``"unreachable"`` (no connection), ``"timeout"`` (no complete reply in time),
            ``"closed"`` (the connection ended before a complete reply), ``"refused"`` (the
            service answered with an error status) or ``"invalid"`` (a reply that does not
            follow the wire format).
        status: the HTTP status when the service answered, else ``None``.
    """

    def __init__(self, reason: str, kind: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class UpdateResult:
    """The new instance the service started: where to connect, and which process it is."""

    to: str
    address: Address
    pid: int
    request_id: str
    seconds: float
    parent_pid: int | None = None
    """The process that answered (the old version), when the service says."""


@dataclass(frozen=True)
class Forked:
    """The service forked at its safe point; its child (``pid``) is getting ready."""

    pid: int
    request_id: str
    seconds: float
    ready: UpdateResult | None = None
    """The whole result, when the service answered only once the child was ready."""


def _split_endpoint(endpoint: str) -> tuple[Address, str, str]:
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f'expected an "http://host:port/path" URL, got {endpoint!r}')
    address = (parts.hostname, parts.port or 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return address, target, parts.netloc


async def request_update(endpoint: str, to: str, *, timeout: float,
                         request_id: str | None = None) -> UpdateResult:
    """Ask the service at ``endpoint`` to start version ``to`` with its state; wait for it.

    Args:
        endpoint: the ``http://host:port/path`` URL of the service's update endpoint.
        to: the name of the version to start (as in the config's ``[versions]``).
        timeout: seconds for the whole exchange; the service is told, so that it can give up
            in time rather than start an instance nobody will use.
        request_id: the id of this update; pass the id of an earlier attempt to retry it, or
            of a :func:`request_fork` to wait for the child it forked. A new random id when
            not given.

    Returns:
        The new instance's address and pid.

    Raises:
        UpdateFailed: the service refused, did not answer within ``timeout``, closed the
            connection early, or answered something that is not a valid reply.
        ValueError: ``endpoint`` is not an ``http://`` URL (the config loader checks this), or
            ``request_id`` is not 1 to 64 of ``[0-9A-Za-z_-]``.
    """
    request_id = request_id or uuid.uuid4().hex
    response, seconds = await _exchange(endpoint, to, timeout, request_id, "ready")
    return _result(endpoint, to, request_id, response, seconds)


async def request_fork(endpoint: str, to: str, *, timeout: float,
                       request_id: str) -> Forked:
    """The first half of an update: ask the service to fork at its safe point, and return as
    soon as it has (``"reply_when": "forked"``), while its child still transforms the state.
    Wait for the child with :func:`request_update` and the same ``request_id``.

    A service whose child failed that fast answers with the refusal, raised here; one that
    knows no ``reply_when`` answers only when the child is ready: then the returned
    :class:`Forked` has the whole result in ``ready``.

    Raises:
        UpdateFailed, ValueError: as :func:`request_update`.
    """
    response, seconds = await _exchange(endpoint, to, timeout, request_id, "forked")
    if response.status != 202:
        result = _result(endpoint, to, request_id, response, seconds)
        return Forked(result.pid, request_id, round(seconds, 3), result)
    where = f"update endpoint {endpoint}"
    try:
        payload: Any = response.json()
    except httpclient.BadResponse as exc:
        raise UpdateFailed(f"{where} answered 202 with a body that is not JSON: {exc}",
                           "invalid", 202) from None
    if not isinstance(payload, dict) or payload.get("request_id") != request_id:
        raise UpdateFailed(f"{where} answered 202 without this request's request_id",
                           "invalid", 202)
    pid = payload.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise UpdateFailed(f"{where}: the 202 reply's pid must be a positive integer, got "
                           f"{pid!r}", "invalid", 202)
    return Forked(pid, request_id, round(seconds, 3))


async def _exchange(endpoint: str, to: str, timeout: float, request_id: str,
                    reply_when: str) -> tuple[httpclient.Response, float]:
    """One request to the endpoint; its response and how long it took."""
    address, target, host = _split_endpoint(endpoint)
    if not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(f"a request_id is 1 to 64 of [0-9A-Za-z_-], got {request_id!r}")
    body: dict[str, Any] = {"protocol": PROTOCOL, "request_id": request_id, "to": to,
                            "timeout": timeout}
    if reply_when != "ready":
        body["reply_when"] = reply_when
    started = time.monotonic()
    try:
        response = await httpclient.request(address, "POST", target, json_body=body, host=host,
                                            timeout=timeout)
    except httpclient.Unreachable as exc:
        raise UpdateFailed(f"update endpoint {endpoint}: {exc}", "unreachable") from None
    except httpclient.TimedOut:
        raise UpdateFailed(f"update endpoint {endpoint} did not answer within {timeout:g}s",
                           "timeout") from None
    except httpclient.ClosedEarly as exc:
        raise UpdateFailed(f"update endpoint {endpoint}: {exc}", "closed") from None
    except httpclient.BadResponse as exc:
        raise UpdateFailed(f"update endpoint {endpoint}: {exc}", "invalid") from None
    return response, time.monotonic() - started


def _result(endpoint: str, to: str, request_id: str, response: httpclient.Response,
            seconds: float) -> UpdateResult:
    where = f"update endpoint {endpoint}"
    if response.status != 200:
        raise UpdateFailed(f"{where} refused the update to {to}: {_refusal(response)}",
                           "refused", response.status)
    try:
        payload: Any = response.json()
    except httpclient.BadResponse as exc:
        raise UpdateFailed(f"{where} answered 200 with a body that is not JSON: {exc}",
                           "invalid", 200) from None
    if not isinstance(payload, dict):
        raise UpdateFailed(f"{where} answered 200 with JSON that is not an object", "invalid",
                           200)
    if payload.get("request_id") != request_id:
        raise UpdateFailed(f"{where} answered for request_id {payload.get('request_id')!r}, "
                           f"not {request_id!r}", "invalid", 200)
    if payload.get("to") not in (None, to):
        raise UpdateFailed(f"{where} started version {payload.get('to')!r}, not {to!r}",
                           "invalid", 200)
    pid = payload.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise UpdateFailed(f"{where}: the reply's pid must be a positive integer, got {pid!r}",
                           "invalid", 200)
    raw_address = payload.get("address")
    try:
        if not isinstance(raw_address, str):
            raise ValueError(f"got {raw_address!r}")
        address = httpclient.parse_address(raw_address)
        if isinstance(address, str):
            raise ValueError(f"a TCP address is needed, got the path {raw_address!r}")
    except ValueError as exc:
        raise UpdateFailed(f'{where}: the reply\'s address must be "host:port": {exc}',
                           "invalid", 200) from None
    parent_pid = payload.get("parent_pid")
    if isinstance(parent_pid, bool) or not isinstance(parent_pid, int) or parent_pid <= 0:
        parent_pid = None
    return UpdateResult(to=to, address=address, pid=pid, request_id=request_id,
                        seconds=round(seconds, 3), parent_pid=parent_pid)


def _refusal(response: httpclient.Response) -> str:
    """The service's ``error`` text; failing that, the start of whatever body it sent."""
    try:
        payload = response.json()
    except httpclient.BadResponse:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"]:
        text = payload["error"]
    else:
        text = response.body[:200].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return f"{text} (status {response.status})" if text else f"status {response.status}"


def describe(result: UpdateResult) -> str:
    """One line for the log: which version, where, which process."""
    return f"{result.to} at {format_address(result.address)} (pid {result.pid})"
