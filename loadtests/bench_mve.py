"""MVE benchmark: throughput and p99 in MVE against SINGLE, and the update's pause with 1M keys.

    python loadtests/bench_mve.py [--rounds 3] [--requests 200000] [--keys 1000000] [--report F]
                                  [--baseline OTHER_CHECKOUT/src] [--pauses-only ROUNDS]
                                  [--profile FLAME.svg]

Part 1, one ``twinproxy serve`` in front of Redis 7.0 (two managed versions, both Debian's 7.0):
``redis-benchmark -t set,get -c 50 -n 200000`` at ``-P 1`` and ``-P 16``, in SINGLE mode, then in
MVE (an update to the second version whose warm-up does not end), rounds interleaved (SINGLE, MVE,
SINGLE, MVE: the update is rolled back and started again between rounds), medians reported with
the ratios MVE/SINGLE for throughput and p99 latency, the proxy's CPU time per request (user and
system, from /proc: what the other processes on a shared machine change least) and its managed
servers' (one in SINGLE, two in MVE), and the range of the load average. After every run in MVE
the proxy must still be in MVE with no divergence (a rollback would otherwise be measured as
MVE). Its MVE is the same as ``bench_matrix.py``'s (the same config, held by the same update):
the two agree within the noise of the machine; see loadtests/reports/profile.md (2026-12-04,
"Why bench_matrix and bench_mve disagreed").

Part 2: ``--keys`` keys loaded (``DEBUG POPULATE``), 50 clients running (``redis_load.py``) and a
probe client timing a PING every millisecond; an update with a short warm-up runs to its cutover
(started, and its status polled, over the control socket from this process: see ``control``).
Reported: the pauses twinproxy measured (the sync point's barrier until the fork, the cutover's
barrier until the swap) and the longest PING the probe saw during the update against before it.

``--baseline`` runs both parts for twinproxy from another checkout's ``src`` as well (part 1's
rounds interleaved with this one's), so that old and new code are measured in the same run.
``--pauses-only N`` runs part 2 alone, N times per code, interleaved; ``--profile F`` runs it once
(for ``--baseline``'s code if given) with py-spy recording the proxy during the update.

The machine has 2 shared cores: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    Probe,
    children,
    code_env,
    cpu_seconds,
    free_port,
    load,
    machine,
    median,
    p99,
    publish,
    redis_benchmark,
    rps,
    servers_cpu,
    stop,
)

ROOT = Path(__file__).resolve().parent.parent
# DEBUG (POPULATE) is refused by Redis 7 unless enabled: without it part 2 ran on an empty server.
REDIS7 = ('command = ["/usr/bin/redis-server", "--port", "{port}", "--bind", "127.0.0.1", '
          '"--save", "", "--appendonly", "no", "--enable-debug-command", "local", '
          '"--dir", "{dir}"]\nready_timeout = 120')


def config(d: Path, warmup: str, protocol: str = "redis", server: str = REDIS7,
           rules: str = "") -> Path:
    """A config of two managed versions ``a`` and ``b`` running ``server`` (Redis 7.0 by
    default), with ``warmup`` in its [update] section."""
    path = d / "bench.toml"
    path.write_text(f"""[proxy]
listen = "127.0.0.1:{free_port()}"
protocol = "{protocol}"
control = "{d}/control.sock"
start = "a"
max_connections = 20000
[versions.a]
{server}
[versions.b]
{server}
[update]
{warmup}
barrier_timeout = 30.0
follower_timeout = 30.0
max_backlog_requests = 10000000
max_backlog_bytes = 4294967296
{rules}""")
    return path


def control(cfg: Path, method: str, path: str, body: dict | None = None) -> dict:
    """One request to the proxy's control API over its unix socket, from this process.

    Part 2 polls the status this way: a ``twinproxy status`` process per poll (a Python start,
    trio and twinproxy imported) took about a third of the 2 cores while the update ran, so
    the probe's PINGs waited for a CPU because of the benchmark, not of the update."""
    sock_path = cfg.read_text().split('control = "')[1].split('"')[0]
    data = b"" if body is None else json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(600)
        sock.connect(sock_path)
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: twinproxy\r\nConnection: close\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                     .encode() + data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    if not head.split(b" ")[1].startswith(b"2"):
        raise RuntimeError(f"{method} {path}: {reply[:500]!r}")
    return json.loads(payload)


