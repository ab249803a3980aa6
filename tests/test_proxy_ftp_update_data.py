"""FTP transfers during a live update of vsftpd: every transfer runs on both versions and is
compared, with Python's ftplib as the client and configs/ftp.toml as shipped (relocated; sync
"files", v1 and v2 the same vsftpd with different banners), one proxy for the module, each test
an update of its own (v1 to v2, or back).

What a user checks: files come back byte for byte (by hash, on the client and in both roots),
an update with transfers cuts over with no divergence and leaves the new root equal to the old
one, a new version that serves other bytes is rolled back with the client unaffected, and a
transfer in progress when the update ends completes.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.proxyrun import poll_until, running
from tests.test_configs_shipped import relocated
from twinproxy import digests

HOST = "127.0.0.1"  # the proxy, and vsftpd (configs/ftp.toml: listen_address, pasv_address)
# The clients connect from another address: vsftpd refuses a data connection whose host is not
# its control connection's (the proxy's), passive or active, so a transfer works only if the
# proxy carries it (as tests/test_proxy_ftp_data.py does in SINGLE mode).
CLIENT = "127.0.0.3"


def held_in_mve(tmp: Path) -> Path:
    """configs/ftp.toml in ``tmp``, with a warm-up no test reaches: an update stays in MVE until
    the test promotes it."""
    path = relocated("ftp.toml", tmp)
    text = path.read_text().replace("warmup_seconds = 30.0", "warmup_seconds = 600.0")
    path.write_text(text.replace("warmup_requests = 200", "warmup_requests = 1000000"))
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with running(held_in_mve(tmp_path_factory.mktemp("ftpupdate"))) as running_proxy:
        yield running_proxy


def _status(proxy) -> dict:
    return proxy.call(proxy.service.status)


def _root(proxy, name: str) -> Path:
    return Path(proxy.service.backends[name].workdir) / "root"


def _update(proxy) -> tuple[str, str]:
    """Start an update to the version not serving; (leader, follower) once in MVE. (One that a
    failed test left running is rolled back first.)"""
    if _status(proxy)["state"] != "single":
        _end(proxy, promote=False)
    leader = proxy.service.serving.name
    follower = "v2" if leader == "v1" else "v1"
    proxy.call_async(proxy.service.update, follower)
    poll_until(lambda: _status(proxy), lambda s: s["state"] == "mve", 30, "MVE")
    return leader, follower


def _caught_up(proxy) -> dict:
    """The status once the follower answered (and compared) everything so far."""
    def settled(s: dict) -> bool:
        update = s.get("update") or {}
        return s["state"] != "mve" or (update.get("backlog") == 0 and proxy.call(
            lambda: proxy.service.updating.engine._caught_up()))
    poll_until(lambda: _status(proxy), settled, 20, "the follower to catch up")
    # A status taken now: the one that passed was taken before the engine was asked, and a
    # transfer compared in between is not in it.
    return _status(proxy)


def _end(proxy, promote: bool) -> dict:
    proxy.call(proxy.service.promote if promote else proxy.service.rollback)
    return poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30, "the end")


def _client(proxy, mode: str = "pasv") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, proxy.port, source_address=(CLIENT, 0))
    ftp.login()
    ftp.cwd("pub")
    ftp.set_pasv(mode != "port")
    if mode == "epsv":
        ftp.af = socket.AF_INET6  # (ftplib then asks EPSV; the address stays IPv4)
    return ftp


def _blob(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 4096
    return (block * (size // len(block) + 1))[:size]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _retr(ftp: ftplib.FTP, name: str, rest: int | None = None) -> bytes:
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", got.write, rest=rest)
    return got.getvalue()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else _sha(p.read_bytes())
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("mode", ["pasv", "epsv", "port"])
def test_transfers_compared_then_cutover(proxy, mode: str) -> None:
    """Uploads (STOR, APPE, ASCII and binary), downloads (RETR, with REST) and listings (LIST,
    NLST) during an update, passive and active: the client gets what it would directly, both
    roots hold the same files, every transfer was compared (0 divergences), and the cutover
    leaves the new version serving the same bytes on the same connection."""
    ftp = _client(proxy, mode)
    ftp.mkd(mode)
    ftp.cwd(mode)
    old = _blob(mode + "old", 2 * 1024 * 1024 + 3)
    ftp.storbinary("STOR old.bin", io.BytesIO(old))
    leader, follower = _update(proxy)
    new = _blob(mode + "new", 1024 * 1024 + 17)
    ftp.storbinary("STOR new.bin", io.BytesIO(new))
    ftp.storbinary("APPE new.bin", io.BytesIO(b"tail" * 1000))
    assert _sha(_retr(ftp, "new.bin")) == _sha(new + b"tail" * 1000)
    assert _sha(_retr(ftp, "old.bin")) == _sha(old)
    assert _retr(ftp, "old.bin", rest=1000) == old[1000:]
    ftp.sendcmd("TYPE A")
    ftp.storlines("STOR text.txt", io.BytesIO(b"one\ntwo\r\nthree\n"))
    lines: list[str] = []
    ftp.retrlines("RETR text.txt", lines.append)
    assert lines == ["one", "two", "three"]
    ftp.sendcmd("TYPE I")
    assert sorted(ftp.nlst()) == ["new.bin", "old.bin", "text.txt"]
    listing: list[str] = []
    ftp.retrlines("LIST", listing.append)
    assert [line.split()[-1] for line in listing] == ["new.bin", "old.bin", "text.txt"]
    with pytest.raises(ftplib.error_perm, match=r"^500 Illegal PORT command"):  # no bounce
        ftp.sendcmd("PORT 10,0,0,9,200,1")
    status = _caught_up(proxy)
    update = status["update"]
    assert status["state"] == "mve" and update["divergences"] == 0, update
    # 13 transfers and their PASV/PORT, compared (the replies and the data)
    assert update["compared"] >= 26 and update["transfers_compared"] == 9, update
    trees = [_tree(_root(proxy, name) / "pub" / mode) for name in (leader, follower)]
    assert trees[0] == trees[1] and trees[0]["new.bin"] == _sha(new + b"tail" * 1000)
    # ftplib sends ASCII lines ending in CRLF; vsftpd (ascii_upload_enable off) stores them so
    assert trees[0]["text.txt"] == _sha(b"one\r\ntwo\r\nthree\r\n")
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["divergences"] == 0, done
    assert done["serving"] == follower
    assert _retr(ftp, "new.bin") == new + b"tail" * 1000  # the same connection, on the new one
    ftp.quit()


@pytest.mark.parametrize("how", ["waiting", "connected", "port"])
def test_channel_set_up_before_the_update_used_during_it(proxy, how: str) -> None:
    """PASV (or PORT) answered in SINGLE mode, its transfer asked for once the update is in
    MVE (the client's data connection made before the sync point, or after): the follower is
    given the channel's setup after the session's replay, and the transfer is compared."""
    ftp = _client(proxy, "port" if how == "port" else "pasv")
    data = _blob("before" + how, 300 * 1024 + 11)
    ftp.storbinary(f"STOR before-{how}.bin", io.BytesIO(data))
    if how == "port":
        listener = socket.create_server((CLIENT, 0))
        listener.settimeout(10)
        ftp.sendport(CLIENT, listener.getsockname()[1])
    else:
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        if how == "connected":
            conn = socket.create_connection((host, port), timeout=10,
                                            source_address=(CLIENT, 0))
    _update(proxy)
    if how == "waiting":
        conn = socket.create_connection((host, port), timeout=10,
                                            source_address=(CLIENT, 0))
    assert ftp.sendcmd(f"RETR before-{how}.bin").startswith("150")
    if how == "port":
        conn, _ = listener.accept()
        listener.close()
    got = bytearray()
    while chunk := conn.recv(65536):
        got += chunk
    conn.close()
    assert ftp.voidresp().startswith("226") and bytes(got) == data
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["compared"] >= 1, update
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["divergences"] == 0, done
    ftp.quit()


def test_curl_during_an_update(proxy, tmp_path) -> None:
    """curl, EPSV, PASV and active, uploads, downloads and lists during an update: the same
    bytes, every transfer compared, no divergence."""
    _update(proxy)
    base = f"ftp://{HOST}:{proxy.port}/pub/"
    for mode, flags in {"epsv": [], "pasv": ["--disable-epsv"],
                        "active": ["--ftp-port", CLIENT]}.items():
        data = _blob("curl" + mode, 1024 * 1024 + 13)
        source = tmp_path / f"{mode}.bin"
        source.write_bytes(data)
        curl = ["curl", "-sS", "--max-time", "30", "--interface", CLIENT, *flags]
        subprocess.run([*curl, "-T", str(source), base + f"curl-{mode}.bin"], check=True,
                       capture_output=True)
        out = subprocess.run([*curl, base + f"curl-{mode}.bin"], check=True,
                             capture_output=True).stdout
        assert _sha(out) == _sha(data)
        listing = subprocess.run([*curl, base], check=True, capture_output=True).stdout
        assert f" curl-{mode}.bin".encode() in listing
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["transfers_compared"] == 9, update
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["divergences"] == 0, done


def test_follower_serving_other_bytes_rolls_back(proxy) -> None:
    """A new version that serves a download with other bytes (here: the file altered in its
    root only, same size) is rolled back on that transfer; the client got the leader's bytes
    and goes on as if nothing happened."""
    ftp = _client(proxy)
    data = _blob("corrupt", 300 * 1024 + 5)
    ftp.storbinary("STOR corrupt.bin", io.BytesIO(data))
    leader, follower = _update(proxy)
    altered = bytearray(data)
    altered[150000] ^= 0xFF
    (_root(proxy, follower) / "pub" / "corrupt.bin").write_bytes(bytes(altered))
    assert _retr(ftp, "corrupt.bin") == data
    done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                      "the rollback")
    last = done["last_update"]
    assert last["outcome"] == "rolled-back" and done["serving"] == leader, done
    assert "RETR" in last["reason"] and digests.NAME in last["reason"], last
    assert _retr(ftp, "corrupt.bin") == data and "corrupt.bin" in ftp.nlst()
    ftp.quit()


def test_follower_refusing_uploads_rolls_back(proxy) -> None:
    """A new version that refuses uploads (here: its pub/ not writable) is rolled back on the
    first refused STOR; the client's upload went to the leader whole."""
    ftp = _client(proxy, "port")
    leader, follower = _update(proxy)
    pub = _root(proxy, follower) / "pub"
    pub.chmod(0o555)
    data = _blob("refused", 100 * 1024 + 3)
    ftp.storbinary("STOR refused.bin", io.BytesIO(data))
    done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                      "the rollback")
    last = done["last_update"]
    assert last["outcome"] == "rolled-back" and done["serving"] == leader, done
    assert "STOR" in last["reason"] and "553" in last["reason"], last
    assert _sha((_root(proxy, leader) / "pub" / "refused.bin").read_bytes()) == _sha(data)
    assert _retr(ftp, "refused.bin") == data
    ftp.quit()


