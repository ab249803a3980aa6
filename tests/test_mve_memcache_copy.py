"""A live update of memcached with ``sync = "memcache-copy"``, under load from real clients
(pymemcache, and the meta protocol on plain sockets), against two real memcached.

What a user checks: after the sync point the new version holds what the old one holds (keys,
values, flags; TTLs within a second), the cutover comes with no client error and no unexpected
divergence, every acknowledged write is there afterwards, and a ``cas`` race has exactly one
winner per round on both versions (no divergence: the follower's cas, with its own token, had the
same outcome) through the sync point and the cutover (a token taken from the old version is
translated after it: docs/design.md, "State sync"; tests/test_mve_memcache_cas.py places rounds
exactly across both).
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time

from pymemcache.client.base import Client

from tests.proxyrun import MEMCACHED, poll_until, running, write_config

ITEMS = 3000
THREADS = 4


class Meta:
    """The meta protocol on a plain socket (pymemcache does not speak it): one request, its
    reply line and data."""

    def __init__(self, address: tuple[str, int]):
        self.sock = socket.create_connection(address, timeout=30)
        self.file = self.sock.makefile("rb")

    def __call__(self, line: str, data: bytes | None = None) -> tuple[bytes, bytes | None]:
        raw = line.encode() + b"\r\n" + (data + b"\r\n" if data is not None else b"")
        self.sock.sendall(raw)
        reply = self.file.readline().rstrip(b"\r\n")
        if reply.startswith(b"VA "):
            size = int(reply.split()[1])
            return reply, self.file.read(size + 2)[:-2]
        return reply, None

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def dump(address: tuple[str, int]) -> dict[bytes, tuple[bytes, int, int]]:
    """Every item of one server, read directly: key -> (value, flags, absolute expiry or -1)."""
    for _ in range(200):
        with socket.create_connection(address, timeout=30) as sock:
            sock.sendall(b"lru_crawler metadump hash\r\n")
            text = b""
            while not (text.endswith(b"END\r\n") or (text.startswith(b"BUSY") and
                       text.endswith(b"\r\n"))):
                chunk = sock.recv(1 << 20)
                assert chunk, text[-200:]
                text += chunk
        if not text.startswith(b"BUSY"):
            break
        time.sleep(0.05)
    from urllib.parse import unquote_to_bytes
    exps = {}
    for line in text.split(b"\n"):
        if line.startswith(b"key="):
            fields = dict(f.split(b"=", 1) for f in line.split(b" "))
            exps[unquote_to_bytes(fields[b"key"])] = int(fields[b"exp"])
    meta = Meta(address)
    out = {}
    try:
        for key, exp in exps.items():
            head, data = meta(f"mg {key.decode()} v f")
            if head.startswith(b"VA"):
                out[key] = (data, int(head.split()[2][1:]), exp)
    finally:
        meta.close()
    return out


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k][:2] == b[k][:2] and abs(a[k][2] - b[k][2]) <= 1 for k in a)


def differences(a: dict, b: dict) -> str:
    """What differs between two dumps, for a failure's message."""
    different = [(k, a[k], b[k]) for k in a.keys() & b.keys()
                 if a[k][:2] != b[k][:2] or abs(a[k][2] - b[k][2]) > 1]
    return (f"only on the leader: {sorted(a.keys() - b.keys())[:10]}; "
            f"only on the follower: {sorted(b.keys() - a.keys())[:10]}; "
            f"different: {different[:10]}")


class Worker(threading.Thread):
    """One client on its own keys, so that it knows every reply it must get; it keeps what the
    server acknowledged, and fails on the first reply that is not the one expected."""

    def __init__(self, n: int, address: tuple[str, int], pause: threading.Event,
                 stop: threading.Event):
        super().__init__(daemon=True)
        self.n, self.pause, self.stop = n, pause, stop
        self.client = Client(address, no_delay=True, timeout=30)
        self.meta = Meta(address)
        self.model: dict[str, bytes] = {}
        self.error: BaseException | None = None
        self.ops = 0
        self.idle = threading.Event()
        self.stale = 0  # cas refused on a key only this client writes
        self.last: tuple = ()
        self.failed: tuple = ()

    def run(self) -> None:
        rng = random.Random(self.n)
        c, m, model = self.client, self.meta, self.model
        try:
            while not self.stop.is_set():
                if self.pause.is_set():
                    self.idle.set()
                    time.sleep(0.01)
                    continue
                self.idle.clear()
                key = f"w{self.n}-{rng.randrange(200)}"
                op = rng.randrange(9)
                self.last = (op, key, model.get(key))
                if op == 0:
                    value = str(rng.randrange(10**6)).encode()
                    assert c.set(key, value, noreply=False, flags=self.n) is True
                    model[key] = value
                elif op == 1:
                    assert c.get(key) == model.get(key), key
                elif op == 2:
                    if key not in model:
                        assert c.incr(key, 3, noreply=False) is None, key
                    elif model[key].isdigit():
                        want = int(model[key]) + 3
                        assert c.incr(key, 3, noreply=False) == want, key
                        model[key] = str(want).encode()
                elif op == 3:
                    stored = c.append(key, b"+a", noreply=False)
                    assert stored is (key in model), key
                    if stored:
                        model[key] += b"+a"
                elif op == 4:
                    value, token = c.gets(key)
                    assert value == model.get(key), ("gets", key)
                    if token is not None:
                        new = value + b"c"
                        if c.cas(key, new, token, noreply=False) is True:
                            model[key] = new
                        else:  # nobody else writes its keys: must not happen
                            assert c.get(key) == value, ("cas", key)
                            self.stale += 1
                elif op == 5:
                    assert c.touch(key, 600, noreply=False) is (key in model), key
                elif op == 6:
                    assert c.delete(key, noreply=False) is (key in model), key
                    model.pop(key, None)
                elif op == 7:
                    value = str(rng.randrange(10**6)).encode()
                    assert m(f"ms {key} {len(value)} T900 F{self.n}", value)[0] == b"HD"
                    model[key] = value
                    head, data = m(f"mg {key} v f")
                    assert (head.split()[:1], data) == ([b"VA"], value), key
                else:
                    head, data = m(f"ma {key} D2 v")
                    if key in model and model[key].isdigit():
                        model[key] = str(int(model[key]) + 2).encode()
                        assert (head[:2], data) == (b"VA", model[key]), key
                    elif key in model:
                        assert head.startswith(b"CLIENT_ERROR"), head
                    else:
                        assert head == b"NF", head
                self.ops += 1
        except BaseException as exc:  # reported by the test, with the request that failed
            self.error = exc
            self.failed = self.last
        finally:
            self.idle.set()


