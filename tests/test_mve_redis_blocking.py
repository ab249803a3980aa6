"""Blocking requests during an update (issue 10): a BLPOP blocks in the leader as it does
directly (the server shows the blocked client, CLIENT UNBLOCK frees it, waiting clients are
served in the order they blocked), and the new version gets the effect of each pop the leader
made, at its place, so that both hold the same data at the cutover."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest
import redis

from tests.proxyrun import REDIS7, poll_until, running
from tests.redisdump import differences, dump
from tests.test_mve_redis import (
    caught_up,
    keep_old,
    port_of,
    status,
    unexpected,
    update_config,
    wait_for,
)
from tests.trials import blocked_pair_misses, one_reply

pytestmark = pytest.mark.slow

LOGGED = 'warmup_seconds = 600\nwarmup_requests = 0\non_divergence = "log"'


def in_mve(proxy) -> dict:
    proxy.call_async(proxy.service.update, "new")
    return wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")


def blocked_in(port: int, count: int) -> None:
    leader = redis.Redis(port=port)
    poll_until(lambda: leader.info("clients")["blocked_clients"], lambda n: n == count, 10,
               f"{count} clients blocked in the leader")


def test_a_blocked_client_shows_in_the_leader_and_client_unblock_frees_it(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        st = in_mve(proxy)
        leader_port = port_of(st["leader"]["address"])
        waiter = redis.Redis(port=proxy.port, socket_timeout=10)
        got: list = []
        thread = threading.Thread(target=lambda: got.append(waiter.blpop(["q"], timeout=0)))
        thread.start()
        blocked_in(leader_port, 1)
        [entry] = [c for c in redis.Redis(port=leader_port).client_list()
                   if c["cmd"] == "blpop"]
        assert "b" in entry["flags"]
        # (The proxy counts it once its probes show it blocked: a round trip or three later.)
        poll_until(lambda: status(proxy)["update"]["waiting_clients"], lambda n: n == 1, 10,
                   "the proxy to count the waiting client")
        admin = redis.Redis(port=proxy.port, socket_timeout=10)
        assert admin.client_unblock(int(entry["id"])) is True
        thread.join(10)
        assert got == [None]  # as directly: the null of a timeout
        blocked_in(leader_port, 0)
        assert waiter.blpop(["q"], timeout=0.2) is None  # the leader's own timeout
        admin.rpush("q", "a", "b")
        assert waiter.blpop(["q"], timeout=1) == (b"q", b"a")
        st = status(proxy)
        assert st["state"] == "mve" and unexpected(proxy) == []
        wait_for(proxy, caught_up, what="the follower to catch up")
        assert differences(dump(leader_port), dump(port_of(st["follower"]["address"]))) == []


def test_waiting_clients_are_served_in_the_order_they_blocked_as_directly(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        st = in_mve(proxy)
        leader_port = port_of(st["leader"]["address"])
        waiters = [socket.create_connection(proxy.address, timeout=10) for _ in range(3)]
        for n, sock in enumerate(waiters, 1):
            sock.sendall(b"BLPOP q 0\r\n")
            blocked_in(leader_port, n)
        redis.Redis(port=proxy.port).rpush("q", "a", "b", "c", "d")
        got = [recv_reply(sock) for sock in waiters]
        assert got == [b"*2\r\n$1\r\nq\r\n$1\r\n%s\r\n" % v for v in (b"a", b"b", b"c")]
        # Issue 10's pair trial, waiting until the leader shows both blocked, as directly.
        assert blocked_pair_misses(proxy.port, 5, blocked=True) == []
        assert status(proxy)["state"] == "mve" and unexpected(proxy) == []
        wait_for(proxy, caught_up, what="the follower to catch up")
        assert differences(dump(leader_port, 0), dump(port_of(st["follower"]["address"]), 0)) \
            == []
        assert differences(dump(leader_port, 9), dump(port_of(st["follower"]["address"]), 9)) \
            == []
        for sock in waiters:
            sock.close()


def recv_reply(sock: socket.socket) -> bytes:
    """One BLPOP reply (a two-element array of short bulk strings)."""
    out = b""
    while out.count(b"\r\n") < 5:
        out += sock.recv(4096)
    return out


def test_a_client_blocked_at_the_cutover_is_served_by_the_new_version(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        st = in_mve(proxy)
        waiter = socket.create_connection(proxy.address, timeout=10)
        waiter.sendall(b"BRPOPLPUSH src dst 0\r\n")
        blocked_in(port_of(st["leader"]["address"]), 1)
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, lambda s: s["state"] == "single", what="the cutover")
        assert st["serving"] == "new" and st["last_update"]["outcome"] == "cutover", st
        blocked_in(port_of(st["leader"]["address"]), 1)  # sent again, to the new version
        admin = redis.Redis(port=proxy.port)
        admin.lpush("src", "x")
        assert one_reply(waiter) == b"$1\r\nx\r\n"
        assert admin.lrange("dst", 0, -1) == [b"x"] and admin.llen("src") == 0
        waiter.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_pushes_and_blocking_pops_under_load_cut_over_with_equal_data(tmp_path,
                                                                      protocol) -> None:
    """Clients push and pop with BLPOP, BRPOP, BLMOVE and BZPOPMIN on a few keys, with short
    timeouts and for ever, through an update and its cutover (the old version kept following):
    no element is lost or popped twice, and the two versions end with the same data. The
    pushes share the update's connection, in either protocol, while pops block on the
    poppers' own connections."""
    with running(update_config(tmp_path, REDIS7, REDIS7, update=keep_old())) as proxy:
        stop = threading.Event()
        errors: list[str] = []
        popped: list[bytes] = []
        pushed: list[bytes] = []

        def pusher(me: int) -> None:
            r = redis.Redis(port=proxy.port, socket_timeout=20, protocol=protocol)
            rnd = random.Random(me)
            n = 0
            try:
                while not stop.is_set():
                    n += 1
                    value = f"{me}:{n}"
                    if rnd.random() < 0.2:
                        r.zadd("z", {value: n})
                    else:
                        r.rpush(f"l{rnd.randrange(3)}", value)
                    pushed.append(value.encode())
                    if n % 4 == 0:
                        time.sleep(0.002)
            except redis.RedisError as exc:
                errors.append(f"push: {exc!r}")

        def popper(me: int) -> None:
            r = redis.Redis(port=proxy.port, socket_timeout=20, protocol=protocol)
            rnd = random.Random(100 + me)
            try:
                while not stop.is_set():
                    kind = rnd.randrange(4)
                    timeout = rnd.choice((0.05, 0.3, 1))
                    if kind == 0:
                        got = r.blpop(["l0", "l1"], timeout=timeout)
                        if got:
                            popped.append(got[1])
                    elif kind == 1:
                        got = r.brpop(["l2"], timeout=timeout)
                        if got:
                            popped.append(got[1])
                    elif kind == 2:  # moved on: popped again later from l2 (or left there)
                        r.blmove("l1", "l2", timeout, "LEFT", "RIGHT")
                    else:
                        got = r.bzpopmin(["z"], timeout=timeout)
                        if got:
                            popped.append(got[1])
            except redis.RedisError as exc:
                errors.append(f"pop: {exc!r}")

        threads = [threading.Thread(target=pusher, args=(i,)) for i in range(3)] + \
            [threading.Thread(target=popper, args=(i,)) for i in range(5)]
        for thread in threads:
            thread.start()
        try:
            # (conditions, not sleeps: each step as long as the machine takes for it)
            poll_until(lambda: len(popped), lambda n: n >= 20, 30, "pops before the update")
            st = in_mve(proxy)
            wait_for(proxy, lambda s: s["compared"] > 500 or s["state"] != "mve",
                     what="500 compared replies")
            st = status(proxy)
            assert st["compared"] > 500, (st["last_update"], unexpected(proxy)[:3])
            assert st["update"]["shared_clients"] >= 3  # (the pushers, at least)
            proxy.call(proxy.service.promote)  # the cutover, under load
            st = wait_for(proxy, lambda s: s["state"] == "mve" and
                          s["leader"]["version"] == "new", what="the cutover")
            at_cutover = len(popped)  # the old version follows, under load, for 200 more pops
            poll_until(lambda: len(popped), lambda n: n > max(at_cutover + 200, 300), 60,
                       "pops after the cutover")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert errors == []
        assert unexpected(proxy) == []
        st = wait_for(proxy, caught_up, what="the old version to catch up")
        new, old = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        assert differences(dump(new), dump(old)) == []
        left = redis.Redis(port=new)
        kept = [v for k in ("l0", "l1", "l2") for v in left.lrange(k, 0, -1)] + \
            left.zrange("z", 0, -1)
        assert len(popped) > 200
        assert sorted(popped + kept) == sorted(pushed)  # none lost, none popped twice


