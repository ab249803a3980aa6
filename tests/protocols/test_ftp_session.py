"""FTP session tables: every state against every event, real flows, and replay."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinproxy.protocols import LocalProtocolError, Reply
from twinproxy.protocols.ftp import FtpSession, SessionError, encode_reply
from twinproxy.protocols.ftp.states import (
    EVENTS,
    TABLES,
    Cmd,
    Data,
    Login,
    Outcome,
    Rename,
    Restart,
    event_of,
    step,
)
from twinproxy.protocols.ftp.syntax import parse_request

STATES = {"login": Login, "rename": Rename, "restart": Restart, "data": Data}
PAIRS = [(name, state, event) for name, enum in STATES.items() for state in enum
         for event in EVENTS]
LIVE = [s for s in Login if s not in (Login.GREETING, Login.CLOSED)]


def row(name, state, event):
    try:
        return step(TABLES[name], name, state, event)
    except SessionError:
        return None


def reply(line: bytes | None, code: int, text: str = "ok") -> Reply:
    request = parse_request(line) if line is not None else None
    return Reply(encode_reply(code, [text]), (code, (text,)), request=request,
                 final=code >= 200, error=400 <= code < 600)


def session(*exchanges, greeted: bool = True) -> FtpSession:
    s = FtpSession(greeted=greeted)
    for line, code, *text in exchanges:
        s.on_reply(reply(line, code, *text))
    return s


# -- the tables, pair by pair ------------------------------------------------------------------


def test_tables_name_only_their_states_and_known_events():
    for name, table in TABLES.items():
        for (state, event), (_action, nxt) in table.items():
            assert isinstance(state, STATES[name]) and isinstance(nxt, STATES[name])
            assert event in EVENTS


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PAIRS))
def test_every_state_against_every_event(pair):
    """Hypothesis draws the pairs; the test below walks all of them, in case it missed some."""
    check_pair(*pair)


def test_all_pairs_walked():
    for pair in PAIRS:
        check_pair(*pair)
    assert len(PAIRS) == (6 + 2 + 2 + 4) * len(Cmd) * len(Outcome)


def check_pair(name, state, event):
    """What must hold for one (state, event) pair, whatever the table says about it."""
    cmd, out = event
    result = row(name, state, event)
    nxt = result[1] if result else None
    if name == "login":
        if state is Login.CLOSED:
            assert result is None  # nothing comes after 221 or 421
        elif state is Login.GREETING:
            assert (result is not None) == (cmd is Cmd.NONE and out is not Outcome.NEED_PASSWORD
                                            and out not in (Outcome.NEED_ACCOUNT, Outcome.PENDING))
        elif out is Outcome.CLOSING:
            assert nxt is Login.CLOSED
        elif cmd is Cmd.NONE:
            assert result is None  # after the greeting, a reply always answers something
        if nxt is Login.LOGGED_IN and state is not Login.LOGGED_IN:
            assert cmd in (Cmd.USER, Cmd.PASS, Cmd.ACCT) and out is Outcome.OK
        if state in (Login.LOGGED_OUT, Login.NEED_PASS, Login.NEED_ACCT) and out in (
            Outcome.OK, Outcome.PRELIM, Outcome.PENDING
        ) and cmd in (Cmd.RNFR, Cmd.RNTO, Cmd.REST, Cmd.PASSIVE, Cmd.ACTIVE, Cmd.TRANSFER):
            assert result is None  # 530 is the only answer before login
        if cmd is Cmd.OTHER and state in LIVE and out is not Outcome.CLOSING:
            assert result == (None, state)
        if cmd is Cmd.REIN and out is Outcome.OK and state in LIVE:
            assert nxt is Login.LOGGED_OUT
    if name == "rename":
        if nxt is Rename.PENDING and state is Rename.IDLE:
            assert event == (Cmd.RNFR, Outcome.PENDING)
        if event == (Cmd.RNTO, Outcome.OK):
            assert (result is not None) == (state is Rename.PENDING)
    if name == "restart" and nxt is Restart.PENDING and state is Restart.IDLE:
        assert event == (Cmd.REST, Outcome.PENDING)
    if name == "data":
        if nxt is Data.TRANSFERRING and state is not Data.TRANSFERRING:
            assert event == (Cmd.TRANSFER, Outcome.PRELIM)
        if state is Data.TRANSFERRING and out is not Outcome.CLOSING:
            assert (result is not None) == (cmd is Cmd.TRANSFER and out in (
                Outcome.PRELIM, Outcome.OK, Outcome.FAILED))
        if nxt in (Data.PASSIVE, Data.ACTIVE) and nxt is not state:
            assert out is Outcome.OK and cmd in (Cmd.PASSIVE, Cmd.ACTIVE)
    if out is Outcome.CLOSING and name != "login":
        assert nxt is not None and nxt.name in ("IDLE", "NONE")
    if out is Outcome.FAILED and result is not None and name != "login":
        assert nxt.name in ("IDLE", "NONE") or nxt is state  # a refusal never arms anything


# -- flows from the RFCs and from vsftpd -------------------------------------------------------


def test_greeting_then_login_with_password():
    s = FtpSession()
    s.on_reply(reply(None, 120, "wait"))
    assert s.login is Login.GREETING
    s.on_reply(reply(None, 220))
    s.on_reply(reply(b"USER anonymous\r\n", 331))
    assert s.login is Login.NEED_PASS and s.user == b"anonymous"
    s.on_reply(reply(b"PASS guest\r\n", 230))
    assert s.login is Login.LOGGED_IN
    assert "guest" not in repr(s)


def test_login_failures():
    s = session((b"PASS x\r\n", 503))  # login with USER first
    assert s.login is Login.LOGGED_OUT
    s = session((b"USER bob\r\n", 530))
    assert s.login is Login.LOGGED_OUT and s.user is None
    s = session((b"USER bob\r\n", 331), (b"PASS wrong\r\n", 530))
    assert s.login is Login.LOGGED_OUT and s.user is None
    s = session((b"USER bob\r\n", 331), (b"PASS x\r\n", 332), (b"ACCT a\r\n", 230))
    assert s.login is Login.LOGGED_IN
    with pytest.raises(SessionError):
        session((b"PASS x\r\n", 230))  # a server that logs in without USER
    with pytest.raises(SessionError):
        session((b"RETR f\r\n", 150))  # a transfer before login


def test_vsftpd_guest_stays_logged_in():
    s = session((b"USER anonymous\r\n", 230), (b"USER bob\r\n", 530), (b"PASS x\r\n", 230))
    assert s.login is Login.LOGGED_IN and s.user == b"anonymous"


def test_rename():
    s = session((b"USER a\r\n", 230), (b"RNFR old\r\n", 350), (b"NOOP\r\n", 200))
    assert s.rename is Rename.PENDING and s.rnfr == b"old"  # vsftpd keeps it across NOOP
    s.on_reply(reply(b"RNTO new\r\n", 250))
    assert s.rename is Rename.IDLE and s.rnfr is None
    s.on_reply(reply(b"RNTO again\r\n", 503))  # RNFR required first
    with pytest.raises(SessionError):
        s.on_reply(reply(b"RNTO again\r\n", 250))
    assert s.rename is Rename.IDLE


def test_restart_before_a_transfer_and_data_channel():
    s = session((b"USER a\r\n", 230), (b"REST 6\r\n", 350), (b"PASV\r\n", 227))
    assert (s.restart, s.data) == (Restart.PENDING, Data.PASSIVE)
    s.on_reply(reply(b"RETR f\r\n", 150))
    assert (s.restart, s.data) == (Restart.IDLE, Data.TRANSFERRING)
    with pytest.raises(SessionError):
        s.on_reply(reply(b"NOOP\r\n", 200))  # pairing went wrong: the transfer is not done
    s.on_reply(reply(b"RETR f\r\n", 226))
    assert s.data is Data.NONE
    s.on_reply(reply(b"EPRT |1|127.0.0.1|2000|\r\n", 200))
    assert s.data is Data.ACTIVE
    s.on_reply(reply(b"LIST\r\n", 425))
    assert s.data is Data.ACTIVE  # vsftpd keeps the channel when the command fails early


def test_rein_quit_and_421():
    s = session((b"USER a\r\n", 230), (b"TYPE I\r\n", 200), (b"RNFR x\r\n", 350))
    s.on_reply(reply(b"REIN\r\n", 220))
    assert (s.login, s.rename, s.replay()) == (Login.LOGGED_OUT, Rename.IDLE, [])
    s.on_reply(reply(b"QUIT\r\n", 221))
    assert s.closed
    with pytest.raises(LocalProtocolError):
        s.replay()
    with pytest.raises(SessionError):
        s.on_reply(reply(b"NOOP\r\n", 200))
    s = session((b"USER a\r\n", 230), (b"PASV\r\n", 227), (b"RETR f\r\n", 150))
    s.on_reply(reply(None, 421, "Timeout."))
    assert s.closed and s.data is Data.NONE


def test_replay_lists_what_rebuilds_the_session():
    s = session(
        (b"OPTS UTF8 ON\r\n", 200),
        (b"USER anonymous\r\n", 331),
        (b"PASS guest\r\n", 230),
        (b"TYPE A\r\n", 200),
        (b"TYPE I\r\n", 200),
        (b"EPSV ALL\r\n", 200),
        (b"PWD\r\n", 257, '"/pub" is the current directory'),
        (b"CWD sub dir\r\n", 250),
        (b"CDUP\r\n", 250),
        (b"CWD other\r\n", 250),
        (b"REST 100\r\n", 350),
        (b"PASV\r\n", 227),
    )
    assert [(step.request.raw, step.code) for step in s.replay()] == [
        (b"OPTS UTF8 ON\r\n", 200),
        (b"USER anonymous\r\n", 331),
        (b"PASS guest\r\n", 230),
        (b"TYPE I\r\n", 200),
        (b"EPSV ALL\r\n", 200),
        (b"CWD /pub\r\n", 250),
        (b"CWD sub dir\r\n", 250),
        (b"CDUP\r\n", 250),
        (b"CWD other\r\n", 250),
        (b"REST 100\r\n", 350),
    ]
    assert s.directory == b"/pub/other" and s.resolve(b"../f") == b"/pub/f"
    s.on_reply(reply(b"RETR f\r\n", 150))
    with pytest.raises(LocalProtocolError, match="transfer"):
        s.replay()


def test_event_classes():
    assert event_of(reply(b"EPSV\r\n", 229)) == (Cmd.PASSIVE, Outcome.OK)
    assert event_of(reply(b"EPSV all\r\n", 200)) == (Cmd.SETTING, Outcome.OK)
    assert event_of(reply(b"SITE UMASK 022\r\n", 200)) == (Cmd.SETTING, Outcome.OK)
    assert event_of(reply(b"SITE CHMOD 0 x\r\n", 200)) == (Cmd.OTHER, Outcome.OK)
    assert event_of(reply(b"XCUP\r\n", 250)) == (Cmd.CWD, Outcome.OK)
    assert event_of(reply(None, 421)) == (Cmd.NONE, Outcome.CLOSING)
    assert event_of(reply(b"USER a\r\n", 332)) == (Cmd.USER, Outcome.NEED_ACCOUNT)


# -- random sessions ---------------------------------------------------------------------------

# Each command with the codes a server gives it (a transfer: 1xx then final), and any code now
# and then.
PLAUSIBLE = {
    b"USER anonymous\r\n": [230, 331], b"USER bob\r\n": [331, 332, 530],
    b"PASS x\r\n": [230, 332, 503, 530],
    b"ACCT a\r\n": [230, 502], b"REIN\r\n": [220, 502], b"QUIT\r\n": [221],
    b"RNFR a\r\n": [350, 550], b"RNTO b\r\n": [250, 503], b"REST 10\r\n": [350],
    b"PASV\r\n": [227, 530], b"EPSV\r\n": [229], b"PORT 127,0,0,1,4,1\r\n": [200, 500],
    b"EPRT |1|127.0.0.1|1025|\r\n": [200], b"LIST\r\n": [(150, 226), 425],
    b"RETR f\r\n": [(150, 226), (125, 426), 550], b"STOR f\r\n": [(150, 226), 553],
    b"TYPE I\r\n": [200],
    b"TYPE A\r\n": [200, 530], b"MODE S\r\n": [200], b"OPTS UTF8 ON\r\n": [200],
    b"EPSV ALL\r\n": [200], b"SITE UMASK 022\r\n": [200, 550], b"CWD /pub\r\n": [250, 550],
    b"CWD sub\r\n": [250], b"CDUP\r\n": [250], b"PWD\r\n": [257], b"NOOP\r\n": [200],
    b"FEAT\r\n": [211], b"DELE x\r\n": [250, 550], None: [421],
}
LINES = list(PLAUSIBLE)
CODES = [120, 150, 200, 211, 220, 226, 227, 230, 250, 257, 331, 332, 350, 421, 425, 500, 530,
         550]
CLOSERS = (None, b"QUIT\r\n")
exchange = st.sampled_from([line for line in LINES if line not in CLOSERS]).flatmap(
    lambda line: st.sampled_from(PLAUSIBLE[line] * 6 + CODES).map(
        lambda codes: [(line, code) for code in (codes if isinstance(codes, tuple) else [codes])]
    )
)
# Closing ends a session, so it comes last or not at all; otherwise few sessions get far.
exchanges = st.tuples(
    st.lists(exchange, max_size=40).map(lambda runs: list(itertools.chain(*runs))),
    st.sampled_from([[], [], [(None, 421)], [(b"QUIT\r\n", 221)]]),
).map(lambda parts: parts[0] + parts[1])


def text_for(code: int) -> str:
    return '"/d ""q""" is the current directory' if code == 257 else "ok"


