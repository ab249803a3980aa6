"""A ``cas`` race across a live update of memcached (``sync = "memcache-copy"``): two pymemcache
clients compete on one key with ``gets``/``cas``, round after round, and the rounds are placed
so that one takes its tokens before the sync point and sends its ``cas`` after it, and one takes
them from the old version and sends its ``cas`` to the new one after the cutover.

What a user checks: every round has exactly one winner (the other gets EXISTS, as it would have
without an update), on both versions (no divergence), and the key ends holding what the winners
wrote. Before the proxy translated old tokens after the cutover, the round across it had no
winner (both got EXISTS).
"""

from __future__ import annotations

import threading

import pytest
from pymemcache.client.base import Client

from tests.proxyrun import MEMCACHED, poll_until, running, write_config

ROUNDS = 12
UPDATE_AT = 3  # the round whose tokens are taken before the sync point, its cas after it
CUTOVER_AT = 7  # the round whose tokens are the old version's, its cas sent to the new one
STOP_AT = 10  # keep-old: the round before which the old version stops following


class Racer(threading.Thread):
    """One client of the race: each round it takes a token, waits for the other (and for the
    test, which may move the update on meanwhile), sends ``cas`` with value + 1."""

    def __init__(self, name: str, address: tuple[str, int], gate: threading.Barrier):
        super().__init__(daemon=True)
        self.client = Client(address, no_delay=True, timeout=30)
        self.name, self.gate = name, gate
        self.outcomes: list[bool | None] = []
        self.tokens: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(ROUNDS):
                self.gate.wait(timeout=60)
                value, token = self.client.gets("race")
                self.tokens.append(int(token))
                self.gate.wait(timeout=60)  # both hold a token of the same version
                self.gate.wait(timeout=120)  # the test moved the update on, if this round does
                won = self.client.cas("race", b"%d" % (int(value) + 1), token, noreply=False)
                self.outcomes.append(won)
                self.gate.wait(timeout=60)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.gate.abort()


def race(tmp_path, after_cutover: str) -> None:
    """The race, with the cutover ``after_cutover``; for keep-old, the old version follows
    from CUTOVER_AT until the promote at STOP_AT, and the rounds between run on both."""
    keep_old = after_cutover == "keep-old"
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
        update=f'sync = "memcache-copy"\nwarmup_seconds = 600\nwarmup_requests = 1\n'
               f'after_cutover = "{after_cutover}"\n',
        rules='[[rules]]\nname = "stats"\ncommand = "stats"\nignore = true\n')
    with running(config) as proxy:
        service = proxy.service
        status = lambda: proxy.call(service.status)  # noqa: E731
        loader = Client(proxy.address, no_delay=True, timeout=30)
        loader.set_many({f"other{i}": b"x" * i for i in range(500)}, noreply=False)
        assert loader.set("race", b"0", noreply=False)
        # Push the old version's counter on, so the two versions' tokens differ.
        for i in range(300):
            loader.set("churn", b"%d" % i, noreply=False)
        gate = threading.Barrier(3)
        racers = [Racer(name, proxy.address, gate) for name in ("a", "b")]
        for racer in racers:
            racer.start()
        def direct(name: str) -> Client:
            return Client(service.backends[name].address, timeout=30)

        carried = None
        try:
            for round_ in range(ROUNDS):
                gate.wait(timeout=60)  # the racers take their tokens
                gate.wait(timeout=60)
                if round_ == UPDATE_AT:
                    proxy.call_async(service.update, "v2")
                    poll_until(status, lambda s: s["state"] == "mve", 60, "MVE")
                elif round_ == CUTOVER_AT:
                    proxy.call(service.promote)
                    if keep_old:
                        poll_until(status, lambda s: s["leader"]["version"] == "v2", 60,
                                   "the cutover")
                        assert status()["follower"]["version"] == "v1"
                    else:
                        poll_until(status, lambda s: s["state"] == "single", 60, "the cutover")
                elif keep_old and round_ == STOP_AT:
                    # The old version followed every round since the cutover: it holds what
                    # the winners wrote, as the new one does.
                    both = (direct("v1"), direct("v2"))
                    poll_until(lambda: tuple(c.get("race") for c in both),  # noqa: B023
                               lambda got: got == (b"%d" % STOP_AT,) * 2, 30, "the follower")
                    carried = proxy.call(lambda: service.current.engine.carry)
                    proxy.call(service.promote)
                    poll_until(status, lambda s: s["state"] == "single", 60, "the end")
                gate.wait(timeout=60)  # the racers send their cas
                gate.wait(timeout=60)
        except BaseException:
            gate.abort()  # not after the last round: a racer may still be leaving its wait
            raise
        finally:
            for racer in racers:
                racer.join(30)
        for racer in racers:
            assert racer.error is None, repr(racer.error)
        done = status()
        assert done["last_update"]["outcome"] == "cutover", done
        assert done["serving"] == "v2" and done["divergences"] == 0, done
        a, b = racers
        # Both raced with the same token each round, and the round across the cutover used
        # the old version's (the new version's token for that item is another number).
        assert a.tokens == b.tokens
        new_token = loader.gets("race")[1]
        assert int(new_token) != a.tokens[CUTOVER_AT]
        rounds = [sorted((x, y), key=str) for x, y in zip(a.outcomes, b.outcomes, strict=True)]
        assert rounds == [[False, True]] * ROUNDS, rounds
        # The key holds what the winners wrote, on the version that serves now.
        assert loader.get("race") == b"%d" % ROUNDS
        assert direct("v2").get("race") == b"%d" % ROUNDS
        carry = proxy.call(lambda: service.relay.carry)
        if keep_old:  # the engine translated while the old version followed
            assert carried is carry
        assert carry is not None and carry.translated >= 1 and carry.refused >= 1


