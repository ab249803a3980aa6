"""The cooperative update client against a real HTTP server standing in for the service.

``StandInService`` is the client's peer: a small threaded HTTP server that plays the service's
side of docs/update-endpoint.md (answers with a new instance's address and pid, remembers the
last request_id) or misbehaves in one chosen way: refuses, hangs, closes early, answers nonsense.
It starts no process; the point is what the client sends and how it reads every answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.servers import free_port
from twinproxy.update import PROTOCOL, UpdateFailed, request_update

Behaviour = Callable[["Handler", dict], None]


class StandInService(ThreadingHTTPServer):
    """The service's update endpoint, on a loopback port, with a behaviour per test."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, behaviour: Behaviour):
        super().__init__(("127.0.0.1", 0), Handler)
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.forks = 0
        self.answered: dict[str, dict] = {}
        self.release = threading.Event()  # ends a hanging handler

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/twinproxy/update"

    def start_instance(self, body: dict) -> dict:
        """What a cooperative service does: answer a repeated request_id with its first reply."""
        if body["request_id"] not in self.answered:
            self.forks += 1
            self.answered[body["request_id"]] = {
                "request_id": body["request_id"], "to": body["to"],
                "address": "127.0.0.1:7102", "pid": 40000 + self.forks}
        return self.answered[body["request_id"]]


class Handler(BaseHTTPRequestHandler):
    server: StandInService
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body})
        self.server.behaviour(self, body)

    def reply(self, status: int, payload, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stand_in() -> Iterator[Callable[[Behaviour], StandInService]]:
    started: list[StandInService] = []

    def start(behaviour: Behaviour) -> StandInService:
        server = StandInService(behaviour)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()
        server.shutdown()
        server.server_close()


def ok(handler: Handler, body: dict) -> None:
    handler.reply(200, handler.server.start_instance(body))


async def test_success_sends_the_documented_request(stand_in) -> None:
    service = stand_in(ok)
    result = await request_update(service.endpoint, "v7", timeout=5)
    assert (result.to, result.address, result.pid) == ("v7", ("127.0.0.1", 7102), 40001)
    (sent,) = service.requests
    assert sent["path"] == "/twinproxy/update"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["Host"] == f"127.0.0.1:{service.server_address[1]}"
    assert sent["body"] == {"protocol": PROTOCOL, "request_id": result.request_id, "to": "v7",
                            "timeout": 5}
    assert len(result.request_id) == 32
    assert result.seconds >= 0


async def test_a_retry_with_the_same_request_id_gets_the_same_instance(stand_in) -> None:
    service = stand_in(ok)
    first = await request_update(service.endpoint, "v7", timeout=5)
    again = await request_update(service.endpoint, "v7", timeout=5, request_id=first.request_id)
    other = await request_update(service.endpoint, "v7", timeout=5)
    assert (again.address, again.pid) == (first.address, first.pid)
    assert other.request_id != first.request_id and other.pid != first.pid
    assert service.forks == 2


async def test_bad_request_id_is_refused_before_sending(stand_in) -> None:
    service = stand_in(ok)
    with pytest.raises(ValueError, match="request_id"):
        await request_update(service.endpoint, "v7", timeout=5, request_id="has space")
    assert service.requests == []


@pytest.mark.parametrize(("status", "payload", "says"), [
    (409, {"error": "another update is in progress"}, "another update is in progress"),
    (404, {"request_id": "x", "error": "no version v7 here"}, "no version v7 here"),
    (422, {"error": "transform check failed:\nback(forward(s)) != s"},
     "transform check failed: back(forward(s)) != s"),
    (500, b"<html>Internal Server Error</html>", "<html>Internal Server Error</html>"),
    (503, b"", "status 503"),
], ids=["409", "404", "422-multiline", "500-html", "503-empty"])
async def test_refusal_carries_the_services_reason(stand_in, status, payload, says) -> None:
    service = stand_in(lambda h, body: h.reply(status, payload))
    with pytest.raises(UpdateFailed) as failed:
        await request_update(service.endpoint, "v7", timeout=5)
    assert failed.value.kind == "refused"
    assert failed.value.status == status
    assert says in str(failed.value)
    assert "\n" not in str(failed.value)


async def test_no_answer_in_time_is_a_timeout(stand_in) -> None:
    service = stand_in(lambda h, body: service.release.wait(10))
    started = time.monotonic()
    with pytest.raises(UpdateFailed, match=r"did not answer within 0\.5s") as failed:
        await request_update(service.endpoint, "v7", timeout=0.5)
    assert failed.value.kind == "timeout"
    assert 0.5 <= time.monotonic() - started < 2


def close_at_once(handler: Handler, body: dict) -> None:
    handler.close_connection = True
    handler.connection.shutdown(2)


def close_mid_reply(handler: Handler, body: dict) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"request_id\": ")
    handler.wfile.flush()
    handler.close_connection = True
    handler.connection.shutdown(2)


@pytest.mark.parametrize("behaviour", [close_at_once, close_mid_reply])
async def test_connection_closed_early(stand_in, behaviour) -> None:
    service = stand_in(behaviour)
    with pytest.raises(UpdateFailed, match="closed the connection") as failed:
        await request_update(service.endpoint, "v7", timeout=5)
    assert failed.value.kind == "closed"


def fields(**changes) -> Behaviour:
    def behaviour(handler: Handler, body: dict) -> None:
        payload = {**handler.server.start_instance(body), **changes}
        handler.reply(200, {k: v for k, v in payload.items() if v is not ...})
    return behaviour


@pytest.mark.parametrize(("behaviour", "says"), [
    (lambda h, body: h.reply(200, b"started!", "text/plain"), "not JSON"),
    (lambda h, body: h.reply(200, [1, 2]), "not an object"),
    (fields(address=...), "address"),
    (fields(address="127.0.0.1"), "address"),
    (fields(address="127.0.0.1:0"), "address"),
    (fields(address="/run/v7.sock"), "a TCP address is needed"),
    (fields(address=7102), "address"),
    (fields(pid=...), "pid"),
    (fields(pid=0), "pid"),
    (fields(pid="48213"), "pid"),
    (fields(pid=True), "pid"),
    (fields(request_id="someone-else"), "request_id"),
    (fields(to="v8"), "not 'v7'"),
    (lambda h, body: (h.wfile.write(b"hello there\r\n\r\n"), h.connection.shutdown(2)),
     "did not answer in HTTP/1.1"),
], ids=["text", "list", "no-address", "no-port", "port-0", "unix-path", "address-int",
        "no-pid", "pid-0", "pid-string", "pid-bool", "other-request-id", "other-version",
        "not-http"])
async def test_nonsense_is_invalid(stand_in, behaviour, says) -> None:
    service = stand_in(behaviour)
    with pytest.raises(UpdateFailed, match=says) as failed:
        await request_update(service.endpoint, "v7", timeout=5)
    assert failed.value.kind == "invalid"


async def test_nothing_listening_is_unreachable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/update"
    with pytest.raises(UpdateFailed, match="Connection refused") as failed:
        await request_update(endpoint, "v7", timeout=5)
    assert failed.value.kind == "unreachable"
