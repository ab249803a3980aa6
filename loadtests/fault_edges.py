"""The fault matrix's rows for connections at the edges (issue 15's probes 4, 6, 7, 8 and 9):
protocol errors after ``noreply`` (memcached), a flood of idle connections to the control API and
a JSON body nested too deeply, more clients than the open-files limit allows, a valid request
followed by garbage, a request of more than a million arguments, and ``twinproxy serve``
SIGKILLed with servers that changed user.

Each fault here runs under ``faults.run_row`` as the others do (the checking client running, its
errors and lost writes counted, the proxy's memory sampled); it checks what its probe promises
itself (through :meth:`Run.check`) and says what it saw in :attr:`Run.notes`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.client
import json
import os
import pwd
import re
import resource
import socket
import threading
import time
from collections.abc import Callable

import trio

from fault_harness import (
    Proxy,
    Run,
    close_wait,
    descendants,
    ended,
    gone,
    open_fds,
    poll,
    resp,
    until_ended,
)
from twinproxy import httpclient

MAX_CLIENTS = b"-ERR max number of clients reached\r\n"


def talk(port: int, data: bytes, quiet: float = 1.0) -> tuple[bytes, bool]:
    """Send ``data`` on a connection of its own: what comes back until the peer closes or is
    quiet for ``quiet`` seconds, and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), 30) as s:
        s.sendall(data)
        s.settimeout(quiet)
        out = b""
        while True:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk


def reply_line(s: socket.socket) -> bytes:
    """One reply line (b"" if the peer closed first, what came if it timed out)."""
    out = b""
    with contextlib.suppress(OSError):
        while not out.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    return out


def closed(s: socket.socket) -> bool:
    """Whether the peer closes the connection (within the socket's timeout) with nothing more
    said."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except OSError:
        return False


def timed(fn: Callable[[], dict]) -> tuple[float, dict]:
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def promote_when_mve(run: Run, timeout: float = 60) -> dict:
    """Once the update just started reaches MVE (or ends on its own), promote it: how it ended."""
    proxy = run.proxy
    st = proxy.wait(lambda s: s["state"] == "mve" or ended(s), timeout)
    if st["state"] == "mve":
        proxy.control("POST", "/promote")
    return until_ended(run, timeout)


# ---- probe 4: memcached, a protocol error after noreply -------------------------------------

NOREPLY_THEN_ERROR = b"set a 0 0 1 noreply\r\nv\r\nfrobnicate\r\n"


def error_after_noreply(count: int) -> Callable[[Run], None]:
    """``count`` memcached clients each send a ``noreply`` set and a line memcached does not
    know, then close: every other one reads the reply first (memcached's ``ERROR``, then the
    close), the others close at once. Then no socket of the proxy may stay in CLOSE-WAIT, its
    descriptors go back to their resting count, and an update started afterwards cuts over
    (before the fix each such client held two descriptors for good, and the update rolled back
    at "barrier was not reached")."""
    def fault(run: Run) -> None:
        proxy = run.proxy
        pid = proxy.proc.pid
        resting = open_fds(pid)
        answers = []
        for i in range(count):
            with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
                s.sendall(NOREPLY_THEN_ERROR)
                if i % 2:
                    s.settimeout(5)
                    answers.append(reply_line(s) + (b"<close>" if closed(s) else b""))
        wrong = [a for a in answers if a != b"ERROR\r\n<close>"]
        run.check(not wrong, f"{len(wrong)} clients got {wrong[:2]}, not ERROR then the close")
        waiting, waited = poll(lambda: close_wait(pid), lambda n: n == 0, 10)
        run.check(waiting == 0, f"{waiting} of the proxy's sockets in CLOSE-WAIT after 10 s")
        fds, freed = poll(lambda: open_fds(pid), lambda n: n <= resting, 10)
        run.check(fds <= resting, f"{fds} descriptors open 10 s later, {resting} before")
        proxy.update()
        st = promote_when_mve(run, 30)
        run.notes.append(
            f"{count} clients, half reading ERROR then the close: {waiting} sockets in "
            f"CLOSE-WAIT {waited:.1f}s after the last; descriptors {resting} before, {fds} "
            f"{freed:.1f}s after; then an update (memcache-copy), promoted: "
            f"{(st['last_update'] or {}).get('outcome')}")
    return fault


# ---- probe 6: the control API under a flood of idle connections -------------------------------

def raise_open_files(at_least: int) -> None:
    """This process may need ``at_least`` descriptors (1,000 idle connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, at_least), hard))


