"""Large requests during an update: kept on disk, not in the proxy's memory, and equal on both
versions.

During an update a request waits for both versions; a SET of a large value was held whole for
that, at two or three times its size (five 100 MB SETs took the proxy to 1.5 GB). Now a value of
1 MiB or more is written to a file as it comes and sent to each version from there
(``twinproxy.engine.large``, ``twinproxy.spool``). ``twinproxy serve`` runs as a process of its
own with two managed Redis 7.0 servers, as in the fault matrix (``loadtests/faults.py``).
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtests"))

import faults

MB = 1024 * 1024


def _call(address: str, *words: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(faults.resp(*words))
        out = b""
        while True:
            data = s.recv(1 << 20)
            if not data:
                return out
            out += data
            if _complete(out):
                return out


def _complete(reply: bytes) -> bool:
    """Whether ``reply`` is one whole RESP reply (simple, integer, error or bulk)."""
    if not reply.endswith(b"\r\n"):
        return False
    if reply[:1] != b"$":
        return True
    header, _, rest = reply.partition(b"\r\n")
    size = int(header[1:])
    return size < 0 or len(rest) >= size + 2


def _set(port: int, *words: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(faults.resp(*words))
        assert s.recv(100) == b"+OK\r\n"


def test_large_sets_during_an_update_stay_out_of_memory_and_reach_both(tmp_path) -> None:
    """Four 16 MB SETs at once during an update (one with a relative expiry, which the follower
    gets rewritten as the leader's moment) and an MSET of two 4 MB values: the proxy's memory
    grows by a few MB, not the 72 MB sent (it grew by about 250 MB before); a client doing
    small requests meanwhile is served; both versions hold the same values; the update goes on;
    after a rollback the proxy is back within 10% of its resting size."""
    proxy = faults.Proxy(tmp_path)
    size = 16 * MB
    with proxy.serving():
        proxy.update()
        st = proxy.wait(lambda s: s["state"] == "mve", 60)
        assert st["state"] == "mve", st
        resting = proxy.rss_mb()
        sampler = faults.Sampler(proxy)
        sampler.start()
        checker = faults.Checker(proxy.port)
        checker.start()
        values = [bytes([65 + i]) * size for i in range(4)]
        words = [[b"SET", b"huge:%d" % i, values[i]] for i in range(4)]
        words[3] += [b"EX", b"1000"]
        pair = [b"m" * (4 * MB), b"n" * (4 * MB)]  # two large values in one request
        words.append([b"MSET", b"pair:0", pair[0], b"pair:1", pair[1]])
        threads = [threading.Thread(target=_set, args=(proxy.port, *w)) for w in words]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        checker.stop()
        sampler.done.set()
        sampler.join()
        assert checker.errors == [], checker.errors
        st = proxy.status()
        assert st["state"] == "mve", st
        grown = sampler.peak - resting
        assert grown < 24, f"the proxy grew by {grown:.0f} MB for 72 MB of SETs"
        # Both versions have every value, whole (the follower once the engine sent it).
        proxy.wait(lambda s: s["update"]["backlog"] == 0, 30)
        leader, follower = st["leader"]["address"], st["follower"]["address"]
        keys = [b"huge:%d" % i for i in range(4)] + [b"pair:0", b"pair:1"]
        for key, value in zip(keys, values + pair, strict=True):
            want = b"$%d\r\n%s\r\n" % (len(value), value)
            for address in (leader, follower):
                got = _call(address, b"GET", key)
                assert hashlib.sha1(got).digest() == hashlib.sha1(want).digest(), \
                    (address, key, got[:40], len(got))
        ttl = int(_call(follower, b"TTL", b"huge:3")[1:])
        assert 900 < ttl <= 1000, ttl
        proxy.control("POST", "/rollback")
        st = proxy.wait(lambda s: s["state"] == "single", 60)
        assert st["state"] == "single", st
        after = proxy.rss_mb()
        assert after < resting * 1.1, f"resting {resting:.1f} MB, after the update {after:.1f}"


def test_an_update_that_ends_while_a_large_value_comes_in_passes_the_rest_on(tmp_path) -> None:
    """A client sends half of a 4 MB SET during an update, the update is rolled back, then the
    client sends the rest: the proxy sends what it kept on disk, then the rest as it comes; the
    client gets its reply and the leader holds the value whole. Then the same with a cutover
    (the new version gets it)."""
    proxy = faults.Proxy(tmp_path)
    with proxy.serving():
        for end, key in (("rollback", b"half:1"), ("promote", b"half:2")):
            proxy.update()
            st = proxy.wait(lambda s: s["state"] == "mve", 60)
            assert st["state"] == "mve", st
            value = key * (4 * MB // len(key))
            size = len(value)
            request = faults.resp(b"SET", key, value)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
                s.sendall(request[:len(request) // 2])
                time.sleep(0.3)  # read by the proxy
                proxy.control("POST", f"/{end}")
                st = proxy.wait(lambda s: s["state"] == "single", 60)
                assert st["state"] == "single", st
                s.sendall(request[len(request) // 2:])
                assert s.recv(100) == b"+OK\r\n"
                s.sendall(faults.resp(b"GET", key))
                want = b"$%d\r\n%s\r\n" % (size, value)
                got = b""
                while len(got) < len(want):
                    data = s.recv(1 << 20)
                    assert data, got[:40]
                    got += data
                assert got == want, (len(got), got[:40])
            assert _call(st["leader"]["address"], b"STRLEN", key) == b":%d\r\n" % size


def _replies(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole RESP replies (simple, integer, error, bulk or an array of bulks)."""
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        data = sock.recv(1 << 20)
        assert data, (out, buf[:80])
        buf += data
        while buf and len(out) < count:
            end = _reply_end(buf, 0)
            if end is None:
                break
            out.append(buf[:end])
            buf = buf[end:]
    return out


def _reply_end(buf: bytes, at: int) -> int | None:
    nl = buf.find(b"\r\n", at)
    if nl < 0:
        return None
    kind, header = buf[at : at + 1], buf[at + 1 : nl]
    if kind == b"$":
        size = int(header)
        end = nl + 2 + size + 2 if size >= 0 else nl + 2
        return end if len(buf) >= end else None
    if kind == b"*":
        at = nl + 2
        for _ in range(int(header)):
            end = _reply_end(buf, at)
            if end is None:
                return None
            at = end
        return at
    return nl + 2


def test_large_values_cut_anywhere_in_a_pipeline_during_an_update_reach_both_the_same(
        tmp_path) -> None:
    """SETs of 70 to 150 KB values (below the size that goes to disk) pipelined with reads and
    sent in pieces that end inside values: each is completed by the read that ends it and
    travels as a run of one (``RespRequestReader.continue_run``), a relative expiry and a
    command that is not runnable go request by request, as before. Replies come in order, both
    versions hold the same data, and the update goes on with no divergence."""
    proxy = faults.Proxy(tmp_path)
    values = {b"a": b"A" * 100_000, b"b": b"B" * 150_000, b"c": b"C" * 90_000}
    words = [
        [b"SET", b"a", values[b"a"]],
        [b"SET", b"b", values[b"b"], b"EX", b"1000"],  # (request by request)
        [b"GET", b"a"],
        [b"SET", b"c", values[b"c"]],
        [b"RPUSH", b"l", b"x" * 70_000, b"y"],
        [b"MGET", b"a", b"c"],
        [b"BLPOP", b"l", b"1"],  # (not runnable)
        [b"STRLEN", b"b"],
    ]
    stream = b"".join(faults.resp(*w) for w in words)
    with proxy.serving():
        proxy.update()
        st = proxy.wait(lambda s: s["state"] == "mve", 60)
        assert st["state"] == "mve", st
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as s:
            for at in range(0, len(stream), 40_000):
                s.sendall(stream[at : at + 40_000])
                time.sleep(0.02)  # (each piece a read of its own)
            got = _replies(s, len(words))
        bulk = b"$%d\r\n%s\r\n"
        assert got == [
            b"+OK\r\n", b"+OK\r\n", bulk % (100_000, values[b"a"]), b"+OK\r\n", b":2\r\n",
            b"*2\r\n" + bulk % (100_000, values[b"a"]) + bulk % (90_000, values[b"c"]),
            b"*2\r\n" + bulk % (1, b"l") + bulk % (70_000, b"x" * 70_000), b":150000\r\n",
        ], [g[:40] for g in got]
        proxy.wait(lambda s: s["update"]["backlog"] == 0, 30)
        st = proxy.status()
        assert st["state"] == "mve", st
        assert st["divergences"] == 0 and st["compared"] == len(words), st
        leader, follower = st["leader"]["address"], st["follower"]["address"]
        for key, value in values.items():
            want = bulk % (len(value), value)
            assert _call(leader, b"GET", key) == _call(follower, b"GET", key) == want, key
        assert _call(leader, b"LRANGE", b"l", b"0", b"-1") == \
            _call(follower, b"LRANGE", b"l", b"0", b"-1") == b"*1\r\n$1\r\ny\r\n"
        ttl = int(_call(follower, b"TTL", b"b")[1:])
        assert 900 < ttl <= 1000, ttl
