"""The update endpoint (``docs/update-endpoint.md``, wire format ``twinproxy-update/1``), served
in a thread beside the service's loop.

Each request is checked, then handed to the serving loop through the safe point and waited for:
with ``"reply_when": "forked"`` the answer (202) goes as soon as the child exists, so that the
proxy can let its clients go while the child transforms; a second request with the same id then
waits for the child's report (200, or the refusal). Without it, one request waits for the report.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from twinproxy.cooperative.attempt import Attempt, Outcome

if TYPE_CHECKING:
    from twinproxy.cooperative.running import Running

__all__ = ["PROTOCOL", "Endpoint"]

PROTOCOL = "twinproxy-update/1"
_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
MAX_BODY = 64 * 1024
RETRY_BIND = 0.05  # seconds between tries to take over the endpoint's address
GIVE_UP_EARLY = 0.5  # seconds (at most a tenth of the timeout) before the caller's timeout


class Endpoint:
    """The HTTP server of one version's update endpoint."""

    def __init__(self, service: Running, address: tuple[str, int]):
        self.service = service
        self.address = address

    def start(self, retry: bool) -> None:
        """Listen in a daemon thread; with ``retry``, keep trying to bind until the address
        is free (the parent still holds it). Without, a failure to bind raises OSError here."""
        if not retry:
            self._serve(self._server())
            return
        threading.Thread(target=self._take_over, daemon=True,
                         name="twinproxy-endpoint-take-over").start()

    def _server(self) -> ThreadingHTTPServer:
        service = self.service

        class Handler(_Handler):
            updatable = service

        server = ThreadingHTTPServer(self.address, Handler)
        server.daemon_threads = True
        return server

    def _serve(self, server: ThreadingHTTPServer) -> None:
        threading.Thread(target=server.serve_forever, daemon=True,
                         name="twinproxy-endpoint").start()

    def _take_over(self) -> None:
        while True:
            try:
                server = self._server()
            except OSError:
                time.sleep(RETRY_BIND)
                continue
            server.serve_forever()


class _Handler(BaseHTTPRequestHandler):
    updatable: Running
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the proxy logs every update; the service's output stays its own

    def do_POST(self) -> None:
        status, body = self._answer()
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _answer(self) -> tuple[int, dict[str, Any]]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return 400, {"error": "Content-Length is not a number"}
        if not 0 < length <= MAX_BODY:
            return 400, {"error": f"a body of 1 to {MAX_BODY} bytes is expected"}
        try:
            request = json.loads(self.rfile.read(length))
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        if not isinstance(request, dict):
            return 400, {"error": "the body is not a JSON object"}
        request_id = request.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            return 400, {"error": "request_id must be 1 to 64 of [0-9A-Za-z_-]"}
        status, body = self._update(request, request_id)
        return status, {"request_id": request_id, **body}

    def _update(self, request: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        service = self.updatable
        if request.get("protocol") != PROTOCOL:
            return 400, {"error": f"protocol {request.get('protocol')!r} is not {PROTOCOL}"}
        to, timeout = request.get("to"), request.get("timeout")
        if not isinstance(to, str):
            return 400, {"error": "to must be a version name"}
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            return 400, {"error": "timeout must be a positive number of seconds"}
        reply_when = request.get("reply_when", "ready")
        if reply_when not in ("ready", "forked"):
            return 400, {"error": 'reply_when must be "ready" or "forked"'}
        if to not in service.versions:
            return 404, {"error": f"this service has no version {to!r}"}
        if to == service.current:
            return 400, {"error": f"{to} is the version running"}
        if (service.current, to) not in service.transforms:
            return 422, {"error": f"no state transform from {service.current} to {to}"}
        with service.lock:
            attempt = service.attempt
            if attempt is None or attempt.request_id != request_id:
                if attempt is not None and attempt.busy:
                    return 409, {"error": f"another update (to {attempt.to}, request "
                                          f"{attempt.request_id}) is in progress or running"}
                attempt = service.attempt = Attempt(request_id, to)
                service.safe_point.ask(attempt)
        return self._wait(attempt, reply_when, timeout)

    def _wait(self, attempt: Attempt, reply_when: str,
              timeout: float) -> tuple[int, dict[str, Any]]:
        service = self.updatable
        # Give up a little before the caller does, so that it hears why rather than time out.
        deadline = time.monotonic() + timeout - min(GIVE_UP_EARLY, timeout / 10)
        if not attempt.forked.wait(timeout):
            if service.safe_point.withdraw(attempt):
                attempt.finish(Outcome(409, {"error": f"no safe point within {timeout:g}s"}))
            else:
                attempt.forked.wait()  # the loop took it just now: the fork is quick
        if reply_when == "forked" and attempt.pid is not None:
            # even when the child has ended already: its outcome is the second call's answer,
            # so that the caller always learns it at the same step
            return 202, {"to": attempt.to, "pid": attempt.pid, "state": "forked"}
        if not attempt.done.wait(max(0.0, deadline - time.monotonic())):
            attempt.give_up(f"the new version's process (pid {attempt.pid}) did not report "
                            f"within {timeout:g}s")
        assert attempt.outcome is not None
        return attempt.outcome.status, dict(attempt.outcome.body)
