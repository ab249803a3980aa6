"""Client libraries' own test suites: which ones, fetched how, and run against one port.

Each suite is a test folder of a client library's source distribution on PyPI, pinned by
version and SHA-256. :func:`fetch` downloads it with ``pip download`` into ``.cache/suites/``
(ignored by git; ``scripts/setup.sh`` fills it ahead of CI) and unpacks it there; nothing of
it is copied into the repository. :func:`run_suite` runs it with the project's Python against
a host and port, and returns each test's outcome.

The suite runs against the library's own code, from the unpacked distribution, not against
whatever version of the library the virtualenv holds: pytest puts the distribution's root
first on ``sys.path`` (its test folders are packages), so ``import redis`` finds redis-py
5.2.1 beside its tests. pytest runs with plugin autoloading off and only
``conformance_plugin.py`` loaded, under a small ini file written here (the suites' own pytest
configuration lives in files the distributions do not ship, or adds coverage options): the
markers they use, nothing else.

redis-py's repository configures pytest with ``timeout = 30`` (pytest-timeout) and
``asyncio_mode = auto`` (pytest-asyncio); the suites run here need neither (no asyncio tests),
and the timeout is the runner's own: a test that does not end within ``timeout`` seconds has
its stack dumped, its pytest is killed, and the run goes on from the next test in a new pytest.
After three such hangs in a row (a proxy that stopped answering) the rest is reported as not
run. pymemcache's own setup.cfg adds ``--cov`` (pytest-cov) and ``-m unit``; its integration
tests need ``-m integration``, which is what the ini here selects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "suites"
PLUGIN_DIR = Path(__file__).resolve().parent

HANGS_IN_A_ROW = 3
"""Consecutive hung tests after which a run stops: the proxy no longer answers at all."""


@dataclass(frozen=True)
class Suite:
    """One client test suite from a pinned source distribution."""

    name: str
    protocol: str  # "redis" or "memcache": which targets it runs against
    dist: str
    version: str
    sha256: str
    paths: tuple[str, ...]  # test files, relative to the unpacked distribution
    args: tuple[str, ...]  # how it is pointed at a server; "{host}" and "{port}" filled in
    markers: tuple[str, ...]
    select: str = ""  # a -m expression, if not all tests apply
    why_select: str = ""

    @property
    def sdist(self) -> str:
        return f"{self.dist}-{self.version}.tar.gz"

    @property
    def root(self) -> Path:
        return CACHE / f"{self.dist}-{self.version}"


REDIS_PY_MARKERS = ("redismod", "pipeline", "onlycluster", "onlynoncluster", "ssl", "asyncio",
                    "replica", "experimental")
REDIS_PY = dict(dist="redis", version="5.2.1",
                sha256="16f2e22dff21d5125e8481515e386711a34cbec50f0e44413dd7d9c060a54e0f",
                protocol="redis", args=("--redis-url=redis://{host}:{port}/0",),
                markers=REDIS_PY_MARKERS,
                select="not redismod and not replica and not onlycluster",
                why_select="redismod tests need Redis Stack on localhost:6479, replica tests a "
                           "replica on localhost:6380, onlycluster tests a cluster: servers "
                           "this runner does not start")

# The rest of redis-py's tests that talk to a server: pipelines and transactions, pub/sub,
# scripts and functions, MONITOR, locks, connections and pools, client-side caching. They put
# the proxy's reply framing through every mode a connection can be in.
REDIS_PY_MORE = tuple(f"tests/test_{m}.py" for m in (
    "pipeline", "pubsub", "scripting", "function", "monitor", "lock", "encoding",
    "connection_pool", "connection", "multiprocessing", "credentials", "command_parser", "cache"))
RESP3 = REDIS_PY | {"args": (*REDIS_PY["args"], "--protocol=3")}
# In database 9, redis-py's own default: every connection says SELECT 9 first, as an
# application's does with db=9.
DB9 = REDIS_PY | {"args": ("--redis-url=redis://{host}:{port}/9",)}

SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("redis-py", paths=("tests/test_commands.py",), **REDIS_PY),
    Suite("redis-py-more", paths=REDIS_PY_MORE, **REDIS_PY),
    # Both again with RESP3 (HELLO 3 on every connection): maps, sets, doubles and pushes
    # instead of RESP2's arrays, through the proxy's framing and comparison.
    Suite("redis-py-resp3", paths=("tests/test_commands.py",), **RESP3),
    Suite("redis-py-more-resp3", paths=REDIS_PY_MORE, **RESP3),
    # The server tests again in another database (the update shares its connections with
    # clients of every database, putting them in each client's).
    Suite("redis-py-db9", paths=("tests/test_commands.py",), **DB9),
    Suite("pymemcache", protocol="memcache", dist="pymemcache", version="4.0.0",
          sha256="27bf9bd1bbc1e20f83633208620d56de50f14185055e49504f4f5e94e94aff94",
          paths=("pymemcache/test/test_integration.py",),
          args=("--server", "{host}", "--port", "{port}"),
          markers=("unit", "integration", "benchmark"), select="integration",
          why_select="the integration tests are the ones that use a server"),
)}


def fetch(suite: Suite) -> Path:
    """The unpacked source distribution of ``suite``, downloaded first if not in the cache.

    Raises:
        RuntimeError: pip could not download it, or the file is not the pinned one.
    """
    done = suite.root / ".conformance-unpacked"
    if done.exists():
        return suite.root
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / suite.sdist
    if not archive.exists():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-binary", ":all:", "--no-deps", f"{suite.dist}=={suite.version}",
             "-d", str(CACHE)], capture_output=True, text=True)
        if result.returncode != 0 or not archive.exists():
            raise RuntimeError(f"pip could not download {suite.sdist}:\n{result.stderr}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != suite.sha256:
        archive.unlink()
        raise RuntimeError(f"{suite.sdist} has SHA-256 {digest}, not the pinned {suite.sha256}")
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    done.touch()
    return suite.root


def ini_file(suite: Suite) -> Path:
    """The pytest configuration the suite runs under (see the module's docstring)."""
    path = CACHE / f"{suite.name}.ini"
    path.write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in suite.markers))
    return path


