"""memcached during an update: the MVE engine's runs (``MemcacheRequestReader.count_run``, the C
scan's run mode in ``_scan.c``) and the shared connection's replies (``memcache/shared.py``),
each against the exact readers. A run is only ever whole requests the exact parser frames as
they are, each routed to the shared connection; the shared framer cuts a stream of replies
where the exact reply reader cuts it, with the same values and errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocols.test_memcache_count import EDITS, SMALL, framed, started, stream
from tests.protocols.test_memcache_count import request as any_request
from tests.protocols.test_memcache_properties import EXAMPLES, SETTINGS, text_exchange
from twinproxy.protocols.memcache import CODEC, shared
from twinproxy.protocols.memcache import requests as memcache_requests
from twinproxy.protocols.memcache.expiry import absolute_expiry
from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits, RemoteProtocolError

pytestmark = pytest.mark.skipif(memcache_requests.c_scan is None,
                                reason="the C scan is not built (setup.py found no compiler)")

SMALL_REPLIES = Limits(max_line=20, max_value=8)
RUNNABLE = {"get", "gat", "set", "add", "replace", "append", "prepend", "incr", "decr",
            "touch", "delete"}
VALUES = ("get", "gat")  # (replies of VALUE blocks, not small)
AT = 1_796_000_000.5  # when the leader answered, as the engine's wall clock says it


def as_framed(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[tuple]:
    """The requests of ``data`` as memcached frames them (a line may end in a bare LF, which a
    run's rewrite keeps and a request made anew writes as CRLF)."""
    return [(r.name, r.args, r.data) for r in CODEC.request_reader(limits).receive(data)]


@settings(SETTINGS, max_examples=max(EXAMPLES, 400))
@given(st.lists(any_request(), min_size=1, max_size=6), st.lists(EDITS, max_size=2),
       st.booleans())
def test_property_a_run_is_whole_requests_the_exact_parser_frames_and_routes_shared(
        reqs: list[bytes], edits: list[tuple[str, int, bytes]], small: bool) -> None:
    limits = SMALL if small else DEFAULT_LIMITS
    data = stream(reqs, edits)
    exact, end = framed(started(limits), [data])
    reader = started(limits)
    got = reader.count_run(data)
    if got is None:  # nothing taken: the engine frames the read request by request
        assert reader.buffered == 0
        assert framed(reader, [data]) == (exact, end)
        return
    used, count = got
    assert used == len(data) and end == ("held", 0) and count == len(exact)
    replies, expiring = [], False
    for name, args, _data, _raw, answer in exact:
        assert name in RUNNABLE and answer is None
        request = CODEC.describe(CODEC.request_reader(limits).receive(_raw)[0])
        expiring = expiring or absolute_expiry(request, AT) is not None
        # One reply each, or none after a last noreply: the exact reader's count, which the
        # engine frames the run's replies by ("get noreply" reads the key "noreply").
        assert CODEC.route(request) == "shared" and request.replies in (0, 1)
        assert (request.replies == 0) is (name not in VALUES and args[-1] == b"noreply")
        replies.append(request.replies)
        assert CODEC.small_reply(request) is (name not in VALUES)  # as the run's small_replies
    assert reader.small_replies == all(name not in VALUES for name, *_ in exact)
    assert reader.reads_only == all(name == "get" for name, *_ in exact)
    assert reader.silent == replies.count(0) and reader.silent_last is (replies[-1] == 0)
    # The follower gets a store whose expiry is in seconds from now (the reader says there is
    # one) with the unix time it was on the leader, as the request-by-request path sends it.
    assert reader.expiring is expiring
    assert as_framed(CODEC.follower_run(data, AT), limits) == as_framed(b"".join(
        CODEC.make_request(words).raw if (words := absolute_expiry(r, AT)) is not None
        else r.raw for r in (CODEC.describe(r) for r in CODEC.request_reader(limits).receive(data))
    ), limits)
    # The reader goes on at the next request.
    assert [r.name for r in reader.receive(b"mn\r\n")] == ["mn"]


run_key = st.binary(min_size=1, max_size=5).map(lambda k: bytes(b % 94 + 33 for b in k))
expiry = st.one_of(st.integers(0, 3 * 2592000).map(b"%d".__mod__),
                   st.sampled_from([b"0", b"2592000", b"2592001", b"060", b"1796000000"]))


@st.composite
def runnable(draw: st.DrawFn) -> bytes:
    """A request of the forms a run takes, with or without noreply."""
    kind = draw(st.sampled_from(["get", "gat", "store", "incr", "touch", "delete"]))
    quiet = [b"noreply"] if draw(st.booleans()) else []
    if kind in ("get", "gat"):
        at = [draw(expiry)] if kind == "gat" else []
        return b" ".join([kind.encode(), *at, *draw(st.lists(run_key, min_size=1, max_size=3))]
                         ) + b"\r\n"
    if kind == "touch":
        return b" ".join([b"touch", draw(run_key), draw(expiry), *quiet]) + b"\r\n"
    if kind == "store":
        data = draw(st.binary(max_size=8))
        name = draw(st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend"]))
        words = [name, draw(run_key), b"0", draw(expiry), b"%d" % len(data), *quiet]
        return b" ".join(words) + b"\r\n" + data + b"\r\n"
    if kind == "incr":
        return b" ".join([draw(st.sampled_from([b"incr", b"decr"])), draw(run_key), b"5",
                          *quiet]) + b"\r\n"
    return b" ".join([b"delete", draw(run_key), *quiet]) + b"\r\n"


@settings(SETTINGS, max_examples=max(EXAMPLES, 300))
@given(st.lists(runnable(), min_size=1, max_size=8), st.floats(1e9, 3e9))
def test_property_a_runs_follower_bytes_are_what_each_request_alone_would_get(
        reqs: list[bytes], at: float) -> None:
    """The follower gets a run's stores whose expiry is in seconds from now with the unix time
    it was on the leader, byte for byte what the request-by-request path sends for each
    (``follower_plan``); the run's silent requests are the ones that get no reply."""
    data = b"".join(reqs)
    reader = started(DEFAULT_LIMITS)
    assert reader.count_run(data) == (len(data), len(reqs))
    exact = [CODEC.describe(r) for r in CODEC.request_reader().receive(data)]
    words = [absolute_expiry(r, at) for r in exact]
    assert reader.expiring is any(w is not None for w in words)
    assert as_framed(CODEC.follower_run(data, at)) == as_framed(b"".join(
        CODEC.make_request(w).raw if w is not None else r.raw
        for r, w in zip(exact, words, strict=True)))
    assert reader.silent == sum(r.replies == 0 for r in exact)
    assert reader.silent_last is (exact[-1].replies == 0)


@pytest.mark.parametrize(("data", "count", "silent"), [
    (b"set k 0 0 3\r\nabc\r\nget k\r\n", 2, (0, False)),
    (b"get a b c\r\nincr n 5\r\ndecr n 1\r\ndelete k\r\n", 4, (0, False)),
    (b"set k 0 60 3\r\nabc\r\n", 1, (0, False)),  # the follower gets the leader's moment
    (b"set k 0 -1 3\r\nabc\r\n", None, None),  # (already expired: the exact path)
    # pymemcache's default stores
    (b"set k 0 0 3 noreply\r\nabc\r\n", 1, (1, True)),
    (b"set k 0 0 3 noreply\r\nabc\r\nget k\r\n", 2, (1, False)),
    (b"get k\r\nappend k 0 0 1 noreply\r\nx\r\nincr n 1 noreply\r\ndelete k noreply\r\n", 4,
     (3, True)),
    (b"set k 0 0 3 noreplx\r\nabc\r\n", None, None),  # memcached ignores the token: exact path
    (b"get k noreply\r\n", None, None),  # a get of two keys, the second "noreply"
    (b"touch k 60\r\ngat 60 a b\r\ntouch k 0 noreply\r\n", 3, (1, True)),
    (b"gat 60 k noreply\r\n", None, None),  # a gat of two keys, the second "noreply"
    (b"touch k noreply\r\n", None, None),  # (no expiry: memcached's error, or nothing?)
    (b"gets k\r\n", None, None),  # CAS tokens
    (b"gats 60 k\r\n", None, None),
    (b"mg k v\r\n", None, None),
    (b"delete k 0\r\n", None, None),
    (b"delete k 0 noreply\r\n", None, None),
    (b"incr k noreply\r\n", None, None),  # memcached answers it with nothing, not even an error
    (b"get k\r\nget", None, None),  # not a whole read
])
def test_what_a_run_takes(data: bytes, count: int | None, silent: tuple | None) -> None:
    reader = started(DEFAULT_LIMITS)
    got = reader.count_run(data)
    assert (got[1] if got else None) == count
    if got:
        assert (reader.silent, reader.silent_last) == silent


def exact_replies(exchanges: list) -> list[tuple]:
    reader = CODEC.reply_reader()
    for request in CODEC.request_reader().receive(b"".join(e.raw for e in exchanges)):
        reader.expect(request)
    return [(r.value, r.raw, r.error) for r in
            reader.receive(b"".join(e.reply_raw for e in exchanges))]


@settings(SETTINGS, max_examples=max(EXAMPLES, 300))
@given(st.lists(text_exchange(), min_size=1, max_size=6), st.data())
def test_property_shared_replies_are_cut_and_valued_as_the_exact_reader_does(
        exchanges: list, data: st.DataObject) -> None:
    # (A noreply request routed there gets no reply: the engine settles it by the next one.)
    requests = [CODEC.describe(CODEC.request_reader().receive(e.raw)[0]) for e in exchanges]
    exchanges = [e for e, request in zip(exchanges, requests, strict=True)
                 if CODEC.route(request) == "shared" and request.replies]
    if not exchanges:
        return
    expected = exact_replies(exchanges)
    stream_ = b"".join(e.reply_raw for e in exchanges)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream_)), max_size=3)))
    parser = CODEC.shared_parser()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream_)], strict=True):
        parser.feed(stream_[a:b])
        while (one := parser.next()) is not None:
            value, raw = one
            got.append((value, raw, CODEC.reply(value, raw).error))
    assert got == expected
    # take() counts the same replies, and says whether one was an error.
    taker = CODEC.shared_parser()
    taker.feed(stream_)
    count, raw, error = taker.take(len(exchanges) + 1)
    assert (count, raw, error) == (len(expected), stream_, any(e for *_, e in expected))
    # match() knows the leader's bytes in the follower's stream.
    matcher = CODEC.shared_parser()
    matcher.feed(stream_[:len(stream_) // 2])
    assert matcher.match(stream_) is (None if len(stream_) // 2 < len(stream_) else True)
    matcher.feed(stream_[len(stream_) // 2:])
    assert matcher.match(stream_) is True


def test_a_malformed_shared_reply_is_refused() -> None:
    parser = CODEC.shared_parser()
    parser.feed(b"VALUE k 0 3\r\nabcd\r\nEND\r\n")
    with pytest.raises(RemoteProtocolError):
        parser.next()


REPLY_EDITS = st.tuples(st.sampled_from(["insert", "cut", "drop"]), st.integers(0, 10**6),
                        st.sampled_from([b" ", b"  ", b"\r", b"\n", b"\r\n", b"\t", b"VALUE ",
                                         b"END\r\n", b"ERROR\r\n", b"9", b"-", b"x"]))


def walked(stream_: bytes, cuts: list[int], limits: Limits) -> list:
    """What take() gives, read by read (``cuts``), until it has nothing more or raises."""
    parser = shared.SharedReplies(limits)
    out: list = []
    for a, b in zip([0, *cuts], [*cuts, len(stream_)], strict=True):
        parser.feed(stream_[a:b])
        try:
            while (got := parser.take(3))[0]:
                out.append(got)
        except RemoteProtocolError:
            out.append("error")
            return out
    return out


@settings(SETTINGS, max_examples=max(EXAMPLES, 400))
@given(st.lists(text_exchange(), min_size=1, max_size=6), st.lists(REPLY_EDITS, max_size=2),
       st.lists(st.integers(0, 400), max_size=3), st.booleans())
def test_property_the_c_walk_over_replies_takes_what_the_python_framer_takes(
        exchanges: list, edits: list[tuple[str, int, bytes]], cuts: list[int], small: bool,
) -> None:
    limits = SMALL_REPLIES if small else DEFAULT_LIMITS
    stream_ = stream([e.reply_raw for e in exchanges], edits)
    cuts = sorted(min(c, len(stream_)) for c in cuts)
    with_c = walked(stream_, cuts, limits)
    walk, shared._c_replies = shared._c_replies, None
    try:
        assert walked(stream_, cuts, limits) == with_c
    finally:
        shared._c_replies = walk


def test_a_runs_expiries_reach_the_follower_as_the_leaders_moment() -> None:
    run = (b"set a 0 60 1\r\nx\r\nget a\r\nadd b 3 2592000 2 noreply\r\nyy\r\n"
           b"replace c 0 2592001 1\r\nz\r\nappend d 0 0 1\r\nw\r\nincr n 60\r\n")
    reader = started(DEFAULT_LIMITS)
    assert reader.count_run(run) == (len(run), 6) and reader.expiring
    assert CODEC.follower_run(run, AT) == (
        b"set a 0 1796000060 1\r\nx\r\nget a\r\nadd b 3 1798592000 2 noreply\r\nyy\r\n"
        b"replace c 0 2592001 1\r\nz\r\nappend d 0 0 1\r\nw\r\nincr n 60\r\n")
    assert CODEC.follower_run(run, 0.0) == run  # (the moment not known: as it came)
    with pytest.raises(ValueError):
        memcache_requests.c_absolute(run[:-1], 1)
