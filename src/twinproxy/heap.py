"""Giving memory the proxy freed back to the system (glibc's ``malloc_trim``).

Why: replies held for clients that do not read (up to ``client_output_pause`` each, and
``output_budget`` in all) are pieces of up to a read's size. glibc serves them from its heap once
its mmap threshold has grown past that size (it grows the first time such a piece is freed), and
a heap whose top is held by some small object that lives on is not shrunk when the pieces
below it are freed. Measured with 50 clients not reading 10 MB replies during an update: the
proxy stayed at 268 MB once they had closed, 38.7 MB after ``malloc_trim(0)``, which returns
every free page of the heap. So the relay calls :func:`release` after such a peak has drained,
and after an update lets go of its engine: rarely, and never per request.

Elsewhere than glibc (musl, say) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

try:
    _trim = ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int
except (OSError, AttributeError):  # no such C library function here
    _trim = None


def release() -> bool:
    """Return the heap's free pages to the system; whether any was returned."""
    return bool(_trim(0)) if _trim is not None else False
