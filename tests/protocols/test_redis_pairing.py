"""Which request each Redis reply answers, in every connection state.

Each case is a script: the requests sent on one server connection, the bytes redis-server sent
back (these are real outputs of 6.2/7.0; the golden tests replay many more), and what each reply
answers: the index of its request, "push" (out of band), "none" (the synthetic reply of a
request that got no reply) or "unpaired". A trailing "+" marks a reply that is not its
request's last (``final`` false).
"""

from __future__ import annotations

from twinproxy.protocols.messages import Reply, Request
from twinproxy.protocols.redis import CODEC, NO_REPLY, RespReplyReader, encode_command


def frame(text: str) -> Request:
    [req] = CODEC.request_reader().receive(encode_command(*text.split(" ")))
    return req


def play(requests: list[str], stream: bytes, split: bool = False) -> tuple[list[str],
                                                                             RespReplyReader]:
    reader = CODEC.reply_reader()
    reqs = [frame(r) for r in requests]
    got = []
    for req in reqs:
        reader.expect(req)
        while (reply := reader.next_reply()) is not None:
            got.append(reply)
    chunks = [stream[i : i + 1] for i in range(len(stream))] if split else [stream]
    for chunk in chunks:
        got += reader.receive(chunk)
    out = []
    for reply in got:
        index = next((i for i, r in enumerate(reqs) if r is reply.request), None)
        if reply.push:
            label = "push"
        elif reply.request is None:
            label = "unpaired"
        else:
            label = f"none{index}" if reply.value is NO_REPLY else str(index)
        out.append(label + ("" if reply.final else "+"))
    return out, reader


def check(requests: list[str], stream: bytes, expected: list[str], pending: int = 0) -> None:
    for split in (False, True):
        got, reader = play(requests, stream, split)
        assert got == expected, split
        assert reader.pending == pending


def bulk(*items: str) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(
        b"$%d\r\n%s\r\n" % (len(i), i.encode()) if i != "nil" else b"$-1\r\n" for i in items)


def confirm(kind: str, channel: str, count: int, push: bool = False) -> bytes:
    head = b">3\r\n" if push else b"*3\r\n"
    name = b"$%d\r\n%s\r\n" % (len(kind), kind.encode())
    chan = b"$-1\r\n" if channel == "nil" else b"$%d\r\n%s\r\n" % (len(channel), channel.encode())
    return head + name + chan + b":%d\r\n" % count


HELLO3 = b"%1\r\n$5\r\nproto\r\n:3\r\n"
HELLO2 = b"*2\r\n$5\r\nproto\r\n:2\r\n"


def test_plain_pipeline() -> None:
    check(["SET a 1", "GET a", "GET nosuch", "LRANGE l 0 -1", "INCR x"],
          b"+OK\r\n$1\r\n1\r\n$-1\r\n*0\r\n-ERR not an integer\r\n", ["0", "1", "2", "3", "4"])


def test_pending_counts_what_is_still_unanswered() -> None:
    got, reader = play(["GET a", "GET b", "SUBSCRIBE x y"], b"$-1\r\n")
    assert got == ["0"] and reader.pending == 2
    assert reader.receive(b"$-1\r\n" + confirm("subscribe", "x", 1)) and reader.pending == 1
    reader.receive(confirm("subscribe", "y", 2))
    assert reader.pending == 0


def test_resp2_subscribe_mode() -> None:
    stream = (confirm("subscribe", "a", 1) + confirm("subscribe", "b", 2)
              + confirm("psubscribe", "n*", 3) + bulk("message", "a", "hi")
              + bulk("pmessage", "n*", "n1", "x") + bulk("pong", "")
              + b"-ERR Can't execute 'get'\r\n" + confirm("unsubscribe", "b", 2)
              + confirm("unsubscribe", "a", 1) + bulk("message", "a", "late?")
              + confirm("punsubscribe", "n*", 0) + b"+PONG\r\n"
              + confirm("unsubscribe", "nil", 0) + bulk("message", "x", "y"))
    check(["SUBSCRIBE a b", "PSUBSCRIBE n*", "PING", "GET k", "UNSUBSCRIBE", "PUNSUBSCRIBE",
           "PING", "UNSUBSCRIBE", "LRANGE l 0 -1"], stream,
          ["0+", "0", "1", "push", "push", "2", "3", "4+", "4", "push", "5", "6", "7", "8"])


