"""What the control commands show while something happens: ``divergences --follow`` prints a
divergence that comes while it runs, and ``update --wait`` on a terminal draws progress bars and
ends with the outcome."""

from __future__ import annotations

import re
import signal

import pytest
import redis

from tests.cli import serve_process, started, twinproxy
from tests.proxyrun import REDIS6, REDIS7, shipped_rules, write_config
from tests.test_cli_update import listen_address, load, wait_for

pytestmark = pytest.mark.slow

FAULTY = REDIS7.replace('"{dir}"]', '"{dir}", "--rename-command", "LRANGE", ""]')


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
        with started("divergences", "--follow", "-c", str(config)) as follow:
            # It has polled once (it shows what was there), and polls on:
            follow.wait_for_output("#1 ")
            assert follow.poll() is None
            assert client.lrange("l", 1, 1) == [b"b"]  # divergence 2, while it runs
            follow.wait_for_output("#2 ")
            follow.wait_for_output("request: LRANGE l 1 1")
            follow.send_signal(signal.SIGINT)
            done = follow.finish(15)
            assert done.returncode == 0, done.stderr
        assert "UNEXPECTED" in done.stdout and "unknown command" in done.stdout
        assert twinproxy("rollback", "-c", str(config)).returncode == 0
        client.close()


def test_update_wait_on_a_terminal_shows_progress_and_ends_with_the_outcome(tmp_path) -> None:
    config = write_config(tmp_path / "p.toml", "redis", {"v6": REDIS6, "v7": REDIS7},
                          update="warmup_seconds = 3\nwarmup_requests = 20",
                          rules=shipped_rules())
    with (serve_process(config), load(listen_address(config)),
          started("update", "--to", "v7", "--wait", "-c", str(config), terminal=True) as proc):
        done = proc.finish(120)  # all it showed on its terminal comes as stdout
    shown = done.stdout
    assert done.returncode == 0, shown
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

