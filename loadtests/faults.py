"""The fault matrix: hostile and careless clients, and faults of the servers and the proxy, each
under a checking load, with what clients saw and what the proxy's memory did.

    python loadtests/faults.py [--rows NAME,...] [--short] [--report FILE]

Each row starts ``twinproxy serve`` in front of Redis 7.0 (two managed versions, ``a`` serving
and ``b`` to update to), loads a value set, starts a *checking client* (a thread doing SET then
GET of its own keys in a loop, every reply checked, each request timed), optionally starts an
update and waits for MVE, then applies the row's fault and lets it run. Reported per row: the
checking client's errors and longest request, acknowledged writes lost (every SET acknowledged
is read back at the end), the proxy's peak resident memory, its memory once the fault is over,
and where the update ended up; for a row whose update goes on, the update is then rolled back
and the proxy's memory measured again ("after the update": it must settle within 10% of its
resting size in 10 s, or the row fails). Each row also says what it promises (the update's outcome
and its reason, no client error, no write lost, no traceback in the proxy's log, and what the
row checks on its own: processes left, files left) and whether that held: ``observed`` starts
with "as expected" or "NOT AS EXPECTED".

The proxy's temporary files (the servers' directories, the sync backlog's spill file) go to a
directory of the row's own (``TMPDIR``), so that what is left behind can be seen.

``--short`` shrinks every row (fewer connections, smaller values, shorter waits) for CI, where
``tests/test_faults.py`` runs it and checks the same things. ``--report`` replaces the rows it
ran in the file's table and keeps the others, so that rows run apart end up in one table.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))

from common import free_port, machine, stop, wait_port  # noqa: E402

REDIS_ARGV = ["/usr/bin/redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--dir", "{dir}"]


def redis_version(*args: str, delay: float = 0.0) -> str:
    """A managed Redis 7.0 version's TOML body: ``args`` added to its command; ``delay``: it
    starts that many seconds late (as one loading a large snapshot would be)."""
    argv = [*REDIS_ARGV, *args]
    if delay:
        argv = ["/bin/sh", "-c", f"sleep {delay:g} && exec {shlex.join(argv)}"]
    return f"command = {json.dumps(argv)}\nready_timeout = 60"


REDIS7 = redis_version()


def resp(*words: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        w = w.encode() if isinstance(w, str) else w
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


def call(port: int, *words: bytes | str) -> bytes:
    """One request on a connection of its own; the first bytes of the reply."""
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(resp(*words))
        return s.recv(65536)


def ended(st: dict) -> bool:
    return st["state"] == "single" and (st["last_update"] or {}).get("outcome") in (
        "cutover", "rolled-back")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:].split()[0] != b"Z"


def gone(pids: list[int], timeout: float) -> list[int]:
    """Of ``pids``, those still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (through /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return [p for p in found if alive(p)]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Proxy:
    """``twinproxy serve`` with two managed Redis 7.0 versions, and its control commands."""

    def __init__(self, d: Path, extra: str = "", update: str = "",
                 versions: dict[str, str] | None = None, tmp: Path | None = None):
        self.dir = d
        self.port = free_port()
        self.cfg = d / "faults.toml"
        self.tmp = tmp or d
        bodies = {"a": REDIS7, "b": REDIS7, **(versions or {})}
        self.cfg.write_text(f"""[proxy]
listen = "127.0.0.1:{self.port}"
protocol = "redis"
control = "{d}/control.sock"
start = "a"
{extra}
[versions.a]
{bodies["a"]}
[versions.b]
{bodies["b"]}
[update]
warmup_seconds = 100000
warmup_requests = 0
on_divergence = "log"
{update}
""")
        self.proc: subprocess.Popen | None = None
        self.log = d / "serve.log"

    @contextlib.contextmanager
    def serving(self) -> Iterator[Proxy]:
        env = {**os.environ, "TMPDIR": str(self.tmp),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC),
                                                           os.environ.get("PYTHONPATH")]))}
        log = open(self.log, "w")  # noqa: SIM115 (closed in the finally below)
        self.proc = subprocess.Popen([sys.executable, "-m", "twinproxy.cli", "serve",
                                      str(self.cfg)], stdout=subprocess.DEVNULL, stderr=log,
                                     env=env)
        try:
            deadline = time.monotonic() + 60
            while "serving" not in self.log.read_text():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log.read_text())
                time.sleep(0.05)
            yield self
        finally:
            stop(self.proc)
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        """One admin API request over the control socket (what ``twinproxy status --json`` and
        ``twinproxy update`` send; a process of the CLI each time costs a second here)."""
        conn = UnixHTTPConnection(str(self.dir / "control.sock"))
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def status(self) -> dict:
        return self.control("GET", "/status")

    def update(self) -> dict:
        """Start the update to ``b``."""
        return self.control("POST", "/update", {"to": "b"})

    def wait(self, predicate: Callable[[dict], bool], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if predicate(st) or time.monotonic() > deadline:
                return st
            time.sleep(0.1)

    def servers(self) -> list[int]:
        """The redis-server processes running below ``serve``."""
        found = []
        binary = os.path.realpath(REDIS_ARGV[0])  # Debian's is a link to redis-check-rdb
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/exe") == binary:
                    found.append(pid)
        return found

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback")

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0


class Direct:
    """redis-server 7.0 alone, for a row's baseline: the same fault and checking client with no
    proxy, so that the proxy's figure can be read against the server's own."""

    def __init__(self, d: Path):
        self.dir = d
        self.port = free_port()

    @contextlib.contextmanager
    def serving(self) -> Iterator[Direct]:
        argv = [a.format(port=self.port, dir=self.dir) for a in REDIS_ARGV]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, proc)
            yield self
        finally:
            stop(proc)