def test_cas_race_through_the_sync_point_and_the_cutover_has_one_winner_each_round(
        tmp_path) -> None:
    race(tmp_path, "stop-old")


def test_cas_race_with_the_old_version_kept_following_has_one_winner_each_round(
        tmp_path) -> None:
    """keep-old: tokens taken from the old version are translated for the new one, which now
    leads, and the old one, following, gets back the tokens it gave (the same outcome)."""
    race(tmp_path, "keep-old")


BIG = 2 << 20  # a value of 2 MiB: over the 1 MiB from which large values took another path


@pytest.mark.parametrize("after_cutover", ["stop-old", "keep-old"])
def test_a_cas_of_a_2_mib_value_across_the_cutover_has_one_winner(tmp_path,
                                                                   after_cutover: str) -> None:
    """Two clients take the token of a 2 MiB item from the old version; after the cutover
    both send a ``cas`` with a 2 MiB value: the first stores, the second gets EXISTS, and
    (keep-old) the old version, following, ends holding the same value."""
    memcached = MEMCACHED.replace('"-U", "0"', '"-U", "0", "-I", "4m"')
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": memcached, "v2": memcached},
        update=f'sync = "memcache-copy"\nwarmup_seconds = 600\nwarmup_requests = 1\n'
               f'after_cutover = "{after_cutover}"\n',
        rules=f"[limits]\nmax_value = {4 << 20}\n")
    with running(config) as proxy:
        service = proxy.service
        status = lambda: proxy.call(service.status)  # noqa: E731
        a, b = (Client(proxy.address, no_delay=True, timeout=30) for _ in range(2))
        assert a.set("big", b"0" * BIG, noreply=False)
        for i in range(300):  # the two versions' tokens differ
            a.set("churn", b"%d" % i, noreply=False)
        proxy.call_async(service.update, "v2")
        poll_until(status, lambda s: s["state"] == "mve", 60, "MVE")
        # During MVE: the follower gets its own token for the version (of a 2 MiB cas).
        (_, token), (_, other) = a.gets("big"), b.gets("big")
        assert b.cas("big", b"1" * BIG, other, noreply=False) is True
        assert a.cas("big", b"2" * BIG, token, noreply=False) is False
        # Across the cutover.
        (_, token), (_, other) = a.gets("big"), b.gets("big")
        assert token == other
        proxy.call(service.promote)
        poll_until(status, lambda s: s["leader"]["version"] == "v2", 60, "the cutover")
        assert a.cas("big", b"a" * BIG, token, noreply=False) is True
        assert b.cas("big", b"b" * BIG, other, noreply=False) is False
        assert a.get("big") == b"a" * BIG
        new = Client(service.backends["v2"].address, timeout=30)
        assert new.gets("big")[1] != token  # the new version numbered it otherwise
        if after_cutover == "keep-old":
            old = Client(service.backends["v1"].address, timeout=30)
            poll_until(lambda: old.get("big") == b"a" * BIG, lambda same: same, 30,
                       "the follower")
        done = status()
        assert done["divergences"] == 0, done
        carry = proxy.call(lambda: service.relay.carry)
        assert carry is not None and (carry.translated, carry.refused) == (1, 1)


def test_tokens_of_the_new_version_keep_working_after_the_swap_back(tmp_path) -> None:
    """keep-old, then rollback: two clients take a token from the new version while it leads
    (the old one following); the operator swaps back; the first cas with that token stores on
    the old version, which leads again, and the second gets EXISTS, as without an update."""
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
        update='sync = "memcache-copy"\nwarmup_seconds = 600\nwarmup_requests = 1\n'
               'after_cutover = "keep-old"\n')
    with running(config) as proxy:
        service = proxy.service
        status = lambda: proxy.call(service.status)  # noqa: E731
        a, b = (Client(proxy.address, no_delay=True, timeout=30) for _ in range(2))
        for i in range(300):  # the old version's counter runs ahead: the tokens differ
            a.set("churn", b"%d" % i, noreply=False)
        assert a.set("k", b"0", noreply=False)
        proxy.call_async(service.update, "v2")
        poll_until(status, lambda s: s["state"] == "mve", 60, "MVE")
        proxy.call(service.promote)
        poll_until(status, lambda s: s["leader"]["version"] == "v2", 60, "the cutover")
        (_, token), (_, other) = a.gets("k"), b.gets("k")
        assert token == other
        old = Client(service.backends["v1"].address, timeout=30)
        assert old.gets("k")[1] != token  # the old version numbered it otherwise
        proxy.call(service.rollback)
        poll_until(status, lambda s: s["state"] == "single", 60, "the swap back")
        done = status()
        assert done["serving"] == "v1" and done["divergences"] == 0, done
        assert a.cas("k", b"a", token, noreply=False) is True
        assert b.cas("k", b"b", other, noreply=False) is False
        assert a.get("k") == b"a" and old.get("k") == b"a"
        carry = proxy.call(lambda: service.relay.carry)
        assert carry is not None and (carry.translated, carry.refused) == (1, 1)
