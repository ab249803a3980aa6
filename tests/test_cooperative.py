"""Cooperative live update end to end: the example key-value store (examples/kvstore), a real
service built on ``twinproxy.cooperative``, updated by the proxy through its update endpoint,
with redis-py clients checking every reply.

What a user checks: the update to v2 under load cuts over with no client error and every key
intact (typed ``string``); an update whose transform is wrong, crashes, raises or hangs, an
endpoint that refuses and one that never answers each fail the update with the step and the
reason in ``status`` and the log, while v1 serves every key throughout.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from tests.cli import twinproxy
from tests.kvstore import config, kvstore
from tests.proxyrun import poll_until, running
from twinproxy.cooperative import CheckFailed, first_differences, time_travel
from twinproxy.keeper import descendants

FAST = "warmup_seconds = 1.0\nwarmup_requests = 50"


def status(proxy) -> dict:
    return proxy.call(proxy.service.status)


def ended(st: dict) -> bool:
    return st["state"] == "single" and (st["last_update"] or {}).get("outcome") in (
        "cutover", "rolled-back")


@contextmanager
def load(port: int, clients: int = 20, pace: float = 0.01) -> Iterator[dict]:
    """``clients`` redis-py clients doing PUT/GET/DEL on keys of their own, each checking every
    reply against what it wrote; the result holds the keys each believes exist, with values.

    Each client pauses ``pace`` seconds between rounds: the new version (one Python thread, as
    the old) must be able to catch up with the load on a machine the tests share."""
    stop = threading.Event()
    result: dict = {"ops": 0, "errors": [], "keys": {}}
    lock = threading.Lock()

    def run(i: int) -> None:
        client = redis.Redis(port=port, socket_timeout=15)
        mine: dict[bytes, bytes] = {}
        n = 0
        try:
            while not stop.is_set():
                key, value = b"c%d:%d" % (i, n), b"v%d" % n
                assert client.execute_command("PUT", key, value) == b"OK", key
                assert client.execute_command("GET", key) == value, key
                mine[key] = value
                if n % 3 == 2:
                    old = b"c%d:%d" % (i, n - 2)
                    assert client.execute_command("DEL", old) == 1, old
                    del mine[old]
                    assert client.execute_command("GET", old) is None, old
                n += 1
                time.sleep(pace)
        except BaseException as exc:
            result["errors"].append(f"client {i}: {exc!r}")
        finally:
            client.close()
            with lock:
                result["ops"] += n
                result["keys"].update(mine)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        yield result
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def every_key_intact(port: int, keys: dict[bytes, bytes], typed: bool) -> None:
    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("GET", key)
        if typed:
            pipe.execute_command("TYPE", key)
    replies = pipe.execute()
    step = 2 if typed else 1
    values = replies[::step]
    assert values == list(keys.values())
    if typed:
        assert set(replies[1::2]) == {b"string"}


def test_update_to_v2_under_load_cuts_over_with_every_key_intact(tmp_path) -> None:
    """The issue's first "done when": ``twinproxy update --to v2 --wait`` under 20 clients."""
    preloaded = {b"key:%d" % i: b"value:%d" % i for i in range(500)}
    with kvstore(keys=500) as store:
        cfg = config(tmp_path / "kv.toml", store, update=FAST)
        with running(cfg) as proxy:
            with load(proxy.port) as result:
                time.sleep(0.5)
                before = result["ops"]
                store.forked()
                done = twinproxy("update", "--to", "v2", "--wait", "-c", str(cfg), timeout=60)
                store.forked()
                time.sleep(0.5)  # and on v2 alone
            assert done.returncode == 0, done.stdout + done.stderr
            assert result["errors"] == []
            assert result["ops"] > before + 100
            st = status(proxy)
            store.pids.add(st["leader"]["pid"])
            assert st["serving"] == "v2" and st["last_update"]["outcome"] == "cutover", st
            assert [d for d in proxy.service.divergences.since(0, 100000)
                    if not d.expected] == []
            assert st["update"]["pauses_ms"]["sync_point"] > 0
            every_key_intact(proxy.port, {**preloaded, **result["keys"]}, typed=True)
            # the old process was ended after the cutover; v2 took over the update endpoint
            assert store.proc.wait(10) is not None
            next_update = poll_until(
                lambda: twinproxy("update", "--to", "v2-lossy", "--wait", "-c", str(cfg)),
                lambda r: "unreachable" not in r.stderr and "connect" not in r.stderr, 10,
                "v2 to serve the update endpoint")
            assert next_update.returncode == 1
            assert "no state transform from v2 to v2-lossy (status 422)" in next_update.stderr
            client = redis.Redis(port=proxy.port)
            assert client.execute_command("PUT", "int", "n", "12") == b"OK"
            assert client.execute_command("TYPE", "n") == b"int"
            with pytest.raises(redis.ResponseError, match="not an integer"):
                client.execute_command("PUT", "int", "n", "twelve")


