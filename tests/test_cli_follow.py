"""What the control commands show while something happens: ``divergences --follow`` prints a
divergence that comes while it runs, and ``update --wait`` on a terminal draws progress bars and
ends with the outcome."""

from __future__ import annotations

import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from tests.cli import serve_process
from tests.proxyrun import REDIS6, REDIS7, shipped_rules, write_config
from tests.test_cli_update import listen_address, load, twinproxy, wait_for

pytestmark = pytest.mark.slow

FAULTY = REDIS7.replace('"{dir}"]', '"{dir}", "--rename-command", "LRANGE", ""]')
ENV = {**{k: v for k, v in os.environ.items() if k not in ("TWINPROXY_CONFIG", "TWINPROXY_TOKEN")},
       "PYTHONUNBUFFERED": "1"}


class Lines:
    """A process's stdout read line by line in a thread, so that a test can wait for a line
    with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"no line with {text!r} in {self.seen}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"output ended without {text!r}: {self.seen}"
            self.seen.append(line)


def test_divergences_follow_prints_a_divergence_that_comes_while_it_runs(tmp_path) -> None:
    config = write_config(tmp_path / "f.toml", "redis", {"v7": REDIS7, "bad": FAULTY},
                          update='warmup_seconds = 600\nwarmup_requests = 1000000000\n'
                                 'on_divergence = "log"')
    with serve_process(config):
        client = redis.Redis(*listen_address(config), socket_timeout=10)
        client.rpush("l", "a", "b")
        assert twinproxy("update", "--to", "bad", "-c", str(config)).returncode == 0
        wait_for(config, lambda d: d["state"] == "mve")
        assert client.lrange("l", 0, -1) == [b"a", b"b"]  # divergence 1, logged only
        follow = subprocess.Popen(
            [sys.executable, "-m", "twinproxy.cli", "divergences", "--follow", "-c", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            out = Lines(follow)
            # It has polled once (it shows what was there), and polls on:
            out.wait_for("#1 ")
            assert follow.poll() is None
            assert client.lrange("l", 1, 1) == [b"b"]  # divergence 2, while it runs
            out.wait_for("#2 ")
            out.wait_for("request: LRANGE l 1 1")
            follow.send_signal(signal.SIGINT)
            assert follow.wait(15) == 0, follow.stderr.read() if follow.stderr else ""
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()
        text = "".join(out.seen)
        assert "UNEXPECTED" in text and "unknown command" in text
        assert twinproxy("rollback", "-c", str(config)).returncode == 0
        client.close()


def read_pty(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Everything written to the terminal until the process exits (EIO once it closed it)."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: no process has the terminal open any more
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(max(1.0, deadline - time.monotonic()))
    return b"".join(chunks).decode(errors="replace")


def test_update_wait_on_a_terminal_shows_progress_and_ends_with_the_outcome(tmp_path) -> None:
    config = write_config(tmp_path / "p.toml", "redis", {"v6": REDIS6, "v7": REDIS7},
                          update="warmup_seconds = 3\nwarmup_requests = 20",
                          rules=shipped_rules())
    with serve_process(config), load(listen_address(config)):
        controller, terminal = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "twinproxy.cli", "update", "--to", "v7", "--wait", "-c",
             str(config)], stdin=terminal, stdout=terminal, stderr=terminal, env=ENV)
        os.close(terminal)
        try:
            shown = read_pty(controller, proc, 120)
        finally:
            os.close(controller)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, shown
    # A bar is redrawn in place (carriage returns, cursor hidden meanwhile), with its label, a
    # fill and a percentage that grows as the warm-up goes.
    assert "\r" in shown.replace("\r\n", "\n")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    frames = [f.strip() for f in plain.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    bars = [f for f in frames if re.fullmatch(r"warm-up\s+\[[#-]+\]\s+\d+%", f)]
    done = [int(bar.split()[-1][:-1]) for bar in bars]
    assert len(bars) >= 2 and done == sorted(done) and done[-1] > done[0], shown
    last = [f for f in frames if f][-1]
    assert last.startswith("cutover: v7 serves now"), shown