def test_client_vanishing_mid_download(proxy) -> None:
    """A client that resets its data connection in the middle of a download during an update,
    and vanishes: the leader's transfer is cut short, the follower's runs whole, and that is
    no divergence (the builtin:transfer-cut rule); another client goes on undisturbed and the
    update cuts over."""
    other = _client(proxy)
    data = _blob("vanish", 8 * 1024 * 1024 + 1)
    other.storbinary("STOR vanish.bin", io.BytesIO(data))
    _update(proxy)
    gone = _client(proxy)
    conn = gone.transfercmd("RETR vanish.bin")
    assert len(conn.recv(65536)) > 0
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # a reset
    gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()
    assert _retr(other, "vanish.bin") == data
    update = _caught_up(proxy)["update"]
    # The vanished client's RETR reaches the follower if the leader answered it before the
    # proxy saw the client leave (else the follower is not sent a read nobody waits for).
    cut = update["expected_by_rule"].get("builtin:transfer-cut", 0)
    assert update["divergences"] == 0 and update["transfers_compared"] == 1 + cut, update
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["divergences"] == 0, done
    assert _retr(other, "vanish.bin") == data
    other.quit()


def test_garbage_on_the_control_channel_during_an_update(proxy) -> None:
    """Garbage during an update, before and after login, gets vsftpd's own answers (the same
    from both versions: no divergence); a line over the limit gets the proxy's 500 and a close,
    on both versions' sessions, with no failure; another session goes on and the update is
    still in MVE."""
    other = _client(proxy)
    _update(proxy)
    with socket.create_connection((HOST, proxy.port), timeout=10,
                                  source_address=(CLIENT, 0)) as raw:
        assert raw.recv(1000).startswith(b"220")
        raw.sendall(b"\x01\x02 garbage \xfe\r\n")
        assert raw.recv(1000).startswith(b"530 ")  # vsftpd: not logged in
    logged = _client(proxy)
    assert logged.sendcmd("NOOP").startswith("200")
    with pytest.raises(ftplib.error_perm, match=r"^500"):
        logged.sendcmd("\x01FROBNICATE \xfe")
    raw = logged.sock
    raw.sendall(b"X" * 100_000 + b"\r\n")
    line = logged.getline()
    assert line.startswith("500 Input line too long."), line
    logged.close()
    assert other.sendcmd("NOOP").startswith("200")
    assert other.nlst() is not None
    status = _caught_up(proxy)
    assert status["state"] == "mve", status
    assert status["update"]["divergences"] == 0, status["update"]
    other.quit()
    _end(proxy, promote=False)