def deep_json(path: str, depth: int) -> tuple[bytes, bytes]:
    """``POST /update`` with a body nested ``depth`` arrays deep: the reply's status line and
    body."""
    body = b'{"to": ' + b"[" * depth + b"]" * depth + b"}"
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(30)
        s.sendall(b"POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        reply = http.client.HTTPResponse(s)
        reply.begin()
        return b"%d %s" % (reply.status, reply.reason.encode()), reply.read()


def error_of(body: bytes) -> str:
    """The gist of the control API's error body (its last clause)."""
    try:
        return json.loads(body)["error"].split(": ")[-1]
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:100].decode(errors="replace")


class Flood(threading.Thread):
    """Connections to the unix socket ``path`` that never send a byte, ``count`` of them held
    at any time and new ones opened all along, the oldest closed as they go: a client keeping
    a flood up while the proxy closes what it cannot hold. The first ``count`` are made before
    :meth:`start` returns (a connection the kernel refuses for a full backlog, EAGAIN, is tried
    again until it is taken)."""

    def __init__(self, path: str, count: int):
        super().__init__(daemon=True)
        self.path, self.count = path, count
        self.held: collections.deque[socket.socket] = collections.deque()
        self.made = 0
        self.done = threading.Event()

    def _connect(self) -> bool:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(self.path)
        except BlockingIOError:
            s.close()
            time.sleep(0.001)
            return False
        self.held.append(s)
        self.made += 1
        if len(self.held) > self.count:
            self.held.popleft().close()
        return True

    def start(self) -> None:
        deadline = time.monotonic() + 30
        while self.made < self.count and time.monotonic() < deadline:
            self._connect()
        super().start()

    def run(self) -> None:
        while not self.done.is_set():
            self._connect()

    def stop(self) -> None:
        """Stop, and close what is held."""
        self.done.set()
        self.join(10)
        for s in self.held:
            s.close()


def operator(path: str, method: str, target: str, body: dict | None = None
             ) -> tuple[float, int, dict]:
    """One request as ``twinproxy status`` or ``rollback`` sends it, with the command's own
    client (``twinproxy.httpclient``) but not its start-up: the seconds, the status, the body."""
    started = time.monotonic()
    reply = trio.run(functools.partial(httpclient.request, path, method, target,
                                       json_body=body, timeout=30))
    return time.monotonic() - started, reply.status, reply.json()


def control_flood(count: int, depth: int, commands: int) -> Callable[[Run], None]:
    """During an update, ``count`` connections to the control socket that never send a byte,
    kept up by a client that opens new ones all along (:class:`Flood`). Meanwhile the requests
    ``twinproxy status`` and ``rollback`` send, sent with the command's own client, must be
    answered within 2 s each, and the ``twinproxy status`` command itself, run ``commands``
    times, must answer every time (its start-up, about a second here, included). Then a body
    nested ``depth`` deep gets a 400."""
    def fault(run: Run) -> None:
        proxy = run.proxy
        path = str(proxy.dir / "control.sock")
        raise_open_files(count + 256)
        flood = Flood(path, count)
        flood.start()
        try:
            took_status, code, st = operator(path, "GET", "/status")
            runs = [proxy.cli("status") for _ in range(commands)]
            took_rollback, rolled, _ = operator(path, "POST", "/rollback")
        finally:
            flood.stop()
        run.check(code == 200 and st["state"] == "mve", f"status: {code} {st.get('state')}")
        run.check(rolled == 200, f"rollback answered {rolled}")
        for what, took in (("status", took_status), ("rollback", took_rollback)):
            run.check(took < 2, f"{what} took {took:.1f}s with {count} idle connections")
        failed = [r for _, r in runs if r.returncode != 0 or "update to b" not in r.stdout]
        run.check(not failed, f"twinproxy status failed {len(failed)} times of {commands}: "
                              f"{failed[0].stderr.strip()[-200:] if failed else ''}")
        until_ended(run, 30)
        answer, said = deep_json(path, depth)
        run.check(answer.startswith(b"400 "), f"a deep body got {answer!r}: {said[:100]!r}")
        slowest = max((took for took, _ in runs), default=0.0)
        run.notes.append(
            f"{count:,} held, {flood.made:,} opened in all: status {took_status:.2f}s, "
            f"rollback {took_rollback:.2f}s; twinproxy status answered {commands - len(failed)} "
            f"of {commands}, slowest {slowest:.1f}s; the deep body: {answer.decode()}, "
            f"{error_of(said)!r}")
    return fault