class Sampler(threading.Thread):
    """The proxy's resident memory every 50 ms: the peak."""

    def __init__(self, proxy: Proxy):
        super().__init__(daemon=True)
        self.proxy = proxy
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.proxy.rss_mb())
            time.sleep(0.05)


class Checker(threading.Thread):
    """One client doing SET then GET of its own keys, every reply checked and timed.

    ``prefix`` names its keys (100 of them, rewritten in turn); ``size`` pads its values to that
    many bytes; ``pause`` is its wait between the two."""

    def __init__(self, port: int, prefix: bytes = b"check", size: int = 0, pause: float = 0.001):
        super().__init__(daemon=True)
        self.port = port
        self.prefix = prefix
        self.size = size
        self.pause = pause
        self.errors: list[str] = []
        self.longest = 0.0
        self.ops = 0
        self.acked: dict[bytes, bytes] = {}
        self.done = threading.Event()

    def _call(self, sock: socket.socket, request: bytes, want: bytes) -> None:
        start = time.perf_counter()
        sock.sendall(request)
        got = b""
        while len(got) < len(want):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
        self.longest = max(self.longest, time.perf_counter() - start)
        if got != want:
            raise ValueError(f"{request[:40]!r} answered {got[:80]!r}")

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.settimeout(30)
        except OSError as exc:
            self.errors.append(f"connect: {exc}")
            return
        n = 0
        while not self.done.is_set():
            key = b"%s:%d" % (self.prefix, n % 100)
            value = (b"v%d:" % n).ljust(self.size, b"x")
            try:
                # Until the SET is acknowledged the key's value is unknown (a SET that timed out
                # may still run): it is not checked at the end unless a later SET succeeds.
                self.acked.pop(key, None)
                self._call(sock, resp(b"SET", key, value), b"+OK\r\n")
                self.acked[key] = value
                self._call(sock, resp(b"GET", key), b"$%d\r\n%s\r\n" % (len(value), value))
            except (OSError, ValueError) as exc:
                self.errors.append(str(exc))
                with contextlib.suppress(OSError):
                    sock.close()
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port))
                    sock.settimeout(30)
                except OSError:
                    time.sleep(0.1)
            n += 1
            self.ops += 1
            time.sleep(self.pause)
        sock.close()

    def stop(self) -> None:
        self.done.set()
        self.join(60)

    def lost(self) -> int:
        """Acknowledged writes whose value is not there now."""
        sock = socket.create_connection(("127.0.0.1", self.port))
        reader = sock.makefile("rb")
        lost = 0
        for key, value in self.acked.items():
            sock.sendall(resp(b"GET", key))
            head = reader.readline()
            got = reader.read(int(head[1:]) + 2)[:-2] if head[:1] == b"$" and head[1:2] != b"-" \
                else None
            lost += got != value
        sock.close()
        return lost


