"""What the fault matrix (``faults.py``) runs its rows with: ``twinproxy serve`` as a process in
front of managed Redis 7.0 or memcached versions, a checking client, a memory sampler, and what
a row is made of.

The checking client speaks the proxy's protocol through a :class:`Protocol` (how to SET and GET
one key and what the replies must be), so that one client, one proxy runner and one row runner
serve every protocol the matrix covers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))

from common import free_port, stop, wait_port  # noqa: E402

REDIS_ARGV = ["/usr/bin/redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--dir", "{dir}"]
# As configs/memcached.toml starts it: -u nobody (memcached refuses to run as root without it).
MEMCACHED_ARGV = ["/usr/bin/memcached", "-p", "{port}", "-l", "127.0.0.1", "-U", "0",
                  "-m", "64", "-c", "1024", "-u", "nobody"]


def redis_version(*args: str, delay: float = 0.0) -> str:
    """A managed Redis 7.0 version's TOML body: ``args`` added to its command; ``delay``: it
    starts that many seconds late (as one loading a large snapshot would be)."""
    argv = [*REDIS_ARGV, *args]
    if delay:
        argv = ["/bin/sh", "-c", f"sleep {delay:g} && exec {shlex.join(argv)}"]
    return f"command = {json.dumps(argv)}\nready_timeout = 60"


REDIS7 = redis_version()
MEMCACHED = f"command = {json.dumps(MEMCACHED_ARGV)}\nready_timeout = 10"


def resp(*words: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        w = w.encode() if isinstance(w, str) else w
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


def call(port: int, *words: bytes | str) -> bytes:
    """One Redis request on a connection of its own; the first bytes of the reply."""
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(resp(*words))
        return s.recv(65536)


# ---- the protocols ------------------------------------------------------------------------------


class Protocol:
    """What the matrix needs of one protocol: the managed version it runs, the server's binary
    (to find its processes), the update settings, and the checking client's requests."""

    name: str
    version: str  # a [versions.X] TOML body
    binary: str
    update: dict[str, str] = {}  # [update] settings, TOML values

    def set(self, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        """A request storing ``value`` at ``key``, and the reply that acknowledges it."""
        raise NotImplementedError

    def get(self, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        """A request reading ``key``, and the reply when it holds ``value``."""
        raise NotImplementedError

    def read(self, sock: socket.socket, reader: BinaryIO, key: bytes) -> bytes | None:
        """The value ``key`` holds now (None: none)."""
        raise NotImplementedError


class Redis(Protocol):
    name, version, binary = "redis", REDIS7, REDIS_ARGV[0]

    def set(self, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        return resp(b"SET", key, value), b"+OK\r\n"

    def get(self, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        return resp(b"GET", key), b"$%d\r\n%s\r\n" % (len(value), value)

    def read(self, sock: socket.socket, reader: BinaryIO, key: bytes) -> bytes | None:
        sock.sendall(resp(b"GET", key))
        head = reader.readline()
        if head[:1] != b"$" or head[1:2] == b"-":
            return None
        return reader.read(int(head[1:]) + 2)[:-2]


class Memcache(Protocol):
    name, version, binary = "memcache", MEMCACHED, MEMCACHED_ARGV[0]
    update = {"sync": '"memcache-copy"'}  # as configs/memcached.toml

    def set(self, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value), b"STORED\r\n"

    def get(self, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        return b"get %s\r\n" % key, b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(value), value)

    def read(self, sock: socket.socket, reader: BinaryIO, key: bytes) -> bytes | None:
        sock.sendall(b"get %s\r\n" % key)
        head = reader.readline()
        if not head.startswith(b"VALUE "):
            return None
        value = reader.read(int(head.split()[3]) + 2)[:-2]
        reader.readline()  # END
        return value


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (Redis(), Memcache())}


# ---- processes and sockets, seen from outside -----------------------------------------------


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


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def close_wait(pid: int) -> int:
    """How many of process ``pid``'s TCP sockets are in CLOSE-WAIT (their peer closed, the
    process did not): its socket inodes matched against /proc/net/tcp and tcp6."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                count += fields[3] == "08" and fields[9] in inodes
    return count


def poll(measure: Callable[[], float], ok: Callable[[float], bool], timeout: float
         ) -> tuple[float, float]:
    """``measure()`` until ``ok`` holds of it or ``timeout`` seconds pass: the last figure, and
    the seconds it took."""
    started = time.monotonic()
    while True:
        value = measure()
        took = time.monotonic() - started
        if ok(value) or took > timeout:
            return value, took
        time.sleep(0.05)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking, as a plain client's: it waits while the listener's backlog is full (with
        # a timeout the socket is non-blocking, and the connect fails at once with EAGAIN).
        self.sock.connect(self.path)
        self.sock.settimeout(self.timeout)


# ---- the proxy, and the server alone --------------------------------------------------------


UPDATE_DEFAULTS = {"warmup_seconds": "100000", "warmup_requests": "0", "on_divergence": '"log"'}


def settings(*tables: dict[str, str] | str) -> str:
    """TOML ``key = value`` lines from ``tables`` (dicts, or text of such lines), a later one's
    key replacing an earlier one's (TOML refuses a key given twice)."""
    merged: dict[str, str] = {}
    for t in tables:
        if isinstance(t, str):
            t = dict(line.split("=", 1) for line in t.splitlines() if "=" in line)
        merged.update({k.strip(): v.strip() for k, v in t.items()})
    return "\n".join(f"{k} = {v}" for k, v in merged.items())


class Proxy:
    """``twinproxy serve`` with two managed versions of the protocol's server (``a`` serving,
    ``b`` to update to), and its control commands. ``wrapper``: a command ``serve`` runs under
    (``prlimit --nofile=256:256 --``)."""

    def __init__(self, d: Path, extra: str = "", update: str = "",
                 versions: dict[str, str] | None = None, tmp: Path | None = None,
                 protocol: str = "redis", wrapper: list[str] | None = None):
        self.dir = d
        self.port = free_port()
        self.cfg = d / "faults.toml"
        self.tmp = tmp or d
        self.protocol = PROTOCOLS[protocol]
        self.wrapper = wrapper or []
        self.bodies = {"a": self.protocol.version, "b": self.protocol.version,
                       **(versions or {})}
        self.extra, self.update_settings = extra, update
        self.write_config()
        self.proc: subprocess.Popen | None = None
        self.log = d / "serve.log"

    def write_config(self) -> None:
        bodies = self.bodies
        self.cfg.write_text(f"""[proxy]
listen = "127.0.0.1:{self.port}"
protocol = "{self.protocol.name}"
control = "{self.dir}/control.sock"
start = "a"
{self.extra}
[versions.a]
{bodies["a"]}
[versions.b]
{bodies["b"]}
[update]
{settings(UPDATE_DEFAULTS, self.protocol.update, self.update_settings)}
""")

    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC),
                                                            os.environ.get("PYTHONPATH")]))}

    @contextlib.contextmanager
    def serving(self) -> Iterator[Proxy]:
        for attempt in range(3):
            log = open(self.log, "w")  # noqa: SIM115 (closed in the finally below)
            self.proc = subprocess.Popen([*self.wrapper, sys.executable, "-m", "twinproxy.cli",
                                          "serve", str(self.cfg)], stdout=subprocess.DEVNULL,
                                         stderr=log, env=self.env())
            try:
                deadline = time.monotonic() + 60
                while "serving" not in self.log.read_text():
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(self.log.read_text())
                    time.sleep(0.05)
            except RuntimeError:
                stop(self.proc)
                log.close()
                if attempt < 2 and "Address already in use" in self.log.read_text():
                    # Another process took the free port picked meanwhile: another one.
                    self.port = free_port()
                    self.write_config()
                    continue
                raise
            break
        try:
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

    def cli(self, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        """A ``twinproxy`` command, as the operator runs it, for this proxy: the seconds it took
        (its own start-up included, about a second here) and how it ended."""
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "twinproxy.cli", *args, "-c", str(self.cfg)],
                              capture_output=True, text=True, timeout=120, env=self.env())
        return time.monotonic() - started, done

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
        """The server processes (redis-server, memcached) running below ``serve``."""
        found = []
        binary = os.path.realpath(self.protocol.binary)  # Debian's redis-server is a link
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

    protocol = PROTOCOLS["redis"]

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


