"""The soak: update cycles, one after another, under a continuous checking load, and whether
the proxy's memory and file descriptors come back after each.

    python loadtests/soak.py [--cycles N] [--short] [--report FILE]

It starts ``twinproxy serve`` with two managed Redis 7.0 versions (``a`` and ``b``, as
``loadtests/faults.py`` does), starts the load, then runs ``--cycles`` cycles (default 20):
an update to the version not serving, MVE for ``--mve-seconds``, then a rollback (odd cycles)
or a promote, that is a cutover (even cycles). After a cutover the other version serves, so the
next update goes back the other way and both versions keep being used, as leader and as
follower. After each cycle, once the update has ended and the proxy has settled for a second,
it records the proxy's resident memory (RSS), its open file descriptors (``/proc/PID/fd``), the
redis-server processes alive below it, how the update ended, what MVE compared, and the load's
operations and errors since the cycle before.

The load, all the time: ``--clients`` clients that send one request at a time and
``--pipelined`` clients that send ``--depth`` requests in one write, each on its own keys, doing
SET, GET, INCR and LPUSH (and DEL of its list every 50 elements) in turn. Every reply is checked
against what the client knows it wrote: the GET gives back the SET's value, INCR counts up one
by one, LPUSH gives the list's new length. At the end every client reads its counter, its list's
length and its strings back (``lost``: acknowledged writes not there).

It fails (exit status 1) when:

- a client saw an error (a wrong reply, a closed connection, a request unanswered for 30 s), or
  an acknowledged write is lost;
- an update did not end as asked (rolled back when promoted, cut over when rolled back, some
  other version serving than the one expected) or MVE found an unexpected divergence (both
  versions are the same Redis: none is expected);
- a server process is left over (one should run between updates);
- file descriptors grew: after every cycle the count must equal the first cycle's exactly.
  Descriptors do not drift by noise: the load's connections are the same ones all the time, and
  the control socket's connection (to ask for the status) is closed before counting; the count
  is the lowest of a few readings a tenth of a second apart, so that one closing as it is read
  is not counted. Any difference is something kept open;
- memory grew: the least-squares line through the RSS after each of the last 10 cycles (or all
  of them, when fewer) rises by more than ``--rss-limit`` MB over those cycles: 1.5 MB by
  default, 4 MB with ``--short``. The first cycles are left out of a full run because the
  allocator's heap grows to its working size there (the first MVE's buffers, the connections
  to the new version) and is reused after; a fit rather than last-minus-first because one
  reading can catch a moment of the load's buffers, and because what matters is the trend.
  The limit comes from measurements with this load (RSS is read to 0.1 MB): with nothing
  leaking, the line rose 0.0 MB over the last 10 of 20 cycles, and 0.4 MB while ended updates
  were still left to Python's cyclic collector (freed, but late); with every ended update's
  engine and driver kept on purpose (appended to a list), it rose 2.8 MB over 10 cycles (0.3 MB
  a cycle, mostly the leader's command table and the clients' records). 1.5 MB is between
  them: such a leak fails the check, noise does not. Three readings (``--short``)
  include the warm-up and fit noise more steeply (0.7 to 0.9 MB seen with no leak), so CI only
  catches a gross leak there (over 2 MB a cycle).

``--report`` writes the table (markdown) with the command line, the machine and the verdict.
``tests/test_soak.py`` runs ``--short`` in CI and checks the same things.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402
from faults import Proxy, ended, resp  # noqa: E402

LIST_MAX = 50  # a client's list is deleted when it reaches this length
STRINGS = 50  # string keys per client, written in turn


class ReplyError(Exception):
    """A reply that was not the one expected."""


def read_reply(f) -> bytes:
    """One RESP reply's bytes, whole, from the buffered socket file ``f``."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("closed by the proxy" if not line else f"cut reply {line!r}")
    kind = line[:1]
    if kind in (b"+", b"-", b":"):
        return line
    if kind == b"$":
        size = int(line[1:-2])
        if size < 0:
            return line
        data = f.read(size + 2)
        if len(data) < size + 2:
            raise ConnectionError("closed within a reply")
        return line + data
    if kind == b"*":
        return line + b"".join(read_reply(f) for _ in range(max(int(line[1:-2]), 0)))
    raise ReplyError(f"not a RESP reply: {line[:80]!r}")


def bulk(value: bytes | None) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