def cli(cfg: Path, *args: str, src: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "twinproxy.cli", *args, "-c", str(cfg)],
                         capture_output=True, text=True, timeout=600, env=code_env(src))
    if out.returncode not in (0, 1):
        raise RuntimeError(f"twinproxy {' '.join(args)}: {out.stderr}")
    return out.stdout


def status(cfg: Path, src: str | None = None) -> dict:
    return json.loads(cli(cfg, "status", "--json", src=src))


def wait(cfg: Path, predicate, timeout: float = 600, src: str | None = None,
         in_process: bool = False) -> dict:
    """Poll the status every 0.1 s until ``predicate`` holds: with ``twinproxy status``, or
    ``in_process`` over the control socket (see :func:`control`)."""
    deadline = time.monotonic() + timeout
    while True:
        st = control(cfg, "GET", "/status") if in_process else status(cfg, src)
        if predicate(st):
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {st}")
        time.sleep(0.1)


def update_to_b(cfg: Path, src: str | None = None, status_cli: bool = False) -> dict:
    """Update to version "b" and wait until it ended (cut over or rolled back): started and
    polled with the ``twinproxy`` command (``status_cli``: a process every 0.1 s, as an
    operator's script would) or over the control socket from this process."""
    if status_cli:
        cli(cfg, "update", "--to", "b", src=src)
    else:
        control(cfg, "POST", "/update", {"to": "b"})
    return wait(cfg, lambda s: s["state"] == "single" and s["last_update"]["outcome"]
                != "in-progress", src=src, in_process=not status_cli)


@contextlib.contextmanager
def serve(cfg: Path, src: str | None = None):
    with serve_process(cfg, src) as (port, _):
        yield port


