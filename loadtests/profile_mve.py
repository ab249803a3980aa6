"""Where the proxy's time goes in MVE (or SINGLE) mode: py-spy on ``twinproxy serve`` while
redis-benchmark (or memcslap) runs through it.

    python loadtests/profile_mve.py [--mode mve|single] [--pipeline 16] [--requests 400000]
                                    [--gil] [--rate 500] [--top 30] [--src OTHER/src]
                                    [--memcached] [--size 3] [--clients 50] [--repeat 1]
                                    [--tests set,get] [--reconnect] [--resp3]
                                    [--shared-after N]

One ``twinproxy serve`` in front of Redis 7.0 (two managed versions, as in bench_mve.py),
brought into MVE by an update whose warm-up does not end; ``py-spy record -f raw`` samples it
for the whole of ``redis-benchmark -t set,get -c 50 -P N`` (``--tests``: another ``-t``).
``--memcached``: two managed memcached versions instead (as in ``bench_matrix.py
--memcached``), under memcslap's set then get test with 50 clients (one request out at a time:
``--pipeline`` does not apply). Printed: the run's requests/s, the functions with the most
samples of their own (self) and those on the stack the most (total), as shares of all samples.
``--repeat K`` runs the load K times under the profile, each with new connections: with few
requests per client (``--clients 1000 --requests 16000 --repeat 20``) what it samples is what a
new client costs. ``--gil`` keeps only the samples holding the GIL (the Python alone, without
the waits in system calls and in trio's epoll). ``--reconnect``: redis-benchmark's ``-k 0``, a
new connection for each request, so that nearly all it samples is a client's start and end.
``--resp3``: each connection starts with ``HELLO 3`` (redis-benchmark's ``-3``).
``--shared-after N``: the update's ``[update] shared_after`` (1 when not given): with 0 a new
client's first read is not held for its protection (see loadtests/first_read.py).

py-spy must be installed (``pip install py-spy``) and allowed to read the process (root, or
``ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_matrix import held_config, memcslap
from bench_mve import enter_mve, serve_process
from common import redis_benchmark, rps

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def where(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: samples add up per function."""
    m = FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


# Where a sample's own function belongs, first match wins: (category, names or file endings).
CATEGORIES = [
    ("waiting for work (trio's epoll_wait)", ("EpollIOManager.", "_io_epoll.py")),
    ("system calls: send (Output.send, its wrapper included)", ("Output.send ",)),
    ("system calls: recv and the copy out of the read buffer",
     ("SingleMode._client_readable ", "SingleMode._server_readable ", "Loop.receive ")),
    ("framing: requests counted, replies walked (readers, C scans)",
     ("RespRequestReader.", "RespReplyParser.take", "MemcacheRequestReader.",
      "MemcacheReplyReader.", "replies.py", "tokens.py", "RespReplyParser._skip",
      "RespReplyParser.next", "RespReplyParser._parse", "HeldChunks.", "fast.py",
      "RespReplyReader.", "requests.py", "reply_reader.py")),
    ("comparison (the follower's replies against the leader's)",
     ("RespReplyParser.match", "FollowerFlow._run_followed", "FollowerFlow._followed",
      "Verdicts.", "verdicts.py", "compare.py")),
    ("follower path (release, backlog, its sends)",
     ("FollowerFlow.", "Backlog.", "backlog.py")),
    ("ordering (places among runs and keys, the sequencer, sending in turn)",
     ("Side.", "Sequencer.", "ordering.py", "sides.py", "Dispatch._dispatch", "Dispatch._send",
      "LeaderFlow.runs_allowed", "LeaderFlow._admit", "RedisOrderState.")),
    ("leader path (runs in, replies routed to clients)",
     ("LeaderFlow.", "Dispatch.", "Engine.", "UpdateDriver.", "Exchange.", "Leg.", "Request.",
      "records.py", "events.py", "commands.py", "SingleMode._client_data",
      "Relay._batch", "dispatch.py", "leader.py", "engine.py", "driver.py")),
    ("the loop and trio's scheduler",
     ("Loop.", "Output.", "trio/", "_run.py", "_traps.py", "_ki.py")),
]


