"""memcached through twinproxy in SINGLE mode at the edges of the protocol, each case compared
with a real memcached 1.6 spoken to directly.

Every command memcached accepts passes, the administrative ones included; a value over the
proxy's ``max_value`` is answered as memcached answers one over its own item size, and the
connection goes on; a bad request in any state (after ``noreply``, after a quiet meta request,
inside a pipeline, after a valid request in the same packet) gets what memcached answers, then
the connection closes; and no connection is left in CLOSE-WAIT, whoever closes first.

The proxy serves a memcached of its own, started like the one spoken to directly, so the two
hold the same items when given the same requests.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from tests import servers
from tests.proxyrun import MEMCACHED, close_wait, external, poll_until, running, write_config

TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
BIG = 2_000_000  # over the proxy's max_value and memcached's item size (-I 1m), both the default


@pytest.fixture
def pair(tmp_path):
    """``(direct, proxy)``: a memcached, and the proxy in front of another one."""
    with servers.memcached_server() as direct, servers.memcached_server() as behind:
        config = write_config(tmp_path / "mc.toml", "memcache",
                              {"v1": external(behind.address)})
        with running(config) as proxy:
            proxy.backend_port = behind.port
            yield ("127.0.0.1", direct.port), proxy


def talk(address, data: bytes, until: bytes = b"", timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data``; what comes back until it ends with ``until`` (b"": until the close), and
    whether the peer closed."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while not (until and out.endswith(until)):
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False


def no_close_wait(proxy) -> None:
    """The proxy holds no socket, to its clients or to its server, whose peer has closed."""
    poll_until(lambda: close_wait(proxy.port, proxy.backend_port), lambda n: n == 0, 5,
               "the proxy's sockets to leave CLOSE-WAIT")


# -- every command memcached accepts ---------------------------------------------------------------

# Each line goes to both after the same items were set; `mn` ends each exchange.
ADMIN = [
    b"cache_memlimit 100", b"cache_memlimit 100 noreply", b"cache_memlimit 4",
    b"cache_memlimit 2000000000", b"cache_memlimit x",
    b"lru_crawler crawl all", b"lru_crawler crawl 99", b"lru_crawler metadump all",
    b"lru_crawler metadump 1,2", b"lru_crawler metadump 99", b"lru_crawler sleep 100",
    b"lru_crawler sleep 2000000", b"lru_crawler tocrawl 10", b"lru_crawler bogus",
    b"lru_crawler disable", b"lru_crawler enable",
    b"lru tune 10 10 0.1 2", b"lru tune 90 10 0.1 2", b"lru mode flat", b"lru temp_ttl 5",
    b"lru bogus noreply",
    b"slabs automove 1", b"slabs automove 3", b"slabs automove ratio 0.5", b"slabs reassign 1 2",
    b"slabs automove 1 noreply", b"slabs bogus",
    b"verbosity 1", b"verbosity 0 noreply", b"verbosity x",
    b"extstore item_size 100", b"extstore bogus", b"refresh_certs", b"shutdown",
    b"shutdown graceful", b"shutdown bogus", b"bget k1 k2 nokey", b"me k1", b"me nokey",
    b"mn", b"version", b"stats detail on", b"stats detail dump", b"stats detail off",
    b"stats cachedump 1 10", b"stats reset", b"stats bogus",
    b"flush_all 0 noreply",
]
# What differs between two memcached processes: times, counters of their own lives, and the
# items `stats cachedump` lists (it reads an LRU that each process's background threads move:
# one of the two sometimes listed none).
VOLATILE = re.compile(rb"(la|exp|ts)=-?[0-9.]+|STAT [a-z_:0-9]+ [^\r]*|(ITEM [^\r]*\r\n)+")


def exchange_both(pair, line: bytes) -> None:
    """``line`` after the same two items were set, directly and through the proxy: the same
    answer, and the connection goes on."""
    direct, proxy = pair
    setup = b"set k1 0 0 1\r\nx\r\nset k2 5 0 2\r\nyy\r\n"
    data = setup + line + b"\r\nmn\r\n"
    end = b"MN\r\n" * (2 if line == b"mn" else 1)
    want, closed = talk(direct, data, end)
    assert not closed, line
    got, closed = talk(proxy.address, data, end)
    assert not closed, line
    assert VOLATILE.sub(b"*", got) == VOLATILE.sub(b"*", want), line


def test_every_command_memcached_accepts_is_answered_as_memcached_answers(pair) -> None:
    """Each line in turn, on one pair of servers (both get the same sequence, so what one line
    leaves behind is the same on both); SHUTDOWN, which may end the server, on its own."""
    for line in ADMIN:
        if not line.startswith(b"shutdown"):
            exchange_both(pair, line)
    no_close_wait(pair[1])


@pytest.mark.parametrize("line", [x for x in ADMIN if x.startswith(b"shutdown")],
                         ids=lambda x: x.decode())
def test_shutdown_is_answered_as_memcached_answers(pair, line) -> None:
    exchange_both(pair, line)
    no_close_wait(pair[1])


def test_pymemcache_admin_calls(pair) -> None:
    _, proxy = pair
    client = Client(proxy.address, timeout=10)
    assert client.cache_memlimit(50) is True
    client.set("a", "1")
    assert client.stats("cachedump", "1", "1")
    assert client.get("a") == b"1"


def test_watch_streams_the_servers_log_and_drops_what_the_client_sends(pair) -> None:
    """After ``watch`` memcached streams log lines and reads nothing from that connection."""
    direct, proxy = pair
    for address in (direct, proxy.address):
        with socket.create_connection(address, timeout=5) as watcher, \
                socket.create_connection(address, timeout=5) as other:
            watcher.sendall(b"watch fetchers\r\n")
            assert servers.recv_until(watcher, b"\r\n") == b"OK\r\n"
            other.sendall(b"get watched\r\n")
            assert servers.recv_until(other, b"END\r\n") == b"END\r\n"
            line = servers.recv_until(watcher, b"\n")
            assert b"type=item_get key=watched status=not_found" in line
            watcher.sendall(b"bogus\r\nget x\r\n")  # never read: no ERROR, no END
            other.sendall(b"get again\r\n")
            assert servers.recv_until(other, b"END\r\n") == b"END\r\n"
            line = servers.recv_until(watcher, b"\n")
            assert b"key=again" in line and b"ERROR" not in line
    no_close_wait(proxy)


def test_shutdown_when_memcached_allows_it_closes_without_a_word(tmp_path) -> None:
    with servers.memcached_server("-A") as direct, servers.memcached_server("-A") as behind:
        config = write_config(tmp_path / "mc.toml", "memcache",
                              {"v1": external(behind.address)})
        with running(config) as proxy:
            for address in (("127.0.0.1", direct.port), proxy.address):
                with socket.create_connection(address, timeout=10) as s:
                    s.sendall(b"version\r\n")
                    assert servers.recv_until(s, b"\r\n") == b"VERSION 1.6.18\r\n"
                    s.sendall(b"shutdown\r\nget a\r\n")
                    assert s.recv(100) == b""
            assert close_wait(proxy.port, behind.port) == 0


def test_shutdown_read_with_other_requests_drops_their_replies_as_memcached_does(tmp_path) -> None:
    """memcached closes at once, without the replies to the requests it read with the shutdown
    (then a pipelined version gets nothing), and so does the proxy: no error in their place."""
    with servers.memcached_server("-A") as direct, servers.memcached_server("-A") as behind:
        config = write_config(tmp_path / "mc.toml", "memcache",
                              {"v1": external(behind.address)})
        with running(config) as proxy:
            for address in (("127.0.0.1", direct.port), proxy.address):
                assert talk(address, b"version\r\nmg a v q\r\nshutdown\r\n") == (b"", True)
            assert close_wait(proxy.port, behind.port) == 0


# -- a value over the limit ------------------------------------------------------------------------

def over_size(line: bytes) -> bytes:
    return line % BIG + b"\r\n" + b"v" * BIG + b"\r\n"


OVER = [
    b"set old 0 0 %d", b"set old 0 0 %d noreply", b"add new 0 0 %d", b"add new 0 0 %d noreply",
    b"replace old 0 0 %d", b"append old 0 0 %d", b"prepend old 0 0 %d noreply",
    b"cas old 0 0 %d 1", b"ms old %d", b"ms old %d q", b"ms old %d MA q O9 k", b"ms b2xk %d b",
]


@pytest.mark.parametrize("line", OVER, ids=[x.decode() for x in OVER])
def test_a_value_over_the_limit_is_answered_as_memcached_answers_and_the_connection_goes_on(
        pair, line) -> None:
    """memcached answers SERVER_ERROR (nothing after noreply; always for ms), skips the value,
    deletes the old value for set and ms, and reads on; through the proxy the same."""
    direct, proxy = pair
    data = (b"set old 0 0 3\r\nold\r\n" + over_size(line)
            + b"get old new\r\nset after 0 0 2\r\nok\r\nget after\r\nmn\r\n")
    want, closed = talk(direct, data, b"MN\r\n")
    assert not closed and b"VALUE after 0 2\r\nok\r\n" in want
    got, closed = talk(proxy.address, data, b"MN\r\n")
    assert (got, closed) == (want, False)
    no_close_wait(proxy)


def test_a_value_over_the_limit_inside_a_pipeline_keeps_every_reply_in_place(pair) -> None:
    direct, proxy = pair
    data = (b"get a\r\nmg a v q\r\n" + over_size(b"set a 0 0 %d") + b"mg b v q\r\n"
            + over_size(b"add c 0 0 %d") + b"set d 0 0 1\r\nd\r\n" + over_size(b"ms d %d q")
            + b"get d\r\nmn\r\n")
    want, _ = talk(direct, data, b"MN\r\n")
    assert want.count(TOO_LARGE) == 3
    got, closed = talk(proxy.address, data, b"MN\r\n")
    assert (got, closed) == (want, False)


def test_pymemcache_gets_memcacheds_error_for_a_large_value_and_goes_on(pair) -> None:
    _, proxy = pair
    client = Client(proxy.address, timeout=10)
    with pytest.raises(MemcacheServerError, match="object too large for cache"):
        client.set("key", b"value" * 1024 * 1024, noreply=False)
    client.set("key", "small")
    assert client.get("key") == b"small"
    # with noreply memcached says nothing: the client's next request gets its own reply
    assert client.set("key", b"value" * 1024 * 1024, noreply=True) is True
    assert client.get("key") is None  # a failed set deletes the old value, as memcached does
    assert client.version().startswith(b"1.6")


# -- a bad request in any state --------------------------------------------------------------------

BAD = [
    # a valid request and garbage in one packet
    b"get a\r\nfrobnicate\r\n",
    b"version\r\nget\r\n",
    b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\nxyz\r\n",
    # after noreply
    b"set a 0 0 1 noreply\r\nv\r\nfrobnicate\r\n",
    b"set a 0 0 1 noreply\r\nvv\r\n",
    b"set a 0 0 1 noreply\r\nv\r\nset " + b"k" * 251 + b" 0 0 1 noreply\r\nx\r\n",
    # after a quiet meta request whose outcome is hidden
    b"mg missing v q\r\nfrobnicate\r\n",
    b"md missing q\r\nms a 1 q\r\nx\r\nmg a v q\r\nbogus\r\n",
    # inside a pipeline
    b"get a\r\nset b 0 0 1 noreply\r\nx\r\nmg c v q\r\nfrobnicate\r\n",
    b"get a\r\nset b 0 0 1 noreply\r\nx\r\nmg c v q\r\nset " + b"n" * 251 + b" 0 0 1\r\nx\r\n",
    # what memcached closes on without a word
    b"get a\r\nGET / HTTP/1.1\r\n",
]


@pytest.mark.parametrize("data", BAD, ids=[x[:40].decode(errors="replace") for x in BAD])
def test_a_bad_request_gets_what_memcached_answers_then_the_connection_closes(pair, data) -> None:
    direct, proxy = pair
    want, _ = talk(direct, data + b"mn\r\n", b"MN\r\n")
    got, closed = talk(proxy.address, data)
    assert closed
    # memcached goes on where the proxy closes: with "MN" (the bad line ended the request), or
    # with ERROR and MN (it ran the data block after a bad storage line as a command)
    assert (want.startswith(got) and want[len(got):] in (b"MN\r\n", b"ERROR\r\nMN\r\n")) or (
        got == want and b"HTTP" in data), (got, want)
    no_close_wait(proxy)


LONG = b"k" * 251
LONG_KEYS = [
    b"get a " + LONG + b" b", b"gets " + LONG, b"gat 0 a " + LONG, b"incr " + LONG + b" 1",
    b"incr " + LONG + b" 1 noreply", b"delete " + LONG + b" noreply", b"touch " + LONG + b" 1",
    b"mg " + LONG + b" v", b"mg " + LONG + b" v q", b"md " + LONG + b" q", b"ma " + LONG,
]


@pytest.mark.parametrize("line", LONG_KEYS, ids=[x[:10].decode() for x in LONG_KEYS])
def test_a_key_over_the_limit_is_answered_as_memcached_answers_and_the_connection_goes_on(
        pair, line) -> None:
    """memcached answers CLIENT_ERROR for a key over its limit (nothing after noreply) in a
    request without a data block, and reads on: so does the proxy, in the same place.

    (memcached 1.6.18 also drops the replies it has not sent yet when a get names such a key:
    ``set`` then that ``get`` in one packet gets no STORED. The proxy does not copy that; the
    replies before the line are awaited here, so that both answer alike.)"""
    direct, proxy = pair
    outputs = []
    for address in (direct, proxy.address):
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(b"set b 0 0 1\r\nx\r\nget b\r\n")
            out = servers.recv_until(s, b"END\r\n")
            s.sendall(b"mg a v q\r\n" + line
                      + b"\r\nset c 0 0 1 noreply\r\ny\r\nget b c\r\nmn\r\n")
            outputs.append(out + servers.recv_until(s, b"MN\r\n"))
    want, got = outputs
    assert want.endswith(b"VALUE b 0 1\r\nx\r\nVALUE c 0 1\r\ny\r\nEND\r\nMN\r\n")
    assert got == want


def test_a_client_that_closes_while_its_error_waits_leaves_nothing_behind(pair) -> None:
    """Before: after a noreply or quiet request the error never came, the proxy stopped reading
    the client, and its socket stayed in CLOSE-WAIT for good once the client closed."""
    _, proxy = pair
    for data in (b"set a 0 0 1 noreply\r\nv\r\nfrobnicate\r\n", b"mg x v q\r\nbogus\r\n"):
        clients = []
        for _ in range(20):
            s = socket.create_connection(proxy.address, timeout=5)
            s.sendall(data)
            clients.append(s)
        for s in clients:
            s.close()
        no_close_wait(proxy)
    assert Client(proxy.address).version()



def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_300_clients_with_an_error_after_noreply_leave_nothing_and_an_update_goes_on(
        tmp_path) -> None:
    """Issue 15's probe: before, each such client held two descriptors for good (its socket in
    CLOSE-WAIT and the server connection), and the next update rolled back at its barrier,
    waiting for them. Half the clients read the error before they close, half close at once."""
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
        update='sync = "none"\nwarmup_seconds = 0.5\nwarmup_requests = 10\n'
               "follower_timeout = 5.0\n",
    )
    with running(config) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        server_port = proxy.call(lambda: proxy.service.serving.address)[1]
        assert Client(proxy.address).version()
        poll_until(status, lambda s: s["connections"] == 0, 5, "no client")
        before = open_descriptors()
        for i in range(300):
            with socket.create_connection(proxy.address, timeout=10) as s:
                s.sendall(b"set a 0 0 1 noreply\r\nv\r\nfrobnicate\r\n")
                if i % 2:
                    assert servers.recv_until(s, b"\r\n") == b"ERROR\r\n"
                    assert s.recv(100) == b""  # then the proxy closes
        poll_until(status, lambda s: s["connections"] == 0, 10, "every client to be gone")
        poll_until(lambda: close_wait(proxy.port, server_port), lambda n: n == 0, 10,
                   "no socket in CLOSE-WAIT")
        poll_until(open_descriptors, lambda n: n <= before, 10, "the descriptors to be freed")
        # The next update reaches its barriers and cuts over.
        client = Client(proxy.address, timeout=10)
        proxy.call_async(proxy.service.update, "v2")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        for i in range(50):
            client.set(f"k{i}", "v", noreply=False)
            assert client.get(f"k{i}") == b"v"
        done = poll_until(status, lambda s: s["state"] == "single", 30, "the cutover")
        assert done["last_update"]["outcome"] == "cutover", done
        assert done["serving"] == "v2"


def test_set_many_with_noreply_then_a_long_get_many(pair) -> None:
    """pymemcache's set_many (noreply) then get_many of 1,000 keys of 200 bytes: one get line of
    200 KB, which memcached reads whole. Before: refused as too long, and the client hung."""
    _, proxy = pair
    client = Client(proxy.address, timeout=10, default_noreply=True)
    keys = [f"{i:0200d}" for i in range(1000)]
    assert client.set_many({k: b"v" for k in keys}) == []
    started = time.monotonic()
    assert len(client.get_many(keys)) == 1000
    assert time.monotonic() - started < 5
    no_close_wait(proxy)


def test_pymemcaches_own_integration_tests_pass_through_the_proxy_as_directly(
        pair, tmp_path) -> None:
    """pymemcache ships its integration tests (``pymemcache/test/test_integration.py``), meant to
    be pointed at a memcached with ``--server``/``--port``: the same outcomes through the proxy as
    directly (issue 10 measured 9 failures through it: cache_memlimit, values over the limit)."""
    import pymemcache

    suite = Path(pymemcache.__file__).parent / "test"
    if not (suite / "test_integration.py").exists():
        pytest.skip("this pymemcache was installed without its tests")
    outcomes = []
    for port in (pair[0][1], pair[1].port):
        copy = tmp_path / f"run{port}"
        shutil.copytree(suite, copy / "test")
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
             "-W", "ignore", "-m", "integration", "test/test_integration.py",
             "--server", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=300, cwd=copy)
        summary = run.stdout.strip().splitlines()[-1]
        outcomes.append(re.sub(r" in [0-9.]+s.*", "", summary))
    direct, proxied = outcomes
    assert "failed" not in direct and "passed" in direct, direct
    assert proxied == direct
