"""lftp, the third client issue 13 names, MLSD/MLST (which vsftpd does not implement) and ABOR
(ftplib's ``abort()``), through twinproxy in SINGLE mode and during an update of vsftpd
(configs/ftp.toml as shipped, relocated). lftp runs passive and active.

lftp is a client of its own habits: it asks FEAT, tries ``AUTH TLS`` first (vsftpd without
TLS answers ``530``, the proxy ``534``: lftp goes on in plain FTP after either), sends absolute
``CWD`` paths, ``SITE UTIME`` after an upload, ``MDTM``/``SIZE`` before a download, and ``ABOR``
when it stops a transfer early. The same script (login, ls, put, mkdir, mv, get, rm, rmdir) runs
directly against vsftpd and through the proxy, and gets the same output and the same files (by
hash). The client binds 127.0.0.3 (``net:socket-bind-ipv4``): vsftpd refuses a data connection
from any host but its control connection's peer, so through the proxy a transfer works only if
the proxy carries it.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.proxyrun import running
from tests.test_proxy_ftp_update_data import (
    CLIENT,
    HOST,
    _blob,
    _caught_up,
    _end,
    _root,
    _tree,
    held_in_mve,
)
from tests.test_proxy_ftp_update_data import _update as _start_update

pytestmark = pytest.mark.skipif(shutil.which("lftp") is None, reason="lftp is not installed")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with running(held_in_mve(tmp_path_factory.mktemp("ftplftp"))) as running_proxy:
        yield running_proxy


def _lftp(port: int, mode: str, work: Path, top: str) -> tuple[int, str, dict[str, str]]:
    """Runs the script against ``HOST:port``: (exit status, output with dates taken out,
    {downloaded file: sha256})."""
    out = work / "got"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    settings = ["set net:socket-bind-ipv4 " + CLIENT, "set net:max-retries 1",
                "set net:timeout 10", "set xfer:clobber on", "set cmd:fail-exit on",
                f"set ftp:passive-mode {'on' if mode == 'passive' else 'off'}"]
    script = [
        f"open ftp://anonymous:x@{HOST}:{port}", "cd pub", f"mkdir {top}", f"cd {top}",
        f"put {work / 'up.bin'} -o a.bin", "put " + str(work / "up.txt") + " -o t.txt",
        "ls", "mkdir sub", "mv a.bin sub/b.bin", "cls -1 sub", f"get sub/b.bin -o {out}/b.bin",
        f"get t.txt -o {out}/t.txt", "rm sub/b.bin", "rm t.txt", "rmdir sub", "cd ..",
        f"rmdir {top}", "cls -1",
    ]
    done = subprocess.run(["lftp", "-c", "; ".join(settings + script)], capture_output=True,
                          text=True, timeout=60)
    text = re.sub(r"\b[A-Z][a-z]{2} [ \d]\d (?: \d{4}|\d\d:\d\d)\b", "(date)",
                  done.stdout + done.stderr)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
    return done.returncode, text, files


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_lftp_as_directly_in_single_mode_and_during_an_update(proxy, tmp_path, mode) -> None:
    (tmp_path / "up.bin").write_bytes(_blob("lftp" + mode, 2 * 1024 * 1024 + 5))
    (tmp_path / "up.txt").write_bytes(b"one\ntwo\r\nthree\n" * 100)
    top = f"lftp-{mode}"
    direct = _lftp(proxy.service.serving.address[1], mode, tmp_path, top)
    assert direct[0] == 0, direct[1]
    assert direct[2]["b.bin"] == hashlib.sha256((tmp_path / "up.bin").read_bytes()).hexdigest()
    assert "a.bin" in direct[1] and "b.bin" in direct[1] and top not in direct[1].split()[-3:]
    assert _lftp(proxy.port, mode, tmp_path, top) == direct
    leader, follower = _start_update(proxy)
    assert _lftp(proxy.port, mode, tmp_path, top) == direct
    update = _caught_up(proxy)["update"]
    # 2 uploads, 2 downloads, 4 listings (the last cls: LIST, empty, then NLST), each run on
    # both versions and compared
    assert update["divergences"] == 0 and update["transfers_compared"] == 8, update
    assert _tree(_root(proxy, leader) / "pub") == _tree(_root(proxy, follower) / "pub")
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["divergences"] == 0, done
    assert done["serving"] == follower


def _mlsd_replies(port: int) -> list[str]:
    """MLSD (with a data connection set up, as a client would) and MLST, and the session after
    them: what vsftpd, which implements neither, answers."""
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, port, source_address=(CLIENT, 0))
    got = [ftp.login()]
    for command in ("MLSD", "MLSD pub", "MLST", "MLST pub", "OPTS MLST type;size;"):
        try:
            got.append(ftp.retrlines(command, got.append) if command.startswith("MLSD")
                       else ftp.sendcmd(command))
        except ftplib.Error as exc:
            got.append(str(exc))
    got.append(ftp.sendcmd("PWD"))
    got.append(ftp.quit())
    return got


def test_mlsd_and_mlst_as_directly(proxy) -> None:
    """vsftpd has no MLSD or MLST (``500 Unknown command.``): through the proxy a client gets
    the very same replies, in SINGLE mode and during an update (where the follower's are
    compared: no divergence), and its session goes on."""
    direct = _mlsd_replies(proxy.service.serving.address[1])
    assert direct[1:6] == ["500 Unknown command."] * 4 + ["501 Option not understood."], direct
    assert _mlsd_replies(proxy.port) == direct
    _start_update(proxy)
    assert _mlsd_replies(proxy.port) == direct
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["compared"] >= 8, update
    done = _end(proxy, promote=False)
    assert done["last_update"]["outcome"] == "rolled-back" and done["divergences"] == 0, done


def _abort(port: int, name: str, how: str) -> list:
    """A download aborted with ftplib's ``abort()`` (ABOR sent as urgent data): after reading a
    little and closing the data connection (``closed``, as curl does when interrupted), or
    while still reading it (``reading``); then the second reply the abort brings, more
    commands, and the whole file again."""
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, port, source_address=(CLIENT, 0))
    ftp.login()
    conn = ftp.transfercmd(f"RETR pub/{name}")
    assert len(conn.recv(65536)) > 0
    drained = threading.Thread(target=lambda: [_ for _ in iter(lambda: conn.recv(1 << 20), b"")])
    if how == "closed":
        conn.close()
    else:
        drained.start()
    got = [ftp.abort()[:3], ftp.getresp()[:3]]  # (the transfer's reply, then the abort's)
    if how == "reading":
        drained.join(30)
    conn.close()
    got += [ftp.sendcmd("NOOP"), ftp.sendcmd("PWD")]
    body = io.BytesIO()
    got.append(ftp.retrbinary(f"RETR pub/{name}", body.write))
    got.append(hashlib.sha256(body.getvalue()).hexdigest())
    ftp.quit()
    return got


@pytest.mark.parametrize("how", ["closed", "reading"])
def test_abort_during_an_update(proxy, how: str) -> None:
    """ABOR in the middle of a download: the client gets what it gets directly, in SINGLE
    mode and during an update. During the update the abort goes to both versions; each ends
    the transfer as it saw it (vsftpd reads ABOR only once the transfer ended: 426 if the
    client cut it, else 226, then 225), so the transfer's data is not compared and its replies
    and the abort's only loosely (``builtin:transfer-aborted``); nothing diverges and the
    update cuts over."""
    name = f"abort-{how}.bin"
    data = _blob(name, 16 * 1024 * 1024)
    (_root(proxy, proxy.service.serving.name) / "pub" / name).write_bytes(data)
    direct = _abort(proxy.service.serving.address[1], name, how)
    assert direct[:2] == (["426", "225"] if how == "closed" else ["226", "225"]), direct
    assert direct[-1] == hashlib.sha256(data).hexdigest()
    assert _abort(proxy.port, name, how) == direct
    _, follower = _start_update(proxy)
    assert _abort(proxy.port, name, how) == direct
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["transfers_compared"] == 2, update
    # closed: the leader's transfer cut (426), the follower's whole (226), both expected
    aborted = update["expected_by_rule"].get("builtin:transfer-aborted", 0)
    assert aborted == (1 if how == "closed" else 0), update
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["serving"] == follower, done
    assert done["divergences"] == 0, done
    assert _abort(proxy.port, name, how) == direct  # (on the new version)


def test_curl_range_aborts_during_an_update(proxy, tmp_path) -> None:
    """curl asked for the first bytes of a file (``-r``) stops reading, closes the data
    connection and sends ABOR: it gets the same bytes and exit status through the proxy as
    directly, during an update too, and the update cuts over with no divergence."""
    data = _blob("curl-range", 16 * 1024 * 1024)
    (_root(proxy, proxy.service.serving.name) / "pub" / "range.bin").write_bytes(data)

    def fetch(port: int) -> bytes:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "30", "--interface", CLIENT, "-r", "0-99999",
             f"ftp://{HOST}:{port}/pub/range.bin"], check=True, capture_output=True).stdout

    assert fetch(proxy.service.serving.address[1]) == data[:100000]
    _, follower = _start_update(proxy)
    for _ in range(3):
        assert fetch(proxy.port) == data[:100000]
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["transfers_compared"] == 3, update
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["serving"] == follower, done
