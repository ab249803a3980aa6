"""The sync backlog on disk: what the follower must still receive, when it is too much to hold.

While the new version loads its snapshot, clients go on, and every request they send waits for
the follower together with the leader's reply it will be compared with. A large data set under a
write-heavy load can pile up hundreds of megabytes in that time. Past ``[update] spill_bytes``
the engine moves those bytes here, as msgpack records in an unlinked temporary file (nothing is
left behind, whatever happens to the process), and reads each back when its request is sent.
``max_backlog_bytes`` still bounds the whole backlog, here and in memory.
"""

from __future__ import annotations

import os
import tempfile

import msgpack


class Spill:
    """An append-only file of records; each is read back once, in any order."""

    def __init__(self, directory: str | None = None) -> None:
        # Held for the update, closed by close(); unlinked from the start.
        self._file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115
        self._fd = self._file.fileno()
        self._end = 0
        self.records = 0  # written in all
        self.bytes = 0  # their size in all

    def put(self, parts: list[bytes]) -> tuple[int, int]:
        """Write ``parts``; returns where they are, for :meth:`take`."""
        data = msgpack.packb(parts, use_bin_type=True)
        offset = self._end
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], offset + written)
        self._end += len(data)
        self.records += 1
        self.bytes += len(data)
        return offset, len(data)

    def take(self, where: tuple[int, int]) -> list[bytes]:
        """The parts written at ``where``."""
        offset, size = where
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise OSError(f"spill file truncated at {offset}: read {len(data)} of {size} bytes")
        return msgpack.unpackb(data, raw=False)

    def close(self) -> None:
        self._file.close()
