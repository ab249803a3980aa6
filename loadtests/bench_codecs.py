"""Codec benchmark: requests and replies framed per second, on one core.

Each workload is a 16-command pipeline (half SET, half GET), fed to a fresh reader as one chunk,
the way a pipelining client's read arrives. "framing" is ``receive()`` alone: requests delimited
and built, what a connection whose requests the proxy records pays; "counted" is ``count()``
where a reader has it (Redis): the same framing without building requests, what SINGLE mode pays
for ordinary commands; "parsed view" adds ``describe()`` (keys, read/write), what MVE pays.

    python loadtests/bench_codecs.py            # all codecs
    python loadtests/bench_codecs.py redis      # one
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from twinproxy.protocols import get_codec

PIPELINE = 16
VALUE = b"x" * 32


def redis_requests() -> bytes:
    from twinproxy.protocols.redis import encode_command

    out = []
    for i in range(PIPELINE // 2):
        key = b"key:%012d" % i
        out.append(encode_command(b"SET", key, VALUE))
        out.append(encode_command(b"GET", key))
    return b"".join(out)


def redis_replies() -> bytes:
    return (b"+OK\r\n" + b"$%d\r\n%s\r\n" % (len(VALUE), VALUE)) * (PIPELINE // 2)


def memcache_requests() -> bytes:
    out = []
    for i in range(PIPELINE // 2):
        key = b"key:%012d" % i
        out.append(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(VALUE), VALUE))
        out.append(b"get %s\r\n" % key)
    return b"".join(out)


def memcache_replies() -> bytes:
    out = []
    for i in range(PIPELINE // 2):
        key = b"key:%012d" % i
        out.append(b"STORED\r\n")
        out.append(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(VALUE), VALUE))
    return b"".join(out)


WORKLOADS = {
    "redis": (redis_requests, redis_replies),
    "memcache": (memcache_requests, memcache_replies),
}


def rate(fn: Callable[[], int], seconds: float = 1.0) -> float:
    """Messages per second that ``fn`` handles (it returns how many it handled)."""
    fn()  # warm up
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            n += fn()
    return n / (time.perf_counter() - start)


def bench(protocol: str) -> dict[str, float]:
    codec = get_codec(protocol)
    make_requests, make_replies = WORKLOADS[protocol]
    requests, replies = make_requests(), make_replies()
    reader = codec.request_reader()
    sample = reader.receive(requests)
    assert len(sample) == PIPELINE, (protocol, len(sample))

    def framing() -> int:
        return len(reader.receive(requests))

    def parsed() -> int:
        reqs = reader.receive(requests)
        for r in reqs:
            codec.describe(r)
        return len(reqs)

    def reply_framing() -> int:
        rr = codec.reply_reader()
        for r in sample:
            rr.expect(r)
        return len(rr.receive(replies))

    def counted() -> int:
        used = reader.count(requests)
        assert used == len(requests)
        return PIPELINE

    out = {"requests framed/s": rate(framing)}
    if reader.count(requests) is not None:  # a countable reader (Redis): SINGLE mode's framing
        out["requests counted (SINGLE)/s"] = rate(counted)
    return {
        **out,
        "requests framed+described/s": rate(parsed),
        "replies framed+paired/s": rate(reply_framing),
    }


def main(argv: list[str]) -> None:
    names = argv or list(WORKLOADS)
    print(f"{PIPELINE}-command pipelines of SET/GET, one reader, one core")
    for name in names:
        for what, value in bench(name).items():
            print(f"{name:9} {what:30} {value:>12,.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
