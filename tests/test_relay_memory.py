"""What the relay's reads cost in memory while they are held.

During an update every request and the leader's reply to it wait for the follower; a follower
that stops answering (SIGSTOP, in the fault matrix) makes them pile up until follower_timeout.
Each read must cost about its own size then, not the size of the read buffer. ``twinproxy serve``
runs as a process of its own, as an operator runs it: how malloc treats the reads depends on
what the process allocated before (a test process has done much).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtests"))

import fault_harness
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


def test_replies_held_for_clients_that_do_not_read_are_given_back_when_they_close(
        tmp_path) -> None:
    """During an update, while another client is served, 20 clients 0.1 s apart send 20 GETs
    of a 1 MB value each and do not read: the proxy holds about client_output_pause (4 MiB) for
    each. Once they close, its memory is back near where it was: the freed replies are given
    back to the system (twinproxy.heap). Without that it stayed 96 to 156 MB up, 10 s after they
    closed, in three runs (268 MB with 50 clients of 10 MB values)."""
    proxy = faults.Proxy(tmp_path)
    with proxy.serving():
        proxy.update()
        st = proxy.wait(lambda s: s["state"] == "mve", 60)
        assert st["state"] == "mve", st
        assert faults.call(proxy.port, "SET", "big", b"v" * (1 << 20)) == b"+OK\r\n"
        before = proxy.rss_mb()
        slow = []
        checker = fault_harness.Checker(proxy.port)  # another client, served meanwhile
        checker.start()
        try:
            for _ in range(20):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", proxy.port))
                s.sendall(faults.resp("GET", "big") * 20)
                slow.append(s)
                time.sleep(0.1)
            peak, _ = fault_harness.poll(proxy.rss_mb, lambda mb: mb > before + 60, 30)
            assert peak > before + 60, (before, peak)  # they are held indeed
        finally:
            for s in slow:
                s.close()
            checker.stop()
        after, _ = fault_harness.poll(proxy.rss_mb, lambda mb: mb < before + 10, 10)
        assert proxy.wait(lambda s: True)["state"] == "mve"
    assert after < before + 10, f"{before:.1f} MB before, {peak:.1f} MB held, {after:.1f} after"


def test_requests_a_burst_of_clients_sent_during_an_update_are_given_back(tmp_path) -> None:
    """During an update, 200 clients send sixteen 100 KB SETs each at once (as redis-benchmark's
    clients do) and read their replies, then close. The proxy reads them faster than the
    servers take them and holds 150 to 300 MB meanwhile; once they have gone its memory is back
    near where it was (twinproxy.heap: once the traffic has calmed, the process's growth since
    the last trim is given back). Before, the trim came only after clients' unsent replies, and
    25 to 180 MB stayed, in five runs (up to 940 MB with redis-benchmark's 1,000 clients)."""
    proxy = faults.Proxy(tmp_path)
    clients, sets, size = 200, 16, 100_000
    with proxy.serving():
        proxy.update()
        st = proxy.wait(lambda s: s["state"] == "mve", 60)
        assert st["state"] == "mve", st
        time.sleep(1.0)  # the relay's checks have seen the heap before the burst
        before = proxy.rss_mb()
        socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
                 for _ in range(clients)]
        burst = b"".join(faults.resp("SET", f"k{i}", b"v" * size) for i in range(sets))
        peak = before
        try:
            for s in socks:
                s.setblocking(False)
            unsent = {s: memoryview(burst) for s in socks}
            replies = dict.fromkeys(socks, b"")
            deadline = time.monotonic() + 60
            while any(r.count(b"\r\n") < sets for r in replies.values()):
                assert time.monotonic() < deadline, "the burst was not answered in 60 s"
                for s in socks:
                    if unsent[s]:
                        with contextlib.suppress(BlockingIOError):
                            unsent[s] = unsent[s][s.send(unsent[s]):]
                    with contextlib.suppress(BlockingIOError):
                        replies[s] += s.recv(65536)
                peak = max(peak, proxy.rss_mb())
        finally:
            for s in socks:
                s.close()
        assert all(r == b"+OK\r\n" * sets for r in replies.values())
        after, _ = fault_harness.poll(proxy.rss_mb, lambda mb: mb < before + 15, 10)
        assert proxy.wait(lambda s: True)["state"] == "mve"  # the update went on meanwhile
    assert peak > before + 60, (before, peak)  # they were held indeed
    assert after < before + 15, f"{before:.1f} MB before, {peak:.1f} MB held, {after:.1f} after"


def test_a_client_sending_to_a_stopped_leader_during_an_update_is_held_back(tmp_path) -> None:
    """During an update the leader stops reading (SIGSTOP) while a client sends 100 KB SETs as
    fast as it can, and another client waits for a GET. Their requests go on one shared
    connection to the leader: once what waits to be written there passes HIGH_WATER, the
    clients are not read until it drains, as a client's own server connection does in SINGLE
    mode. Before, the proxy read everything the client sent: 2.7 GB held in 8 s. When the
    leader goes on, every SET is answered, the other client too, and the update goes on."""
    proxy = faults.Proxy(tmp_path, update="follower_timeout = 120")
    one = faults.resp("SET", "k", b"v" * 100_000)
    with proxy.serving():
        proxy.update()
        st = proxy.wait(lambda s: s["state"] == "mve", 60)
        assert st["state"] == "mve", st
        leader = st["leader"]["pid"]
        sender = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        other = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        assert faults.call(proxy.port, "SET", "g", "1") == b"+OK\r\n"
        before = proxy.rss_mb()
        sent = 0
        os.kill(leader, signal.SIGSTOP)
        try:
            sender.settimeout(0.1)
            until = time.monotonic() + 3
            while time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    sent += sender.send(one * 10)
            other.sendall(faults.resp("GET", "g"))
            held = proxy.rss_mb() - before
        finally:
            os.kill(leader, signal.SIGCONT)
        sender.settimeout(30)
        rest = -sent % len(one)
        sender.sendall(one[len(one) - rest:])  # (the last SET, begun)
        sets = (sent + rest) // len(one)
        replies = b""
        while len(replies) < 5 * sets:
            got = sender.recv(65536)
            assert got, replies[-100:]
            replies += got
        assert replies == b"+OK\r\n" * sets
        assert other.recv(100) == b"$1\r\n1\r\n"
        st = proxy.wait(lambda s: True)
        assert st["state"] == "mve" and st["update"]["divergences"] == 0, st
        sender.close()
        other.close()
    assert sent < 64 << 20, f"the proxy took {sent >> 20} MB from a client for a stopped leader"
    assert held < 32, f"{held:.0f} MB held for a stopped leader"