@dataclass
class Result:
    """One test's outcome, as the plugin wrote it or as the runner found it (hang, not run)."""

    outcome: str
    message: str = ""
    where: str = ""
    seconds: float = 0.0


@dataclass
class SuiteRun:
    """Everything one run of a suite against one port gave."""

    results: dict[str, Result] = field(default_factory=dict)  # in run order
    seconds: float = 0.0
    stopped: str = ""  # why the run stopped before the end, if it did
    left_target: str = ""  # the test during which the target changed (see ``check``)
    pytest_runs: int = 0


Check = Callable[[], "tuple[float, str] | None"]
"""Asked while a suite runs: None while the target is as it should be, else the wall-clock
time at which it changed and why (an update that rolled back)."""


@dataclass
class _Stop:
    """Why one pytest ended: "exit" (by itself), "hang" (a test, or pytest between tests,
    made no progress), "budget" (the run's time ran out) or "left" (the target changed)."""

    kind: str
    test: str = ""
    reason: str = ""


def run_suite(suite: Suite, host: str, port: int, workdir: Path, *, timeout: float = 15.0,
              budget: float = 1800.0, select: list[str] | None = None,
              check: Check | None = None) -> SuiteRun:
    """Run ``suite`` (or only the test ids ``select``) against ``host:port``.

    Args:
        workdir: where its pytest output, events and stacks go (kept for a look after).
        timeout: seconds a test may take (setup and teardown included) before it counts as
            hung; its pytest is then killed and the run goes on after it.
        budget: seconds the whole run may take; what has not run by then is "not run".
        check: polled while the suite runs; once it reports that the target changed, the run
            stops, and the tests that started after the change are "not run" again.

    It does not start the server: the caller points it at one that answers.
    """
    root = fetch(suite)
    workdir.mkdir(parents=True, exist_ok=True)
    run = SuiteRun()
    started = time.monotonic()
    order: list[str] = []
    remaining: list[str] | None = list(select) if select else None
    hangs_in_a_row = 0
    while True:
        attempt = run.pytest_runs
        run.pytest_runs += 1
        events = workdir / f"events-{attempt}.jsonl"
        stacks = workdir / f"stacks-{attempt}.txt"
        argv = [sys.executable, "-m", "pytest", "-c", str(ini_file(suite)), "--rootdir",
                str(root), "-p", "conformance_plugin", "-p", "no:cacheprovider", "-q",
                "-o", "console_output_style=classic"]
        if suite.select:
            argv += ["-m", suite.select]
        argv += [a.format(host=host, port=port) for a in suite.args]
        argv += remaining if remaining is not None else list(suite.paths)
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
               "PYTHONPATH": str(PLUGIN_DIR), "CONFORMANCE_EVENTS": str(events),
               "CONFORMANCE_STACKS": str(stacks), "PYTHONDONTWRITEBYTECODE": "1"}
        watch = _Watch(run, order, root, events, stacks, timeout, started + budget, check)
        with open(workdir / f"pytest-{attempt}.log", "w") as log:
            proc = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                stop = watch.follow(proc)
            finally:
                _kill(proc)
        left = [t for t in order if t not in run.results]
        if stop.kind == "hang" and stop.test:
            hangs_in_a_row = (0 if watch.ended_any else hangs_in_a_row) + 1
        elif stop.kind == "hang" and not watch.started_any:
            hangs_in_a_row = HANGS_IN_A_ROW  # not even the first test started: give up
        if stop.kind in ("budget", "left"):
            run.stopped = stop.reason
            run.left_target = stop.test if stop.kind == "left" else ""
        elif stop.kind == "hang" and hangs_in_a_row >= HANGS_IN_A_ROW:
            run.stopped = (f"{HANGS_IN_A_ROW} tests in a row hung" if stop.test else stop.reason)
        elif stop.kind == "hang" and left:
            remaining = left
            continue
        elif proc.returncode not in (0, 1, 5):
            tail = (workdir / f"pytest-{attempt}.log").read_text().splitlines()[-5:]
            run.stopped = f"pytest exited with status {proc.returncode}: {' | '.join(tail)}"
        break
    for test in order:
        run.results.setdefault(test, Result("not run", run.stopped))
    run.results = {t: run.results[t] for t in order if t in run.results} | {
        t: r for t, r in run.results.items() if t not in order}
    run.seconds = time.monotonic() - started
    return run