@dataclass
class Run:
    """One row running: what its fault acts on, and what it found out."""

    proxy: Proxy | Direct
    short: bool
    clients: list[Checker]  # the checking client first; a fault may add its own
    notes: list[str] = field(default_factory=list)  # what was seen, for the report
    failures: list[str] = field(default_factory=list)  # what broke the row's promise
    stopped: str | None = None  # the proxy was stopped: how it ended
    lost: int | None = None  # acknowledged writes lost, checked before the proxy was stopped

    def client(self, **kw) -> Checker:
        """Another checking client, counted with the first."""
        checker = Checker(self.proxy.port, **kw)
        checker.start()
        self.clients.append(checker)
        return checker

    def check(self, ok: bool, failure: str) -> None:
        if not ok:
            self.failures.append(failure)


@dataclass
class Row:
    name: str  # what --rows names it by
    title: str
    expected: str
    update: bool  # the fault comes during an update (MVE), not in SINGLE mode
    fault: Callable[[Run], None]
    setup: Callable[[Proxy, bool], str] | None = None  # before the checking client starts;
    # it returns a note for the report
    outcome: str | None = None  # how the update ends: "rolled-back", "cutover"; None: it does not
    reason: str = ""  # a regex the update's reason matches
    update_config: str = ""  # more [update] settings
    versions: dict[str, str] = field(default_factory=dict)  # TOML bodies for "a", "b"
    tmpfs: str | None = None  # the proxy's temporary files go to a tmpfs of this size
    seconds: float = 10.0
    result: dict = field(default_factory=dict)
    baseline: bool = False  # the fault is a client's: run it directly too (not with --short)


# ---- the faults ---------------------------------------------------------------------------------


def big_value(proxy: Proxy, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(resp(b"SET", b"big", b"x" * size))
    assert sock.recv(100) == b"+OK\r\n"
    sock.close()


def slow_readers(count: int, gets: int, size: int) -> Callable[[Run], None]:
    """``count`` connections with a small receive buffer send ``gets`` pipelined GETs of a
    ``size``-byte value and never read."""
    def fault(run: Run) -> None:
        proxy = run.proxy
        big_value(proxy, size)
        socks = []
        for _ in range(count):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", proxy.port))
            s.sendall(resp(b"GET", b"big") * gets)
            socks.append(s)
        time.sleep(3 if run.short else 10)
        for s in socks:
            s.close()
    return fault


def set_huge(port: int, i: int, size: int) -> None:
    """One client's SET of a ``size``-byte value (run in a process of its own)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(resp(b"SET", b"huge:%d" % i, b"y" * size))
        s.settimeout(120)
        if s.recv(100) != b"+OK\r\n":
            sys.exit(1)


def big_sets(count: int, size: int) -> Callable[[Run], None]:
    """``count`` clients each SET a ``size``-byte value at once, each from a process of its own:
    as threads of this process they would hold the interpreter the checking client needs, and
    its longest request would measure this process, not the proxy."""
    def fault(run: Run) -> None:
        fork = multiprocessing.get_context("fork")
        procs = [fork.Process(target=set_huge, args=(run.proxy.port, i, size))
                 for i in range(count)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        run.check(all(p.exitcode == 0 for p in procs), "a huge SET was not answered +OK")
    return fault


def until_ended(run: Run, timeout: float = 60) -> dict:
    st = run.proxy.wait(ended, timeout)
    run.check(ended(st), f"the update had not ended {timeout:g}s after the fault")
    return st


def starting_follower(proxy: Proxy, timeout: float = 60) -> tuple[int, bool]:
    """The pid of the new version's redis-server as soon as it runs (in a ``twinproxy-b-``
    directory), once its log says it loads the snapshot (or a second later); and whether it
    said so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in proxy.servers():
            try:
                workdir = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if workdir.name.startswith("twinproxy-b-"):
                log = workdir / "server.log"
                until = time.monotonic() + 1  # it says so a few ms after it starts
                while time.monotonic() < until:
                    if log.exists() and "Loading RDB" in log.read_text(errors="replace"):
                        return pid, True
                    time.sleep(0.005)
                return pid, False
        time.sleep(0.01)
    raise RuntimeError("the new version never started")


