"""One FTP control connection's session, and how to rebuild it on another server connection.

The proxy feeds :meth:`FtpSession.on_reply` every reply its reply reader pairs, in order. The
transitions come from the tables in :mod:`.states`; this module only keeps what their actions
record, so that :meth:`FtpSession.replay` can list the commands that bring a fresh connection
(already greeted) to the same session: the login, the settings, the working directory, and a
pending RNFR or REST.

What a replay cannot carry, and the proxy has to handle itself: a data connection (PASV/PORT
state is in ``data``; the proxy sets up its own on the new server when the client next uses
it), and a transfer under way (replay refuses; wait for its final reply).
"""

from __future__ import annotations

import posixpath
from typing import NamedTuple

from twinproxy.protocols.ftp.states import (
    TABLES,
    Action,
    Data,
    Login,
    Rename,
    Restart,
    event_of,
    step,
)
from twinproxy.protocols.ftp.syntax import encode_text, parse_quoted_path, parse_request
from twinproxy.protocols.messages import LocalProtocolError, Reply, Request


class ReplayStep(NamedTuple):
    """A command to send, and the code the original server answered it with.

    The new server should answer with the same code; when it does not, it cannot reach the same
    session, and the connection (or the update) has to give up.
    """

    request: Request
    code: int


def _clean(request: Request) -> Request:
    # The command alone: no empty lines before it, no Telnet, CRLF.
    line = request.name.encode("latin-1") + (b" " + request.args[0] if request.args else b"")
    return parse_request(line + b"\r\n")


def _setting_key(request: Request) -> tuple[str, bytes]:
    # Settings that replace each other share a key: the last TYPE, the last OPTS UTF8 ...
    if request.name in ("OPTS", "SITE"):
        arg = request.args[0] if request.args else b""
        return request.name, arg.split(b" ", 1)[0].upper()
    return request.name, b""


