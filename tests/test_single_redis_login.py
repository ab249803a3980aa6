"""SINGLE mode in front of a Redis that wants a password (``requirepass``): a client's replies go
unframed once it has logged in as the user the proxy's own login showed may run the sentinel,
as on a server without a password; any other client's stay framed. Without that every reply of
every client was framed in Python, twice the proxy's CPU per request (loadtests/cpu_split.py).
The proxy's own login and sentinels stay out of the counts INFO shows clients."""

from __future__ import annotations

import threading

import redis

from tests.proxyrun import REDIS7, running, write_config

PASSWORD = "s3cret-for-the-test"
SERVER = REDIS7.replace('"--dir", "{dir}"]', f'"--dir", "{{dir}}", "--requirepass", "{PASSWORD}"]')


def _framed(proxy) -> list[bool]:
    """Whether each client's server connection has its replies framed, in no order."""
    return [client.link.replies is not None for client in proxy.service.relay.clients
            if client.link is not None]


def _calls(info: dict, command: str) -> int:
    return info.get(f"cmdstat_{command}", {}).get("calls", 0)


def test_a_logged_in_clients_replies_go_unframed_and_the_proxys_login_is_not_counted(
        tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis",
                          {"a": SERVER + f'\npassword = "{PASSWORD}"'})
    with running(config) as proxy:
        backend = proxy.service.relay.backend
        assert proxy.call(lambda: (backend.sentinel_ok, backend.sentinel_user)) == \
            (False, b"default")
        client = redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=10,
                             single_connection_client=True)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert proxy.call(_framed, proxy) == [False]
        # A transaction and a blocking request frame the replies for a while (the sentinel
        # marks where the unframed ones ended); then they go unframed again.
        with client.pipeline(transaction=True) as pipe:
            assert pipe.incr("n").incr("n").execute() == [1, 2]
        pusher = threading.Timer(0.3, lambda: redis.Redis(
            port=proxy.port, password=PASSWORD).rpush("q", "item"))
        pusher.start()
        assert client.blpop("q", 5) == (b"q", b"item")
        pusher.join()
        assert client.get("n") == b"2"
        assert set(proxy.call(_framed, proxy)) == {False}  # (this client's and the pusher's)
        # The server ran the proxy's AUTH (when the version came up) and its ECHOs; a client
        # sees only its own requests counted, as directly (redis-py logs in with HELLO).
        direct = redis.Redis(*backend.address, password=PASSWORD, single_connection_client=True)
        server = direct.info("commandstats")
        shown = client.info("commandstats")
        assert (_calls(server, "auth"), _calls(shown, "auth")) == (1, 0)
        assert _calls(server, "echo") >= 2 and _calls(shown, "echo") == 0
        assert _calls(shown, "hello") == _calls(server, "hello")
        direct.close()


def test_a_client_logged_in_as_another_user_stays_framed_and_is_served(tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis",
                          {"a": SERVER + f'\npassword = "{PASSWORD}"'})
    with running(config) as proxy:
        admin = redis.Redis(port=proxy.port, password=PASSWORD)
        admin.acl_setuser("app", enabled=True, passwords=["+app-pw"], keys=["*"],
                          commands=["+get", "+set", "+hello", "+client", "+ping", "+auth"])
        app = redis.Redis(port=proxy.port, username="app", password="app-pw",
                          single_connection_client=True, socket_timeout=10)
        app.set("k", "v")
        assert app.get("k") == b"v"
        # It may not run ECHO, so nothing would tell where its unframed replies ended.
        try:
            app.echo("x")
        except redis.exceptions.NoPermissionError as exc:
            assert "no permissions to run the 'echo' command" in str(exc)
        else:
            raise AssertionError("the app user ran ECHO")
        relay = proxy.service.relay
        users = proxy.call(lambda: sorted(
            (relay.codec.logged_in_user(c.link.replies) if c.link.replies is not None
             else b"(unframed)") for c in relay.clients if c.link is not None))
        assert users == [b"(unframed)", b"app"]  # (admin, as the default user, went unframed)
        assert app.get("k") == b"v"


def test_without_the_right_login_every_reply_stays_framed_and_clients_are_served(
        tmp_path) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"a": SERVER + '\npassword = "wrong"'})
    with running(config) as proxy:
        assert proxy.call(lambda: proxy.service.relay.backend.sentinel_user) is None
        client = redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=10,
                             single_connection_client=True)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert proxy.call(_framed, proxy) == [True]


def test_on_a_server_without_a_password_a_client_logged_in_as_an_acl_user_stays_framed(
        tmp_path) -> None:
    """A fresh connection answers the sentinel there, but a client logged in as an ACL user
    that may not run ECHO would not: its replies stay framed, so no sentinel goes on its
    connection, and its SELECT, transaction and HELLO are answered as directly (redis-py's
    own test_client_kill_filter_by_user in database 9 got the sentinel's NOPERM instead)."""
    config = write_config(tmp_path / "r.toml", "redis", {"a": REDIS7})
    with running(config) as proxy:
        assert proxy.call(lambda: proxy.service.relay.backend.sentinel_ok)
        admin = redis.Redis(port=proxy.port)
        admin.acl_setuser("app", enabled=True, passwords=["+app-pw"], keys=["*"],
                          commands=["+get", "+set", "+hello", "+client", "+ping", "+auth",
                                    "+select", "+multi", "+exec", "+incrby"])
        app = redis.Redis(port=proxy.port, username="app", password="app-pw", db=2,
                          single_connection_client=True, socket_timeout=10)
        app.set("k", "v")
        with app.pipeline(transaction=True) as pipe:
            assert pipe.incr("n").incr("n").execute() == [1, 2]
        app.execute_command("SELECT", "3")
        assert app.get("k") is None
        app.execute_command("SELECT", "2")
        assert app.get("k") == b"v" and app.get("n") == b"2"
        assert admin.get("k") is None  # (database 0)
        relay = proxy.service.relay
        users = proxy.call(lambda: sorted(
            (relay.codec.logged_in_user(c.link.replies) if c.link.replies is not None
             else b"(unframed)") for c in relay.clients if c.link is not None))
        assert users == [b"(unframed)", b"app", b"app"]  # (admin; app's, and its pipeline's)