def test_unsubscribe_all_counts_the_channels_it_had() -> None:
    stream = (confirm("subscribe", "a", 1) + confirm("subscribe", "a", 1)
              + confirm("subscribe", "b", 2) + confirm("unsubscribe", "a", 1)
              + confirm("unsubscribe", "b", 0) + b"+PONG\r\n")
    check(["SUBSCRIBE a a", "SUBSCRIBE b", "UNSUBSCRIBE", "PING"], stream,
          ["0+", "0", "1", "2+", "2", "3"])


def test_resp3_confirmations_are_pushes_that_answer_their_request() -> None:
    stream = (HELLO3 + confirm("subscribe", "a", 1, push=True)
              + b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n" + b"_\r\n" + b"+PONG\r\n"
              + confirm("unsubscribe", "a", 0, push=True) + b":1\r\n")
    check(["HELLO 3", "SUBSCRIBE a", "GET k", "PING", "UNSUBSCRIBE", "EXISTS k"], stream,
          ["0", "1", "push", "2", "3", "4", "5"])


def test_a_failed_hello_changes_nothing() -> None:
    # Still RESP2: once subscribed, a "message" array is a push, "pong" answers PING.
    stream = (b"-NOPROTO unsupported protocol version\r\n" + confirm("subscribe", "a", 1)
              + bulk("message", "a", "m") + bulk("pong", ""))
    check(["HELLO 4", "SUBSCRIBE a", "PING"], stream, ["0", "1", "push", "2"])


def test_a_failed_subscribe_changes_nothing() -> None:
    stream = b"-NOPERM no\r\n" + bulk("message", "a", "b")
    check(["SUBSCRIBE a", "LRANGE l 0 -1"], stream, ["0", "1"])
    check(["SSUBSCRIBE a", "LRANGE l 0 -1"], b"-ERR unknown command\r\n" + bulk("message", "a",
                                                                                  "b"), ["0", "1"])


def test_client_reply_off_on_skip() -> None:
    stream = b"+OK\r\n$1\r\n1\r\n$1\r\n2\r\n"
    check(["CLIENT REPLY OFF", "SET a 1", "GET a", "CLIENT REPLY SKIP", "CLIENT REPLY ON",
           "GET a", "CLIENT REPLY SKIP", "INCR a", "GET a"], stream,
          ["none0", "none1", "none2", "none3", "4", "5", "none6", "none7", "8"])


def test_no_reply_is_ready_before_any_byte_from_the_server() -> None:
    reader = CODEC.reply_reader()
    reader.expect(frame("CLIENT REPLY OFF"))
    reader.expect(frame("SET a 1"))
    replies = [reader.next_reply(), reader.next_reply()]
    assert [(r.raw, r.value, r.request.name) for r in replies] == [
        (b"", NO_REPLY, "CLIENT"), (b"", NO_REPLY, "SET")]
    assert reader.next_reply() is None and reader.pending == 0


def test_client_reply_skip_chains_and_stops_at_off() -> None:
    check(["CLIENT REPLY SKIP", "CLIENT REPLY SKIP", "INCR a", "GET a"], b"$1\r\n3\r\n",
          ["none0", "none1", "none2", "3"])
    check(["CLIENT REPLY OFF", "CLIENT REPLY SKIP", "CLIENT REPLY ON", "PING"],
          b"+OK\r\n+PONG\r\n", ["none0", "none1", "2", "3"])


def test_reset_answers_under_off_but_not_after_skip() -> None:
    check(["CLIENT REPLY OFF", "RESET", "PING"], b"+RESET\r\n+PONG\r\n", ["none0", "1", "2"])
    check(["CLIENT REPLY SKIP", "RESET", "PING"], b"+PONG\r\n", ["none0", "none1", "2"])