def test_a_lossy_transform_is_stopped_by_the_time_traveling_check(tmp_path, caplog) -> None:
    """The issue's second "done when": exit 1, the check and the first keys named, clients saw
    nothing, v1 still serves every key."""
    preloaded = {b"key:%d" % i: b"value:%d" % i for i in range(200)}
    with kvstore(keys=200) as store:
        cfg = config(tmp_path / "kv.toml", store, update=FAST)
        with running(cfg) as proxy:
            with load(proxy.port, clients=4) as result:
                time.sleep(0.3)
                done = twinproxy("update", "--to", "v2-lossy", "--wait", "-c", str(cfg),
                                 timeout=60)
                time.sleep(0.3)
            assert done.returncode == 1, done.stdout + done.stderr
            assert "time-traveling check failed" in done.stderr
            assert "b'key:0': b'value:0' -> '<missing>'" in done.stderr
            assert result["errors"] == []
            st = status(proxy)
            assert st["serving"] == "v1" and st["last_update"]["outcome"] == "rolled-back"
            assert "time-traveling check failed" in st["last_update"]["reason"]
            assert "waiting for the new version's report" in st["last_update"]["reason"]
            every_key_intact(proxy.port, {**preloaded, **result["keys"]}, typed=False)


def fail_update(proxy, store, to: str, caplog) -> str:
    """Run an update that must fail; its reason, checked to be in status and in the log, with
    v1 serving throughout."""
    client = redis.Redis(port=proxy.port)
    client.execute_command("PUT", "before", to)
    with load(proxy.port, clients=2) as result:
        proxy.call_async(proxy.service.update, to)
        st = poll_until(lambda: status(proxy), ended, 30, "the update to end")
        store.forked()
    assert result["errors"] == []
    assert st["serving"] == "v1" and st["follower"] is None
    assert st["last_update"]["outcome"] == "rolled-back" and st["last_update"]["to"] == to
    reason = st["last_update"]["reason"]
    assert any(reason in record.getMessage() for record in caplog.records), reason
    assert client.execute_command("GET", "before") == to.encode()
    every_key_intact(proxy.port, result["keys"], typed=False)
    return reason