class FtpSession:
    """The session of one control connection, tracked from the server's replies.

    Attributes:
        login, rename, restart, data: the states of the four machines in :mod:`.states`.
    """

    def __init__(self, *, greeted: bool = False) -> None:
        self.login = Login.LOGGED_OUT if greeted else Login.GREETING
        self.rename = Rename.IDLE
        self.restart = Restart.IDLE
        self.data = Data.NONE
        self._forget()

    def _forget(self) -> None:
        self._user: ReplayStep | None = None
        self._password: ReplayStep | None = None
        self._account: ReplayStep | None = None
        # key -> (step, set before login); re-setting moves a key to the end
        self._settings: dict[tuple[str, bytes], tuple[ReplayStep, bool]] = {}
        self._home: ReplayStep | None = None  # CWD to an absolute path, if one is known
        self._cwd: bytes | None = None  # that path
        self._chdirs: list[ReplayStep] = []  # relative CWD and CDUP since then
        self._rnfr: ReplayStep | None = None
        self._rest: ReplayStep | None = None

    def __repr__(self) -> str:
        user = self._user.request.args if self._user else None
        return (
            f"<FtpSession {self.login.name} {self.rename.name} {self.restart.name} "
            f"{self.data.name} user={user!r} dir={self.directory!r}>"
        )

    @property
    def closed(self) -> bool:
        return self.login is Login.CLOSED

    @property
    def user(self) -> bytes | None:
        """The user name the server accepted (no password is ever shown)."""
        return self._user.request.args[0] if self._user and self._user.request.args else None

    @property
    def rnfr(self) -> bytes | None:
        """The rename source the server accepted, while an RNTO is expected."""
        if self.rename is Rename.PENDING and self._rnfr and self._rnfr.request.args:
            return self._rnfr.request.args[0]
        return None

    @property
    def directory(self) -> bytes:
        """The working directory, resolved lexically; relative to the login directory until an
        absolute CWD or a PWD reply says where that is."""
        return self.resolve(b"")

    def resolve(self, path: bytes) -> bytes:
        """``path`` made absolute (or login-relative) against the working directory."""
        where = self._cwd or b""
        for change in self._chdirs:
            request = change.request
            arg = b".." if request.name in ("CDUP", "XCUP") else (request.args or [b"."])[0]
            where = posixpath.join(where, arg)
        return posixpath.normpath(posixpath.join(where, path))

    def snapshot(self) -> tuple:
        """A hashable summary: equal for two sessions that replay to the same state.

        For checking that a connection rebuilt by :meth:`replay` (or a follower's connection)
        is in the leader's session. It leaves out the data connection, the order of settings,
        and the password itself (only whether there is one).
        """
        raw = lambda s: s.request.raw if s is not None else None  # noqa: E731
        return (
            self.login, self.rename, self.restart,
            raw(self._user), self._password is not None, raw(self._account),
            frozenset(raw(done) for done, _ in self._settings.values()),
            self.directory, raw(self._rnfr) if self.rnfr is not None else None,
            raw(self._rest) if self.restart is Restart.PENDING else None,
        )

    def on_reply(self, reply: Reply) -> None:
        """Move on what the server said.

        Raises:
            SessionError: no table allows this reply here; nothing moved.
        """
        event = event_of(reply)
        rows = [
            step(TABLES["login"], "login", self.login, event),
            step(TABLES["rename"], "rename", self.rename, event),
            step(TABLES["restart"], "restart", self.restart, event),
            step(TABLES["data"], "data", self.data, event),
        ]
        for action, _ in rows:
            if action is not None:
                self._act(action, reply)
        (_, self.login), (_, self.rename), (_, self.restart), (_, self.data) = rows

    def _act(self, action: Action, reply: Reply) -> None:
        request = reply.request
        assert request is not None  # every action answers a command
        done = ReplayStep(_clean(request), reply.value[0])
        if action is Action.SET_USER:
            self._user, self._password, self._account = done, None, None
            self._home, self._cwd, self._chdirs = None, None, []
        elif action is Action.FORGET_USER:
            self._user = self._password = self._account = None
        elif action is Action.SET_PASSWORD:
            self._password = done
        elif action is Action.SET_ACCOUNT:
            self._account = done
        elif action is Action.SETTING:
            key = _setting_key(request)
            self._settings.pop(key, None)
            self._settings[key] = (done, self.login is not Login.LOGGED_IN)
        elif action is Action.CHDIR:
            if request.name in ("CWD", "XCWD") and request.args and request.args[0][:1] == b"/":
                self._home, self._cwd, self._chdirs = done, request.args[0], []
            else:
                self._chdirs.append(done)
        elif action is Action.LEARN_CWD:
            path = parse_quoted_path(encode_text(reply.value[1][0]))
            if path is not None and path[:1] == b"/":
                home = parse_request(b"CWD " + path + b"\r\n")
                self._home, self._cwd, self._chdirs = ReplayStep(home, 250), path, []
        elif action is Action.REINITIALIZE:
            self._forget()
        elif action is Action.REMEMBER_RNFR:
            self._rnfr = done
        elif action is Action.REMEMBER_REST:
            self._rest = done

    def replay(self) -> list[ReplayStep]:
        """The commands that bring a fresh, greeted connection to this session, in order.

        Settings made before the login are sent before USER; then the login, the later
        settings, the directory (an absolute CWD if known, then the relative changes since),
        and a pending RNFR or REST last, since RFC 959 wants them right before their command.

        Raises:
            LocalProtocolError: the session is closed, or a transfer is under way.
        """
        if self.login is Login.CLOSED:
            raise LocalProtocolError("the FTP session is closed: nothing to replay")
        if self.data is Data.TRANSFERRING:
            raise LocalProtocolError("an FTP transfer is under way: replay after its reply")
        steps = [done for done, before in self._settings.values() if before]
        if self.login in (Login.NEED_PASS, Login.NEED_ACCT, Login.LOGGED_IN):
            steps += [s for s in (self._user, self._password, self._account) if s is not None]
        steps += [done for done, before in self._settings.values() if not before]
        if self._home is not None:
            steps.append(self._home)
        steps += self._chdirs
        if self.rename is Rename.PENDING and self._rnfr is not None:
            steps.append(self._rnfr)
        if self.restart is Restart.PENDING and self._rest is not None:
            steps.append(self._rest)
        return steps
