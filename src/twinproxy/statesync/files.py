"""State sync ``files``: the new version's directory starts as a copy of the old one's.

For a server whose state is its files (an FTP server's root): both versions are managed, each
in its private directory (``{dir}`` in its command), and the new one is started in a copy of
the old one's directory as it was at the sync point.

Copying a large root takes seconds (this filesystem has no reflinks: every byte is copied), and
clients must not wait for that. So the bulk of the copy is made while they work, and at the
sync point, with clients held, only what changed since is copied again (see ``docs/design.md``,
"files, and why it is exact"):

0. :meth:`FilesSync.watch`, from before the copy until the sync point: the relay shows the
   method every FTP command it sends the old version; the method notes the *name* (the last
   part of the path) of every command that writes (STOR, APPE, DELE, RNFR, RNTO, MKD, RMD,
   SITE CHMOD; an upload is noted when its command is sent, before its first byte). The proxy
   does not know how the server maps a client's path onto its directory (chroot, ``anon_root``,
   a working directory it may not have seen), so it does not try: every file of that name,
   anywhere in the root, is copied again. A command whose name cannot be told (``DELE ..``)
   marks every file.
1. :meth:`FilesSync.prepare`, clients working: the old directory is listed (type, size, times,
   mode, owner, inode of every entry), then copied whole (``cp -a --reflink=auto``) to a
   staging directory. Then rounds of catching up: list both directories again and copy what
   differs (an entry whose listing changed since the last round, one whose copy does not match,
   one whose name was noted since the round before; an entry gone is removed), until a round
   copies little. The set of names is taken and emptied at the start of a round; names of
   writes still in flight then go straight into the next set.
2. :meth:`FilesSync.at_sync_point`, clients held, nothing in flight: one more round (what the
   last moments wrote), then the staging directory is listed once more and must match the old
   one entry by entry (type, size, mode, owner, modification time): a safety check. If it does
   not, or a name was noted that could not be told, the whole directory is copied again there
   and then (the pause of the old method, rather than a wrong state).
3. :meth:`FilesSync.after_release`: the staging directory is moved into the new version's.

The pause clients see is step 2: the listings and the files written during the last round.
The update's status shows it (``pauses_ms.sync_point``), and ``sync_stats`` what each step did.

The proxy's own file in a version's directory, the server's log (``server.log``), is not
copied: the new version writes its own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import posixpath
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import trio

from twinproxy.protocols.messages import Request
from twinproxy.statesync.base import StateSync, SyncError, SyncJob, SyncPoint, Version

__all__ = ["METHOD", "Entry", "FilesSync", "listing", "written_name"]

log = logging.getLogger("twinproxy.update")

NOT_COPIED = ("server.log",)
# Commands that change a directory entry, by the name in their argument.
WRITES = frozenset({"STOR", "APPE", "DELE", "RNFR", "RNTO", "MKD", "XMKD", "RMD", "XRMD"})
EVERY = "/"  # the noted name that stands for every file (no file is named "/")
CATCH_UP_ROUNDS = 4  # rounds of copying again before the barrier, at most ...
CATCH_UP_UNTIL = 16 * 1024 * 1024  # ... until one copies fewer bytes than this
FICLONE = 0x40049409  # ioctl: make the file a copy-on-write clone of another (btrfs, XFS)
_AS_ROOT = os.geteuid() == 0


class Entry(NamedTuple):
    """What a listing knows of one directory entry (``os.lstat``)."""

    kind: int  # stat.S_IFMT
    size: int  # 0 for a directory (its size is the filesystem's business)
    mtime_ns: int
    mode: int  # permission bits
    uid: int
    gid: int
    link: str | None  # a symlink's target
    ino: int
    ctime_ns: int  # set by the kernel on every change: the copy cannot have the source's
    atime_ns: int

    def visible(self) -> tuple:
        """What a copy must have the same: type, size, modification time, mode, target, and the
        owner when the proxy runs as root (only root gives files to others)."""
        return self[:4] + (self.link,) + ((self.uid, self.gid) if _AS_ROOT else ())

    def changed(self) -> tuple:
        """What changes when anything writes the entry (not the access time: a read)."""
        return self[:9]


def listing(root: str) -> dict[str, Entry]:
    """Every entry under ``root`` (relative path -> :class:`Entry`), without the top level's
    :data:`NOT_COPIED`. An entry that goes while it is listed is left out."""
    out: dict[str, Entry] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as found:
                entries = list(found)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise SyncError(f"listing {os.path.join(root, rel)}: {exc}") from exc
        for item in entries:
            path = posixpath.join(rel, item.name) if rel else item.name
            if not rel and item.name in NOT_COPIED:
                continue
            try:
                st = item.stat(follow_symlinks=False)
                kind = stat.S_IFMT(st.st_mode)
                link = os.readlink(item.path) if kind == stat.S_IFLNK else None
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SyncError(f"listing {item.path}: {exc}") from exc
            out[path] = Entry(kind, 0 if kind == stat.S_IFDIR else st.st_size, st.st_mtime_ns,
                              stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, link, st.st_ino,
                              st.st_ctime_ns, st.st_atime_ns)
            if kind == stat.S_IFDIR:
                todo.append(path)
    return out


def written_name(request: Request) -> str | None:
    """The name (last part of the path) a command writes, :data:`EVERY` when it writes one
    that cannot be told, None when it writes nothing. STOU writes a name that did not exist:
    a listing shows it as new, so it needs none."""
    name = request.name
    if name in WRITES:
        path = request.args[0] if request.args else b""
    elif name == "SITE" and request.args and request.args[0][:6].upper() == b"CHMOD ":
        parts = request.args[0].split(b" ", 2)  # CHMOD mode path (the path may hold spaces)
        path = parts[2] if len(parts) == 3 else b""
    else:
        return None
    base = posixpath.basename(posixpath.normpath(path))
    if base in (b"", b".", b".."):
        return EVERY
    return os.fsdecode(base)


class Round(NamedTuple):
    """What one round of copying again did."""

    files: int  # files and links copied
    bytes: int
    removed: int  # entries removed from the copy


class FilesSync(StateSync):
    """Copy the old version's directory while clients work; at the sync point only what changed
    since (see the module's doc)."""

    prepare_step = "copying the files before the sync point"
    after_release_step = "placing the copied files"

    def __init__(self, job: SyncJob):
        super().__init__(job)
        self._staging: str | None = None
        self.names: set[str] = {EVERY}  # until a watch shows what is written, everything is
        self._in_flight: Callable[[], Iterable[Request]] | None = None
        self._base: dict[str, Entry] = {}  # the old directory as the copy was last made to match

    @classmethod
    def check(cls, leader: Version, target: Version) -> str | None:
        for version in (leader, target):
            if not version.managed:
                return (f"sync files copies the old version's directory into the new one's, so "
                        f"{version.name} must be a managed version (with a command), not an "
                        "address")
        return None

    # ---- the steps ----------------------------------------------------------------------------

    def watch(self, in_flight: Callable[[], Iterable[Request]]) -> Callable[[Request], object]:
        """Note the names the commands the relay sends the leader write (see the module's doc)."""
        self._in_flight = in_flight
        self.names = set()
        return self._note

    def _note(self, request: Request) -> None:
        name = written_name(request)
        if name is not None:
            self.names.add(name)

    async def prepare(self) -> None:
        """The whole directory copied, then copied again where it changed, clients working."""
        source = self._source()
        start = time.monotonic()
        self._staging = staging = tempfile.mkdtemp(prefix="twinproxy-files-")
        self._take_names()
        self._base = await trio.to_thread.run_sync(listing, source)
        await self._copy_all()
        self.stats["precopy_s"] = round(time.monotonic() - start, 3)
        self.stats["precopy_bytes"] = sum(e.size for e in self._base.values())
        self.stats["precopy_files"] = len(self._base)
        rounds = 0
        while rounds < CATCH_UP_ROUNDS:
            done = await self._catch_up(self._take_names())
            rounds += 1
            if done.bytes < CATCH_UP_UNTIL:
                break
        self.stats["catch_up_rounds"] = rounds
        self.stats["catch_up_s"] = round(time.monotonic() - start - self.stats["precopy_s"], 3)
        log.info("update %d: %s copied to %s before the sync point in %.2fs (%d files, %d "
                 "bytes), then %d round(s) of catching up in %.2fs", self.job.number, source,
                 staging, self.stats["precopy_s"], len(self._base),
                 self.stats["precopy_bytes"], rounds, self.stats["catch_up_s"])
        return None

    async def at_sync_point(self, point: SyncPoint) -> None:
        """Clients held: what changed since the last round, copied again; then checked."""
        source = self._source()
        if self._staging is None:  # (prepare did not run: nothing was copied yet)
            self._staging = tempfile.mkdtemp(prefix="twinproxy-files-")
            self.names = {EVERY}
        start = time.monotonic()
        names = self._take_names(held=True)
        why = None
        if EVERY in names:
            why = "a command wrote a name that could not be told"
        else:
            done = await self._catch_up(names)
            self.stats.update(sync_point_files=done.files, sync_point_bytes=done.bytes,
                              sync_point_removed=done.removed)
            why = await trio.to_thread.run_sync(self._differs)
        if why is not None:
            log.warning("update %d: copying all of %s again at the sync point: %s",
                        self.job.number, source, why)
            self.stats["full_copy"] = 1
            await self._copy_all(again=True)
            again = await trio.to_thread.run_sync(self._differs)
            if again is not None:
                raise SyncError(f"the copy of {source} differs from it: {again}")
        self.stats["sync_point_s"] = round(time.monotonic() - start, 3)
        log.info("update %d: at the sync point, %s files (%s bytes) copied again, %s removed, "
                 "the copy checked, in %.3fs", self.job.number,
                 self.stats.get("sync_point_files", "all"), self.stats.get("sync_point_bytes", "?"),
                 self.stats.get("sync_point_removed", 0), self.stats["sync_point_s"])

    async def after_release(self, workdir: str) -> None:
        staging = self._staging
        assert staging is not None

        def place() -> None:
            for name in os.listdir(staging):
                shutil.move(os.path.join(staging, name), os.path.join(workdir, name))

        try:
            await trio.to_thread.run_sync(place)
        except OSError as exc:
            raise SyncError(f"placing the copy in {workdir}: {exc}") from exc

    async def aclose(self) -> None:
        if self._staging is not None:
            staging, self._staging = self._staging, None
            await trio.to_thread.run_sync(
                lambda: shutil.rmtree(staging, ignore_errors=True))

    # ---- how ----------------------------------------------------------------------------------

    def _source(self) -> str:
        source = self.job.leader_dir
        if source is None or not os.path.isdir(source):
            raise SyncError(f"the running version has no directory to copy ({source!r})")
        return source

    def _take_names(self, held: bool = False) -> set[str]:
        """The names noted since the last call; those of writes still in flight stay noted for
        the next (they may take effect after the listing that follows)."""
        names, self.names = self.names, set()
        if not held and self._in_flight is not None:
            for request in self._in_flight():
                name = written_name(request)
                if name is not None:
                    self.names.add(name)
        return names

    async def _copy_all(self, again: bool = False) -> None:
        """The whole directory, with ``cp -a`` (a reflink where the filesystem can)."""
        source, staging = self._source(), self._staging
        assert staging is not None
        if again:
            self._base = await trio.to_thread.run_sync(listing, source)
            await trio.to_thread.run_sync(_empty, staging)
        result = await trio.run_process(
            ["cp", "-a", "--reflink=auto", os.path.join(source, "."), staging],
            capture_stderr=True, check=False)
        message = result.stderr.decode(errors="replace").strip()
        for name in NOT_COPIED:
            path = os.path.join(staging, name)
            if os.path.isfile(path):
                os.unlink(path)
        if result.returncode:
            # A file that went while cp copied its directory is an error to cp and nothing to
            # this method (the next round sees it gone); anything else (a full disk) is.
            gone = all("No such file or directory" in line for line in message.splitlines())
            if again or not gone:
                raise SyncError(f"copying {source}: {message[:500]}")

    async def _catch_up(self, names: set[str]) -> Round:
        """List both directories, copy again what differs (see the module's doc)."""
        source, staging = self._source(), self._staging
        assert staging is not None
        now = await trio.to_thread.run_sync(listing, source)
        done = await trio.to_thread.run_sync(_copy_changes, source, staging, self._base, now,
                                             names)
        self._base = now
        return done

    def _differs(self) -> str | None:
        """Why the copy does not match the old directory as last listed (clients held: as it
        is), or None."""
        assert self._staging is not None
        return differs(self._base, listing(self._staging))


def differs(old: dict[str, Entry], copy: dict[str, Entry]) -> str | None:
    """The first entry where ``copy`` does not match ``old``, said in words, or None."""
    for path in sorted(old.keys() | copy.keys()):
        a, b = old.get(path), copy.get(path)
        if a is None or b is None:
            return f"{path} is {'only in the copy' if a is None else 'missing from the copy'}"
        if a.visible() != b.visible():
            return f"{path} differs: {a.visible()} in the old directory, {b.visible()} copied"
    return None


def _copy_changes(source: str, staging: str, base: dict[str, Entry], now: dict[str, Entry],
                  names: set[str]) -> Round:
    """Make ``staging`` match ``source`` as listed in ``now``: remove what went, copy again every
    file or link whose listing changed since ``base``, whose copy does not match, or whose name
    is in ``names``; then the directories' modes, owners and times. Raises SyncError when a
    file cannot be written (a full disk)."""
    staged = listing(staging)
    touched: set[str] = set()  # directories whose entries changed: their times to set again
    removed = 0
    gone_under: str | None = None
    for path in sorted(staged):
        if gone_under is not None and path.startswith(gone_under):
            continue
        entry, old = now.get(path), staged[path]
        if entry is None or entry.kind != old.kind:
            target = os.path.join(staging, path)
            try:
                if old.kind == stat.S_IFDIR:
                    shutil.rmtree(target)
                    gone_under = path + "/"
                else:
                    os.unlink(target)
            except OSError as exc:
                raise SyncError(f"removing {target}: {exc}") from exc
            removed += 1
            touched.add(posixpath.dirname(path))
            del staged[path]
    every = EVERY in names
    files = copied = 0
    for path in sorted(now):
        entry = now[path]
        target = os.path.join(staging, path)
        try:
            mine = staged.get(path)
            if entry.kind == stat.S_IFDIR:
                if mine is None:
                    os.mkdir(target)
                if mine is None or mine.visible() != entry.visible():
                    touched.add(path)
                    touched.add(posixpath.dirname(path))
                continue
            was = base.get(path)
            if not (every or mine is None or was is None or was.changed() != entry.changed()
                    or mine.visible() != entry.visible() or posixpath.basename(path) in names):
                continue
            copied += _copy_one(os.path.join(source, path), target, entry)
            files += 1
            touched.add(posixpath.dirname(path))
        except FileNotFoundError:
            continue  # it went since the listing: the next round removes it
        except OSError as exc:
            raise SyncError(f"copying {path} to {staging}: {exc}") from exc
    touched.discard("")  # (the top: moved away, its own times do not matter)
    for path in sorted((p for p in touched if p in now), reverse=True):
        try:
            _set_attributes(os.path.join(staging, path), now[path])
        except OSError as exc:
            raise SyncError(f"copying {path} to {staging}: {exc}") from exc
    return Round(files, copied, removed)


def _copy_one(source: str, target: str, entry: Entry) -> int:
    """One file or link, its mode, owner and times; the bytes copied."""
    if os.path.lexists(target):
        os.unlink(target)
    if entry.kind == stat.S_IFLNK:
        os.symlink(os.readlink(source), target)
        _set_attributes(target, entry)
        return 0
    if entry.kind != stat.S_IFREG:  # (a fifo or a device in an FTP root: rare; cp knows them)
        os.mknod(target, entry.mode | entry.kind, os.lstat(source).st_rdev)
        _set_attributes(target, entry)
        return 0
    size = 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            size = os.fstat(src.fileno()).st_size
        except OSError:
            while True:
                sent = os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30)
                if not sent:
                    break
                size += sent
    _set_attributes(target, entry)
    return size


def _set_attributes(path: str, entry: Entry) -> None:
    link = entry.kind == stat.S_IFLNK
    if os.geteuid() == 0:
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
    if not link:
        os.chmod(path, entry.mode)
    os.utime(path, ns=(entry.atime_ns, entry.mtime_ns), follow_symlinks=False)


def _empty(directory: str) -> None:
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


METHOD = FilesSync
