"""The memcached reply reader: reply shapes, pairing (noreply, quiet meta requests, errors), limits,
each fed whole and byte by byte. Trailing bytes, errors after good replies and the limits' errors
are in the codec contract suite (``test_contract.py``)."""

from __future__ import annotations

import pytest

from twinproxy.protocols.memcache import CODEC, Item, Meta, Stats, Values, make_request
from twinproxy.protocols.messages import Limits, LocalProtocolError, RemoteProtocolError, Request


def requests(data: bytes) -> list[Request]:
    return CODEC.request_reader().receive(data)


def pair(sent: bytes, replies: bytes, limits: Limits | None = None) -> tuple[list, int]:
    """Replies to ``sent`` framed from ``replies`` fed whole, after checking byte by byte agrees."""
    outs = []
    for step in (len(replies) or 1, 1):
        reader = CODEC.reply_reader(limits) if limits else CODEC.reply_reader()
        for request in requests(sent):
            reader.expect(request)
        got = []
        for i in range(0, len(replies), step):
            got += reader.receive(replies[i:i + step])
        outs.append((got, reader.pending))
    (whole, pending), (bytewise, pending1) = outs
    assert [(r.raw, r.value, r.request, r.error) for r in whole] == \
        [(r.raw, r.value, r.request, r.error) for r in bytewise]
    assert pending == pending1
    return whole, pending


def values(got: list) -> list:
    return [(r.request.name, r.value) for r in got]


def test_text_line_replies() -> None:
    got, pending = pair(
        b"set a 0 0 1\r\nx\r\nadd a 0 0 1\r\nx\r\ncas a 0 0 1 5\r\nx\r\nappend z 0 0 1\r\nx\r\n"
        b"incr n 1\r\ndecr z 1\r\ntouch a 1\r\ndelete a\r\nflush_all\r\nverbosity 1\r\nversion\r\n",
        b"STORED\r\nNOT_STORED\r\nEXISTS\r\nNOT_FOUND\r\n18446744073709551615\r\nNOT_FOUND\r\n"
        b"TOUCHED\r\nDELETED\r\nOK\r\nOK\r\nVERSION 1.6.18\r\n")
    assert values(got) == [
        ("set", b"STORED"), ("add", b"NOT_STORED"), ("cas", b"EXISTS"), ("append", b"NOT_FOUND"),
        ("incr", b"18446744073709551615"), ("decr", b"NOT_FOUND"), ("touch", b"TOUCHED"),
        ("delete", b"DELETED"), ("flush_all", b"OK"), ("verbosity", b"OK"),
        ("version", b"VERSION 1.6.18")]
    assert pending == 0 and not any(r.error for r in got)


def test_value_blocks() -> None:
    got, _ = pair(b"get a b c\r\ngets a\r\ngat 1 a\r\nget z\r\n",
                  b"VALUE a 5 3\r\nabc\r\nVALUE c 0 0\r\n\r\nEND\r\n"
                  b"VALUE a 5 4 77\r\nab\r\n\r\nEND\r\nVALUE a 1 1\r\n\n\r\nEND\r\nEND\r\n")
    assert values(got) == [
        ("get", Values((Item(b"a", 5, b"abc"), Item(b"c", 0, b"")))),
        ("gets", Values((Item(b"a", 5, b"ab\r\n", 77),))),
        ("gat", Values((Item(b"a", 1, b"\n"),))),
        ("get", Values(()))]
    assert got[0].raw == b"VALUE a 5 3\r\nabc\r\nVALUE c 0 0\r\n\r\nEND\r\n"


