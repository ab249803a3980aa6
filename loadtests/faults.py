"""The fault matrix: hostile and careless clients, and faults of the servers and the proxy, each
under a checking load, with what clients saw and what the proxy's memory did.

    python loadtests/faults.py [--rows NAME,...] [--short] [--report FILE]

Each row starts ``twinproxy serve`` in front of Redis 7.0, or memcached for the rows that say so
(two managed versions, ``a`` serving and ``b`` to update to), loads a value set, starts a
*checking client* (a thread doing SET then GET of its own keys in a loop in the proxy's
protocol, every reply checked, each request timed), optionally starts an update and waits for
MVE, then applies the row's fault and lets it run. Reported per row: the checking client's errors
and longest request, acknowledged writes lost (every SET acknowledged is read back at the end),
the proxy's peak resident memory, its memory once the fault is over, and where the update ended
up; for a row whose update goes on, the update is then rolled back
and the proxy's memory measured again ("after the update": it must settle within 10% of its
resting size in 10 s, or the row fails). Each row also says what it promises (the update's outcome
and its reason, no client error, no write lost, no traceback in the proxy's log, and what the
row checks on its own: processes left, files left) and whether that held: ``observed`` starts
with "as expected" or "NOT AS EXPECTED".

The rows for connections at the edges (issue 15's probes 4, 6, 7, 8 and 9: an error after a
memcached ``noreply``, a flood of idle connections to the control API, more clients than the
open-files limit allows, garbage after a valid request and a request of 1.1 million arguments,
``serve`` SIGKILLed) are in ``fault_edges.py``; what every row runs with is in
``fault_harness.py``, the report's table in ``fault_report.py``.

The proxy's temporary files (the servers' directories, the sync backlog's spill file) go to a
directory of the row's own (``TMPDIR``), so that what is left behind can be seen.

``--short`` shrinks every row (fewer connections, smaller values, shorter waits) for CI, where
``tests/test_faults.py`` runs it and checks the same things. ``--report`` replaces the rows it
ran in the file's table and keeps the others, so that rows run apart end up in one table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_edges
from fault_harness import (
    Checker,
    Direct,
    Proxy,
    Row,
    Run,
    Sampler,
    call,
    ended,
    gone,
    redis_version,
    resp,
    until_ended,
)
from fault_report import COLUMNS, merge_report, table_row

# ---- the faults ---------------------------------------------------------------------------------


def big_value(proxy: Proxy, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(resp(b"SET", b"big", b"x" * size))
    assert sock.recv(100) == b"+OK\r\n"
    sock.close()


def slow_readers(count: int, gets: int, size: int, gap: float = 0.0) -> Callable[[Run], None]:
    """``count`` connections with a small receive buffer send ``gets`` pipelined GETs of a
    ``size``-byte value and never read; ``gap``: seconds between one connection's GETs and the
    next one's (0: all at once, within a few ms, so that redis-server reads many of them in one
    turn of its event loop; 0.5 s: each in a turn of its own), then 10 s (3 s short)."""
    def fault(run: Run) -> None:
        proxy = run.proxy
        big_value(proxy, size)
        socks = []
        for _ in range(count):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", proxy.port))
            s.sendall(resp(b"GET", b"big") * gets)
            socks.append(s)
            time.sleep(gap)
        time.sleep(3 if run.short else 10)
        for s in socks:
            s.close()
    return fault


def set_huge(port: int, i: int, size: int) -> None:
    """One client's SET of a ``size``-byte value (run in a process of its own)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(resp(b"SET", b"huge:%d" % i, b"y" * size))
        s.settimeout(120)
        if s.recv(100) != b"+OK\r\n":
            sys.exit(1)