TIMEOUT = 2.0  # a client's BLPOP timeout in the tests below (seconds)


def _timed_out_after(sock: socket.socket, sent: float) -> float:
    """Seconds from ``sent`` until the BLPOP on ``sock`` got its null (timed out)."""
    assert one_reply(sock) == b"*-1\r\n"
    return time.monotonic() - sent


def test_a_timeout_running_at_the_sync_point_goes_on_not_over(tmp_path) -> None:
    """A BLPOP with a 2 s timeout, blocked since 1 s before the update: released from the
    leader at the sync point and sent again, it times out about 2 s after the client sent it,
    as directly, not 2 s after the sync point."""
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        waiter = socket.create_connection(proxy.address, timeout=10)
        sent = time.monotonic()
        waiter.sendall(b"BLPOP nothing %g\r\n" % TIMEOUT)
        blocked_in(port_of(status(proxy)["leader"]["address"]), 1)
        time.sleep(TIMEOUT / 2)
        in_mve(proxy)
        took = _timed_out_after(waiter, sent)
        assert TIMEOUT <= took < TIMEOUT + 0.9, took
        assert status(proxy)["state"] == "mve" and unexpected(proxy) == []
        waiter.close()


def test_a_timeout_running_at_the_cutover_goes_on_not_over(tmp_path) -> None:
    """The same across the cutover: a BLPOP blocked in the old version for 1 s of its 2 s is
    sent to the new one with the 1 s left."""
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        in_mve(proxy)
        waiter = socket.create_connection(proxy.address, timeout=10)
        sent = time.monotonic()
        waiter.sendall(b"BLPOP nothing %g\r\n" % TIMEOUT)
        blocked_in(port_of(status(proxy)["leader"]["address"]), 1)
        time.sleep(TIMEOUT / 2)
        proxy.call(proxy.service.promote)
        took = _timed_out_after(waiter, sent)
        assert TIMEOUT <= took < TIMEOUT + 0.9, took
        st = wait_for(proxy, lambda s: s["state"] == "single", what="the cutover")
        assert st["last_update"]["outcome"] == "cutover", st
        waiter.close()