def test_an_error_answers_the_request_it_follows_even_mid_block() -> None:
    got, pending = pair(b"get a b\r\nstats detail\r\nmg a v\r\nincr a 1\r\n",
                        b"VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory\r\n"
                        b"CLIENT_ERROR usage: stats detail on|off|dump\r\nERROR\r\n"
                        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
    assert values(got) == [
        ("get", Values((Item(b"a", 0, b"x"),), b"SERVER_ERROR out of memory")),
        ("stats", b"CLIENT_ERROR usage: stats detail on|off|dump"),
        ("mg", b"ERROR"),
        ("incr", b"CLIENT_ERROR cannot increment or decrement non-numeric value")]
    assert all(r.error for r in got) and pending == 0


def test_stats_shapes() -> None:
    got, _ = pair(b"stats\r\nstats items\r\nstats reset\r\nstats detail on\r\n"
                  b"stats cachedump 1 1\r\n",
                  b"STAT pid 1\r\nSTAT version 1.6.18\r\nEND\r\nEND\r\nRESET\r\nOK\r\n"
                  b"ITEM a [1 b; 0 s]\r\nEND\r\n")
    assert values(got) == [
        ("stats", Stats((b"STAT pid 1", b"STAT version 1.6.18"))), ("stats", Stats(())),
        ("stats", b"RESET"), ("stats", b"OK"), ("stats", Stats((b"ITEM a [1 b; 0 s]",)))]


def test_meta_replies() -> None:
    got, pending = pair(b"mg a v k O1\r\nmg b\r\nms a 2\r\nhi\r\nmd a\r\nma n v\r\nmn\r\n"
                        b"me a\r\nme b\r\n",
                        b"VA 2 ka O1\r\nhi\r\nEN\r\nNS\r\nNF\r\nVA 1\r\n5\r\nMN\r\n"
                        b"ME a exp=-1 la=0 cas=3 fetch=no cls=1 size=63\r\nEN\r\n")
    assert values(got) == [
        ("mg", Meta(b"VA", (b"ka", b"O1"), b"hi")), ("mg", Meta(b"EN")), ("ms", Meta(b"NS")),
        ("md", Meta(b"NF")), ("ma", Meta(b"VA", (), b"5")), ("mn", Meta(b"MN")),
        ("me", Meta(b"ME", (b"a", b"exp=-1", b"la=0", b"cas=3", b"fetch=no", b"cls=1",
                            b"size=63"))),
        ("me", Meta(b"EN"))]
    assert pending == 0


def test_noreply_and_quit_get_implied_replies_in_order_as_soon_as_they_are_settled() -> None:
    sent = (b"set a 0 0 1 noreply\r\nx\r\nincr a 1 noreply\r\ndelete a noreply\r\n"
            b"delete a 0 noreply\r\nflush_all noreply\r\nverbosity noreply\r\ntouch a 1 noreply\r\n"
            b"cas a 0 0 1 1 noreply\r\nx\r\nget a\r\ndelete noreply\r\nquit\r\n")
    reader = CODEC.reply_reader()
    for request in requests(sent):
        reader.expect(request)
    # 8 settled at once (nothing before them); the server owes the get and the delete of the
    # key "noreply" something, the quit after them nothing
    assert reader.pending == 2
    first = [reader.next_reply() for _ in range(8)]
    assert reader.next_reply() is None
    assert [(r.raw, r.value) for r in first] == [(b"", None)] * 8 and reader.pending == 2
    got = reader.receive(b"END\r\n")
    assert [r.request.name for r in got] == ["get"] and reader.pending == 1
    got = reader.receive(b"NOT_FOUND\r\n")  # the delete of the key "noreply", then quit's
    assert [(r.request.name, r.raw) for r in got] == [("delete", b"NOT_FOUND\r\n"), ("quit", b"")]
    assert reader.pending == 0


def key_of(request: Request) -> bytes:
    return request.args[0] if request.args else b""


def test_quiet_requests_get_implied_replies_when_their_outcome_is_hidden() -> None:
    sent = (b"mg a v q\r\nmg b v q\r\nms c 1 q\r\nx\r\nms d 1 q ME\r\ny\r\nmd e q\r\n"
            b"ma f q\r\nget g\r\nmn\r\n")
    got, pending = pair(sent, b"VA 1\r\nA\r\nNS\r\nNF\r\nEND\r\nMN\r\n")
    assert [(r.request.name, key_of(r.request), r.raw, r.value) for r in got] == [
        ("mg", b"a", b"VA 1\r\nA\r\n", Meta(b"VA", (), b"A")),
        ("mg", b"b", b"", Meta(b"EN")),
        ("ms", b"c", b"NS\r\n", Meta(b"NS")),
        # d's, e's or f's: the wire cannot tell; the oldest that can show an NF gets it
        ("ms", b"d", b"NF\r\n", Meta(b"NF")),
        ("md", b"e", b"", Meta(b"HD")),
        ("ma", b"f", b"", Meta(b"HD")),
        ("get", b"g", b"END\r\n", Values(())),
        ("mn", b"", b"MN\r\n", Meta(b"MN")),
    ]
    assert pending == 0


def test_opaque_and_key_echo_settle_quiet_pairing() -> None:
    sent = (b"mg a v q O1\r\nmg b v q O2\r\nmg c v q k\r\nmg d v q k\r\nmg e v q\r\n"
            b"ms f 1 q O3\r\nx\r\nmn\r\n")
    got, pending = pair(sent, b"VA 1 O2\r\nB\r\nVA 1 kd\r\nD\r\nEX O3\r\nMN\r\n")
    assert [(key_of(r.request), r.value.code, r.raw != b"") for r in got] == [
        (b"a", b"EN", False), (b"b", b"VA", True), (b"c", b"EN", False), (b"d", b"VA", True),
        (b"e", b"EN", False), (b"f", b"EX", True), (b"", b"MN", True)]
    assert pending == 0
    # a reply without k cannot be a request's with k; one with O cannot be one's without it
    got, _ = pair(b"mg a v q k\r\nmg b v q\r\nmg c v\r\n", b"VA 1 O9\r\nC\r\n")
    assert [r.value.code for r in got] == [b"EN", b"EN", b"VA"]


def test_base64_key_echo_is_compared_decoded() -> None:
    got, _ = pair(b"mg YQ== b k v q\r\nmg Yg== b k v q\r\nmn\r\n", b"VA 1 kYg== b\r\nB\r\nMN\r\n")
    assert [(key_of(r.request), r.value.code) for r in got] == [
        (b"YQ==", b"EN"), (b"Yg==", b"VA"), (b"", b"MN")]


def test_quiet_requests_stay_pending_until_a_later_reply_settles_them() -> None:
    reader = CODEC.reply_reader()
    for request in requests(b"mg a v q\r\nmg b v q\r\n"):
        reader.expect(request)
    assert reader.pending == 2
    reader.expect(make_request("mn"))
    got = reader.receive(b"MN\r\n")
    assert [r.raw for r in got] == [b"", b"", b"MN\r\n"] and reader.pending == 0


def test_pending_counts_open_requests() -> None:
    reader = CODEC.reply_reader()
    for request in requests(b"get a\r\nset b 0 0 1\r\nx\r\nmg c v\r\n"):
        reader.expect(request)
    assert reader.pending == 3
    assert len(reader.receive(b"VALUE a 0 1\r\nx\r\nEND\r\nSTO")) == 1
    assert reader.pending == 2 and reader.buffered == 3
    assert [r.value for r in reader.receive(b"RED\r\nEN\r\n")] == [b"STORED", Meta(b"EN")]
    assert reader.pending == 0 and reader.buffered == 0


def test_replies_that_answer_no_request_or_the_wrong_one_are_refused() -> None:
    cases = [
        (b"", b"STORED\r\n", "answers no request"),
        (b"get a\r\n", b"STORED\r\n", "cannot answer get"),
        (b"set a 0 0 1\r\nx\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n", "cannot answer set"),
        (b"incr a 1\r\n", b"STORED\r\n", "cannot answer incr"),
        (b"mg a v\r\n", b"MN\r\n", "cannot answer mg"),
        (b"mg a v q\r\n", b"EN\r\n", "answers no request"),
        (b"get a\r\n", b"VALUE a x 1\r\nx\r\nEND\r\n", "malformed"),
        (b"get a\r\n", b"VALUE a 0 1 z\r\nx\r\nEND\r\n", "malformed"),
        (b"get a\r\n", b"VALUE a 0 x\r\nx\r\nEND\r\n", "no readable size"),
        (b"get a\r\n", b"VALUE a 0 1\r\nxyz\r\nEND\r\n", "does not end with CRLF"),
        (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\nEND\r\n", "more than 1"),
        (b"mg a v\r\n", b"VA x\r\n", "no readable size"),
        (b"mg a v\r\n", b"VA 1\r\nxy\r\n", "does not end with CRLF"),
    ]
    for sent, replies, words in cases:
        for step in (len(replies), 1):
            reader = CODEC.reply_reader()
            for request in requests(sent):
                reader.expect(request)
            with pytest.raises(RemoteProtocolError, match=words):
                for i in range(0, len(replies), step):
                    reader.receive(replies[i:i + step])


def test_a_long_value_block_then_a_short_line_is_within_the_line_limit() -> None:
    # Past the limits is in the contract suite (tests/protocols/test_contract.py).
    limits = Limits(max_line=50, max_value=10, max_elements=3)
    got, _ = pair(b"get a\r\n", b"VALUE a 0 10\r\n0123456789\r\nEND\r\n", limits)
    assert got[0].value.items[0].data == b"0123456789"


def test_errors_are_the_same_whatever_the_read_sizes() -> None:
    """Found by the fuzzer: a line past the limit inside a stats block was placed at the start
    of the block when the block arrived in pieces."""
    limits = Limits(max_line=20)
    replies = b"STAT a 1\r\n" + b"STAT " + b"x" * 30 + b"\r\nEND\r\n"
    messages = set()
    for step in (len(replies), 7, 1):
        reader = CODEC.reply_reader(limits)
        reader.expect(make_request("stats"))
        with pytest.raises(RemoteProtocolError) as info:
            for i in range(0, len(replies), step):
                reader.receive(replies[i:i + step])
        messages.add(str(info.value))
    assert messages == {"reply line at byte 10 is longer than 20 bytes"}


def test_end_of_stream() -> None:
    reader = CODEC.reply_reader()
    for request in requests(b"version\r\nquit\r\n"):
        reader.expect(request)
    assert [r.raw for r in reader.receive(b"VERSION 1.6.18\r\n")] == [b"VERSION 1.6.18\r\n", b""]
    assert reader.receive(b"") == [] and reader.pending == 0
    reader = CODEC.reply_reader()
    reader.expect(make_request("get", "a"))
    assert reader.receive(b"VALUE a 0 5\r\nab") == []
    with pytest.raises(RemoteProtocolError, match="middle of a reply"):
        reader.receive(b"")



def test_a_shutdown_memcached_accepts_is_answered_by_the_close_with_all_before_and_after() -> None:
    """memcached closes at once on a shutdown it allows, without the replies it had not sent
    (to the requests read with it), and never reads what follows: all of them are answered by
    the close, with nothing, and nothing is owed."""
    reader = CODEC.reply_reader()
    for request in requests(b"version\r\nmg a v q\r\nshutdown\r\nget b\r\n"):
        reader.expect(request)
    assert reader.pending == 4
    got = reader.receive(b"")
    assert [(r.request.name, r.raw) for r in got] == [
        ("version", b""), ("mg", b""), ("shutdown", b""), ("get", b"")]
    assert got[1].value == Meta(b"EN") and reader.pending == 0
    # a close without a shutdown queued settles nothing: the replies are owed
    reader = CODEC.reply_reader()
    reader.expect(make_request("version"))
    assert reader.receive(b"") == [] and reader.pending == 1


def test_after_a_watch_is_accepted_the_stream_is_not_framed_and_nothing_is_owed() -> None:
    reader = CODEC.reply_reader()
    for request in requests(b"watch fetchers\r\nget a\r\n"):
        reader.expect(request)
    got = reader.receive(b"OK\r\nts=1.0 gid=1 type=item_get key=a status=not_found\n")
    assert [(r.request.name, r.raw) for r in got] == [("watch", b"OK\r\n")]
    assert reader.streaming and reader.pending == 0
    reader.expect(make_request("get", "b"))  # memcached no longer reads: nothing is owed
    assert reader.receive(b"ts=2.0 anything at all\n") == [] and reader.pending == 0
    # a watch memcached refuses is one line like any other, and framing goes on
    reader = CODEC.reply_reader()
    for request in requests(b"watch bogus\r\nget a\r\n"):
        reader.expect(request)
    got = reader.receive(b"ERROR\r\nEND\r\n")
    assert [r.request.name for r in got] == ["watch", "get"] and not reader.streaming


def test_expect_refuses_what_the_codec_does_not_frame() -> None:
    with pytest.raises(LocalProtocolError):
        CODEC.reply_reader().expect(Request(b"frobnicate\r\n", "frobnicate", []))


@pytest.mark.parametrize("bad", [b"x" * 100, b"VALUE k 0 4294967296\r\n"])
def test_a_noreply_request_is_settled_alike_whole_or_in_pieces_before_bad_output(bad) -> None:
    """Found by the long fuzz run: the reply before the bad bytes settles the noreply request
    after it whether the bad bytes come in the same read or a later one."""
    sent = requests(b"get a\r\nset b 0 0 1 noreply\r\nx\r\nget c\r\n")
    outcomes = []
    for chunks in ([b"END\r\n" + bad], [b"END\r\n", bad]):
        reader = CODEC.reply_reader(Limits(max_line=64))
        for request in sent:
            reader.expect(request)
        got = []
        with pytest.raises(RemoteProtocolError) as caught:
            for chunk in chunks:
                got += reader.receive(chunk)
        got += caught.value.messages
        outcomes.append(([(r.raw, r.request.name) for r in got], str(caught.value)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == [(b"END\r\n", "get"), (b"", "set")]
