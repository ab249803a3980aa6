"""Properties of the memcached readers, with generated exchanges: every split of a valid stream
frames the same messages with the same raw bytes, and built requests and replies read back as
built. That arbitrary bytes give messages or RemoteProtocolError only, in bounded time and
memory, is the codec contract suite's (``test_contract.py``).

Example counts are modest for CI; ``MEMCACHE_EXAMPLES=2000`` runs them deeper.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinproxy.protocols.memcache import (
    CODEC,
    Item,
    Meta,
    Stats,
    Values,
    encode_reply,
    encode_request,
)

EXAMPLES = int(os.environ.get("MEMCACHE_EXAMPLES", "80"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=2000,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

keys = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(c for c in b if c not in b" \r\n\0") or b"k")
values_ = st.binary(max_size=40)
small = st.integers(0, 2**32 - 1).map(lambda n: b"%d" % n)
noreply = st.booleans()


class Exchange:
    """One request, and the reply memcached could give (None: no reply at all, which the reader
    pairs with an implied reply of value None)."""

    def __init__(self, raw: bytes, reply: Any, reply_raw: bytes, name: str) -> None:
        self.raw, self.reply, self.reply_raw, self.name = raw, reply, reply_raw, name

    def __repr__(self) -> str:
        return f"Exchange({self.raw!r} -> {self.reply_raw!r})"


def line_reply(draw: st.DrawFn, choices: list[bytes], errors: bool) -> bytes:
    if errors and draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([b"ERROR", b"CLIENT_ERROR bad thing", b"SERVER_ERROR oops"]))
    return draw(st.sampled_from(choices))


@st.composite
def text_exchange(draw: st.DrawFn, errors: bool = True) -> Exchange:
    """A text request and a reply; ``errors``: the reply may be CLIENT_ERROR or SERVER_ERROR."""
    kind = draw(st.sampled_from(["get", "gets", "gat", "gats", "set", "add", "replace", "append",
                                 "prepend", "cas", "incr", "decr", "touch", "delete", "flush_all",
                                 "verbosity", "version", "stats"]))
    quiet = False
    data = None
    if kind in ("get", "gets", "gat", "gats"):
        ks = draw(st.lists(keys, min_size=1 if kind in ("get", "gets") else 0, max_size=4))
        args = ks if kind in ("get", "gets") else [b"%d" % draw(st.integers(0, 999)), *ks]
        if ks and errors and draw(st.integers(0, 7)) == 0:
            reply: Any = draw(st.sampled_from([b"CLIENT_ERROR bad", b"SERVER_ERROR oops"]))
        else:
            chosen = [k for k in ks if draw(st.booleans())]
            cas = kind in ("gets", "gats")
            reply = Values(tuple(Item(k, draw(st.integers(0, 2**32 - 1)), draw(values_),
                                      draw(st.integers(0, 2**64 - 1)) if cas else None)
                                 for k in chosen))
    elif kind in ("set", "add", "replace", "append", "prepend", "cas"):
        data = draw(values_)
        args = [draw(keys), draw(small), b"%d" % draw(st.integers(-5, 10**6)), b"%d" % len(data)]
        if kind == "cas":
            args.append(b"%d" % draw(st.integers(0, 2**64 - 1)))
        quiet = draw(noreply)
        if quiet:
            args.append(b"noreply")
        reply = line_reply(draw, [b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"], errors)
    elif kind in ("incr", "decr", "touch"):
        args = [draw(keys), b"%d" % draw(st.integers(0, 2**64 - 1))]
        quiet = draw(noreply)
        if quiet:
            args.append(b"noreply")
        number = b"%d" % draw(st.integers(0, 2**64 - 1))
        choices = [b"TOUCHED", b"NOT_FOUND"] if kind == "touch" else [number, b"NOT_FOUND"]
        reply = line_reply(draw, choices, errors)
    elif kind == "delete":
        args = [draw(keys)]
        quiet = draw(noreply)
        if quiet:
            args.append(b"noreply")
        reply = line_reply(draw, [b"DELETED", b"NOT_FOUND"], errors)
    elif kind in ("flush_all", "verbosity"):
        with_arg = kind == "verbosity" or draw(st.booleans())
        args = [b"%d" % draw(st.integers(0, 9))] if with_arg else []
        quiet = draw(noreply)
        if quiet:
            args.append(b"noreply")
        reply = line_reply(draw, [b"OK"], errors)
    elif kind == "version":
        args = []
        reply = line_reply(draw, [b"VERSION 1.6.18", b"VERSION 1.6.99-dev"], errors)
    else:
        args = draw(st.sampled_from([[], [b"items"], [b"reset"], [b"detail", b"on"]]))
        stats = Stats(tuple(b"STAT %s %s" % (k, v) for k, v in draw(
            st.lists(st.tuples(keys, keys), max_size=5))))
        reply = draw(st.sampled_from([stats, b"RESET", b"OK", b"ERROR"]))
    raw = encode_request(kind, *args, data=data)
    if quiet:
        return Exchange(raw, None, b"", kind)
    return Exchange(raw, reply, encode_reply(reply), kind)


@st.composite
def meta_exchange(draw: st.DrawFn, opaque: int, echo: bool = True, errors: bool = True,
                  quiet_only: bool = False) -> Exchange:
    """A meta request; quiet ones carry a unique opaque when ``echo``, so pairing is exact."""
    kind = draw(st.sampled_from(["mg", "ms", "md", "ma", "mn", "me"]))
    key = draw(keys)
    if kind == "mn":
        return Exchange(b"mn\r\n", Meta(b"MN"), b"MN\r\n", "mn")
    if kind == "me":
        reply = draw(st.sampled_from([Meta(b"EN"), Meta(b"ME", (key, b"exp=-1", b"la=0"))]))
        return Exchange(encode_request("me", key), reply, encode_reply(reply), "me")
    flags = draw(st.lists(st.sampled_from([b"v", b"t", b"f", b"s", b"c", b"T30", b"F3", b"N0"]),
                          unique=True, max_size=3))
    quiet = quiet_only or draw(st.booleans())
    if quiet:
        flags.append(b"q")
    if (quiet and echo) or draw(st.booleans()):
        flags.append(b"O%d" % opaque)
    if draw(st.booleans()):
        flags.append(b"k")
    echoed = tuple(f for f in flags if f[:1] == b"O") + ((b"k" + key,) if b"k" in flags else ())
    data = draw(values_) if kind == "ms" else None
    args = [key, b"%d" % len(data), *flags] if kind == "ms" else [key, *flags]
    raw = encode_request(kind, *args, data=data)
    codes = {"mg": [b"HD", b"VA", b"EN"], "ms": [b"HD", b"NS", b"EX", b"NF"],
             "md": [b"HD", b"NF", b"EX"], "ma": [b"HD", b"VA", b"NF", b"NS", b"EX"]}[kind]
    code = draw(st.sampled_from(codes))
    hidden = {"mg": (b"EN",), "ma": (b"HD", b"VA")}.get(kind, (b"HD",))
    if quiet and code in hidden:
        implied = Meta(b"EN") if kind == "mg" else Meta(b"HD")
        return Exchange(raw, implied, b"", kind)
    if not quiet and errors and draw(st.integers(0, 9)) == 0:
        reply: Any = b"CLIENT_ERROR invalid flag"
    else:
        reply = Meta(code, echoed, draw(values_) if code == b"VA" else None)
    return Exchange(raw, reply, encode_reply(reply), kind)


@st.composite
def exchanges(draw: st.DrawFn, echo: bool = True) -> list[Exchange]:
    """A pipeline ended by ``mn``, without the documented ambiguities: while a hidden quiet
    outcome is unsettled, no error line (it carries no echo) and, when quiet requests carry no
    opaque (``echo`` false), no non-quiet meta request that could get the same reply."""
    out = []
    unsettled = False
    for i in range(draw(st.integers(1, 12))):
        errors = not unsettled
        quiet_only = unsettled and not echo
        exchange = draw(st.one_of(text_exchange(errors),
                                  meta_exchange(i, echo, errors, quiet_only)))
        if exchange.reply_raw:
            # a shown outcome settles the hidden ones before it, unless it may be theirs: a
            # quiet request's reply without an echo goes to the oldest quiet one that can show it
            unsettled = unsettled and not echo and _quiet(exchange)
        elif exchange.reply is not None:
            unsettled = True
        out.append(exchange)
    out.append(Exchange(b"mn\r\n", Meta(b"MN"), b"MN\r\n", "mn"))  # settles quiet requests
    return out


def _quiet(exchange: Exchange) -> bool:
    words = exchange.raw.split(b"\r\n", 1)[0].split(b" ")
    return exchange.name in ("mg", "ms", "md", "ma") and b"q" in words[2:]


def cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=8).map(sorted)


def split(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points``, without empty pieces (``b""`` would mean the end of stream)."""
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def frame_requests(chunks: list[bytes]) -> list:
    reader = CODEC.request_reader()
    got = [r for chunk in chunks for r in reader.receive(chunk)]
    assert reader.buffered == 0
    return got


