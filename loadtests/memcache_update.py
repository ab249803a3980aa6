"""A live update of memcached with ``sync = "memcache-copy"`` at full size: N items loaded, 20
pymemcache clients writing and reading (each reply checked, as in
``tests/test_mve_memcache_copy.py``, whose clients this runs), a probe client timing ``get``s;
then the pause at the sync point, the copy's passes, the cutover, and whether every
acknowledged write is in the new version.

    PYTHONPATH=src:. python loadtests/memcache_update.py --items 100000 --clients 20 \\
        --report loadtests/reports/memcache_update.md

Bounded: the load runs for the update and --after seconds, then stops; every server it starts
is stopped (the proxy runs in this process, as the tests run it).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import trio
from loadtests.common import rss_kib
from pymemcache.client.base import Client
from tests.proxyrun import MEMCACHED, poll_until, running, write_config
from tests.test_mve_memcache_copy import Worker, differences, dump, same_state


def load(address: tuple[str, int], items: int) -> None:
    """``items`` items straight into the server (pipelined ms, 100-byte values, flags, half
    of them with a TTL of an hour)."""
    with socket.create_connection(address) as sock:
        for start in range(0, items, 10000):
            sock.sendall(b"".join(
                b"ms item%d 100 F%d%s q\r\n%s\r\n" % (i, i % 1000, b" T3600" if i % 2 else b"",
                                                       b"%100d" % i)
                for i in range(start, min(items, start + 10000))) + b"mn\r\n")
            got = b""
            while not got.endswith(b"MN\r\n"):
                got += sock.recv(1 << 16)
            assert got == b"MN\r\n", got[:200]


class Probe(threading.Thread):
    """One client doing a ``get`` at a time: the longest wait a client saw, and when."""

    def __init__(self, address, stop: threading.Event):
        super().__init__(daemon=True)
        self.client = Client(address, no_delay=True, timeout=60)
        self.stop = stop
        self.worst = 0.0
        self.count = 0

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            self.client.get("item1")
            self.worst = max(self.worst, time.monotonic() - start)
            self.count += 1
            time.sleep(0.001)


class Memory(threading.Thread):
    """This process's resident memory (the proxy, with its copy, and the clients' threads),
    sampled every 0.1 s: the highest since :meth:`reset`."""

    def __init__(self, stop: threading.Event):
        super().__init__(daemon=True)
        self.stop = stop
        self.peak = 0

    def reset(self) -> int:
        self.peak = now = rss_kib(os.getpid())
        return now

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(os.getpid()))
            time.sleep(0.1)


class Steps(trio.abc.Instrument):
    """Where the proxy's one thread goes (``--profile``): the longest uninterrupted steps of
    its trio tasks, by task name, and the collector's pauses. A client waits at least as long
    as the longest step another task takes on that thread, so this names what makes a ``get``
    wait during the copy."""

    def __init__(self) -> None:
        self.longest: dict[str, float] = defaultdict(float)
        self.total: dict[str, float] = defaultdict(float)
        self.gc_worst = [0.0, 0.0, 0.0]  # by generation
        self.gc_count = [0, 0, 0]
        self.gc_total = 0.0
        self._started = self._gc_started = 0.0

    def before_task_step(self, task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task) -> None:
        took = time.perf_counter() - self._started
        self.longest[task.name] = max(self.longest[task.name], took)
        self.total[task.name] += took

    def collected(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_started
            generation = info["generation"]
            self.gc_worst[generation] = max(self.gc_worst[generation], took)
            self.gc_count[generation] += 1
            self.gc_total += took

    def report(self) -> dict:
        worst = sorted(((n, t) for n, t in self.longest.items() if "run_sync_soon" not in n),
                       key=lambda kv: -kv[1])[:4]
        return {
            "longest_steps_ms": ", ".join(f"{'.'.join(n.split('.')[-2:])} {t * 1000:.0f}"
                                          for n, t in worst),
            "gc_worst_ms by generation (count)": ", ".join(
                f"{g}: {t * 1000:.0f} ({n})"
                for g, (t, n) in enumerate(zip(self.gc_worst, self.gc_count, strict=True))),
            "gc_total_s": round(self.gc_total, 2),
        }


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run(items: int, clients: int, after: float, compare: bool, profile: bool = False) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="mc-update-"))
    server = MEMCACHED.replace('"-u"', '"-m", "1024", "-c", "4096", "-u"')
    config = write_config(
        folder / "mc.toml", "memcache", {"v1": server, "v2": server},
        update='sync = "memcache-copy"\nwarmup_seconds = 600\nwarmup_requests = 1\n'
               "follower_timeout = 60.0\nbarrier_timeout = 60.0\n",
        rules='[[rules]]\nname = "stats"\ncommand = "stats"\nignore = true\n')
    lines = Lines()
    logging.getLogger("twinproxy").addHandler(lines)
    logging.getLogger("twinproxy").setLevel(logging.INFO)
    with running(config, timeout=120) as proxy:
        service = proxy.service
        status = lambda: proxy.call(service.status)  # noqa: E731
        started = time.monotonic()
        load(service.backends["v1"].address, items)
        loaded = time.monotonic() - started
        pause, stop = threading.Event(), threading.Event()
        workers = [Worker(n, proxy.address, pause, stop) for n in range(clients)]
        probe = Probe(proxy.address, stop)
        memory = Memory(stop)
        for thread in [*workers, probe, memory]:
            thread.start()
        try:
            time.sleep(1.0)
            before = probe.worst
            probe.worst = 0.0
            rss_before = memory.reset()
            steps = Steps() if profile else None
            if steps is not None:
                proxy.call(trio.lowlevel.add_instrument, steps)
                gc.callbacks.append(steps.collected)
            began = time.monotonic()
            proxy.call_async(service.update, "v2")
            poll_until(status, lambda s: s["state"] == "mve", 600, "MVE", interval=0.2)
            synced = time.monotonic() - began
            during = probe.worst
            rss_peak = memory.peak
            if steps is not None:
                proxy.call(trio.lowlevel.remove_instrument, steps)
                gc.callbacks.remove(steps.collected)
            equal = None
            if compare:  # clients pause; the follower, once it replayed, holds the same
                pause.set()
                for worker in workers:
                    worker.idle.wait(60)
                leader = dump(service.backends["v1"].address)
                deadline = time.monotonic() + 120
                while True:
                    follower = dump(service.backends["v2"].address)
                    equal = same_state(leader, follower)
                    if equal or time.monotonic() > deadline:
                        break
                equal = f"{equal} ({len(leader)} items)" + \
                    ("" if equal else f": {differences(leader, follower)}")
                pause.clear()
            time.sleep(after)
            proxy.call(service.promote)
            done = poll_until(status, lambda s: s["state"] == "single", 120, "the cutover")
            time.sleep(after)
        finally:
            stop.set()
            for thread in [*workers, probe, memory]:
                thread.join(60)
        errors = [f"{w.error!r} at (op, key, value expected) {w.failed}" for w in workers
                  if w.error is not None]
        reader = Client(proxy.address, timeout=60)
        lost = sum(1 for w in workers for k, v in w.model.items() if reader.get(k) != v)
        sample = reader.get_many([f"item{i}" for i in range(0, items, max(1, items // 1000))])
    text = "\n".join(lines.lines)
    found = {name: float(m.group(1)) for name, pattern in (
        ("precopy_s", r"items read before the sync point in ([0-9.]+)s"),
        ("copy_s", r"items copied into \S+ in ([0-9.]+)s"),
        ("sync_point_ms", r"sync point pinned, clients held ([0-9.]+) ms"),
        ("sync_point_reread", r"at the sync point, (?:\d+ items listed and )?(\d+) (?:keys )?"
                              r"(?:written since they were read, )?read again"),
        ("sync_point_pass_s", r"read again in ([0-9.]+)s"),
        ("cutover_ms", r"serves; clients held ([0-9.]+) ms"),
    ) if (m := re.search(pattern, text))}
    return {
        "items": items, "clients": clients, "load_s": round(loaded, 2),
        "update_to_mve_s": round(synced, 2), **found,
        "rss_before_update_mib": round(rss_before / 1024, 1),
        "rss_peak_until_mve_mib": round(rss_peak / 1024, 1),
        "probe_worst_before_ms": round(before * 1000, 1),
        "probe_worst_during_sync_ms": round(during * 1000, 1),
        **(steps.report() if steps is not None else {}),
        "dumps_equal_after_sync": equal if compare else "not compared (--compare)",
        "outcome": done["last_update"]["outcome"], "divergences": done["divergences"],
        "client_errors": errors, "client_ops": sum(w.ops for w in workers),
        "cas_refused_on_own_key": sum(w.stale for w in workers),
        "acknowledged_writes_lost": lost,
        "items_sampled_present": f"{len(sample)}/{len(range(0, items, max(1, items // 1000)))}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--after", type=float, default=3.0)
    parser.add_argument("--compare", action="store_true",
                        help="pause the clients after the sync point and compare full dumps "
                             "(keys, values, flags, expiry) of both versions")
    parser.add_argument("--profile", action="store_true",
                        help="time the proxy thread's task steps and the collector until MVE")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    result = run(args.items, args.clients, args.after, args.compare, args.profile)
    lines = [f"| {k} | {v} |" for k, v in result.items()]
    command = " ".join(["python loadtests/memcache_update.py", "--items", str(args.items),
                        "--clients", str(args.clients), *(["--compare"] if args.compare else []),
                        *(["--profile"] if args.profile else [])])
    body = "\n".join([f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:", "",
                      "| measure | value |", "|---|---|", *lines])
    print(body)
    if args.report:
        with args.report.open("a") as out:
            out.write(body + "\n\n")


if __name__ == "__main__":
    main()