def populate(keys: int) -> Callable[[Proxy, bool], str]:
    """The leader gets ``keys`` keys (DEBUG POPULATE: its version must allow DEBUG)."""
    def setup(proxy: Proxy, short: bool) -> str:
        address = proxy.status()["leader"]["address"]
        reply = call(int(address.rsplit(":", 1)[1]), "DEBUG", "POPULATE", str(keys))
        assert reply == b"+OK\r\n", reply
        return f"the leader holds {keys:,} keys"
    return setup


def follower_killed_in_sync(run: Run) -> None:
    """An update starts, and the new version is killed while it loads the snapshot."""
    proxy = run.proxy
    proxy.update()
    pid, loading = starting_follower(proxy)
    os.kill(pid, signal.SIGKILL)
    run.notes.append(f"b killed while it {'loaded' if loading else 'started on'} the snapshot")
    until_ended(run)


def follower_signalled(sig: signal.Signals) -> Callable[[Run], None]:
    """The follower gets ``sig`` during the warm-up."""
    def fault(run: Run) -> None:
        proxy = run.proxy
        pid = proxy.status()["follower"]["pid"]
        time.sleep(0.5)
        os.kill(pid, sig)
        started = time.monotonic()
        until_ended(run)
        run.notes.append(f"rolled back {time.monotonic() - started:.1f}s after the {sig.name}")
        left = gone([pid], 10)
        run.check(not left, f"the follower (pid {pid}) is still there")
    return fault


def leader_killed(run: Run) -> None:
    """The leader is SIGKILLed during the warm-up."""
    proxy = run.proxy
    pid = proxy.status()["leader"]["pid"]
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    st = until_ended(run, 30)
    time.sleep(0.5 if run.short else 2)  # clients go on, on the former follower
    run.check(st["serving"] == "b", f"{st['serving']} serves, not b")
    run.notes.append(f"{st['serving']} serves")


def serve_terminated(run: Run) -> None:
    """SIGTERM to ``twinproxy serve`` during the warm-up, with a client connected."""
    proxy = run.proxy
    st = proxy.status()
    servers = [st["leader"]["pid"], st["follower"]["pid"]]
    for checker in run.clients:  # what they wrote is checked before the servers go
        checker.stop()
    run.lost = sum(checker.lost() for checker in run.clients)
    idle = socket.create_connection(("127.0.0.1", proxy.port))
    idle.sendall(resp(b"PING"))
    assert idle.recv(100) == b"+PONG\r\n"
    idle.settimeout(30)
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    closed = idle.recv(100) == b""
    idle.close()
    try:
        code = proxy.proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - started
    left = gone(servers, 5)
    dirs = sorted(p.name for p in proxy.tmp.glob("twinproxy-*"))
    run.stopped = f"serve exited {code} in {took:.1f}s"
    run.check(code == 0, f"serve exited with {code}")
    run.check(closed, "the idle client was not closed")
    run.check(not left, f"servers left running: {left}")
    run.check(not dirs, f"directories left: {dirs}")
    run.notes.append(f"an idle client closed; servers {servers} gone: {not left}; "
                     f"directories left: {len(dirs)}")


def update_fails_to_start(run: Run) -> None:
    """An update to a version that exits at start."""
    run.proxy.update()
    until_ended(run, 60)


def leader_refuses(run: Run) -> None:
    """The leader has as many clients as its ``maxclients`` allows (a busy server): it
    refuses new connections, and an update starts."""
    proxy = run.proxy
    port = int(proxy.status()["leader"]["address"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), 10) as admin:
        admin.sendall(resp("INFO", "clients"))
        time.sleep(0.2)
        count = int(re.search(rb"connected_clients:(\d+)", admin.recv(65536))[1])
        admin.sendall(resp("CONFIG", "SET", "maxclients", str(count)))
        assert admin.recv(100) == b"+OK\r\n"
        try:
            refused = call(port, "PING")
            run.notes.append(f"a new connection to a: {refused.strip().decode()!r}")
            proxy.update()
            until_ended(run, 60)
        finally:
            admin.sendall(resp("CONFIG", "SET", "maxclients", "10000"))
            admin.recv(100)