def test_refused_active_transfer_then_quit(proxy) -> None:
    """An active-mode upload both versions refuse (553: vsftpd's root is not writable), the
    client quitting at once: the follower, which runs behind, still gets the PORT before the
    STOR, so its replies stay paired with the requests (its 425 to a STOR without PORT was
    taken for the PORT's reply, then the update timed out on the follower)."""
    _update(proxy)
    for i in range(8):
        ftp = _client(proxy, "port")
        ftp.storbinary(f"STOR refused-{i}.bin", io.BytesIO(b"1"))
        with pytest.raises(ftplib.error_perm, match=r"^553"):
            ftp.storbinary(f"STOR /refused-{i}.bin", io.BytesIO(b"2"))
        assert ftp.sendcmd("NOOP").startswith("200")
        ftp.quit()
    status = _caught_up(proxy)
    assert status["state"] == "mve", status
    assert status["update"]["divergences"] == 0, status["update"]
    _end(proxy, promote=False)


def test_listing_dates_are_expected_differences(proxy) -> None:
    """Two listings that differ only by a file's time (the follower wrote it later) are an
    expected divergence under configs/ftp.toml's list-dates rule; NLST compares equal."""
    ftp = _client(proxy)
    ftp.storbinary("STOR dated.bin", io.BytesIO(b"x" * 100))
    leader, follower = _update(proxy)
    os.utime(_root(proxy, follower) / "pub" / "dated.bin", (1e9, 1e9))  # 2001
    listing: list[str] = []
    ftp.retrlines("LIST dated.bin", listing.append)
    assert listing[0].endswith(" dated.bin") and " 2001 " not in listing[0]
    assert ftp.nlst("dated.bin") == ["dated.bin"]
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["expected_by_rule"].get("list-dates") == 1, \
        update
    done = _end(proxy, promote=False)
    assert done["last_update"]["outcome"] == "rolled-back" and done["serving"] == leader
    ftp.quit()


