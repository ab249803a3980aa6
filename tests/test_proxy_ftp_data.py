"""FTP data connections through twinproxy, SINGLE mode, with real vsftpd and real clients.

Three loopback addresses keep the client away from vsftpd's data ports: vsftpd listens on
127.0.0.2 only (control and passive data ports), the proxy on 127.0.0.1, and the clients connect
from 127.0.0.3. vsftpd refuses a data connection, passive or active, whose host is not its
control connection's peer (the proxy's 127.0.0.1; its ``pasv_promiscuous`` and
``port_promiscuous`` are off), so a transfer works only if the proxy carries the data connection
itself, and an address the client sees in a 227/229 reply that named vsftpd would be 127.0.0.2 or
one of its passive ports. Every transfer is checked byte for byte against the file in vsftpd's
root.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from tests.proxyrun import external, poll_until, running, write_config
from tests.servers import paused, recv_until, vsftpd_server
from twinproxy.relay.connections import BUFSIZE

SERVER_HOST = "127.0.0.2"
PROXY_HOST = "127.0.0.1"
CLIENT_HOST = "127.0.0.3"
SIZE = 3 * 1024 * 1024 + 17  # a few MB, not a multiple of any buffer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """vsftpd on 127.0.0.2 and the proxy in front of it; one pair for the module (each test
    uses files of its own)."""
    tmp = tmp_path_factory.mktemp("ftpdata")
    with vsftpd_server(SERVER_HOST) as server:
        path = write_config(tmp / "ftp.toml", "ftp", {"v1": external(server.address)})
        with running(path) as proxy:
            yield server, proxy


def _client(proxy, passive: bool = True) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(PROXY_HOST, proxy.port, source_address=(CLIENT_HOST, 0))
    ftp.login()
    ftp.set_pasv(passive)
    return ftp


def _payload(seed: bytes, size: int = SIZE) -> bytes:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KB
    return (block * (size // len(block) + 1))[:size]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _server_file(server, name: str) -> bytes:
    return (server.extra["root"] / "pub" / name).read_bytes()


def _wait_file(server, name: str, size: int) -> bytes:
    """The file once vsftpd wrote it whole (its 226 may come before its last write lands)."""
    path = server.extra["root"] / "pub" / name
    deadline = time.monotonic() + 10
    while (not path.exists() or path.stat().st_size < size) and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.read_bytes()


def test_pasv_and_epsv_replies_name_the_proxy(setup) -> None:
    server, proxy = setup
    ftp = _client(proxy)
    try:
        reply = ftp.sendcmd("PASV")
        numbers = [int(n) for n in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)",
                                             reply).groups()]
        host, port = ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]
        assert reply.startswith("227 Entering Passive Mode")
        assert host == PROXY_HOST and server.host != PROXY_HOST
        # The proxy is listening there, and vsftpd could not be: it has nothing on 127.0.0.1.
        # (The port number may fall in vsftpd's passive range on its own address by chance:
        # both come from the free ports. A test that it did not failed once in a few hundred.)
        socket.create_connection((host, port), timeout=5).close()
        reply = ftp.sendcmd("EPSV")
        port = int(re.search(r"\(\|\|\|(\d+)\|\)", reply).group(1))
        assert reply.startswith("229 Entering Extended Passive Mode")
        socket.create_connection((PROXY_HOST, port), timeout=5).close()
    finally:
        ftp.close()


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_upload_download_byte_for_byte(setup, passive: bool) -> None:
    server, proxy = setup
    name = f"big-{passive}.bin"
    data = _payload(name.encode())
    ftp = _client(proxy, passive)
    try:
        assert ftp.storbinary(f"STOR pub/{name}", io.BytesIO(data)).startswith("226")
        assert _digest(_wait_file(server, name, len(data))) == _digest(data)
        got = io.BytesIO()
        assert ftp.retrbinary(f"RETR pub/{name}", got.write).startswith("226")
        assert _digest(got.getvalue()) == _digest(data)
        assert ftp.size(f"pub/{name}") == len(data)
        listing: list[str] = []
        ftp.retrlines("LIST pub", listing.append)
        assert any(line.endswith(name) and str(len(data)) in line.split() for line in listing)
        assert f"pub/{name}" in ftp.nlst("pub")
        # ASCII: a text file comes back with the server's line ends, as directly
        text = b"line one\nline two\n" * 1000
        ftp.storlines(f"STOR pub/{name}.txt", io.BytesIO(text))
        lines: list[str] = []
        ftp.retrlines(f"RETR pub/{name}.txt", lines.append)
        assert "\n".join(lines) + "\n" == text.decode()
    finally:
        ftp.close()


def test_active_data_connection_comes_from_the_proxy(setup) -> None:
    """In active mode the client's data port is connected to by the proxy (127.0.0.1), never by
    vsftpd (127.0.0.2): vsftpd was given the proxy's endpoint in the PORT it got."""
    server, proxy = setup
    (server.extra["root"] / "pub" / "small.txt").write_bytes(b"hello\r\n")
    ftp = _client(proxy, passive=False)
    try:
        conn = ftp.transfercmd("RETR pub/small.txt")
        try:
            assert conn.getpeername()[0] == PROXY_HOST
            assert conn.recv(100) == b"hello\r\n"
        finally:
            conn.close()
        assert ftp.voidresp().startswith("226")
    finally:
        ftp.close()