# ---- probe 7: more clients than the open-files limit allows ---------------------------------

def ping(s: socket.socket) -> bytes:
    s.sendall(resp("PING"))
    return reply_line(s)


def past_the_open_files_limit(extra: int) -> Callable[[Run], None]:
    """``serve`` runs under a low open-files limit (the row's ``wrapper``); idle clients connect
    up to the number its log says the limit allows, and ``extra`` more. The ones past it must
    be refused at once with Redis's own error; those connected and the checking client are
    served; the control API answers; an update then cuts over (promoted), every idle client
    served during it and after."""
    def fault(run: Run) -> None:
        proxy = run.proxy
        line = next(x for x in proxy.log.read_text().splitlines() if "open files:" in x)
        allowed = int(re.search(r"allows max_connections (\d+)", line)[1])
        limit = re.search(r"limit (\d+)", line)[1]
        idle: list[socket.socket] = []
        refused: list[bytes] = []
        slowest = 0.0
        try:
            for _ in range(allowed + extra):
                s = socket.create_connection(("127.0.0.1", proxy.port), 5)
                started = time.monotonic()
                reply = ping(s)
                if reply == b"+PONG\r\n":
                    idle.append(s)
                    continue
                refused.append(reply)
                slowest = max(slowest, time.monotonic() - started)
                s.close()
            run.check(len(refused) >= extra and set(refused) == {MAX_CLIENTS},
                      f"{len(refused)} refused, with {sorted(set(refused))[:3]}")
            run.check(slowest < 1, f"a refusal took {slowest:.1f}s")
            run.check(all(ping(s) == b"+PONG\r\n" for s in idle), "an idle client not served")
            took, _ = timed(proxy.status)
            run.check(took < 2, f"status took {took:.1f}s")
            proxy.update()
            st = proxy.wait(lambda s: s["state"] == "mve" or ended(s), 60)
            during = st["state"] == "mve" and all(ping(s) == b"+PONG\r\n" for s in idle)
            run.check(during, "an idle client not served during the update")
            st = promote_when_mve(run)
            run.check(all(ping(s) == b"+PONG\r\n" for s in idle),
                      "an idle client not served after the update")
        finally:
            for s in idle:
                s.close()
        emfile = proxy.log.read_text().count("Too many open files")
        run.check(not emfile, f"{emfile} lines with 'Too many open files' in the log")
        run.notes.append(
            f"limit {limit}: max_connections {allowed}; {len(idle)} idle clients and the checking "
            f"client served, {len(refused)} more refused with Redis's error within "
            f"{slowest * 1000:.1f} ms; status {took * 1000:.1f} ms; an update with all "
            f"connected: {(st['last_update'] or {}).get('outcome')}")
    return fault


# ---- probe 8: garbage after a valid request; more than a million arguments ------------------

GARBAGE = [b"*x\r\n", b"*1\r\n$x\r\n", b"*1\r\nx\r\n"]  # each a protocol error
ARGS = 1_100_000  # over redis-server 6.2's limit of 1M arguments, within 7.0's