def big_sets(count: int, size: int) -> Callable[[Run], None]:
    """``count`` clients each SET a ``size``-byte value at once, each from a process of its own:
    as threads of this process they would hold the interpreter the checking client needs, and
    its longest request would measure this process, not the proxy."""
    def fault(run: Run) -> None:
        fork = multiprocessing.get_context("fork")
        procs = [fork.Process(target=set_huge, args=(run.proxy.port, i, size))
                 for i in range(count)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        run.check(all(p.exitcode == 0 for p in procs), "a huge SET was not answered +OK")
    return fault



def starting_follower(proxy: Proxy, timeout: float = 60) -> tuple[int, bool]:
    """The pid of the new version's redis-server as soon as it runs (in a ``twinproxy-b-``
    directory), once its log says it loads the snapshot (or a second later); and whether it
    said so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in proxy.servers():
            try:
                workdir = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if workdir.name.startswith("twinproxy-b-"):
                log = workdir / "server.log"
                until = time.monotonic() + 1  # it says so a few ms after it starts
                while time.monotonic() < until:
                    if log.exists() and "Loading RDB" in log.read_text(errors="replace"):
                        return pid, True
                    time.sleep(0.005)
                return pid, False
        time.sleep(0.01)
    raise RuntimeError("the new version never started")


def populate(keys: int) -> Callable[[Proxy, bool], str]:
    """The leader gets ``keys`` keys (DEBUG POPULATE: its version must allow DEBUG)."""
    def setup(proxy: Proxy, short: bool) -> str:
        address = proxy.status()["leader"]["address"]
        reply = call(int(address.rsplit(":", 1)[1]), "DEBUG", "POPULATE", str(keys))
        assert reply == b"+OK\r\n", reply
        return f"the leader holds {keys:,} keys"
    return setup


def follower_killed_in_sync(run: Run) -> None:
    """An update starts, and the new version is killed while it loads the snapshot."""
    proxy = run.proxy
    proxy.update()
    pid, loading = starting_follower(proxy)
    os.kill(pid, signal.SIGKILL)
    run.notes.append(f"b killed while it {'loaded' if loading else 'started on'} the snapshot")
    until_ended(run)


def follower_signalled(sig: signal.Signals) -> Callable[[Run], None]:
    """The follower gets ``sig`` during the warm-up."""
    def fault(run: Run) -> None:
        proxy = run.proxy
        pid = proxy.status()["follower"]["pid"]
        time.sleep(0.5)
        os.kill(pid, sig)
        started = time.monotonic()
        until_ended(run)
        run.notes.append(f"rolled back {time.monotonic() - started:.1f}s after the {sig.name}")
        left = gone([pid], 10)
        run.check(not left, f"the follower (pid {pid}) is still there")
    return fault


def leader_killed(run: Run) -> None:
    """The leader is SIGKILLed during the warm-up."""
    proxy = run.proxy
    pid = proxy.status()["leader"]["pid"]
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    st = until_ended(run, 30)
    time.sleep(0.5 if run.short else 2)  # clients go on, on the former follower
    run.check(st["serving"] == "b", f"{st['serving']} serves, not b")
    run.notes.append(f"{st['serving']} serves")


def serve_terminated(run: Run) -> None:
    """SIGTERM to ``twinproxy serve`` during the warm-up, with a client connected."""
    proxy = run.proxy
    st = proxy.status()
    servers = [st["leader"]["pid"], st["follower"]["pid"]]
    run.stop_clients()  # what they wrote is checked before the servers go
    idle = socket.create_connection(("127.0.0.1", proxy.port))
    idle.sendall(resp(b"PING"))
    assert idle.recv(100) == b"+PONG\r\n"
    idle.settimeout(30)
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    closed = idle.recv(100) == b""
    idle.close()
    try:
        code = proxy.proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - started
    left = gone(servers, 5)
    dirs = sorted(p.name for p in proxy.tmp.glob("twinproxy-*"))
    run.stopped = f"serve exited {code} in {took:.1f}s"
    run.check(code == 0, f"serve exited with {code}")
    run.check(closed, "the idle client was not closed")
    run.check(not left, f"servers left running: {left}")
    run.check(not dirs, f"directories left: {dirs}")
    run.notes.append(f"an idle client closed; servers {servers} gone: {not left}; "
                     f"directories left: {len(dirs)}")


def update_fails_to_start(run: Run) -> None:
    """An update to a version that exits at start."""
    run.proxy.update()
    until_ended(run, 60)


def leader_refuses(run: Run) -> None:
    """The leader has as many clients as its ``maxclients`` allows (a busy server): it
    refuses new connections, and an update starts."""
    proxy = run.proxy
    port = int(proxy.status()["leader"]["address"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), 10) as admin:
        admin.sendall(resp("INFO", "clients"))
        time.sleep(0.2)
        count = int(re.search(rb"connected_clients:(\d+)", admin.recv(65536))[1])
        admin.sendall(resp("CONFIG", "SET", "maxclients", str(count)))
        assert admin.recv(100) == b"+OK\r\n"
        try:
            refused = call(port, "PING")
            run.notes.append(f"a new connection to a: {refused.strip().decode()!r}")
            proxy.update()
            until_ended(run, 60)
        finally:
            admin.sendall(resp("CONFIG", "SET", "maxclients", "10000"))
            admin.recv(100)


def disk_full_while_spilling(run: Run) -> None:
    """The new version takes seconds to start (as with a large snapshot); meanwhile a writer
    of 16 KB values fills the backlog, which spills to a file system that fills up."""
    proxy = run.proxy
    run.client(prefix=b"writer", size=16 * 1024, pause=0.0)
    time.sleep(0.2)
    proxy.update()
    until_ended(run, 60)
    tracebacks = proxy.tracebacks()
    run.notes.append(f"{tracebacks} tracebacks in the log")


def rows(short: bool) -> list[Row]:
    mb = 1024 * 1024
    scale = 10 if short else 1
    debug = redis_version("--enable-debug-command", "yes")
    keys = 300_000 if short else 2_000_000
    return [
        Row("slow-readers", "slow readers all at once, SINGLE",
            "the other client is served; memory bounded", False,
            slow_readers(50 // scale, 20, 10 * mb // scale), baseline=True),
        Row("slow-readers-update", "slow readers all at once, update",
            "the other client is served; memory bounded; the update goes on", True,
            slow_readers(50 // scale, 20, 10 * mb // scale), baseline=True),
        Row("slow-readers-staggered", "slow readers one after another (0.5 s apart), SINGLE",
            "the other client is served; memory bounded", False,
            slow_readers(50 // scale, 20, 10 * mb // scale, 0.5 / scale), baseline=True),
        Row("slow-readers-staggered-update", "slow readers one after another (0.5 s apart), "
            "update", "the other client is served; memory bounded; the update goes on", True,
            slow_readers(50 // scale, 20, 10 * mb // scale, 0.5 / scale), baseline=True),
        Row("big-set", "one 200 MB SET, SINGLE",
            "the other client is served; memory bounded", False, big_sets(1, 200 * mb // scale),
            baseline=True),
        Row("big-sets-update", "five 100 MB SETs, update",
            "the other client is served; memory bounded; the update goes on", True,
            big_sets(5, 100 * mb // scale), baseline=True),
        Row("follower-kill-sync", "follower SIGKILL during sync (loading the snapshot)",
            "rolls back naming the exit; clients unaffected", False, follower_killed_in_sync,
            setup=populate(keys), outcome="rolled-back",
            reason=r"exited with status -9 before it was ready",
            versions={"a": debug}),
        Row("follower-kill-mve", "follower SIGKILL during warm-up",
            "rolls back naming the crash; clients unaffected", True,
            follower_signalled(signal.SIGKILL), outcome="rolled-back",
            reason=r"stopped|closed"),
        Row("follower-stop-mve", "follower SIGSTOP during warm-up",
            "rolls back after follower_timeout; the stopped follower is killed; clients "
            "unaffected", True, follower_signalled(signal.SIGSTOP), outcome="rolled-back",
            reason=r"did not answer within", update_config="follower_timeout = 1.0"
            if short else ""),
        Row("leader-kill-mve", "leader SIGKILL during warm-up",
            "the follower takes over (a cutover naming the leader's failure); clients "
            "unaffected", True, leader_killed, outcome="cutover",
            reason=r"the leader a failed; b took over"),
        Row("serve-sigterm-mve", "SIGTERM to twinproxy serve during warm-up",
            "serve exits 0; clients closed; both servers stopped; nothing left in its "
            "temporary directory", True, serve_terminated, stops="serve exited 0 "),
        Row("new-version-exits", "the new version exits at start (a directive it rejects)",
            "rolls back naming the exit and the server's message; clients unaffected", False,
            update_fails_to_start, outcome="rolled-back",
            reason=r"exited with status 1 before it was ready.*Bad directive",
            versions={"b": redis_version("--no-such-directive", "yes")}),
        Row("leader-refuses", "the leader refuses new connections (at maxclients)",
            "the update fails naming the refusal; clients already connected unaffected", False,
            leader_refuses, outcome="rolled-back", reason=r"max number of clients"),
        Row("disk-full-spill", "disk full while the sync backlog spills (1 MB tmpfs)",
            "rolls back naming the spill failure; no client connection closed; no traceback",
            False, disk_full_while_spilling, outcome="rolled-back",
            reason=r"could not be spilled to disk.*No space left",
            update_config="spill_bytes = 0",
            versions={"b": redis_version(delay=2 if short else 5)}, tmpfs="1m"),
        *edge_rows(short),
    ]


def edge_rows(short: bool) -> list[Row]:
    """Issue 15's probes 4, 6, 7, 8 and 9 (``fault_edges.py``)."""
    return [
        Row("mc-noreply-error", "memcached: 300 clients each send an unknown command after a "
            "noreply set, then close",
            "each gets memcached's ERROR then the close; no socket of the proxy left in "
            "CLOSE-WAIT; descriptors back to resting; an update started afterwards cuts over",
            False, fault_edges.error_after_noreply(100 if short else 300), protocol="memcache",
            outcome="cutover"),
        Row("control-flood", "1,000 idle connections to the control socket during an update; "
            "a 20,000-deep JSON body",
            "status and rollback answer within 2 s, the twinproxy status command every time, "
            "with the flood kept up; the body gets a 400; no traceback", True,
            fault_edges.control_flood(300 if short else 1000, 20_000,
                                                1 if short else 5), outcome="rolled-back",
            reason=r"rollback requested"),
        Row("open-files-limit", "serve under an open-files limit of 256, more idle clients "
            "than it allows",
            "clients past the limit refused at once with Redis's error; those connected and "
            "the checking client served; the control API answers; an update then cuts over; "
            "no traceback", False, fault_edges.past_the_open_files_limit(10 if short else 40),
            wrapper=["prlimit", "--nofile=256:256", "--"], outcome="cutover"),
        Row("garbage-huge-args", "a valid request then garbage in one packet; RPUSH of 1.1 "
            "million arguments",
            "the reply, redis-server's error, then the close, as directly; RPUSH answered "
            ":1100000 as directly", False, fault_edges.garbage_and_many_arguments,
            baseline=True),
        Row("serve-kill-memcached", "SIGKILL to twinproxy serve during warm-up, memcached "
            "-u nobody",
            "no memcached left running (both versions), their ports free", True,
            fault_edges.serve_killed, protocol="memcache", stops="serve killed"),
        Row("serve-kill-redis", "SIGKILL to twinproxy serve during warm-up, Redis",
            "no redis-server left running (both versions), their ports free", True,
            fault_edges.serve_killed, stops="serve killed"),
    ]


@contextlib.contextmanager
def temporary_files(row: Row, d: Path) -> Iterator[Path | None]:
    """The directory the proxy's temporary files go to: a tmpfs of the row's size if it asks
    for one (None when it cannot be mounted: not root)."""
    tmp = d / "tmp"
    tmp.mkdir()
    if row.tmpfs is None:
        yield tmp
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={row.tmpfs}", "tmpfs",
                              str(tmp)], capture_output=True).returncode == 0
    try:
        yield tmp if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(tmp)], check=False)