def test_bounce_port_refused(setup) -> None:
    """RFC 2577: a PORT or EPRT naming another host than the client's, or a privileged port,
    is refused and never reaches vsftpd; the session goes on."""
    _server, proxy = setup
    ftp = _client(proxy)
    try:
        for command in ("PORT 127,0,0,2,78,32", "PORT 127,0,0,1,0,25",
                        "EPRT |1|10.0.0.1|2000|", "EPRT |1|127.0.0.1|21|"):
            with pytest.raises(ftplib.error_perm, match=r"^500 Illegal PORT command"):
                ftp.sendcmd(command)
        with pytest.raises(ftplib.error_perm, match=r"^501 "):
            ftp.sendcmd("PORT 1,2,3")
        # The refused commands left no data connection set up: a transfer needs one first.
        with pytest.raises(ftplib.error_temp, match=r"^425 "):
            ftp.sendcmd("LIST")
        assert ftp.sendcmd("PWD").startswith('257 "/"')
    finally:
        ftp.close()


def test_passive_connection_from_another_host_refused(setup) -> None:
    """A connection to a client's passive endpoint from another address than the client's is
    closed unserved; the client's own connection still gets the transfer."""
    server, proxy = setup
    (server.extra["root"] / "pub" / "secret.txt").write_bytes(b"for the client only\n")
    ftp = _client(proxy)
    try:
        reply = ftp.sendcmd("EPSV")
        port = int(re.search(r"\(\|\|\|(\d+)\|\)", reply).group(1))
        thief = socket.create_connection((PROXY_HOST, port), timeout=5,
                                         source_address=("127.0.0.4", 0))
        try:
            assert thief.recv(100) == b""  # closed by the proxy, nothing sent
        finally:
            thief.close()
        conn = socket.create_connection((PROXY_HOST, port), timeout=5,
                                        source_address=(CLIENT_HOST, 0))
        ftp.sendcmd("RETR pub/secret.txt")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        conn.close()
        assert data == b"for the client only\n"
        assert ftp.voidresp().startswith("226")
    finally:
        ftp.close()


def test_auth_tls_refused_clearly(setup) -> None:
    _server, proxy = setup
    ftp = _client(proxy)
    try:
        with pytest.raises(ftplib.error_perm, match=r"^534 twinproxy: AUTH is refused"):
            ftp.sendcmd("AUTH TLS")
        assert ftp.sendcmd("NOOP").startswith("200")
    finally:
        ftp.close()


@pytest.mark.parametrize("mode", ["epsv", "pasv", "active"])
def test_curl(setup, tmp_path, mode: str) -> None:
    server, proxy = setup
    name = f"curl-{mode}.bin"
    data = _payload(name.encode())
    source = tmp_path / "up.bin"
    source.write_bytes(data)
    flags = ["--interface", CLIENT_HOST, *{
        "epsv": [], "pasv": ["--disable-epsv"], "active": ["--ftp-port", CLIENT_HOST]}[mode]]
    base = f"ftp://{PROXY_HOST}:{proxy.port}/pub/{name}"
    subprocess.run(["curl", "-sS", "--max-time", "60", *flags, "-T", str(source), base],
                   check=True, capture_output=True)
    assert _digest(_wait_file(server, name, len(data))) == _digest(data)
    out = subprocess.run(["curl", "-sS", "--max-time", "60", *flags, base],
                         check=True, capture_output=True).stdout
    assert _digest(out) == _digest(data)
    # vsftpd's own root holds what the client sent
    assert os.path.getsize(server.extra["root"] / "pub" / name) == len(data)


BIG = 48 * 1024 * 1024  # more than every socket buffer between the server and the client holds


