"""FTP transfers during an update, as the engine decides them (engine/transfers.py): scripts with
the bytes vsftpd sends, no socket. The relay's part (the data connections themselves) is in
tests/test_proxy_ftp_update_data.py.

What the scripts check: a 227 reply or a PORT opens one channel whose two halves share an id,
the leader's reply is not delivered as it is (the relay rewrites it), a bounce PORT is answered
by the proxy and never reaches a server, a transfer's data is compared once both halves ended
(in either order against the final reply), a listing differing only by its dates is an
expected divergence under configs/ftp.toml's rule, other bytes fail the update, and the
follower is not caught up (so no cutover) while a comparison waits.
"""

from __future__ import annotations

from tests.engine.playbook import Placeholder, Playbook
from twinproxy.compare import Comparator, Rules
from twinproxy.config import UpdateConfig
from twinproxy.config.rules import parse_rules
from twinproxy.engine import FOLLOWER, LEADER, Engine
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.channels import OpenChannel, Toward
from twinproxy.protocols.ftp import CODEC
from twinproxy.protocols.messages import Limits, Request

L1 = new_id()
CLIENT_HOST = "127.0.0.3"
LIST_DATES = {"name": "list-dates", "command": "LIST",
              "normalize": [{"pattern": r"\b[A-Z][a-z]{2} [ \d]\d (?: \d{4}|\d\d:\d\d)\b",
                             "replace": "(date)"}]}
PASV_PORT = {"name": "pasv-port", "command": "PASV",
             "normalize": [{"pattern": r"\(\d+,\d+,\d+,\d+,\d+,\d+\)", "replace": "(*)"}]}


def _engine() -> Engine:
    rules = parse_rules([LIST_DATES, PASV_PORT], "ftp", {})
    comparator = Comparator(CODEC, Rules(rules, "v1", "v2"))
    return Engine(CODEC, Limits(), UpdateConfig(sync="none"), comparator, ("v1", "v2"))


def _request(line: str) -> Request:
    [request] = CODEC.request_reader().receive(line.encode() + b"\r\n")
    return request


def _mve(pb: Playbook) -> Placeholder:
    """A client attached at the sync point, the follower started; its follower connection."""
    attach = ev.Attach(1, f"{CLIENT_HOST}:5000", L1, CODEC.reply_reader(greeted=True),
                       host=CLIENT_HOST)
    assert pb >> ev.Begin() >> attach >> ev.Release()
    own = Placeholder("follower")
    assert pb >> ev.StartFollower() << cmd.Open(own, FOLLOWER, 1)
    assert pb >> ev.Connected(own) >> ev.Data(own, b"220 (vsFTPd 3.0.3)\r\n")
    return own


def _opens(toward: Toward) -> OpenChannel:
    """Matches any OpenChannel toward that side (its rewrite is a function)."""
    class Any_(OpenChannel):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, OpenChannel) and other.toward is toward
    return Any_(toward, ("", 0), lambda h, p: b"", b"")


def _passive_transfer(pb: Playbook, own: Placeholder, verb: str) -> Placeholder:
    """PASV on both, then ``verb`` answered 150 and 226 by both; the channel's id."""
    channel = Placeholder("channel")
    assert pb >> ev.Requests(1, [_request("PASV")]) << cmd.Send(L1, b"PASV\r\n")
    # The leader's reply is not delivered as it is: the relay rewrites it (OpenData).
    assert (pb >> ev.Data(L1, b"227 Entering Passive Mode (127,0,0,1,200,1).\r\n")
            << cmd.OpenData(1, L1, LEADER, channel, _opens(Toward.CLIENT))
            << cmd.Send(own, b"PASV\r\n"))
    assert pb >> ev.Flush()
    assert (pb >> ev.Data(own, b"227 Entering Passive Mode (127,0,0,1,200,2).\r\n")
            << cmd.OpenData(1, own, FOLLOWER, channel, _opens(Toward.CLIENT))
            << Placeholder("pasv-port: an expected divergence"))
    line = f"{verb}\r\n".encode()
    assert pb >> ev.Requests(1, [_request(verb)]) << cmd.Send(L1, line)
    assert pb >> ev.Data(L1, b"150 Here comes the data.\r\n") >> ev.Flush() << cmd.DeliverAll(
        {1: b"150 Here comes the data.\r\n"})
    assert pb >> ev.Data(L1, b"226 Transfer complete.\r\n") << cmd.Send(own, line)
    assert pb >> ev.Flush() << cmd.DeliverAll({1: b"226 Transfer complete.\r\n"})
    assert pb >> ev.Data(own, b"150 Here comes the data.\r\n226 Transfer complete.\r\n")
    return channel


def test_passive_download_compared_when_both_halves_end() -> None:
    engine = _engine()
    pb = Playbook(engine)
    own = _mve(pb)
    channel = _passive_transfer(pb, own, "RETR f.bin")
    # The final replies agree, but the data are not in yet: not caught up, no cutover.
    assert engine.status()["divergences"] == 0 and not engine._caught_up()
    assert pb >> ev.Transferred(channel.value, FOLLOWER, 5, b"d" * 16)
    assert not engine._caught_up()
    assert pb >> ev.Transferred(channel.value, LEADER, 5, b"d" * 16)
    assert engine._caught_up() and engine.status()["divergences"] == 0
    assert engine.status()["transfers_compared"] == 1


