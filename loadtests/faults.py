"""The fault matrix: hostile and careless clients, and faults of the servers and the proxy, each
under a checking load, with what clients saw and what the proxy's memory did.

    python loadtests/faults.py [--rows NAME,...] [--short] [--report FILE]

Each row starts ``twinproxy serve`` in front of Redis 7.0 (two managed versions, ``a`` serving
and ``b`` to update to), loads a value set, starts a *checking client* (a thread doing SET then
GET of its own keys in a loop, every reply checked, each request timed), optionally starts an
update and waits for MVE, then applies the row's fault and lets it run. Reported per row: the
checking client's errors and longest request, acknowledged writes lost (every SET acknowledged
is read back at the end), the proxy's peak resident memory and its memory once the fault is
over, and where the update ended up.

``--short`` shrinks every row (fewer connections, smaller values, shorter waits) for CI, where
``tests/test_faults.py`` runs it and checks the same things.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
sys.path.insert(0, str(HERE))

from common import free_port, stop  # noqa: E402

REDIS7 = ('command = ["/usr/bin/redis-server", "--port", "{port}", "--bind", "127.0.0.1", '
          '"--save", "", "--appendonly", "no", "--dir", "{dir}"]\nready_timeout = 60')


def resp(*words: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        w = w.encode() if isinstance(w, str) else w
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


class Proxy:
    """``twinproxy serve`` with two managed Redis 7.0 versions, and its control commands."""

    def __init__(self, d: Path, extra: str = ""):
        self.dir = d
        self.port = free_port()
        self.cfg = d / "faults.toml"
        self.cfg.write_text(f"""[proxy]
listen = "127.0.0.1:{self.port}"
protocol = "redis"
control = "{d}/control.sock"
start = "a"
{extra}
[versions.a]
{REDIS7}
[versions.b]
{REDIS7}
[update]
warmup_seconds = 100000
warmup_requests = 0
on_divergence = "log"
""")
        self.proc: subprocess.Popen | None = None

    @contextlib.contextmanager
    def serving(self) -> Iterator[Proxy]:
        log = open(self.dir / "serve.log", "w")  # noqa: SIM115 (closed in the finally below)
        self.proc = subprocess.Popen([sys.executable, "-m", "twinproxy.cli", "serve",
                                      str(self.cfg)], stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while "serving" not in (self.dir / "serve.log").read_text():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.dir / "serve.log").read_text())
                time.sleep(0.05)
            yield self
        finally:
            stop(self.proc)
            log.close()

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "twinproxy.cli", *args, "-c", str(self.cfg)],
                             capture_output=True, text=True, timeout=120)
        return out.stdout

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json"))

    def wait(self, predicate: Callable[[dict], bool], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if predicate(st) or time.monotonic() > deadline:
                return st
            time.sleep(0.1)

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0


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
    """One client doing SET then GET of its own keys, every reply checked and timed."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
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
            key, value = b"check:%d" % (n % 100), b"v%d" % n
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
            time.sleep(0.001)
        sock.close()

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
class Row:
    name: str  # what --rows names it by
    title: str
    expected: str
    update: bool  # the fault comes during an update (MVE), not in SINGLE mode
    fault: Callable[[Proxy, bool], None]  # (proxy, short)
    seconds: float = 10.0
    result: dict = field(default_factory=dict)


# ---- the faults ---------------------------------------------------------------------------------


def big_value(proxy: Proxy, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(resp(b"SET", b"big", b"x" * size))
    assert sock.recv(100) == b"+OK\r\n"
    sock.close()


def slow_readers(count: int, gets: int, size: int) -> Callable[[Proxy, bool], None]:
    """``count`` connections with a small receive buffer send ``gets`` pipelined GETs of a
    ``size``-byte value and never read."""
    def fault(proxy: Proxy, short: bool) -> None:
        big_value(proxy, size)
        socks = []
        for _ in range(count):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", proxy.port))
            s.sendall(resp(b"GET", b"big") * gets)
            socks.append(s)
        time.sleep(3 if short else 10)
        for s in socks:
            s.close()
    return fault


def big_sets(count: int, size: int) -> Callable[[Proxy, bool], None]:
    """``count`` clients each SET a ``size``-byte value at once."""
    def fault(proxy: Proxy, short: bool) -> None:
        def one(i: int) -> None:
            s = socket.create_connection(("127.0.0.1", proxy.port))
            s.sendall(resp(b"SET", b"huge:%d" % i, b"y" * size))
            s.settimeout(120)
            assert s.recv(100) == b"+OK\r\n"
            s.close()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return fault


def rows(short: bool) -> list[Row]:
    mb = 1024 * 1024
    scale = 10 if short else 1
    return [
        Row("slow-readers", "slow readers, SINGLE",
            "the other client is served; memory bounded", False,
            slow_readers(50 // scale, 20, 10 * mb // scale)),
        Row("slow-readers-update", "slow readers, update",
            "the other client is served; memory bounded; the update goes on", True,
            slow_readers(50 // scale, 20, 10 * mb // scale)),
        Row("big-set", "one 200 MB SET, SINGLE",
            "the other client is served; memory bounded", False, big_sets(1, 200 * mb // scale)),
        Row("big-sets-update", "five 100 MB SETs, update",
            "the other client is served; memory bounded; the update goes on", True,
            big_sets(5, 100 * mb // scale)),
    ]


def run_row(row: Row, short: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        proxy = Proxy(Path(d))
        with proxy.serving():
            if row.update:
                proxy.cli("update", "--to", "b")
                proxy.wait(lambda s: s["state"] == "mve")
            resting = proxy.rss_mb()
            checker = Checker(proxy.port)
            sampler = Sampler(proxy)
            sampler.start()
            checker.start()
            time.sleep(0.5)
            row.fault(proxy, short)
            time.sleep(1)
            checker.done.set()
            checker.join(60)
            time.sleep(2)
            after = proxy.rss_mb()
            sampler.done.set()
            st = proxy.status()
            lost = checker.lost()
            return {
                "client errors": len(checker.errors), "samples": checker.errors[:3],
                "longest request ms": round(checker.longest * 1000, 1),
                "checked operations": checker.ops, "acknowledged writes lost": lost,
                "resting MB": round(resting, 1), "peak MB": round(sampler.peak, 1),
                "after MB": round(after, 1),
                "state": st["state"] + (f" ({st['last_update']['outcome']}: "
                                        f"{st['last_update']['reason']})"
                                        if st["state"] == "single" and st["last_update"] else ""),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated row names (default: all)")
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--report")
    args = parser.parse_args()
    chosen = rows(args.short)
    if args.rows:
        wanted = set(args.rows.split(","))
        chosen = [r for r in chosen if r.name in wanted]
    lines = ["| fault | expected | observed state | client errors | longest request ms "
             "| writes lost | resting MB | peak MB | after MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in chosen:
        r = run_row(row, args.short)
        print(row.name, json.dumps(r), flush=True)
        lines.append(f"| {row.title} | {row.expected} | {r['state']} | {r['client errors']} "
                     f"| {r['longest request ms']} | {r['acknowledged writes lost']} "
                     f"| {r['resting MB']} | {r['peak MB']} | {r['after MB']} |")
    text = "\n".join(lines)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