def _pipe_state(proxy) -> tuple[int, int]:
    """(bytes relayed, bytes waiting in the proxy) over the proxy's open data pipes."""
    def read():
        pipes = proxy.service.relay.pipes.pipes
        return (sum(p.relayed for p in pipes),
                sum(e.out_size for p in pipes for e in p.ends))
    return proxy.call(read)


def _stalled(proxy) -> tuple[int, int]:
    """The pipe state once nothing more moves (the reader stopped and every buffer filled)."""
    last = [(-1, -1)]

    def fetch():
        time.sleep(0.2)
        state = _pipe_state(proxy)
        moved, last[0] = state != last[0], state
        return state, moved

    return poll_until(fetch, lambda got: got[0][0] > 0 and not got[1], 30, "the pipe to stall")[0]


def test_back_pressure_download(setup) -> None:
    """A client that does not read its download stops the proxy reading vsftpd: the proxy holds
    at most one read of it, and the whole file still arrives intact."""
    server, proxy = setup
    data = _payload(b"slow reader", BIG)
    (server.extra["root"] / "pub" / "slow-down.bin").write_bytes(data)
    ftp = _client(proxy)
    try:
        conn = ftp.transfercmd("RETR pub/slow-down.bin")
        relayed, waiting = _stalled(proxy)
        assert relayed < BIG // 2 and waiting <= BUFSIZE
        got = hashlib.sha256()
        size = 0
        while chunk := conn.recv(1 << 20):
            got.update(chunk)
            size += len(chunk)
        conn.close()
        assert ftp.voidresp().startswith("226")
        assert size == BIG and got.hexdigest() == _digest(data)
    finally:
        ftp.close()


def test_back_pressure_upload(setup) -> None:
    """A server that does not read an upload (vsftpd stopped) stops the proxy reading the
    client: at most one read waits in the proxy, and the file arrives whole once it reads."""
    server, proxy = setup
    data = _payload(b"slow server", BIG)
    ftp = _client(proxy)
    conn = ftp.transfercmd("STOR pub/slow-up.bin")
    sender = threading.Thread(target=conn.sendall, args=(data,), daemon=True)
    try:
        with paused(server.proc.pid):
            sender.start()
            relayed, waiting = _stalled(proxy)
            assert relayed < BIG // 2 and waiting <= BUFSIZE
        sender.join(60)
        conn.close()
        assert ftp.voidresp().startswith("226")
        assert _digest(_wait_file(server, "slow-up.bin", BIG)) == _digest(data)
    finally:
        conn.close()
        ftp.close()


def _script(ftp: ftplib.FTP, top: str) -> list[tuple[str, str]]:
    """Every command a client uses, on a directory ``top`` of its own: what it sent and what it
    got (data as a digest; addresses and times taken out, since they differ by nature)."""
    out: list[tuple[str, str]] = []

    def cmd(line: str) -> None:
        try:
            reply = ftp.sendcmd(line)
        except ftplib.Error as exc:
            reply = str(exc)
        out.append((line, re.sub(r"\d{14}", "<time>", reply)))

    def data(line: str, body: bytes | None = None, rest: int | None = None) -> None:
        if body is not None:
            out.append((line, ftp.storbinary(line, io.BytesIO(body), rest=rest)))
            return
        got = io.BytesIO()
        try:
            reply = ftp.retrbinary(line, got.write, rest=rest)
        except ftplib.Error as exc:
            reply = str(exc)
        value = got.getvalue()
        if line.startswith("LIST"):  # times and owners aside, the names and sizes
            value = b"\n".join(b" ".join(row.split()[4:5] + row.split()[8:])
                               for row in sorted(value.splitlines()))
        out.append((line, f"{reply[:3]} {_digest(value)}"))

    body = _payload(top.encode(), 300_000)
    for line in (f"MKD pub/{top}", f"CWD pub/{top}", "PWD", "TYPE I"):
        cmd(line)
    data("STOR a.bin", body)
    data("APPE a.bin", body[:1000])
    for line in ("SIZE a.bin", "MDTM a.bin", "RNFR a.bin", "RNTO b.bin", "SIZE a.bin",
                 "MKD sub", "CWD sub", "CDUP"):
        cmd(line)
    data("RETR b.bin")
    data("RETR b.bin", rest=123_456)
    data("RETR missing.bin")
    data("NLST")
    data("LIST")
    data("MLSD")
    cmd("TYPE A")
    data("STOR t.txt", b"one\r\ntwo\r\n")
    data("RETR t.txt")
    for line in ("DELE t.txt", "DELE b.bin", "RMD sub", "CDUP", f"RMD {top}", "STAT x"):
        cmd(line)
    return out


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_commands_as_directly(setup, passive: bool) -> None:
    """The same session, directly to vsftpd and through the proxy, gets the same replies and
    the same data (LIST, NLST, MLSD, RETR with REST, STOR, APPE, RNFR/RNTO, MKD, RMD, DELE,
    SIZE, MDTM, ASCII and binary)."""
    server, proxy = setup
    direct = ftplib.FTP(timeout=20)
    direct.connect(SERVER_HOST, server.port, source_address=(CLIENT_HOST, 0))
    direct.login()
    direct.set_pasv(passive)
    through = _client(proxy, passive)
    try:
        expected = _script(direct, f"same-{passive}")
        assert _script(through, f"same-{passive}") == expected
        assert ("RETR b.bin", f"226 {_digest(_payload(f'same-{passive}'.encode(), 300_000))}"
                ) not in expected  # (APPE made it longer)
        assert [reply[:3] for _, reply in expected[:4]] == ["257", "250", "257", "200"]
    finally:
        direct.close()
        through.close()