@settings(max_examples=300, deadline=None)
@given(exchanges)
def test_random_sessions_and_replay(events):
    s = FtpSession()
    s.on_reply(reply(None, 220))
    for line, code in events:
        before = (s.login, s.rename, s.restart, s.data, s.snapshot())
        try:
            s.on_reply(reply(line, code, text_for(code)))
        except SessionError:
            assert (s.login, s.rename, s.restart, s.data, s.snapshot()) == before
    if s.closed or s.data is Data.TRANSFERRING:
        with pytest.raises(LocalProtocolError):
            s.replay()
        return
    steps = s.replay()
    rebuilt = FtpSession(greeted=True)
    for done in steps:
        rebuilt.on_reply(reply(done.request.raw, done.code, text_for(done.code)))
    assert rebuilt.snapshot() == s.snapshot()
    again = [d.request.raw for d in rebuilt.replay()]
    if s.login in (Login.NEED_PASS, Login.NEED_ACCT):
        # Settings made while logged in, then USER again: replayed after USER, they now come
        # before the (unfinished) login. Same steps, another order.
        assert sorted(again) == sorted(d.request.raw for d in steps)
    else:
        assert again == [d.request.raw for d in steps]


def test_state_product_reachable_by_random_sessions_is_broad():
    # Not a property, a guard: the random sessions above must reach every machine state.
    seen = set()
    for line, code in itertools.product(LINES, CODES):
        for prefix in ([], [(b"USER a\r\n", 230)], [(b"USER a\r\n", 331)],
                       [(b"USER a\r\n", 230), (b"PASV\r\n", 227)],
                       [(b"USER a\r\n", 230), (b"RETR f\r\n", 150)]):
            s = FtpSession(greeted=True)
            for pline, pcode in prefix:
                s.on_reply(reply(pline, pcode))
            try:
                s.on_reply(reply(line, code))
            except SessionError:
                continue
            seen |= {s.login, s.rename, s.restart, s.data}
    assert seen >= set(Login) - {Login.GREETING} | set(Rename) | set(Restart) | set(Data)