def category(frame: str) -> str:
    for name, marks in CATEGORIES:
        if any(mark in frame for mark in marks):
            return name
    return "other"


def summary(raw: str, top: int) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [where(f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
            kinds[category(stack.split(";")[-1] + " " + frames[-1] + " ")] += n
        for name in set(frames):
            total[name] += n
    lines = [f"{samples} samples", "", "| where (by the sample's own function) | share |",
             "|---|---|"]
    lines += [f"| {name} | {n / samples:.1%} |" for name, n in kinds.most_common()]
    lines += ["", "| function (self) | share |", "|---|---|"]
    lines += [f"| `{name}` | {n / samples:.1%} |" for name, n in own.most_common(top)]
    lines += ["", "| function (on the stack, below the loop) | share |", "|---|---|"]
    lines += [f"| `{name}` | {n / samples:.1%} |" for name, n in total.most_common()
              if n < 0.7 * samples][:top]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("mve", "single"), default="mve")
    parser.add_argument("--pipeline", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400_000)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--stopped", action="store_true",
                        help="stop the proxy for each sample (slower, but under Python 3.11 "
                             "--nonblocking puts samples on the line of a call not yet entered)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--src", help="profile another checkout's src directory")
    parser.add_argument("--raw", help="also keep py-spy's raw output in this file")
    parser.add_argument("--memcached", action="store_true",
                        help="memcached under memcslap instead of Redis under redis-benchmark")
    parser.add_argument("--size", type=int, default=3, help="redis-benchmark's -d (SET's value)")
    parser.add_argument("--tests", default="set,get", help="redis-benchmark's -t")
    parser.add_argument("--clients", type=int, default=50, help="the load's connections")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the load, profiled")
    parser.add_argument("--reconnect", action="store_true",
                        help="a new connection for each request (redis-benchmark's -k 0)")
    parser.add_argument("--resp3", action="store_true",
                        help="RESP3 connections (redis-benchmark's -3)")
    parser.add_argument("--shared-after", type=int,
                        help="[update] shared_after (the default, 1, when not given)")
    args = parser.parse_args()
    if (args.reconnect or args.resp3) and args.memcached:
        parser.error("--reconnect and --resp3 are redis-benchmark's: memcslap has neither")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as d:
        cfg = held_config(Path(d), "memcache" if args.memcached else "redis",
                          "" if args.shared_after is None else
                          f"shared_after = {args.shared_after}")

        def load(requests: int) -> dict[str, dict[str, float]]:
            if args.memcached:
                return memcslap(port, args.clients, requests, probe=False)
            return redis_benchmark(port, args.pipeline, clients=args.clients, requests=requests,
                                  size=args.size, tests=args.tests, reconnect=args.reconnect,
                                   resp3=args.resp3)

        with serve_process(cfg, args.src) as (port, proc):
            if args.mode == "mve":
                enter_mve(cfg, args.src)
            load(20_000)  # warm up
            out = Path(d) / "raw.txt"
            record = subprocess.Popen(
                [spy, "record", "-p", str(proc.pid), "-r", str(args.rate), "-f", "raw",
                 "-o", str(out), *([] if args.stopped else ["--nonblocking"]),
                 *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(args.repeat):
                    result = load(args.requests)
            finally:
                record.send_signal(subprocess.signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    record.wait(30)
                if record.poll() is None:
                    record.kill()
                    record.wait()
            raw = out.read_text()
            if args.raw:
                Path(args.raw).write_text(raw)
    print(f"{'memcached ' if args.memcached else ''}{args.mode} -P "
          f"{1 if args.memcached else args.pipeline}, {args.clients} clients: "
          f"{rps(result):,.0f} requests/s"
          f"{' (GIL samples)' if args.gil else ''}")
    print("\n".join(summary(raw, args.top)))


if __name__ == "__main__":
    main()