def rpush(port: int, key: bytes) -> tuple[float, bytes]:
    """RPUSH of :data:`ARGS` values to ``key`` (deleted first): the seconds, and the reply."""
    request = b"*%d\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n" % (ARGS + 2, len(key), key) \
        + b"$1\r\nx\r\n" * ARGS
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), 120) as s:
            s.sendall(resp("DEL", key))
            reply_line(s)
            started = time.monotonic()
            s.sendall(request)
            reply = reply_line(s)
            return time.monotonic() - started, reply
    except OSError as exc:
        return time.monotonic() - started, str(exc).encode()


def garbage_and_many_arguments(run: Run) -> None:
    """A valid request then garbage, in one packet, through the proxy and to the server
    directly (the leader, at its own port): the same bytes back, the reply, the error, then the
    close. Then an RPUSH of 1.1 million arguments through the proxy (and, but with ``--short``,
    directly)."""
    proxy = run.proxy
    # The server itself: the leader behind the proxy; for the row's baseline, the server alone.
    leader = int(proxy.status()["leader"]["address"].rsplit(":", 1)[1]) \
        if isinstance(proxy, Proxy) else proxy.port
    same = 0
    for garbage in GARBAGE:
        data = resp("PING") + garbage
        want, got = talk(leader, data), talk(proxy.port, data)
        ok = got == want and want[1] and want[0].startswith(b"+PONG\r\n-ERR Protocol error")
        same += ok
        run.check(ok, f"PING + {garbage!r}: {got} through the proxy, {want} directly")
    through, got = rpush(proxy.port, b"many:proxied")
    run.check(got == b":%d\r\n" % ARGS, f"RPUSH answered {got!r}")
    baseline = ""
    if not run.short:  # the same request to the server directly, for its time
        directly, want = rpush(leader, b"many:direct")
        run.check(want == got, f"RPUSH answered {want!r} directly")
        baseline = f" ({want.strip().decode(errors='replace')!r} in {directly:.2f}s directly)"
    run.notes.append(
        f"PING then garbage in one packet: {same} of {len(GARBAGE)} kinds got +PONG, "
        f"redis-server's protocol error, then the close, byte for byte as directly; RPUSH of "
        f"{ARGS:,} arguments answered {got.strip().decode(errors='replace')!r} in "
        f"{through:.2f}s{baseline}")


# ---- probe 9: serve SIGKILLed, with servers that changed user -------------------------------

def owner(pid: int) -> str:
    with contextlib.suppress(OSError, KeyError):
        return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    return "?"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def serve_killed(run: Run) -> None:
    """SIGKILL to ``twinproxy serve`` during the warm-up: nothing it started may outlive it
    (memcached run with ``-u nobody`` changes user, which clears the parent-death signal)."""
    proxy = run.proxy
    st = proxy.status()
    ports = [int(st[side]["address"].rsplit(":", 1)[1]) for side in ("leader", "follower")
             if (st[side] or {}).get("address")]
    servers = proxy.servers()
    users = sorted({owner(p) for p in servers})
    run.stop_clients()  # what they wrote is checked before the servers go
    below = descendants(proxy.proc.pid)
    started = time.monotonic()
    proxy.proc.kill()
    proxy.proc.wait()
    left = gone(below, 10)
    took = time.monotonic() - started
    for pid in left:  # not to leave them running after a failure
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    held = [p for p in ports if not port_free(p)]
    name = os.path.basename(proxy.protocol.binary)
    run.stopped = f"serve killed (SIGKILL); its processes gone in {took:.1f}s"
    run.check(len(servers) == 2, f"{len(servers)} {name} running before, not 2")
    run.check(not left, f"processes left running: {left}")
    run.check(not held, f"ports still held: {held}")
    run.notes.append(f"{len(servers)} {name} (user {', '.join(users)}) and {len(below)} "
                     f"processes below serve in all: {len(left)} left {took:.1f}s after the "
                     f"SIGKILL; their ports free: {not held}")