class Client(threading.Thread):
    """A checking client on keys of its own: ``depth`` requests per write (1: one at a time).

    It knows what it wrote, so it knows every reply: its model is updated as requests are
    made, in the order the connection sends them. After an error the connection is opened
    again and the model read back from the server (an unanswered INCR may or may not have run).
    """

    def __init__(self, port: int, name: str, depth: int = 1, pause: float = 0.002):
        super().__init__(daemon=True, name=name)
        self.port = port
        self.key = name.encode()
        self.depth = depth
        self.pause = pause
        self.counter = 0
        self.length = 0
        self.strings: dict[bytes, bytes] = {}
        self.step = 0
        self.ops = 0
        self.errors: list[str] = []
        self.longest = 0.0  # seconds, since :meth:`take_longest`
        self.done = threading.Event()
        self.sock: socket.socket | None = None
        self.file = None

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), 10)
        self.sock.settimeout(30)
        self.file = self.sock.makefile("rb")

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            if self.file is not None:
                self.file.close()
            if self.sock is not None:
                self.sock.close()
        self.sock = self.file = None

    def _next(self) -> tuple[bytes, bytes]:
        """The next request and the reply it must get (the model updated)."""
        step, self.step = self.step, self.step + 1
        op = step % 4
        string = b"%s:s:%d" % (self.key, (step // 4) % STRINGS)
        if op == 0:
            value = b"%s:%d" % (self.key, step)
            self.strings[string] = value
            return resp(b"SET", string, value), b"+OK\r\n"
        if op == 1:
            return resp(b"GET", string), bulk(self.strings.get(string))
        if op == 2:
            self.counter += 1
            return resp(b"INCR", self.key + b":c"), b":%d\r\n" % self.counter
        if self.length >= LIST_MAX:
            self.length = 0
            return resp(b"DEL", self.key + b":l"), b":1\r\n"
        self.length += 1
        return resp(b"LPUSH", self.key + b":l", b"%d" % step), b":%d\r\n" % self.length

    def _batch(self) -> None:
        batch = [self._next() for _ in range(self.depth)]
        start = time.perf_counter()
        self.sock.sendall(b"".join(request for request, _ in batch))
        for request, want in batch:
            got = read_reply(self.file)
            if got != want:
                raise ReplyError(f"{request[:60]!r} answered {got[:80]!r}, not {want[:80]!r}")
        self.longest = max(self.longest, time.perf_counter() - start)
        self.ops += len(batch)

    def _resync(self) -> None:
        """After an error: a new connection, and the model as the server has it."""
        self._close()
        self._connect()
        self.sock.sendall(resp(b"GET", self.key + b":c") + resp(b"LLEN", self.key + b":l"))
        counter, length = read_reply(self.file), read_reply(self.file)
        self.counter = int(counter.split(b"\r\n")[1]) if counter[:2] != b"$-" else 0
        self.length = int(length[1:-2])
        self.strings.clear()
        self.step += -self.step % 4  # start again at a SET

    def run(self) -> None:
        try:
            self._connect()
        except OSError as exc:
            self.errors.append(f"connect: {exc}")
            return
        while not self.done.is_set():
            try:
                self._batch()
            except (OSError, ValueError, ReplyError) as exc:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                while not self.done.is_set():
                    try:
                        self._resync()
                        break
                    except (OSError, ValueError, ReplyError):
                        time.sleep(0.2)
            time.sleep(self.pause)

    def stop(self) -> None:
        self.done.set()
        self.join(60)

    def take_longest(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest

    def lost(self) -> int:
        """Acknowledged writes not there now: the counter, the list's length, the strings."""
        if self.file is None:
            self._connect()
        requests = [resp(b"GET", self.key + b":c"), resp(b"LLEN", self.key + b":l")]
        wants = [bulk(b"%d" % self.counter if self.counter else None), b":%d\r\n" % self.length]
        for key, value in self.strings.items():
            requests.append(resp(b"GET", key))
            wants.append(bulk(value))
        self.sock.sendall(b"".join(requests))
        lost = sum(read_reply(self.file) != want for want in wants)
        self._close()
        return lost


@dataclass
class Cycle:
    number: int
    asked: str  # "rollback", "promote"; "" for the reading before the first cycle
    direction: str  # "a -> b"
    outcome: str
    serving: str
    rss_mb: float
    fds: int
    servers: int
    compared: int
    divergences: int
    ops: int
    errors: int
    longest_ms: float
    seconds: float
    problems: list[str] = field(default_factory=list)


def fd_count(pid: int, readings: int = 5) -> int:
    """The proxy's open descriptors: the lowest of a few readings (see the docstring)."""
    counts = []
    for _ in range(readings):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.1)
    return min(counts)


def rise(values: list[float]) -> float:
    """How much the least-squares line through ``values`` (one per cycle) rises from the first
    to the last."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sum(
        (x - mean_x) ** 2 for x in range(n))
    return slope * (n - 1)


class Soak:
    def __init__(self, proxy: Proxy, clients: list[Client], mve_seconds: float):
        self.proxy = proxy
        self.clients = clients
        self.mve_seconds = mve_seconds
        self.ops = 0
        self.errors = 0

    def reading(self, number: int, asked: str, direction: str, st: dict, compared: int,
                divergences: int, started: float) -> Cycle:
        """What the proxy holds now, and what the load did since the last reading."""
        time.sleep(1)  # the ended update's connections close, its tasks end
        pid = self.proxy.proc.pid
        fds = fd_count(pid)
        rss = self.proxy.rss_mb()
        ops = sum(c.ops for c in self.clients)
        errors = sum(len(c.errors) for c in self.clients)
        longest = max(c.take_longest() for c in self.clients)
        cycle = Cycle(number, asked, direction,
                      (st["last_update"] or {}).get("outcome") or "-", st["serving"],
                      round(rss, 1), fds, len(self.proxy.servers()), compared, divergences,
                      ops - self.ops, errors - self.errors, round(longest * 1000, 1),
                      round(time.monotonic() - started, 1))
        self.ops, self.errors = ops, errors
        return cycle

    def cycle(self, number: int) -> Cycle:
        """One update, MVE, then a rollback (odd cycles) or a promote (even ones)."""
        proxy = self.proxy
        started = time.monotonic()
        st = proxy.status()
        source = st["serving"]
        target = "b" if source == "a" else "a"
        asked = "rollback" if number % 2 else "promote"
        problems = []
        proxy.control("POST", "/update", {"to": target})
        st = proxy.wait(lambda s: s["state"] == "mve" or ended(s), 60)
        compared = divergences = 0
        if st["state"] != "mve":
            problems.append(f"no MVE: the update is {st['state']} "
                            f"({(st['last_update'] or {}).get('reason')})")
        else:
            time.sleep(self.mve_seconds)
            st = proxy.status()
            compared, divergences = st["compared"], st["divergences"]
            proxy.control("POST", f"/{asked}")
        st = proxy.wait(ended, 60)
        want = ("rolled-back", source) if asked == "rollback" else ("cutover", target)
        got = ((st["last_update"] or {}).get("outcome"), st["serving"])
        if not ended(st) or got != want:
            problems.append(f"asked to {asked}: the update is {st['state']}, "
                            f"{got[0]} ({(st['last_update'] or {}).get('reason')}), "
                            f"{got[1]} serves")
        if divergences:
            problems.append(f"{divergences} unexpected divergences")
        cycle = self.reading(number, asked, f"{source} -> {target}", st, compared, divergences,
                             started)
        cycle.problems = problems
        return cycle


def verdict(cycles: list[Cycle], errors: list[str], lost: int, rss_limit: float,
            window: int) -> tuple[list[str], dict]:
    """What failed, and the figures the checks used."""
    ran = [c for c in cycles if c.number > 0]
    failures = []
    if errors:
        failures.append(f"{len(errors)} client errors, the first: {errors[:3]}")
    if lost:
        failures.append(f"{lost} acknowledged writes lost")
    for c in ran:
        failures += [f"cycle {c.number}: {p}" for p in c.problems]
        if c.servers != 1:
            failures.append(f"cycle {c.number}: {c.servers} redis-servers alive, not 1")
    first_fds = ran[0].fds if ran else 0
    grown = [c.number for c in ran if c.fds != first_fds]
    if grown:
        failures.append(f"file descriptors differ from the first cycle's {first_fds} after "
                        f"cycles {grown}: {[c.fds for c in ran]}")
    fitted = ran[-window:] if len(ran) > window else ran
    growth = rise([c.rss_mb for c in fitted])
    if growth > rss_limit:
        failures.append(f"memory grows: the fitted line over cycles {fitted[0].number}-"
                        f"{fitted[-1].number} rises {growth:.1f} MB (limit {rss_limit:g} MB)")
    figures = {"first fds": first_fds, "rss fitted over": [c.number for c in fitted],
               "rss rise MB": round(growth, 2)}
    return failures, figures


COLUMNS = ["cycle", "asked", "update", "outcome", "serving", "RSS MB", "fds", "servers",
           "compared in MVE", "load ops", "load errors", "longest request ms", "seconds"]


def table(cycles: list[Cycle]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for c in cycles:
        values = [c.number or "before", c.asked or "-", c.direction or "-", c.outcome,
                  c.serving, c.rss_mb, c.fds, c.servers, c.compared, c.ops, c.errors,
                  c.longest_ms, c.seconds]
        lines.append("| " + " | ".join(str(v) for v in values) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[list[Cycle], list[str], dict]:
    with tempfile.TemporaryDirectory() as d:
        proxy = Proxy(Path(d))
        with proxy.serving():
            clients = [Client(proxy.port, f"plain{i}") for i in range(args.clients)]
            clients += [Client(proxy.port, f"piped{i}", depth=args.depth)
                        for i in range(args.pipelined)]
            for client in clients:
                client.start()
            soak = Soak(proxy, clients, args.mve_seconds)
            time.sleep(1)
            cycles = [soak.reading(0, "", "", proxy.status(), 0, 0, time.monotonic())]
            print(table(cycles), flush=True)
            for number in range(1, args.cycles + 1):
                cycle = soak.cycle(number)
                cycles.append(cycle)
                print(table([cycle]).splitlines()[-1], *cycle.problems, flush=True)
            for client in clients:
                client.stop()
            errors = [e for c in clients for e in c.errors]
            lost = sum(c.lost() for c in clients)
            tracebacks = proxy.tracebacks()
        window = 10 if not args.short else args.cycles
        failures, figures = verdict(cycles, errors, lost, args.rss_limit, window)
        if tracebacks:
            failures.append(f"{tracebacks} tracebacks in the proxy's log")
        figures.update({"client errors": len(errors), "writes lost": lost,
                        "operations": sum(c.ops for c in clients), "tracebacks": tracebacks})
        return cycles, failures, figures


def report(args: argparse.Namespace, cycles: list[Cycle], failures: list[str],
           figures: dict, took: float) -> str:
    command = shlex.join(["python", "loadtests/soak.py", *sys.argv[1:]])
    ran = [c for c in cycles if c.number > 0]
    lines = [
        "# Soak: update cycles under a continuous checking load",
        "",
        f"`{command}` ({machine()}, {platform.machine()}, Linux {platform.release()}, "
        f"{took / 60:.1f} min; {time.strftime('%Y-%m-%d')}).",
        "",
        f"`twinproxy serve` with two managed Redis 7.0 versions; {args.clients} clients one "
        f"request at a time and {args.pipelined} pipelining {args.depth} deep (SET, GET, INCR, "
        f"LPUSH, every reply checked) the whole time; each cycle: update to the version not "
        f"serving, {args.mve_seconds:g} s of MVE, then rollback or promote (cutover) in turn. "
        "Each row is read a second after the update ended: the proxy's resident memory, its "
        "open file descriptors, the redis-servers alive, and the load's operations, errors "
        "and longest request since the row before. The checks are described in the "
        "docstring of `loadtests/soak.py`.",
        "",
        table(cycles),
        "",
        f"Result: **{'FAILED' if failures else 'passed'}**. "
        f"RSS {ran[0].rss_mb if ran else '-'} MB after the first cycle, "
        f"{ran[-1].rss_mb if ran else '-'} MB after the last; the fitted line over cycles "
        f"{figures['rss fitted over'][0] if ran else '-'}-"
        f"{figures['rss fitted over'][-1] if ran else '-'} rises {figures['rss rise MB']} MB "
        f"(limit {args.rss_limit:g}). File descriptors: {figures['first fds']} after the first "
        f"cycle, {ran[-1].fds if ran else '-'} after the last. "
        f"{figures['operations']} checked operations, {figures['client errors']} client "
        f"errors, {figures['writes lost']} acknowledged writes lost, "
        f"{figures['tracebacks']} tracebacks in the proxy's log.",
    ]
    lines += [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--short", action="store_true",
                        help="3 cycles, 2 s of MVE each (for CI)")
    parser.add_argument("--mve-seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4,
                        help="clients sending one request at a time")
    parser.add_argument("--pipelined", type=int, default=2, help="clients pipelining")
    parser.add_argument("--depth", type=int, default=16, help="the pipelined clients' depth")
    parser.add_argument("--rss-limit", type=float,
                        help="MB the fitted RSS line may rise (default 1.5, with --short 4; "
                             "see the docstring)")
    parser.add_argument("--report", help="write the table and the verdict (markdown) here")
    args = parser.parse_args(argv)
    if args.short:
        args.cycles, args.mve_seconds = 3, 2.0
    if args.rss_limit is None:
        args.rss_limit = 4.0 if args.short else 1.5
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    return args


def main() -> int:
    args = parse()
    started = time.monotonic()
    cycles, failures, figures = run(args)
    print(f"RSS rise (fitted over cycles {figures['rss fitted over']}): "
          f"{figures['rss rise MB']} MB; " + "; ".join(
              f"{k}: {v}" for k, v in figures.items() if k not in ("rss fitted over",
                                                                   "rss rise MB")))
    print("FAILED:\n  " + "\n  ".join(failures) if failures else "passed")
    if args.report:
        Path(args.report).write_text(report(args, cycles, failures, figures,
                                            time.monotonic() - started))
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
