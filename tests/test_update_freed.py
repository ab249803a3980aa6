"""An ended update's engine is freed when the update ends, not when Python's cyclic collector
next runs.

The engine, its driver and the engine's records of the clients refer to themselves and to each
other (tables of bound methods, callbacks, a client's record and its connections' records);
unless those cycles are cut when the update ends, all of it, with the connections' readers and
the leader's command table, waits for a full collection, which comes only after enough objects
the collector tracks have been allocated (the bytes a relay moves are not). Here it is off while an
update runs under load, with a client that leaves during MVE, and ends (a rollback, a cutover,
a cutover keeping the old version following, then a promote); weak references to what the
update allocated must be dead once it has ended.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import redis

from tests.proxyrun import REDIS7, poll_until, running, write_config

pytestmark = pytest.mark.slow


def load(port: int, stop: threading.Event, errors: list[str]) -> None:
    """SET, GET, INCR one at a time and pipelined until ``stop``."""
    r = redis.Redis(port=port, socket_timeout=10)
    n = 0
    while not stop.is_set():
        try:
            r.set("freed:s", n)
            assert r.get("freed:s") == b"%d" % n
            pipe = r.pipeline(transaction=False)
            for _ in range(8):
                pipe.incr("freed:c")
            got = pipe.execute()
            assert got == list(range(got[0], got[0] + 8)), got
        except Exception as exc:  # the test thread reports it
            errors.append(repr(exc))
        n += 1
        time.sleep(0.002)


@pytest.mark.parametrize("end,after_cutover", [("rollback", "stop-old"),
                                               ("promote", "stop-old"),
                                               ("promote", "keep-old")])
def test_an_ended_updates_engine_is_freed_without_the_cyclic_collector(
        tmp_path, end: str, after_cutover: str) -> None:
    config = write_config(tmp_path / "r.toml", "redis", {"old": REDIS7, "new": REDIS7},
                          update=f'warmup_seconds = 600\nwarmup_requests = 0\n'
                                 f'after_cutover = "{after_cutover}"')
    with running(config) as proxy:
        service = proxy.service

        def status() -> dict:
            return proxy.call(service.status)

        stop, errors = threading.Event(), []
        loader = threading.Thread(target=load, args=(proxy.port, stop, errors), daemon=True)
        loader.start()
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            proxy.call_async(service.update, "new")
            poll_until(status, lambda s: s["state"] == "mve", 60, "MVE")
            leaving = redis.Redis(port=proxy.port)  # a client that leaves during MVE
            leaving.set("freed:leaving", 1)
            update = service.current
            engine = update.engine
            # The records have no weak references (__slots__): what they hold stands for them,
            # the clients' order state (which holds the leader's command table).
            held = [engine, update.driver, engine.table,
                    *proxy.call(lambda e: [c.order for c in e.clients.values()], engine)]
            refs = [weakref.ref(o) for o in held]
            assert len(refs) == 5  # with the loading client's and the leaving one's
            del engine, held
            leaving.close()
            time.sleep(0.5)
            proxy.call(getattr(service, end))
            if after_cutover == "keep-old":  # the old version follows: a promote stops it
                poll_until(lambda: proxy.call(lambda: service.current.following), bool, 60,
                           "the old version following")
                proxy.call(service.promote)
            st = poll_until(status, lambda s: s["state"] == "single", 60, "the update's end")
            assert st["last_update"]["outcome"] == ("rolled-back" if end == "rollback"
                                                    else "cutover"), st
            del update
            # (type names only: holding the objects themselves would keep them alive)
            poll_until(lambda: [type(r()).__name__ for r in refs if r() is not None],
                       lambda alive: not alive, 5, "the ended update's engine to be freed")
        finally:
            if enabled:
                gc.enable()
            stop.set()
            loader.join(30)
    assert errors == []