def test_a_child_that_crashes_raises_or_hangs_in_its_transform_fails_the_update(
        tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with kvstore(keys=50, faults=True) as store:
        cfg = config(tmp_path / "kv.toml", store,
                     update="warmup_seconds = 0.5\nwarmup_requests = 0",
                     forked={"v2-crash": "", "v2-raise": "", "v2-hang": "ready_timeout = 1.0"})
        with running(cfg) as proxy:
            reason = fail_update(proxy, store, "v2-crash", caplog)
            assert "(waiting for the new version's report)" in reason
            assert "was killed by SIGSEGV before it reported" in reason
            reason = fail_update(proxy, store, "v2-raise", caplog)
            assert "raised ValueError: a transform that raises, on purpose" in reason
            reason = fail_update(proxy, store, "v2-hang", caplog)
            assert "did not report within 1s" in reason
            poll_until(lambda: descendants(store.proc.pid), lambda pids: pids == [], 10,
                       "the service to end the child that hung")
            # the service is ready for the next update: it ended the child that hung
            done = twinproxy("update", "--to", "v2", "--wait", "-c", str(cfg), timeout=60)
            store.forked()
            assert done.returncode == 0, done.stderr
            store.pids.add(status(proxy)["leader"]["pid"])


def test_an_endpoint_that_refuses_fails_the_update_in_its_words(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with kvstore() as store:
        cfg = config(tmp_path / "kv.toml", store, forked={"v3": ""})
        with running(cfg) as proxy:
            reason = fail_update(proxy, store, "v3", caplog)
            assert "(sync point)" in reason
            assert "refused the update to v3: this service has no version 'v3' (status 404)" \
                in reason


def test_an_endpoint_that_never_answers_fails_the_update_at_barrier_timeout(
        tmp_path, caplog) -> None:
    """The endpoint is a fake on purpose (a socket that accepts and says nothing): no real
    service built on the library hangs there."""
    caplog.set_level(logging.INFO)
    with socket.create_server(("127.0.0.1", 0)) as silent, kvstore() as store:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/twinproxy/update"
        cfg = config(tmp_path / "kv.toml", store, endpoint=url, update="barrier_timeout = 1.0")
        with running(cfg) as proxy:
            reason = fail_update(proxy, store, "v2", caplog)
            assert "(sync point)" in reason and "did not answer within 1s" in reason


def test_a_child_killed_in_mve_rolls_back_and_a_rollback_ends_the_child(tmp_path) -> None:
    """After the report the child is the follower: its death fails the update (the leader
    serves on); an operator's rollback ends it with SIGTERM, and the service can update again."""
    import os
    import signal

    with kvstore(keys=20) as store:
        cfg = config(tmp_path / "kv.toml", store, update="warmup_seconds = 600")
        with running(cfg) as proxy:
            client = redis.Redis(port=proxy.port)
            proxy.call_async(proxy.service.update, "v2")
            st = poll_until(lambda: status(proxy), lambda s: s["state"] == "mve", 30, "MVE")
            child = st["follower"]["pid"]
            store.pids.add(child)
            assert client.execute_command("PUT", "k", "v") == b"OK"
            os.kill(child, signal.SIGKILL)
            st = poll_until(lambda: status(proxy), ended, 30, "the rollback")
            assert st["serving"] == "v1" and st["follower"] is None
            # (the engine may see a connection close before the process's end is noticed)
            assert st["last_update"]["reason"] in (
                "the follower v2 stopped (crashed or was killed)",
                "the follower v2 closed a connection"), st["last_update"]
            assert client.execute_command("GET", "k") == b"v"

            proxy.call_async(proxy.service.update, "v2")  # the service takes a new update
            st = poll_until(lambda: status(proxy), lambda s: s["state"] == "mve", 30, "MVE")
            child = st["follower"]["pid"]
            store.pids.add(child)
            proxy.call(proxy.service.rollback)
            st = poll_until(lambda: status(proxy), ended, 30, "the rollback")
            assert st["last_update"]["reason"] == "rollback requested"
            poll_until(lambda: descendants(store.proc.pid), lambda pids: child not in pids, 10,
                       "the child to end")
            assert client.execute_command("GET", "key:7") == b"value:7"
            with pytest.raises(redis.ResponseError, match="unknown command 'TYPE'"):
                client.execute_command("TYPE", "key:7")


# ---- the endpoint alone -------------------------------------------------------------------


def test_the_endpoint_forks_reports_answers_a_retry_alike_and_refuses_another_id() -> None:
    """The library's endpoint against the update client, without a proxy: the wire format of
    docs/update-endpoint.md as the proxy uses it."""
    import trio

    from twinproxy.update import UpdateFailed, request_fork, request_update

    with kvstore(keys=10) as store:
        url = store.endpoint_url

        async def exchange() -> tuple:
            forked = await request_fork(url, "v2", timeout=5, request_id="first")
            ready = await request_update(url, "v2", timeout=5, request_id="first")
            again = await request_update(url, "v2", timeout=5, request_id="first")
            with pytest.raises(UpdateFailed) as other:
                await request_update(url, "v2", timeout=5, request_id="second")
            with pytest.raises(UpdateFailed) as unknown:
                await request_update(url, "v9", timeout=5, request_id="third")
            return forked, ready, again, other.value, unknown.value

        forked, ready, again, other, unknown = trio.run(exchange)
        store.pids.add(ready.pid)
        assert forked.pid == ready.pid == again.pid and forked.ready is None
        assert ready.address == again.address and ready.parent_pid == store.proc.pid
        assert (other.kind, other.status) == ("refused", 409)
        assert "another update (to v2, request first) is in progress or running" in other.reason
        assert (unknown.kind, unknown.status) == ("refused", 404)
        child = redis.Redis(*ready.address)
        assert child.execute_command("TYPE", "key:3") == b"string"
        assert child.execute_command("GET", "key:3") == b"value:3"
        parent = redis.Redis(port=store.port)  # the parent serves v1 as before
        assert parent.execute_command("GET", "key:3") == b"value:3"
        with pytest.raises(redis.ResponseError, match="unknown command 'TYPE'"):
            parent.execute_command("TYPE", "key:3")


def test_the_store_tells_its_keys_so_put_and_get_are_ordered_by_key_not_globally() -> None:
    """The cooperative method fetches the leader's COMMAND table, as for Redis: with it PUT,
    GET and DEL have their key (and are not barriers); without it PUT would be a global write."""
    import trio

    from twinproxy.config import VersionConfig
    from twinproxy.protocols.redis import CODEC
    from twinproxy.statesync.base import SyncJob
    from twinproxy.statesync.cooperative import Cooperative

    def described(words: list[bytes], table) -> tuple:
        request = CODEC.describe(CODEC.make_request(words), table)
        return request.keys, request.write, request.is_global

    with kvstore() as store:
        job = SyncJob(number=1, leader=("127.0.0.1", store.port),
                      target=VersionConfig(name="v2", forked=True), barrier_timeout=5,
                      protocol="redis", endpoint=store.endpoint_url)
        table = trio.run(Cooperative(job).prepare)
    assert described([b"PUT", b"k", b"v"], table) == ((b"k",), True, False)
    assert described([b"GET", b"k"], table) == ((b"k",), False, False)
    assert described([b"DEL", b"k"], table) == ((b"k",), True, False)
    assert described([b"PUT", b"k", b"v"], None)[2] is True  # unknown to Redis: a barrier


# ---- the check alone ------------------------------------------------------------------------


def test_the_check_returns_the_new_state_when_the_round_trip_gives_it_back() -> None:
    state = {b"a": b"1", b"b": b"2"}
    new = time_travel(state, lambda s: {k: ("string", v) for k, v in s.items()},
                      lambda s: {k: v for k, (_, v) in s.items()})
    assert new == {b"a": ("string", b"1"), b"b": ("string", b"2")}


def test_the_check_catches_a_bad_backward_transform_naming_the_first_keys() -> None:
    state = {f"k{i}": str(i) for i in range(10)}
    with pytest.raises(CheckFailed) as caught:
        time_travel(state, lambda s: {k: ("string", v) for k, v in s.items()},
                    lambda s: {k: v.upper() if k == "k3" else v for k, (_, v) in s.items()
                               if k != "k1"})
    # (the upper-casing is a no-op on digits: only the dropped key differs)
    assert str(caught.value).endswith("first differences: 'k1': '1' -> '<missing>'")
    assert "(10 keys before, 9 after the round trip)" in str(caught.value)


def test_first_differences_shows_changed_missing_and_added_keys_up_to_a_limit() -> None:
    before = {"a": 1, "b": 2, "c": 3}
    after = {"a": 1, "b": 20, "d": 4}
    assert first_differences(before, after) == [("b", 2, 20), ("c", 3, "<missing>"),
                                                ("d", "<missing>", 4)]
    assert first_differences(before, after, limit=1) == [("b", 2, 20)]
    assert first_differences([1], [2]) == [("<state>", [1], [2])]
