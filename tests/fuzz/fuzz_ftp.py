"""Fuzz the FTP readers (and the session tables behind them) with generated inputs.

    python tests/fuzz/fuzz_ftp.py                    # 1,000,000 inputs on every core
    python tests/fuzz/fuzz_ftp.py -n 20000 --seed 7  # a quick run

Every input goes through both readers, fed in random pieces. The contract checked is the
codecs': messages or RemoteProtocolError, nothing else; the messages' raw bytes are the
input's first bytes, in order; a reader holds no more than its limits allow; no input takes
long. One input in eight is also fed whole, and must give the same messages and the same error. Half
the inputs end with the end of the stream, half leave their last bytes buffered.
Replies that frame are fed to an FtpSession, which may only raise SessionError.

Inputs: real traffic (the golden vsftpd session), synthetic request and reply streams (multi-line
replies, bare LF, Telnet bytes), mutations of all these, random splices of protocol tokens, and
plain random bytes. Limits alternate between tight ones (so
that the limit checks fire) and the defaults. Not collected by pytest (no ``test_`` prefix).
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
from pathlib import Path

from twinproxy.protocols import Limits, RemoteProtocolError
from twinproxy.protocols.ftp import CODEC, FtpSession, SessionError

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ftp" / "vsftpd.json"
TIGHT = Limits(max_line=128, max_elements=8, max_bulk=300)
LIMITS = (TIGHT, Limits())
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"-", b"220", b"211-", b"211 ", b"150 ", b"226 ", b"421 ",
          b"331 ", b"350 ", b"227 (127,0,0,1,4,1)", b"229 (|||5000|)", b"USER ", b"PASS ",
          b"RETR ", b"LIST", b"REST 1", b"RNFR a", b"RNTO b", b"QUIT", b"\xff\xf4", b"\xff",
          b"\x00", b"x" * 40, b"000", b"999 ", b"1", b"ABOR"]


def corpus() -> list[bytes]:
    doc = json.loads(GOLDEN.read_text())
    records = doc["records"]
    client = b"".join(r["request"].encode("latin-1") for r in records if r["request"])
    server = b"".join(r["reply"].encode("latin-1") for r in records)
    lines = client.splitlines(keepends=True) + server.splitlines(keepends=True)
    return [client, server, *lines, b"220-a\r\n b\r\n220 c\r\n", b"120 soon\r\n220 now\r\n"]


CODES = [b"120", b"125", b"150", b"200", b"211", b"214", b"220", b"221", b"226", b"227", b"229",
         b"230", b"250", b"257", b"331", b"332", b"350", b"421", b"425", b"500", b"503", b"530",
         b"550", b"631"]
VERBS = [b"USER", b"PASS", b"ACCT", b"CWD", b"CDUP", b"PWD", b"TYPE", b"PASV", b"EPSV", b"PORT",
         b"EPRT", b"REST", b"RETR", b"STOR", b"LIST", b"NLST", b"RNFR", b"RNTO", b"REIN", b"QUIT",
         b"OPTS", b"SITE", b"noop", b"FEAT", b"ABOR"]


def synthetic_replies(rng: random.Random) -> bytes:
    out = [b"220 ready\r\n"] if rng.random() < 0.8 else []
    for _ in range(rng.randint(0, 10)):
        code, eol = rng.choice(CODES), rng.choice((b"\r\n", b"\r\n", b"\n"))
        if rng.random() < 0.25:
            inner = [rng.choice((b" ", b"", code + b"-", rng.choice(CODES) + b" "))
                     + rng.randbytes(rng.randint(0, rng.choice((12, 12, 110)))).replace(b"\n", b"")
                     + eol
                     for _ in range(rng.randint(0, 10))]
            out.append(code + b"-first" + eol + b"".join(inner) + code + b" last" + eol)
        else:
            out.append(code + b" text" + eol)
    return b"".join(out)


def synthetic_requests(rng: random.Random) -> bytes:
    # empty arguments count double: USER, PASV or LIST alone are what moves a session
    return b"".join(
        rng.choice((b"", b"\r\n", b"\xff\xf4\xff")) + rng.choice(VERBS)
        + rng.choice((b"", b"", b" ", b" arg", b" " + rng.randbytes(rng.randint(0, 30))))
        .replace(b"\n", b"") + rng.choice((b"\r\n", b"\n"))
        for _ in range(rng.randint(0, 10))
    )


def generate(rng: random.Random, seeds: list[bytes]) -> bytes:
    kind = rng.random()
    if kind < 0.4:
        source = rng.random()
        if source < 0.3:
            data = bytearray(rng.choice(seeds))
        elif source < 0.65:
            data = bytearray(synthetic_replies(rng))
        else:
            data = bytearray(synthetic_requests(rng))
        for _ in range(rng.randint(0, 4)):
            mutate(rng, data, seeds)
        return bytes(data[:4096])
    if kind < 0.55:
        return synthetic_replies(rng)
    if kind < 0.65:
        return synthetic_requests(rng)
    if kind < 0.8:
        return b"".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 40)))
    if kind < 0.95:
        return rng.randbytes(rng.randint(0, 300))
    # long lines and long replies, to reach the default limits too
    return b"211-" + b"y" * rng.randint(0, 70_000) + b"\r\n" * rng.randint(0, 3)


def mutate(rng: random.Random, data: bytearray, seeds: list[bytes]) -> None:
    if not data:
        data += rng.choice(seeds)
        return
    at = rng.randrange(len(data))
    op = rng.randrange(6)
    if op == 0:
        data[at] ^= 1 << rng.randrange(8)
    elif op == 1:
        del data[at : at + rng.randint(1, 8)]
    elif op == 2:
        data[at:at] = rng.choice(TOKENS)
    elif op == 3:
        data[at:at] = rng.choice(seeds)[: rng.randint(1, 64)]
    elif op == 4:
        data[at] = rng.choice(b"\r\n -0123456789")
    else:
        del data[at:]


def pieces(rng: random.Random, data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        step = rng.choice((1, 2, 3, 7, 64, 1000, len(data)))
        out.append(data[i : i + step])
        i += step
    return out


def frame(kind: str, data: bytes, chunks: list[bytes], limits: Limits, expected: list,
          eof: bool):
    """(messages, error message or None, largest buffered) for one reader over ``chunks``,
    then the end of the stream if ``eof``."""
    if kind == "request":
        reader = CODEC.request_reader(limits)
    else:
        reader = CODEC.reply_reader(limits)
        for request in expected:
            reader.expect(request)
    messages, largest = [], 0
    try:
        for chunk in [*chunks, b""] if eof else chunks:
            messages += reader.receive(chunk)
            largest = max(largest, reader.buffered)
    except RemoteProtocolError as exc:
        messages += exc.messages
        return messages, str(exc), largest
    return messages, None, largest


def check(data: bytes, messages: list, largest: int, limits: Limits, failures: list) -> None:
    consumed = b"".join(m.raw for m in messages)
    if not data.startswith(consumed):
        failures.append(("raw bytes are not the input's prefix", data))
    if largest > max(limits.max_line, limits.max_bulk):
        failures.append((f"buffered {largest} bytes, past the limits", data))


def worker(job: tuple[int, int]) -> dict:
    seed, count = job
    rng = random.Random(seed)
    seeds = corpus()
    stats = collections.Counter()
    errors: collections.Counter = collections.Counter()
    failures: list = []
    slowest = 0.0
    for i in range(count):
        data = generate(rng, seeds)
        limits = LIMITS[i % 2]
        chunks = pieces(rng, data)
        eof = rng.random() < 0.5
        # what the reply reader is told was sent: plausible commands, so the session moves
        sent = CODEC.request_reader().receive(synthetic_requests(rng))
        stats["bytes"] += len(data)
        for kind in ("request", "reply"):
            started = time.perf_counter()
            try:
                messages, error, largest = frame(kind, data, chunks, limits, sent, eof)
                if kind == "reply":
                    session = FtpSession()
                    for reply in messages:
                        try:
                            session.on_reply(reply)
                        except SessionError:
                            stats["session errors"] += 1
                            break
                    stats[f"session {session.login.name}"] += 1
            except Exception as exc:  # the contract under test: nothing else may escape
                failures.append((f"{kind}: {type(exc).__name__}: {exc}", data))
                continue
            slowest = max(slowest, time.perf_counter() - started)
            stats[f"{kind} messages"] += len(messages)
            errors[f"{kind}: {error.split(' at ')[0]}" if error else f"{kind}: clean"] += 1
            check(data, messages, largest, limits, failures)
            if i % 8 == 0:
                whole = frame(kind, data, [data], limits, sent, eof)
                split = frame(kind, data, chunks, limits, sent, eof)
                if [m.raw for m in whole[0]] != [m.raw for m in split[0]] or whole[1] != split[1]:
                    failures.append((f"{kind}: whole and split input differ", data))
                stats["split checks"] += 1
    return {"stats": stats, "errors": errors, "failures": failures[:20], "slowest": slowest,
            "inputs": count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    batch = 5_000
    jobs = [(args.seed * 1_000_003 + i, min(batch, args.inputs - i * batch))
            for i in range((args.inputs + batch - 1) // batch)]
    started = time.perf_counter()
    stats, errors = collections.Counter(), collections.Counter()
    failures, slowest, inputs = [], 0.0, 0
    with multiprocessing.Pool(args.jobs) as pool:
        for result in pool.imap_unordered(worker, jobs):
            stats.update(result["stats"])
            errors.update(result["errors"])
            failures += result["failures"]
            slowest = max(slowest, result["slowest"])
            inputs += result["inputs"]
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"inputs:              {inputs:,} ({stats['bytes']:,} bytes), each through both readers")
    print(f"time:                {elapsed:.1f} s on {args.jobs} processes "
          f"({inputs / elapsed:,.0f} inputs/s)")
    print(f"slowest input:       {slowest * 1000:.2f} ms (one reader)")
    print(f"peak worker RSS:     {peak:.0f} MiB")
    print(f"requests framed:     {stats['request messages']:,}")
    print(f"replies framed:      {stats['reply messages']:,}")
    print(f"split checks:        {stats['split checks']:,} (whole vs pieces, same result)")
    print(f"session:             {stats['session errors']:,} SessionError; final states "
          + ", ".join(f"{k[8:]} {v:,}" for k, v in sorted(stats.items())
                      if k.startswith("session ") and k != "session errors"))
    print("outcomes:")
    for name, n in errors.most_common():
        print(f"  {n:>10,}  {name}")
    print(f"contract failures:   {len(failures)}")
    for message, data in failures[:10]:
        print(f"  {message}: {data[:120]!r}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