class CasRacer(threading.Thread):
    """Two of these race on one key: each round both take a token, then both try ``cas``."""

    def __init__(self, address, gate: threading.Barrier, results: list, go: list):
        super().__init__(daemon=True)
        self.client = Client(address, no_delay=True, timeout=30)
        self.gate, self.results, self.go = gate, results, go
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for round_ in itertools.count():
                self.gate.wait(timeout=60)  # its action decided, once for both, whether to go on
                if not self.go[0]:
                    return
                value, token = self.client.gets("race")
                self.gate.wait(timeout=60)  # both hold a token of the same version
                won = self.client.cas("race", str(int(value) + 1), token, noreply=False)
                self.results.append((round_, won))
                self.gate.wait(timeout=60)
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:
            self.error = exc
            self.gate.abort()


def test_update_under_load_copies_the_items_and_cuts_over_with_nothing_lost(tmp_path) -> None:
    config = write_config(
        tmp_path / "mc.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED},
        update='sync = "memcache-copy"\nwarmup_seconds = 600\nwarmup_requests = 1\n'
               "follower_timeout = 10.0\nbarrier_timeout = 10.0\n",
        rules='[[rules]]\nname = "stats"\ncommand = "stats"\nignore = true\n')
    with running(config) as proxy:
        service = proxy.service
        status = lambda: proxy.call(service.status)  # noqa: E731
        loader = Client(proxy.address, no_delay=True, timeout=30)
        for start in range(0, ITEMS, 500):  # items with flags, some with a TTL, some without
            loader.set_many({f"item{i}": b"v%d" % i * (1 + i % 7) for i in range(start,
                            start + 500)}, expire=0 if start % 1000 else 3600, noreply=False)
        for i in range(0, ITEMS, 100):
            assert loader.set(f"flagged{i}", b"f", flags=i, noreply=False)
        assert loader.set("race", "0", noreply=False)
        leader_address = service.backends["v1"].address

        pause, stop, race_stop = threading.Event(), threading.Event(), threading.Event()
        workers = [Worker(n, proxy.address, pause, stop) for n in range(THREADS)]
        results: list[bool] = []
        go = [True]
        gate = threading.Barrier(2, action=lambda: go.__setitem__(0, not race_stop.is_set()))
        racers = [CasRacer(proxy.address, gate, results, go) for _ in range(2)]
        for thread in [*workers, *racers]:
            thread.start()
        try:
            time.sleep(0.5)
            proxy.call_async(service.update, "v2")
            poll_until(status, lambda s: s["state"] == "mve", 60, "MVE")
            # Clients pause: once the follower replayed what came after the sync point, the two
            # hold the same items.
            pause.set()
            for worker in workers:
                assert worker.idle.wait(30)
            follower_address = service.backends["v2"].address
            leader_state = dump(leader_address)
            leader_state.pop(b"race")  # its racers go on
            assert len(leader_state) >= ITEMS
            deadline = time.monotonic() + 30
            while True:
                follower_state = dump(follower_address)
                follower_state.pop(b"race", None)
                if same_state(leader_state, follower_state):
                    break
                assert time.monotonic() < deadline, differences(leader_state, follower_state)
                time.sleep(0.2)
            pause.clear()
            time.sleep(1.0)
            proxy.call(service.promote)
            done = poll_until(status, lambda s: s["state"] == "single", 60, "the cutover")
            time.sleep(0.5)  # clients go on against the new version alone
        finally:
            stop.set()
            race_stop.set()
            for thread in [*workers, *racers]:
                thread.join(60)
        for thread in racers:
            assert thread.error is None, repr(thread.error)
        for worker in workers:
            assert worker.error is None, (repr(worker.error), worker.failed)
        assert done["last_update"]["outcome"] == "cutover", done
        assert done["serving"] == "v2" and done["divergences"] == 0, done
        assert sum(w.ops for w in workers) > 500
        # Every acknowledged write is in the new version.
        for worker in workers:
            got = loader.get_many(list(worker.model))
            assert got == worker.model
        assert loader.get("item8") == b"v8" * 2 and loader.get("flagged300") == b"f"
        # Each cas round had exactly one winner, and the follower agreed every time, across
        # the cutover too (a token the client took from the old version is translated).
        for worker in workers:
            assert worker.stale == 0, worker.stale
        rounds: dict[int, list[bool]] = {}
        for round_, won in results:
            rounds.setdefault(round_, []).append(won)
        outcomes = [sorted(both) for both in rounds.values() if len(both) == 2]
        assert len(outcomes) > 10
        assert outcomes == [[False, True]] * len(outcomes), outcomes
        assert int(loader.get("race")) == len(outcomes)