class _Watch:
    """Follows one pytest's events (``conformance_plugin.py``) into a :class:`SuiteRun`."""

    def __init__(self, run: SuiteRun, order: list[str], root: Path, events: Path,
                 stacks: Path, timeout: float, deadline: float, check: Check | None):
        self.run, self.order, self.root = run, order, root
        self.events, self.stacks = events, stacks
        self.timeout, self.deadline, self.check = timeout, deadline, check
        self.offset = 0
        self.current: str | None = None
        self.since = time.monotonic()
        self.started: dict[str, float] = {}  # test -> wall-clock time it started
        self.started_any = False
        self.ended_any = False

    def follow(self, proc: subprocess.Popen) -> _Stop:
        """Read events until pytest exits, or stop it: when a test outlives the timeout,
        when pytest makes no progress outside a test for twice as long (its session start,
        between tests), when the run passes its deadline, or when ``check`` reports that the
        target changed."""
        checked = 0.0
        while True:
            exited = proc.poll() is not None
            self.read()
            if exited:
                return _Stop("exit")
            now = time.monotonic()
            if self.check is not None and now - checked > 0.25:
                checked = now
                changed = self.check()
                if changed is not None:
                    return self.left(proc, *changed)
            if now > self.deadline:
                _kill(proc)
                return _Stop("budget", self.current or "", "the run took longer than its budget")
            limit = self.timeout if self.current is not None else 2 * self.timeout
            if now - self.since > limit:
                return self.hung(proc, now - self.since)
            time.sleep(0.1)

    def read(self) -> None:
        if not self.events.exists():
            return
        with open(self.events, encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            event = json.loads(line)
            if "collected" in event:
                self.order.extend(t for t in event["collected"] if t not in self.order)
            elif "start" in event:
                self.current, self.since = event["start"], time.monotonic()
                self.started[event["start"]] = event["time"]
                self.started_any = True
            elif "test" in event:
                self.run.results[event["test"]] = Result(
                    event["outcome"], event["message"], event["where"], event["seconds"])
                self.current, self.since = None, time.monotonic()
                self.ended_any = True

    def hung(self, proc: subprocess.Popen, seconds: float) -> _Stop:
        test = self.current
        where = _stack_of(proc, self.stacks, test, self.root)
        _kill(proc)
        self.read()
        if test is None:
            before = "between two tests" if self.started_any else "before its first test"
            return _Stop("hang", "", f"pytest made no progress {before} for {seconds:.0f} s "
                                     "(a suite's session start talks to the server too)")
        self.run.results[test] = Result("hang", f"no end after {seconds:.0f} s{where}", "",
                                        round(seconds, 1))
        return _Stop("hang", test)

    def left(self, proc: subprocess.Popen, when: float, reason: str) -> _Stop:
        """The target changed at ``when``: the tests that started after it ran somewhere
        else than the target, so they count as not run (the caller runs them again)."""
        _kill(proc)
        self.read()
        during = ""
        for test, began in self.started.items():
            if began <= when:
                during = test
            else:
                self.run.results.pop(test, None)
        where = f" during `{during.split('::')[-1]}`" if during else " before the first test"
        return _Stop("left", during or "(before the first test)", f"{reason}{where}")


def _stack_of(proc: subprocess.Popen, stacks: Path, test: str | None, root: Path) -> str:
    """Where the hung test waits: its innermost frame, and the innermost one of the suite's
    own code (the test file, its conftest.py and helpers)."""
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    text = stacks.read_text() if stacks.exists() else ""
    main = text.split("\n\n")[0] if text else ""
    # faulthandler lists the most recent call first: 'File "path", line N in name'.
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', main)
    if not frames:
        return ""
    folder = str(root / Path((test or "x").split("::")[0]).parent) + "/"
    own = next((f for f in frames if f[0].startswith(folder)), None)
    inner = frames[0]
    text = f"; waiting in {inner[2]} ({_short(inner[0])}:{inner[1]})"
    if own is not None:
        text += f", from {own[2]} ({os.path.relpath(own[0], root)}:{own[1]})"
    return text


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3", str(CACHE) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
