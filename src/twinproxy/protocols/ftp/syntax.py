"""FTP control-channel syntax (RFC 959 section 4): one request line, one reply line, and builders.

Decisions that differ from a literal reading of the RFC, each taken to match what vsftpd does on
the wire, since the proxy must frame exactly what the server will:

* A line ends at LF; one CR before it is dropped. A lone CR inside a line is part of the line.
* The verb is everything up to the first space, upper-cased (ASCII only); the argument is
  everything after that space, kept byte for byte (``CWD  a`` has the argument `` a``).
* Telnet: clients put ``IAC IP IAC DM`` (``ff f4 ff f2``) before ABOR, and the DM byte is often
  taken out of band by the kernel, leaving ``ff f4 ff``. Telnet command sequences *before the verb*
  are skipped when the name is computed; ``raw`` keeps them and nothing inside the argument is
  unescaped (vsftpd does not decode Telnet either).
"""

from __future__ import annotations

from collections.abc import Sequence

from twinproxy.protocols.messages import LocalProtocolError, Request

IAC = 0xFF
# Telnet WILL, WONT, DO, DONT take an option byte after them.
_TELNET_OPTION_VERBS = range(251, 255)
_TELNET_COMMANDS = range(240, 251)

SESSION_COMMANDS = frozenset(
    {"USER", "PASS", "ACCT", "CWD", "XCWD", "CDUP", "XCUP", "TYPE", "MODE", "STRU", "REST",
     "RNFR", "OPTS", "PORT", "EPRT", "PASV", "EPSV", "REIN"}
)
TRANSFER_COMMANDS = frozenset({"LIST", "NLST", "MLSD", "RETR", "STOR", "APPE", "STOU"})


def skip_telnet(line: bytes) -> int:
    """Offset of the verb: past Telnet commands a client sends before it (IP, DM, option talk)."""
    i = 0
    n = len(line)
    while i < n and line[i] == IAC:
        nxt = line[i + 1] if i + 1 < n else -1
        if nxt in _TELNET_OPTION_VERBS:
            i += 3
        elif nxt in _TELNET_COMMANDS:
            i += 2
        elif nxt == IAC:
            break  # an escaped 0xff data byte: part of the verb
        else:
            i += 1  # a lone IAC whose command byte went out of band
    return min(i, n)


def parse_request(raw: bytes, start: int = 0) -> Request:
    """The request in ``raw``: blank lines before ``start``, then one line ending in LF."""
    end = len(raw) - 1
    if end > start and raw[end - 1] == 0x0D:
        end -= 1
    line = raw[start + skip_telnet(raw[start:end]) : end]
    verb, _, arg = line.partition(b" ")
    name = verb.upper().decode("latin-1")
    session = name in SESSION_COMMANDS or (name == "SITE" and arg[:5].upper() == b"UMASK")
    return Request(raw, name, [arg] if arg else [], session=session)


def split_reply_line(line: bytes) -> tuple[int, bytes, bytes] | None:
    """(code, separator, text) of a line that starts a reply, or ``None`` if it cannot.

    The separator is ``b"-"`` (more lines follow), ``b" "`` or ``b""`` (a bare code).
    First digits 1-5 are RFC 959's, 6 is RFC 2228's protected reply.
    """
    if len(line) < 3 or not (0x31 <= line[0] <= 0x36 and _digit(line[1]) and _digit(line[2])):
        return None
    sep = line[3:4]
    if sep not in (b" ", b"-", b""):
        return None
    return int(line[:3]), sep, line[4:]


def _digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def decode_text(line: bytes) -> str:
    """Reply text as str, losslessly: UTF-8 (RFC 2640) with undecodable bytes escaped."""
    return line.decode("utf-8", "surrogateescape")


def encode_text(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def encode_request(name: str, arg: bytes | str | None = None) -> bytes:
    """One request line, for tests and for replaying a session on another connection.

    Raises:
        LocalProtocolError: the verb is empty or not printable ASCII without spaces, or the
            argument holds CR or LF (the line would end early).
    """
    verb = name.encode("latin-1", "replace")
    if not verb or not all(0x21 <= b <= 0x7E for b in verb):
        raise LocalProtocolError(f"FTP verb {name!r} is not printable ASCII without spaces")
    if arg is None or arg in (b"", ""):
        return verb + b"\r\n"
    data = encode_text(arg)
    if b"\r" in data or b"\n" in data:
        raise LocalProtocolError("an FTP argument cannot hold CR or LF")
    return verb + b" " + data + b"\r\n"


def encode_reply(code: int, lines: Sequence[str | bytes]) -> bytes:
    """A reply, multi-line when given more than one line (``123-first`` ... ``123 last``).

    Raises:
        LocalProtocolError: the code is not 100-699, there is no line, a line holds CR or LF,
            or an inner line starts with the code and a space or hyphen (a reader could not
            tell it from the framing).
    """
    if not 100 <= code <= 699:
        raise LocalProtocolError(f"FTP reply code {code} is outside 100-699")
    if not lines:
        raise LocalProtocolError("an FTP reply needs at least one line")
    texts = [encode_text(line) for line in lines]
    if any(b"\r" in t or b"\n" in t for t in texts):
        raise LocalProtocolError("an FTP reply line cannot hold CR or LF")
    head = b"%d" % code
    if len(texts) == 1:
        return head + b" " + texts[0] + b"\r\n"
    inner = texts[1:-1]
    if any(t[:3] == head and t[3:4] in (b" ", b"-", b"") for t in inner):
        raise LocalProtocolError("an inner reply line cannot start with the reply's code")
    body = b"".join(t + b"\r\n" for t in inner)
    return head + b"-" + texts[0] + b"\r\n" + body + head + b" " + texts[-1] + b"\r\n"


def parse_quoted_path(text: bytes) -> bytes | None:
    """The path at the start of a 257 reply's text, or ``None`` when it is not quoted.

    RFC 959 appendix II: the path comes first, in double quotes, with quotes inside doubled.
    """
    if text[:1] != b'"':
        return None
    out = bytearray()
    i = 1
    while i < len(text):
        if text[i] == 0x22:
            if text[i + 1 : i + 2] != b'"':
                return bytes(out)
            i += 1
        out.append(text[i])
        i += 1
    return None
