"""A Redis that wants a password (``requirepass``), updated live: the proxy's own connections (the
command table, the sync point's INFO, CLIENT LIST, CLIENT UNBLOCK and BGSAVE) log in with the
version's ``password``; clients log in with their own AUTH, as directly. Without the password in
the config the update fails before any client is held, saying what to set."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.proxyrun import REDIS7, poll_until, running, write_config

PASSWORD = "s3cret-for-the-test"
SERVER = REDIS7.replace('"--dir", "{dir}"]', f'"--dir", "{{dir}}", "--requirepass", "{PASSWORD}"]')
FAST = "warmup_seconds = 1\nwarmup_requests = 0\nbarrier_timeout = 5"


def refusal(port: int) -> str:
    """What a client that did not log in is told (at once: redis-py 8 would otherwise try again
    up to 10 times, backing off, for 4 s, since its AuthenticationError is a ConnectionError)."""
    try:
        redis.Redis(port=port, socket_timeout=5, protocol=2,
                    retry=Retry(NoBackoff(), 0)).execute_command("GET", "k")
    except redis.ResponseError as exc:
        return str(exc)
    except redis.AuthenticationError as exc:
        return f"auth: {exc}"
    return "served"


def with_login(tmp_path, update: str, server: str = SERVER):
    """Two versions of ``server``, each with the password as its own login."""
    login = server + f'\npassword = "{PASSWORD}"'
    return write_config(tmp_path / "r.toml", "redis", {"old": login, "new": login},
                        start="old", update=update)


def test_an_update_of_a_server_with_a_password_cuts_over(tmp_path) -> None:
    config = with_login(tmp_path, FAST)
    with running(config) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        client = redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=10)
        client.mset({f"k{i}": i for i in range(100)})
        assert refusal(proxy.port) == "auth: Authentication required."
        # A client blocked at the sync point: released with the proxy's own CLIENT UNBLOCK
        # (which needs the login) and sent again; it gets the pushed value.
        popped: list = []
        blocked = redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=20)
        waiter = threading.Thread(target=lambda: popped.append(blocked.blpop("queue", 15)))
        waiter.start()
        poll_until(lambda: client.info("clients")["blocked_clients"], lambda n: n == 1, 10,
                   "the BLPOP blocked")
        proxy.call_async(proxy.service.update, "new")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        assert refusal(proxy.port) == "auth: Authentication required."
        client.rpush("queue", "item")
        waiter.join(20)
        assert popped == [(b"queue", b"item")]
        client.set("during", "mve")
        st = poll_until(status, lambda s: s["state"] == "single" and s["last_update"], 30,
                        "the cutover")
        assert st["last_update"]["outcome"] == "cutover", st["last_update"]
        assert client.get("k99") == b"99" and client.get("during") == b"mve"
        assert client.llen("queue") == 0
        assert refusal(proxy.port) == "auth: Authentication required."
        assert [d.request for d in proxy.service.divergences.since(0, 100)
                if not d.expected] == []


@pytest.mark.parametrize("login", ["", 'password = "wrong"'], ids=["none", "wrong"])
def test_without_the_right_password_the_update_fails_and_says_why(tmp_path, login) -> None:
    config = write_config(tmp_path / "r.toml", "redis",
                          {"old": SERVER + "\n" + login, "new": SERVER}, start="old",
                          update=FAST)
    with running(config) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        client = redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=10)
        client.set("k", "v")
        proxy.call_async(proxy.service.update, "new")
        st = poll_until(status, lambda s: s["state"] == "single" and s["last_update"], 30,
                        "the update's end")
        reason = st["last_update"]["reason"]
        assert st["last_update"]["outcome"] == "rolled-back", st["last_update"]
        if login:
            assert "refused the proxy's login as user 'default'" in reason
            assert "wrong" not in reason.replace("WRONGPASS", "")  # the password is not shown
        else:
            assert "NOAUTH" in reason and "password (or password_env)" in reason
        assert client.get("k") == b"v"


HELD = "warmup_seconds = 1000\nwarmup_requests = 0\nbarrier_timeout = 5"


def test_during_an_update_clients_logged_in_as_the_proxys_user_share_and_nobody_else(
        tmp_path) -> None:
    """The shared connections log in as the versions' ``password`` (the default user), and only
    clients logged in as that user share them: a client logged in as a user with fewer
    permissions, or not logged in at all, is refused on its own connections as directly, never
    served as the proxy's user. Before, every client that logged in kept its own connections
    for the whole update: 85 us of the proxy's CPU per GET instead of 21
    (loadtests/cpu_split.py --password)."""
    # (ACL users are configuration, not data: both versions get the reader from their own.)
    server = SERVER.replace(f'"{PASSWORD}"]', f'"{PASSWORD}", "--user", "reader", "on", '
                            '">reader-pw", "~*", "+get", "+hello", "+client", "+ping"]')
    with running(with_login(tmp_path, HELD, server)) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        before = redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=10,
                             single_connection_client=True)
        before.set("k", "v")
        proxy.call_async(proxy.service.update, "new")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        during = redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=10,
                             single_connection_client=True)
        reader = redis.Redis(port=proxy.port, username="reader", password="reader-pw",
                             socket_timeout=10, single_connection_client=True)
        for i in range(20):
            before.set(f"b{i}", i)
            during.set(f"d{i}", i)
        assert reader.get("k") == b"v" and reader.get("d19") == b"19"
        try:
            reader.set("k", "changed")
        except redis.exceptions.NoPermissionError:
            pass
        else:
            raise AssertionError("the reader user ran SET")
        assert refusal(proxy.port) == "auth: Authentication required."
        # The two clients logged in as the default user share; the reader does not.
        assert status()["update"]["shared_clients"] == 2
        assert before.get("k") == b"v" and during.get("b19") == b"19"
        st = status()
        assert st["state"] == "mve" and st["update"]["divergences"] == 0, st["update"]