def disk_full_while_spilling(run: Run) -> None:
    """The new version takes seconds to start (as with a large snapshot); meanwhile a writer
    of 16 KB values fills the backlog, which spills to a file system that fills up."""
    proxy = run.proxy
    run.client(prefix=b"writer", size=16 * 1024, pause=0.0)
    time.sleep(0.2)
    proxy.update()
    until_ended(run, 60)
    tracebacks = proxy.tracebacks()
    run.notes.append(f"{tracebacks} tracebacks in the log")


def rows(short: bool) -> list[Row]:
    mb = 1024 * 1024
    scale = 10 if short else 1
    debug = redis_version("--enable-debug-command", "yes")
    keys = 300_000 if short else 2_000_000
    return [
        Row("slow-readers", "slow readers, SINGLE",
            "the other client is served; memory bounded", False,
            slow_readers(50 // scale, 20, 10 * mb // scale), baseline=True),
        Row("slow-readers-update", "slow readers, update",
            "the other client is served; memory bounded; the update goes on", True,
            slow_readers(50 // scale, 20, 10 * mb // scale), baseline=True),
        Row("big-set", "one 200 MB SET, SINGLE",
            "the other client is served; memory bounded", False, big_sets(1, 200 * mb // scale),
            baseline=True),
        Row("big-sets-update", "five 100 MB SETs, update",
            "the other client is served; memory bounded; the update goes on", True,
            big_sets(5, 100 * mb // scale), baseline=True),
        Row("follower-kill-sync", "follower SIGKILL during sync (loading the snapshot)",
            "rolls back naming the exit; clients unaffected", False, follower_killed_in_sync,
            setup=populate(keys), outcome="rolled-back",
            reason=r"exited with status -9 before it was ready",
            versions={"a": debug}),
        Row("follower-kill-mve", "follower SIGKILL during warm-up",
            "rolls back naming the crash; clients unaffected", True,
            follower_signalled(signal.SIGKILL), outcome="rolled-back",
            reason=r"stopped|closed"),
        Row("follower-stop-mve", "follower SIGSTOP during warm-up",
            "rolls back after follower_timeout; the stopped follower is killed; clients "
            "unaffected", True, follower_signalled(signal.SIGSTOP), outcome="rolled-back",
            reason=r"did not answer within", update_config="follower_timeout = 1.0"
            if short else ""),
        Row("leader-kill-mve", "leader SIGKILL during warm-up",
            "the follower takes over (a cutover naming the leader's failure); clients "
            "unaffected", True, leader_killed, outcome="cutover",
            reason=r"the leader a failed; b took over"),
        Row("serve-sigterm-mve", "SIGTERM to twinproxy serve during warm-up",
            "serve exits 0; clients closed; both servers stopped; nothing left in its "
            "temporary directory", True, serve_terminated),
        Row("new-version-exits", "the new version exits at start (a directive it rejects)",
            "rolls back naming the exit and the server's message; clients unaffected", False,
            update_fails_to_start, outcome="rolled-back",
            reason=r"exited with status 1 before it was ready.*Bad directive",
            versions={"b": redis_version("--no-such-directive", "yes")}),
        Row("leader-refuses", "the leader refuses new connections (at maxclients)",
            "the update fails naming the refusal; clients already connected unaffected", False,
            leader_refuses, outcome="rolled-back", reason=r"max number of clients"),
        Row("disk-full-spill", "disk full while the sync backlog spills (1 MB tmpfs)",
            "rolls back naming the spill failure; no client connection closed; no traceback",
            False, disk_full_while_spilling, outcome="rolled-back",
            reason=r"could not be spilled to disk.*No space left",
            update_config="spill_bytes = 0",
            versions={"b": redis_version(delay=2 if short else 5)}, tmpfs="1m"),
    ]


@contextlib.contextmanager
def temporary_files(row: Row, d: Path) -> Iterator[Path | None]:
    """The directory the proxy's temporary files go to: a tmpfs of the row's size if it asks
    for one (None when it cannot be mounted: not root)."""
    tmp = d / "tmp"
    tmp.mkdir()
    if row.tmpfs is None:
        yield tmp
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={row.tmpfs}", "tmpfs",
                              str(tmp)], capture_output=True).returncode == 0
    try:
        yield tmp if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(tmp)], check=False)


def longest_directly(row: Row) -> float:
    """The checking client's longest request, in ms, under the row's fault with no proxy."""
    with tempfile.TemporaryDirectory() as d, Direct(Path(d)).serving() as direct:
        run = Run(direct, False, [Checker(direct.port)])
        run.clients[0].start()
        time.sleep(0.5)
        row.fault(run)
        time.sleep(1)
        run.clients[0].stop()
        return round(run.clients[0].longest * 1000, 1)


def run_row(row: Row, short: bool) -> dict:
    directly = longest_directly(row) if row.baseline and not short else "n/a"
    with tempfile.TemporaryDirectory() as d, temporary_files(row, Path(d)) as tmp:
        if tmp is None:
            return {"skipped": f"cannot mount a {row.tmpfs} tmpfs (needs root)"}
        proxy = Proxy(Path(d), update=row.update_config, versions=row.versions, tmp=tmp)
        with proxy.serving():
            notes = [row.setup(proxy, short)] if row.setup is not None else []
            if row.update:
                proxy.update()
                proxy.wait(lambda s: s["state"] == "mve")
            resting = proxy.rss_mb()
            run = Run(proxy, short, [Checker(proxy.port)], notes)
            sampler = Sampler(proxy)
            sampler.start()
            run.clients[0].start()
            time.sleep(0.5)
            row.fault(run)
            if run.stopped is None:
                time.sleep(0.5 if short else 1)
            for checker in run.clients:
                checker.stop()
            if run.stopped is None:
                time.sleep(1 if short else 2)
            after = proxy.rss_mb() if proxy.running else None
            sampler.done.set()
            if run.stopped is None:
                st = proxy.status()
                lost: int | str = sum(checker.lost() for checker in run.clients)
                servers = len(proxy.servers())
                state = st["state"] + (f" ({st['last_update']['outcome']}: "
                                       f"{st['last_update']['reason']})"
                                       if st["state"] == "single" and st["last_update"] else "")
            else:  # the proxy and its servers are gone, and their data with them
                st, lost, servers, state = None, run.lost, None, run.stopped
            ended_mb: float | str = "n/a"
            if st is not None and st["state"] == "mve":
                # Memory once the update is over (rolled back), for the rows it goes on in.
                proxy.control("POST", "/rollback")
                if proxy.wait(lambda s: s["state"] == "single", 60)["state"] == "single":
                    # What is still in transit (replies the leader was sending to clients
                    # that closed) goes within seconds: the size it settles at, in 10 s at most.
                    deadline = time.monotonic() + 10
                    while True:
                        time.sleep(0.5)
                        ended_mb = round(proxy.rss_mb(), 1)
                        if ended_mb <= resting * 1.1 or time.monotonic() > deadline:
                            break
            tracebacks = proxy.tracebacks()
            checker = run.clients[0]
            errors = [e for c in run.clients for e in c.errors]
            result = {
                "client errors": len(errors), "samples": errors[:3],
                "longest request ms": round(checker.longest * 1000, 1),
                "longest directly ms": directly,
                "checked operations": sum(c.ops for c in run.clients),
                "acknowledged writes lost": lost,
                "resting MB": round(resting, 1), "peak MB": round(sampler.peak, 1),
                "after MB": round(after, 1) if after is not None else "n/a",
                "after the update MB": ended_mb,
                "state": state, "tracebacks": tracebacks, "notes": run.notes,
            }
            failures = [*run.failures, *broken_promises(row, st, result, servers)]
            result["failures"] = failures
            result["observed"] = "; ".join(
                [f"NOT AS EXPECTED: {'; '.join(failures)}" if failures else "as expected",
                 *run.notes])
            return result


def broken_promises(row: Row, st: dict | None, result: dict, servers: int | None) -> list[str]:
    """What the row promised and did not hold, besides what its fault checked itself."""
    out = []
    if result["client errors"]:
        out.append(f"{result['client errors']} client errors: {result['samples']}")
    if result["acknowledged writes lost"] != 0:
        out.append(f"{result['acknowledged writes lost']} acknowledged writes lost")
    if result["tracebacks"]:
        out.append(f"{result['tracebacks']} tracebacks in the proxy's log")
    if st is None:
        return out
    last = st["last_update"] or {}
    if row.outcome is None:
        want = "mve" if row.update else "single"
        if st["state"] != want or (not row.update and last):
            out.append(f"the state is {result['state']}, not {want}")
    elif not ended(st) or last["outcome"] != row.outcome \
            or not re.search(row.reason, last["reason"] or "", re.S):
        out.append(f"the update ended {last.get('outcome')} ({last.get('reason')}), not "
                   f"{row.outcome} ({row.reason})")
    ended_mb = result["after the update MB"]
    if ended_mb != "n/a" and ended_mb > result["resting MB"] * 1.1:
        out.append(f"{ended_mb} MB once the update was rolled back, more than 10% over the "
                   f"{result['resting MB']} MB before the fault")
    want_servers = 2 if st["state"] == "mve" else 1
    if servers != want_servers:
        out.append(f"{servers} servers running, not {want_servers}")
    return out


COLUMNS = ["fault", "expected", "observed", "update state", "client errors",
           "longest request ms", "longest directly ms", "writes lost", "resting MB", "peak MB",
           "after MB", "after the update MB"]


def cell(text: str, limit: int = 240) -> str:
    """Text for a table cell: on one line, and a long one (a server's output in a reason)
    shortened in the middle."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else f"{text[:limit - 80]} … {text[-70:]}"


def table_row(row: Row, r: dict) -> list[str]:
    if "skipped" in r:
        return [row.title, row.expected, f"skipped: {r['skipped']}", *[""] * (len(COLUMNS) - 3)]
    return [row.title, row.expected, cell(r["observed"]), cell(r["state"]),
            str(r["client errors"]),
            str(r["longest request ms"]), str(r["longest directly ms"]),
            str(r["acknowledged writes lost"]),
            str(r["resting MB"]), str(r["peak MB"]), str(r["after MB"]),
            str(r["after the update MB"])]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


PREAMBLE = (f"python loadtests/faults.py, each row one run of its own ({machine()}); "
            "Redis 7.0 behind twinproxy, default bounds. \"observed\" says whether the row's "
            "promise held (see the module's docstring); memory is the proxy's resident size.")


def merge_report(path: Path, ran: dict[str, list[str]], order: list[str]) -> str:
    """The report's table with the rows just run (by fault) put in, the others kept: in the
    order of :func:`rows`, rows it does not know at the end. Columns are matched by name; the
    text before and after the table is kept (a new file gets :data:`PREAMBLE`)."""
    kept: dict[str, list[str]] = {}
    preamble, notes = [PREAMBLE, ""], []
    if path.exists():
        text = path.read_text().splitlines()
        lines = [x for x in text if x.startswith("|")]
        if lines:
            preamble = text[:text.index(lines[0])]
            notes = text[text.index(lines[-1]) + 1:]
            header = cells(lines[0])
            for line in lines[2:]:
                named = dict(zip(header, cells(line), strict=False))
                named.setdefault("update state", named.get("observed state", ""))  # before
                kept[named.get("fault", "")] = [named.get(c, "") for c in COLUMNS]
    kept.update(ran)
    titles = [t for t in order if t in kept] + [t for t in kept if t not in order]
    lines = [*preamble, "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(kept[t]) + " |" for t in titles]
    return "\n".join([*lines, *notes]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated row names (default: all)")
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--report", help="put the rows run in this file's table")
    args = parser.parse_args()
    every = rows(args.short)
    chosen = every
    if args.rows:
        wanted = set(args.rows.split(","))
        unknown = wanted - {r.name for r in every}
        if unknown:
            parser.error(f"no rows {sorted(unknown)}; rows: {[r.name for r in every]}")
        chosen = [r for r in every if r.name in wanted]
    ran = {}
    for row in chosen:
        r = run_row(row, args.short)
        print(row.name, json.dumps(r), flush=True)
        ran[row.title] = table_row(row, r)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    print("\n".join(lines + ["| " + " | ".join(values) + " |" for values in ran.values()]))
    if args.report:
        path = Path(args.report)
        path.write_text(merge_report(path, ran, [r.title for r in every]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
