"""The Lua scripts clients gave Redis (``EVAL``, ``SCRIPT LOAD``), kept by SHA1 so that an
update can load them into the new version.

Redis keeps its scripts in a cache that its snapshot does not hold (7.0 saves none; 6.2 only
when it has replicas), and it cannot list them. A client that loaded a script before an update
calls it by its SHA1 (``EVALSHA``: redis-py's ``register_script``, job queues, rate limiters),
so a new version started on the snapshot answers ``-NOSCRIPT`` where the old one ran it: an
unexpected divergence on the first call, and every update of such a service rolled back.

So the proxy learns the scripts from the requests that carry them, in every mode, as they pass
(the client request reader calls :meth:`Scripts.note` with what it frames, and
:meth:`Scripts.note_read` with a read of EVALs that SINGLE mode only counts; it frames SCRIPT,
see ``names.NOT_ORDINARY``). At the sync point the state sync asks the old version which
of them it has (``SCRIPT EXISTS``: a ``SCRIPT FLUSH`` or a restart forgot some) and loads those
into the new version before anything is replayed (statesync/redis_fork.py).

What it cannot know: scripts loaded before the proxy started, or on a connection that does not
go through it. Calling one during an update still diverges, and the update rolls back.

Memory is bounded: bodies up to :data:`MAX_BYTES` in all; past that, new ones are not kept and
are counted (:attr:`Scripts.missed`), which the update's log says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import hiredis

from twinproxy.protocols.messages import Request

__all__ = ["GIVING", "MAX_BYTES", "SOURCES", "Scripts"]

MAX_BYTES = 8 * 1024 * 1024
"""The most bytes of script bodies one proxy keeps (a job queue's scripts take about 200 KB)."""

GIVING = frozenset({"EVAL", "EVAL_RO"})
"""The calls that give the server their script with them (it keeps it as ``SCRIPT LOAD``
would)."""

SOURCES = GIVING | {"SCRIPT"}
"""The commands that give the server a script (or, ``SCRIPT FLUSH``, take them all away)."""


class Scripts:
    """The scripts the server was given through the proxy: each body with its SHA1 as Redis
    spells it (40 lowercase hex digits). Keyed by body, so that a client that sends its script
    with every call (EVAL) costs a dictionary lookup per call, not a SHA1."""

    __slots__ = ("max_bytes", "missed", "shas", "size")

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.shas: dict[bytes, bytes] = {}  # body: SHA1
        self.max_bytes = max_bytes
        self.size = 0  # bytes of bodies kept
        self.missed = 0  # scripts not kept, past max_bytes

    @property
    def bodies(self) -> dict[bytes, bytes]:
        """The scripts kept, by SHA1."""
        return {sha: body for body, sha in self.shas.items()}

    def note(self, requests: Iterable[Request]) -> None:
        """Learn from requests on their way to the server (any requests: those that give no
        script cost one set lookup each)."""
        for request in requests:
            if request.name in SOURCES:
                self._note(request.name, request.args)

    def note_read(self, data: bytes, end: int) -> None:
        """Learn from the complete requests of ``data[:end]``, a read SINGLE mode forwards
        without framing it (``RespRequestReader.count``), in which a call gives its script."""
        reader = hiredis.Reader()
        reader.feed(data, 0, end)
        while (words := reader.gets()) is not False:
            name = words[0].upper().decode("latin-1") if words else ""
            if name in SOURCES:
                self._note(name, words[1:])

    def _note(self, name: str, args: list[bytes]) -> None:
        if name != "SCRIPT":
            if args:  # EVAL body numkeys ...: Redis caches the body as SCRIPT LOAD would
                self.add(args[0])
            return
        sub = args[0].upper() if args else b""
        if sub == b"LOAD" and len(args) == 2:
            self.add(args[1])
        elif sub == b"FLUSH":
            self.shas.clear()
            self.size = 0

    def add(self, body: bytes) -> None:
        """Keep ``body`` under its SHA1, unless kept already or past :attr:`max_bytes`. A body
        the server refuses (a syntax error) is kept too: the sync point's ``SCRIPT EXISTS``
        leaves it out."""
        if body in self.shas:
            return
        if self.size + len(body) > self.max_bytes:
            self.missed += 1
            return
        self.shas[body] = hashlib.sha1(body).hexdigest().encode()
        self.size += len(body)
