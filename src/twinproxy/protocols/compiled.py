"""The compiled parts of the protocols, and what stands in for them where they were not built.

Each protocol that counts SINGLE mode's requests in C has its scan in ``protocols/<name>/_scan.c``,
a module ``twinproxy.protocols.<name>._scan`` whose function ``scan`` counts (Redis's also has
``elements``, the framing of requests with many elements). ``setup.py`` builds
every such file the same way, each optional: without a C compiler the install still succeeds,
:func:`load` gives None, and the protocol's reader falls back to its Python path (the same
answers, slower). ``tests/test_packaging.py`` fails when one was not built, so that a missing
build is seen rather than silently slow.

Why C at all: the profiles in ``loadtests/reports/profile.md`` put most of the proxy's user time
per request in framing requests in Python, which SINGLE mode only needs to count.

The relay's pump (``relay/_pump.c``: one read sent on in one call) and memcached's ``forward``
(the same, with the count) share ``relay/_io.h``, whose result codes are the ``IO_`` names here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PROTOCOLS = ("redis", "memcache")
"""The protocols with a ``_scan.c``."""

IO_AGAIN = -1
"""``received``: nothing to read yet (relay/_io.h)."""
IO_FAILED = -2
"""``received`` or ``sent``: the system call failed (a reset, say)."""
IO_HELD = -3
"""``sent``: not sent, the read must be framed in Python (it is in the buffer)."""
IO_RAISED = -4
"""``received`` from the relay's ``serve`` (relay/_pump.c): serving the socket raised; the
exception is in place of ``sent``."""


def load(protocol: str) -> ModuleType | None:
    """``protocol``'s compiled module ``twinproxy.protocols.<protocol>._scan``, or None when it was
    not built. Each protocol names the functions it takes from it (its ``scan``; Redis's
    ``elements`` too), so that a function missing from a build fails at import, not later."""
    try:
        return importlib.import_module(f"twinproxy.protocols.{protocol}._scan")
    except ImportError:
        return None