def test_other_bytes_from_the_follower_fail_the_update() -> None:
    engine = _engine()
    pb = Playbook(engine)
    own = _mve(pb)
    channel = _passive_transfer(pb, own, "RETR f.bin")
    assert pb >> ev.Transferred(channel.value, LEADER, 70000, b"a" * 16)
    diverged = Placeholder("diverged")
    assert (pb >> ev.Transferred(channel.value, FOLLOWER, 70000, b"b" * 16)
            << diverged << cmd.Failed(Placeholder("reason")))
    notice = diverged.value
    assert isinstance(notice, cmd.Diverged) and notice.request.name == "RETR"
    assert notice.reason == "transferred data differ" and notice.verdict.unexpected
    assert engine._caught_up()


def test_a_transfer_the_client_cut_short_is_no_divergence() -> None:
    """The client reset the leader's data connection (the relay reports the leader's half
    ``cut``): the leader answered 426, the follower ran it whole, as expected."""
    engine = _engine()
    pb = Playbook(engine)
    own = _mve(pb)
    channel = Placeholder("channel")
    assert pb >> ev.Requests(1, [_request("PASV")]) << cmd.Send(L1, b"PASV\r\n")
    assert (pb >> ev.Data(L1, b"227 Entering Passive Mode (127,0,0,1,200,1).\r\n")
            << cmd.OpenData(1, L1, LEADER, channel, _opens(Toward.CLIENT))
            << cmd.Send(own, b"PASV\r\n"))
    assert (pb >> ev.Data(own, b"227 Entering Passive Mode (127,0,0,1,200,2).\r\n")
            << cmd.OpenData(1, own, FOLLOWER, channel, _opens(Toward.CLIENT))
            << Placeholder("pasv-port"))
    assert pb >> ev.Requests(1, [_request("RETR f")]) << cmd.Send(L1, b"RETR f\r\n")
    assert (pb >> ev.Data(L1, b"150 Here comes the data.\r\n426 Failure writing.\r\n")
            << cmd.Send(own, b"RETR f\r\n"))
    assert pb >> ev.Transferred(channel.value, LEADER, 65536, b"a" * 16, cut=True)
    assert pb >> ev.Data(own, b"150 Here comes the data.\r\n226 Transfer complete.\r\n")
    diverged = Placeholder("diverged")
    assert pb >> ev.Transferred(channel.value, FOLLOWER, 10 ** 7, b"b" * 16) << diverged
    assert diverged.value.verdict.expected
    assert diverged.value.verdict.rule == "builtin:transfer-cut"
    assert engine.status()["divergences"] == 0 and engine._caught_up()


def test_listing_differing_only_by_dates_is_expected() -> None:
    engine = _engine()
    pb = Playbook(engine)
    own = _mve(pb)
    channel = _passive_transfer(pb, own, "LIST")
    line = "-rw-r--r--    1 103      106            5 {} f.bin\r\n"
    leader = line.format("Dec 03 08:00").encode()
    follower = line.format("Dec 03 08:01").encode()
    assert pb >> ev.Transferred(channel.value, LEADER, len(leader), b"a" * 16, leader)
    diverged = Placeholder("diverged")
    assert pb >> ev.Transferred(channel.value, FOLLOWER, len(follower), b"b" * 16,
                                follower) << diverged
    assert diverged.value.verdict.expected and diverged.value.verdict.rule == "list-dates"
    assert engine.status()["divergences"] == 0
    # Another size is not a date: unexpected.
    channel = _passive_transfer(pb, own, "LIST")
    bigger = follower.replace(b"     5 ", b"     6 ")
    assert pb >> ev.Transferred(channel.value, LEADER, len(leader), b"a" * 16, leader)
    assert (pb >> ev.Transferred(channel.value, FOLLOWER, len(bigger), b"c" * 16, bigger)
            << Placeholder("diverged") << cmd.Failed(Placeholder("reason")))