def longest_directly(row: Row) -> tuple[float, list[str]]:
    """The checking client's longest request, in ms, under the row's fault with no proxy, and
    its errors (a request that waited past its 30 s timeout, say)."""
    with tempfile.TemporaryDirectory() as d, Direct(Path(d)).serving() as direct:
        run = Run(direct, False, [Checker(direct.port)])
        run.clients[0].start()
        time.sleep(0.5)
        row.fault(run)
        time.sleep(1)
        run.clients[0].stop()
        return round(run.clients[0].longest * 1000, 1), run.clients[0].errors


def run_row(row: Row, short: bool) -> dict:
    directly, direct_errors = longest_directly(row) if row.baseline and not short \
        else ("n/a", [])
    with tempfile.TemporaryDirectory() as d, temporary_files(row, Path(d)) as tmp:
        if tmp is None:
            return {"skipped": f"cannot mount a {row.tmpfs} tmpfs (needs root)"}
        proxy = Proxy(Path(d), update=row.update_config, versions=row.versions, tmp=tmp,
                      protocol=row.protocol, wrapper=row.wrapper)
        with proxy.serving():
            notes = [row.setup(proxy, short)] if row.setup is not None else []
            if row.update:
                proxy.update()
                proxy.wait(lambda s: s["state"] == "mve")
            resting = proxy.rss_mb()
            if direct_errors:  # the server alone failed the checking client too
                notes.append(f"directly, the checking client had {len(direct_errors)} errors "
                             f"too: {direct_errors[:2]}")
            run = Run(proxy, short, [Checker(proxy.port, protocol=proxy.protocol)], notes)
            sampler = Sampler(proxy)
            sampler.start()
            run.clients[0].start()
            time.sleep(0.5)
            row.fault(run)
            if run.stopped is None:
                time.sleep(0.5 if short else 1)
            for checker in run.clients:
                checker.stop()
            if run.stopped is None:
                time.sleep(1 if short else 2)
            after = proxy.rss_mb() if proxy.running else None
            sampler.done.set()
            if run.stopped is None:
                st = proxy.status()
                lost: int | str = sum(checker.lost() for checker in run.clients)
                servers = len(proxy.servers())
                last = st["last_update"] if st["state"] == "single" else None
                state = st["state"] + (f" ({last['outcome']}"
                                       + (f": {last['reason']})" if last["reason"] else ")")
                                       if last else "")
            else:  # the proxy and its servers are gone, and their data with them
                st, lost, servers, state = None, run.lost, None, run.stopped
            ended_mb: float | str = "n/a"
            if st is not None and st["state"] == "mve":
                # Memory once the update is over (rolled back), for the rows it goes on in.
                proxy.control("POST", "/rollback")
                if proxy.wait(lambda s: s["state"] == "single", 60)["state"] == "single":
                    # What is still in transit (replies the leader was sending to clients
                    # that closed) goes within seconds: the size it settles at, in 10 s at most.
                    deadline = time.monotonic() + 10
                    while True:
                        time.sleep(0.5)
                        ended_mb = round(proxy.rss_mb(), 1)
                        if ended_mb <= resting * 1.1 or time.monotonic() > deadline:
                            break
            tracebacks = proxy.tracebacks()
            checker = run.clients[0]
            errors = [e for c in run.clients for e in c.errors]
            result = {
                "client errors": len(errors), "samples": errors[:3],
                "longest request ms": round(checker.longest * 1000, 1),
                "longest directly ms": directly,
                "checked operations": sum(c.ops for c in run.clients),
                "acknowledged writes lost": lost,
                "resting MB": round(resting, 1), "peak MB": round(sampler.peak, 1),
                "after MB": round(after, 1) if after is not None else "n/a",
                "after the update MB": ended_mb,
                "state": state, "tracebacks": tracebacks, "notes": run.notes,
            }
            failures = [*run.failures, *broken_promises(row, st, result, servers)]
            result["failures"] = failures
            result["observed"] = "; ".join(
                [f"NOT AS EXPECTED: {'; '.join(failures)}" if failures else "as expected",
                 *run.notes])
            return result


