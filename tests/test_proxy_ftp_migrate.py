"""configs/ftp-migrate.toml as shipped: a live update from vsftpd (v1) to Pure-FTPd (v2), two
implementations of FTP, with the rules that map their replies. Pure-FTPd is Debian's package
unpacked into .cache/pure-ftpd by scripts/setup.sh (installing it would remove vsftpd); the test
points the config there. The client connects from 127.0.0.3, so only the proxy can carry its
data connections (both servers refuse a data connection from another host than the control
connection's peer, the proxy).

What a user checks: the same session (login, listings, uploads, downloads, renames, deletes,
directories, sizes, times) runs on v1 alone, then during the update on both servers, compared
with no divergence the rules do not explain; the update cuts over, Pure-FTPd's root equals
vsftpd's file by file, and a client then gets from Pure-FTPd what it got from vsftpd, but for
the "." and ".." Pure-FTPd's NLST names.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
from pathlib import Path

import pytest

from tests.proxyrun import poll_until, running
from tests.test_configs_shipped import relocated
from tests.test_proxy_ftp_update_data import CLIENT, HOST, _caught_up, _root, _status

PURE = Path(__file__).resolve().parent.parent / ".cache" / "pure-ftpd" / "usr" / "sbin"
pytestmark = pytest.mark.skipif(not (PURE / "pure-ftpd").exists(),
                                reason="pure-ftpd is not unpacked (scripts/setup.sh)")


def _config(tmp: Path) -> Path:
    path = relocated("ftp-migrate.toml", tmp)
    text = path.read_text().replace("/usr/sbin/pure-ftpd", str(PURE / "pure-ftpd"))
    text = text.replace("warmup_seconds = 30.0", "warmup_seconds = 600.0")
    text = text.replace("warmup_requests = 200", "warmup_requests = 1000000")
    path.write_text(text)
    return path


def _session(port: int, tag: str, data: bytes, passive: bool = True) -> list:
    """What a client does and sees (the parts both servers must agree on)."""
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, port, source_address=(CLIENT, 0))
    ftp.login()
    ftp.set_pasv(passive)
    ftp.cwd("pub")
    seen: list = [ftp.pwd()]
    ftp.mkd(f"d-{tag}")
    ftp.cwd(f"d-{tag}")
    ftp.storbinary("STOR a.bin", io.BytesIO(data))
    ftp.storlines("STOR t.txt", io.BytesIO(b"one\ntwo\n"))
    seen.append(ftp.size("a.bin"))
    ftp.sendcmd("MDTM a.bin")
    got = io.BytesIO()
    ftp.retrbinary("RETR a.bin", got.write)
    seen.append(hashlib.sha256(got.getvalue()).hexdigest())
    got = io.BytesIO()
    ftp.retrbinary("RETR a.bin", got.write, rest=1000)
    seen.append(len(got.getvalue()))
    lines: list[str] = []
    ftp.retrlines("RETR t.txt", lines.append)
    seen.append(lines)
    seen.append(sorted(ftp.nlst()))
    listing: list[str] = []
    ftp.retrlines("LIST", listing.append)
    seen.append(len(listing))
    ftp.mkd("sub")
    for refused in (lambda: ftp.rename("t.txt", "u.txt"), lambda: ftp.delete("t.txt"),
                    lambda: ftp.rmd("sub"),
                    lambda: ftp.storbinary("STOR a.bin", io.BytesIO(b"over"))):
        with pytest.raises(ftplib.error_perm) as caught:
            refused()
        seen.append(str(caught.value)[:1])  # (a refusal: 553 or 550, see the config)
    ftp.sendcmd("NOOP")
    ftp.cwd("..")
    seen.append(ftp.pwd())
    ftp.quit()
    return seen


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def test_vsftpd_to_pureftpd(tmp_path) -> None:
    data = bytes(range(256)) * 4096 + b"tail"
    with running(_config(tmp_path)) as proxy:
        direct = _session(proxy.port, "single", data)
        proxy.call_async(proxy.service.update, "v2")
        poll_until(lambda: _status(proxy), lambda s: s["state"] == "mve", 30, "MVE")
        assert _session(proxy.port, "mve", data) == direct
        assert _session(proxy.port, "active", data, passive=False) == direct
        update = _caught_up(proxy)["update"]
        found = proxy.call(lambda: [repr(d) for d in proxy.service.divergences.since(0, 20)])
        assert update["divergences"] == 0, (update, found)
        assert update["transfers_compared"] >= 10, update
        tree = _tree(_root(proxy, "v1"))  # (v1's directory goes when it stops)
        proxy.call(proxy.service.promote)
        done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                          "the cutover")
        assert done["last_update"]["outcome"] == "cutover" and done["serving"] == "v2", done
        assert _tree(_root(proxy, "v2")) == tree and len(tree) >= 12, tree
        # On Pure-FTPd alone: the same, but for the "." and ".." its NLST names (the rule
        # listing-words says so: during the update they were an expected difference).
        after = _session(proxy.port, "after", data)
        names = direct.index(["a.bin", "t.txt"])
        assert after[names] == [".", "..", "a.bin", "t.txt"]
        assert after[:names] + after[names + 1:] == direct[:names] + direct[names + 1:]
