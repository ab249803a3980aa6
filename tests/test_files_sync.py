"""State sync ``files`` without servers: the copy made while clients write, and what the sync
point copies again (``statesync/files.py``).

What an operator relies on: the new version's directory equals the old one's as it was at the
sync point (contents by hash, modes, times, links, empty directories), whatever was written,
removed or renamed while the bulk of it was copied; the sync point copies only what changed;
and a write the proxy cannot place makes it copy everything there rather than guess.
The same on real vsftpd, through the proxy: ``test_proxy_ftp.py``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from twinproxy.config import VersionConfig
from twinproxy.protocols.ftp.syntax import parse_request
from twinproxy.statesync import SyncJob
from twinproxy.statesync.files import EVERY, FilesSync, written_name

MANAGED = VersionConfig(name="v2", command=("vsftpd", "{dir}/vsftpd.conf"))


def _command(line: str):
    return parse_request(line.encode() + b"\r\n")


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: its type, mode, modification time, and its content's hash
    (a link: its target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_dir():
            what = "dir"
        else:
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = (what, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


@pytest.mark.parametrize(("line", "name"), [
    ("STOR a.bin", "a.bin"), ("APPE /pub/x/log.txt", "log.txt"), ("DELE ../b", "b"),
    ("RNFR old name", "old name"), ("RNTO dir/", "dir"), ("MKD new", "new"), ("XRMD gone", "gone"),
    ("SITE CHMOD 640 secret file", "secret file"), ("site chmod 600 q", "q"),
    ("DELE ..", EVERY), ("DELE /", EVERY), ("STOR", EVERY), ("RMD pub/..", EVERY),
    ("STOU", None), ("RETR a.bin", None), ("CWD pub", None), ("SITE HELP", None),
])
def test_the_name_a_command_writes(line: str, name: str | None) -> None:
    assert written_name(_command(line)) == name


def _old(tmp_path: Path) -> Path:
    old = tmp_path / "old"
    pub = old / "root" / "pub"
    (pub / "keep" / "deep").mkdir(parents=True)
    (pub / "empty").mkdir()
    for i in range(5):
        (pub / f"f{i}.bin").write_bytes(os.urandom(100_000 + i))
    (pub / "keep" / "deep" / "k.bin").write_bytes(b"k" * 1000)
    (pub / "f0.bin").chmod(0o640)
    (old / "root" / "link").symlink_to("pub/f1.bin")
    (old / "server.log").write_text("the old version's log")
    (old / "vsftpd.conf").write_text("listen=YES\n")
    return old


async def _sync(old: Path, in_flight=()) -> FilesSync:
    sync = FilesSync(SyncJob(1, ("127.0.0.1", 1), MANAGED, 5.0, leader_dir=str(old)))
    note = sync.watch(lambda: iter(in_flight))
    sync.note = note  # type: ignore[attr-defined]
    return sync


async def test_writes_during_the_copy_are_in_it_and_the_sync_point_copies_only_them(
        tmp_path) -> None:
    """After the bulk copy (clients working), files are added, removed, rewritten in place with
    the same size and time, renamed (a directory too), chmodded: at the sync point only those
    are copied again, no full copy is made, and the new directory equals the old one."""
    old = _old(tmp_path)
    pub = old / "root" / "pub"
    sync = await _sync(old)
    try:
        await sync.prepare()
        assert sync.stats["precopy_files"] == 13 and sync.stats["catch_up_rounds"] == 1
        for line in ("STOR new.bin", "DELE f2.bin", "STOR f3.bin", "RNFR keep", "RNTO kept",
                     "SITE CHMOD 600 f4.bin", "MKD made"):
            sync.note(_command(line))
        (pub / "new.bin").write_bytes(b"n" * 5000)
        (pub / "f2.bin").unlink()
        before = (pub / "f3.bin").stat()
        (pub / "f3.bin").write_bytes(os.urandom(before.st_size))  # same size ...
        os.utime(pub / "f3.bin", ns=(before.st_atime_ns, before.st_mtime_ns))  # ... same time
        (pub / "keep").rename(pub / "kept")
        (pub / "f4.bin").chmod(0o600)
        (pub / "made").mkdir()
        await sync.at_sync_point(None)
        at_sync_point = _tree(old / "root")
        (pub / "later.txt").write_text("after the sync point")  # not in the copy
        new = tmp_path / "new"
        new.mkdir()
        await sync.after_release(str(new))
    finally:
        await sync.aclose()
    assert _tree(new / "root") == at_sync_point
    assert (new / "vsftpd.conf").exists() and not (new / "server.log").exists()
    assert "full_copy" not in sync.stats, sync.stats
    # new.bin, f3.bin, f4.bin (its mode: also by its listing), kept/deep/k.bin (a new path)
    assert sync.stats["sync_point_files"] == 4, sync.stats
    assert sync.stats["sync_point_removed"] == 2, sync.stats  # f2.bin, keep (with its files)


async def test_a_name_that_cannot_be_told_copies_everything_at_the_sync_point(tmp_path) -> None:
    old = _old(tmp_path)
    sync = await _sync(old)
    try:
        await sync.prepare()
        sync.note(_command("RMD pub/.."))
        (old / "root" / "pub" / "f1.bin").write_bytes(b"changed")
        await sync.at_sync_point(None)
        new = tmp_path / "new"
        new.mkdir()
        await sync.after_release(str(new))
    finally:
        await sync.aclose()
    assert sync.stats["full_copy"] == 1
    assert _tree(new / "root") == _tree(old / "root")


async def test_a_write_in_flight_when_a_round_begins_stays_noted(tmp_path) -> None:
    """An upload under way while the copy is made is copied again at the sync point (its name is
    noted for the next round as long as its command is in flight), even if its listing shows no
    change since."""
    old = _old(tmp_path)
    sync = await _sync(old, in_flight=[_command("STOR f1.bin")])
    try:
        await sync.prepare()
        assert sync.names == {"f1.bin"}
        await sync.at_sync_point(None)
    finally:
        await sync.aclose()
    assert sync.stats["sync_point_files"] == 1 and "full_copy" not in sync.stats, sync.stats
