"""Fuzz the memcached readers with generated inputs.

    python tests/fuzz/fuzz_memcache.py                    # 1,000,000 inputs on every core
    python tests/fuzz/fuzz_memcache.py -n 20000 --seed 7  # a quick run

Every input goes through both readers (the reply reader after ``expect()`` of a random pipeline of
requests), fed in random pieces. The contract checked: messages or RemoteProtocolError, nothing
else; the messages' raw bytes are the input's first bytes, in order (a quiet request's implied reply
has none); ``canonical()`` takes every reply; a reader holds no more than its limits allow; no input
takes long. One input in eight is also fed whole and must give the same messages and the same
error. Half the inputs end with the end of the stream.

Inputs: the golden memcached 1.6.18 recordings, synthetic request and reply streams (every command
family, quiet runs, noreply, errors, bare LF), mutations of these, splices of protocol tokens, and
random bytes. Limits alternate between tight ones (so that the limit checks fire) and the defaults.
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import resource
import time
from pathlib import Path

from twinproxy.protocols import Limits, RemoteProtocolError
from twinproxy.protocols.memcache import CODEC

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "memcache" / "scenarios.json"
TIGHT = Limits(max_line=64, max_key=8, max_value=40, max_elements=6)
LIMITS = (TIGHT, Limits())
SLOW = 0.25  # seconds: an input slower than this is reported

TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"  ", b"\0", b"\x80", b"get ", b"gets ", b"gat 1 ",
          b"set k 0 0 ", b"cas k 0 0 1 ", b"incr k ", b"delete k", b"touch k 1", b"flush_all",
          b"version", b"stats", b"stats items", b"quit", b"mg k ", b"ms k ", b"md k ", b"ma k ",
          b"mn", b"me k", b" v", b" q", b" k", b" b", b" O1", b" T30", b" noreply", b"YQ==",
          b"VALUE k 0 ", b"END", b"STORED", b"NOT_FOUND", b"OK", b"VERSION 1.6.18", b"STAT a b",
          b"VA ", b"HD", b"EN", b"NF", b"NS", b"EX", b"MN", b"ME k exp=-1", b"ERROR",
          b"CLIENT_ERROR x", b"SERVER_ERROR y", b"RESET", b"0", b"1", b"3", b"-1", b"+2",
          b"99999999999999999999", b"4294967296", b"x" * 30, b"k" * 251]
REQUESTS = [b"get a b\r\n", b"gets a\r\n", b"gat 10 a\r\n", b"set a 0 0 1\r\nx\r\n",
            b"add a 0 0 1 noreply\r\nx\r\n", b"cas a 0 0 1 5\r\nx\r\n", b"incr a 1\r\n",
            b"decr a 1 noreply\r\n", b"touch a 1\r\n", b"delete a\r\n", b"flush_all\r\n",
            b"verbosity 1\r\n", b"version\r\n", b"stats\r\n", b"stats detail on\r\n",
            b"mg a v\r\n", b"mg a v q\r\n", b"mg a v q O1\r\n", b"mg a v q k\r\n",
            b"ms a 1 q\r\nx\r\n", b"ms a 1\r\nx\r\n", b"md a q\r\n", b"md a\r\n", b"ma a v\r\n",
            b"ma a q\r\n", b"mn\r\n", b"me a\r\n", b"mg YQ== b k v q\r\n"]
REPLIES = [b"STORED\r\n", b"NOT_STORED\r\n", b"EXISTS\r\n", b"NOT_FOUND\r\n", b"DELETED\r\n",
           b"TOUCHED\r\n", b"OK\r\n", b"RESET\r\n", b"42\r\n", b"VERSION 1.6.18\r\n",
           b"VALUE a 0 1\r\nx\r\nEND\r\n", b"VALUE a 3 2 9\r\nhi\r\nEND\r\n", b"END\r\n",
           b"STAT pid 1\r\nSTAT x y\r\nEND\r\n", b"HD\r\n", b"HD O1\r\n", b"HD ka\r\n",
           b"VA 1\r\nx\r\n", b"VA 2 O1 ka\r\nhi\r\n", b"VA 1 kYQ== b\r\nx\r\n", b"EN\r\n",
           b"NF\r\n", b"NS\r\n", b"EX\r\n", b"MN\r\n", b"ME a exp=-1 la=0\r\n", b"ERROR\r\n",
           b"CLIENT_ERROR bad\r\n", b"SERVER_ERROR oops\r\n"]


def corpus() -> tuple[list[bytes], list[bytes]]:
    """Request streams and reply streams from the golden recordings."""
    scenarios = json.loads(GOLDEN.read_text())["scenarios"]
    requests = [s["requests"].encode("latin-1") for s in scenarios]
    replies = [s["replies"].encode("latin-1") for s in scenarios if s["replies"]]
    return requests, replies


def synthetic(rng: random.Random, pool: list[bytes], bare_lf: float = 0.1) -> bytes:
    """Messages from ``pool``; sometimes every CRLF made a bare LF (data blocks then break)."""
    out = b"".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
    return out.replace(b"\r\n", b"\n") if rng.random() < bare_lf else out


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randint(0, len(data))
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.choice(TOKENS)
        elif op == 2:
            del data[at:at + rng.randint(1, 8)]
        elif op == 3:
            data[at:at] = data[max(0, at - 20):at]
        elif op == 4:
            del data[at:]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    return bytes(data)


def generate(rng: random.Random, golden: tuple[list[bytes], list[bytes]]) -> tuple[str, bytes]:
    kind = rng.randrange(6)
    pool = REQUESTS + REPLIES
    if kind == 0:
        return "golden", rng.choice(golden[rng.randrange(2)])
    if kind == 1:
        return "synthetic", synthetic(rng, rng.choice((REQUESTS, REPLIES)))
    if kind == 2:
        base = rng.choice(golden[rng.randrange(2)]) if rng.random() < 0.3 else synthetic(rng, pool)
        return "mutated", mutate(rng, base[:2000])
    if kind == 3:
        return "tokens", b"".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 20)))
    if kind == 4:
        return "mixed", mutate(rng, synthetic(rng, pool)) + synthetic(rng, pool)
    return "random", bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


def pieces(rng: random.Random, data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        n = rng.choice((1, 2, 3, 7, 64, len(data)))
        out.append(data[at:at + n])
        at += n
    return out


def feed(reader: object, chunks: list[bytes], eof: bool, limits: Limits, check: object) -> tuple:
    """Feed ``chunks``; the messages and the error (its text and reply), checking the bound."""
    bound = limits.max_line + limits.max_value + 4 + 64 * 1024  # one message, plus one read
    got: list = []
    error = None
    try:
        for chunk in chunks:
            got += reader.receive(chunk)  # type: ignore[attr-defined]
            assert reader.buffered <= bound, ("held", reader.buffered)  # type: ignore[attr-defined]
        if eof:
            got += reader.receive(b"")  # type: ignore[attr-defined]
    except RemoteProtocolError as exc:
        got += exc.messages
        error = (str(exc), exc.reply)
    for message in got:
        check(message)  # type: ignore[operator]
    return got, error


def run_one(rng: random.Random, data: bytes, sent: list) -> None:
    limits = rng.choice(LIMITS)
    eof = rng.random() < 0.5
    chunks = pieces(rng, data)
    whole = rng.random() < 0.125
    # requests
    requests, error = feed(CODEC.request_reader(limits), chunks, eof, limits, CODEC.describe)
    framed = b"".join(r.raw for r in requests)
    assert data.startswith(framed), "request raws are not the input's first bytes"
    if whole:
        again = feed(CODEC.request_reader(limits), [data] if data else [], eof, limits,
                     CODEC.describe)
        assert [r.raw for r in again[0]] == [r.raw for r in requests] and again[1] == error, \
            ("whole and pieces differ", again[1], error)
    # replies, to a pipeline of requests
    reader = CODEC.reply_reader(limits)
    for request in sent:
        reader.expect(request)
    replies, error = feed(reader, chunks, eof, limits, CODEC.canonical)
    framed = b"".join(r.raw for r in replies)
    assert data.startswith(framed), "reply raws are not the input's first bytes"
    assert reader.pending >= 0
    if whole:
        reader = CODEC.reply_reader(limits)
        for request in sent:
            reader.expect(request)
        again = feed(reader, [data] if data else [], eof, limits, CODEC.canonical)
        assert [(r.raw, r.request) for r in again[0]] == [(r.raw, r.request) for r in replies] \
            and again[1] == error, ("whole and pieces differ", again[1], error)


def worker(args: tuple[int, int]) -> dict:
    seed, count = args
    rng = random.Random(seed)
    golden = corpus()
    pipelines = [CODEC.request_reader().receive(synthetic(rng, REQUESTS, 0)) for _ in range(200)]
    stats: dict = {"inputs": 0, "bytes": 0, "kinds": collections.Counter(), "failures": [],
                   "slowest": 0.0, "slow": 0, "requests": 0, "errors": 0}
    for i in range(count):
        kind, data = generate(rng, golden)
        sent = rng.choice(pipelines)
        start = time.perf_counter()
        try:
            run_one(rng, data, sent)
        except Exception as exc:  # a broken contract: keep the input to reproduce it
            if len(stats["failures"]) < 5:
                stats["failures"].append((seed, i, kind, data[:300], repr(exc)[:300]))
        took = time.perf_counter() - start
        stats["slowest"] = max(stats["slowest"], took)
        stats["slow"] += took > SLOW
        stats["inputs"] += 1
        stats["bytes"] += len(data)
        stats["kinds"][kind] += 1
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="inputs in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-j", type=int, default=os.cpu_count() or 1, help="processes")
    opts = parser.parse_args()
    per = -(-opts.n // opts.j)
    jobs = [(opts.seed * 1000 + k, min(per, opts.n - k * per)) for k in range(opts.j)]
    start = time.perf_counter()
    with multiprocessing.Pool(opts.j) as pool:
        results = pool.map(worker, [job for job in jobs if job[1] > 0])
    elapsed = time.perf_counter() - start
    kinds: collections.Counter = collections.Counter()
    for r in results:
        kinds.update(r["kinds"])
    failures = [f for r in results for f in r["failures"]]
    inputs = sum(r["inputs"] for r in results)
    print(f"memcache fuzz: {inputs:,} inputs ({sum(r['bytes'] for r in results):,} bytes) through"
          f" both readers in {elapsed:.0f}s on {opts.j} processes, seed {opts.seed}")
    print("  inputs by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())))
    print(f"  slowest input {max(r['slowest'] for r in results) * 1000:.1f} ms;"
          f" over {SLOW * 1000:.0f} ms: {sum(r['slow'] for r in results)}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  peak memory of a worker: {rss:.0f} MiB")
    print(f"  contract failures: {len(failures)}")
    for seed, i, kind, data, exc in failures:
        print(f"    seed {seed} input {i} ({kind}): {data!r}\n      {exc}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
