"""The FTP control-channel codec (RFC 959, with RFC 2389, 2428 and 3659 commands).

Sans-IO like the other codecs: the readers (:mod:`.readers`) frame bytes into requests and
replies, and this module adds what the proxy core asks of every protocol (errors, comparison
form, the parsed view for ordering, readiness). The package's ``__init__`` lists the other
modules.
"""

from __future__ import annotations

import posixpath
from typing import Any, ClassVar

from twinproxy.protocols.base import Codec
from twinproxy.protocols.ftp.channels import FtpDataChannels
from twinproxy.protocols.ftp.readers import FtpReplyReader, FtpRequestReader
from twinproxy.protocols.ftp.session import FtpSession
from twinproxy.protocols.ftp.syntax import TRANSFER_COMMANDS
from twinproxy.protocols.messages import (
    DEFAULT_LIMITS,
    Limits,
    LocalProtocolError,
    Reply,
    Request,
)
from twinproxy.protocols.reader import ReplyReader

# Commands whose argument names a file or directory they read.
_READS = frozenset({"RETR", "SIZE", "MDTM", "RNFR", "MLST", "MLSD", "LIST", "NLST", "STAT"})
# Commands that change a directory entry: they write the path and its directory, because a
# listing of that directory shows the change (names, sizes, times, modes).
_WRITES = frozenset({"STOR", "APPE", "DELE", "RNTO", "MKD", "XMKD", "RMD", "XRMD"})


def _path_arg(request: Request) -> bytes:
    arg = request.args[0] if request.args else b""
    if request.name in ("LIST", "NLST"):
        # ls-style options first (``LIST -la pub``), as vsftpd and most servers accept
        words = arg.split(b" ")
        while words and words[0][:1] == b"-":
            words.pop(0)
        arg = b" ".join(words)
    return arg


class FtpCodec(Codec):
    """The FTP codec; stateless, use :data:`CODEC`."""

    name: ClassVar[str] = "ftp"

    def request_reader(self, limits: Limits = DEFAULT_LIMITS) -> FtpRequestReader:
        """A reader for one client connection."""
        return FtpRequestReader(limits)

    def reply_reader(
        self, limits: Limits = DEFAULT_LIMITS, *, greeted: bool = False
    ) -> FtpReplyReader:
        """A reader for one server connection; ``greeted`` if its greeting was read already."""
        return FtpReplyReader(limits, greeted=greeted)

    def error_reply(self, message: str) -> bytes:
        """``421 message``: service not available, the client should close (so does the proxy)."""
        text = " ".join(message.splitlines()) or "Service not available"
        return b"421 " + text.encode("utf-8", "replace") + b"\r\n"

    def canonical(self, reply: Reply) -> tuple[int, tuple[str, ...]]:
        """``(code, lines)``: framing gone (``123-``, ``123 ``, line ends), text kept exactly."""
        code, lines = reply.value
        return code, lines

    def describe(self, request: Request, table: Any = None) -> Request:
        """Fill in the keys (paths) a request touches, and whether it writes them.

        Args:
            table: the connection's :class:`FtpSession`, to make relative paths absolute against
                its working directory and to give RNTO its RNFR source; without it, paths are
                keys as the client wrote them (normalized), which orders two connections
                correctly only when they name files the same way.

        Writes (STOR, APPE, STOU, DELE, RNTO, MKD, RMD, SITE CHMOD) touch the path and its
        directory, so that they are ordered against listings of that directory. FTP has no
        global or blocking command. Every command gets one final reply; those that open a data
        transfer get a 1xx mark before it (``preliminary``).
        """
        name = request.name
        session = table if isinstance(table, FtpSession) else None
        resolve = session.resolve if session is not None else posixpath.normpath
        keys: list[bytes] = []
        write = False
        if name in _READS and (name != "STAT" or request.args):
            keys.append(resolve(_path_arg(request) or b"."))
        elif name in _WRITES or name == "STOU" or _is_chmod(request):
            write = True
            if name == "STOU":
                keys.append(resolve(b"."))
            else:
                path = resolve(_chmod_path(request) if name == "SITE" else _path_arg(request))
                keys += [path, posixpath.dirname(path) or b"."]
            if name == "RNTO" and session is not None and session.rnfr is not None:
                source = session.resolve(session.rnfr)
                keys += [source, posixpath.dirname(source) or b"."]
        request.keys = tuple(dict.fromkeys(keys))
        request.write = write
        request.is_global = False
        request.blocking = False
        request.preliminary = name in TRANSFER_COMMANDS
        return request

    def replay(self, session: list[Request], replies: ReplyReader | None) -> list[bytes]:
        """The commands that give a new version's connection the session of the connection
        whose replies ``replies`` framed (login, settings, directory, a pending RNFR or REST),
        from the session that reader followed (the recorded ``session`` requests alone do not
        say which of them the server accepted). Nothing when that session is unknown or
        cannot be replayed (a transfer under way): the follower's connection then answers
        differently, and the update rolls back on the first divergence."""
        tracked = replies.session if isinstance(replies, FtpReplyReader) else None
        if tracked is None:
            return []
        try:
            return [done.request.raw for done in tracked.replay()]
        except LocalProtocolError:
            return []

    def data_channels(self) -> FtpDataChannels:
        """Data connections go through the proxy (see :mod:`.channels`)."""
        return FtpDataChannels()

    def probe(self) -> bytes:
        """Nothing: an FTP server speaks first."""
        return b""

    def probe_ok(self, reply: Reply) -> bool:
        """Ready when the greeting is 220 (120 means "wait", 421 and 5xx mean "go away")."""
        return reply.value[0] == 220


def _is_chmod(request: Request) -> bool:
    return request.name == "SITE" and bool(request.args) and (
        request.args[0][:6].upper() == b"CHMOD "
    )


def _chmod_path(request: Request) -> bytes:
    parts = request.args[0].split(b" ", 2)  # CHMOD mode path (the path may hold spaces)
    return parts[2] if len(parts) == 3 else b""


CODEC = FtpCodec()
