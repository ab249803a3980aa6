"""Fuzz the Redis readers (request framing, reply framing and pairing) with generated inputs.

    python tests/fuzz/fuzz_resp.py                    # 1,000,000 inputs on every core
    python tests/fuzz/fuzz_resp.py -n 20000 --seed 7  # a quick run

Every input goes through both readers, fed in random pieces; the reply reader first expects a
random list of requests (plain ones and the ones that change the connection state: SUBSCRIBE,
HELLO 3, CLIENT REPLY OFF/SKIP, MULTI/EXEC, MONITOR, RESET ...). The contract checked: messages
or RemoteProtocolError, nothing else; the requests' and replies' raw bytes appear in the input in
order, the replies' back to back from its start; fed whole (one input in four) the readers give
the same messages, pairings and error; the request reader's hiredis fast path and its exact
parser agree; ``describe`` and ``canonical`` never fail; no input takes long, memory stays
bounded. Inputs: the golden recordings of redis-server 6.2/7.0 (requests and reply streams),
generated commands and nested RESP3 values, mutations of all these, splices of protocol tokens,
and plain random bytes; limits alternate between tight ones and the defaults.

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
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from twinproxy.protocols import Limits, RemoteProtocolError
from twinproxy.protocols.redis import (
    CODEC,
    NO_REPLY,
    Attributed,
    BigNumber,
    Double,
    Map,
    Push,
    RespError,
    RespSet,
    SimpleString,
    Verbatim,
    canonical,
    encode_command,
    encode_reply,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "redis"
TIGHT = Limits(max_line=64, max_bulk=200, max_elements=16, max_depth=5)
LIMITS = (TIGHT, Limits())
TOKENS = [b"\r\n", b"\r", b"\n", b"*", b"$", b"+", b"-", b":", b"%", b"~", b">", b"|", b",",
          b"#", b"(", b"=", b"!", b"_", b"0", b"1", b"2", b"-1", b"3", b"99999", b"*1\r\n",
          b"$1\r\n", b"*3\r\n", b"$-1\r\n", b"+OK\r\n", b"\x00", b" ", b'"', b"'", b"\\x41",
          b"PING", b"SET", b"subscribe", b"message", b"txt:", b"inf", b"nan", b"t", b"f"]
REQUESTS = ["GET k", "SET k v", "PING", "SUBSCRIBE a b", "PSUBSCRIBE p*", "UNSUBSCRIBE",
            "PUNSUBSCRIBE", "SSUBSCRIBE s", "SUNSUBSCRIBE", "HELLO 3", "HELLO 2",
            "CLIENT REPLY OFF", "CLIENT REPLY ON", "CLIENT REPLY SKIP", "MULTI", "EXEC",
            "DISCARD", "MONITOR", "RESET", "AUTH pw", "QUIT", "LRANGE l 0 -1", "EVAL s 0",
            "SELECT 1", "SELECT 99"]


def golden_corpus() -> list[bytes]:
    out = []
    for version in ("6.2", "7.0"):
        doc = json.loads((GOLDEN / f"{version}.json").read_text())
        for steps in doc["sessions"].values():
            out.append(b"".join(s["request"].encode("latin-1") for s in steps))
            for conn in sorted({r["conn"] for s in steps for r in s["replies"]}):
                out.append(b"".join(r["raw"].encode("latin-1") for s in steps
                                    for r in s["replies"] if r["conn"] == conn))
        out.append((GOLDEN / f"{version}.command.resp").read_bytes()[:20000])
    return out


def value(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(16 if depth < 3 else 10)
    text = bytes(rnd.choice(b"ab\r\n:xyz") for _ in range(rnd.randrange(6)))
    line = text.replace(b"\r", b"").replace(b"\n", b"")
    if kind == 0:
        return text
    if kind == 1:
        return SimpleString(line)
    if kind == 2:
        return rnd.randrange(-(2**63), 2**63)
    if kind == 3:
        return None
    if kind == 4:
        return Double(rnd.choice([b"1.5", b"inf", b"-inf", b"nan", b"0", b"1e+300"]))
    if kind == 5:
        return rnd.random() < 0.5
    if kind == 6:
        return BigNumber(rnd.randrange(-(10**30), 10**30))
    if kind == 7:
        return RespError(line or b"ERR")
    if kind == 8:
        return Verbatim(text, b"txt")
    if kind == 9:
        return RespError(text, blob=True)
    items = [value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    if kind == 10:
        return items
    if kind == 11:
        return RespSet(items)
    if kind == 12:
        return Push([SimpleString(rnd.choice([b"message", b"subscribe", b"invalidate"])), *items])
    if kind == 13:
        return Map(items + items[:1] if len(items) % 2 else items)
    if kind == 14:
        return Attributed(Map([b"k", value(rnd, depth + 1)]), value(rnd, depth + 1))
    return [SimpleString(b"subscribe"), b"a", 1] if rnd.random() < 0.5 else [b"pong", b""]


def generated(rnd: random.Random) -> bytes:
    if rnd.random() < 0.5:
        return b"".join(
            encode_command(*[bytes(rnd.choice(b"abc\r\n *$") for _ in range(rnd.randrange(5)))
                             or b"x" for _ in range(rnd.randint(1, 4))])
            if rnd.random() < 0.8 else rnd.choice(REQUESTS).encode() + b"\r\n"
            for _ in range(rnd.randint(1, 6)))
    return b"".join(encode_reply(value(rnd), resp3=True) for _ in range(rnd.randint(1, 5)))


def mutate(rnd: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randrange(len(buf) + 1)
        op = rnd.randrange(5)
        if op == 0:
            buf[at:at] = rnd.choice(TOKENS)
        elif op == 1:
            del buf[at : at + rnd.randint(1, 4)]
        elif op == 2 and buf:
            buf[min(at, len(buf) - 1)] = rnd.randrange(256)
        elif op == 3:
            buf[at:at] = buf[at : at + rnd.randint(1, 30)]
        else:
            del buf[at:]
    return bytes(buf)


def make_input(rnd: random.Random, corpus: list[bytes]) -> bytes:
    kind = rnd.randrange(10)
    if kind == 0:
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(200)))
    if kind == 1:
        return b"".join(rnd.choice(TOKENS) for _ in range(rnd.randrange(40)))
    if kind in (2, 3):
        return generated(rnd)
    if kind in (4, 5):
        return mutate(rnd, generated(rnd))
    base = rnd.choice(corpus)
    if len(base) > 4000:
        start = rnd.randrange(len(base))
        base = base[start : start + 4000]
    return base if kind == 6 else mutate(rnd, base)


def pieces(rnd: random.Random, data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rnd.choice([1, 1, 2, 3, 7, 64, 4096])
        out.append(data[i : i + n])
        i += n
    return out


class Violation(Exception):
    pass


def run_requests(data: bytes, chunks: list[bytes], limits: Limits, fast: bool) -> tuple:
    reader = CODEC.request_reader(limits)
    if not fast:
        reader._fast = False
    got = []
    error = None
    try:
        for chunk in chunks:
            got += reader.receive(chunk)
    except RemoteProtocolError as exc:
        got += exc.messages
        error = exc.reply
    at = 0
    for req in got:
        found = data.find(req.raw, at)
        if found < 0 or not req.raw:
            raise Violation("a request's raw bytes are not in the input, in order")
        at = found + len(req.raw)
        CODEC.describe(req)
    if error is None and reader.buffered > len(data) - at:
        raise Violation("more bytes buffered than were left")
    return [(r.raw, r.name, r.args) for r in got], error


def run_replies(data: bytes, chunks: list[bytes], limits: Limits, reqs: list) -> tuple:
    reader = CODEC.reply_reader(limits)
    got = []
    for req in reqs:
        reader.expect(req)
        while (reply := reader.next_reply()) is not None:  # a request answered with nothing
            got.append(reply)
    error = None
    try:
        for chunk in chunks:
            got += reader.receive(chunk)
    except RemoteProtocolError as exc:
        got += exc.messages
        error = str(exc)
    real = b"".join(r.raw for r in got if r.value is not NO_REPLY)
    if not data.startswith(real):
        raise Violation("the replies' raw bytes are not the input's first bytes")
    labels = []
    for r in got:
        hash(canonical(r.value))
        index = next((i for i, q in enumerate(reqs) if q is r.request), None)
        labels.append((r.raw, index, r.final, r.push, r.error))
    if reader.pending > len(reqs):
        raise Violation("more requests pending than expected")
    return labels, error


def one(rnd: random.Random, corpus: list[bytes], stats: collections.Counter) -> None:
    data = make_input(rnd, corpus)
    limits = rnd.choice(LIMITS)
    chunks = pieces(rnd, data)
    start = time.process_time()
    requests = run_requests(data, chunks, limits, fast=True)
    reqs = [CODEC.request_reader().receive(encode_command(*rnd.choice(REQUESTS).split()))[0]
            for _ in range(rnd.randrange(8))]
    replies = run_replies(data, chunks, limits, reqs)
    if rnd.random() < 0.25:
        if run_requests(data, [data], limits, fast=True) != requests:
            raise Violation("requests differ fed whole and in pieces")
        if run_requests(data, [data], limits, fast=False) != requests:
            raise Violation("the fast path and the exact parser differ")
        fresh = [CODEC.request_reader().receive(r.raw)[0] for r in reqs]
        whole = run_replies(data, [data], limits, fresh)
        if whole[0] != replies[0] or (whole[1] is None) != (replies[1] is None):
            raise Violation("replies differ fed whole and in pieces")
    seconds = time.process_time() - start
    stats["inputs"] += 1
    stats["bytes"] += len(data)
    stats["requests framed"] += len(requests[0])
    stats["replies framed"] += len(replies[0])
    stats["request errors"] += requests[1] is not None
    stats["reply errors"] += replies[1] is not None
    if requests[1] is not None:
        text = requests[1].decode("latin-1").strip()
        if "got '" in text:
            text = text[: text.index("got '") + 4] + "<byte>"
        stats["error: " + text] += 1
    stats["max ms per input"] = max(stats["max ms per input"], int(seconds * 1000))


def worker(args: tuple[int, int]) -> collections.Counter:
    seed, count = args
    rnd = random.Random(seed)
    corpus = golden_corpus()
    stats: collections.Counter = collections.Counter()
    for i in range(count):
        state = rnd.getstate()
        try:
            one(rnd, corpus, stats)
        except Exception as exc:  # a violation, or any exception that is not the contract's
            stats["violations"] += 1
            if stats["violations"] <= 3:
                rnd.setstate(state)
                sample = make_input(rnd, corpus)
                print(f"seed {seed} input {i}: {type(exc).__name__}: {exc}\n  {sample[:200]!r}",
                      file=sys.stderr)
                traceback.print_exc(limit=3)
    stats["max rss MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    batch = 5000
    jobs = [(args.seed * 1_000_003 + i, min(batch, args.inputs - i * batch))
            for i in range((args.inputs + batch - 1) // batch)]
    start = time.monotonic()
    total: collections.Counter = collections.Counter()
    with multiprocessing.Pool(args.jobs) as pool:
        for stats in pool.imap_unordered(worker, jobs):
            for key, n in stats.items():
                if key.startswith("max"):
                    total[key] = max(total[key], n)
                else:
                    total[key] += n
    elapsed = time.monotonic() - start
    print(f"{total['inputs']:,} inputs ({total['bytes']:,} bytes) in {elapsed:.0f} s "
          f"on {args.jobs} processes")
    for key in ("requests framed", "replies framed", "request errors", "reply errors",
                "max ms per input", "max rss MiB", "violations"):
        print(f"  {key:18} {total[key]:>12,}")
    print("  request errors by reply:")
    for key, n in sorted(total.items(), key=lambda kv: -kv[1]):
        if key.startswith("error: "):
            print(f"    {n:>10,}  {key[7:]}")
    return 1 if total["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
