"""MVE benchmark: throughput and p99 in MVE against SINGLE, and the update's pause with 1M keys.

    python loadtests/bench_mve.py [--rounds 3] [--requests 200000] [--keys 1000000] [--report F]

Part 1, one ``twinproxy serve`` in front of Redis 7.0 (two managed versions, both Debian's 7.0):
``redis-benchmark -t set,get -c 50 -n 200000`` at ``-P 1`` and ``-P 16``, in SINGLE mode, then in
MVE (an update to the second version whose warm-up does not end), rounds interleaved (SINGLE, MVE,
SINGLE, MVE: the update is rolled back and started again between rounds), medians reported with
the ratios MVE/SINGLE for throughput and p99 latency.

Part 2: ``--keys`` keys loaded (``DEBUG POPULATE``), 50 clients running (``redis_load.py``) and a
probe client timing a PING every millisecond; an update with a short warm-up runs to its cutover.
Reported: the pauses twinproxy measured (the sync point's barrier until the fork, the cutover's
barrier until the swap) and the longest PING the probe saw during the update against before it.

The machine has 2 shared cores: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import free_port, machine, median, p99, redis_benchmark, rps, stop

ROOT = Path(__file__).resolve().parent.parent
REDIS7 = ('command = ["/usr/bin/redis-server", "--port", "{port}", "--bind", "127.0.0.1", '
          '"--save", "", "--appendonly", "no", "--dir", "{dir}"]\nready_timeout = 120')


def config(d: Path, warmup: str) -> Path:
    path = d / "bench.toml"
    path.write_text(f"""[proxy]
listen = "127.0.0.1:{free_port()}"
protocol = "redis"
control = "{d}/control.sock"
start = "a"
max_connections = 20000
[versions.a]
{REDIS7}
[versions.b]
{REDIS7}
[update]
{warmup}
barrier_timeout = 30.0
follower_timeout = 30.0
max_backlog_requests = 10000000
max_backlog_bytes = 4294967296
""")
    return path


def cli(cfg: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "twinproxy.cli", *args, "-c", str(cfg)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"twinproxy {' '.join(args)}: {out.stderr}")
    return out.stdout


def status(cfg: Path) -> dict:
    return json.loads(cli(cfg, "status", "--json"))


def wait(cfg: Path, predicate, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = status(cfg)
        if predicate(st):
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {st}")
        time.sleep(0.1)


@contextlib.contextmanager
def serve(cfg: Path):
    log = open(cfg.with_suffix(".log"), "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "twinproxy.cli", "serve", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        port = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
        deadline = time.monotonic() + 120
        while "serving" not in cfg.with_suffix(".log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(cfg.with_suffix(".log").read_text())
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)
        log.close()


def enter_mve(cfg: Path) -> None:
    cli(cfg, "update", "--to", "b")
    wait(cfg, lambda s: s["state"] == "mve")


def leave_mve(cfg: Path) -> None:
    cli(cfg, "rollback")
    wait(cfg, lambda s: s["state"] == "single")


def part1(rounds: int, requests: int) -> list[str]:
    figures: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        cfg = config(Path(d), "warmup_seconds = 100000\nwarmup_requests = 0")
        with serve(cfg) as port:
            for _ in range(rounds):
                for mode in ("SINGLE", "MVE"):
                    if mode == "MVE":
                        enter_mve(cfg)
                    for pipeline in (1, 16):
                        result = redis_benchmark(port, pipeline, requests=requests)
                        figures.setdefault((mode, pipeline), []).append((rps(result),
                                                                         p99(result)))
                    if mode == "MVE":
                        st = status(cfg)
                        assert st["divergences"] == 0, st
                        leave_mve(cfg)
    lines = [f"redis-benchmark -t set,get -c 50 -n {requests}, median of {rounds} interleaved "
             f"rounds ({machine()})", "",
             "| pipeline | SINGLE req/s | MVE req/s | MVE/SINGLE | SINGLE p99 ms | MVE p99 ms "
             "| MVE/SINGLE p99 |", "|---|---|---|---|---|---|---|"]
    for pipeline in (1, 16):
        s_rps = median([f[0] for f in figures[("SINGLE", pipeline)]])
        m_rps = median([f[0] for f in figures[("MVE", pipeline)]])
        s_p99 = median([f[1] for f in figures[("SINGLE", pipeline)]])
        m_p99 = median([f[1] for f in figures[("MVE", pipeline)]])
        lines.append(f"| -P {pipeline} | {s_rps:,.0f} | {m_rps:,.0f} | {m_rps / s_rps:.2f} "
                     f"| {s_p99:.3f} | {m_p99:.3f} | {m_p99 / s_p99:.2f} |")
    return lines


class Probe(threading.Thread):
    """One client timing a PING every millisecond: the longest wait, per window."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.worst = 0.0
        self.done = False

    def run(self) -> None:
        while not self.done:
            start = time.perf_counter()
            self.sock.sendall(b"PING\r\n")
            assert self.sock.recv(100) == b"+PONG\r\n"
            self.worst = max(self.worst, time.perf_counter() - start)
            time.sleep(0.001)

    def window(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


def part2(keys: int) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        cfg = config(Path(d), "warmup_seconds = 2\nwarmup_requests = 100")
        with serve(cfg) as port:
            subprocess.run(["redis-cli", "-p", str(port), "DEBUG", "POPULATE", str(keys)],
                           check=True, capture_output=True, timeout=600)
            load = subprocess.Popen([sys.executable, str(ROOT / "loadtests" / "redis_load.py"),
                                     "--port", str(port), "--clients", "50",
                                     "--out", f"{d}/load.json"])
            probe = Probe(port)
            probe.start()
            time.sleep(3)
            before = probe.window()
            started = time.monotonic()
            cli(cfg, "update", "--to", "b")
            st = wait(cfg, lambda s: s["state"] == "single" and s["last_update"]["outcome"]
                      != "in-progress")
            took = time.monotonic() - started
            during = probe.window()
            probe.done = True
            load.send_signal(signal.SIGTERM)
            load.wait(60)
            result = json.loads(Path(f"{d}/load.json").read_text())
    update = st["update"]
    return [
        f"Update with {keys:,} keys loaded while 50 clients run ({result['ops']:,} operations, "
        f"{result['errors']} client errors): outcome {st['last_update']['outcome']}, "
        f"{took:.1f} s from `update` to SINGLE on the new version.", "",
        "| pause | measured |", "|---|---|",
        f"| sync point (barrier until the fork), twinproxy's measure | "
        f"{update['pauses_ms'].get('sync_point', 0):.1f} ms |",
        f"| cutover (barrier until the swap), twinproxy's measure | "
        f"{update['pauses_ms'].get('cutover', 0):.1f} ms |",
        f"| longest PING of a probe client during the update | {during * 1000:.1f} ms |",
        f"| longest PING of the probe in the 3 s before it | {before * 1000:.1f} ms |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--report", help="also write the tables (markdown) to this file")
    parser.add_argument("--skip-pause", action="store_true")
    args = parser.parse_args()
    lines = part1(args.rounds, args.requests)
    if not args.skip_pause:
        lines += ["", *part2(args.keys)]
    text = "\n".join(lines)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