def test_active_transfer_pairs_with_the_port_answered_before_it() -> None:
    """The follower runs behind: here it starts once the leader served PORT, STOR, PORT. It
    gets PORT and STOR in one go, and the second PORT only once STOR got its final reply (a
    server may read its control connection during a transfer and refuse other commands then);
    the transfer is paired with the first channel."""
    engine = _engine()
    pb = Playbook(engine)
    attach = ev.Attach(1, f"{CLIENT_HOST}:5000", L1, CODEC.reply_reader(greeted=True),
                       host=CLIENT_HOST)
    assert pb >> ev.Begin() >> attach >> ev.Release()
    first, second = Placeholder("first"), Placeholder("second")
    port1, port2 = "PORT 127,0,0,3,200,1", "PORT 127,0,0,3,200,2"
    assert (pb >> ev.Requests(1, [_request(port1)])
            << cmd.OpenData(1, L1, LEADER, first, _opens(Toward.SERVER)))
    assert pb >> ev.Data(L1, b"200 PORT command successful.\r\n")
    assert pb >> ev.Requests(1, [_request("STOR a")]) << cmd.Send(L1, b"STOR a\r\n")
    assert pb >> ev.Data(L1, b"150 Ok to send data.\r\n226 Transfer complete.\r\n")
    assert (pb >> ev.Requests(1, [_request(port2)])
            << cmd.OpenData(1, L1, LEADER, second, _opens(Toward.SERVER)))
    assert pb >> ev.Data(L1, b"200 PORT command successful.\r\n") >> ev.Flush() << cmd.DeliverAll(
        {1: b"200 PORT command successful.\r\n150 Ok to send data.\r\n"
            b"226 Transfer complete.\r\n200 PORT command successful.\r\n"})
    own = Placeholder("follower")
    assert pb >> ev.StartFollower() << cmd.Open(own, FOLLOWER, 1)
    assert (pb >> ev.Connected(own)
            << cmd.OpenData(1, own, FOLLOWER, first, _opens(Toward.SERVER))
            << cmd.Send(own, b"STOR a\r\n"))
    assert pb >> ev.Data(own, b"220 (vsFTPd 3.0.3)\r\n200 PORT command successful.\r\n"
                              b"150 Ok to send data.\r\n")
    assert (pb >> ev.Data(own, b"226 Transfer complete.\r\n")
            << cmd.OpenData(1, own, FOLLOWER, second, _opens(Toward.SERVER)))
    assert first.value != second.value
    assert pb >> ev.Data(own, b"200 PORT command successful.\r\n")
    assert pb >> ev.Transferred(first.value, LEADER, 0, b"e" * 16)
    assert not engine._caught_up()
    assert pb >> ev.Transferred(first.value, FOLLOWER, 0, b"e" * 16)
    assert engine._caught_up() and engine.status()["divergences"] == 0


def test_bounce_port_answered_by_the_proxy() -> None:
    """A PORT naming another host than the client's never reaches either version: a NOOP goes
    in its place and the client gets vsftpd's own refusal."""
    engine = _engine()
    pb = Playbook(engine)
    own = _mve(pb)
    assert pb >> ev.Requests(1, [_request("PORT 10,0,0,9,200,1")]) << cmd.Send(L1, b"NOOP\r\n")
    assert pb >> ev.Data(L1, b"200 NOOP ok.\r\n") << cmd.Send(own, b"NOOP\r\n")
    assert pb >> ev.Flush() << cmd.DeliverAll({1: b"500 Illegal PORT command.\r\n"})
    assert pb >> ev.Data(own, b"200 NOOP ok.\r\n")
    assert engine._caught_up() and engine.status()["divergences"] == 0


def test_follower_closing_after_quit_before_the_leader_is_no_failure() -> None:
    """QUIT: the leader answers 221 and will close; the follower, sent QUIT after it, may
    answer and close first (on a loaded machine it did). Its close is the leader's to come,
    not a fault of the new version."""
    engine = _engine()
    pb = Playbook(engine)
    own = _mve(pb)
    assert pb >> ev.Requests(1, [_request("QUIT")]) << cmd.Send(L1, b"QUIT\r\n")
    assert pb >> ev.Data(L1, b"221 Goodbye.\r\n") << cmd.Send(own, b"QUIT\r\n")
    assert pb >> ev.Flush() << cmd.DeliverAll({1: b"221 Goodbye.\r\n"})
    assert pb >> ev.Data(own, b"221 Goodbye.\r\n") >> ev.ConnClosed(own.value)
    assert engine.status()["divergences"] == 0  # (and no Failed: the script has none)


def test_a_session_that_leaves_waits_for_both_versions_then_goes_to_the_leader_alone() -> None:
    """``AUTH`` with TLS passed through (the relay sends ``Leave``) while the follower still owes
    a reply: nothing is handed back until that reply came and was compared; then the follower
    connection closes and the client goes back to its leader connection with the ``AUTH`` to
    forward, with no divergence."""
    engine = _engine()
    pb = Playbook(engine)
    own = _mve(pb)
    assert pb >> ev.Requests(1, [_request("NOOP")]) << cmd.Send(L1, b"NOOP\r\n")
    assert pb >> ev.Data(L1, b"200 NOOP ok.\r\n") << cmd.Send(own, b"NOOP\r\n")
    auth = _request("AUTH TLS")
    assert pb >> ev.Leave(1, (auth,))  # the follower owes its NOOP: not yet
    assert pb >> ev.Flush() << cmd.DeliverAll({1: b"200 NOOP ok.\r\n"})
    handback = Placeholder("handback")
    assert (pb >> ev.Data(own, b"200 NOOP ok.\r\n")
            << cmd.Close(own) << handback)
    assert isinstance(handback.value, cmd.Handback)
    assert (handback.value.client, handback.value.conn) == (1, L1)
    assert handback.value.held == (auth,) and handback.value.inflight == ()
    assert engine.unexpected == 0 and engine.compared == 1 and not engine.clients
