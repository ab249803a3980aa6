"""Record a real vsftpd's control channel for the FTP codec's golden tests.

    python -m tests.golden.record_ftp        # rewrites tests/golden/ftp/vsftpd.json

It starts vsftpd with tests/servers.py (its config, with ``no_anon_password=NO`` so that
anonymous login goes USER -> 331 -> PASS -> 230), runs :data:`STEPS` over a raw socket, data
connections included, and stores every request and the raw bytes of every reply.

The framing here is deliberately its own (a dozen lines in :class:`PlainReplies`), not the
codec's: the golden tests then check the codec against an independent reading of the same
bytes. :func:`run` takes the framing and the PASV/EPSV parsing as arguments, so that the live
test can drive the same steps with the codec's reader and address parsers instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from tests import servers

GOLDEN = Path(__file__).parent / "ftp" / "vsftpd.json"
PAYLOAD = b"0123456789abcdef"  # stored, then read back whole and from offset 6 (REST)

# (what to send, data connection, note). ``{eprt}`` and ``{port}`` become the address of a
# listener opened for that step. Data: "store" sends PAYLOAD, "fetch" reads to the end.
STEPS: list[tuple[bytes, str | None, str]] = [
    (b"SYST\r\n", None, "before login: refused"),
    (b"FEAT\r\n", None, "multi-line, allowed before login"),
    (b"USER bob\r\n", None, "failing login: anonymous only"),
    (b"PASS secret\r\n", None, "bad sequence: PASS without USER"),
    (b"USER anonymous\r\n", None, "login: 331 asks for a password"),
    (b"PASS guest@example.com\r\n", None, "login: 230"),
    (b"SYST\r\n", None, ""),
    (b"PWD\r\n", None, ""),
    (b"CWD pub\r\n", None, ""),
    (b"CWD /nonexistent\r\n", None, "error: no such directory"),
    (b"TYPE I\r\n", None, ""),
    (b"PASV\r\n", None, ""),
    (b"STOR hello.bin\r\n", "store", "upload over the PASV connection"),
    (b"SIZE hello.bin\r\n", None, ""),
    (b"MDTM hello.bin\r\n", None, ""),
    (b"EPSV\r\n", None, ""),
    (b"LIST\r\n", "fetch", "listing over the EPSV connection"),
    (b"EPSV\r\n", None, ""),
    (b"NLST\r\n", "fetch", ""),
    (b"REST 6\r\n", None, "restart offset, kept across PASV"),
    (b"PASV\r\n", None, ""),
    (b"RETR hello.bin\r\n", "fetch", "download from offset 6"),
    (b"RETR missing.txt\r\n", None, "error: no data connection prepared"),
    (b"PASV\r\n", None, ""),
    (b"RETR missing.txt\r\n", None, "error: no such file (the PASV stays)"),
    (b"EPRT {eprt}\r\n", None, "active mode"),
    (b"RETR hello.bin\r\n", "fetch", "whole file: the REST was used"),
    (b"PORT {port}\r\n", None, "active mode, RFC 959 form"),
    (b"NLST\r\n", "fetch", ""),
    (b"RNFR hello.bin\r\n", None, ""),
    (b"RNTO renamed.bin\r\n", None, ""),
    (b"RNTO again.bin\r\n", None, "bad sequence: RNTO without RNFR"),
    (b"MKD newdir\r\n", None, ""),
    (b"RMD newdir\r\n", None, ""),
    (b"DELE renamed.bin\r\n", None, ""),
    (b"DELE renamed.bin\r\n", None, "error: already gone"),
    (b"XYZZY\r\n", None, "unknown command"),
    (b"\r\nNOOP\r\n", None, "an empty line: vsftpd does not answer it"),
    (b"\xff\xf4\xff\xf2ABOR\r\n", None, "Telnet IP and DM before ABOR"),
    (b"TYPE A\r\nSTAT\r\nHELP\r\n", None, "three commands in one write"),
    (b"OPTS UTF8 ON\r\n", None, ""),
    (b"QUIT\r\n", None, ""),
]
# Replies whose text changes from run to run (ports, times, counts): compare codes only.
VARYING = (b"PASV", b"EPSV", b"MDTM", b"STAT", b"LIST", b"EPRT", b"PORT")


class Replies(Protocol):
    def sent(self, data: bytes) -> None:
        """``data`` (one or more command lines) went to the server."""

    def next(self, sock: socket.socket) -> bytes:
        """The raw bytes of the server's next reply."""