def broken_promises(row: Row, st: dict | None, result: dict, servers: int | None) -> list[str]:
    """What the row promised and did not hold, besides what its fault checked itself."""
    out = []
    if result["client errors"]:
        out.append(f"{result['client errors']} client errors: {result['samples']}")
    if result["acknowledged writes lost"] != 0:
        out.append(f"{result['acknowledged writes lost']} acknowledged writes lost")
    if result["tracebacks"]:
        out.append(f"{result['tracebacks']} tracebacks in the proxy's log")
    if st is None:
        return out
    last = st["last_update"] or {}
    if row.outcome is None:
        want = "mve" if row.update else "single"
        if st["state"] != want or (not row.update and last):
            out.append(f"the state is {result['state']}, not {want}")
    elif not ended(st) or last["outcome"] != row.outcome \
            or not re.search(row.reason, last["reason"] or "", re.S):
        out.append(f"the update ended {last.get('outcome')} ({last.get('reason')}), not "
                   f"{row.outcome} ({row.reason})")
    ended_mb = result["after the update MB"]
    if ended_mb != "n/a" and ended_mb > result["resting MB"] * 1.1:
        out.append(f"{ended_mb} MB once the update was rolled back, more than 10% over the "
                   f"{result['resting MB']} MB before the fault")
    want_servers = 2 if st["state"] == "mve" else 1
    if servers != want_servers:
        out.append(f"{servers} servers running, not {want_servers}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated row names (default: all)")
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--report", help="put the rows run in this file's table")
    args = parser.parse_args()
    every = rows(args.short)
    chosen = every
    if args.rows:
        wanted = set(args.rows.split(","))
        unknown = wanted - {r.name for r in every}
        if unknown:
            parser.error(f"no rows {sorted(unknown)}; rows: {[r.name for r in every]}")
        chosen = [r for r in every if r.name in wanted]
    ran = {}
    for row in chosen:
        r = run_row(row, args.short)
        print(row.name, json.dumps(r), flush=True)
        ran[row.title] = table_row(row, r)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    print("\n".join(lines + ["| " + " | ".join(values) + " |" for values in ran.values()]))
    if args.report:
        path = Path(args.report)
        path.write_text(merge_report(path, ran, [r.title for r in every]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
