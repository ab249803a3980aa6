"""A large request's bytes on disk during an update, written as they come, read as sent.

See :mod:`twinproxy.engine.large` for why. The relay writes a request whose value passes
``PASS_FROM`` to a :class:`Spool` (an unlinked temporary file: nothing is left behind, whatever
happens to the process), hands the engine the :class:`~twinproxy.engine.large.Spooled` view of
it, and writes it to each version a piece at a time with :class:`Reading`. The file goes when the
last of them lets go of it.

A file that cannot be written (a full disk) keeps the bytes in memory instead and says why in
``error``: the request is served all the same, and the update fails (a fault fails the update,
never a client).
"""

from __future__ import annotations

import itertools
import os
import tempfile

from twinproxy.engine.large import Extent, Spooled

_tokens = itertools.count(1)


class Spool:
    """The bytes of one large request, appended as they come (a :class:`Source`)."""

    __slots__ = ("_file", "_memory", "error", "size", "value_at", "values")

    def __init__(self, directory: str | None = None) -> None:
        self.size = 0
        self.value_at = 0  # where the (last) large value starts
        self.values = 0  # large values in the request
        self.error: str | None = None
        self._memory: bytearray | None = None
        try:
            # Closed when the last Spooled referring to it is freed; unlinked from the start.
            self._file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115
        except OSError as exc:
            self._file = None
            self._to_memory(exc)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``."""
        if self._file is not None:
            try:
                fd = self._file.fileno()
                view = memoryview(data)
                written = 0
                while written < len(view):
                    written += os.pwrite(fd, view[written:], self.size + written)
                self.size += len(view)
                return
            except OSError as exc:
                self._to_memory(exc)
        assert self._memory is not None
        self._memory += data
        self.size += len(data)

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``."""
        if self._memory is not None:
            return bytes(self._memory[offset:offset + size])
        assert self._file is not None
        data = os.pread(self._file.fileno(), size, offset)
        if len(data) != size:
            raise OSError(f"a large request's file was truncated at {offset}")
        return data

    def spooled(self, value_size: int) -> Spooled:
        """What the engine gets: the whole request so far, its value ``value_size`` bytes from
        :attr:`value_at`, and a token to stand for it in the request's words (no value when the
        request has several large ones: it cannot be rewritten then)."""
        token = b"<twinproxy: %d bytes kept on disk, #%d>" % (value_size, next(_tokens))
        value = (self, self.value_at, value_size) if self.values <= 1 else None
        return Spooled([(self, 0, self.size)], value, token)

    def _to_memory(self, exc: OSError) -> None:
        self.error = f"a large request could not be written to disk: {exc}"
        memory = bytearray()
        if self._file is not None:
            try:
                memory += os.pread(self._file.fileno(), self.size, 0)
            finally:
                self._file.close()
                self._file = None
        self._memory = memory


class Reading:
    """A :class:`Spooled` being written to a socket: its next piece at a time."""

    __slots__ = ("_at", "_extents", "left")

    def __init__(self, spooled: Spooled) -> None:
        self._extents: list[Extent] = list(reversed(spooled.extents))
        self._at = 0  # within the last extent
        self.left = spooled.size

    def next(self, most: int) -> bytes:
        """Up to ``most`` bytes, the next ones (empty at the end). Raises OSError when the
        source cannot be read."""
        extents = self._extents
        while extents:
            extent = extents[-1]
            if type(extent) is bytes:
                piece = extent[self._at:self._at + most]
                end = len(extent)
            else:
                source, offset, size = extent
                piece = source.read(offset + self._at, min(most, size - self._at))
                end = size
            self._at += len(piece)
            if self._at >= end:
                extents.pop()
                self._at = 0
            if piece:
                self.left -= len(piece)
                return piece
        return b""