class PlainReplies:
    """RFC 959 framing in its plainest form: ``ddd-`` opens, ``ddd `` closes."""

    def __init__(self) -> None:
        self._file = None

    def sent(self, data: bytes) -> None:
        pass

    def next(self, sock: socket.socket) -> bytes:
        if self._file is None:
            self._file = sock.makefile("rb")
        first = self._file.readline()
        if not first:
            raise EOFError("server closed the control connection")
        raw = first
        if first[3:4] == b"-":
            while True:
                line = self._file.readline()
                if not line:
                    raise EOFError("server closed in a multi-line reply")
                raw += line
                if line[:3] == first[:3] and line[3:4] == b" ":
                    break
        return raw


def plain_passive(reply: bytes) -> tuple[str, int]:
    if reply.startswith(b"229"):
        return "127.0.0.1", int(re.search(rb"\(\|\|\|(\d+)\|\)", reply).group(1))
    n = [int(x) for x in re.search(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply).groups()]
    return ".".join(map(str, n[:4])), n[4] * 256 + n[5]


def commands(data: bytes) -> list[bytes]:
    """The command lines in ``data``; empty lines are not commands (vsftpd ignores them)."""
    return [line for line in data.split(b"\r\n")[:-1] if line]


def run(port: int, replies: Replies, passive: Callable[[bytes], tuple[str, int]]) -> list[dict]:
    """Run :data:`STEPS` against the server on ``port``; one record per step, greeting first."""
    records = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        records.append({"request": None, "reply": replies.next(sock), "answers": []})
        address = listener = None
        for template, data, note in STEPS:
            send = template
            if b"{" in template:
                listener = _listen()
                p = listener.getsockname()[1]
                send = template.replace(b"{eprt}", b"|1|127.0.0.1|%d|" % p).replace(
                    b"{port}", b"127,0,0,1,%d,%d" % (p >> 8, p & 0xFF))
            record = {"request": send, "reply": b"", "answers": [], "note": note}
            conn = None
            if data and listener is None:
                conn = socket.create_connection(address, timeout=10)
            replies.sent(send)
            sock.sendall(send)
            for command in commands(send):
                raw = replies.next(sock)
                record["reply"] += raw
                verb = command.lstrip(bytes(range(0xF0, 0x100))).split(b" ")[0]  # no Telnet
                record["answers"].append([verb.decode("latin-1"), int(raw[:3])])
                if raw[:1] == b"1":  # preliminary: move the data, then the final reply
                    if conn is None:
                        conn = listener.accept()[0]
                        conn.settimeout(10)
                    record["data"] = _move(conn, data)
                    conn = None
                    raw = replies.next(sock)
                    record["reply"] += raw
                    record["answers"].append([record["answers"][-1][0], int(raw[:3])])
            if conn is not None:
                conn.close()
            if data and listener is not None:
                listener.close()
                listener = None
            if record["answers"][0][1] in (227, 229):
                address = passive(record["reply"])
                record["address"] = list(address)
            records.append(record)
    return records


def _listen() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    s.settimeout(10)
    return s


def _move(conn: socket.socket, kind: str | None) -> bytes:
    with conn:
        if kind == "store":
            conn.sendall(PAYLOAD)
            return PAYLOAD
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@contextlib.contextmanager
def vsftpd_with_password() -> Iterator[servers.Server]:
    """tests/servers.py's vsftpd, but asking anonymous users for a password (331)."""
    stock = servers.VSFTPD_CONF
    servers.VSFTPD_CONF = stock.replace("no_anon_password=YES", "no_anon_password=NO")
    try:
        with servers.vsftpd_server() as server:
            servers.VSFTPD_CONF = stock  # the config file is written: put it back at once
            yield server
    finally:
        servers.VSFTPD_CONF = stock


def to_json(records: list[dict]) -> list[dict]:
    """Bytes as latin-1 strings, so that every byte survives JSON and stays readable."""
    return [{k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in r.items()}
            for r in records]


def from_json(records: list[dict]) -> list[dict]:
    binary = ("request", "reply", "data")
    return [{k: v.encode("latin-1") if k in binary and v is not None else v
             for k, v in r.items()} for r in records]


def load() -> dict:
    doc = json.loads(GOLDEN.read_text())
    doc["records"] = from_json(doc["records"])
    return doc


def main() -> None:
    with vsftpd_with_password() as server:
        records = run(server.port, PlainReplies(), plain_passive)
    doc = {
        "server": "vsftpd 3.0.3 (Debian), tests/servers.py config with no_anon_password=NO",
        "payload": PAYLOAD.decode(),
        "varying": [v.decode() for v in VARYING],
        "records": to_json(records),
    }
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(records)} exchanges written to {GOLDEN}")


if __name__ == "__main__":
    main()
