"""The admin API against a real running Service (memcached behind it), over its real sockets.

Every endpoint and every error status; the unix socket's mode and life; TCP with and without a
token; garbage, malformed HTTP and slow clients on the control socket, after which the proxy still
serves data and control; many concurrent status calls while clients use the data port.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from pymemcache.client.base import Client

from tests.cli import serve_process
from tests.proxyrun import MEMCACHED, REDIS7, poll_until, running, write_config
from tests.servers import free_port
from twinproxy import control, httpclient
from twinproxy.control import http_server
from twinproxy.divergences import DivergenceLog
from twinproxy.protocols.messages import Request

TOKEN = "s3cret-token"


def api(address, method: str, target: str, *, body: bytes | None = None, json_body=None,
        token: str | None = None, headers=(), timeout: float = 10.0) -> httpclient.Response:
    headers = [*headers, *([("Authorization", f"Bearer {token}")] if token else [])]
    return trio.run(functools.partial(httpclient.request, address, method, target, body=body,
                                      json_body=json_body, headers=headers, timeout=timeout))


def connect(address) -> socket.socket:
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(address)
        return s
    return socket.create_connection(address, timeout=10)


def raw(address, data: bytes) -> bytes:
    """Send ``data`` on a new control connection; everything the proxy sends until it closes."""
    with connect(address) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status_line(reply: bytes) -> bytes:
    return reply.split(b"\r\n", 1)[0]


def config(folder: Path, *, control_line: str | None = None, proxy: str = "") -> Path:
    smaller = MEMCACHED.replace('"-u"', '"-m", "32", "-u"')  # a version memcache-copy refuses
    path = write_config(folder / "c.toml", "memcache",
                        {"v1": MEMCACHED, "v2": MEMCACHED, "small": smaller}, proxy=proxy)
    if control_line is not None:
        text = path.read_text()
        text = "\n".join(control_line if line.startswith("control = ") else line
                         for line in text.splitlines())
        path.write_text(text + "\n")
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with running(config(tmp_path_factory.mktemp("ctl"))) as p:
        yield p


@pytest.fixture
def sock(proxy) -> str:
    return proxy.service.config.proxy.control


def does_not_start(path: Path, match: str) -> None:
    with pytest.raises(RuntimeError, match=match), running(path, timeout=10):
        pass


def assert_serves(proxy, sock_or_address, token: str | None = None) -> None:
    """Data and control both still work."""
    client = Client(proxy.address, connect_timeout=5, timeout=5)
    client.set("still", "here")
    assert client.get("still") == b"here"
    client.close()
    assert api(sock_or_address, "GET", "/status", token=token).status == 200


# ---- endpoints ------------------------------------------------------------------------------


def test_status_is_the_services_document(proxy, sock) -> None:
    r = api(sock, "GET", "/status")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    expected = proxy.call(proxy.service.status)
    assert doc.keys() == expected.keys()
    assert doc["state"] == "single"
    assert doc["leader"]["version"] == "v1" and doc["leader"]["up"] is True
    assert doc["listen"] == f"127.0.0.1:{proxy.port}"


def test_healthz(sock) -> None:
    r = api(sock, "GET", "/healthz")
    assert (r.status, r.json()) == (200, {"ok": True, "state": "single"})


def test_promote_and_rollback_in_single_are_409(sock) -> None:
    for path in ("/promote", "/rollback"):
        r = api(sock, "POST", path)
        assert r.status == 409
        assert "no update in progress" in r.json()["error"]


@pytest.mark.parametrize(("body", "says"), [
    (b'{"to": "v9"}', "no version 'v9'"),
    (b'{"to": "v1"}', "serving now"),
    (b"{not json", "must be JSON"),
    (b"", "must be JSON"),
    (b'["v2"]', 'with "to"'),
    (b"{}", 'with "to"'),
    (b'{"to": 7}', 'with "to"'),
    (b'{"to": ""}', 'with "to"'),
    (b'{"to": "v2", "force": true}', "unknown field 'force'"),
    (b'{"to": ' + b"[" * 20000 + b"]" * 20000 + b"}", "nested too deeply"),
    (b'{"to": "v\xff"}', "must be JSON"),
], ids=["unknown-version", "serving-version", "bad-json", "empty", "not-object", "missing-to",
        "to-not-string", "to-empty", "unknown-field", "too-deep", "not-utf-8"])
def test_update_bad_requests_are_400(sock, body: bytes, says: str) -> None:
    r = api(sock, "POST", "/update", body=body, headers=[("Content-Type", "application/json")])
    assert r.status == 400, r.body
    assert says in r.json()["error"]


def test_update_its_sync_method_refuses_is_400_and_starts_nothing(sock) -> None:
    """This service's config names memcached's default method, memcache-copy, which refuses a
    new version with another memory limit before anything starts."""
    r = api(sock, "POST", "/update", json_body={"to": "small"})
    assert (r.status, r.json()["error"]) == (
        400, "small's memory limit (-m 32) differs from v1's (-m 64): the two would evict "
        "different items and the update would roll back on the first read of one; give both "
        "the same -m")
    doc = api(sock, "GET", "/status").json()
    assert (doc["state"], doc["follower"]) == ("single", None)


def test_unknown_path_404_wrong_method_405(sock) -> None:
    r = api(sock, "GET", "/nope")
    assert r.status == 404 and "/status" in r.json()["error"]
    for method, path, allow in [("POST", "/status", "GET"), ("GET", "/update", "POST"),
                                ("DELETE", "/divergences", "GET"), ("PUT", "/promote", "POST")]:
        r = api(sock, method, path)
        assert r.status == 405, (method, path)
        assert r.headers["allow"] == allow


def test_divergences_empty_until_the_service_has_a_log(proxy, sock) -> None:
    r = api(sock, "GET", "/divergences")
    assert (r.status, r.json()) == (200, {"divergences": [], "next": 0})


@pytest.mark.parametrize("query", ["since=-1", "since=x", "limit=0", "limit=1001", "limit=",
                                   "since=1&since=2", "sinse=1", "since=%ff", "a", "since=1.5"])
def test_divergences_bad_query_is_400(sock, query: str) -> None:
    r = api(sock, "GET", f"/divergences?{query}")
    assert r.status == 400, query
    assert r.json()["error"]


def test_divergences_from_the_log_with_since_and_limit(tmp_path) -> None:
    with running(config(tmp_path)) as p:
        divergences = DivergenceLog()
        for i in range(5):
            divergences.add(1, f"c{i}", Request(b"", "get", [f"k{i}".encode()]),
                            b"VALUE k 0 1\r\na\r\nEND\r\n", b"END\r\n", None)
        p.service.divergences = divergences
        sock = p.service.config.proxy.control
        page = api(sock, "GET", "/divergences?limit=2").json()
        assert [d["id"] for d in page["divergences"]] == [1, 2]
        assert page["next"] == 2
        first = page["divergences"][0]
        assert first["request"] == ["get", "k0"]
        assert first["leader"] == "VALUE k 0 1\r\na\r\nEND\r\n"
        assert first["follower"] == "END\r\n"
        page = api(sock, "GET", f"/divergences?since={page['next']}&limit=10").json()
        assert [d["id"] for d in page["divergences"]] == [3, 4, 5]
        assert api(sock, "GET", "/divergences?since=5").json() == {"divergences": [], "next": 5}


def test_metrics_parse_as_prometheus_text(proxy, sock) -> None:
    client = Client(proxy.address)  # at least one accepted connection
    client.version()
    client.set("m", b"x" * 1000)
    r = api(sock, "GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    (info,) = families["twinproxy_info"].samples  # an info metric is a gauge in this format
    assert info.labels["protocol"] == "memcache" and info.labels["version"]
    states = {s.labels["state"]: s.value for s in families["twinproxy_state"].samples}
    assert states == {"single": 1, "syncing": 0, "mve": 0, "cutover": 0, "rollback": 0}
    assert families["twinproxy_uptime_seconds"].samples[0].value > 0
    assert families["twinproxy_connections_accepted"].type == "counter"
    assert families["twinproxy_connections_accepted"].samples[0].value >= 1
    up = families["twinproxy_version_up"].samples[0]
    assert (up.labels, up.value) == ({"role": "leader", "version": "v1"}, 1)
    # The 1,000-byte value went in from the client and on to the server; the follower none.
    client_bytes = {s.labels["direction"]: s.value
                    for s in families["twinproxy_client_bytes"].samples}
    assert client_bytes["received"] > 1000 and client_bytes["sent"] > 0
    backend = {(s.labels["direction"], s.labels["role"]): s.value
               for s in families["twinproxy_backend_bytes"].samples}
    assert backend[("sent", "leader")] > 1000 and backend[("received", "leader")] > 0
    assert backend[("sent", "follower")] == 0


def test_keep_alive_serves_several_requests_on_one_connection(sock) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = raw(sock, request * 3 + b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 ") == 4


# ---- malformed input, limits ----------------------------------------------------------------


@pytest.mark.parametrize(("data", "status"), [
    (b"\x00\x01\x02garbage\xff\r\n\r\n", b"400"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", b"400"),
    (b"GET /status HTTP/1.1\r\n\r\n", b"400"),  # no Host
    (b"GET /status HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400"),
    (b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"POST /update HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{", b"413"),
    (b"POST /update HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     + (b"8000\r\n" + b"x" * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n",
     b"413"),
    (b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", b"400"),
], ids=["garbage", "tls-hello", "no-host", "bad-header", "huge-header", "huge-length",
        "huge-chunked", "negative-length"])
def test_malformed_http_gets_an_error_and_the_proxy_goes_on(proxy, sock, data, status) -> None:
    reply = raw(sock, data)
    assert status_line(reply).startswith(b"HTTP/1.1 " + status), reply[:200]
    assert b'"error"' in reply
    assert_serves(proxy, sock)


def test_data_port_does_not_answer_control_requests(proxy) -> None:
    reply = raw(proxy.address, b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not reply.startswith(b"HTTP/")


def test_slow_clients_are_closed_oldest_first_or_cut_off_and_never_delay_status(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("twinproxy.control.serve.LIMITS",
                        control.Limits(max_connections=3, request_timeout=1.0))
    with running(config(tmp_path)) as p:
        sock = p.service.config.proxy.control
        slow = []
        for _ in range(5):  # more than the connection limit
            slow.append(connect(sock))
            time.sleep(0.05)  # accepted in this order: the eviction goes by waiting time
        try:
            started = time.monotonic()
            stop = threading.Event()

            def trickle() -> None:
                for byte in b"GET /status HTTP/1.1\r\nHost: x\r\n":
                    if stop.wait(0.2):
                        return
                    for s in slow:
                        with contextlib.suppress(OSError):
                            s.send(bytes([byte]))

            thread = threading.Thread(target=trickle)
            thread.start()
            r = api(sock, "GET", "/status", timeout=15)
            assert r.status == 200
            # Not queued behind the slow clients: they made room for it.
            assert time.monotonic() - started < 0.9
            replies = []
            for s in slow:
                s.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    replies.append(status_line(s.recv(1000)))
            # The three that waited longest were closed to make room (for the fourth, the
            # fifth and the status call); the other two were cut off at request_timeout.
            assert replies == [b"", b"", b"", b"HTTP/1.1 408 Request Timeout",
                               b"HTTP/1.1 408 Request Timeout"], replies
            stop.set()
            thread.join()
        finally:
            for s in slow:
                s.close()
        assert_serves(p, sock)


async def test_past_the_limit_the_oldest_waiting_connection_goes_never_one_being_handled(
        ) -> None:
    """The HTTP server alone, with a handler that takes as long as the test wants (the real
    ones can take seconds: a rollback waits until it is done)."""
    release = trio.Event()

    async def handle(request) -> http_server.Response:
        if request.path == "/slow":
            await release.wait()
        return http_server.json_response(200, {"path": request.path})

    server = http_server.HttpServer(handle, token=None, open_paths=frozenset(),
                                    limits=control.Limits(max_connections=2))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def opened() -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.sleep(0.05)  # accepted before the next one
        return stream

    async def reply(stream: trio.SocketStream) -> bytes:
        out = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in out:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                out += chunk
        return out

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.accept_loop, listeners[0], nursery)
        idle = await opened()
        handled = await opened()
        await handled.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.05)
        newer = await opened()  # the limit: the idle one makes room, not the handled one
        assert await reply(idle) == b""
        newest = await opened()  # the handled one is still kept: `newer` goes
        assert await reply(newer) == b""
        await newest.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.05)
        busy = await opened()  # both are handled: no room, a prompt 503
        refused = await reply(busy)
        assert status_line(refused) == b"HTTP/1.1 503 Service Unavailable"
        assert b"Retry-After: 1" in refused
        release.set()
        assert status_line(await reply(handled)) == b"HTTP/1.1 200 OK"
        assert status_line(await reply(newest)) == b"HTTP/1.1 200 OK"
        for stream in (idle, handled, newer, newest, busy):
            await stream.aclose()
        nursery.cancel_scope.cancel()


def test_a_hundred_concurrent_status_calls_under_data_load(proxy, sock) -> None:
    stop = threading.Event()
    done = [0] * 4
    errors: list[BaseException] = []

    def load(i: int) -> None:
        client = Client(proxy.address, connect_timeout=5, timeout=5)
        try:
            while not stop.is_set():
                client.set(f"load{i}", str(done[i]))
                assert client.get(f"load{i}") == str(done[i]).encode()
                done[i] += 1
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(done))]
    for t in threads:
        t.start()

    async def many() -> list[int]:
        statuses: list[int] = []

        async def one() -> None:
            r = await httpclient.request(sock, "GET", "/status", timeout=20)
            assert r.json()["state"] == "single"
            statuses.append(r.status)

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
        return statuses

    try:
        time.sleep(0.1)
        before = sum(done)
        statuses = trio.run(many)
        during = sum(done) - before
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert statuses == [200] * 100
    assert during > 0, "the data clients made no progress while status was called"


# ---- the unix socket ------------------------------------------------------------------------


def test_unix_socket_is_0600_and_removed_on_exit(tmp_path) -> None:
    with running(config(tmp_path)) as p:
        sock = p.service.config.proxy.control
        mode = os.stat(sock).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    assert not os.path.exists(sock)


def test_stale_socket_is_replaced(tmp_path) -> None:
    path = config(tmp_path)
    sock = str(tmp_path / "c.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)
    stale.close()  # the file stays, nothing listens: what a killed proxy leaves
    assert os.path.exists(sock)
    with running(path) as p:
        assert api(sock, "GET", "/healthz").status == 200
        assert_serves(p, sock)
    assert not os.path.exists(sock)


def test_live_socket_is_an_error_and_left_alone(tmp_path) -> None:
    with running(config(tmp_path)) as p:
        sock = p.service.config.proxy.control
        (tmp_path / "second").mkdir()
        second = config(tmp_path / "second", control_line=f'control = "{sock}"')
        does_not_start(second, "another process is listening")
        assert_serves(p, sock)


def test_a_path_that_is_not_a_socket_is_an_error_and_kept(tmp_path) -> None:
    path = config(tmp_path)
    (tmp_path / "c.sock").write_text("precious")
    does_not_start(path, "not a socket")
    assert (tmp_path / "c.sock").read_text() == "precious"


# ---- TCP and the token ----------------------------------------------------------------------


def test_tcp_control_needs_the_token(tmp_path) -> None:
    port = free_port()
    path = config(tmp_path, control_line=f'control = "127.0.0.1:{port}"',
                  proxy=f'control_token = "{TOKEN}"')
    address = ("127.0.0.1", port)
    with running(path) as p:
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x", ""):
            for method, target in [("GET", "/status"), ("POST", "/promote"),
                                   ("GET", "/metrics"), ("GET", "/nope")]:
                r = api(address, method, target, token=token)
                assert r.status == 401, (token, target)
                assert r.headers["www-authenticate"].startswith("Bearer")
        r = api(address, "GET", "/status", headers=[("Authorization", f"Basic {TOKEN}")])
        assert r.status == 401
        assert api(address, "GET", "/status", token=TOKEN).status == 200
        assert api(address, "POST", "/promote", token=TOKEN).status == 409
        assert api(address, "GET", "/metrics", token=TOKEN).status == 200
        assert api(address, "GET", "/healthz").status == 200  # for probes, without a secret
        assert_serves(p, address, token=TOKEN)
        assert raw(address, b"\x00garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert_serves(p, address, token=TOKEN)


def test_tcp_token_from_the_environment(tmp_path, monkeypatch) -> None:
    port = free_port()
    path = config(tmp_path, control_line=f'control = "127.0.0.1:{port}"')
    monkeypatch.setenv("TWINPROXY_TOKEN", "from-env")
    with running(path):
        address = ("127.0.0.1", port)
        assert api(address, "GET", "/status").status == 401
        assert api(address, "GET", "/status", token="from-env").status == 200


def test_non_loopback_tcp_without_token_does_not_start(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TWINPROXY_TOKEN", raising=False)
    path = config(tmp_path, control_line=f'control = "0.0.0.0:{free_port()}"')
    does_not_start(path, "not a loopback address and there is no token")


def test_metrics_in_openmetrics_when_asked(sock) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse

    r = api(sock, "GET", "/metrics", headers=[
        ("Accept", "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")])
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    names = {f.name for f in parse(r.body.decode())}
    assert {"twinproxy", "twinproxy_state", "twinproxy_connections_accepted"} <= names


def test_head_is_get_without_the_body(sock) -> None:
    reply = raw(sock, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 32" in head
    assert body == b""
    assert status_line(raw(sock, b"HEAD /update HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                       ) == b"HTTP/1.1 405 Method Not Allowed"


def test_a_connection_is_closed_after_its_request_limit(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("twinproxy.control.serve.LIMITS",
                        control.Limits(max_requests_per_connection=2))
    with running(config(tmp_path)) as p:
        reply = raw(p.service.config.proxy.control,
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    assert b"Connection: close" in reply


# ---- transitions, against `twinproxy serve` -------------------------------------------------


@pytest.fixture
def served(tmp_path):
    """``twinproxy serve`` with two Redis 7.0 versions, no state sync, a warm-up that does not
    end by itself, and the old version kept as follower after a cutover."""
    path = write_config(tmp_path / "t.toml", "redis", {"a": REDIS7, "b": REDIS7},
                        update='sync = "none"\nwarmup_seconds = 600\n'
                               'warmup_requests = 1000000000\nafter_cutover = "keep-old"')
    with serve_process(path):
        yield str(tmp_path / "t.sock")


def test_update_is_202_then_409_during_the_update_and_rollback_answers_the_new_state(served
                                                                                     ) -> None:
    r = api(served, "POST", "/update", json_body={"to": "b"})
    assert r.status == 202, r.body
    doc = r.json()
    assert doc["state"] in ("syncing", "mve")
    assert doc["last_update"] == {"to": "b", "outcome": "in-progress", "reason": None}
    again = api(served, "POST", "/update", json_body={"to": "b"})
    assert again.status == 409
    assert "an update to b is in progress" in again.json()["error"]
    poll_until(lambda: api(served, "GET", "/status").json(), lambda d: d["state"] == "mve", 30,
               "MVE")
    r = api(served, "POST", "/rollback")
    assert r.status == 200
    doc = r.json()  # the state after the rollback, not the one it started from
    assert doc["state"] == "single" and doc["follower"] is None
    assert doc["leader"]["version"] == "a"
    assert doc["last_update"]["outcome"] == "rolled-back"
    assert api(served, "POST", "/rollback").status == 409
    # Another update may start now.
    assert api(served, "POST", "/update", json_body={"to": "b"}).status == 202


def test_promote_answers_after_the_cutover_and_again_after_following_ends(served) -> None:
    assert api(served, "POST", "/update", json_body={"to": "b"}).status == 202
    poll_until(lambda: api(served, "GET", "/status").json(), lambda d: d["state"] == "mve", 30,
               "MVE")
    r = api(served, "POST", "/promote")
    assert r.status == 200
    doc = r.json()  # keep-old: b leads, a follows until the next promote
    assert doc["state"] == "mve" and doc["last_update"]["outcome"] == "cutover"
    assert (doc["leader"]["version"], doc["follower"]["version"]) == ("b", "a")
    r = api(served, "POST", "/promote")
    assert r.status == 200
    doc = r.json()
    assert doc["state"] == "single" and doc["follower"] is None
    assert doc["leader"]["version"] == "b"
    assert api(served, "POST", "/promote").status == 409
