"""The two FTP readers: client lines into requests, server lines into replies paired with requests.

How pairing works: the server answers commands strictly in order, so replies pair with the
requests given to :meth:`FtpReplyReader.expect` first in, first out. A 1xx reply is preliminary
(RFC 959 4.2: another reply to the same command follows), so it does not use up its request; any
other code does. Nothing else about commands matters for framing, which is why the reader does
not need to know which commands open a data connection. Two replies have no request: the
greeting (the first complete reply on the connection, 1xx greetings included) and a reply that
arrives when nothing is pending (an idle-timeout 421, say).

Both readers keep the base contract: any split of the input gives the same messages; a
partial line is scanned once, not again on every feed; a malformed or oversized message raises
:class:`RemoteProtocolError` when it is reached, after the messages before it, and again on
every later call. ``receive`` puts the messages it framed before the error in the exception's
``messages``, so none is lost (the contract of :mod:`twinproxy.protocols.reader`).
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar, TypeVar

from twinproxy.protocols.ftp.session import FtpSession
from twinproxy.protocols.ftp.states import SessionError
from twinproxy.protocols.ftp.syntax import decode_text, parse_request, split_reply_line
from twinproxy.protocols.messages import (
    DEFAULT_LIMITS,
    Limits,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    Request,
)
from twinproxy.protocols.reader import Reader, ReplyReader, RequestReader

LINE_TOO_LONG = b"500 Input line too long.\r\n"  # vsftpd's own words for this


def _client_error(
    message: str, reply: bytes = b"500 Syntax error, command unrecognized.\r\n"
) -> RemoteProtocolError:
    return RemoteProtocolError(message, reply=reply)


def _server_error(message: str) -> RemoteProtocolError:
    # Sent to the client whose server broke the protocol: the service is gone for it.
    return _client_error(message, b"421 " + message.encode() + b"\r\n")


M = TypeVar("M")


class _Lines(Reader[M]):
    """What both FTP readers hold: the bytes of the message in progress, in a bytearray (FTP
    lines are short, so appending costs less than holding chunks), and where the search for the
    next line end resumes, so a partial line is scanned once."""

    __slots__ = ("_buf", "_line", "_scan")

    _peer: ClassVar[str]  # whose stream it reads, for the error of bytes fed after its end

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._scan = 0  # where the search for the next LF resumes
        self._line = 0  # start of the current line

    def feed(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means it closed its side.

        Raises:
            LocalProtocolError: bytes fed after the end of the stream.
        """
        if self._eof:
            if data:
                raise LocalProtocolError(f"data fed after the end of the {self._peer}'s stream")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buf)


class FtpRequestReader(_Lines[Request], RequestReader):
    """Frames a client's control stream into one :class:`Request` per command line.

    Empty lines are not requests: vsftpd ignores them without a reply, so a request of its own
    would shift the pairing of every later reply. They are kept at the front of the next
    request's ``raw`` (forwarded with it), and count towards its ``max_line``.
    """

    __slots__ = ("_max_line",)
    _peer = "client"

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__()  # _line is the start of the current line, past empty lines before it
        self._max_line = limits.max_line

    def _next(self) -> Request | None:
        buf = self._buf
        while True:
            lf = buf.find(b"\n", self._scan)
            if lf < 0:
                self._scan = len(buf)
                if len(buf) >= self._max_line:
                    raise _client_error("FTP command line too long", LINE_TOO_LONG)
                if self._eof and len(buf) > self._line:
                    raise _client_error("client closed the connection in the middle of a command")
                return None
            end = lf + 1
            if end > self._max_line:
                raise _client_error("FTP command line too long", LINE_TOO_LONG)
            if lf == self._line or (lf == self._line + 1 and buf[self._line] == 0x0D):
                self._line = self._scan = end  # an empty line: keep it for the next request
                continue
            raw = bytes(buf[:end])
            start = self._line
            del buf[:end]
            self._scan = self._line = 0
            return parse_request(raw, start)


