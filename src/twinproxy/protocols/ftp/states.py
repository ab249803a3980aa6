"""FTP session states as transition tables, in the style of h2's stream state machine.

Rules this file keeps:

* The session moves only on what the server said: each reply the reply reader pairs with its
  request becomes one :data:`Event`, a (command class, outcome class) pair. A request alone
  never moves anything, since the server may refuse it.
* Four small machines see every event: LOGIN (greeting, USER/PASS/ACCT, REIN, QUIT), RENAME
  (RNFR 350 then RNTO), RESTART (REST 350 then a transfer) and DATA (PASV/EPSV/PORT/EPRT then a
  transfer). They are orthogonal: vsftpd keeps a pending RNFR or REST across PASV, NOOP and
  other commands, so one product state would only repeat the same rows.
* Each machine is a dict ``(state, event) -> (action, next state)`` that lists every pair it
  accepts, no-ops included. A pair missing from any table is a protocol error
  (:class:`SessionError`), and then no machine moves. The rules below are written as disjoint
  blocks, and building a table fails if two blocks claim the same pair.
* Actions only record what a fresh connection needs to reach the same state; they never
  decide a transition. The transitions are all in the tables.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from twinproxy.protocols.messages import RemoteProtocolError, Reply, Request


class Cmd(enum.Enum):
    """Command classes: which verbs the machines tell apart."""

    NONE = "no request"  # a reply nobody asked for: the greeting, an idle 421
    USER = "USER"
    PASS = "PASS"
    ACCT = "ACCT"
    REIN = "REIN"
    QUIT = "QUIT"
    RNFR = "RNFR"
    RNTO = "RNTO"
    REST = "REST"
    PASSIVE = "PASV, EPSV"
    ACTIVE = "PORT, EPRT"
    TRANSFER = "LIST, NLST, MLSD, RETR, STOR, APPE, STOU"
    SETTING = "TYPE, MODE, STRU, OPTS, EPSV ALL, SITE UMASK"
    CWD = "CWD, CDUP"
    PWD = "PWD"
    OTHER = "any other command"


class Outcome(enum.Enum):
    """Reply classes, by code."""

    PRELIM = "1xx"
    OK = "2xx"
    NEED_PASSWORD = "331"
    NEED_ACCOUNT = "332"
    PENDING = "other 3xx"
    FAILED = "4xx, 5xx (and 6xx, unreadable to us)"
    CLOSING = "421"


Event = tuple[Cmd, Outcome]
EVENTS: tuple[Event, ...] = tuple((c, o) for c in Cmd for o in Outcome)

_VERBS = {
    "USER": Cmd.USER, "PASS": Cmd.PASS, "ACCT": Cmd.ACCT, "REIN": Cmd.REIN, "QUIT": Cmd.QUIT,
    "RNFR": Cmd.RNFR, "RNTO": Cmd.RNTO, "REST": Cmd.REST,
    "PASV": Cmd.PASSIVE, "EPSV": Cmd.PASSIVE, "LPSV": Cmd.PASSIVE,
    "PORT": Cmd.ACTIVE, "EPRT": Cmd.ACTIVE, "LPRT": Cmd.ACTIVE,
    "LIST": Cmd.TRANSFER, "NLST": Cmd.TRANSFER, "MLSD": Cmd.TRANSFER, "RETR": Cmd.TRANSFER,
    "STOR": Cmd.TRANSFER, "APPE": Cmd.TRANSFER, "STOU": Cmd.TRANSFER,
    "TYPE": Cmd.SETTING, "MODE": Cmd.SETTING, "STRU": Cmd.SETTING, "OPTS": Cmd.SETTING,
    "CWD": Cmd.CWD, "XCWD": Cmd.CWD, "CDUP": Cmd.CWD, "XCUP": Cmd.CWD,
    "PWD": Cmd.PWD, "XPWD": Cmd.PWD,
}


def command_class(request: Request | None) -> Cmd:
    if request is None:
        return Cmd.NONE
    arg = request.args[0] if request.args else b""
    if request.name == "EPSV" and arg.strip().upper() == b"ALL":
        return Cmd.SETTING  # RFC 2428: from now on only EPSV; a session setting, not a channel
    if request.name == "SITE" and arg[:5].upper() == b"UMASK":
        return Cmd.SETTING
    return _VERBS.get(request.name, Cmd.OTHER)


def outcome(code: int) -> Outcome:
    if code == 421:
        return Outcome.CLOSING
    if code < 200:
        return Outcome.PRELIM
    if code < 300:
        return Outcome.OK
    if code < 400:
        return {331: Outcome.NEED_PASSWORD, 332: Outcome.NEED_ACCOUNT}.get(code, Outcome.PENDING)
    return Outcome.FAILED


def event_of(reply: Reply) -> Event:
    return command_class(reply.request), outcome(reply.value[0])


class Login(enum.Enum):
    GREETING = "waiting for the greeting"
    LOGGED_OUT = "ready for USER"
    NEED_PASS = "USER accepted, PASS needed (331)"
    NEED_ACCT = "ACCT needed (332)"
    LOGGED_IN = "logged in"
    CLOSED = "closed by QUIT or 421"


class Rename(enum.Enum):
    IDLE = "no rename pending"
    PENDING = "RNFR accepted (350), RNTO expected"


class Restart(enum.Enum):
    IDLE = "no restart offset"
    PENDING = "REST accepted (350), applies to the next transfer"


class Data(enum.Enum):
    NONE = "no data connection prepared"
    PASSIVE = "server listening (227/229)"
    ACTIVE = "server will connect (PORT/EPRT 200)"
    TRANSFERRING = "transfer under way (1xx received)"


class Action(enum.Enum):
    SET_USER = "remember the user (USER accepted)"
    FORGET_USER = "login failed: forget the user"
    SET_PASSWORD = "remember the password"
    SET_ACCOUNT = "remember the account"
    SETTING = "remember a setting (TYPE, MODE, STRU, OPTS ...)"
    CHDIR = "remember a directory change"
    LEARN_CWD = "learn the absolute directory from a 257 reply to PWD"
    REINITIALIZE = "REIN: forget everything"
    REMEMBER_RNFR = "remember the rename source"
    REMEMBER_REST = "remember the restart offset"


SAME = object()  # next state: unchanged
Table = dict[tuple[enum.Enum, Event], tuple[Action | None, enum.Enum]]


def build(rules: Iterable[tuple]) -> Table:
    """A table from blocks ``(states, commands, outcomes, action, next)`` that must not overlap."""
    table: Table = {}
    for states, cmds, outcomes, action, nxt in rules:
        for state in states:
            for cmd in cmds:
                for out in outcomes:
                    key = (state, (cmd, out))
                    if key in table:
                        raise AssertionError(f"two rules for {key}")
                    table[key] = (action, state if nxt is SAME else nxt)
    return table


def _but(*excluded: enum.Enum, among: Iterable[enum.Enum] = ()) -> tuple:
    return tuple(x for x in among if x not in excluded)


PRELIM, OK, NEED_PASSWORD, NEED_ACCOUNT, PENDING, FAILED, CLOSING = Outcome
LIVE = _but(Login.GREETING, Login.CLOSED, among=Login)
OUT = (Login.LOGGED_OUT, Login.NEED_PASS, Login.NEED_ACCT)
IN = (Login.LOGGED_IN,)
NOT_CLOSING = _but(CLOSING, among=Outcome)
ACCEPTED = (OK, NEED_PASSWORD, NEED_ACCOUNT)  # USER taken: a new login starts
# Commands that need a login to succeed; once logged in, their own machines judge them.
NEEDS_LOGIN = (Cmd.RNFR, Cmd.RNTO, Cmd.REST, Cmd.PASSIVE, Cmd.ACTIVE, Cmd.TRANSFER)

LOGIN = build([
    ([Login.GREETING], [Cmd.NONE], [PRELIM], None, SAME),  # 120 ready in n minutes
    ([Login.GREETING], [Cmd.NONE], [OK], None, Login.LOGGED_OUT),
    ([Login.GREETING], [Cmd.NONE], [FAILED, CLOSING], None, Login.CLOSED),  # 500 OOPS, 421
    (LIVE, Cmd, [CLOSING], None, Login.CLOSED),
    (LIVE, [Cmd.QUIT], [OK], None, Login.CLOSED),
    (LIVE, [Cmd.QUIT], [PRELIM, FAILED], None, SAME),
    (LIVE, [Cmd.REIN], [OK], Action.REINITIALIZE, Login.LOGGED_OUT),
    (LIVE, [Cmd.REIN], [PRELIM, FAILED], None, SAME),  # vsftpd: 502 not implemented
    (LIVE, [Cmd.USER], [OK], Action.SET_USER, Login.LOGGED_IN),  # no password needed
    (LIVE, [Cmd.USER], [NEED_PASSWORD], Action.SET_USER, Login.NEED_PASS),
    (LIVE, [Cmd.USER], [NEED_ACCOUNT], Action.SET_USER, Login.NEED_ACCT),
    (LIVE, [Cmd.USER], [PRELIM], None, SAME),
    (OUT, [Cmd.USER], [FAILED], Action.FORGET_USER, Login.LOGGED_OUT),
    (IN, [Cmd.USER], [FAILED], None, SAME),  # vsftpd: can't change from guest user
    ([Login.NEED_PASS], [Cmd.PASS], [OK], Action.SET_PASSWORD, Login.LOGGED_IN),
    ([Login.NEED_PASS], [Cmd.PASS], [NEED_ACCOUNT], Action.SET_PASSWORD, Login.NEED_ACCT),
    ([Login.NEED_PASS], [Cmd.PASS], [FAILED], Action.FORGET_USER, Login.LOGGED_OUT),
    ([Login.LOGGED_OUT, Login.NEED_ACCT], [Cmd.PASS], [FAILED], None, SAME),  # USER first
    (IN, [Cmd.PASS], [OK, FAILED], None, SAME),  # vsftpd: 230 Already logged in
    (LIVE, [Cmd.PASS], [PRELIM], None, SAME),
    ([Login.NEED_ACCT], [Cmd.ACCT], [OK], Action.SET_ACCOUNT, Login.LOGGED_IN),
    ([Login.NEED_ACCT], [Cmd.ACCT], [FAILED], Action.FORGET_USER, Login.LOGGED_OUT),
    ([Login.LOGGED_OUT, Login.NEED_PASS], [Cmd.ACCT], [FAILED], None, SAME),
    (IN, [Cmd.ACCT], [OK], Action.SET_ACCOUNT, SAME),
    (IN, [Cmd.ACCT], [FAILED], None, SAME),
    (LIVE, [Cmd.ACCT], [PRELIM], None, SAME),
    (OUT, NEEDS_LOGIN, [FAILED], None, SAME),  # 530 Please login with USER and PASS
    (IN, NEEDS_LOGIN, NOT_CLOSING, None, SAME),
    (LIVE, [Cmd.SETTING], [OK], Action.SETTING, SAME),  # OPTS UTF8 ON works before login
    (LIVE, [Cmd.SETTING], [PRELIM, FAILED], None, SAME),
    (IN, [Cmd.CWD], [OK], Action.CHDIR, SAME),
    (IN, [Cmd.PWD], [OK], Action.LEARN_CWD, SAME),
    (LIVE, [Cmd.CWD, Cmd.PWD], [PRELIM, FAILED], None, SAME),
    (LIVE, [Cmd.OTHER], NOT_CLOSING, None, SAME),  # FEAT, SYST, NOOP, DELE ...: not tracked
])

R = Rename
# Events after which no rename or restart is pending: the session was reset or closed.
RESETS = [
    ([Cmd.REIN, Cmd.QUIT], [OK]),
    ([Cmd.USER], ACCEPTED),
    (list(Cmd), [CLOSING]),
]
_KEEPS = _but(Cmd.RNFR, Cmd.RNTO, Cmd.REIN, Cmd.QUIT, Cmd.USER, among=Cmd)

RENAME = build([
    (R, [Cmd.RNFR], [PENDING], Action.REMEMBER_RNFR, R.PENDING),
    (R, [Cmd.RNFR], [FAILED], None, R.IDLE),
    (R, [Cmd.RNFR, Cmd.RNTO], [PRELIM], None, SAME),
    ([R.PENDING], [Cmd.RNTO], [OK], None, R.IDLE),
    (R, [Cmd.RNTO], [FAILED], None, R.IDLE),  # 503 RNFR required first, 550 failed
    *[(R, cmds, outs, None, R.IDLE) for cmds, outs in RESETS],
    (R, [Cmd.REIN, Cmd.QUIT], [PRELIM, FAILED], None, SAME),
    (R, [Cmd.USER], [PRELIM, FAILED], None, SAME),
    (R, _KEEPS, NOT_CLOSING, None, SAME),  # vsftpd keeps RNFR across NOOP, PASV ...
])

S = Restart
_KEEPS = _but(Cmd.REST, Cmd.TRANSFER, Cmd.REIN, Cmd.QUIT, Cmd.USER, among=Cmd)

RESTART = build([
    (S, [Cmd.REST], [PENDING], Action.REMEMBER_REST, S.PENDING),
    (S, [Cmd.REST], [FAILED], None, S.IDLE),
    (S, [Cmd.REST], [PRELIM], None, SAME),
    ([S.PENDING], [Cmd.TRANSFER], [PRELIM, OK, FAILED], None, S.IDLE),  # used up
    ([S.IDLE], [Cmd.TRANSFER], [PRELIM, OK, FAILED], None, SAME),
    *[(S, cmds, outs, None, S.IDLE) for cmds, outs in RESETS],
    (S, [Cmd.REIN, Cmd.QUIT], [PRELIM, FAILED], None, SAME),
    (S, [Cmd.USER], [PRELIM, FAILED], None, SAME),
    (S, _KEEPS, NOT_CLOSING, None, SAME),  # vsftpd keeps REST across PASV and NOOP
])

D = Data
READY = (D.NONE, D.PASSIVE, D.ACTIVE)
_KEEPS = _but(Cmd.PASSIVE, Cmd.ACTIVE, Cmd.TRANSFER, Cmd.REIN, Cmd.QUIT, among=Cmd)

DATA = build([
    (READY, [Cmd.PASSIVE], [OK], None, D.PASSIVE),
    (READY, [Cmd.ACTIVE], [OK], None, D.ACTIVE),
    (READY, [Cmd.PASSIVE, Cmd.ACTIVE], [PRELIM, FAILED], None, SAME),
    # From NONE too: RFC 959's default data port needs no PORT; vsftpd says 425 instead.
    (READY, [Cmd.TRANSFER], [PRELIM], None, D.TRANSFERRING),
    (READY, [Cmd.TRANSFER], [OK], None, D.NONE),  # done without a 1xx
    (READY, [Cmd.TRANSFER], [FAILED], None, SAME),  # vsftpd keeps PASV after 550 on RETR
    ([D.TRANSFERRING], [Cmd.TRANSFER], [PRELIM], None, SAME),  # 110 restart marker
    ([D.TRANSFERRING], [Cmd.TRANSFER], [OK, FAILED], None, D.NONE),
    (D, Cmd, [CLOSING], None, D.NONE),
    (READY, [Cmd.REIN, Cmd.QUIT], [OK], None, D.NONE),
    (READY, [Cmd.REIN, Cmd.QUIT], [PRELIM, FAILED], None, SAME),
    (READY, _KEEPS, NOT_CLOSING, None, SAME),
    # Nothing else while TRANSFERRING: replies come in order, so the transfer's final reply
    # comes before any later command's.
])
del _KEEPS

TABLES: dict[str, Table] = {"login": LOGIN, "rename": RENAME, "restart": RESTART, "data": DATA}


CLOSING_REPLY = b"421 Service not available, closing control connection.\r\n"


class SessionError(RemoteProtocolError):
    """The server answered in a way the session tables do not allow."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reply=CLOSING_REPLY)


def step(
    table: Table, name: str, state: enum.Enum, event: Event
) -> tuple[Action | None, enum.Enum]:
    """The table's row for ``(state, event)``.

    Raises:
        SessionError: the table has no such row.
    """
    try:
        return table[(state, event)]
    except KeyError:
        cmd, out = event
        raise SessionError(
            f"FTP {name} state {state.name}: no transition for {cmd.name} answered {out.name}"
        ) from None
