"""One update attempt as the parent sees it: asked, forked, reported.

The endpoint's thread makes an :class:`Attempt` and waits on it; the serving loop forks at its
safe point and hands the child's pid and report pipe to it; a thread of the attempt reads the
child's report (one JSON line) and, once the child has reported or died, says how it ended.
The parent never waits for the child in its serving loop: a child that hangs, crashes or fails
its check costs the parent nothing but this thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Attempt", "Outcome"]


@dataclass
class Outcome:
    """How an attempt ended: an HTTP status and the JSON body the endpoint answers with."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


def describe_exit(status: int) -> str:
    """``exited with status 3`` or ``was killed by SIGSEGV``, from a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Attempt:
    """One request id's update: the version asked for, the child once forked, the outcome."""

    def __init__(self, request_id: str, to: str):
        self.request_id = request_id
        self.to = to
        self.pid: int | None = None
        self.forked = threading.Event()
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self.child_alive = False

    # ---- the serving loop's side (at the safe point) ------------------------------------------

    def forked_as(self, pid: int, report_fd: int) -> None:
        """The child exists: read its report in a thread of its own."""
        self.pid = pid
        self.child_alive = True
        self.forked.set()
        threading.Thread(target=self._read_report, args=(report_fd,), daemon=True,
                         name=f"twinproxy-report-{pid}").start()

    def fork_failed(self, error: str) -> None:
        self.finish(Outcome(500, {"error": f"fork failed: {error}"}))
        self.forked.set()

    # ---- the report's thread --------------------------------------------------------------------

    def _read_report(self, fd: int) -> None:
        data = b""
        try:
            while chunk := os.read(fd, 65536):
                data += chunk
                if data.endswith(b"\n"):
                    break
        finally:
            os.close(fd)
        report = None
        if data.strip():
            try:
                report = json.loads(data)
            except ValueError:
                report = {"error": f"the child reported {data[:200]!r}", "status": 500}
        if report is not None and "address" in report:
            self.finish(Outcome(200, {"to": self.to, "address": report["address"],
                                      "pid": self.pid, "parent_pid": os.getpid()}))
            self._reap()  # waits until the new version ends
            return
        status = self._reap()
        if report is not None:
            self.finish(Outcome(int(report.get("status", 500)), {"error": report["error"]}))
        else:
            self.finish(Outcome(500, {"error": f"the new version's process (pid {self.pid}) "
                                               f"{describe_exit(status)} before it reported"}))

    def _reap(self) -> int:
        assert self.pid is not None
        _, status = os.waitpid(self.pid, 0)
        self.child_alive = False
        return status

    def finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.done.set()

    # ---- the endpoint's side ------------------------------------------------------------

    def give_up(self, why: str) -> None:
        """The caller's time is over before the child reported: end the child (nobody will use
        it) and fail the attempt."""
        if self.pid is not None and self.child_alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.finish(Outcome(500, {"error": why}))

    @property
    def busy(self) -> bool:
        """Whether a new request (another id) must be refused: this one is still in progress,
        or its new version runs."""
        return not self.done.is_set() or (self.outcome is not None and
                                          self.outcome.status == 200 and self.child_alive)
