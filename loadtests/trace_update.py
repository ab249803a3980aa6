"""When, in a Redis update, does a client wait long? One update of bench_mve.py's part 2 (1M
keys, 50 clients, a probe PINGing every millisecond) with the proxy traced, as a timeline.

    python loadtests/trace_update.py [--keys 1000000] [--baseline OTHER/src] [--out T.json]
    python loadtests/trace_update.py --rounds 5 [--baseline OTHER/src]   # a line per update

The proxy runs under loadtests/traced_serve.py (a trio Instrument writing its task steps longer
than 1 ms, gc collections, log lines and the update's steps). This process records every PING of
the probe and samples, every 5 ms, /proc/PID/schedstat of the proxy and of every process under
it (the servers, Redis's BGSAVE child) and of the load's client: the time each ran on a CPU and
the time each waited in the run queue for one. All times are CLOCK_MONOTONIC.

Printed: the update's steps, and for each PING over ``--slow`` ms: when it began relative to the
update's steps, the proxy's task steps and gc collections that overlap it, and in its window
each process's time running and waiting for a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_mve import ROOT, config, update_to_b
from common import Probe, code_env, machine, stop

TICK = 0.005


def children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(name))
    return kids


def under(root: int) -> list[int]:
    kids, out, todo = children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def label(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    words = [w.decode(errors="replace") for w in cmd if w]
    if not words:
        return str(pid)
    name = os.path.basename(words[0])
    if name.startswith("python"):
        name = next((os.path.basename(w) for w in words[1:] if not w.startswith("-")), name)
    if "redis" in name:  # its title: "redis-server 127.0.0.1:PORT", "redis-rdb-bgsave ..."
        name = " ".join(words).replace("/usr/bin/", "")
    return f"{name}[{pid}]"


class Sampler(threading.Thread):
    """schedstat (ns on a CPU, ns waiting for one) of the watched processes every TICK."""

    def __init__(self, roots: list[int], nice: int = 0):
        super().__init__(daemon=True)
        self.roots = roots
        self.nice = nice  # given to Redis's snapshot child and to a redis-server started later
        self.first_server: int | None = None
        self.samples: list[tuple[float, dict[int, tuple[int, int]]]] = []
        self.labels: dict[int, str] = {}
        self.done = False

    def _renice(self, pid: int) -> None:
        """An experiment (``--nice``): does the probe wait less when the snapshot's writer and
        the new version's load yield the CPU to the proxy?"""
        name = self.labels[pid]
        if not name.startswith("redis"):
            return
        if "bgsave" not in name and self.first_server is None:
            self.first_server = pid  # the old version: left alone
            return
        if self.nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, self.nice)

    def run(self) -> None:
        pids: list[int] = []
        rescan = 0.0
        while not self.done:
            now = time.monotonic()
            if now > rescan:
                pids = [p for root in self.roots for p in under(root)]
                for pid in pids:
                    if pid not in self.labels:
                        self.labels[pid] = label(pid)
                        self._renice(pid)
                rescan = now + 0.05
            got = {}
            for pid in pids:
                try:
                    run, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
                except (OSError, ValueError):
                    continue
                got[pid] = (int(run), int(waited))
            self.samples.append((now, got))
            time.sleep(TICK)



def window(run: dict, start: float, end: float) -> dict[str, tuple[float, float]]:
    """Per process, ms on a CPU and ms waiting for one between start and end."""
    samples = run["samples"]
    before = max((s for s in samples if s[0] <= start), default=samples[0], key=lambda s: s[0])
    after = min((s for s in samples if s[0] >= end), default=samples[-1], key=lambda s: s[0])
    out = {}
    for pid, (ran, waited) in after[1].items():
        ran0, waited0 = before[1].get(pid, (0, 0))
        if ran - ran0 > 0 or waited - waited0 > 0:
            out[run["labels"].get(pid, str(pid))] = ((ran - ran0) / 1e6, (waited - waited0) / 1e6)
    return out


def mark(e: dict) -> str:
    return e.get("step") or e.get("state") or e.get("msg") or "-"


