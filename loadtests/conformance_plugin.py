"""What a client library's own test suite did, test by test, written as it happens.

``loadtests/conformance.py`` loads this module into the pytest that runs a client suite
(``-p conformance_plugin``, with plugin autoloading off, so that nothing else installed in the
virtualenv takes part). It appends one JSON object per line to the file named by
``$CONFORMANCE_EVENTS`` and flushes each line at once:

    {"collected": [nodeid, ...]}             once, the tests in the order they will run
    {"start": nodeid, "time": ...}           a test begins (before its setup), wall clock
    {"test": nodeid, "outcome": ..., "message": ..., "where": ..., "seconds": ...}
                                             the test ended (after its teardown)

Written as it happens, not at the end (as a JUnit file would be), because the runner kills a
pytest whose test does not end: what finished before is on disk, and the test that hung is the
last ``start`` without its end. Before it kills, the runner sends SIGUSR1, on which
``faulthandler`` writes every thread's stack to ``$CONFORMANCE_STACKS``: that tells where the
test waited.

An outcome is one of passed, failed, error (setup or teardown failed), skipped, xfailed,
xpassed. The message is the first line of the failure (or the skip reason); ``where`` is the
line of the test's own file that the failure came through.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import time

import pytest


class Recorder:
    """Collects each test's setup, call and teardown reports into one outcome."""

    def __init__(self, path: str, stacks: str | None):
        self.out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the session)
        self.stacks = open(stacks, "w", encoding="utf-8") if stacks else None  # noqa: SIM115
        if self.stacks is not None:
            faulthandler.register(signal.SIGUSR1, file=self.stacks, all_threads=True)
        self.reports: dict[str, list[pytest.TestReport]] = {}
        self.started: dict[str, float] = {}

    def write(self, record: dict) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.write({"collected": [item.nodeid for item in items]})

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.started[nodeid] = time.monotonic()
        self.reports[nodeid] = []
        self.write({"start": nodeid, "time": time.time()})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports.setdefault(report.nodeid, []).append(report)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        outcome, message, where = summarize(self.reports.pop(nodeid, []))
        seconds = time.monotonic() - self.started.pop(nodeid, time.monotonic())
        self.write({"test": nodeid, "outcome": outcome, "message": message, "where": where,
                    "seconds": round(seconds, 3)})


def summarize(reports: list[pytest.TestReport]) -> tuple[str, str, str]:
    """One test's outcome, first message line and place, from its phases' reports."""
    by_phase = {r.when: r for r in reports}
    setup, call, teardown = (by_phase.get(p) for p in ("setup", "call", "teardown"))
    if setup is not None and setup.failed:
        return ("error", *_failure(setup, "setup"))
    if setup is not None and setup.skipped:
        return ("xfailed" if hasattr(setup, "wasxfail") else "skipped", _skip_reason(setup), "")
    outcome, message, where = "passed", "", ""
    if call is not None:
        xfail = hasattr(call, "wasxfail")
        if call.failed:
            outcome = "failed"
            message, where = _failure(call, "")
        elif call.skipped:
            outcome = "xfailed" if xfail else "skipped"
            message = call.wasxfail if xfail else _skip_reason(call)
        elif xfail:
            outcome = "xpassed"
    if teardown is not None and teardown.failed and outcome == "passed":
        return ("error", *_failure(teardown, "teardown"))
    return outcome, message, where


def _failure(report: pytest.TestReport, phase: str) -> tuple[str, str]:
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    message = lines[0] if lines else ""
    if crash is None and lines:  # a plain string: its last line names the error
        message = lines[-1]
    if phase:
        message = f"(in {phase}) {message}"
    return message, _where(report)


def _where(report: pytest.TestReport) -> str:
    """The last line of the test's own file in the failure's traceback."""
    test_file = report.location[0]
    entries = getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", [])
    found = ""
    for entry in entries:
        loc = getattr(entry, "reprfileloc", None)
        if loc is not None and str(loc.path).endswith(test_file):
            found = f"{test_file}:{loc.lineno}"
    return found


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get("CONFORMANCE_EVENTS")
    if path:
        config.pluginmanager.register(
            Recorder(path, os.environ.get("CONFORMANCE_STACKS")), "conformance-recorder")