def test_confirmations_come_even_under_client_reply_off() -> None:
    stream = confirm("subscribe", "a", 1) + confirm("subscribe", "b", 2) + bulk("message", "a",
                                                                                "x")
    check(["CLIENT REPLY OFF", "SUBSCRIBE a b", "PING", "CLIENT REPLY ON", "PING"], stream,
          ["none0", "1+", "1", "none2", "none3", "none4", "push"])


def test_a_silently_failing_subscribe_under_off() -> None:
    # 6.2 has no SSUBSCRIBE: its error is not sent under OFF, and no confirmation comes.
    check(["CLIENT REPLY OFF", "SSUBSCRIBE s", "CLIENT REPLY ON", "PING"], b"+OK\r\n+PONG\r\n",
          ["none0", "none1", "2", "3"])


def test_client_reply_that_fails_predictably_gets_its_error() -> None:
    err = b"-ERR Can't execute 'client|reply'\r\n"
    check(["SUBSCRIBE a", "CLIENT REPLY OFF", "PING"],
          confirm("subscribe", "a", 1) + err + bulk("pong", ""), ["0", "1", "2"])
    check(["MULTI", "CLIENT REPLY OFF", "DISCARD"], b"+OK\r\n+QUEUED\r\n+OK\r\n", ["0", "1", "2"])
    check(["CLIENT REPLY", "PING"], b"-ERR wrong number of arguments\r\n+PONG\r\n", ["0", "1"])


NOAUTH = b"-NOAUTH Authentication required.\r\n"


def test_client_reply_off_that_fails_with_noauth_is_recovered() -> None:
    stream = NOAUTH + NOAUTH + b"+OK\r\n+PONG\r\n+OK\r\n+PONG\r\n"
    got, reader = play(["CLIENT REPLY OFF", "PING", "AUTH pw", "PING", "CLIENT REPLY ON",
                        "PING"], stream)
    # PING, AUTH and PING were first taken as silent, then get their real replies.
    assert got == ["none0", "none1", "none2", "none3", "0", "1", "2", "3", "4", "5"]
    assert reader.pending == 0


def test_after_noauth_client_reply_is_expected_to_fail() -> None:
    check(["GET a", "CLIENT REPLY SKIP", "PING", "GET a"], NOAUTH * 4, ["0", "1", "2", "3"])


def test_client_reply_skip_that_fails_with_noauth_is_recovered() -> None:
    got, reader = play(["CLIENT REPLY SKIP", "PING", "GET a"], NOAUTH * 3)
    assert got == ["none0", "none1", "0", "1", "2"] and reader.pending == 0


def test_monitor_lines_are_out_of_band() -> None:
    line = b'+1795314346.980821 [0 127.0.0.1:56948] "PING"\r\n'
    stream = b"+OK\r\n" + line + b"+PONG\r\n" + line + b"-ERR Replica can't interact\r\n"
    stream += b"+RESET\r\n+1795314346.980821 [0 1.2.3.4:5] lookalike\r\n"
    check(["MONITOR", "PING", "GET a", "RESET", "ECHO x"], stream,
          ["0", "push", "1", "push", "2", "3", "4"])


def test_multi_exec() -> None:
    stream = (b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n"
              b"+OK\r\n+QUEUED\r\n-ERR unknown command\r\n-EXECABORT discarded\r\n"
              b"+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n-ERR EXEC without MULTI\r\n")
    check(["MULTI", "SET t 1", "INCR t", "EXEC", "MULTI", "SET t 2", "NOSUCH", "EXEC", "WATCH t",
           "MULTI", "INCR t", "EXEC", "EXEC"], stream, [str(i) for i in range(13)])


