"""What the relay's reads cost in memory while they are held.

During an update every request and the leader's reply to it wait for the follower; a follower
that stops answering (SIGSTOP, in the fault matrix) makes them pile up until follower_timeout.
Each read must cost about its own size then, not the size of the read buffer. ``twinproxy serve``
runs as a process of its own, as an operator runs it: how malloc treats the reads depends on
what the process allocated before (a test process has done much).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtests"))

import faults


def test_requests_held_for_a_stopped_follower_cost_about_their_size(tmp_path) -> None:
    """2,000 SETs, each its own read, held with their replies for a stopped follower. A read of
    a few dozen bytes kept a whole page (``sock.recv(256 KiB)`` made a mapping of its own for
    each read, then shrank it): about 12 KiB per request with its reply; now under 2 KiB."""
    proxy = faults.Proxy(tmp_path, update="follower_timeout = 120")
    requests = 2000
    with proxy.serving():
        proxy.update()
        st = proxy.wait(lambda s: s["state"] == "mve", 60)
        assert st["state"] == "mve", st
        follower = st["follower"]["pid"]
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            os.kill(follower, signal.SIGSTOP)
            try:
                time.sleep(0.2)
                before = proxy.rss_mb()
                for i in range(requests):
                    value = b"%d" % i
                    c.sendall(faults.resp(b"SET", b"k", value))
                    assert c.recv(100) == b"+OK\r\n"
                grown = (proxy.rss_mb() - before) * 1024
                held = proxy.status()["update"]["backlog"]
            finally:
                os.kill(follower, signal.SIGCONT)
    assert held >= requests, held  # they were held indeed
    assert grown < 2 * requests, f"{grown:.0f} KiB for {requests} held requests"
