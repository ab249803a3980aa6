"""vsftpd through twinproxy when the server dies: the FTP client gets 421, never a hang, and is
served again after the restart. The config is configs/ftp.toml as shipped, relocated."""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import os
import signal
from pathlib import Path

import pytest

from tests.proxyrun import poll_until, running
from tests.test_configs_shipped import relocated
from twinproxy.backends import descendants


def test_vsftpd_killed_gives_421_then_recovery(tmp_path) -> None:
    path = relocated("ftp.toml", tmp_path)
    # A restart back-off long enough to see the server down before it is back.
    path.write_text(path.read_text().replace("[versions.v1]\n",
                                             "[versions.v1]\nrestart_backoff = 5\n", 1))
    with running(path) as proxy:
        connected = ftplib.FTP(timeout=10)
        connected.connect("127.0.0.1", proxy.port)
        connected.login()
        assert connected.nlst() == ["pub"]
        backend = proxy.service.serving
        old_pid = backend.pid
        # vsftpd serves each session in a process of its own, which outlives the listener: kill
        # them all, as a crash of the whole server would.
        for pid in [old_pid, *descendants(old_pid)]:
            with contextlib.suppress(ProcessLookupError):  # (a session's process that ended
                os.kill(pid, signal.SIGKILL)               # with its parent meanwhile)
        poll_until(lambda: backend.up, lambda up: not up, 10, "v1 to be seen down")
        # The session that was connected gets 421 for its next command (ftplib's timeout would
        # raise on a hang).
        with pytest.raises(ftplib.error_temp, match=r"^421 twinproxy: v1 closed the connection"):
            connected.voidcmd("NOOP")
        connected.close()
        # A new client: 421 as its greeting, and closed.
        with pytest.raises(ftplib.error_temp,
                           match=r"^421 twinproxy: v1 is unavailable, try again later"):
            ftplib.FTP(timeout=10).connect("127.0.0.1", proxy.port)

        def served() -> bool:
            ftp = ftplib.FTP(timeout=10)
            try:
                ftp.connect("127.0.0.1", proxy.port)
                ftp.login()
                return ftp.nlst() == ["pub"]
            except (ftplib.Error, OSError):
                return False
            finally:
                ftp.close()

        poll_until(served, bool, 60, "vsftpd to be back", interval=0.2)
        assert backend.pid not in (None, old_pid) and backend.restarts == 1


def test_update_replays_sessions_and_cuts_over(tmp_path) -> None:
    """configs/ftp.toml updated from v1 to v2 (sync "none": both roots start empty) while a
    logged-in client works in a directory. Its session is replayed on v2 (login, TYPE, working
    directory; before the replay was built, v2's connection was not even logged in), every
    command agrees on both during MVE, and after the cutover the same connection goes on in v2,
    while a new client gets v2's banner. This session runs control commands only (transfers
    during an update: tests/test_proxy_ftp_update_data.py)."""
    path = relocated("ftp.toml", tmp_path)
    text = path.read_text().replace('sync = "files"', 'sync = "none"')
    text = text.replace("warmup_seconds = 30.0", "warmup_seconds = 0.5")
    path.write_text(text.replace("warmup_requests = 200", "warmup_requests = 8"))
    with running(path) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        ftp = ftplib.FTP(timeout=10)
        ftp.connect("127.0.0.1", proxy.port)
        assert "v2" not in ftp.getwelcome()
        ftp.login()
        ftp.sendcmd("TYPE I")
        ftp.cwd("pub")  # (in both roots: with sync "none", v2's root holds only pub/)
        proxy.call_async(proxy.service.update, "v2")
        poll_until(status, lambda s: s["state"] == "mve", 30, "MVE")
        replies = []
        for i in range(6):
            replies.append(ftp.sendcmd("PWD"))
            replies.append(ftp.sendcmd(f"MKD d{i}"))
            replies.append(ftp.sendcmd(f"RNFR d{i}"))
            replies.append(ftp.sendcmd(f"RNTO e{i}"))
            replies.append(ftp.sendcmd(f"RMD e{i}"))
        assert replies[:2] == ['257 "/pub" is the current directory', '257 "/pub/d0" created']
        done = poll_until(status, lambda s: s["state"] == "single", 30, "the cutover")
        assert done["last_update"]["outcome"] == "cutover", done
        assert done["serving"] == "v2" and done["divergences"] == 0
        # The same connection, now on v2: still logged in, in /pub.
        assert ftp.sendcmd("PWD") == '257 "/pub" is the current directory'
        assert ftp.sendcmd("MKD after").startswith('257 "/pub/after"')
        ftp.close()
        fresh = ftplib.FTP(timeout=10)
        fresh.connect("127.0.0.1", proxy.port)
        try:
            assert fresh.getwelcome() == "220 twinproxy example FTP service, v2"
        finally:
            fresh.close()


