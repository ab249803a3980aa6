"""The FTP codec against a recorded vsftpd 3.0.3 session (tests/golden/ftp/vsftpd.json).

The recording comes from tests/golden/record_ftp.py, which frames replies its own way; here the
codec reads the same bytes and must agree with it, and with the values stated below. The live
test drives the same steps against a fresh vsftpd with the codec doing the framing and the
PASV/EPSV parsing (every data connection goes to an address the codec parsed).
"""

from __future__ import annotations

import itertools
import socket
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.golden import record_ftp
from twinproxy.protocols.ftp import CODEC, FtpSession, parse_epsv, parse_pasv
from twinproxy.protocols.ftp.states import Data, Login, Rename, Restart

DOC = record_ftp.load()
RECORDS = DOC["records"]
CLIENT = b"".join(r["request"] for r in RECORDS if r["request"] is not None)
SERVER = b"".join(r["reply"] for r in RECORDS)
ANSWERS = [tuple(a) for r in RECORDS for a in r["answers"]]  # (verb, code), as recorded
PAYLOAD = DOC["payload"].encode()


def by_request(request: bytes) -> list[dict]:
    return [r for r in RECORDS if r["request"] == request]


def frame(cuts: list[int] | None = None):
    """All requests expected up front (as a pipelining proxy would), then the server's bytes."""
    requests = CODEC.request_reader().receive(CLIENT)
    reader = CODEC.reply_reader()
    for request in requests:
        reader.expect(request)
    points = sorted({0, len(SERVER), *(c % (len(SERVER) + 1) for c in cuts or [])})
    replies = []
    for a, b in itertools.pairwise(points):
        replies += reader.receive(SERVER[a:b])
    return requests, replies, reader


def test_recording_is_complete():
    assert RECORDS[0]["request"] is None and RECORDS[-1]["request"] == b"QUIT\r\n"
    assert len(RECORDS) == len(record_ftp.STEPS) + 1
    assert DOC["server"].startswith("vsftpd 3.0.3")


def test_requests_parse_like_the_recorder_split_them():
    requests = CODEC.request_reader().receive(CLIENT)
    finals = [verb for verb, code in ANSWERS if code >= 200]
    assert [r.name for r in requests] == finals  # one request per final reply
    assert b"".join(r.raw for r in requests) == CLIENT
    (noop,) = [r for r in requests if r.raw.startswith(b"\r\n")]
    assert noop.raw == b"\r\nNOOP\r\n" and noop.name == "NOOP"  # the empty line rode along
    assert [r.name for r in requests if r.raw.startswith(b"\xff")] == ["ABOR"]


@pytest.mark.parametrize("cuts", [None, list(range(len(SERVER)))], ids=["whole", "bytewise"])
def test_replies_pair_with_their_requests(cuts):
    _, replies, reader = frame(cuts)
    assert replies[0].request is None and replies[0].value == (220, ("(vsFTPd 3.0.3)",))
    assert [(r.request.name, r.value[0]) for r in replies[1:]] == ANSWERS
    assert [r.final for r in replies[1:]] == [code >= 200 for _, code in ANSWERS]
    assert [r.error for r in replies[1:]] == [code >= 400 for _, code in ANSWERS]
    assert b"".join(r.raw for r in replies) == SERVER
    assert reader.pending == 0 and reader.buffered == 0 and reader.closing


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SERVER)), max_size=40))
def test_any_split_of_the_recording(cuts):
    _, whole, _ = frame()
    _, split, _ = frame(cuts)
    assert [(r.raw, r.request.raw if r.request else None) for r in split] == [
        (r.raw, r.request.raw if r.request else None) for r in whole]


def test_reply_values():
    _, replies, _ = frame()
    canonical = {(r.request.name if r.request else None, r.value[0]): CODEC.canonical(r)
                 for r in replies}
    assert canonical[("FEAT", 211)] == (211, (
        "Features:", " EPRT", " EPSV", " MDTM", " PASV", " REST STREAM", " SIZE", " TVFS", "End"))
    assert canonical[("USER", 331)] == (331, ("Please specify the password.",))
    assert canonical[("USER", 530)] == (530, ("This FTP server is anonymous only.",))
    assert canonical[("PASS", 503)] == (503, ("Login with USER first.",))
    assert canonical[("PWD", 257)] == (257, ('"/" is the current directory',))
    assert canonical[("SIZE", 213)] == (213, ("16",))
    assert canonical[("RNTO", 503)] == (503, ("RNFR required first.",))
    assert canonical[("XYZZY", 500)] == (500, ("Unknown command.",))
    assert canonical[("ABOR", 225)] == (225, ("No transfer to ABOR.",))
    assert canonical[("QUIT", 221)] == (221, ("Goodbye.",))
    _, lines = canonical[("HELP", 214)]
    assert lines[0] == "The following commands are recognized." and lines[-1] == "Help OK."
    assert len(lines) == 6
    stat = canonical[("STAT", 211)]
    assert stat[1][0] == "FTP server status:" and stat[1][-1] == "End of status"
    assert CODEC.probe_ok(replies[0])


def test_transfers_in_the_recording():
    (stor,) = by_request(b"STOR hello.bin\r\n")
    assert stor["answers"] == [["STOR", 150], ["STOR", 226]] and stor["data"] == PAYLOAD
    restarted, whole = by_request(b"RETR hello.bin\r\n")
    assert restarted["data"] == PAYLOAD[6:] and whole["data"] == PAYLOAD
    assert all(r["data"] == b"hello.bin\r\n" for r in by_request(b"NLST\r\n"))