def test_a_queued_subscribe_overflows_the_exec_array() -> None:
    # redis-server writes all of SUBSCRIBE's confirmations into an array counted as one.
    stream = (b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n" + confirm("subscribe", "a", 1)
              + confirm("subscribe", "b", 2) + confirm("subscribe", "c", 3) + bulk("pong", "")
              + bulk("message", "b", "m") + bulk("pong", ""))
    check(["MULTI", "SUBSCRIBE a b c", "PING", "EXEC", "PING"], stream,
          ["0", "1", "2", "3+", "3+", "3", "push", "4"])


def test_a_queued_subscribe_in_resp3() -> None:
    stream = (HELLO3 + b"+OK\r\n+QUEUED\r\n*1\r\n" + confirm("subscribe", "a", 1, True)
              + confirm("subscribe", "b", 2, True) + b"+PONG\r\n")
    check(["HELLO 3", "MULTI", "SUBSCRIBE a b", "EXEC", "PING"], stream,
          ["0", "1", "2", "3+", "3", "4"])


def test_hello_inside_multi_switches_at_exec() -> None:
    stream = (b"+OK\r\n+QUEUED\r\n*1\r\n" + HELLO3 + confirm("subscribe", "a", 1, True)
              + b"+PONG\r\n" + HELLO2)
    got, reader = play(["MULTI", "HELLO 3", "EXEC", "SUBSCRIBE a", "PING", "HELLO 2"], stream)
    assert got == ["0", "1", "2", "3", "4", "5"] and not reader.state.resp3


def test_reset_returns_to_resp2_without_subscriptions() -> None:
    stream = (HELLO3 + confirm("subscribe", "a", 1, True) + b"+RESET\r\n"
              + bulk("message", "a", "not a push: not subscribed"))
    got, reader = play(["HELLO 3", "SUBSCRIBE a", "RESET", "LRANGE l 0 -1"], stream)
    assert got == ["0", "1", "2", "3"]
    assert not reader.state.resp3 and not reader.state.subscribed


def test_tracking_invalidations_are_pushes() -> None:
    inval = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    stream = HELLO3 + b"+OK\r\n_\r\n" + inval + b"+OK\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n+PONG\r\n"
    check(["HELLO 3", "CLIENT TRACKING ON", "GET k", "SET k 1", "PING"], stream,
          ["0", "1", "2", "push", "3", "push", "4"])


