"""The pause clients feel when a cooperative service forks, with 1,000,000 keys in it.

    python loadtests/cooperative_pause.py [--keys 1000000] [--clients 20] [--redis]
                                          [--report loadtests/reports/cooperative.md]

The example key-value store (examples/kvstore, v1) is started with ``--keys`` keys, twinproxy in
front of it (configs/kvstore.toml on free ports), ``--clients`` redis-py clients doing PUT/GET
and checking every reply, and a probe timing a PING every millisecond. Then an update to v2:
the service forks at its safe point (clients held by the proxy from the barrier until the fork's
answer: the *sync point pause*), the child transforms and checks 1M keys while the parent
serves, and the update cuts over after the warm-up. ``--redis`` adds the same measure for
Redis's fork (bench_mve.py's part 2: redis-fork sync, 1M keys, 50 clients), for the table the
issue asks for: the two pauses side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench_mve import cli, part2, serve, wait
from common import Probe, free_port, machine, publish, stop, wait_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from twinproxy.keeper import descendants  # noqa: E402 (after the path is set)


def config(d: Path, store: int, endpoint: int) -> Path:
    text = (ROOT / "configs" / "kvstore.toml").read_text()
    for old, new in (('listen = "127.0.0.1:6390"', f'listen = "127.0.0.1:{free_port()}"'),
                     ('control = "/tmp/twinproxy-kvstore.sock"', f'control = "{d}/control.sock"'),
                     ('address = "127.0.0.1:7379"', f'address = "127.0.0.1:{store}"'),
                     ("127.0.0.1:7380", f"127.0.0.1:{endpoint}"),
                     ("ready_timeout = 30.0", "ready_timeout = 300.0"),
                     ("barrier_timeout = 5.0", "barrier_timeout = 30.0"),
                     ("warmup_seconds = 10.0", "warmup_seconds = 2.0"),
                     ("warmup_requests = 1000", "warmup_requests = 100")):
        assert old in text, old
        text = text.replace(old, new)
    path = d / "kvstore.toml"
    path.write_text(text)
    return path


class Load:
    """Clients doing PUT then GET of keys of their own, each reply checked."""

    def __init__(self, port: int, clients: int):
        self.stop = threading.Event()
        self.ops = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(port, i), daemon=True)
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, port: int, i: int) -> None:
        client = redis.Redis(port=port, socket_timeout=120)
        n = 0
        try:
            while not self.stop.is_set():
                key, value = f"load{i}:{n}", f"v{n}".encode()
                assert client.execute_command("PUT", key, value) == b"OK"
                assert client.execute_command("GET", key) == value
                n += 1
                time.sleep(0.02)
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            self.ops += 2 * n

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def cooperative(keys: int, clients: int) -> list[str]:
    port, endpoint = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    built = time.monotonic()
    store = subprocess.Popen([sys.executable, "-m", "examples.kvstore", "--port", str(port),
                              "--endpoint", f"127.0.0.1:{endpoint}", "--keys", str(keys)],
                             cwd=ROOT, env=env)
    forked: set[int] = set()
    try:
        wait_port(port, store, timeout=600)
        built = time.monotonic() - built
        with tempfile.TemporaryDirectory() as d:
            cfg = config(Path(d), port, endpoint)
            with serve(cfg) as proxy:
                load = Load(proxy, clients)
                probe = Probe(proxy)
                probe.start()
                time.sleep(3)
                before = probe.window()
                started = time.monotonic()
                cli(cfg, "update", "--to", "v2")
                time.sleep(0.5)
                forked.update(descendants(store.pid))  # the child, once forked
                st = wait(cfg, lambda s: s["state"] == "single" and s["last_update"]["outcome"]
                          != "in-progress")
                took = time.monotonic() - started
                during = probe.window()
                probe.done = True
                load.end()
                forked.add(st["leader"]["pid"])
                log = cfg.with_suffix(".log").read_text()
    finally:
        forked.update(descendants(store.pid) if store.poll() is None else [])
        stop(store)
        for pid in forked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    fork = re.search(r"forked at its safe point \(child pid \d+, ([\d.]+) ms\)", log)
    update = st["update"]
    return [
        f"Update v1 -> v2 of examples/kvstore with {keys:,} keys (loaded in {built:.1f} s) while "
        f"{clients} redis-py clients run ({load.ops:,} operations, {len(load.errors)} client "
        f"errors): outcome {st['last_update']['outcome']}, {took:.1f} s from `update` to SINGLE "
        "on v2.", "",
        "| pause | measured |", "|---|---|",
        f"| sync point (barrier until the fork's answer), twinproxy's measure | "
        f"{update['pauses_ms'].get('sync_point', 0):.1f} ms |",
        f"| of which the endpoint's exchange (safe point, fork, 202) | "
        f"{float(fork[1]) if fork else float('nan'):.1f} ms |",
        f"| the child's transform, check and report, while clients flow (syncing, total) | "
        f"{update['phases_s'].get('syncing', 0) * 1000:.0f} ms |",
        f"| cutover (barrier until the swap), twinproxy's measure | "
        f"{update['pauses_ms'].get('cutover', 0):.1f} ms |",
        f"| longest PING of a probe client during the update | {during * 1000:.1f} ms |",
        f"| longest PING of the probe in the 3 s before it | {before * 1000:.1f} ms |",
    ] + (["", f"Client errors: {load.errors[:3]}"] if load.errors else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--redis", action="store_true", help="also measure redis-fork's pause")
    parser.add_argument("--report", help="also write the tables (markdown) to this file")
    args = parser.parse_args()
    lines = [f"{machine()}", "", "Cooperative sync (examples/kvstore, Python):", "",
             *cooperative(args.keys, args.clients)]
    if args.redis:
        lines += ["", "redis-fork sync (redis-server 7.0), for comparison:", "",
                  *part2(args.keys)]
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
