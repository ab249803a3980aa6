"""A live update of memcached (sync "none": a cache that starts empty) under pymemcache's default
``noreply`` sets: every request, answered or not, must be paired on both versions in order, or
the follower's backlog grows until the update rolls back."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from tests import servers
from tests.proxyrun import MEMCACHED, poll_until, running, write_config
from tests.test_mve_memcache_copy import dump
from tests.test_proxy_memcache_edges import OVER, over_size, talk


@contextlib.contextmanager
def _held_in_mve(tmp_path) -> Iterator[tuple[Any, Any, Callable[[], dict]]]:
    """A memcached to compare with directly, and a proxy held in MVE between two memcached
    versions (an empty cache, a warm-up that does not end): (direct, proxy, status)."""
    with servers.memcached_server() as direct:
        config = write_config(
            tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
            update='sync = "none"\nwarmup_seconds = 600\nwarmup_requests = 0\n')
        with running(config) as proxy:
            status = lambda: proxy.call(proxy.service.status)  # noqa: E731
            proxy.call_async(proxy.service.update, "v2")
            poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
            yield direct, proxy, status


def test_update_with_noreply_sets_pairs_every_request_and_cuts_over(tmp_path) -> None:
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
        update='sync = "none"\nwarmup_seconds = 1.0\nwarmup_requests = 1500\n'
               "follower_timeout = 5.0\n",
    )
    with running(config) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        client = Client(proxy.address, no_delay=True, default_noreply=True)
        proxy.call_async(proxy.service.update, "v2")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        for i in range(400):
            key = f"k{i % 40}"
            client.set(key, f"v{i}")  # noreply: memcached answers nothing
            assert client.get(key) == f"v{i}".encode()
            client.delete(f"gone{i}")  # noreply
            assert client.get_many([key, f"gone{i}"]) == {key: f"v{i}".encode()}
        # The cutover waits until the follower answered everything it was sent: a request
        # left unpaired would hold it until follower_timeout, and the update would roll back.
        done = poll_until(status, lambda s: s["state"] == "single", 30, "the cutover")
        assert done["last_update"]["outcome"] == "cutover", done
        assert done["serving"] == "v2" and done["divergences"] == 0
        assert client.get("k39") == b"v399"  # written during MVE, now read from v2
        client.set("after", "1", noreply=False)
        assert client.get("after") == b"1"
        time.sleep(0.1)
        assert status()["state"] == "single"


def test_values_over_the_limit_during_an_update_are_answered_as_memcached_answers(
        tmp_path) -> None:
    """During an update too, a storage request over ``max_value`` gets memcached's own answer in
    its place in the pipeline (nothing after noreply), the old value is deleted on both
    versions, and the connection goes on: the same bytes as from a memcached directly."""
    with _held_in_mve(tmp_path) as (direct, proxy, status):
        for line in OVER:
            data = (b"set old 0 0 3\r\nold\r\n" + over_size(line)
                    + b"get old new\r\nset after 0 0 2\r\nok\r\nget after\r\nmn\r\n")
            want, closed = talk(("127.0.0.1", direct.port), data, b"MN\r\n")
            assert not closed and b"VALUE after 0 2\r\nok\r\n" in want
            assert talk(proxy.address, data, b"MN\r\n") == (want, False), line
        client = Client(proxy.address, timeout=10)
        with pytest.raises(MemcacheServerError, match="object too large for cache"):
            client.set("key", b"value" * 1024 * 1024, noreply=False)
        client.set("key", "small", noreply=False)
        assert client.get("key") == b"small"
        assert client.set("key", b"value" * 1024 * 1024, noreply=True) is True
        assert client.get("key") is None
        st = status()
        assert st["state"] == "mve" and st["divergences"] == 0, st


def test_clients_that_quit_during_an_update_do_not_fail_it(tmp_path) -> None:
    """``quit``: memcached closes the connection without a reply. During an update either
    version may close its connection first; the new version's close is no failure (libmemcached,
    memcslap's library, ends a connection with quit and a half-close, which rolled updates
    back)."""
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
        update='warmup_seconds = 600\nwarmup_requests = 0\n')
    with running(config) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        proxy.call_async(proxy.service.update, "v2")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        for _ in range(6):
            socks = [socket.create_connection(proxy.address) for _ in range(50)]
            for i, s in enumerate(socks):  # a set, answered; then quit alone
                s.sendall(b"set q%d 0 0 1\r\nv\r\n" % i)
                assert s.recv(100) == b"STORED\r\n"
            for s in socks:
                s.sendall(b"quit\r\n")
                s.shutdown(socket.SHUT_RDWR)  # as libmemcached ends a connection, at once
                s.close()
        client = Client(proxy.address, no_delay=True)
        assert client.get("q49") == b"v"
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve", st["last_update"]
        assert st["divergences"] == 0


def _exchange(sock: socket.socket, data: bytes, until: bytes) -> bytes:
    sock.sendall(data)
    out = b""
    while not out.endswith(until):
        chunk = sock.recv(1 << 20)
        assert chunk, out
        out += chunk
    return out


def test_clients_sharing_connections_during_an_update_get_what_memcached_answers(
        tmp_path) -> None:
    """During an update, reads of plain requests travel as runs on a connection the clients
    share, and gets, meta requests and the rest go on each client's own: in any mix, in one
    read or many, a client gets the bytes a memcached gives directly, in order, both versions
    agree, and the cutover keeps every value."""
    script = [  # (the reads of one client; each ends with mn, answered MN)
        b"set a%d 0 0 2\r\n10\r\nget a%d\r\nmn\r\n",  # a run, then mn on its own connection
        b"incr a%d 5\r\nmg a%d v\r\nappend a%d 0 0 1\r\n0\r\nget a%d b%d\r\nmn\r\n",  # mixed
        b"delete b%d\r\nadd b%d 0 0 1\r\nx\r\nadd b%d 0 0 1\r\ny\r\nget b%d\r\nmn\r\n",
        b"set c%d 0 60 1\r\nz\r\ndecr a%d 1\r\nget a%d c%d\r\nmn\r\n",  # a run with an expiry
        # a last noreply where the number belongs: memcached answers nothing, not even the error
        b"incr a%d noreply\r\ntouch a%d noreply\r\nget a%d\r\nmn\r\n",
    ]
    with _held_in_mve(tmp_path) as (direct, proxy, status):
        socks = [socket.create_connection(proxy.address, timeout=10) for _ in range(20)]
        mine = socket.create_connection(("127.0.0.1", direct.port), timeout=10)
        for s in socks:  # a connection's first read is framed request by request
            assert _exchange(s, b"version\r\n", b"\r\n").startswith(b"VERSION")
        for _ in range(3):
            for step in script:
                for i, s in enumerate(socks):
                    data = step.replace(b"%d", b"%d" % i)
                    want = _exchange(mine, data, b"MN\r\n")
                    assert _exchange(s, data, b"MN\r\n") == want, (i, data)
        st = status()
        assert st["state"] == "mve" and st["divergences"] == 0, st
        proxy.call(proxy.service.promote)
        done = poll_until(status, lambda s: s["state"] == "single", 30, "the cutover")
        assert done["serving"] == "v2" and done["divergences"] == 0, done
        assert _exchange(socks[7], b"get a7 b7\r\n", b"END\r\n") == \
            _exchange(mine, b"get a7 b7\r\n", b"END\r\n")
        for s in [*socks, mine]:
            s.close()


def test_clients_whose_stores_say_noreply_share_the_updates_connections(tmp_path) -> None:
    """pymemcache's stores say ``noreply`` by default. During an update such a client's stores
    go on the connections clients share, each settled by the next reply there or by the
    proxy's own ``mn`` when none follows: so each client reads what it wrote, as directly,
    the follower runs everything and catches up, and both versions agree. Before, a client
    kept its own connections from its first ``noreply`` store on, at 0.27 of SINGLE mode's
    rate (loadtests/pymemcache_noreply.py)."""
    with _held_in_mve(tmp_path) as (direct, proxy, status):
        clients = [Client(proxy.address, no_delay=True) for _ in range(3)]  # (noreply)
        mine = Client(("127.0.0.1", direct.port), no_delay=True)
        for round_ in range(50):
            for i, client in enumerate([*clients, mine]):
                me = i if client is not mine else 0
                key, count = f"k{me}-{round_ % 5}", f"n{me}"
                client.set(key, f"v{round_}")
                client.set(count, "0") if round_ == 0 else client.incr(count, 2)
                client.delete(f"gone{me}")
                assert client.get_many([key, count, f"gone{me}"]) == \
                    {key: f"v{round_}".encode(), count: b"%d" % (2 * round_)}
        for client in clients:
            client.set("last", "x")  # (noreply, and nothing after it: the proxy's mn settles it)
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0, st
        assert st["update"]["shared_clients"] == 3
        leader, follower = (Client(("127.0.0.1", int(st[role]["address"].rsplit(":", 1)[1])))
                            for role in ("leader", "follower"))
        keys = [f"k{i}-{r}" for i in range(3) for r in range(5)] + [f"n{i}" for i in range(3)]
        assert leader.get_many([*keys, "last"]) == follower.get_many([*keys, "last"])
        assert leader.get("n2") == b"98" and leader.get("last") == b"x"
        for client in [*clients, mine, leader, follower]:
            client.close()


def test_stores_with_a_time_to_live_expire_at_the_leaders_moment_on_the_follower(tmp_path) -> None:
    """A cache sets its items with a time to live, in seconds from now. During an update such
    stores travel in runs like the others, and the follower gets each with the moment it had on
    the leader, as a unix time: here the follower (a real memcached) is paused for 3 s while
    clients store, so it runs their stores 3 s after the leader did, and still both versions
    expire every item in the same second."""
    with _held_in_mve(tmp_path) as (_direct, proxy, status):
        clients = [Client(proxy.address, no_delay=True) for _ in range(2)]  # (noreply)
        answered = Client(proxy.address, no_delay=True, default_noreply=False)
        for client in [*clients, answered]:
            client.version()  # (a connection's first read is framed request by request)
        st = status()
        with servers.paused(st["follower"]["pid"]):
            for i in range(30):
                clients[i % 2].set(f"ttl{i}", b"v%d" % i, expire=600)
                assert answered.set(f"answered{i}", b"a", expire=60 + i)
                assert clients[i % 2].get(f"ttl{i}") == b"v%d" % i
            clients[0].set_many({f"many{i}": b"m" for i in range(10)}, expire=3600)
            clients[1].set("forever", b"f")
            time.sleep(3)
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0, st
        assert st["update"]["shared_clients"] == 3
        leader, follower = (dump(("127.0.0.1", int(st[role]["address"].rsplit(":", 1)[1])))
                            for role in ("leader", "follower"))
        assert len(leader) == 71 and leader.keys() == follower.keys()
        assert leader[b"forever"][2] == follower[b"forever"][2] == -1
        late = {k: (leader[k][2], follower[k][2]) for k in leader
                if abs(leader[k][2] - follower[k][2]) > 1}
        assert late == {}, late  # (3 s apart when the follower took them as they came)
        assert {k: v[:2] for k, v in leader.items()} == {k: v[:2] for k, v in follower.items()}
        for client in [*clients, answered]:
            client.close()


def test_touch_and_gat_set_the_leaders_moment_on_the_follower_in_runs(tmp_path) -> None:
    """A session store slides its items' time to live with touch (pymemcache says noreply) and
    gat. During an update they travel in runs on the shared connection like stores, and the
    follower, paused here for 3 s, gets each expiry as the unix time it was on the leader."""
    with _held_in_mve(tmp_path) as (_direct, proxy, status):
        client = Client(proxy.address, no_delay=True)  # (touch with noreply)
        client.version()  # (a connection's first read is framed request by request)
        for i in range(20):
            client.set(f"s{i}", b"v", expire=60)
        with socket.create_connection(proxy.address, timeout=10) as gat:
            gat.sendall(b"version\r\n")
            assert gat.recv(100).startswith(b"VERSION")
            st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
            with servers.paused(st["follower"]["pid"]):
                for i in range(20):
                    client.touch(f"s{i}", expire=600 + i)
                    gat.sendall(b"gat %d s%d\r\n" % (900 + i, i))
                    got = b""
                    while not got.endswith(b"END\r\n"):
                        got += gat.recv(1000)
                    assert got == b"VALUE s%d 0 1\r\nv\r\nEND\r\n" % i
                time.sleep(3)
        st = poll_until(status, lambda s: s["update"]["backlog"] == 0, 30, "the follower")
        assert st["state"] == "mve" and st["divergences"] == 0, st
        assert st["update"]["shared_clients"] >= 1  # (its noreply touches kept it sharing)
        leader, follower = (dump(("127.0.0.1", int(st[role]["address"].rsplit(":", 1)[1])))
                            for role in ("leader", "follower"))
        assert len(leader) == 20 and leader.keys() == follower.keys()
        now = time.time()
        assert all(800 < leader[k][2] - now < 1000 for k in leader)  # gat's, the last set
        late = {k: (leader[k][2], follower[k][2]) for k in leader
                if abs(leader[k][2] - follower[k][2]) > 1}
        assert late == {}, late  # (3 s apart when the follower took them as they came)
        client.close()