def _slow_download(ftp: ftplib.FTP, name: str, out: dict) -> threading.Thread:
    def run() -> None:
        got = hashlib.sha256()

        def take(chunk: bytes) -> None:
            got.update(chunk)
            time.sleep(0.002)
        ftp.retrbinary(f"RETR {name}", take, blocksize=32 * 1024)
        out["sha"] = got.hexdigest()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("promote", [True, False])
def test_transfer_under_way_when_the_update_ends(proxy, promote: bool) -> None:
    """A download still streaming when a cutover (or a rollback) is asked for completes whole:
    a cutover waits for it (and compares it), a rollback lets the leader finish it."""
    ftp = _client(proxy)
    data = _blob("long", 8 * 1024 * 1024)
    ftp.storbinary("STOR long.bin", io.BytesIO(data))
    leader, follower = _update(proxy)
    out: dict = {}
    thread = _slow_download(ftp, "long.bin", out)
    time.sleep(0.1)
    done = _end(proxy, promote)
    thread.join(30)
    assert out["sha"] == _sha(data)
    assert done["last_update"]["outcome"] == ("cutover" if promote else "rolled-back"), done
    assert done["divergences"] == 0 and done["serving"] == (follower if promote else leader)
    assert _retr(ftp, "long.bin") == data
    ftp.quit()