def test_resp2_tracking_redirect_messages() -> None:
    stream = confirm("subscribe", "__redis__:invalidate", 1) + (
        b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n")
    check(["SUBSCRIBE __redis__:invalidate"], stream, ["0", "push"])


def test_an_unsolicited_confirmation_is_out_of_band() -> None:
    # A cluster tells a client its shard channel moved away: SUNSUBSCRIBE nobody asked for.
    stream = confirm("ssubscribe", "s", 1) + confirm("sunsubscribe", "s", 0) + bulk("pong", "")
    got, reader = play(["SSUBSCRIBE s", "PING"], stream)
    assert got == ["0", "push", "1"] and not reader.state.subscribed


def test_replies_nobody_waits_for_are_unpaired() -> None:
    got, reader = play(["PING"], b"+PONG\r\n+PONG\r\n")
    assert got == ["0", "unpaired"] and reader.unpaired == 1


def test_quit() -> None:
    check(["QUIT"], b"+OK\r\n", ["0"])


def test_a_silent_exec_still_applies_what_it_ran() -> None:
    got, reader = play(["CLIENT REPLY OFF", "MULTI", "HELLO 3", "EXEC", "CLIENT REPLY ON"],
                       b"+OK\r\n")
    assert got == ["none0", "none1", "none2", "none3", "4"] and reader.state.resp3


def test_a_resp3_connection_framed_again_is_read_as_resp3() -> None:
    """SINGLE mode forwards a RESP3 connection's replies unframed between its session
    commands and frames them again with a fresh reader when it must: what it keeps of the old
    one (``framing_kept``) tells the new one the connection speaks RESP3. Subscribed, an array
    is then an ordinary reply (RESP2 would take it for a message); and such a connection may go
    unframed, and share an update's connection in RESP3 (``dialect``), not in RESP2."""
    first = CODEC.reply_reader()
    first.expect(frame("HELLO 3"))
    assert [r.request is not None for r in first.receive(HELLO3)] == [True]
    kept = CODEC.framing_kept(first)
    for resumed in (True, False):
        reader = CODEC.reply_reader()
        if resumed:
            CODEC.resume_framing(reader, kept)
        subscribe, lrange = frame("SUBSCRIBE a"), frame("LRANGE l 0 -1")
        reader.expect(subscribe)
        reader.expect(lrange)
        got = reader.receive(confirm("subscribe", "a", 1, push=True) + bulk("message", "a", "m"))
        if resumed:
            assert [r.request for r in got] == [subscribe, lrange] and reader.pending == 0
        else:  # what a reader that did not know would do: the reply taken for a message
            assert got[-1].push and reader.pending == 1
    reader = CODEC.reply_reader()
    CODEC.resume_framing(reader, kept)
    assert CODEC.plain_state(reader) and CODEC.dialect(reader) == 3
    resp2 = CODEC.reply_reader()
    assert CODEC.framing_kept(resp2) is None
    assert CODEC.plain_state(resp2) and CODEC.dialect(resp2) is None


def test_the_dialect_a_hello_leaves_a_connection_in() -> None:
    """What the engine asks of the codec to share a client's requests in its protocol."""
    hello3, hello2 = frame("HELLO 3"), frame("HELLO 2")
    ok, refused = Reply(b"", None), Reply(b"", None, error=True)
    assert CODEC.route(hello3) == CODEC.route(hello2) == "dialect"
    assert CODEC.route(frame("HELLO 3 AUTH u p")) == "login"
    assert CODEC.route(frame("HELLO 3 SETNAME n")) == "dialect"
    assert CODEC.route(frame("HELLO 3 SETNAME auth")) == "dialect"
    assert CODEC.route(frame("AUTH p")) == "login"
    assert CODEC.dialect_after(frame("AUTH 3"), ok, None) is None  # (a password of digits)
    assert CODEC.dialect_after(hello3, ok, None) == 3
    assert CODEC.dialect_after(frame("HELLO 03"), ok, None) == 3
    assert CODEC.dialect_after(hello2, ok, 3) is None
    assert CODEC.dialect_after(hello3, refused, None) is None  # (NOPROTO, NOAUTH ...)
    assert CODEC.dialect_after(frame("HELLO x"), ok, 3) == 3
    assert CODEC.switch_dialect(3, None) == hello3.raw
    assert CODEC.switch_dialect(None, 3) == hello2.raw


def test_the_dialect_holds_the_database() -> None:
    """A client in another database shares an update's connections too: the dialect is then
    the protocol and the database, a SELECT answered changes it (a refused one does not), and
    the proxy's own switch sends only what differs."""
    select = frame("SELECT 5")
    ok, refused = Reply(b"", None), Reply(b"", None, error=True)
    assert CODEC.route(select) == "dialect"
    assert CODEC.dialect_after(select, ok, None) == (None, 5)
    assert CODEC.dialect_after(select, ok, 3) == (3, 5)
    assert CODEC.dialect_after(select, refused, 3) == 3  # (out of range, NOAUTH ...)
    assert CODEC.dialect_after(frame("SELECT 0"), ok, (3, 5)) == 3
    assert CODEC.dialect_after(frame("HELLO 3"), ok, (None, 5)) == (3, 5)
    assert CODEC.dialect_after(frame("HELLO 2"), ok, (3, 5)) == (None, 5)
    assert CODEC.switch_dialect((None, 5), None) == frame("SELECT 5").raw
    assert CODEC.switch_dialect((3, 5), None) == frame("HELLO 3").raw + frame("SELECT 5").raw
    assert CODEC.switch_dialect(3, (3, 5)) == frame("SELECT 0").raw
    assert CODEC.switch_dialect((None, 2), (3, 5)) == frame("HELLO 2").raw + \
        frame("SELECT 2").raw


def test_which_database_a_connection_is_in() -> None:
    """What the engine reads to put a client's shared requests in its database: the SELECT
    last answered +OK, kept across an unframed stretch; 0 again after RESET; not known after a
    SELECT whose reply did not come (then the client is not plain, and keeps its own
    connections)."""
    def state(requests: list[str], stream: bytes) -> RespReplyReader:
        return play(requests, stream)[1]

    ok, out_of_range = b"+OK\r\n", b"-ERR DB index is out of range\r\n"
    assert CODEC.dialect(state(["SELECT 3"], ok)) == (None, 3)
    assert CODEC.dialect(state(["SELECT 3", "SELECT 99"], ok + out_of_range)) == (None, 3)
    assert CODEC.dialect(state(["SELECT 3", "HELLO 3"], ok + HELLO3)) == (3, 3)
    assert CODEC.dialect(state(["SELECT 3", "RESET"], ok + b"+RESET\r\n")) is None
    queued = b"+QUEUED\r\n"
    assert CODEC.dialect(state(["MULTI", "SELECT 2", "EXEC"],
                               ok + queued + b"*1\r\n+OK\r\n")) == (None, 2)
    assert CODEC.dialect(state(["MULTI", "SELECT 2", "DISCARD"], ok + queued + ok)) is None
    silent = state(["CLIENT REPLY OFF", "SELECT 2", "CLIENT REPLY ON"], ok)
    assert not CODEC.plain_state(silent)
    reader = state(["SELECT 7"], ok)
    assert CODEC.plain_state(reader)
    resumed = CODEC.reply_reader()
    CODEC.resume_framing(resumed, CODEC.framing_kept(reader))
    assert CODEC.dialect(resumed) == (None, 7) and CODEC.plain_state(resumed)
    assert CODEC.framing_kept(state(["SELECT 0"], ok)) is None
    assert not CODEC.plain(frame("SELECT 1"))  # (SINGLE mode frames its reply)
    # The new version's connection is given the database the server said, not the last SELECT
    # sent: that one was refused.
    requests = ["SELECT 1", "SELECT 99"]
    refused = state(requests, ok + out_of_range)
    assert CODEC.replay([frame(r) for r in requests], refused) == [frame("SELECT 1").raw]


def test_who_a_connection_is_logged_in_as() -> None:
    """What lets SINGLE mode leave a logged-in client's replies unframed on a server that wants
    a password (see backends.sentinel_after_login): the user of the last login answered, kept
    across an unframed stretch; nobody after RESET, or when a login's outcome is not seen."""
    def user(requests: list[str], stream: bytes) -> object:
        return CODEC.logged_in_user(play(requests, stream)[1])

    ok, wrong = b"+OK\r\n", b"-WRONGPASS invalid username-password pair\r\n"
    assert user(["PING"], b"+PONG\r\n") is None
    assert user(["AUTH pw"], ok) == b"default"
    assert user(["AUTH app pw"], ok) == b"app"
    assert user(["HELLO 3 AUTH app pw SETNAME x"], HELLO3) == b"app"
    assert user(["HELLO 3 SETNAME AUTH AUTH app pw"], HELLO3) == b"app"  # (named "AUTH")
    assert user(["HELLO 3 SETNAME auth"], HELLO3) is None
    assert user(["AUTH app pw", "AUTH other bad"], ok + wrong) == b"app"  # (a failure: as before)
    assert user(["AUTH pw", "RESET"], ok + b"+RESET\r\n") is None
    assert user(["CLIENT REPLY OFF", "AUTH app pw"], b"") is None  # (no reply: not known)
    reader = play(["HELLO 3 AUTH app pw"], HELLO3)[1]
    resumed = CODEC.reply_reader()
    CODEC.resume_framing(resumed, CODEC.framing_kept(reader))
    assert CODEC.logged_in_user(resumed) == b"app" and resumed.state.resp3
    assert CODEC.login_request(("pw",)) == (encode_command(b"AUTH", b"pw"), ok, b"default")
    assert CODEC.login_request(("app", "pw"))[2] == b"app"