def describe(e: dict) -> str:
    if e["kind"] == "step":
        return f"task step {e['task']}"
    if e["kind"] == "call":
        return f"call {e['name']}"
    if e["kind"] == "batch":
        return f"batch of the loop (engine: {e['engine']})"
    return f"gc gen {e['gen']} {e.get('objects', '')}"


def short(name: str) -> str:
    """A process's label without its arguments."""
    words = name.split()
    if name.startswith("redis") and len(words) > 1:
        return words[0] + ":" + words[1].rsplit(":", 1)[-1].split("[")[0]
    if "redis_load" in name:
        return "redis_load.py"
    return words[0].rsplit("/", 1)[-1]


def traced_run(keys: int, src: str | None, slow: float, status_cli: bool = False,
               nice: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cfg = config(Path(d), "warmup_seconds = 2\nwarmup_requests = 100")
        trace_path = Path(d) / "trace.jsonl"
        log = open(cfg.with_suffix(".log"), "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, str(ROOT / "loadtests" / "traced_serve.py"),
                                 str(trace_path), "serve", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=log, env=code_env(src))
        load = None
        try:
            port = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
            deadline = time.monotonic() + 120
            while "serving" not in cfg.with_suffix(".log").read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(cfg.with_suffix(".log").read_text())
                time.sleep(0.05)
            subprocess.run(["redis-cli", "-p", str(port), "DEBUG", "POPULATE", str(keys)],
                           check=True, capture_output=True, timeout=600)
            load = subprocess.Popen([sys.executable, str(ROOT / "loadtests" / "redis_load.py"),
                                     "--port", str(port), "--clients", "50",
                                     "--out", f"{d}/load.json"])
            probe = Probe(port)
            probe.start()
            sampler = Sampler([proc.pid, load.pid, os.getpid()], nice)
            sampler.start()
            time.sleep(3)
            loadavg = os.getloadavg()[0]
            began = time.monotonic()
            st = update_to_b(cfg, src, status_cli)
            ended = time.monotonic()
            time.sleep(0.5)
            probe.done = sampler.done = True
            probe.join(5)
            sampler.join(5)
            load.send_signal(signal.SIGTERM)
            load.wait(60)
        finally:
            if load is not None and load.poll() is None:
                stop(load)
            stop(proc)
            log.close()
        trace = [json.loads(line) for line in trace_path.read_text().splitlines() if line]
    return {"began": began, "ended": ended, "trace": trace, "pings": probe.pings,
            "load": loadavg, "pauses": st["update"]["pauses_ms"],
            "slow": slow, "samples": [(t, {str(k): v for k, v in got.items()})
                                      for t, got in sampler.samples],
            "labels": {str(k): v for k, v in sampler.labels.items()}}


def report(run: dict) -> list[str]:
    began, trace = run["began"], run["trace"]

    def rel(t: float) -> str:
        return f"{(t - began) * 1000:+8.1f}"

    marks = [e for e in trace if e["kind"] in ("sync_step", "state")
             or (e["kind"] == "log" and ("update" in e["msg"] or "started" in e["msg"]))]
    before = [d for s, d in run["pings"] if s < began]
    during = [(s, d) for s, d in run["pings"] if began <= s <= run["ended"]]
    lines = [f"load average {run['load']:.2f}; pauses (ms): "
             + ", ".join(f"{k} {v:.1f}" for k, v in run["pauses"].items()),
             f"probe: longest PING before {max(before[-3000:]) * 1000:.1f} ms, during "
             f"{max(d for _, d in during) * 1000:.1f} ms; {len(during)} PINGs during",
             "", "update's steps (ms from `update`):"]
    lines += [f"  {rel(e['t'])}  {e.get('step') or e.get('state') or e.get('msg')}"
              for e in marks]
    lines += ["", f"PINGs over {run['slow']} ms during the update:"]
    for start, took in during:
        if took * 1000 < run["slow"]:
            continue
        end = start + took
        phase = [e for e in marks if e["t"] <= start]
        lines.append(f"  {rel(start)}  {took * 1000:6.1f} ms  (in: "
                     f"{mark(phase[-1]) if phase else '-'})")
        for e in trace:
            if e["kind"] in ("step", "gc", "call", "batch") and e["t"] < end \
                    and e["t"] + e["ms"] / 1000 > start and e["ms"] > 2:
                what = describe(e)
                what += f" {e['ms']:.1f} ms" + (f" (cpu {e['cpu_ms']:.1f})" if "cpu_ms" in e
                                                else "")
                lines.append(f"      {rel(e['t'])}  {what}")
        for name, (ran, waited) in sorted(window(run, start, end).items(),
                                          key=lambda kv: -kv[1][0]):
            lines.append(f"      {name:40s} ran {ran:6.1f} ms, waited for a CPU {waited:6.1f} ms")
    lines += ["", "by phase: PINGs (longest, how many over --slow), the loop's batches (longest "
              "in CPU time, in wall time), gc (longest)"]
    bounds = [e for e in marks if e["kind"] in ("sync_step", "state")
              and began <= e["t"] <= run["ended"]] + [{"t": run["ended"], "step": "end"}]
    for a, b in itertools.pairwise(bounds):
        pings = [d * 1000 for s, d in during if a["t"] <= s < b["t"]]
        steps_in = [e for e in trace if e["kind"] == "batch" and a["t"] <= e["t"] < b["t"]]
        gcs_in = [e["ms"] for e in trace if e["kind"] == "gc" and a["t"] <= e["t"] < b["t"]]
        span = max(b["t"] - a["t"], 1e-9)
        name = a.get("step") or a.get("state")
        lines.append(f"  {rel(a['t'])} {name[:40]:40s} {span * 1000:7.1f} ms: PING max "
                     f"{max(pings, default=0):6.1f} ({sum(p >= run['slow'] for p in pings)} slow)"
                     f", batch cpu max {max((e['cpu_ms'] for e in steps_in), default=0):5.1f} "
                     f"wall max {max((e['ms'] for e in steps_in), default=0):6.1f}, gc max "
                     f"{max(gcs_in, default=0):5.1f}")
    lines += ["", "by phase, per process: ms on a CPU / ms waiting for one, per second of "
              "the phase"]
    pre = [{"t": began - 1.0, "step": "(the second before the update)"}, {"t": began}]
    for a, b in [tuple(pre), *itertools.pairwise(bounds)]:
        span = b["t"] - a["t"]
        if span < 0.05:
            continue
        use = window(run, a["t"], b["t"])
        top = sorted(use.items(), key=lambda kv: -kv[1][0])[:5]
        lines.append(f"  {rel(a['t'])} {(a.get('step') or a.get('state'))[:40]:40s} " + "; ".join(
            f"{short(n)} {r / span:.0f}/{w / span:.0f}" for n, (r, w) in top))
    steps = sorted((e for e in trace if e["kind"] == "step" and began <= e["t"] <= run["ended"]),
                   key=lambda e: -e["ms"])[:15]
    lines += ["", "longest task steps of the proxy during the update:"]
    lines += [f"  {rel(e['t'])}  {e['ms']:6.1f} ms (cpu {e['cpu_ms']:.1f})  {e['task']}"
              for e in steps]
    calls = [e for e in trace if e["kind"] == "call" and began - 1 <= e["t"] <= run["ended"]]
    lines += ["", "timed calls during the update:"]
    lines += [f"  {rel(e['t'])}  {e['ms']:6.1f} ms (cpu {e['cpu_ms']:.1f})  {e['name']}"
              for e in calls]
    gcs = [e for e in trace if e["kind"] == "gc" and began <= e["t"] <= run["ended"]]
    imports = [e["module"] for e in trace if e["kind"] == "import" and began - 1 <= e["t"]
               <= run["ended"]]
    lines += ["", f"modules imported during the update: {len(imports)}: "
              + ", ".join(sorted(set(imports))[:40])]
    lines += ["", f"gc collections during the update: {len(gcs)}, longest "
              f"{max((e['ms'] for e in gcs), default=0):.1f} ms"]
    lines += [f"  {rel(e['t'])}  gen 2 {e['ms']:.1f} ms (cpu {e.get('cpu_ms', 0):.1f}), "
              f"{e.get('objects')} objects after"
              for e in gcs if e["gen"] == 2]
    return lines


def summary(run: dict) -> dict:
    """One traced update in figures that CPU contention moves little: the longest CPU time of
    one task step of the proxy's loop, and of one full gc pass, during the update; beside the
    probe's longest PINGs (which it moves a lot) and the phase of the longest."""
    began, ended, trace = run["began"], run["ended"], run["trace"]
    during = [(s, d) for s, d in run["pings"] if began <= s <= ended]
    worst_start, worst = max(during, key=lambda p: p[1])
    marks = [e for e in trace if e["kind"] in ("sync_step", "state") and e["t"] <= worst_start]
    # A PING waits for the batch of the relay's loop it lands in (a task step of the loop
    # serves several) or for another task's step.
    steps = [e for e in trace if began <= e["t"] <= ended and (
        e["kind"] == "batch" or (e["kind"] == "step" and not e["task"].endswith("Relay.run")))]
    full = [e for e in trace if e["kind"] == "gc" and e["gen"] == 2 and began <= e["t"] <= ended]
    longest = max(steps, key=lambda e: e["cpu_ms"], default={"cpu_ms": 0.0, "task": "-"})
    return {"load": run["load"], "before": max(d for s, d in run["pings"] if s < began) * 1000,
            "during": worst * 1000, "phase": mark(marks[-1]) if marks else "-",
            "step_cpu": longest["cpu_ms"],
            "step_task": ".".join(
                longest.get("task", "a batch of the relay's loop").rsplit(".", 2)[-2:]),
            "full_gcs": len(full), "full_gc_cpu": max((e.get("cpu_ms", e["ms"]) for e in full),
                                                      default=0.0)}


def rounds(n: int, keys: int, codes: dict[str, str | None], slow: float,
           nice: int = 0) -> list[str]:
    """``n`` traced updates per code, interleaved: a line of :func:`summary` each; with
    ``nice``, each round is run again with the snapshot's writer and the new version reniced."""
    lines = [f"{n} traced updates per code, interleaved ({machine()}), {keys:,} keys; ms",
             "", "| code | round | load | PING before | PING during | its phase | longest "
             "step (loop batch or task), CPU | what | full gc passes | longest, CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    runs = [(f"{name} (nice {niced})" if niced else name, src, niced)
            for name, src in codes.items() for niced in ((0, nice) if nice else (0,))]
    for i in range(n):
        for name, src, niced in runs:
            got = summary(traced_run(keys, src, slow, nice=niced))
            print(name, json.dumps(got), file=sys.stderr, flush=True)
            lines.append(f"| {name} | {i + 1} | {got['load']:.1f} | {got['before']:.1f} | "
                         f"{got['during']:.1f} | {got['phase']} | {got['step_cpu']:.1f} | "
                         f"{got['step_task']} | {got['full_gcs']} | {got['full_gc_cpu']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--baseline", help="another checkout's src directory")
    parser.add_argument("--slow", type=float, default=10.0, help="ms: PINGs longer are shown")
    parser.add_argument("--out", help="also write the raw trace, PINGs and samples (JSON)")
    parser.add_argument("--status-cli", action="store_true",
                        help="start the update and poll its status with twinproxy commands")
    parser.add_argument("--show", help="only print the report of an earlier --out file")
    parser.add_argument("--nice", type=int, default=0,
                        help="an experiment: renice Redis's snapshot child and the new version to "
                        "this (with --rounds: each round run without, then with)")
    parser.add_argument("--rounds", type=int, help="this many updates per code, interleaved: "
                        "a line of figures each")
    args = parser.parse_args()
    if args.rounds:
        codes = {"twinproxy": None}
        if args.baseline:
            codes["baseline"] = args.baseline
        print("\n".join(rounds(args.rounds, args.keys, codes, args.slow, args.nice)))
        return
    if args.show:
        run = json.loads(Path(args.show).read_text())
        run["slow"] = args.slow
    else:
        run = traced_run(args.keys, args.baseline, args.slow, args.status_cli, args.nice)
        print(f"{machine()}")
        if args.out:
            Path(args.out).write_text(json.dumps(run))
    print("\n".join(report(run)))


if __name__ == "__main__":
    main()
