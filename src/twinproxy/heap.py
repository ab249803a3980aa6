"""Giving memory the proxy freed back to the system (glibc's ``malloc_trim``).

Why: what the proxy holds for a while comes in pieces of up to a read's size: replies held for
clients that do not read (up to ``client_output_pause`` each, and ``output_budget`` in all), and
during an update the requests a burst of clients sent faster than the servers took them. glibc
serves such pieces from its heap once its mmap threshold has grown past their size (it grows the
first time one is freed), and a heap whose top is held by some small object that lives on is not
shrunk when the pieces below it are freed. Measured with 50 clients not reading 10 MB replies
during an update: the proxy stayed at 268 MB once they had closed, 38.7 MB after
``malloc_trim(0)``, which returns every free page of the heap; with 1,000 clients that each sent
sixteen 100 KB SETs at once during an update (redis-benchmark), it stayed at 980 MB.

So the relay asks :class:`Trimmer` at each of its checks (twice a second) whether the process
grew much since the last trim and the traffic has calmed down, and then calls :func:`release`:
after a peak has drained, and after an update lets go of its engine; rarely, and never per
request. The heap's figures are glibc's own (``mallinfo2``), which cover whatever held the
memory.

Elsewhere than glibc (musl, say) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

PAGE = os.sysconf("SC_PAGE_SIZE")

TRIM_FROM = 16 * 1024 * 1024
"""Bytes the process must have grown by, and the heap must hold free, before a trim is worth
its pause (returning 900 MB of free heap took 45 ms here), and the most the clients' traffic
may move between two checks for one to be made."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
except OSError:
    _libc = None
_trim = getattr(_libc, "malloc_trim", None)  # glibc's own: None elsewhere
if _trim is not None:
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int
_mallinfo2 = getattr(_libc, "mallinfo2", None)  # glibc 2.33 and later
if _mallinfo2 is not None:
    _mallinfo2.argtypes = []
    _mallinfo2.restype = _MallInfo2


def release() -> bool:
    """Return the heap's free pages to the system; whether any was returned."""
    return bool(_trim(0)) if _trim is not None else False


def usage() -> tuple[int, int]:
    """Bytes of malloc's heaps in use now, and free in them (given back to the system or not);
    (0, 0) where the C library does not say. Tens of microseconds: glibc walks its free lists
    for it."""
    if _mallinfo2 is None:
        return 0, 0
    info = _mallinfo2()
    return info.uordblks, info.fordblks


def resident() -> int:
    """The process's resident bytes now (``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Trimmer:
    """When to give the heap's free pages back: when asked to (:meth:`soon`), or at a quiet
    check (less than :data:`TRIM_FROM` relayed since the one before: a burst is over, not going
    on) once the process's resident bytes outside the heap's use have grown by :data:`TRIM_FROM`
    since the last trim and the heap holds at least that much free.

    The growth says that there is something to give back, where the heap's free part does not:
    glibc counts a trimmed page as free still, and a burst that takes trimmed pages back into
    use and frees them leaves that figure as it was. A trim takes about 45 ms for 900 MB of
    free heap, so none is made while the traffic goes on; a load that keeps going reuses those
    pages anyway."""

    __slots__ = ("base", "pending")

    def __init__(self) -> None:
        self.base = 0  # resident bytes outside the heap's use, after the last trim
        self.pending = False

    def soon(self) -> None:
        """Trim at the next check, whatever the figures (an update let go of its engine)."""
        self.pending = True

    def due(self, used: int, free: int, resident: int, moved: int) -> bool:
        """Whether to trim now, with ``used`` and ``free`` bytes of the heap, ``resident`` bytes
        of the process, and ``moved`` bytes relayed since the last check."""
        return self.pending or (moved < TRIM_FROM and free >= TRIM_FROM
                                and resident - used - self.base >= TRIM_FROM)

    def done(self, used: int, resident: int) -> None:
        """A trim left the process at ``resident`` bytes, with ``used`` of its heap in use."""
        self.pending = False
        self.base = resident - used
