"""A connection named by its id during an update (issue 10): a client asks CLIENT ID on one
connection and at once sends CLIENT TRACKING ... REDIRECT <that id> on another, as redis-py's
own tests do. The leader answers first; the follower, behind (here: asleep in DEBUG SLEEP, as a
loaded machine makes it), has not told its own id for that connection yet when the redirect is
released to it. The follower must get its own id, not the leader's (it would refuse "The client
ID you want redirect to does not exist", an unexpected divergence seen under CPU load in the
conformance run of redis-py on update-7.0-7.0)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import redis

from tests.proxyrun import REDIS7, running
from tests.test_mve_redis import port_of, status, unexpected, update_config, wait_for


def test_a_redirect_to_an_id_the_follower_has_not_told_yet(tmp_path) -> None:
    config = update_config(tmp_path, REDIS7, REDIS7,
                           update='warmup_seconds = 600\nwarmup_requests = 0\n'
                                  'on_divergence = "log"')
    with running(config) as proxy:
        leader = port_of(status(proxy)["leader"]["address"])
        others = [redis.Redis(port=leader) for _ in range(5)]  # the two servers' ids differ
        for other in others:
            other.ping()
        proxy.call_async(proxy.service.update, "new")
        st = wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        follower = redis.Redis(port=port_of(st["follower"]["address"]), socket_timeout=10)
        pool = redis.ConnectionPool(port=proxy.port, socket_timeout=10)
        target, tracked = pool.get_connection(), pool.get_connection()
        sleeper = threading.Thread(target=follower.execute_command, args=("DEBUG", "SLEEP", "1"))
        sleeper.start()
        time.sleep(0.2)  # (the follower is asleep)
        try:
            target.send_command("CLIENT", "ID")
            target_id = target.read_response()
            tracked.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", target_id)
            assert tracked.read_response() == b"OK"
        finally:
            sleeper.join(10)
        tracked.send_command("GET", "k")
        assert tracked.read_response() is None
        wait_for(proxy, lambda s: s["update"]["compared"] >= 3, what="the follower's replies",
                 timeout=10)
        assert unexpected(proxy) == [], unexpected(proxy)
        assert status(proxy)["state"] == "mve"
        pool.release(target)
        pool.release(tracked)
        pool.disconnect()
        for other in others:
            other.close()


def test_a_login_after_an_acl_change_of_another_connection(tmp_path) -> None:
    """ACL SETUSER on one connection, then a new connection logs in as that user (HELLO ...
    AUTH, as redis-py does, and AUTH) and reads. The follower, behind (here: a write before the
    ACL SETUSER held by CLIENT PAUSE WRITE there), must run the login after the ACL change, as
    the leader did: it ran it first and refused the password (WRONGPASS, which HELLO's
    server-specific reply hid as an expected divergence), and the client's later commands ran
    there as another user."""
    with in_mve(tmp_path) as proxy:
        follower = redis.Redis(port=port_of(status(proxy)["follower"]["address"]),
                               socket_timeout=10)
        admin = redis.Redis(port=proxy.port, single_connection_client=True, socket_timeout=10)
        admin.ping()
        follower.execute_command("CLIENT", "PAUSE", "500", "WRITE")
        admin.set("k", 1)
        admin.execute_command("ACL", "SETUSER", "u", "on", ">pw", "+get", "~*")
        admin.execute_command("ACL", "SETUSER", "v", "on", ">pw", "+get", "~*")
        hello = redis.Redis(port=proxy.port, username="u", password="pw", protocol=3,
                            single_connection_client=True, socket_timeout=10)
        assert hello.get("k") == b"1"
        auth = redis.Redis(port=proxy.port, single_connection_client=True, socket_timeout=10)
        assert auth.execute_command("AUTH", "v", "pw")
        assert auth.get("k") == b"1"
        wait_for(proxy, lambda s: s["update"]["compared"] >= 10, what="the follower's replies",
                 timeout=10)
        refused = [d for d in proxy.service.divergences.since(0, 1000)
                   if d.follower.startswith(b"-")]
        assert refused == [], refused
        assert unexpected(proxy) == [], unexpected(proxy)
        for client in (admin, hello, auth):
            client.close()


def test_a_login_after_a_requirepass_change_of_another_connection(tmp_path) -> None:
    """CONFIG SET requirepass on one connection, then a new connection logs in with that
    password and reads. The follower, behind (here: a PFCOUNT, a read, before the CONFIG SET
    on the same connection, held by CLIENT PAUSE WRITE there, which pauses it too), must run the
    login after the change, as the leader did; it ran it first and refused it ("called without
    any password configured"), and the client's later commands ran there unauthenticated."""
    with in_mve(tmp_path) as proxy:
        follower = redis.Redis(port=port_of(status(proxy)["follower"]["address"]),
                               socket_timeout=10)
        admin = redis.Redis(port=proxy.port, single_connection_client=True, socket_timeout=10)
        admin.set("k", 1)
        follower.execute_command("CLIENT", "PAUSE", "500", "WRITE")
        assert admin.pfcount("hll") == 0
        assert admin.config_set("requirepass", "pw")
        login = redis.Redis(port=proxy.port, password="pw", protocol=2,  # (AUTH pw)
                            single_connection_client=True, socket_timeout=10)
        assert login.get("k") == b"1"
        wait_for(proxy, lambda s: s["update"]["compared"] >= 6, what="the follower's replies",
                 timeout=10)
        refused = [d for d in proxy.service.divergences.since(0, 1000)
                   if d.follower.startswith(b"-")]
        assert refused == [], refused
        assert unexpected(proxy) == [], unexpected(proxy)
        assert admin.config_set("requirepass", "")
        for client in (admin, login):
            client.close()


def test_client_list_id_names_the_pair_on_the_follower(tmp_path) -> None:
    """A client asks its connection's id (CLIENT ID, or CLIENT INFO's id field) and another
    lists it (CLIENT LIST ID, as redis-py's tests do): the follower must list the same
    client's connection there, under its own id; the replies are compared on the session
    (name, db, user ...), not on ids, addresses and ages."""
    with in_mve(tmp_path, clients_before=5) as proxy:
        named = redis.Redis(port=proxy.port, db=2, client_name="named", protocol=2,
                            single_connection_client=True, socket_timeout=10)
        lister = redis.Redis(port=proxy.port, single_connection_client=True, socket_timeout=10)
        for ask in (named.client_id, lambda: named.client_info()["id"]):
            target = ask()
            [entry] = lister.client_list(client_id=[target])
            assert entry["name"] == "named" and entry["db"] == "2"

        def listed() -> list:
            return [d for d in proxy.service.divergences.since(0, 1000)
                    if d.request[:2] == [b"CLIENT", b"LIST"]]

        # (the ids differ: each is kept as an expected divergence, with the follower's reply)
        wait_for(proxy, lambda s: len(listed()) >= 2, what="the follower's replies", timeout=10)
        for d in listed():
            assert b"name=named" in d.follower and d.rule == "builtin:client-fields", d
        assert unexpected(proxy) == [], unexpected(proxy)
        for client in (named, lister):
            client.close()


def test_a_broken_redirect_is_told_by_each_version_with_its_own_id(tmp_path) -> None:
    """RESP3: a connection that tracks keys for another one, whose redirect target closes, gets
    a ``tracking-redir-broken`` push naming the target by its id, each version its own (redis-py's
    suite with --protocol=3 met it as an unexpected divergence). Compared as the same connection,
    through the ids both versions gave for it."""
    with in_mve(tmp_path, clients_before=5) as proxy:
        target, tracked = (socket.create_connection(proxy.address, timeout=10)
                           for _ in range(2))
        for conn in (target, tracked):
            conn.sendall(b"HELLO 3\r\n")
            read_until(conn, b"modules\r\n*0\r\n")
        target_id = redirect(tracked, target)
        tracked.sendall(b"GET k\r\n")  # now tracked: its change goes to the redirect
        assert read_until(tracked, b"_\r\n") == b"_\r\n"
        target.close()
        time.sleep(0.2)
        redis.Redis(port=proxy.port).set("k", "changed")  # the redirect is gone: a push
        tracked.sendall(b"PING\r\n")
        assert read_until(tracked, b"+PONG\r\n") == (
            b">2\r\n$21\r\ntracking-redir-broken\r\n:%d\r\n+PONG\r\n" % target_id)
        wait_for(proxy, lambda s: s["update"]["backlog"] == 0, what="the follower",
                 timeout=10)
        assert unexpected(proxy) == [], unexpected(proxy)
        assert status(proxy)["state"] == "mve"
        tracked.close()


def read_until(conn: socket.socket, end: bytes) -> bytes:
    """What ``conn`` gives until it ends with ``end``."""
    got = b""
    while not got.endswith(end):
        chunk = conn.recv(65536)
        assert chunk, got
        got += chunk
    return got


def test_a_redirect_to_a_connection_that_closed_before_the_follower_ran_it(tmp_path) -> None:
    """The leader ran CLIENT TRACKING ... REDIRECT while its target was open; the target closed
    before the follower, behind (asleep here), got the redirect. The target's follower
    connection stays open until the follower has run it, so the follower accepts the redirect
    as the leader did. Closed at once (as it was), the follower refused it ("The client ID you
    want redirect to does not exist"): an unexpected divergence, and tracking that differs
    from then on. The next test met it now and then under load."""
    with in_mve(tmp_path, clients_before=5) as proxy:
        target, tracked = (socket.create_connection(proxy.address, timeout=10)
                           for _ in range(2))
        with follower_asleep(proxy):
            redirect(tracked, target)
            target.close()
            time.sleep(0.2)  # (the proxy sees the close while the follower still sleeps)
        tracked.sendall(b"PING\r\n")
        assert read_until(tracked, b"\r\n") == b"+PONG\r\n"
        wait_for(proxy, lambda s: s["update"]["backlog"] == 0, what="the follower",
                 timeout=10)
        assert unexpected(proxy) == [], unexpected(proxy)
        assert status(proxy)["update"]["compared"] >= 3
        assert status(proxy)["state"] == "mve"
        tracked.close()


def test_a_redirect_to_a_connection_after_it_closed_is_refused_by_both(tmp_path) -> None:
    """A client asked its id and closed; another asks to redirect its tracking to that id
    after the close. The leader, which saw the close first, refuses, so the follower, behind
    (asleep here), must run the redirect after its pair of that connection has closed too,
    even while that pair is held open for a REDIRECT released before the close. Sent at once,
    the follower accepted it: an unexpected divergence, and tracking that differs from then
    on."""
    with in_mve(tmp_path, clients_before=5) as proxy:
        target, tracked, left, late = (socket.create_connection(proxy.address, timeout=10)
                                       for _ in range(4))
        with follower_asleep(proxy):
            redirect(tracked, target)
            left_id = client_id(left)
            left.close()
            time.sleep(0.2)  # (the proxy sees the close while the follower still sleeps)
            late.sendall(b"CLIENT TRACKING ON REDIRECT %d\r\n" % left_id)
            assert b"does not exist" in read_until(late, b"\r\n")
        wait_for(proxy, lambda s: s["update"]["backlog"] == 0, what="the follower",
                 timeout=10)
        assert unexpected(proxy) == [], unexpected(proxy)
        assert status(proxy)["update"]["compared"] >= 4
        assert status(proxy)["state"] == "mve"
        for conn in (target, tracked, late):
            conn.close()


def test_a_connection_held_for_a_redirect_the_follower_will_never_run_closes(tmp_path) -> None:
    """A client that asked its id left while a REDIRECT released before was still to run on the
    follower, so its pair there stays open for it; then the follower closed the connection that
    carried the REDIRECT without running it (killed here, as another client's CLIENT KILL does).
    Nothing is left to wait for: the pair closes at once, not when the update ends, and the
    REDIRECT leaves the follower's backlog (it stayed there, owed for ever)."""
    with in_mve(tmp_path, clients_before=5) as proxy:
        follower_port = port_of(status(proxy)["follower"]["address"])
        follower = redis.Redis(port=follower_port, socket_timeout=10)
        target, tracked, left = (socket.create_connection(proxy.address, timeout=10)
                                 for _ in range(3))
        for conn, name in ((tracked, b"tracked"), (left, b"leftover")):
            conn.sendall(b"CLIENT SETNAME %s\r\n" % name)
            assert read_until(conn, b"\r\n") == b"+OK\r\n"
            client_id(conn)

        def pairs(name: str) -> list[dict]:
            return [c for c in follower.client_list() if c["name"] == name]

        deadline = time.monotonic() + 10
        while not pairs("tracked") and time.monotonic() < deadline:
            time.sleep(0.05)
        [pair] = pairs("tracked")
        killer = socket.create_connection(("127.0.0.1", follower_port), timeout=10)
        # Asleep, then it kills the pair before it reads what came to it meanwhile.
        killer.sendall(b"DEBUG SLEEP 1\r\nCLIENT KILL ID %s\r\n" % pair["id"].encode())
        time.sleep(0.2)
        redirect(tracked, target)
        tracked.close()
        left.close()
        assert read_until(killer, b":1\r\n") == b"+OK\r\n:1\r\n"  # (it slept, it killed)
        deadline = time.monotonic() + 10
        while pairs("leftover") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pairs("leftover") == []
        # The REDIRECT the follower never ran is not owed any more (a cutover waits for that).
        wait_for(proxy, lambda s: s["update"]["backlog"] == 0, what="the follower", timeout=10)
        assert unexpected(proxy) == [], unexpected(proxy)
        assert status(proxy)["state"] == "mve"
        for conn in (target, killer):
            conn.close()


def client_id(conn: socket.socket) -> int:
    """The id the proxy's client ``conn`` gets for its connection (the leader's)."""
    conn.sendall(b"CLIENT ID\r\n")
    return int(read_until(conn, b"\r\n")[1:-2])


def redirect(tracked: socket.socket, target: socket.socket) -> int:
    """``target`` asks its id and ``tracked`` redirects its tracking there: the leader
    accepts. Returns the id."""
    target_id = client_id(target)
    tracked.sendall(b"CLIENT TRACKING ON REDIRECT %d\r\n" % target_id)
    assert read_until(tracked, b"\r\n") == b"+OK\r\n"
    return target_id


@contextlib.contextmanager
def follower_asleep(proxy) -> Iterator[None]:
    """The follower asleep in DEBUG SLEEP for a second, as a loaded machine keeps it behind,
    while the block runs (from 0.2 s in)."""
    follower = redis.Redis(port=port_of(status(proxy)["follower"]["address"]),
                           socket_timeout=10)
    sleeper = threading.Thread(target=follower.execute_command, args=("DEBUG", "SLEEP", "1"))
    sleeper.start()
    time.sleep(0.2)
    try:
        yield
    finally:
        sleeper.join(10)
        follower.close()


@contextlib.contextmanager
def in_mve(tmp_path, clients_before: int = 0) -> Iterator:
    """A proxy in an update from 7.0 to 7.0 that logs divergences. ``clients_before`` clients of
    the old version's own, connected before the update, make the two versions give a client's
    connection different ids."""
    config = update_config(tmp_path, REDIS7, REDIS7,
                           update='warmup_seconds = 600\nwarmup_requests = 0\n'
                                  'on_divergence = "log"')
    with running(config) as proxy:
        leader = port_of(status(proxy)["leader"]["address"])
        others = [redis.Redis(port=leader) for _ in range(clients_before)]
        for other in others:
            other.ping()
        proxy.call_async(proxy.service.update, "new")
        wait_for(proxy, lambda s: s["state"] == "mve", what="MVE")
        try:
            yield proxy
        finally:
            for other in others:
                other.close()