def test_vanishing_client_leaves_nothing_open(setup) -> None:
    """A client that opens a data connection and vanishes (in the middle of a download) leaves
    no pipe and no endpoint behind, and other sessions go on."""
    server, proxy = setup
    poll_until(lambda: proxy.call(lambda: len(proxy.service.relay.pipes.pipes)),
               lambda n: n == 0, 10, "the earlier tests' pipes to close")
    (server.extra["root"] / "pub" / "vanish.bin").write_bytes(_payload(b"vanish", BIG))
    other = _client(proxy)
    gone = _client(proxy)
    conn = gone.transfercmd("RETR pub/vanish.bin")
    conn.recv(1000)
    waiting = _client(proxy)
    waiting.sendcmd("PASV")  # an endpoint waiting for a connection that never comes
    assert proxy.call(lambda: len(proxy.service.relay.pipes.pipes)) == 1
    assert len(proxy.call(lambda: [c for c in proxy.service.relay.clients if c.listener])) == 1
    for vanishing in (conn, gone, waiting):  # (FTP.close sends no QUIT)
        vanishing.close()
    assert poll_until(lambda: proxy.call(lambda: len(proxy.service.relay.pipes.pipes)),
                      lambda n: n == 0, 10, "no pipe left") == 0
    poll_until(lambda: proxy.call(lambda: [c for c in proxy.service.relay.clients
                                           if c.listener]), lambda found: found == [], 10,
               "no endpoint left")
    try:
        assert other.sendcmd("NOOP").startswith("200")
        got = io.BytesIO()
        other.retrbinary("RETR pub/small.txt", got.write)
    finally:
        other.close()


def test_garbage_on_the_control_channel(setup) -> None:
    """Garbage gets vsftpd's own answer; a line over the limit gets the proxy's 500 and a close;
    neither touches another session."""
    _server, proxy = setup
    other = _client(proxy)
    try:
        with socket.create_connection((PROXY_HOST, proxy.port), timeout=10) as raw:
            assert raw.recv(1000).startswith(b"220")
            raw.sendall(b"\x01\x02 garbage \xfe\r\n")
            assert raw.recv(1000).startswith(b"530 ")  # vsftpd: not logged in
            raw.sendall(b"X" * 100_000 + b"\r\n")
            assert recv_until(raw, b"\r\n").startswith(b"500 Input line too long.")
            # closed (reset, when the rest of the long line was still unread)
            with contextlib.suppress(ConnectionResetError):
                assert recv_until(raw, b"never") == b""
        assert other.sendcmd("NOOP").startswith("200")
        assert other.nlst("pub") is not None
    finally:
        other.close()


def test_quit_closes_as_directly(setup) -> None:
    """QUIT gets vsftpd's 221 and then the close, nothing more (the proxy adds no 421 to a close
    the server announced)."""
    server, proxy = setup
    got = []
    for address in ((SERVER_HOST, server.port), (PROXY_HOST, proxy.port)):
        with socket.create_connection(address, timeout=10,
                                      source_address=(CLIENT_HOST, 0)) as raw:
            assert recv_until(raw, b"\r\n").startswith(b"220")
            raw.sendall(b"QUIT\r\n")
            got.append(recv_until(raw, b"never"))
    assert got[1] == got[0] == b"221 Goodbye.\r\n"
