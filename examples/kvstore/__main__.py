"""``python -m examples.kvstore --port 7379 --endpoint 127.0.0.1:7380 [--keys N]``: serve
version v1 of the key-value store, updatable to v2 (and to v2-lossy, whose transform the check
refuses) through the update endpoint. ``--keys N`` starts with N keys (``key:0`` ...), for
measuring an update's pause on a large state.

Extra versions for the tests, chosen with ``--faults``: ``v2-crash`` (its transform kills the
process), ``v2-raise`` (its transform raises) and ``v2-hang`` (its transform never ends).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from examples.kvstore import v1, v2
from examples.kvstore.server import entry_point
from examples.kvstore.transforms import lossy_forward, v1_to_v2, v2_to_v1
from twinproxy.cooperative import Updatable


def crash(state: object) -> object:
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable")


def raise_(state: object) -> object:
    raise ValueError("a transform that raises, on purpose")


def hang(state: object) -> object:
    time.sleep(3600)
    raise AssertionError("unreachable")


def build(faults: bool = False) -> Updatable:
    """The service: its versions and transforms."""
    service = Updatable()
    service.version("v1", entry_point(v1.COMMANDS))
    service.version("v2", entry_point(v2.COMMANDS))
    service.version("v2-lossy", entry_point(v2.COMMANDS))
    service.transform("v1", "v2", forward=v1_to_v2, backward=v2_to_v1)
    service.transform("v1", "v2-lossy", forward=lossy_forward, backward=v2_to_v1)
    if faults:
        for name, forward in (("v2-crash", crash), ("v2-raise", raise_), ("v2-hang", hang)):
            service.version(name, entry_point(v2.COMMANDS))
            service.transform("v1", name, forward=forward, backward=v2_to_v1)
    return service


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.kvstore", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--endpoint", required=True, help="host:port of the update endpoint")
    parser.add_argument("--keys", type=int, default=0)
    parser.add_argument("--faults", action="store_true")
    args = parser.parse_args()
    host, _, port = args.endpoint.rpartition(":")
    state = {b"key:%d" % i: b"value:%d" % i for i in range(args.keys)}
    build(args.faults).serve("v1", state, (args.host, args.port), (host, int(port)))


if __name__ == "__main__":
    main()