def _tree(root: Path, skip: str = "\0") -> dict[str, str]:
    """Every file and directory under ``root``: its content's hash, or "dir" (files whose name
    begins with ``skip`` left out)."""
    out = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.name.startswith(skip):
            continue
        out[name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_update_with_files_sync_gives_v2_the_same_root(tmp_path) -> None:
    """configs/ftp.toml as shipped (sync "files"): files uploaded to v1 before the update are
    in v2's copy of the root (commands during MVE that need them agree on both), the pause of
    the copy is reported, and after the cutover v2's root equals v1's as it was just before,
    file by file, and serves the same bytes."""
    path = relocated("ftp.toml", tmp_path)
    text = path.read_text().replace("warmup_seconds = 30.0", "warmup_seconds = 60.0")
    path.write_text(text)
    blobs = {f"f{i}.bin": os.urandom(1000 * 37 ** i) for i in range(4)}  # 1 KB to 50 MB
    with running(path) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        ftp = ftplib.FTP(timeout=30)
        ftp.connect("127.0.0.1", proxy.port)
        ftp.login()
        ftp.cwd("pub")
        ftp.mkd("keep")
        for name, blob in blobs.items():
            ftp.storbinary(f"STOR {name}", io.BytesIO(blob))
        proxy.call_async(proxy.service.update, "v2")
        running_now = poll_until(status, lambda s: s["state"] == "mve", 60, "MVE")
        # Each of these needs the synced files on v2, or its reply differs.
        assert ftp.size("f3.bin") == len(blobs["f3.bin"])
        ftp.rename("f1.bin", "keep/f1.bin")
        ftp.delete("f0.bin")
        ftp.mkd("keep/new")
        assert ftp.sendcmd("MDTM f2.bin").startswith("213 ")
        before = _tree(Path(proxy.service.serving.workdir) / "root")
        proxy.call(proxy.service.promote)
        done = poll_until(status, lambda s: s["state"] == "single", 60, "the cutover")
        update = done["last_update"]
        assert update["outcome"] == "cutover" and done["divergences"] == 0, done
        assert done["serving"] == "v2"
        assert done["update"]["pauses_ms"]["sync_point"] > 0, done["update"]
        after = _tree(Path(proxy.service.serving.workdir) / "root")
        assert after == before and "pub/keep/f1.bin" in after and "pub/f0.bin" not in after
        got = io.BytesIO()
        ftp.retrbinary("RETR f3.bin", got.write)  # the same connection, now served by v2
        assert got.getvalue() == blobs["f3.bin"]
        ftp.close()
        assert running_now["state"] == "mve"


COPYING = "copying the files before the sync point"


def _step(status: dict) -> str | None:
    return ((status.get("update") or {}).get("sync") or {}).get("step")


def test_files_sync_copies_while_clients_write_and_pauses_for_what_changed(tmp_path) -> None:
    """sync "files" with a root of 800 MB: the copy is made while clients work. A file uploaded
    and one deleted and one rewritten (the same size) while it runs, and an upload that spans
    the whole copy (its last bytes sent once the copy is done, before the sync point), are
    right in v2's root after the cutover (by hash, and v2's root equals v1's); the clients'
    pause at the sync point, past the barrier's wait for that upload's end, is shorter than the
    copy, which was not made again there."""
    path = relocated("ftp.toml", tmp_path)
    path.write_text(path.read_text().replace("warmup_seconds = 30.0", "warmup_seconds = 60.0"))
    block = os.urandom(1 << 20)
    same = [os.urandom(300_001), os.urandom(300_001)]
    new, slow = os.urandom(1_000_003), os.urandom(2_000_005)
    with running(path) as proxy:
        status = lambda: proxy.call(proxy.service.status)  # noqa: E731
        pub = Path(proxy.service.serving.workdir) / "root" / "pub"
        for i in range(8):  # written in place: faster than uploading them
            with open(pub / f"big{i}.bin", "wb") as out:
                for _ in range(100):
                    out.write(block)
        ftp = ftplib.FTP(timeout=30)
        ftp.connect("127.0.0.1", proxy.port)
        ftp.login()
        ftp.cwd("pub")
        ftp.storbinary("STOR del.bin", io.BytesIO(b"to be deleted" * 1000))
        ftp.storbinary("STOR same.bin", io.BytesIO(same[0]))
        uploader = ftplib.FTP(timeout=30)
        uploader.connect("127.0.0.1", proxy.port)
        uploader.login()
        uploader.voidcmd("TYPE I")
        data = uploader.transfercmd("STOR pub/slow.bin")
        data.sendall(slow[:1_000_000])
        proxy.call_async(proxy.service.update, "v2")
        poll_until(status, lambda s: _step(s) == COPYING, 30, "the copy to begin", interval=0.01)
        ftp.delete("del.bin")
        ftp.storbinary("STOR new.bin", io.BytesIO(new))
        ftp.storbinary("STOR same.bin", io.BytesIO(same[1]))
        assert _step(status()) == COPYING, "the copy ended before the writes: a larger root"
        poll_until(status, lambda s: _step(s) != COPYING, 60, "the copy to end")
        data.sendall(slow[1_000_000:])
        data.close()
        assert uploader.voidresp().startswith("226")
        poll_until(status, lambda s: s["state"] == "mve", 60, "MVE")
        before = _tree(Path(proxy.service.serving.workdir) / "root", skip="big")
        proxy.call(proxy.service.promote)
        done = poll_until(status, lambda s: s["state"] == "single", 60, "the cutover")
        assert done["last_update"]["outcome"] == "cutover" and done["divergences"] == 0, done
        root = Path(proxy.service.serving.workdir) / "root"
        after = _tree(root, skip="big")
        sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
        assert after == before and "pub/del.bin" not in after
        assert after["pub/new.bin"] == sha(new) and after["pub/slow.bin"] == sha(slow)
        assert after["pub/same.bin"] == sha(same[1])
        assert [(root / "pub" / f"big{i}.bin").stat().st_size for i in range(8)] == [100 << 20] * 8
        update = done["update"]
        stats = update["sync_stats"]
        assert "full_copy" not in stats and stats["precopy_bytes"] > 800 << 20, stats
        assert stats["sync_point_files"] >= 1 and stats["sync_point_bytes"] < 10 << 20, stats
        pauses = update["pauses_ms"]
        assert pauses["sync_point"] - pauses["barrier"] < stats["precopy_s"] * 1000, update
        ftp.close()
        uploader.close()