class FtpReplyReader(_Lines[Reply], ReplyReader):
    """Frames a server's control stream into replies and pairs them with expected requests.

    ``Reply.value`` (and :meth:`FtpCodec.canonical`) is ``(code, lines)``: the code as an int
    and a tuple of text lines as str, without the ``123-``/``123 `` framing (also removed from
    inner lines that repeat it). ``closing`` turns true once the server has said it will close:
    a 421 or the reply to QUIT.

    Args:
        limits: ``max_line`` bounds each line, ``max_elements`` the lines of one reply and
            ``max_bulk`` the bytes of one reply.
        greeted: the greeting was already read elsewhere (by a readiness probe, say), so the
            first reply answers the first expected request.
    """

    __slots__ = ("_code", "_greeted", "_lines", "_max_bytes", "_max_line", "_max_lines",
                 "_pending", "closing", "session")
    _peer = "server"

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, greeted: bool = False) -> None:
        super().__init__()
        self._code: bytes | None = None  # the code of a multi-line reply in progress
        self._lines: list[bytes] = []
        self._pending: deque[Request] = deque()
        self._greeted = greeted
        self._max_line = limits.max_line
        self._max_lines = limits.max_elements
        self._max_bytes = limits.max_bulk
        self.closing = False
        # The connection's session, followed reply by reply, so that a new version's connection
        # can be given the same one (FtpCodec.replay); None once a reply left the tables (the
        # session is then unknown, and cannot be replayed).
        self.session: FtpSession | None = FtpSession(greeted=greeted)

    def expect(self, request: Request) -> None:
        self._pending.append(request)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _next(self) -> Reply | None:
        buf = self._buf
        while True:
            lf = buf.find(b"\n", self._scan)
            if lf < 0:
                self._scan = len(buf)
                self._check_limits(len(buf))
                if self._eof and buf:
                    raise _server_error("server closed the connection in the middle of a reply")
                return None
            self._check_limits(lf)
            end = lf + 1
            stop = lf - 1 if lf > self._line and buf[lf - 1] == 0x0D else lf
            line = bytes(buf[self._line : stop])
            self._line = self._scan = end
            if self._code is None:
                parts = split_reply_line(line)
                if parts is None:
                    raise _server_error("malformed FTP reply line")
                code, sep, text = parts
                if sep != b"-":
                    return self._complete(code, [text], end)
                self._code = line[:3]
                self._lines = [text]
            elif line[:3] == self._code and line[3:4] in (b" ", b""):
                self._lines.append(line[4:])
                return self._complete(int(self._code), self._lines, end)
            else:
                self._lines.append(line[4:] if line[:4] == self._code + b"-" else line)
            if len(self._lines) >= self._max_lines:
                raise _server_error("FTP reply has too many lines")

    def _check_limits(self, upto: int) -> None:
        """Raise if ``buf[:upto]``, the reply so far without a line end, is past a limit.

        A line of more than ``max_line`` bytes with its end, or a reply of more than
        ``max_bytes``, is past the limit as soon as its first ``max_line`` (or ``max_bytes``)
        bytes are in without a line end. When both limits fall inside one line, the one reached
        at the earlier byte is reported, so that the error does not depend on how the bytes
        were split into reads.
        """
        line_at = self._line + self._max_line
        if line_at <= upto and line_at <= self._max_bytes:
            raise _server_error("FTP reply line too long")
        if self._max_bytes <= upto:
            raise _server_error("FTP reply too long")

    def _complete(self, code: int, lines: list[bytes], end: int) -> Reply:
        raw = bytes(self._buf[:end])
        del self._buf[:end]
        self._scan = self._line = 0
        self._code = None
        self._lines = []
        value = (code, tuple(decode_text(line) for line in lines))
        final = code >= 200
        error = 400 <= code < 600
        if code == 421:
            self.closing = True
        if not self._greeted:
            self._greeted = final
            reply = Reply(raw, value, final=final, error=error)
        elif not self._pending:
            reply = Reply(raw, value, final=final, error=error)
        else:
            request = self._pending[0]
            if final:
                self._pending.popleft()
                if request.name == "QUIT" and code < 300:
                    self.closing = True
            reply = Reply(raw, value, request=request, final=final, error=error)
        if self.session is not None:
            try:
                self.session.on_reply(reply)
            except SessionError:
                self.session = None
        return reply