def test_a_wait_running_at_the_sync_point_keeps_its_timeout(tmp_path) -> None:
    """WAIT's timeout is in milliseconds: a WAIT for a replica the leader does not have, of
    2000 ms, blocked since 1 s before the update, answers 0 about 2 s after it was sent."""
    with running(update_config(tmp_path, REDIS7, REDIS7, update=LOGGED)) as proxy:
        waiter = socket.create_connection(proxy.address, timeout=10)
        sent = time.monotonic()
        waiter.sendall(b"WAIT 1 %d\r\n" % (TIMEOUT * 1000))
        blocked_in(port_of(status(proxy)["leader"]["address"]), 1)
        time.sleep(TIMEOUT / 2)
        in_mve(proxy)
        assert one_reply(waiter) == b":0\r\n"
        took = time.monotonic() - sent
        assert TIMEOUT <= took < TIMEOUT + 0.9, took
        assert status(proxy)["state"] == "mve" and unexpected(proxy) == []
        waiter.close()


def test_waiters_blocked_at_the_sync_point_served_by_pipelines(tmp_path) -> None:
    """Four clients blocked for ever in BLPOP, each on a key of its own, since before the
    update, while two others push in pipelines (eight RPUSHes a read, on the update's shared
    connection): two waiters' keys get pushes from the update's start, so they are served
    around the sync point, and the other two stay blocked through it, are released there
    (CLIENT UNBLOCK) and sent again, then served by the pipelines during the update. The update
    goes on with no divergence, no element is lost or popped twice, and both versions hold the
    same lists."""
    with running(update_config(tmp_path, REDIS7, REDIS7, update=keep_old())) as proxy:
        stop = threading.Event()
        errors: list[str] = []
        popped: list[bytes] = []
        pushed: list[bytes] = []
        keys = [f"w{i}" for i in range(4)]
        targets: list[str] = []  # the waiters' keys that get pushes: none before the update

        def waiter(key: str) -> None:
            r = redis.Redis(port=proxy.port, socket_timeout=30, protocol=2)
            try:
                while True:
                    got = r.blpop([key], timeout=0)
                    if got[1] == b"end":
                        return
                    popped.append(got[1])
            except redis.RedisError as exc:
                errors.append(f"pop: {exc!r}")

        def pusher(me: int) -> None:
            r = redis.Redis(port=proxy.port, socket_timeout=30, protocol=2)
            rnd = random.Random(me)
            n = 0
            try:
                while not stop.is_set():
                    pipe = r.pipeline(transaction=False)
                    for i in range(8):
                        n += 1
                        value = f"{me}:{n}".encode()
                        to_waiter = i == 0 and targets
                        pipe.rpush(rnd.choice(targets) if to_waiter else "filler", value)
                        pushed.append(value)
                    pipe.execute()
            except redis.RedisError as exc:
                errors.append(f"push: {exc!r}")

        threads = [threading.Thread(target=waiter, args=(k,)) for k in keys] + \
            [threading.Thread(target=pusher, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            leader = redis.Redis(port=port_of(status(proxy)["leader"]["address"]))
            poll_until(lambda: leader.info("clients")["blocked_clients"], lambda n: n == 4, 10,
                       "the waiters blocked")
            targets[:] = keys[:2]  # as the update begins: two waiters stay blocked through it
            in_mve(proxy)
            targets[:] = keys
            st = wait_for(proxy, lambda s: s["compared"] > 3000 or s["state"] != "mve",
                          what="3,000 compared replies")
            assert st["update"]["shared_clients"] >= 2  # (the pushers)
        finally:
            stop.set()
            for thread in threads[len(keys):]:
                thread.join(30)
            ender = redis.Redis(port=proxy.port, socket_timeout=30, protocol=2)
            for key in keys:
                ender.rpush(key, "end")
            for thread in threads:
                thread.join(30)
        assert errors == []
        assert unexpected(proxy) == []
        st = wait_for(proxy, caught_up, what="the new version to catch up")
        assert st["compared"] > 3000
        released = leader.info("commandstats").get("cmdstat_client|unblock", {})
        assert released.get("calls", 0) >= 2  # (w2's and w3's waiters, at least)
        follower = port_of(st["follower"]["address"])
        assert differences(dump(port_of(st["leader"]["address"])), dump(follower)) == []
        kept = [v for k in [*keys, "filler"] for v in leader.lrange(k, 0, -1)]
        assert len(popped) > 100
        assert sorted(popped + kept) == sorted(pushed)