# ---- the checking client ----------------------------------------------------------------------


class Checker(threading.Thread):
    """One client doing SET then GET of its own keys, every reply checked and timed.

    ``prefix`` names its keys (100 of them, rewritten in turn); ``size`` pads its values to that
    many bytes; ``pause`` is its wait between the two; ``protocol`` is how it speaks."""

    def __init__(self, port: int, prefix: bytes = b"check", size: int = 0, pause: float = 0.001,
                 protocol: Protocol = PROTOCOLS["redis"]):
        super().__init__(daemon=True)
        self.port = port
        self.prefix = prefix
        self.size = size
        self.pause = pause
        self.protocol = protocol
        self.errors: list[str] = []
        self.longest = 0.0
        self.ops = 0
        self.acked: dict[bytes, bytes] = {}
        self.done = threading.Event()

    def _call(self, sock: socket.socket, request: bytes, want: bytes) -> None:
        start = time.perf_counter()
        try:
            sock.sendall(request)
            got = b""
            while len(got) < len(want) and want.startswith(got):  # a wrong reply: at once
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                got += chunk
        finally:  # a request that timed out took as long as it waited
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
                self._call(sock, *self.protocol.set(key, value))
                self.acked[key] = value
                self._call(sock, *self.protocol.get(key, value))
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
        lost = sum(self.protocol.read(sock, reader, key) != value
                   for key, value in self.acked.items())
        sock.close()
        return lost


# ---- a row ------------------------------------------------------------------------------------


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
        checker = Checker(self.proxy.port, protocol=self.proxy.protocol, **kw)
        checker.start()
        self.clients.append(checker)
        return checker

    def check(self, ok: bool, failure: str) -> None:
        if not ok:
            self.failures.append(failure)

    def stop_clients(self) -> None:
        """Stop the checking clients and count what they wrote that is not there (before a
        fault stops the proxy, and its servers' data with it)."""
        for checker in self.clients:
            checker.stop()
        self.lost = sum(checker.lost() for checker in self.clients)


def until_ended(run: Run, timeout: float = 60) -> dict:
    st = run.proxy.wait(ended, timeout)
    run.check(ended(st), f"the update had not ended {timeout:g}s after the fault")
    return st


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
    protocol: str = "redis"
    wrapper: list[str] = field(default_factory=list)  # serve runs under this command
    stops: str | None = None  # the fault stops the proxy: how the update state starts then
