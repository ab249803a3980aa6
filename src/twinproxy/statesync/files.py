"""State sync ``files``: the new version's directory starts as a copy of the old one's.

For a server whose state is its files (an FTP server's root): both versions are managed, each
in its private directory (``{dir}`` in its command), and the new one is started in a copy of
the old one's directory as it was at the sync point.

How the copy is kept exact. The copy is made in :meth:`at_sync_point`, while every client is
held at a reply boundary: no command is running in the old version (an upload's final reply
comes after its last byte is written), and none starts until the copy is done, so nothing
written during the copy is lost or doubled; what clients send after the sync point goes to
both versions, as for every method. The price is that clients wait for the copy: the lifecycle
reports that pause (``pauses_ms.sync_point`` in the update's status, and the ``sync_point``
event). ``cp --reflink=auto`` makes it a copy-on-write clone where the filesystem allows
(btrfs, XFS), which takes about as long as listing the files; elsewhere every byte is copied.
The copy goes to a staging directory next to the new version's, and is moved into place in
:meth:`after_release`.

The proxy's own file in a version's directory, the server's log (``server.log``), is not
copied: the new version writes its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import trio

from twinproxy.statesync.base import StateSync, SyncError, SyncJob, SyncPoint, Version

__all__ = ["METHOD", "FilesSync"]

NOT_COPIED = ("server.log",)


class FilesSync(StateSync):
    """Copy the old version's directory at the sync point; the new version starts in it."""

    after_release_step = "placing the copied files"

    def __init__(self, job: SyncJob):
        super().__init__(job)
        self._staging: str | None = None

    @classmethod
    def check(cls, leader: Version, target: Version) -> str | None:
        for version in (leader, target):
            if not version.managed:
                return (f"sync files copies the old version's directory into the new one's, so "
                        f"{version.name} must be a managed version (with a command), not an "
                        "address")
        return None

    async def prepare(self) -> None:
        source = self.job.leader_dir
        if source is None or not os.path.isdir(source):
            raise SyncError(f"the running version has no directory to copy ({source!r})")
        return None

    async def at_sync_point(self, point: SyncPoint) -> None:
        source = self.job.leader_dir
        assert source is not None
        self._staging = staging = tempfile.mkdtemp(prefix="twinproxy-files-")
        result = await trio.run_process(
            ["cp", "-a", "--reflink=auto", os.path.join(source, "."), staging],
            capture_stderr=True, check=False)
        if result.returncode:
            raise SyncError(f"copying {source}: "
                            f"{result.stderr.decode(errors='replace').strip()[:500]}")
        for name in NOT_COPIED:
            path = os.path.join(staging, name)
            if os.path.isfile(path):
                os.unlink(path)

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


METHOD = FilesSync