def test_passive_addresses_parse_as_the_recorder_read_them():
    passive = [r for r in RECORDS if r["request"] in (b"PASV\r\n", b"EPSV\r\n")]
    assert len(passive) == 5
    for record in passive:
        host, port = record["address"]
        if record["request"] == b"PASV\r\n":
            assert parse_pasv(record["reply"]) == (host, port) and host == "127.0.0.1"
        else:
            assert parse_epsv(record["reply"]) == port


def test_the_session_follows_the_recording():
    _, replies, _ = frame()
    session = FtpSession()
    after = {}  # request -> states after its first final reply, and the replay then
    for reply in replies:
        session.on_reply(reply)
        if reply.request is not None and reply.final and reply.request.raw not in after:
            replay = None if session.closed else [s.request.raw for s in session.replay()]
            after[reply.request.raw] = (session.login, session.rename, session.restart,
                                        session.data, replay)
    assert after[b"USER bob\r\n"][0] is Login.LOGGED_OUT
    assert after[b"USER anonymous\r\n"][0] is Login.NEED_PASS
    assert after[b"PASS guest@example.com\r\n"][0] is Login.LOGGED_IN
    assert after[b"PASV\r\n"][3] is Data.PASSIVE
    assert after[b"REST 6\r\n"][2] is Restart.PENDING
    assert after[b"STOR hello.bin\r\n"][3] is Data.NONE
    assert after[b"RNFR hello.bin\r\n"][1] is Rename.PENDING
    assert after[b"RNFR hello.bin\r\n"][4] == [
        b"USER anonymous\r\n", b"PASS guest@example.com\r\n", b"TYPE I\r\n", b"CWD /\r\n",
        b"CWD pub\r\n", b"RNFR hello.bin\r\n"]
    assert after[b"RNTO renamed.bin\r\n"][1] is Rename.IDLE
    assert after[b"OPTS UTF8 ON\r\n"][4] == [
        b"USER anonymous\r\n", b"PASS guest@example.com\r\n", b"TYPE A\r\n",
        b"OPTS UTF8 ON\r\n", b"CWD /\r\n", b"CWD pub\r\n"]
    assert session.closed


def test_describe_on_recorded_requests():
    requests = {r.raw: r for r in CODEC.request_reader().receive(CLIENT)}
    keys = {raw: (CODEC.describe(r).keys, r.write) for raw, r in requests.items()}
    assert keys[b"STOR hello.bin\r\n"] == ((b"hello.bin", b"."), True)
    assert keys[b"RNTO renamed.bin\r\n"] == ((b"renamed.bin", b"."), True)
    assert keys[b"SIZE hello.bin\r\n"] == ((b"hello.bin",), False)
    assert keys[b"LIST\r\n"] == ((b".",), False)
    assert keys[b"SYST\r\n"] == ((), False)


class CodecReplies:
    """The codec as the live replay's framing: requests through the request reader into
    ``expect``, replies through the reply reader, pairing kept for checks."""

    def __init__(self) -> None:
        self.requests = CODEC.request_reader()
        self.reader = CODEC.reply_reader()
        self.ready: deque = deque()
        self.replies: list = []

    def sent(self, data: bytes) -> None:
        for request in self.requests.receive(data):
            self.reader.expect(request)

    def next(self, sock: socket.socket) -> bytes:
        while not self.ready:
            data = sock.recv(65536)
            if not data:
                raise EOFError("server closed the control connection")
            self.ready.extend(self.reader.receive(data))
        reply = self.ready.popleft()
        self.replies.append(reply)
        return reply.raw


def codec_passive(reply: bytes) -> tuple[str, int]:
    # EPSV names only a port: the host is the control connection's peer.
    return ("127.0.0.1", parse_epsv(reply)) if reply[:3] == b"229" else parse_pasv(reply)


def test_live_replay_against_vsftpd():
    framing = CodecReplies()
    with record_ftp.vsftpd_with_password() as server:
        live = record_ftp.run(server.port, framing, codec_passive)
    assert len(live) == len(RECORDS)
    varying = tuple(v.encode() for v in DOC["varying"])
    for old, new in zip(RECORDS, live, strict=True):
        assert new["answers"] == old["answers"], old["request"]
        request = old["request"] or b""
        if not request.startswith((*varying, b"TYPE A\r\nSTAT")):
            assert new["reply"] == old["reply"], request
        if "data" in old and not request.startswith(b"LIST"):
            assert new["data"] == old["data"], old["request"]
    # Four transfers went over PASV or EPSV, to addresses the codec parsed; two were active.
    assert sum(1 for r in live if "data" in r) == 6
    assert [(r.request.name if r.request else None, r.value[0]) for r in framing.replies[1:]] \
        == ANSWERS


def test_reply_counts_of_recorded_requests():
    """Every request got one final reply; 1xx marks came only before a transfer command's."""
    requests, replies, _ = frame()
    for request in requests:
        CODEC.describe(request)
        mine = [r for r in replies if r.request is request]
        assert [r.final for r in mine].count(True) == request.replies == 1
        if not request.preliminary:
            assert all(r.final for r in mine), request
    assert any(not r.final for r in replies if r.request is not None and r.request.preliminary)