@pytest.mark.parametrize("mode", ["pasv", "port"])
def test_channel_set_up_before_the_cutover_used_after(proxy, mode: str) -> None:
    """PASV (or PORT) answered during the update, its transfer asked for after the cutover:
    the channel goes to the version that serves then. Before it, a PASV never used."""
    ftp = _client(proxy, mode)
    data = _blob("across" + mode, 200 * 1024 + 1)
    ftp.storbinary(f"STOR across-{mode}.bin", io.BytesIO(data))
    _, follower = _update(proxy)
    ftp.sendcmd("PASV")  # never used
    if mode == "pasv":
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        conn = socket.create_connection((host, port), timeout=10,
                                            source_address=(CLIENT, 0))
    else:
        listener = socket.create_server((CLIENT, 0))
        listener.settimeout(10)
        ftp.sendport(CLIENT, listener.getsockname()[1])
    _caught_up(proxy)
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["serving"] == follower, done
    assert ftp.sendcmd(f"RETR across-{mode}.bin").startswith("150")
    if mode == "port":
        conn, _ = listener.accept()
        listener.close()
    got = bytearray()
    while chunk := conn.recv(65536):
        got += chunk
    conn.close()
    assert ftp.voidresp().startswith("226") and bytes(got) == data
    ftp.quit()


def test_keep_old_cutover_old_version_follows_transfers(tmp_path) -> None:
    """``after_cutover = "keep-old"``: after the cutover v1 follows v2, transfers go on being
    run on both and compared (v2 now leading) and both roots stay equal. A PASV answered before
    the cutover (v1 leading) and used after it is v2's transfer: the client gets v2's bytes,
    and v1's other ones (altered in its root) are a divergence, which ends v1's following."""
    path = relocated("ftp.toml", tmp_path)
    text = path.read_text().replace("warmup_seconds = 30.0", "warmup_seconds = 600.0")
    text = text.replace('after_cutover = "stop-old"', 'after_cutover = "keep-old"')
    path.write_text(text.replace("warmup_requests = 200", "warmup_requests = 1000000"))
    with running(path) as proxy:
        early, ftp = _client(proxy), _client(proxy, "port")
        data = _blob("keep", 500 * 1024 + 9)
        ftp.storbinary("STOR keep.bin", io.BytesIO(data))
        _update(proxy)
        host, port = ftplib.parse227(early.sendcmd("PASV"))
        _caught_up(proxy)
        proxy.call(proxy.service.promote)
        kept = poll_until(lambda: _status(proxy),
                          lambda s: s["state"] == "mve" and s["leader"]["version"] == "v2",
                          30, "v1 following v2")
        assert kept["follower"]["version"] == "v1"
        after = _blob("after", 700 * 1024 + 1)
        ftp.storbinary("STOR after.bin", io.BytesIO(after))
        assert _retr(ftp, "after.bin") == after
        listing: list[str] = []
        ftp.retrlines("LIST", listing.append)
        update = _caught_up(proxy)["update"]
        assert update["divergences"] == 0 and update["compared"] >= 8, update
        roots = [_tree(_root(proxy, name) / "pub") for name in ("v1", "v2")]
        assert roots[0] == roots[1] and roots[0]["after.bin"] == _sha(after)
        (_root(proxy, "v1") / "pub" / "keep.bin").write_bytes(data[::-1])
        with socket.create_connection((host, port), timeout=10,
                                            source_address=(CLIENT, 0)) as conn:
            assert early.sendcmd("RETR keep.bin").startswith("150")
            got = bytearray()
            while chunk := conn.recv(65536):
                got += chunk
        assert early.voidresp().startswith("226") and bytes(got) == data
        done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                          "v1 to stop following")
        reason = done["last_update"]["reason"]
        assert done["serving"] == "v2" and done["update"]["divergences"] == 1, done
        assert reason.startswith("v1 stopped following: unexpected divergence on RETR"), done
        assert _retr(ftp, "keep.bin") == data
        early.quit()
        ftp.quit()