@contextlib.contextmanager
def serve_process(cfg: Path, src: str | None = None, trace: Path | None = None,
                  wrapper: list[str] | None = None):
    """``twinproxy serve cfg`` until the context ends: (the port it listens on, the process);
    with ``trace``, under loadtests/traced_serve.py writing there; with ``wrapper``, under that
    script and its arguments instead (loadtests/engine_clock.py)."""
    log = open(cfg.with_suffix(".log"), "w")  # noqa: SIM115 (closed below)
    run = ["-m", "twinproxy.cli"] if trace is None else \
        [str(Path(__file__).with_name("traced_serve.py")), str(trace)]
    if wrapper is not None:
        run = wrapper
    proc = subprocess.Popen([sys.executable, *run, "serve", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=log, env=code_env(src))
    try:
        port = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
        deadline = time.monotonic() + 120
        while "serving" not in cfg.with_suffix(".log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(cfg.with_suffix(".log").read_text())
            time.sleep(0.05)
        yield port, proc
    finally:
        stop(proc)
        log.close()


def enter_mve(cfg: Path, src: str | None = None) -> None:
    cli(cfg, "update", "--to", "b", src=src)
    wait(cfg, lambda s: s["state"] == "mve", src=src)


def leave_mve(cfg: Path, src: str | None = None) -> None:
    cli(cfg, "rollback", src=src)
    wait(cfg, lambda s: s["state"] == "single", src=src)


def part1(rounds: int, requests: int, codes: dict[str, str | None]) -> list[str]:
    """Part 1 for each code (name: its src, None for the installed one), rounds interleaved."""
    figures: dict[tuple[str, str, int], list[tuple[float, float, float, float]]] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        proxies = {}
        for name, src in codes.items():
            (Path(d) / name).mkdir()
            cfg = config(Path(d) / name, "warmup_seconds = 100000\nwarmup_requests = 0")
            proxies[name] = (cfg, *stack.enter_context(serve_process(cfg, src)), src)
        for _ in range(rounds):
            for name, (cfg, port, proc, src) in proxies.items():
                for mode in ("SINGLE", "MVE"):
                    if mode == "MVE":
                        enter_mve(cfg, src)
                    servers = children(proc.pid)  # the managed versions: one, or two in MVE
                    for pipeline in (1, 16):
                        loads.append(load())
                        cpu, server = cpu_seconds(proc.pid), servers_cpu(servers)
                        result = redis_benchmark(port, pipeline, requests=requests)
                        n = requests * len(result)
                        cpu = (cpu_seconds(proc.pid) - cpu) / n * 1e6
                        server = (servers_cpu(servers) - server) / n * 1e6
                        if mode == "MVE":
                            # Still in MVE: a rollback (a lag, a timeout) would have measured
                            # SINGLE under the name MVE.
                            st = status(cfg, src)
                            assert st["state"] == "mve" and st["divergences"] == 0, st
                        figures.setdefault((name, mode, pipeline), []).append(
                            (rps(result), p99(result), cpu, server))
                    if mode == "MVE":
                        leave_mve(cfg, src)
    lines = [f"redis-benchmark -t set,get -c 50 -n {requests}, median of {rounds} interleaved "
             f"rounds ({machine()}; load average {min(loads):.1f} to {max(loads):.1f}). "
             "CPU us/req: the proxy's, and its managed servers' (one in SINGLE, two in MVE)"]
    for name in codes:
        lines += ["", f"{name}{'' if codes[name] is None else ' (' + str(codes[name]) + ')'}:",
                  "", "| pipeline | SINGLE req/s | MVE req/s | MVE/SINGLE | SINGLE p99 ms "
                  "| MVE p99 ms | MVE/SINGLE p99 | proxy CPU us/req SINGLE | MVE "
                  "| servers' CPU us/req SINGLE | MVE |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for pipeline in (1, 16):
            got = {mode: figures[(name, mode, pipeline)] for mode in ("SINGLE", "MVE")}
            s_rps, m_rps = (median([f[0] for f in got[m]]) for m in ("SINGLE", "MVE"))
            s_p99, m_p99 = (median([f[1] for f in got[m]]) for m in ("SINGLE", "MVE"))
            s_cpu, m_cpu = (median([f[2] for f in got[m]]) for m in ("SINGLE", "MVE"))
            s_srv, m_srv = (median([f[3] for f in got[m]]) for m in ("SINGLE", "MVE"))
            lines.append(f"| -P {pipeline} | {s_rps:,.0f} | {m_rps:,.0f} | {m_rps / s_rps:.2f} "
                         f"| {s_p99:.3f} | {m_p99:.3f} | {m_p99 / s_p99:.2f} | {s_cpu:.2f} "
                         f"| {m_cpu:.2f} | {s_srv:.2f} | {m_srv:.2f} |")
    if "baseline" in codes:
        lines += ["", "| pipeline | mode | twinproxy/baseline: req/s | p99 | proxy CPU per "
                  "request |", "|---|---|---|---|---|"]
        for pipeline in (1, 16):
            for mode in ("SINGLE", "MVE"):
                t, b = ([median([f[i] for f in figures[(n, mode, pipeline)]]) for i in range(3)]
                        for n in ("twinproxy", "baseline"))
                lines.append(f"| -P {pipeline} | {mode} | {t[0] / b[0]:.2f} | {t[1] / b[1]:.2f} "
                             f"| {t[2] / b[2]:.2f} |")
    return lines


EVENT_LINE = re.compile(r"^(\S+ \S+) \S+\s+\[(sync_point|cutover)\] .*pause_ms=([0-9.]+)")


def pause_windows(log: str, probe: Probe, margin: float = 0.05) -> dict[str, float]:
    """The probe's longest PING (ms) around the sync point and the cutover: from ``margin``
    before each pause began to ``margin`` after it ended, the pause taken from the proxy's
    log line for it (written as it ends, its time to the millisecond; the log's clock is the
    wall clock, the probe's the monotonic one, so one is moved onto the other)."""
    shift = time.time() - time.monotonic()
    out = {}
    for line in log.splitlines():
        found = EVENT_LINE.match(line)
        if found is None:
            continue
        stamp = datetime.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f")
        ended = stamp.timestamp() - shift
        began = ended - float(found[3]) / 1000
        out[f"at_{found[2]}"] = probe.around(began - margin, ended + margin) * 1000
    return out


def pause_run(keys: int, src: str | None = None, profile: str | None = None,
              status_cli: bool = False) -> dict:
    """One update of a server holding ``keys`` keys while 50 clients run: its figures.

    ``profile``: record the proxy with py-spy (``--idle --rate 1000``) from just before the
    update until SINGLE again, as a flame graph in that file. ``status_cli``: start the
    update and poll its status with ``twinproxy`` commands (as before 2026-12-04), not over
    the control socket from this process."""
    with tempfile.TemporaryDirectory() as d:
        cfg = config(Path(d), "warmup_seconds = 2\nwarmup_requests = 100")
        with serve_process(cfg, src) as (port, proc):
            subprocess.run(["redis-cli", "-p", str(port), "DEBUG", "POPULATE", str(keys)],
                           check=True, capture_output=True, timeout=600)
            size = subprocess.run(["redis-cli", "-p", str(port), "DBSIZE"], check=True,
                                  capture_output=True, text=True, timeout=60).stdout.strip()
            if size != str(keys):
                raise RuntimeError(f"DEBUG POPULATE {keys} left {size!r} keys")
            load = subprocess.Popen([sys.executable, str(ROOT / "loadtests" / "redis_load.py"),
                                     "--port", str(port), "--clients", "50",
                                     "--out", f"{d}/load.json"])
            probe = Probe(port)
            probe.start()
            time.sleep(3)
            spy = None
            if profile:
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                        "--idle", "--rate", "1000", "-p", str(proc.pid),
                                        "-o", profile, "--format",
                                        "raw" if profile.endswith(".txt") else "flamegraph"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            before = probe.window()
            loadavg = os.getloadavg()[0]
            started = time.monotonic()
            st = update_to_b(cfg, src, status_cli)
            took = time.monotonic() - started
            during = probe.window()
            windows = pause_windows(cfg.with_suffix(".log").read_text(), probe)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            probe.done = True
            load.send_signal(signal.SIGTERM)
            load.wait(60)
            result = json.loads(Path(f"{d}/load.json").read_text())
    pauses = st["update"]["pauses_ms"]
    return {"ops": result["ops"], "errors": result["errors"],
            "outcome": st["last_update"]["outcome"], "took": took,
            "sync_point": pauses.get("sync_point", 0.0), "cutover": pauses.get("cutover", 0.0),
            "during": during * 1000, "before": before * 1000, "pauses": pauses, **windows,
            "fork_ms": st["update"].get("sync_stats", {}).get("fork_ms"), "load": loadavg}


PAUSE_ROWS = (("sync_point", "sync point (barrier until the fork), twinproxy's measure"),
              ("cutover", "cutover (barrier until the swap), twinproxy's measure"),
              ("at_sync_point", "longest PING of the probe from 50 ms before the sync point "
                                "to 50 ms after it"),
              ("at_cutover", "longest PING of the probe from 50 ms before the cutover to 50 ms "
                             "after it"),
              ("during", "longest PING of a probe client during the update"),
              ("before", "longest PING of the probe in the 3 s before it"),
              ("load", "load average (1 min) when the update began, 2 cores"))

RUN_KEYS = {key for key, _ in PAUSE_ROWS}

# Where the pauses went (the update's pauses_ms and sync_stats; absent from older code).
PARTS = (("ahead", "before the sync point: handing the clients to the engine as they flow "
                   "(not a pause)"),
         ("begin", "sync point: handing the clients to the engine (or only holding them)"),
         ("barrier", "sync point: until nothing was in flight (from its start)"),
         ("pin", "sync point: BGSAVE's round trip"),
         ("fork_ms", "sync point: of which Redis's fork (latest_fork_usec)"),
         ("release", "sync point: then sending the requests held"),
         ("sync_point_cpu", "sync point: the proxy's CPU time"),
         ("cutover_quiet", "cutover: until the leader answered"),
         ("cutover_barrier", "cutover: until the leader answered and the follower caught up"),
         ("cutover_unblock", "cutover: then until no request blocked in the leader"),
         ("cutover_cpu", "cutover: the proxy's CPU time"))


def part(run: dict, key: str) -> float | None:
    if key in RUN_KEYS:  # (a log line not found: no window around that pause)
        return run.get(key)
    return run["fork_ms"] if key == "fork_ms" else run["pauses"].get(key)


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def part2(keys: int, src: str | None = None) -> list[str]:
    run = pause_run(keys, src)
    return [
        f"Update with {keys:,} keys loaded while 50 clients run ({run['ops']:,} operations, "
        f"{run['errors']} client errors): outcome {run['outcome']}, "
        f"{run['took']:.1f} s from `update` to SINGLE on the new version.", "",
        "| pause | measured |", "|---|---|",
        *(f"| {label} | {cell(part(run, key))}{'' if key == 'load' else ' ms'} |"
          for key, label in PAUSE_ROWS),
        *(f"| {label} | {cell(part(run, key))} ms |" for key, label in PARTS),
    ]


def pauses(rounds: int, keys: int, codes: dict[str, str | None]) -> list[str]:
    """Part 2 only, ``rounds`` times for each code, interleaved: every round's figures and
    the medians."""
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    for _ in range(rounds):
        for name, src in codes.items():
            run = pause_run(keys, src)
            print(f"{name}: {json.dumps(run)}", file=sys.stderr, flush=True)
            runs[name].append(run)
    lines = [f"Updates with {keys:,} keys loaded while 50 clients run, {rounds} rounds per "
             f"code, interleaved ({machine()}); ms, each round then the median"]
    for name, got in runs.items():
        lines += ["", f"{name}{'' if codes[name] is None else ' (' + str(codes[name]) + ')'}:",
                  "", "| pause | " + " | ".join(f"round {i + 1}" for i in range(rounds))
                  + " | median |", "|---|" + "---|" * (rounds + 1)]
        for key, label in PAUSE_ROWS + PARTS:
            parts = [part(run, key) for run in got]
            known = [v for v in parts if v is not None]
            lines.append(f"| {label} | " + " | ".join(cell(v) for v in parts)
                         + f" | {cell(median(known) if known else None)} |")
        outcomes = sorted({run["outcome"] for run in got})
        errors = sum(run["errors"] for run in got)
        lines += ["", f"Outcomes: {', '.join(outcomes)}; client errors: {errors}."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--report", help="also write the tables (markdown) to this file")
    parser.add_argument("--skip-pause", action="store_true")
    parser.add_argument("--baseline", help="another checkout's src directory to compare with")
    parser.add_argument("--pauses-only", type=int, metavar="ROUNDS",
                        help="only part 2, this many rounds per code, interleaved")
    parser.add_argument("--profile", metavar="SVG",
                        help="only part 2, once, with py-spy recording the proxy (a flame graph; "
                        "collapsed stacks if the name ends in .txt)")
    args = parser.parse_args()
    codes = {"twinproxy": None}
    if args.baseline:
        codes["baseline"] = args.baseline
    if args.profile:
        run = pause_run(args.keys, codes.get("baseline"), args.profile)
        publish(json.dumps(run, indent=1), args.report)
        return
    if args.pauses_only:
        publish("\n".join(pauses(args.pauses_only, args.keys, codes)), args.report)
        return
    lines = part1(args.rounds, args.requests, codes)
    if not args.skip_pause:
        for name, src in codes.items():
            lines += ["", f"{name}:", "", *part2(args.keys, src)]
    publish("\n".join(lines), args.report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
