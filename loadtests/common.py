"""What the benchmarks share: servers started for one run, redis-benchmark, twinproxy, HAProxy.

Every process started here is stopped when its context ends, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REDIS7 = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0, probe: bytes = b"PING\r\n",
              ok: bytes = b"+PONG") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(probe)
            if s.recv(100).startswith(ok):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM (after SIGCONT, for a process a fault stopped), then SIGKILL after ``grace``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def process(argv: list[str], port: int, probe: bytes = b"PING\r\n", ok: bytes = b"+PONG",
            **kw) -> Iterator[subprocess.Popen]:
    stderr = kw.pop("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, **kw)
    try:
        wait_port(port, proc, probe=probe, ok=ok)
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def redis(binary: str = REDIS7, extra: tuple[str, ...] = ()) -> Iterator[int]:
    with redis_process(binary, extra) as (port, _):
        yield port


@contextlib.contextmanager
def redis_process(binary: str = REDIS7, extra: tuple[str, ...] = ()
                  ) -> Iterator[tuple[int, subprocess.Popen]]:
    """A Redis on a port picked for it, with ``extra`` options: (its port, its process, whose
    CPU time a benchmark counts as the server's share of a request)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d, process(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", d, *extra], port) as proc:
        yield port, proc


@contextlib.contextmanager
def memcached() -> Iterator[int]:
    """A memcached on a port picked for it (TCP only), taking 4,096 connections: a load of
    1,000 clients opens its next 1,000 while memcached still counts the last ones, and past
    its default of 1,024 it closes new ones (twinproxy's managed versions in bench_matrix.py
    are given the same)."""
    port = free_port()
    argv = ["memcached", "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-m", "256",
            "-c", "4096"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    with process(argv, port, probe=MEMCACHED_PROBE, ok=b"VERSION"):
        yield port


MEMCACHED_PROBE = b"version\r\n"


HAPROXY_CFG = """\
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
listen redis
    bind 127.0.0.1:{port}
    server s1 127.0.0.1:{upstream}
"""


@contextlib.contextmanager
def haproxy(upstream: int) -> Iterator[int]:
    with haproxy_process(upstream) as (port, _):
        yield port


@contextlib.contextmanager
def haproxy_process(upstream: int, protocol: str = "redis"
                    ) -> Iterator[tuple[int, subprocess.Popen]]:
    """HAProxy in TCP mode in front of ``upstream`` (in the foreground: ``-db``, one process),
    a Redis or a memcached (``protocol``: how to see it answer)."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
        f.write(HAPROXY_CFG.format(port=port, upstream=upstream))
        f.flush()
        with process([binary, "-f", f.name, "-db"], port, **PROBES[protocol]) as proc:
            yield port, proc


PROBES = {"redis": {"probe": b"PING\r\n", "ok": b"+PONG"},
          "memcache": {"probe": MEMCACHED_PROBE, "ok": b"VERSION"}}

TWEMPROXY_CFG = """\
bench:
  listen: 127.0.0.1:{port}
  redis: {redis}
  servers:
    - 127.0.0.1:{upstream}:1
"""


@contextlib.contextmanager
def twemproxy(upstream: int, protocol: str = "redis") -> Iterator[tuple[int, subprocess.Popen]]:
    """twemproxy (Debian's ``nutcracker``) in front of a Redis or a memcached at ``upstream``;
    its stats port is one picked like the others (the default, 22222, is fixed)."""
    binary = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "bench.yml"
        cfg.write_text(TWEMPROXY_CFG.format(port=port, upstream=upstream,
                                            redis=str(protocol == "redis").lower()))
        # (twemproxy reads no inline command: the probe is a multibulk PING)
        probe = PROBES[protocol] if protocol != "redis" else {"probe": b"*1\r\n$4\r\nPING\r\n"}
        with process([binary, "-c", str(cfg), "-s", str(free_port()), "-o", f"{d}/log"],
                     port, **probe) as proc:
            yield port, proc


TWINPROXY_CFG = """\
[proxy]
listen = "127.0.0.1:{port}"
protocol = "{protocol}"
control = "{control}"
start = "bench"
max_connections = 20000
{extra_proxy}
[versions.bench]
address = "127.0.0.1:{upstream}"
{extra}
"""


def code_env(src: str | None) -> dict[str, str] | None:
    """The environment that runs twinproxy from the source tree ``src`` (another checkout's
    ``src`` directory: a baseline to compare with in the same run); None: the installed one."""
    if src is None:
        return None
    return {**os.environ, "PYTHONPATH": str(Path(src).resolve())}


@contextlib.contextmanager
def twinproxy(upstream: int, extra: str = "", extra_proxy: str = "",
              prefix: list[str] | None = None, src: str | None = None, protocol: str = "redis"
              ) -> Iterator[tuple[int, subprocess.Popen]]:
    """``twinproxy serve`` in front of an external Redis (or ``protocol``'s server) at
    ``upstream`` (from ``src``: see :func:`code_env`)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "bench.toml"
        cfg.write_text(TWINPROXY_CFG.format(port=port, upstream=upstream, extra=extra,
                                            extra_proxy=extra_proxy, control=f"{d}/control.sock",
                                            protocol=protocol))
        argv = [*(prefix or []), sys.executable, "-m", "twinproxy.cli", "serve", str(cfg)]
        with open(Path(d) / "log", "w") as log, \
                process(argv, port, stderr=log, env=code_env(src), **PROBES[protocol]) as proc:
            yield port, proc


def redis_benchmark(port: int, pipeline: int, *, clients: int = 50, requests: int = 200_000,
                    tests: str = "set,get", command: list[str] | None = None,
                    size: int = 3, prefix: list[str] | None = None, reconnect: bool = False,
                    resp3: bool = False, password: str | None = None,
                    db: int = 0) -> dict[str, dict[str, float]]:
    """redis-benchmark's CSV figures: {test: {"rps": ..., "p99_latency_ms": ...}}; with
    ``command``, that one command instead of ``tests``; ``size``: SET's value (``-d``);
    ``prefix``: a command to run it under (``perf stat ... --``); ``reconnect``: a new
    connection for each request (``-k 0``); ``resp3``: each connection starts with ``HELLO 3``
    (``-3``), as redis-py 8's do; ``password``: each logs in with it first (``-a``); ``db``:
    each SELECTs that database first (``--dbnum``)."""
    out = subprocess.run(
        [*(prefix or []), "redis-benchmark", "-p", str(port), "-c", str(clients),
         "-n", str(requests), "-P", str(pipeline), "-d", str(size), "-q", "--csv",
         *(["-k", "0"] if reconnect else []), *(["-3"] if resp3 else []),
         *(["-a", password] if password is not None else []),
         *(["--dbnum", str(db)] if db else []), *(command or ["-t", tests])],
        capture_output=True, text=True, timeout=600, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return {row["test"]: {k: float(v) for k, v in row.items() if k != "test"} for row in rows}


def rps(result: dict[str, dict[str, float]]) -> float:
    """Requests/s over the tests run (each test runs the same number of requests)."""
    return len(result) / sum(1 / r["rps"] for r in result.values())


def p99(result: dict[str, dict[str, float]]) -> float:
    return max(r["p99_latency_ms"] for r in result.values())


def p50(result: dict[str, dict[str, float]]) -> float:
    return max(r["p50_latency_ms"] for r in result.values())


def user_system(pid: int) -> tuple[float, float]:
    """A process's user and system CPU time so far, in seconds, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user and system), from /proc."""
    return sum(user_system(pid))


def children(pid: int) -> list[int]:
    """A process's descendants, from /proc: ``twinproxy serve``'s managed versions (each under
    its keeper process, which sleeps)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    found += [int(child), *children(int(child))]
    return found


def servers_cpu(pids: list[int]) -> float:
    """The CPU time so far of the servers ``pids`` (ended ones count nothing)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def load() -> float:
    """The machine's load average over the last minute: on 2 shared cores, how much of a
    throughput figure is other processes' doing."""
    return os.getloadavg()[0]


def median(values: list[float]) -> float:
    return statistics.median(values)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's memory from /proc (``VmRSS`` resident now, ``VmHWM`` its peak), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def publish(text: str, report: str | None) -> None:
    """Print a benchmark's tables, and write them to ``report`` too when asked."""
    print(text)
    if report:
        with open(report, "w") as f:
            f.write(text + "\n")


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"


class Probe(threading.Thread):
    """One more client, timing one request at a time, one a millisecond (``interval``): the
    latency a client sees beside a load, where the load's own tool reports none (memcslap), or
    around a moment (an update's pauses). Each request as (start, seconds) on the monotonic
    clock (the one loadtests/trace_update.py's trace is on); :meth:`window` the longest since
    the last window."""

    def __init__(self, port: int, request: bytes = b"PING\r\n", reply: bytes = b"+PONG\r\n",
                 interval: float = 0.001):
        super().__init__(daemon=True)
        # (a timeout: a target that stops answering must not hang the run in stop())
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request, self.reply, self.interval = request, reply, interval
        self.pings: list[tuple[float, float]] = []
        self.done = False
        self._seen = 0

    def run(self) -> None:
        while not self.done:
            start = time.monotonic()
            self.sock.sendall(self.request)
            got = self.sock.recv(100)
            assert got == self.reply, got
            self.pings.append((start, time.monotonic() - start))
            time.sleep(self.interval)

    def stop(self) -> None:
        self.done = True
        self.join()
        self.sock.close()

    def window(self) -> float:
        pings, self._seen = self.pings[self._seen:], len(self.pings)
        return max((took for _, took in pings), default=0.0)

    def around(self, start: float, end: float) -> float:
        """The longest request that was under way at some moment from ``start`` to ``end``."""
        return max((took for at, took in self.pings if at <= end and at + took >= start),
                   default=0.0)

    def percentiles(self) -> tuple[float, float]:
        """p50 and p99 of every request so far, ms."""
        took = sorted(t for _, t in self.pings)
        if not took:
            return 0.0, 0.0
        return (took[len(took) // 2] * 1000, took[min(len(took) - 1, len(took) * 99 // 100)]
                * 1000)