def frame_replies(requests: list, chunks: list[bytes]) -> tuple[list, int]:
    reader = CODEC.reply_reader()
    for request in requests:
        reader.expect(request)
    got = [r for chunk in chunks for r in reader.receive(chunk)]
    return got, reader.pending


@SETTINGS
@given(st.data())
def test_any_split_frames_the_same_requests_and_replies(data: st.DataObject) -> None:
    exchange = data.draw(exchanges())
    sent = b"".join(e.raw for e in exchange)
    whole = frame_requests([sent])
    assert [r.raw for r in whole] == [e.raw for e in exchange]
    pieces = frame_requests(split(sent, data.draw(cuts(sent))))
    assert [(r.raw, r.name, r.args, r.data) for r in pieces] == \
        [(r.raw, r.name, r.args, r.data) for r in whole]
    replies = b"".join(e.reply_raw for e in exchange)
    got, pending = frame_replies(whole, split(replies, data.draw(cuts(replies))))
    assert pending == 0
    assert [(r.raw, r.value) for r in got] == [(e.reply_raw, e.reply) for e in exchange]
    assert [r.request.raw for r in got] == [e.raw for e in exchange]  # one each, in order
    assert all(r.error == (isinstance(r.value, bytes) and r.value.split(b" ")[0] in
                           (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))
               for r in got if not isinstance(r.value, Values))


@SETTINGS
@given(st.data())
def test_quiet_runs_without_echo_are_settled_by_mn(data: st.DataObject) -> None:
    exchange = data.draw(exchanges(echo=False))
    requests = frame_requests([b"".join(e.raw for e in exchange)])
    replies = b"".join(e.reply_raw for e in exchange)
    got, pending = frame_replies(requests, split(replies, data.draw(cuts(replies))))
    assert pending == 0
    assert b"".join(r.raw for r in got) == replies
    assert len(got) == len(exchange)
    assert got[-1].value == Meta(b"MN") and got[-1].request is requests[-1]


@SETTINGS
@given(st.data())
def test_built_requests_read_back_as_built(data: st.DataObject) -> None:
    exchange = data.draw(text_exchange())
    (request,) = CODEC.request_reader().receive(exchange.raw)
    assert encode_request(request.name, *request.args, data=request.data) == exchange.raw


